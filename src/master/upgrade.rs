//! Binary upgrades without a closed port (gunicorn's and nginx's USR2 / WINCH).
//!
//! USR2: the master renames its pid file to `FILE.oldbin` and starts the binary again
//! (the same path, so a new build put there runs) with the same arguments, handing it
//! the listening sockets: their numbers travel in `RWSGI_UPGRADE_FDS`. The new master
//! adopts them instead of binding, starts its own front tier and workers, and both
//! serve side by side. Then:
//! - WINCH to the old master: its front tier stops accepting and drains, then its
//!   workers stop; the old master stays, holding the sockets, ready to serve again.
//! - TERM to the old master: the upgrade is done.
//! - HUP to the old master after WINCH, or the new master's exit (QUIT/TERM to it, or a
//!   crash) at any time: the old master serves again and takes its pid file back.
//!
//! Unlike nginx, a WINCH with no new master running is ignored: a terminal sends WINCH
//! when it is resized, and that must not stop a server run in the foreground.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use nix::sys::signal::{SigHandler, Signal, kill};
use nix::unistd::{ForkResult, Pid, fork};
use tracing::{error, info, warn};

use super::listeners::{self, Listener};
use super::phase::Phase;
use super::{Arbiter, signal_all, signals, title};
use crate::config::BindAddr;

/// The variable naming the listening sockets a new master inherits.
const FDS_VAR: &str = "RWSGI_UPGRADE_FDS";
/// The variable naming the old master (so the new one knows it shares the sockets).
const OLD_MASTER_VAR: &str = "RWSGI_UPGRADE_FROM";

/// Whether this master is the new one of a binary upgrade (USR2), started by the old.
pub fn upgrading() -> bool {
    std::env::var_os(FDS_VAR).is_some()
}

/// How this master was started, to start it again.
pub struct Program {
    exe: Option<PathBuf>,
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
}

impl Program {
    /// The settings as they read now, from the directory rwsgi was started in (the
    /// master's working directory is put back after).
    pub fn settings_now(&self) -> Result<crate::config::Settings, String> {
        let here = std::env::current_dir().map_err(|err| err.to_string())?;
        if let Some(cwd) = &self.cwd {
            std::env::set_current_dir(cwd).map_err(|err| format!("{}: {err}", cwd.display()))?;
        }
        let settings = crate::config::reread(&self.args);
        if let Err(err) = std::env::set_current_dir(&here) {
            error!("cannot go back to {}: {err}", here.display());
        }
        settings
    }

    /// Reads the binary's path, the arguments and the working directory. Call before
    /// the process title is set (it writes over the arguments).
    pub fn capture() -> Program {
        Program {
            exe: std::env::current_exe().ok(),
            args: std::env::args_os().skip(1).collect(),
            cwd: std::env::current_dir().ok(),
        }
    }
}

/// The sockets an old master handed to this one.
pub struct Handover {
    fds: Vec<RawFd>,
    /// The old master's pid.
    pub old_master: Pid,
}

impl Handover {
    /// Takes the handover from the environment (and removes it, so that no child sees it).
    pub fn from_env() -> Option<Handover> {
        let fds = std::env::var(FDS_VAR).ok();
        let old = std::env::var(OLD_MASTER_VAR).ok();
        for name in [FDS_VAR, OLD_MASTER_VAR] {
            // SAFETY: the master never runs threads; nothing reads the environment meanwhile.
            unsafe { crate::process_env::remove(name) };
        }
        let fds = fds?
            .split(',')
            .map(|fd| fd.trim().parse::<RawFd>().ok())
            .collect::<Option<Vec<_>>>()?;
        let old_master = Pid::from_raw(old?.trim().parse().ok()?);
        Some(Handover { fds, old_master })
    }

    /// Adopts the handed sockets; there must be one for each address configured.
    pub fn listeners(&self, wanted: usize) -> Result<Vec<Listener>, String> {
        if self.fds.len() != wanted {
            return Err(format!(
                "the old master handed over {} listening sockets, but the configuration names {wanted}; \
                 a binary upgrade keeps the same --bind and --redirect-http",
                self.fds.len()
            ));
        }
        let addrs: Vec<BindAddr> = self.fds.iter().copied().map(BindAddr::Fd).collect();
        listeners::bind_all(&addrs, 0)
    }
}

/// The upgrade state of one master.
pub struct Upgrade {
    pub program: Program,
    /// The new master this one started (USR2), while it runs.
    pub child: Option<Pid>,
    /// The master that started this one, if this one is an upgrade.
    old_master: Option<Pid>,
}

impl Upgrade {
    pub fn new(program: Program, old_master: Option<Pid>) -> Upgrade {
        Upgrade {
            program,
            child: None,
            old_master,
        }
    }

    /// Whether another master serves the same sockets now: then this one must not
    /// remove their Unix socket files when it stops.
    pub fn shares_listeners(&self) -> bool {
        self.child.is_some() || self.old_master_alive()
    }

    fn old_master_alive(&self) -> bool {
        self.old_master.is_some_and(|pid| kill(pid, None).is_ok())
    }
}

