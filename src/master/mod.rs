//! The master (arbiter): binds the listeners, forks the front tier and the workers,
//! replaces children that die and carries out stop signals.
//!
//! It must never run a thread, a runtime or a watcher (DESIGN.md §1): `fork()` of a
//! multi-threaded process is unsafe. All its work happens in one loop woken by signals
//! (through a self-pipe) or by a tick (a second; a quarter second under `--timeout`).

mod control;
pub mod listeners;
mod notify;
pub mod scoreboard;
mod signals;
mod spawn;
mod timeout;
mod title;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::config::{BindAddr, Settings};
use crate::protocol::control::AddWorker;
use listeners::Listener;
use signals::SignalPipe;
use spawn::{Forked, fork_child};

/// gunicorn's exit code for a worker that failed to boot.
pub const WORKER_BOOT_ERROR: i32 = 3;
/// gunicorn's exit code for an application that failed to load.
pub const APP_LOAD_ERROR: i32 = 4;

/// How long a fast stop (INT, QUIT) waits before killing children outright.
const FAST_STOP_GRACE: Duration = Duration::from_secs(2);

/// Runs the server until it is stopped; returns the exit code.
pub fn run(settings: Settings) -> i32 {
    let tls_warnings = settings.tls.iter().flat_map(|tls| &tls.loaded);
    for warning in tls_warnings.flat_map(|cert| &cert.warnings) {
        warn!("--tls {warning}");
    }
    if settings.preload
        && let Err(code) = crate::python::preload(&settings)
    {
        return code;
    }
    if let Some(mask) = settings.umask {
        nix::sys::stat::umask(mask);
    }
    // Before anything is bound or said: a TERM that comes as soon as the port answers
    // must find the handler in place, not kill the master outright.
    let signals = match SignalPipe::install() {
        Ok(signals) => signals,
        Err(err) => {
            error!("cannot install signal handlers: {err}");
            return 1;
        }
    };
    // The front tier finds the --redirect-http listeners after the --bind ones.
    let backlog = settings.limits.backlog;
    let listeners = match listeners::bind_all(&settings.binds, backlog).and_then(|mut binds| {
        binds.extend(listeners::bind_all(&settings.redirect_http, backlog)?);
        Ok(binds)
    }) {
        Ok(listeners) => listeners,
        Err(message) => {
            error!("{message}");
            return 1;
        }
    };
    let _pidfile = match &settings.pidfile {
        None => None,
        Some(path) => match notify::PidFile::write(path) {
            Ok(pidfile) => Some(pidfile),
            Err(err) => {
                error!("--pid: cannot write {}: {err}", path.display());
                listeners::unlink_unix(&listeners);
                return 1;
            }
        },
    };
    if let Err(err) = scoreboard::create() {
        warn!("cannot map the shared scoreboard: {err} (--timeout cannot work)");
    }
    title::set(&format!("rwsgi: master [{}]", settings.app.text));
    let pid = std::process::id();
    info!("Starting rwsgi {}", env!("CARGO_PKG_VERSION"));
    for (index, listener) in listeners.iter().enumerate() {
        match (index < settings.binds.len(), &listener.addr) {
            (true, BindAddr::Tcp(addr)) if settings.tls.is_some() => {
                info!("Listening at: https://{addr} ({pid})")
            }
            (true, addr) => info!("Listening at: {addr} ({pid})"),
            (false, addr) => info!("Listening at: {addr} ({pid}), redirecting to https"),
        }
    }
    let notifier = notify::Notifier::from_env();
    let watchdog = timeout::Watchdog::new(settings.timeout);
    let mut arbiter = Arbiter {
        settings,
        listeners,
        signals,
        front: None,
        workers: BTreeMap::new(),
        next_worker_id: 0,
        stop: None,
        exit_code: 0,
        notifier,
        ready: false,
        boot_deaths: 0,
        respawn_at: None,
        watchdog,
    };
    let code = arbiter.run();
    listeners::unlink_unix(&arbiter.listeners);
    info!("Shutting down: Master");
    code
}

struct FrontChild {
    pid: Pid,
    /// The master's end of the control socket.
    control: OwnedFd,
}

struct WorkerChild {
    id: u32,
    started: Instant,
    /// The master told it to stop (its death is no boot failure).
    told: bool,
}

/// A worker that dies within this time of its start died booting.
const BOOT_WINDOW: Duration = Duration::from_secs(2);
/// Workers dying while booting, in a row, after which the master gives up.
const MOST_BOOT_DEATHS: u32 = 8;
/// The longest wait before starting a worker again after deaths while booting.
const LONGEST_BACKOFF: Duration = Duration::from_secs(5);

struct Stop {
    graceful: bool,
    deadline: Instant,
    workers_told: bool,
    killed: bool,
}

