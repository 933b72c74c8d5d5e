//! The gevent worker: each request runs in a greenlet, up to `--worker-connections` at
//! once, on the process's one thread.
//!
//! The interpreter was monkey-patched before the application was imported
//! (`python::App::boot`), so the application's waits (sleep, sockets, locks) switch
//! greenlets. The channel is read without blocking the hub: the loop here waits for it
//! in `gevent.socket.wait_read` (a hub watcher; other greenlets run meanwhile), then
//! takes what has arrived with non-blocking reads and spawns a greenlet per request.
//!
//! `--timeout` watches the worker as a whole: its slot shows the last sign of life of
//! any of its requests, and idles only when none is in flight. Like gunicorn's gevent
//! worker, one that stays silent past the timeout is aborted with all its requests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyTimeoutError;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict};
use tracing::error;

use super::channel::{Channel, Incoming, Request};
use super::serve::{Finished, Limits, Retirement, serve as serve_one};
use crate::lock::lock;
use crate::python::App;
use crate::scoreboard::WorkerSlot;

/// How long the hub waits for the channel before the loop looks at `stop` again.
const STOP_CHECK_SECONDS: f64 = 1.0;

/// What the reading loop and the request greenlets share.
struct Greenlets {
    channel: Arc<Channel>,
    slot: WorkerSlot,
    /// Requests read, each awaiting the greenlet spawned for it.
    queue: Mutex<VecDeque<Request>>,
    /// Applications not in use (each has its own environ builder, which a greenlet
    /// holds across its switches).
    apps: Mutex<Vec<App>>,
    template: App,
    in_flight: AtomicUsize,
    retirement: Retirement,
}

impl Greenlets {
    /// A greenlet's work: the request queued for it.
    fn serve_next(&self, py: Python<'_>) {
        let Some(request) = lock(&self.queue).pop_front() else {
            return;
        };
        let popped = lock(&self.apps).pop();
        let mut app = popped.unwrap_or_else(|| self.template.for_thread(py));
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.retirement.took(&self.channel);
        // Taking the request is a sign of life of the worker (the master's clock runs
        // from it while the worker was idle).
        let _ = self.slot.alive();
        let served = serve_one(py, &mut app, &self.channel, self.slot, request);
        // `serve` idled the slot; no greenlet ran since. With others still in flight
        // the worker is not idle: its silence counts from now.
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) > 1 {
            let _ = self.slot.alive();
        }
        if served {
            self.retirement.served(py, &self.channel);
        }
        lock(&self.apps).push(app);
    }
}

/// Serves in greenlets until the channel closes or the worker has retired, and every
/// greenlet has finished.
pub(super) fn serve(
    app: App,
    channel: &Arc<Channel>,
    slot: WorkerSlot,
    limits: Limits,
    stop: &AtomicBool,
) -> Finished {
    let greenlets = Arc::new(Greenlets {
        channel: channel.clone(),
        slot,
        queue: Mutex::new(VecDeque::new()),
        apps: Mutex::new(Vec::new()),
        template: app,
        in_flight: AtomicUsize::new(0),
        retirement: Retirement::new(limits),
    });
    Python::attach(|py| {
        if let Err(err) = run(py, &greenlets, stop) {
            error!(
                "gevent worker: {}",
                crate::python::format_traceback(py, &err).trim_end()
            );
        }
    });
    Finished::Clean
}

fn run(py: Python<'_>, greenlets: &Arc<Greenlets>, stop: &AtomicBool) -> PyResult<()> {
    let wait_read = py.import("gevent.socket")?.getattr("wait_read")?;
    let group = py.import("gevent.pool")?.getattr("Group")?.call0()?;
    let shared = greenlets.clone();
    let handler = PyCFunction::new_closure(py, Some(c"rwsgi_request"), None, move |args, _| {
        shared.serve_next(args.py());
        Ok::<(), PyErr>(())
    })?;
    let wait = PyDict::new(py);
    wait.set_item("timeout", STOP_CHECK_SECONDS)?;
    let fd = greenlets.channel.raw_fd();
    let mut incoming = Incoming::default();
    loop {
        let mut read = 0;
        let open = greenlets
            .channel
            .poll_requests(stop, &mut incoming, |request| {
                lock(&greenlets.queue).push_back(request);
                read += 1;
            });
        for _ in 0..read {
            group.call_method1("spawn", (&handler,))?;
        }
        match open {
            Ok(true) => {}
            Ok(false) => break,
            Err(err) => {
                err.log_end(&std::process::id());
                break;
            }
        }
        // The hub runs the request greenlets until the channel has more to read.
        if let Err(err) = wait_read.call((fd,), Some(&wait))
            && !err.is_instance_of::<PyTimeoutError>(py)
        {
            return Err(err);
        }
    }
    group.call_method0("join")?;
    Ok(())
}
