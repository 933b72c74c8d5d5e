//! The master (arbiter): binds the listeners, forks the front tier and the workers,
//! replaces children that die and carries out the operator's signals (gunicorn's
//! meanings: TERM, INT/QUIT, HUP, TTIN/TTOU, USR2/WINCH).
//!
//! It must never run a thread, a runtime or a watcher (DESIGN.md §1): `fork()` of a
//! multi-threaded process is unsafe. All its work happens in one loop woken by signals
//! (through a self-pipe), by the front tier's control messages or by a tick (a second;
//! a quarter second under `--timeout`).

mod control;
mod daemon;
pub mod listeners;
mod notify;
mod open_files;
mod phase;
mod reconfigure;
mod signals;
mod spawn;
mod timeout;
mod title;
mod upgrade;
mod workers;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::config::{BindAddr, Settings};
use crate::protocol::control::Message;
use crate::scoreboard;
pub use daemon::daemonize;
use listeners::Listener;
use phase::{Phase, Stop};
use signals::SignalPipe;
use spawn::{Forked, fork_child};
use upgrade::Upgrade;
pub use upgrade::{Program, upgrading};
use workers::WorkerChild;

/// How long a fast stop (INT, QUIT) waits before killing children outright.
const FAST_STOP_GRACE: Duration = Duration::from_secs(2);

