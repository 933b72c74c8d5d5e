//! `-D/--daemon`: detaching from the terminal as gunicorn does (`gunicorn.util.daemonize`):
//! fork and let the parent exit 0, start a new session, fork again so that the daemon
//! can never take a controlling terminal back, umask 022, and stdin, stdout and stderr
//! on /dev/null (stdout and stderr kept with `-R/--enable-stdio-inheritance`).
//!
//! It runs before the master starts anything: the process has one thread, so forking
//! is safe, and the daemon is the process that binds, writes `--pid` and serves.

use std::fs::OpenOptions;

use nix::sys::stat::{Mode, umask};
use nix::unistd::{ForkResult, dup2_stderr, dup2_stdin, dup2_stdout, fork, setsid};

/// Turns this process into a daemon; returns in the daemon only.
pub fn daemonize(keep_stdio: bool) -> nix::Result<()> {
    for first in [true, false] {
        // SAFETY: rwsgi has one thread here (the master never runs threads, and this is
        // before anything starts), so the child may go on running any code.
        match unsafe { fork() }? {
            // SAFETY: _exit ends the parent without running its destructors or atexit
            // handlers, which belong to the process that goes on.
            ForkResult::Parent { .. } => unsafe { libc::_exit(0) },
            ForkResult::Child if first => {
                setsid()?;
            }
            ForkResult::Child => {}
        }
    }
    umask(Mode::from_bits_truncate(0o022));
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|err| nix::Error::from_raw(err.raw_os_error().unwrap_or(libc::EIO)))?;
    dup2_stdin(&null)?;
    if !keep_stdio {
        dup2_stdout(&null)?;
        dup2_stderr(&null)?;
    }
    Ok(())
}
