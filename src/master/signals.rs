//! The master's signals: handlers do nothing but note the signal and wake the loop
//! through a self-pipe, so all work happens in the loop, never in a handler.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, pthread_sigmask, sigaction,
};

/// The signals the master acts on.
pub const HANDLED: [Signal; 10] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is a live local byte. A full
        // pipe (EAGAIN) loses only a duplicate wake-up, never the loop's next pass.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// The read end of the self-pipe, with the signals it reports.
pub struct SignalPipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl SignalPipe {
    /// Installs the handlers. Call once, in the master, before any fork.
    pub fn install() -> nix::Result<SignalPipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        WAKE_FD.store(write.as_raw_fd(), Ordering::Relaxed);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for signal in HANDLED {
            // SAFETY: the handler only performs an async-signal-safe write.
            unsafe { sigaction(signal, &action) }?;
        }
        Ok(SignalPipe { read, write })
    }

    /// Waits up to `timeout` for signals, or for `also` to become readable, and returns
    /// the signals that arrived, in order.
    pub fn wait(&self, timeout: Duration, also: Option<BorrowedFd<'_>>) -> Vec<Signal> {
        let mut fds = vec![PollFd::new(self.read.as_fd(), PollFlags::POLLIN)];
        fds.extend(also.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
        );
        let mut signals = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = nix::unistd::read(&self.read, &mut buf) {
            signals.extend(
                buf[..n]
                    .iter()
                    .filter_map(|&b| Signal::try_from(b as i32).ok()),
            );
        }
        signals
    }

    /// The pipe's descriptors, which a child must not keep.
    pub fn raw_fds(&self) -> [i32; 2] {
        [self.read.as_raw_fd(), self.write.as_raw_fd()]
    }
}

/// Blocks the handled signals until the returned mask is restored with `SIG_SETMASK`.
///
/// A fork is bracketed by this: a signal sent to a child before it has reset its
/// dispositions would otherwise run the inherited handler and write to the inherited
/// self-pipe, so the master would act on a signal meant for the child (a SIGTERM to a
/// worker just forked stopped the whole server).
pub fn block_handled() -> SigSet {
    let mut handled = SigSet::empty();
    for signal in HANDLED {
        handled.add(signal);
    }
    let mut previous = SigSet::empty();
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled), Some(&mut previous));
    previous
}

/// Puts back the signal mask `block_handled` returned (in the parent after a fork).
pub fn restore_mask(previous: &SigSet) {
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(previous), None);
}

/// Restores default handling of every signal the master handles (but USR1, whose
/// handler a child sets first: see `log::reopen_on_usr1`) and unblocks them all.
pub fn reset_dispositions() {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in HANDLED.into_iter().filter(|&s| s != Signal::SIGUSR1) {
        // SAFETY: installing SIG_DFL has no handler code to be unsafe.
        let _ = unsafe { sigaction(signal, &default) };
    }
    let _ = SigSet::all().thread_unblock();
}
