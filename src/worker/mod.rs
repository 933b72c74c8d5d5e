//! A worker process: embeds CPython, loads the application and serves the requests the
//! front tier sends down its channel: one at a time (the sync worker, here), or several
//! at once in Python threads (gthread, `threads`) or greenlets (gevent).
//!
//! The loop is Rust: read frames with the GIL released, build the environ, call the
//! app, send the response frames. A worker never parses HTTP and never touches a
//! client socket.

mod channel;
mod gevent;
mod memory;
mod threads;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use pyo3::Python;
use tracing::{error, info, warn};

use crate::config::{Settings, WorkerClass};
use crate::exit::WORKER_BOOT_ERROR;
use crate::python::{self, App, Outcome, ResponseSink};
use crate::scoreboard::WorkerSlot;
use channel::{Body, Channel, Request, StreamSink};
use memory::MemoryLimit;

/// Set by SIGTERM: finish the requests under way, then exit.
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
    let app = match App::boot(settings, id) {
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
    if let Err(err) = python::install_dump_handler() {
        warn!("cannot install the SIGUSR2 traceback dump (none on a thread's --timeout): {err}");
    }
    let slot = WorkerSlot::new(slot);
    let capacity = settings.worker_class.capacity();
    // The rings are read by a blocking loop (sync, gthread); a gevent hub waits on the
    // socket itself, so it keeps the socket as its channel.
    let ring =
        !matches!(settings.worker_class, WorkerClass::Gevent(_)) && settings.limits.ring_size > 0;
    let channel = match Channel::new(channel).and_then(|c| c.hello(capacity, ring).map(|_| c)) {
        Ok(channel) => channel,
        // The front tier is already gone; the master will start everything anew.
        Err(_) => return 0,
    };
    let limits = Limits {
        max_requests: retire_after(settings),
        memory: MemoryLimit::new(settings.max_worker_memory),
    };
    let finished = match settings.worker_class {
        WorkerClass::Sync => serve_sync(app, &channel, slot, limits, id),
        WorkerClass::Threads(n) => threads::serve(app, &channel, slot, limits, n, &STOP),
        WorkerClass::Gevent(_) => gevent::serve(app, &channel, slot, limits, &STOP),
    };
    info!("Worker exiting (pid: {})", std::process::id());
    python::shutdown();
    if let Finished::Abandoned(n) = finished {
        // Threads stuck in the application (timed out) would keep the process alive.
        warn!("{n} timed-out request(s) still running in the application: exiting anyway");
        // SAFETY: _exit ends the process at once; the interpreter's exit functions ran
        // in `shutdown`, and the log lines were each written whole.
        unsafe { libc::_exit(0) }
    }
    0
}

/// How a worker's serving ended.
#[derive(Debug, PartialEq, Eq)]
enum Finished {
    /// Every request answered.
    Clean,
    /// These many threads were left in the application, their requests timed out.
    Abandoned(usize),
}

/// When a worker retires on its own: `--max-requests` and `--max-worker-memory`.
struct Limits {
    /// Requests served before it retires.
    max_requests: u64,
    /// Dropped once it has tripped: a retiring worker need not look again.
    memory: Option<MemoryLimit>,
}

/// The sync worker: one request at a time, in this thread.
fn serve_sync(
    mut app: App,
    channel: &Arc<Channel>,
    slot: WorkerSlot,
    mut limits: Limits,
    id: u32,
) -> Finished {
    let mut served: u64 = 0;
    Python::attach(|py| {
        loop {
            let request = py.detach(|| channel.next_request(&STOP));
            let request = match request {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(err) => {
                    err.log_end(&id);
                    break;
                }
            };
            if slot.alive().is_err() {
                // The master times out busy workers only, and one that lost that race
                // left this loop; should it happen anyway, the worker serves no more.
                break;
            }
            served += 1;
            if served == limits.max_requests {
                info!("Autorestarting worker after current request.");
                // Queued ahead of this response's End (see Channel::retire).
                channel.retire();
            }
            // A worker timed out meanwhile (its flushes fail then) serves no more.
            if !serve(py, &mut app, channel, slot, request) {
                break;
            }
            if retire_for_memory(&mut limits.memory, channel)
                && py.detach(|| channel.flush()).is_err()
            {
                break;
            }
        }
    });
    Finished::Clean
}

/// Serves one request whose signs of life go to `slot`; false when this worker (or
/// thread) must serve no more: its channel broke, or the master timed it out.
fn serve(
    py: Python<'_>,
    app: &mut App,
    channel: &Arc<Channel>,
    slot: WorkerSlot,
    request: Request,
) -> bool {
    let sink = Arc::new(StreamSink::new(channel.clone(), request.stream, slot));
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
                return py.detach(|| sent.and_then(|_| sink.flush())).is_ok()
                    && slot.idle().is_ok();
            }
        },
    };
    app.handle(py, &request.head, body, sink) != Outcome::ChannelBroken && slot.idle().is_ok()
}

/// `--max-requests` and `--max-worker-memory` for a worker serving several requests at
/// once (from several threads, or greenlets).
struct Retirement {
    /// Requests taken so far.
    taken: AtomicU64,
    max_requests: u64,
    memory: Mutex<Option<MemoryLimit>>,
}

impl Retirement {
    fn new(limits: Limits) -> Retirement {
        Retirement {
            taken: AtomicU64::new(0),
            max_requests: limits.max_requests,
            memory: Mutex::new(limits.memory),
        }
    }

    /// A request is taken: the last one before `--max-requests` queues Retire, ahead of
    /// its response's End (see Channel::retire).
    fn took(&self, channel: &Channel) {
        if self.taken.fetch_add(1, Ordering::Relaxed) + 1 == self.max_requests {
            info!("Autorestarting worker after current request.");
            channel.retire();
        }
    }

    /// A response is done: retires the worker if it passed `--max-worker-memory`. False
    /// if the channel broke on the way.
    fn served(&self, py: Python<'_>, channel: &Channel) -> bool {
        let mut memory = crate::lock::lock(&self.memory);
        !retire_for_memory(&mut memory, channel) || py.detach(|| channel.flush()).is_ok()
    }
}

/// After a response: whether the worker passed `--max-worker-memory` just now. Then it
/// has queued Retire, which goes alone (the response has left): requests that cross it
/// on the channel are still served (the same handshake as on SIGTERM). The caller
/// flushes.
fn retire_for_memory(memory: &mut Option<MemoryLimit>, channel: &Channel) -> bool {
    if memory.take_if(|limit| limit.exceeded()).is_none() {
        return false;
    }
    channel.retire();
    true
}
