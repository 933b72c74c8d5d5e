//! A worker process: embeds CPython, loads the application and serves the requests the
//! front tier sends down its channel: one at a time (the sync worker, `sync`), or
//! several at once in Python threads (gthread, `threads`) or greenlets (`gevent`); how
//! one request is served and when a worker retires, they share (`serve`). An ASGI
//! application is served by tasks on an event loop (`asgi`).
//!
//! The loop is Rust: read frames with the GIL released, build the environ, call the
//! app, send the response frames. A worker never parses HTTP and never touches a
//! client socket.

mod asgi;
mod channel;
mod gevent;
mod memory;
mod serve;
mod spin;
mod sync;
mod threads;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use tracing::{info, warn};

use crate::config::{Settings, WorkerClass};
use crate::exit::{Failure, WORKER_BOOT_ERROR};
use crate::python::{self, App};
use crate::scoreboard::WorkerSlot;
use channel::Channel;
use memory::MemoryLimit;
use serve::{Finished, Limits};

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

/// Why a worker could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The application was not made ready.
    #[error(transparent)]
    Boot(#[from] python::BootError),
    /// TERM, INT and QUIT.
    #[error("cannot install the worker's signal handlers: {0}")]
    Signals(nix::Error),
}

impl Failure for WorkerError {
    fn exit_code(&self) -> i32 {
        match self {
            WorkerError::Boot(err) => err.exit_code(),
            WorkerError::Signals(_) => WORKER_BOOT_ERROR,
        }
    }

    fn reported(&self) -> bool {
        matches!(self, WorkerError::Boot(err) if err.reported())
    }
}

/// Runs a worker on its end of the channel until told to stop. `slot` is its slot of
/// the shared scoreboard, where it shows signs of life.
pub fn run(settings: &Settings, channel: OwnedFd, id: u32, slot: usize) -> Result<(), WorkerError> {
    if settings.batch_scheduling {
        schedule_as_batch();
    }
    let app = App::boot(settings, id)?;
    install_signals().map_err(WorkerError::Signals)?;
    // Not fatal: without it a timed-out worker is killed without a traceback.
    if let Err(err) = python::install_abort_handler() {
        warn!("cannot install the SIGABRT handler (no traceback on --timeout): {err}");
    }
    if let Err(err) = python::install_dump_handler() {
        warn!("cannot install the SIGUSR2 traceback dump (none on a thread's --timeout): {err}");
    }
    // With no class asked for, an ASGI application is served as -k asgi would.
    let class = match settings.asgi_if_found {
        Some(options) if settings.worker_class == WorkerClass::Sync && app.is_asgi() => {
            info!(
                "The application is an ASGI callable: serving it as -k asgi would (give -k \
                 to choose)"
            );
            WorkerClass::Asgi(options)
        }
        _ => settings.worker_class,
    };
    // --reload showing a load error: its page is a WSGI application.
    let class = match class {
        WorkerClass::Asgi(_) if app.shows_load_error() => WorkerClass::Sync,
        class => class,
    };
    // Lifespan startup completes before the Hello: no request comes before it.
    let asgi = match class {
        WorkerClass::Asgi(options) => Some(
            python::AsgiApp::start(&app, options, settings.timeout)?
                .offer_pathsend(settings.files.has_targets()),
        ),
        _ => None,
    };
    let slot = WorkerSlot::new(slot);
    let capacity = class.capacity();
    // The rings are read by a blocking loop (sync, gthread); a gevent hub or an event
    // loop waits on the socket itself, so it keeps the socket as its channel.
    let ring = !matches!(class, WorkerClass::Gevent(_) | WorkerClass::Asgi(_))
        && settings.limits.ring_size > 0;
    let channel = match Channel::new(channel).and_then(|c| c.hello(capacity, ring).map(|_| c)) {
        Ok(channel) => channel,
        // The front tier is already gone; the master will start everything anew.
        Err(_) => return Ok(()),
    };
    let limits = Limits {
        max_requests: retire_after(settings),
        memory: MemoryLimit::new(settings.max_worker_memory),
    };
    let finished = match (class, asgi) {
        (_, Some(asgi)) => asgi::serve(
            asgi,
            &channel,
            slot,
            limits,
            &STOP,
            settings.graceful_timeout,
        ),
        (WorkerClass::Sync, _) => sync::serve(app, &channel, slot, limits, id, &STOP),
        (WorkerClass::Threads(n), _) => threads::serve(app, &channel, slot, limits, n, &STOP),
        (WorkerClass::Gevent(_) | WorkerClass::Asgi(_), _) => {
            gevent::serve(app, &channel, slot, limits, &STOP)
        }
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
    Ok(())
}

/// Puts this worker under SCHED_BATCH (see `--no-batch-scheduling`): woken by the front
/// tier's doorbell, it no longer preempts the front tier in the middle of its turn.
/// Not fatal: the worker then runs under the normal policy.
fn schedule_as_batch() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param`, valid for the call; pid 0 is this
    // process, and SCHED_BATCH takes priority 0.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        let err = std::io::Error::last_os_error();
        warn!("cannot run the worker under SCHED_BATCH (it runs under the normal policy): {err}");
    }
}
