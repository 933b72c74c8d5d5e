//! The sync worker (gunicorn's default class): one request at a time, in the worker's
//! one thread; its siblings are `threads` (gthread) and `gevent`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use pyo3::Python;
use tracing::info;

use super::channel::Channel;
use super::serve::{Finished, Limits, retire_for_memory, serve as serve_one};
use crate::python::App;
use crate::scoreboard::WorkerSlot;

/// The sync worker: one request at a time, in this thread, until `stop` (SIGTERM).
pub(super) fn serve(
    mut app: App,
    channel: &Arc<Channel>,
    slot: WorkerSlot,
    mut limits: Limits,
    id: u32,
    stop: &AtomicBool,
) -> Finished {
    let mut served: u64 = 0;
    Python::attach(|py| {
        loop {
            let request = py.detach(|| channel.next_request(stop));
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
            if !serve_one(py, &mut app, channel, slot, request) {
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
