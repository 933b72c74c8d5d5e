//! What the sync, gthread, gevent and asgi workers share: serving one request, and when a
//! worker retires on its own (`--max-requests`, `--max-worker-memory`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::Python;
use tracing::{error, info};

use super::channel::{Body, Channel, Request, StreamSink};
use super::memory::MemoryLimit;
use crate::protocol::RequestHead;
use crate::python::{self, App, Outcome, ResponseSink};
use crate::scoreboard::WorkerSlot;

/// How a worker's serving ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Finished {
    /// Every request answered.
    Clean,
    /// These many threads were left in the application, their requests timed out.
    Abandoned(usize),
}

/// When a worker retires on its own: `--max-requests` and `--max-worker-memory`.
pub(super) struct Limits {
    /// Requests served before it retires.
    pub(super) max_requests: u64,
    /// Dropped once it has tripped: a retiring worker need not look again.
    pub(super) memory: Option<MemoryLimit>,
}

/// Serves one request whose signs of life go to `slot`; false when this worker (or
/// thread) must serve no more: its channel broke, or the master timed it out.
pub(super) fn serve(
    py: Python<'_>,
    app: &mut App,
    channel: &Arc<Channel>,
    slot: WorkerSlot,
    request: Request,
) -> bool {
    let sink = Arc::new(StreamSink::new(channel.clone(), request.stream, slot));
    match open_body(request.body, &request.head, &*sink) {
        Ok(Some(body)) => {
            app.handle(py, &request.head, body, sink) != Outcome::ChannelBroken
                && slot.idle().is_ok()
        }
        // A 500 was queued in the application's place.
        Ok(None) => py.detach(|| sink.flush()).is_ok() && slot.idle().is_ok(),
        Err(_) => false,
    }
}

/// The request's body for the application. None when the front tier's spool file cannot
/// be opened: the app would see a body that is not the client's, so a 500 is queued in
/// its place (the caller flushes).
pub(super) fn open_body(
    body: Body,
    head: &RequestHead,
    sink: &dyn ResponseSink,
) -> std::io::Result<Option<python::Body>> {
    match body {
        Body::Memory(bytes) => Ok(Some(python::Body::Memory(bytes))),
        Body::Python(body) => Ok(Some(python::Body::Python(body))),
        Body::File { path, length } => match std::fs::File::open(&path) {
            Ok(file) => Ok(Some(python::Body::File { file, length })),
            Err(err) => {
                error!(
                    "cannot open the spooled request body {}: {err}",
                    path.display()
                );
                python::send_error_page(sink, &head.method[..] == b"HEAD")?;
                Ok(None)
            }
        },
    }
}

/// `--max-requests` and `--max-worker-memory` for a worker serving several requests at
/// once (from several threads, or greenlets).
pub(super) struct Retirement {
    /// Requests taken so far.
    taken: AtomicU64,
    max_requests: u64,
    memory: Mutex<Option<MemoryLimit>>,
}

impl Retirement {
    pub(super) fn new(limits: Limits) -> Retirement {
        Retirement {
            taken: AtomicU64::new(0),
            max_requests: limits.max_requests,
            memory: Mutex::new(limits.memory),
        }
    }

    /// A request is taken: the last one before `--max-requests` queues Retire, ahead of
    /// its response's End (see Channel::retire).
    pub(super) fn took(&self, channel: &Channel) {
        if self.taken.fetch_add(1, Ordering::Relaxed) + 1 == self.max_requests {
            info!("Autorestarting worker after current request.");
            channel.retire();
        }
    }

    /// A response is done: retires the worker if it passed `--max-worker-memory`. False
    /// if the channel broke on the way.
    pub(super) fn served(&self, py: Python<'_>, channel: &Channel) -> bool {
        let mut memory = crate::lock::lock(&self.memory);
        !retire_for_memory(&mut memory, channel) || py.detach(|| channel.flush()).is_ok()
    }
}

/// After a response: whether the worker passed `--max-worker-memory` just now. Then it
/// has queued Retire, which goes alone (the response has left): requests that cross it
/// on the channel are still served (the same handshake as on SIGTERM). The caller
/// flushes.
pub(super) fn retire_for_memory(memory: &mut Option<MemoryLimit>, channel: &Channel) -> bool {
    if memory.take_if(|limit| limit.exceeded()).is_none() {
        return false;
    }
    channel.retire();
    true
}