struct Arbiter {
    settings: Settings,
    listeners: Vec<Listener>,
    signals: SignalPipe,
    front: Option<FrontChild>,
    workers: BTreeMap<Pid, WorkerChild>,
    next_worker_id: u32,
    stop: Option<Stop>,
    exit_code: i32,
    /// systemd's notification socket, if any.
    notifier: notify::Notifier,
    /// Whether READY was said.
    ready: bool,
    /// Workers that died while booting, in a row.
    boot_deaths: u32,
    /// No worker is started before this (backoff after deaths while booting).
    respawn_at: Option<Instant>,
    /// The workers' scoreboard slots and `--timeout`.
    watchdog: timeout::Watchdog,
}

impl Arbiter {
    fn run(&mut self) -> i32 {
        loop {
            if self.stop.is_none() {
                if self.front.is_none() && !self.spawn_front() {
                    self.halt(1, "cannot start the front tier");
                }
                self.manage_workers();
                if !self.ready && self.front.is_some() {
                    self.ready = true;
                    let pid = std::process::id();
                    let workers = self.workers.len();
                    self.notifier.notify(&format!(
                        "READY=1\nMAINPID={pid}\nSTATUS=serving with {workers} workers"
                    ));
                }
            }
            let most = self.watchdog.tick();
            let tick = self
                .respawn_at
                .map(|at| at.saturating_duration_since(Instant::now()))
                .map_or(most, |wait| wait.clamp(Duration::from_millis(10), most));
            for signal in self.signals.wait(tick) {
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
                    Signal::SIGHUP => self.reload_tls(),
                    Signal::SIGTTIN => {
                        info!("Handling signal: ttin");
                        if self.settings.workers < crate::config::MAX_WORKERS {
                            self.settings.workers += 1;
                        } else {
                            warn!("TTIN: already the most workers rwsgi can watch");
                        }
                    }
                    Signal::SIGTTOU => self.one_worker_fewer(),
                    other => info!("Ignoring signal {other} (not handled yet)"),
                }
            }
            self.reap();
            self.watchdog.check(self.front.as_ref().map(|f| &f.control));
            if let Some(stop) = &mut self.stop {
                if self.front.is_none() && self.workers.is_empty() {
                    return self.exit_code;
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

    /// SIGHUP: the front tier reads the certificate files again. Only TLS is reloaded;
    /// the application is not (restart the server for that).
    fn reload_tls(&mut self) {
        info!("Handling signal: hup");
        if self.settings.tls.is_none() {
            return info!("SIGHUP: no TLS certificates to reload (no --tls)");
        }
        // A front tier not started yet reads the files when it starts.
        if let Some(front) = &self.front
            && let Err(err) = control::send_reload_tls(&front.control)
        {
            error!("cannot ask the front tier to reload the TLS certificates: {err}");
        }
    }

    /// Starts a graceful (TERM) or fast (INT, QUIT) stop; a fast stop overrides a graceful one.
    fn begin_stop(&mut self, graceful: bool) {
        if let Some(stop) = &self.stop
            && (!stop.graceful || graceful)
        {
            return;
        }
        self.notifier.notify("STOPPING=1");
        // As gunicorn: the listeners close first, so new connections are refused at
        // once rather than queued for a server that is going away.
        let listeners = std::mem::take(&mut self.listeners);
        listeners::unlink_unix(&listeners);
        drop(listeners);
        let front = self.front.as_ref().map(|f| f.pid);
        if graceful {
            signal_all(front, Signal::SIGTERM);
            // The front tier waits graceful_timeout for its requests; allow a little more
            // for the last responses to leave the workers before anything is killed.
            let deadline = Instant::now() + self.settings.graceful_timeout + Duration::from_secs(2);
            self.stop = Some(Stop {
                graceful,
                deadline,
                workers_told: false,
                killed: false,
            });
        } else {
            signal_all(
                front.into_iter().chain(self.workers.keys().copied()),
                Signal::SIGQUIT,
            );
            let deadline = Instant::now() + FAST_STOP_GRACE;
            self.stop = Some(Stop {
                graceful,
                deadline,
                workers_told: true,
                killed: false,
            });
        }
    }

    /// Stops everything because of an unrecoverable error; the master exits with `code`.
    fn halt(&mut self, code: i32, reason: &str) {
        error!("Shutting down: {reason}");
        self.exit_code = code;
        self.begin_stop(false);
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
            let stopping = self.stop.is_some();
            if self.front.as_ref().is_some_and(|f| f.pid == pid) {
                self.front = None;
                if stopping {
                    info!("Front tier (pid: {pid}) {how}");
                } else {
                    error!("Front tier (pid: {pid}) {how}; restarting it and its workers");
                    // Their channels went with the old front tier; they exit on EOF, and
                    // are told to in case one is busy.
                    self.workers.values_mut().for_each(|w| w.told = true);
                    signal_all(self.workers.keys().copied(), Signal::SIGTERM);
                }
            } else if let Some(worker) = self.workers.remove(&pid) {
                let timed_out = self.watchdog.reaped(pid);
                match (code, signal, stopping) {
                    _ if timed_out => warn!(
                        "Worker (pid: {pid}, id: {}) {how} after its timeout; replacing it",
                        worker.id
                    ),
                    (_, _, true) => info!("Worker exiting (pid: {pid}): {how}"),
                    // A retirement (--max-requests) after the handshake: no crash.
                    (Some(0), _, false) => info!(
                        "Worker (pid: {pid}, id: {}) retired; replacing it",
                        worker.id
                    ),
                    (_, Some(Signal::SIGKILL), _) => {
                        error!(
                            "Worker (pid: {pid}, id: {}) was sent SIGKILL! Perhaps out of memory?",
                            worker.id
                        )
                    }
                    _ => warn!("Worker (pid: {pid}, id: {}) {how}", worker.id),
                }
                match code {
                    Some(APP_LOAD_ERROR) if !stopping => {
                        self.halt(APP_LOAD_ERROR, "App failed to load.")
                    }
                    Some(WORKER_BOOT_ERROR) if !stopping => {
                        self.halt(WORKER_BOOT_ERROR, "Worker failed to boot.")
                    }
                    Some(0) => {}
                    _ if !stopping
                        && !worker.told
                        && !timed_out
                        && worker.started.elapsed() < BOOT_WINDOW =>
                    {
                        self.died_booting()
                    }
                    _ => {}
                }
            }
        }
    }

    /// TTOU: one worker fewer (never none). The oldest is told to stop (TERM): it
    /// retires through the channel handshake, so no request is lost, and is not replaced.
    fn one_worker_fewer(&mut self) {
        info!("Handling signal: ttou");
        if self.settings.workers <= 1 {
            return;
        }
        self.settings.workers -= 1;
        let oldest = self
            .workers
            .iter_mut()
            .filter(|(_, w)| !w.told)
            .min_by_key(|(_, w)| w.started);
        if let Some((&pid, worker)) = oldest {
            worker.told = true;
            signal_all([pid], Signal::SIGTERM);
        }
    }

    /// A worker died within BOOT_WINDOW of its start: wait longer before each new one
    /// (100 ms, doubling, at most LONGEST_BACKOFF), and give up after MOST_BOOT_DEATHS in
    /// a row rather than fork for ever.
    fn died_booting(&mut self) {
        self.boot_deaths += 1;
        if self.boot_deaths >= MOST_BOOT_DEATHS {
            let reason = format!(
                "Worker failed to boot: {} workers in a row died within {} s of starting.",
                self.boot_deaths,
                BOOT_WINDOW.as_secs()
            );
            self.halt(WORKER_BOOT_ERROR, &reason);
            return;
        }
        if self.boot_deaths >= 2 {
            let delay =
                Duration::from_millis(100 << (self.boot_deaths - 2).min(6)).min(LONGEST_BACKOFF);
            warn!(
                "{} workers died while booting; the next starts in {delay:?}",
                self.boot_deaths
            );
            self.respawn_at = Some(Instant::now() + delay);
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
                let code = crate::front::run(&self.settings, listeners, front_end);
                std::process::exit(code);
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

    fn manage_workers(&mut self) {
        if self
            .workers
            .values()
            .any(|w| w.started.elapsed() >= BOOT_WINDOW)
        {
            // One worker got through its boot: the ones before it were accidents.
            self.boot_deaths = 0;
        }
        if self.respawn_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        while self.workers.len() < self.settings.workers && self.front.is_some() {
            if !self.spawn_worker() {
                return;
            }
        }
    }

    fn spawn_worker(&mut self) -> bool {
        let Some(front) = &self.front else {
            return false;
        };
        let (front_end, worker_end) = match socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        ) {
            Ok(pair) => pair,
            Err(err) => {
                error!("cannot create a worker channel: {err}");
                return false;
            }
        };
        let Some(slot) = self.watchdog.free_slot() else {
            error!("cannot start a worker: every scoreboard slot is taken");
            return false;
        };
        let id = self.next_worker_id;
        self.next_worker_id = self.next_worker_id.wrapping_add(1);
        let mut close = self.master_fds();
        close.extend(self.listeners.iter().map(Listener::raw));
        close.push(front_end.as_raw_fd());
        match fork_child(
            "worker",
            self.settings.preload,
            &close,
            self.settings.credentials,
        ) {
            Ok(Forked::Child) => {
                title::set(&format!("rwsgi: worker [{}]", self.settings.app.text));
                let code = crate::worker::run(&self.settings, worker_end, id, slot);
                std::process::exit(code);
            }
            Ok(Forked::Parent(pid)) => {
                drop(worker_end);
                info!("Booting worker with pid: {pid}");
                // Before the front tier hears of it, which reads the slot on its death.
                self.watchdog.watch(pid, id, slot);
                if let Err(err) = control::send_worker(
                    &front.control,
                    AddWorker {
                        id,
                        pid: pid.as_raw() as u32,
                    },
                    front_end.as_raw_fd(),
                ) {
                    // The front tier is gone; its death will be reaped and everything restarted.
                    warn!("cannot hand worker {pid} to the front tier: {err}");
                    let _ = kill(pid, Signal::SIGTERM);
                }
                self.workers.insert(
                    pid,
                    WorkerChild {
                        id,
                        started: Instant::now(),
                        told: false,
                    },
                );
                true
            }
            Err(err) => {
                error!("cannot fork a worker: {err}");
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
