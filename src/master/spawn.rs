//! The only place rwsgi forks. Every child is set up the same way: it dies with the
//! master (PR_SET_PDEATHSIG), forgets the master's signal handling and closes the
//! master's descriptors it has no use for, then runs its role and exits.

use std::os::fd::RawFd;

use nix::unistd::{ForkResult, Pid, fork, getppid};

use super::signals;
use crate::config::Credentials;
use crate::python;

/// Which side of a fork this is.
pub enum Forked {
    /// In the parent, with the child's pid.
    Parent(Pid),
    /// In the child: run the role, then exit with its code.
    Child,
}

/// Forks a child for `role`, closing `close_in_child` in it.
///
/// With a preloaded interpreter the fork is bracketed by CPython's own before/after
/// hooks, as `os.fork()` does, so the child's interpreter state (locks, thread states)
/// is consistent.
pub fn fork_child(
    role: &'static str,
    preloaded: bool,
    close_in_child: &[RawFd],
    credentials: Option<Credentials>,
) -> nix::Result<Forked> {
    let master = nix::unistd::getpid();
    if preloaded {
        python::before_fork();
    }
    // Held until the child has dropped the master's handlers (see `block_handled`).
    let mask = signals::block_handled();
    // SAFETY: the master never runs threads (DESIGN.md §1), so the child is a faithful
    // single-threaded copy; it only calls async-signal-safe code until it has set up.
    let result = unsafe { fork() };
    if !matches!(result, Ok(ForkResult::Child)) {
        signals::restore_mask(&mask);
    }
    match result {
        Ok(ForkResult::Parent { child }) => {
            if preloaded {
                python::after_fork_parent();
            }
            Ok(Forked::Parent(child))
        }
        Ok(ForkResult::Child) => {
            if preloaded {
                python::after_fork_child();
            }
            // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
            if getppid() != master {
                // The master died between fork and prctl: nobody will ever reap us.
                std::process::exit(0);
            }
            if let Some(credentials) = credentials
                && let Err(err) = switch_user(credentials)
            {
                eprintln!("rwsgi {role}: cannot switch to the --user/--group: {err}");
                std::process::exit(crate::exit::WORKER_BOOT_ERROR);
            }
            if credentials.is_some() {
                // A change of user clears the parent-death signal: set it again.
                // SAFETY: as above.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
                if getppid() != master {
                    std::process::exit(0);
                }
            }
            // Unblocks every signal too: one sent meanwhile now acts on the child alone.
            // Before the signals are unblocked: a USR1 must never end a child.
            crate::log::reopen_on_usr1();
            signals::reset_dispositions();
            for &fd in close_in_child {
                // SAFETY: closing a descriptor this process inherited and will not use;
                // nothing in the child refers to it (it is never dropped as owned here,
                // because the child leaves through process::exit).
                unsafe { libc::close(fd) };
            }
            crate::log::set_role(role);
            Ok(Forked::Child)
        }
        Err(err) => {
            if preloaded {
                python::after_fork_parent();
            }
            Err(err)
        }
    }
}

/// Drops to `--user` / `--group`: the group first (with no supplementary groups but it),
/// then the user, after which the old identity cannot be taken back.
fn switch_user(credentials: Credentials) -> nix::Result<()> {
    use nix::unistd::{geteuid, setgid, setgroups, setuid};
    if geteuid().is_root() {
        setgroups(&[credentials.gid])?;
    }
    setgid(credentials.gid)?;
    setuid(credentials.uid)
}
