//! A worker process: embeds CPython, loads the application and serves the requests the
//! front tier sends down its channel, one at a time (the sync worker).
//!
//! The loop is Rust: read frames with the GIL released, build the environ, call the
//! app, send the response frames. A worker never parses HTTP and never touches a
//! client socket.

mod channel;
mod memory;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use pyo3::Python;
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::master::WORKER_BOOT_ERROR;
use crate::master::scoreboard::WorkerSlot;
use crate::python::{self, App, Outcome, ResponseSink};
use channel::{Body, Channel, StreamSink};
use memory::MemoryLimit;

/// Set by SIGTERM: finish the request under way, then exit.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

extern "C" fn on_quit(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe; a fast stop abandons the request under way.
    unsafe { libc::_exit(0) }
}

fn install_signals() -> nix::Result<()> {
    // No SA_RESTART: a blocked channel read returns EINTR and sees the stop at once.
    let term = SigAction::new(
        SigHandler::Handler(on_term),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let quit = SigAction::new(
        SigHandler::Handler(on_quit),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handlers only store an atomic or call _exit, both async-signal-safe.
    unsafe {
        sigaction(Signal::SIGTERM, &term)?;
        sigaction(Signal::SIGINT, &quit)?;
        sigaction(Signal::SIGQUIT, &quit)?;
    }
    Ok(())
}

/// How many requests this worker serves before it retires: `--max-requests` plus up to
/// `--max-requests-jitter`, drawn per worker; `u64::MAX` (never) for 0.
fn retire_after(settings: &Settings) -> u64 {
    if settings.max_requests == 0 {
        return u64::MAX;
    }
    // Spreading restarts needs no strong randomness: the clock and the pid differ per
    // worker, and std's hasher is randomly keyed per process.
    use std::hash::{BuildHasher, RandomState};
    let draw = RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()));
    let jitter = match settings.max_requests_jitter {
        0 => 0,
        j => draw % j.saturating_add(1),
    };
    settings.max_requests.saturating_add(jitter)
}

/// Runs a worker on its end of the channel until told to stop; returns the exit code.
/// `slot` is its slot of the shared scoreboard, where it shows signs of life.
pub fn run(settings: &Settings, channel: OwnedFd, id: u32, slot: usize) -> i32 {
    let mut app = match App::boot(settings, id) {
        Ok(app) => app,
        Err(code) => return code,
    };
    if let Err(err) = install_signals() {
        error!("cannot install the worker's signal handlers: {err}");
        return WORKER_BOOT_ERROR;
    }
    // Not fatal: without it a timed-out worker is killed without a traceback.
    if let Err(err) = python::install_abort_handler() {
        warn!("cannot install the SIGABRT handler (no traceback on --timeout): {err}");
    }
    let slot = WorkerSlot::new(slot);
    let channel = match Channel::new(channel, slot).and_then(|c| c.hello(1).map(|_| c)) {
        Ok(channel) => channel,
        // The front tier is already gone; the master will start everything anew.
        Err(_) => return 0,
    };
    let max_requests = retire_after(settings);
    let mut served: u64 = 0;
    // Dropped once it has tripped: a retiring worker need not look again.
    let mut memory = MemoryLimit::new(settings.max_worker_memory);
    Python::attach(|py| {
        loop {
            let request = py.detach(|| channel.next_request(&STOP));
            let request = match request {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(err) => {
                    error!("worker {id}: {err}");
                    break;
                }
            };
            if slot.alive().is_err() {
                // The master times out busy workers only, and one that lost that race
                // left this loop; should it happen anyway, the worker serves no more.
                break;
            }
            served += 1;
            if served == max_requests {
                info!("Autorestarting worker after current request.");
                // Queued ahead of this response's End (see Channel::retire).
                channel.retire();
            }
            let sink = Arc::new(StreamSink::new(channel.clone(), request.stream));
            let body = match request.body {
                Body::Memory(bytes) => python::Body::Memory(bytes),
                Body::File { path, length } => match std::fs::File::open(&path) {
                    Ok(file) => python::Body::File { file, length },
                    Err(err) => {
                        // The app would see a body that is not the client's: answer 500.
                        error!(
                            "cannot open the spooled request body {}: {err}",
                            path.display()
                        );
                        let head_only = &request.head.method[..] == b"HEAD";
                        let sent = python::send_error_page(&*sink, head_only);
                        if py.detach(|| sent.and_then(|_| sink.flush())).is_err()
                            || slot.idle().is_err()
                        {
                            break;
                        }
                        continue;
                    }
                },
            };
            // A worker timed out meanwhile (its flushes fail then) serves no more.
            if app.handle(py, &request.head, body, sink) == Outcome::ChannelBroken
                || slot.idle().is_err()
            {
                break;
            }
            if memory.take_if(|limit| limit.exceeded()).is_some() {
                // The response has left: Retire goes alone, and requests that cross it
                // on the channel are still served (the same handshake as on SIGTERM).
                channel.retire();
                if py.detach(|| channel.flush()).is_err() {
                    break;
                }
            }
        }
    });
    info!("Worker exiting (pid: {})", std::process::id());
    python::shutdown();
    0
}