/// Why the master stopped short of a clean end.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// `--preload`: the application did not load.
    #[error(transparent)]
    Preload(#[from] crate::python::BootError),
    /// The self-pipe of its signal handlers.
    #[error("cannot install signal handlers: {0}")]
    Signals(nix::Error),
    /// The listeners could not be bound or taken over (the message says which).
    #[error("{0}")]
    Listeners(String),
    /// `--pid`.
    #[error("--pid: cannot write {}: {source}", path.display())]
    PidFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It halted with this code, having logged why (a worker's boot failure, say).
    #[error("halted with exit code {0}")]
    Halted(i32),
}

impl crate::exit::Failure for MasterError {
    fn exit_code(&self) -> i32 {
        match self {
            MasterError::Preload(err) => err.exit_code(),
            MasterError::Halted(code) => *code,
            _ => 1,
        }
    }

    fn reported(&self) -> bool {
        match self {
            MasterError::Preload(err) => err.reported(),
            MasterError::Halted(_) => true,
            _ => false,
        }
    }
}

/// Runs the server until it is stopped.
pub fn run(settings: Settings, program: Program) -> Result<(), MasterError> {
    let tls_warnings = settings.tls.iter().flat_map(|tls| &tls.loaded);
    for warning in tls_warnings.flat_map(|cert| &cert.warnings) {
        warn!("--tls {warning}");
    }
    if settings.preload {
        crate::python::preload(&settings)?;
    }
    if let Some(mask) = settings.umask {
        nix::sys::stat::umask(mask);
    }
    // Before anything is bound or said: a TERM that comes as soon as the port answers
    // must find the handler in place, not kill the master outright.
    let signals = SignalPipe::install().map_err(MasterError::Signals)?;
    let (listeners, upgrade) =
        open_listeners(&settings, program).map_err(MasterError::Listeners)?;
    let pidfile = match &settings.pidfile {
        None => None,
        Some(path) => match notify::PidFile::write(path) {
            Ok(pidfile) => Some(pidfile),
            Err(source) => {
                listeners::unlink_unix(&listeners);
                let path = path.clone();
                return Err(MasterError::PidFile { path, source });
            }
        },
    };
    if let Err(err) = scoreboard::create() {
        warn!("cannot map the shared scoreboard: {err} (--timeout cannot work)");
    }
    title::set(&format!("rwsgi: master [{}]", settings.proc_name));
    let pid = std::process::id();
    info!(
        "Starting rwsgi {} on {}",
        env!("CARGO_PKG_VERSION"),
        crate::python::venv::describe()
    );
    crate::python::venv::hint_idle(&settings);
    // Single-threaded and before any fork: every child inherits the raised limit.
    open_files::raise(settings.limits.max_connections);
    let redirects = settings.binds.len() + settings.redirect_http.len();
    for (index, listener) in listeners.iter().enumerate() {
        match (index < settings.binds.len(), &listener.addr) {
            (true, BindAddr::Tcp(addr)) if settings.tls.is_some() => {
                info!("Listening at: https://{addr} ({pid})")
            }
            (true, addr) => info!("Listening at: {addr} ({pid})"),
            (false, addr) if index < redirects => {
                info!("Listening at: {addr} ({pid}), redirecting to https")
            }
            (false, addr) => info!("Metrics at: {addr}/metrics ({pid})"),
        }
    }
    let notifier = notify::Notifier::from_env();
    let watchdog = timeout::Watchdog::new(
        settings.timeout,
        settings.worker_class.stamped_threads(),
        settings.graceful_timeout,
    );
    let configured_workers = settings.workers;
    let mut arbiter = Arbiter {
        settings,
        listeners,
        signals,
        front: None,
        workers: BTreeMap::new(),
        next_worker_id: 0,
        generation: 0,
        phase: Phase::Booting,
        notifier,
        boot_deaths: 0,
        respawn_at: None,
        pidfile,
        upgrade,
        watchdog,
        watcher: None,
        configured_workers,
    };
    let code = arbiter.run();
    if !arbiter.upgrade.shares_listeners() {
        listeners::unlink_unix(&arbiter.listeners);
    }
    info!("Shutting down: Master");
    match code {
        0 => Ok(()),
        code => Err(MasterError::Halted(code)),
    }
}

/// The listening sockets: those an old master handed over (USR2), or freshly bound
/// ones. The front tier finds the --redirect-http listeners after the --bind ones, and
/// the --metrics-bind one last.
fn open_listeners(
    settings: &Settings,
    program: upgrade::Program,
) -> Result<(Vec<Listener>, Upgrade), String> {
    let backlog = settings.limits.backlog;
    let metrics = settings.metrics_bind.iter().cloned().collect::<Vec<_>>();
    let wanted = settings.binds.len() + settings.redirect_http.len() + metrics.len();
    if let Some(handed) = upgrade::Handover::from_env() {
        let listeners = handed.listeners(wanted)?;
        return Ok((listeners, Upgrade::new(program, Some(handed.old_master))));
    }
    let mut listeners = listeners::bind_all(&settings.binds, backlog)?;
    listeners.extend(listeners::bind_all(&settings.redirect_http, backlog)?);
    listeners.extend(listeners::bind_all(&metrics, backlog)?);
    Ok((listeners, Upgrade::new(program, None)))
}

struct FrontChild {
    pid: Pid,
    /// The master's end of the control socket.
    control: OwnedFd,
}

struct Arbiter {
    settings: Settings,
    listeners: Vec<Listener>,
    signals: SignalPipe,
    front: Option<FrontChild>,
    workers: BTreeMap<Pid, WorkerChild>,
    next_worker_id: u32,
    /// Bumped by each reload: workers of an older generation run the old code.
    generation: u32,
    /// Where the master is in its life (see `phase`): changed only by `enter`.
    phase: Phase,
    /// systemd's notification socket, if any.
    notifier: notify::Notifier,
    /// Workers that died before they were ready, in a row.
    boot_deaths: u32,
    /// No worker is started before this (backoff after deaths while booting).
    respawn_at: Option<Instant>,
    pidfile: Option<notify::PidFile>,
    /// The binary upgrade (USR2) state.
    upgrade: Upgrade,
    /// The workers' scoreboard slots and `--timeout`.
    watchdog: timeout::Watchdog,
    /// The `--reload` file watcher, while it runs.
    watcher: Option<Watcher>,
    /// The worker count the configuration gave (TTIN/TTOU change `settings.workers`).
    configured_workers: usize,
}

struct Watcher {
    pid: Pid,
    started: Instant,
}

impl Arbiter {
    fn run(&mut self) -> i32 {
        loop {
            if self.phase.runs_children() {
                if self.front.is_none() && !self.spawn_front() {
                    self.halt(1, "cannot start the front tier");
                }
                if self.settings.reload.is_some() && self.watcher.is_none() {
                    self.spawn_watcher();
                }
                self.manage_workers();
            }
            let most = self.watchdog.tick();
            let tick = self
                .respawn_at
                .map(|at| at.saturating_duration_since(Instant::now()))
                .map_or(most, |wait| wait.clamp(Duration::from_millis(10), most));
            let control = self.front.as_ref().map(|front| front.control.as_fd());
            let signals = self.signals.wait(tick, control);
            let messages = self
                .front
                .as_ref()
                .map(|front| control::receive(&front.control))
                .unwrap_or_default();
            for message in messages {
                match message {
                    Message::WorkerReady(worker) => self.worker_ready(worker.id, worker.pid),
                    other => warn!("unexpected control message from the front tier: {other:?}"),
                }
            }
            self.on_signals(signals);
            self.reap();
            let retire = self.watchdog.check(self.front.as_ref().map(|f| &f.control));
            retire.into_iter().for_each(|pid| self.tell(pid));
            if let Phase::Stopping(stop) = &mut self.phase {
                if self.front.is_none() && self.workers.is_empty() {
                    let code = stop.code;
                    self.enter(Phase::Halted);
                    return code;
                }
                if stop.graceful && self.front.is_none() && !stop.workers_told {
                    // The front tier has drained: workers finish what they hold and exit.
                    stop.workers_told = true;
                    signal_all(self.workers.keys().copied(), Signal::SIGTERM);
                }
                if Instant::now() >= stop.deadline && !stop.killed {
                    stop.killed = true;
                    warn!("Children still running after the stop timeout: killing them");
                    let front = self.front.as_ref().map(|f| f.pid);
                    signal_all(
                        front.into_iter().chain(self.workers.keys().copied()),
                        Signal::SIGKILL,
                    );
                }
            }
        }
    }

    /// While a new master (USR2) runs, a stop of this one's front tier is a restart of
    /// the service: its WebSockets are told so (1012 rather than 1001).
    fn tell_front_replaced(&self) {
        if self.upgrade.child.is_none() {
            return;
        }
        if let Some(front) = &self.front
            && let Err(err) = control::send_replaced(&front.control)
        {
            warn!("cannot tell the front tier that a new master takes over: {err}");
        }
    }

    fn on_signals(&mut self, signals: Vec<Signal>) {
        let mut hangups = 0;
        for signal in signals {
            match signal {
                Signal::SIGCHLD => {}
                Signal::SIGTERM => {
                    info!("Handling signal: term");
                    self.begin_stop(true)
                }
                Signal::SIGINT | Signal::SIGQUIT => {
                    info!(
                        "Handling signal: {}",
                        signal.as_str().trim_start_matches("SIG").to_lowercase()
                    );
                    self.begin_stop(false)
                }
                // Several in one pass are one reload.
                Signal::SIGHUP => hangups += 1,
                Signal::SIGTTIN => {
                    if self.settings.workers < crate::scoreboard::MAX_WORKERS {
                        self.settings.workers += 1;
                    } else {
                        warn!("TTIN: already the most workers rwsgi can watch");
                    }
                    info!("Handling signal: ttin; workers: {}", self.settings.workers);
                }
                Signal::SIGTTOU => {
                    // Never none: the oldest extra one retires (see manage_workers).
                    self.settings.workers = self.settings.workers.saturating_sub(1).max(1);
                    info!("Handling signal: ttou; workers: {}", self.settings.workers);
                }
                Signal::SIGUSR1 => self.reopen_logs(),
                Signal::SIGUSR2 => self.begin_upgrade(),
                Signal::SIGWINCH => self.winch(),
                other => info!("Ignoring signal {other}"),
            }
        }
        if hangups > 0 && !self.phase.is_stopping() {
            self.hangup();
        }
    }

    /// SIGHUP: the front tier reads its TLS certificates again and a new generation of
    /// workers starts with freshly imported code; the old ones retire as the new ones
    /// become ready (see `workers`). After WINCH, it brings the front tier and the
    /// workers back instead (an upgrade rolled back by hand, as nginx does).
    fn hangup(&mut self) {
        info!("Handling signal: hup");
        if let Phase::Upgrading { drained: true } = self.phase {
            info!("Serving again: starting the front tier and the workers");
            self.enter(Phase::Booting);
            return;
        }
        self.notifier.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            // systemd wants CLOCK_MONOTONIC in microseconds with RELOADING=1.
            scoreboard::monotonic_nanos() / 1_000
        ));
        match self.upgrade.program.settings_now() {
            Ok(settings) => self.adopt(settings),
            Err(err) => {
                error!("HUP: the configuration is not usable, keeping the current one: {err}")
            }
        }
        if self.settings.tls.is_some()
            && let Some(front) = &self.front
            && let Err(err) = control::send_reload_tls(&front.control)
        {
            // A front tier not started yet reads the files when it starts.
            error!("cannot ask the front tier to reload the TLS certificates: {err}");
        }
        self.reload_workers();
    }

    /// USR1: the master reopens the error log file (after logrotate moved it) and asks
    /// every child to do the same.
    fn reopen_logs(&mut self) {
        // The front tier writes the access log; it reopens the file itself.
        let access_file = self
            .settings
            .access_log
            .as_ref()
            .is_some_and(|log| matches!(log.target, crate::config::AccessTarget::File(_)));
        if !crate::log::logs_to_file() && !access_file {
            return info!("Handling signal: usr1; no log file to reopen (the error log is stderr)");
        }
        // First, so that this line is the new file's first.
        match crate::log::reopen() {
            Ok(()) if crate::log::logs_to_file() => {
                info!("Handling signal: usr1; the error log was reopened")
            }
            Ok(()) => info!("Handling signal: usr1; the front tier reopens the access log"),
            Err(err) => error!("Handling signal: usr1; cannot reopen the error log: {err}"),
        }
        let front = self.front.as_ref().map(|f| f.pid);
        signal_all(
            front.into_iter().chain(self.workers.keys().copied()),
            Signal::SIGUSR1,
        );
    }

    /// Starts a graceful (TERM) or fast (INT, QUIT) stop; a fast stop overrides a graceful one.
    fn begin_stop(&mut self, graceful: bool) {
        if let Phase::Stopping(stop) = &self.phase
            && (!stop.graceful || graceful)
        {
            return;
        }
        // A halt's code stays when INT follows it.
        let code = match &self.phase {
            Phase::Stopping(stop) => stop.code,
            _ => 0,
        };
        self.notifier.notify("STOPPING=1");
        // As gunicorn: the listeners close first, so new connections are refused at
        // once rather than queued for a server that is going away (unless a new master
        // shares them: then they stay open in it).
        let listeners = std::mem::take(&mut self.listeners);
        if !self.upgrade.shares_listeners() {
            listeners::unlink_unix(&listeners);
        }
        drop(listeners);
        let front = self.front.as_ref().map(|f| f.pid);
        signal_all(self.watcher.as_ref().map(|w| w.pid), Signal::SIGTERM);
        if graceful {
            self.tell_front_replaced();
            signal_all(front, Signal::SIGTERM);
            // The front tier waits graceful_timeout for its requests; allow a little more
            // for the last responses to leave the workers before anything is killed.
            let deadline = Instant::now() + self.settings.graceful_timeout + Duration::from_secs(2);
            self.enter(Phase::Stopping(Stop {
                graceful,
                deadline,
                workers_told: false,
                killed: false,
                code,
            }));
        } else {
            signal_all(
                front.into_iter().chain(self.workers.keys().copied()),
                Signal::SIGQUIT,
            );
            let deadline = Instant::now() + FAST_STOP_GRACE;
            self.enter(Phase::Stopping(Stop {
                graceful,
                deadline,
                workers_told: true,
                killed: false,
                code,
            }));
        }
    }

    /// Stops everything because of an unrecoverable error; the master exits with `code`.
    fn halt(&mut self, code: i32, reason: &str) {
        error!("Shutting down: {reason}");
        self.begin_stop(false);
        if let Phase::Stopping(stop) = &mut self.phase {
            stop.code = code;
        }
    }

    fn reap(&mut self) {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => status,
            };
            let (pid, code, signal) = match status {
                WaitStatus::Exited(pid, code) => (pid, Some(code), None),
                WaitStatus::Signaled(pid, signal, _) => (pid, None, Some(signal)),
                _ => continue,
            };
            let how = match (code, signal) {
                (Some(code), _) => format!("exited with code {code}"),
                (_, Some(signal)) => format!("was killed by {signal}"),
                _ => unreachable!("one of code or signal is set"),
            };
            if self.front.as_ref().is_some_and(|f| f.pid == pid) {
                self.front_exited(pid, &how);
            } else if let Some(worker) = self.workers.remove(&pid) {
                self.worker_exited(pid, worker, code, signal, &how);
            } else if self.upgrade.child == Some(pid) {
                self.upgrade_exited(pid, &how);
            } else if let Some(watcher) = self.watcher.take_if(|w| w.pid == pid) {
                self.watcher_exited(watcher, &how);
            }
        }
    }

    fn front_exited(&mut self, pid: Pid, how: &str) {
        self.front = None;
        if self.phase.is_stopping() {
            info!("Front tier (pid: {pid}) {how}");
        } else if let Phase::Upgrading { drained: true } = self.phase {
            info!("Front tier (pid: {pid}) {how} after WINCH; stopping the workers");
            self.tell_all_workers();
        } else {
            error!("Front tier (pid: {pid}) {how}; restarting it and its workers");
            // Their channels went with the old front tier; they exit on EOF, and are told
            // to in case one is busy.
            self.tell_all_workers();
        }
    }

    /// `--reload`: starts the file watcher (a child: the master runs no watcher itself).
    fn spawn_watcher(&mut self) {
        let mut close = self.master_fds();
        close.extend(self.listeners.iter().map(Listener::raw));
        let master = nix::unistd::getpid();
        match fork_child("reloader", false, &close, self.settings.credentials) {
            Ok(Forked::Child) => {
                title::set("rwsgi: reloader");
                std::process::exit(crate::watcher::run(&self.settings, master));
            }
            Ok(Forked::Parent(pid)) => {
                let started = Instant::now();
                self.watcher = Some(Watcher { pid, started });
            }
            Err(err) => error!("--reload: cannot fork the file watcher: {err}"),
        }
    }

    /// The watcher died: started again, unless it cannot even start (then `--reload`
    /// is off until rwsgi is restarted, rather than forking it for ever).
    fn watcher_exited(&mut self, watcher: Watcher, how: &str) {
        if self.phase.is_stopping() {
            return;
        }
        if watcher.started.elapsed() < Duration::from_secs(2) {
            error!("--reload: the file watcher {how} at once; files are no longer watched");
            self.settings.reload = None;
        } else {
            warn!("--reload: the file watcher {how}; starting it again");
        }
    }

    /// The descriptors no child but the front tier may keep.
    fn master_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.signals.raw_fds().to_vec();
        fds.extend(self.front.as_ref().map(|f| f.control.as_raw_fd()));
        fds
    }

    fn spawn_front(&mut self) -> bool {
        let (master_end, front_end) = match socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        ) {
            Ok(pair) => pair,
            Err(err) => {
                error!("cannot create the control socket: {err}");
                return false;
            }
        };
        let mut close = self.master_fds();
        close.push(master_end.as_raw_fd());
        match fork_child(
            "front",
            self.settings.preload,
            &close,
            self.settings.credentials,
        ) {
            Ok(Forked::Child) => {
                title::set("rwsgi: front");
                let listeners: Vec<_> = self
                    .listeners
                    .iter()
                    .map(|l| (l.raw(), l.addr.clone()))
                    .collect();
                let served = crate::front::run(&self.settings, listeners, front_end);
                std::process::exit(crate::exit::code(served));
            }
            Ok(Forked::Parent(pid)) => {
                info!("Booting front tier with pid: {pid}");
                self.front = Some(FrontChild {
                    pid,
                    control: master_end,
                });
                true
            }
            Err(err) => {
                error!("cannot fork the front tier: {err}");
                false
            }
        }
    }
}

fn signal_all(pids: impl IntoIterator<Item = Pid>, signal: Signal) {
    for pid in pids {
        let _ = kill(pid, signal);
    }
}
