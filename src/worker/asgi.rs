//! The asgi worker (`-k asgi`): an ASGI 3 application on an asyncio event loop (uvloop
//! when installed) on the process's one thread, a task per request, up to
//! `--worker-connections` at once. No thread per request.
//!
//! The shape is the gevent worker's: the loop watches the channel's descriptor
//! (`loop.add_reader`), and when it is readable takes what has arrived without blocking
//! ([`Channel::poll_requests`]); each whole request becomes a task answering through its
//! own [`StreamSink`]. Lifespan startup ran before the worker said Hello (see `run`).
//!
//! `--timeout` watches the worker as a whole, as gevent's: its slot shows the last sign
//! of life of any request, and idles only when none is in flight. A stop (TERM) or a
//! retirement (`--max-requests`) asks the front tier for Retired; the requests in flight
//! finish (the master bounds that with `--graceful-timeout`), then lifespan shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyList};
use tracing::error;

use super::channel::{Channel, Incoming, Request, StreamSink};
use super::serve::{Finished, Limits, Retirement, open_body};
use crate::lock::lock;
use crate::python::{AsgiApp, ResponseSink};
use crate::scoreboard::WorkerSlot;

/// How often the loop looks at a stop even when nothing arrives (seconds).
const STOP_CHECK_SECONDS: f64 = 1.0;

/// What one poll took: new requests' streams, new WebSockets' sockets, the WebSockets
/// something arrived for, whether a client of a request being served went away, and
/// whether the channel is open.
type Polled<'py> = (Bound<'py, PyList>, Bound<'py, PyList>, Vec<u32>, bool, bool);

/// What the reading callback and the requests' ends share.
struct Tasks {
    asgi: AsgiApp,
    channel: Arc<Channel>,
    slot: WorkerSlot,
    incoming: Mutex<Incoming>,
    in_flight: AtomicUsize,
    retirement: Retirement,
}

impl Tasks {
    /// Takes what has arrived: the streams of the whole requests, the sockets of the
    /// new WebSockets, the ids of the WebSockets something arrived for, and whether the
    /// channel is still open.
    fn poll<'py>(self: &Arc<Self>, py: Python<'py>, stop: &AtomicBool) -> PyResult<Polled<'py>> {
        let mut requests = Vec::new();
        let mut incoming = lock(&self.incoming);
        let aborts = incoming.aborts;
        let open = self
            .channel
            .poll_requests(stop, &mut incoming, |r| requests.push(r));
        let aborted = incoming.aborts != aborts;
        // After Retired the channel is still read while tasks run: the front tier closes
        // their WebSockets then (1012), and their applications must hear it.
        let draining =
            incoming.retired && !incoming.closed && self.in_flight.load(Ordering::Relaxed) > 0;
        let ended = incoming.closed || open.is_err();
        drop(incoming);
        let open = open.map(|open| open || draining);
        // The loop polls at least every STOP_CHECK_SECONDS: a loop that does is alive,
        // however long its WebSockets stay silent (--timeout is for a blocked loop).
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            let _ = self.slot.alive();
        }
        let streams = PyList::empty(py);
        let sockets = PyList::empty(py);
        for request in requests {
            if let Some(inbox) = request.websocket.clone() {
                sockets.append(self.open_socket(py, request, inbox)?)?;
            } else if let Some(stream) = self.start(py, request)? {
                streams.append(stream)?;
            }
        }
        if ended {
            // No frame of the front tier's can come any more: the WebSockets still open
            // are over (else their tasks, and the worker, would wait for ever).
            self.channel.end_sockets();
        }
        let touched = self.channel.take_touched();
        let open = match open {
            Ok(open) => open,
            Err(err) => {
                err.log_end(&std::process::id());
                false
            }
        };
        Ok((streams, sockets, touched, aborted, open))
    }

    /// A WebSocket taken: its socket for the glue's task.
    fn open_socket<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        request: Request,
        inbox: crate::python::SharedInbox,
    ) -> PyResult<Bound<'py, crate::python::AsgiSocket>> {
        self.retirement.took(&self.channel);
        let _ = self.slot.alive();
        let sink = Arc::new(StreamSink::for_event_loop(
            self.channel.clone(),
            request.stream,
            self.slot,
        ));
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let tasks = self.clone();
        let done = Box::new(move |py: Python<'_>| tasks.finished(py));
        self.asgi
            .socket(py, request.stream, request.head, sink, inbox, done)
    }

    /// One request taken: its stream, or None when it was answered already (a body
    /// that could not be opened).
    fn start<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        request: Request,
    ) -> PyResult<Option<Bound<'py, crate::python::AsgiStream>>> {
        let Request {
            stream, head, body, ..
        } = request;
        self.retirement.took(&self.channel);
        // Taking the request is a sign of life of the worker (the master's clock runs
        // from it while the worker was idle).
        let _ = self.slot.alive();
        let sink = Arc::new(StreamSink::for_event_loop(
            self.channel.clone(),
            stream,
            self.slot,
        ));
        let body = match open_body(body, &head, &*sink) {
            Ok(Some(body)) => body,
            Ok(None) | Err(_) => {
                let _ = py.detach(|| sink.flush());
                return Ok(None);
            }
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let tasks = self.clone();
        let done = Box::new(move |py: Python<'_>| tasks.finished(py));
        let sink: Arc<dyn ResponseSink> = sink;
        self.asgi.stream(py, head, body, sink, done).map(Some)
    }

    /// A request's task is over.
    fn finished(&self, py: Python<'_>) {
        // With others in flight the worker is not idle: its silence counts from now.
        let _ = match self.in_flight.fetch_sub(1, Ordering::Relaxed) {
            1 => self.slot.idle(),
            _ => self.slot.alive(),
        };
        self.retirement.served(py, &self.channel);
    }
}

/// Serves on the event loop until the channel closes or the worker has retired and
/// every task has finished; then lifespan shutdown, given at most `graceful`.
pub(super) fn serve(
    asgi: AsgiApp,
    channel: &Arc<Channel>,
    slot: WorkerSlot,
    limits: Limits,
    stop: &'static AtomicBool,
    graceful: Duration,
) -> Finished {
    let tasks = Arc::new(Tasks {
        asgi,
        channel: channel.clone(),
        slot,
        incoming: Mutex::new(Incoming::default()),
        in_flight: AtomicUsize::new(0),
        retirement: Retirement::new(limits),
    });
    Python::attach(|py| {
        let shared = tasks.clone();
        let poll = PyCFunction::new_closure(py, Some(c"rwsgi_poll"), None, move |args, _| {
            shared
                .poll(args.py(), stop)
                .map(|(streams, sockets, touched, aborted, open)| {
                    (streams.unbind(), sockets.unbind(), touched, aborted, open)
                })
        });
        let served = poll.and_then(|poll| {
            tasks
                .asgi
                .serve(py, channel.raw_fd(), poll, STOP_CHECK_SECONDS)
        });
        if let Err(err) = served {
            error!(
                "asgi worker: {}",
                crate::python::format_traceback(py, &err).trim_end()
            );
        }
        tasks.asgi.shutdown(py, graceful);
    });
    Finished::Clean
}