impl Arbiter {
    /// USR2: starts a new master (the binary at the same path) on the same sockets.
    pub(super) fn begin_upgrade(&mut self) {
        info!("Handling signal: usr2");
        if let Some(child) = self.upgrade.child {
            return warn!("USR2 ignored: the new master (pid: {child}) is still running");
        }
        if self.upgrade.old_master_alive() {
            return warn!(
                "USR2 ignored: this master is itself an upgrade and the old master still runs \
                 (stop it first)"
            );
        }
        if self.phase.is_stopping() {
            return;
        }
        let Some(exe) = self.upgrade.program.exe.clone() else {
            return error!("USR2: cannot find this binary's path; no upgrade");
        };
        let original = self.pidfile.as_ref().map(|p| p.path().to_path_buf());
        if let (Some(pidfile), Some(path)) = (&mut self.pidfile, &original) {
            let mut old = path.clone().into_os_string();
            old.push(".oldbin");
            pidfile.rename(old.into());
        }
        match self.exec_new_master(&exe) {
            Ok(pid) => {
                info!("Started a new master (pid: {pid}) from {}", exe.display());
                self.upgrade.child = Some(pid);
                // A boot or a reload under way settles in this phase (see `settled`).
                if let Phase::Serving = self.phase {
                    self.enter(Phase::Upgrading { drained: false });
                }
                title::set(&format!(
                    "rwsgi: master (old) [{}]",
                    self.settings.proc_name
                ));
            }
            Err(err) => {
                error!("USR2: cannot start a new master: {err}");
                if let (Some(pidfile), Some(path)) = (&mut self.pidfile, original) {
                    pidfile.rename(path);
                }
            }
        }
    }

    /// Forks, and in the child runs the binary again with the sockets kept open.
    fn exec_new_master(&self, exe: &std::path::Path) -> nix::Result<Pid> {
        let fds: Vec<RawFd> = self.listeners.iter().map(Listener::raw).collect();
        let names: Vec<String> = fds.iter().map(RawFd::to_string).collect();
        let mut command = Command::new(exe);
        command
            .args(&self.upgrade.program.args)
            .env(FDS_VAR, names.join(","))
            .env(OLD_MASTER_VAR, std::process::id().to_string());
        if let Some(cwd) = &self.upgrade.program.cwd {
            command.current_dir(cwd);
        }
        if let Some(address) = self.notifier.address() {
            // systemd hears READY and the new MAINPID from the new master (it needs
            // NotifyAccess=all to take a message from it).
            command.env("NOTIFY_SOCKET", address);
        }
        let mask = signals::block_handled();
        // SAFETY: the master never runs threads (DESIGN.md §1); the child only resets its
        // signals, clears close-on-exec on the sockets and executes the binary.
        let forked = unsafe { fork() };
        if !matches!(forked, Ok(ForkResult::Child)) {
            signals::restore_mask(&mask);
        }
        match forked? {
            ForkResult::Parent { child } => Ok(child),
            ForkResult::Child => {
                // USR1 ignored until the new master handles it (an ignored signal stays
                // ignored across exec; the master's handler would not).
                // SAFETY: setting SIG_IGN runs no code.
                let _ = unsafe { nix::sys::signal::signal(Signal::SIGUSR1, SigHandler::SigIgn) };
                signals::reset_dispositions();
                for &fd in &fds {
                    // SAFETY: F_SETFD on a descriptor this process owns changes only its
                    // close-on-exec flag.
                    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
                }
                let err = command.exec();
                eprintln!("rwsgi: USR2: cannot run {}: {err}", exe.display());
                // SAFETY: _exit leaves without running the master's destructors (its pid
                // file and sockets are not this process's to remove).
                unsafe { libc::_exit(1) }
            }
        }
    }

    /// The new master exited: the upgrade is over (rolled back), this master serves.
    pub(super) fn upgrade_exited(&mut self, pid: Pid, how: &str) {
        self.upgrade.child = None;
        warn!("The new master (pid: {pid}) {how}; this master carries on");
        title::set(&format!("rwsgi: master [{}]", self.settings.proc_name));
        if let Some(pidfile) = &mut self.pidfile {
            let path = pidfile.path().to_path_buf();
            if let Some(original) = path.to_str().and_then(|p| p.strip_suffix(".oldbin")) {
                pidfile.rename(original.into());
            }
        }
        match self.phase {
            Phase::Upgrading { drained: true } => {
                info!("Serving again: starting the front tier and the workers");
                self.enter(Phase::Booting);
            }
            Phase::Upgrading { drained: false } => {
                self.enter(Phase::Serving);
            }
            _ => {}
        }
    }

    /// WINCH: while a new master runs, this one's front tier drains and its workers
    /// stop; the sockets stay open here for a rollback.
    pub(super) fn winch(&mut self) {
        if self.upgrade.child.is_none() {
            return info!("Ignoring SIGWINCH: no new master is running (see USR2)");
        }
        info!("Handling signal: winch");
        if matches!(self.phase, Phase::Upgrading { drained: true }) || self.phase.is_stopping() {
            return;
        }
        self.enter(Phase::Upgrading { drained: true });
        self.tell_front_replaced();
        match &self.front {
            // The workers are told when it has drained (see front_exited).
            Some(front) => signal_all([front.pid], Signal::SIGTERM),
            None => self.tell_all_workers(),
        }
    }
}
