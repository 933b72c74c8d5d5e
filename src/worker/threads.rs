//! The gthread worker: `--threads` Python threads serve as many streams of the one
//! channel at once (DESIGN.md §4).
//!
//! This thread (the process's first) reads the channel, never holding the GIL, and
//! queues each whole request; a Python thread takes it, calls the application holding
//! the GIL, and sends the response through the channel's writer, whose lock keeps each
//! frame whole. The GIL is released while a thread waits for a request and while its
//! response is written (the response code flushes with the GIL released).
//!
//! A thread whose request the master timed out (`--timeout`, on the thread's own stamp
//! of the scoreboard) serves no more; the master also tells the worker to retire, so it
//! exits once its other requests are done, leaving the stuck thread behind.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use pyo3::Python;
use tracing::error;

use super::channel::{Channel, Request};
use super::serve::{Finished, Limits, Retirement, serve as serve_one};
use crate::lock::lock;
use crate::python::App;
use crate::scoreboard::WorkerSlot;

/// How often the reader, done reading, looks again at threads that may be stuck.
const STUCK_CHECK: Duration = Duration::from_millis(100);

/// What the reader and the serving threads share.
struct Queue {
    state: Mutex<State>,
    /// A request was queued, or the channel closed.
    queued: Condvar,
    /// A serving thread left.
    left: Condvar,
    retirement: Retirement,
}

struct State {
    requests: VecDeque<Request>,
    /// No more requests will come.
    closed: bool,
    /// Per thread: it has left its loop.
    left: Vec<bool>,
}

impl Queue {
    fn push(&self, request: Request) {
        lock(&self.state).requests.push_back(request);
        self.queued.notify_one();
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.queued.notify_all();
    }

    /// The next request; None once the channel is closed and nothing is left.
    fn next(&self) -> Option<Request> {
        let mut state = lock(&self.state);
        loop {
            if let Some(request) = state.requests.pop_front() {
                return Some(request);
            }
            if state.closed {
                return None;
            }
            state = crate::lock::wait(&self.queued, state);
        }
    }

    fn leave(&self, thread: usize) {
        if let Some(left) = lock(&self.state).left.get_mut(thread) {
            *left = true;
        }
        self.left.notify_all();
    }

    /// Waits until every thread has left or is stuck on a timed-out request; returns
    /// how many are stuck.
    fn wait_for_threads(&self, slot: WorkerSlot) -> usize {
        let mut state = lock(&self.state);
        loop {
            let running = (0..state.left.len()).filter(|&i| !state.left[i]);
            let (stuck, serving): (Vec<usize>, Vec<usize>) =
                running.partition(|&i| slot.thread(i).timed_out());
            if serving.is_empty() {
                return stuck.len();
            }
            state = self
                .left
                .wait_timeout(state, STUCK_CHECK)
                .map(|(state, _)| state)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }
}

/// Marks a serving thread gone when dropped.
struct Leaving<'a>(&'a Queue, usize);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// Serves with `threads` Python threads until the channel closes or the worker has
/// retired, and every thread has finished (or is stuck on a timed-out request).
pub(super) fn serve(
    app: App,
    channel: &Arc<Channel>,
    slot: WorkerSlot,
    limits: Limits,
    threads: usize,
    stop: &AtomicBool,
) -> Finished {
    let queue = Arc::new(Queue {
        state: Mutex::new(State {
            requests: VecDeque::new(),
            closed: false,
            left: vec![false; threads],
        }),
        queued: Condvar::new(),
        left: Condvar::new(),
        retirement: Retirement::new(limits),
    });
    // The signals meant for the worker (SIGTERM above all) must wake this thread's
    // read of the channel, so the serving threads are started with them blocked.
    let mut blocked = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
        blocked.add(signal);
    }
    let mut before = SigSet::empty();
    let masked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut before));
    let apps: Vec<App> = Python::attach(|py| (0..threads).map(|_| app.for_thread(py)).collect());
    let mut started = 0;
    for (thread, mut app) in apps.into_iter().enumerate() {
        let (shared, channel) = (queue.clone(), channel.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("rwsgi-thread-{thread}"))
            .spawn(move || {
                // Leaves even if the thread panics, so that the reader does not wait
                // for it for ever.
                let _leaving = Leaving(&shared, thread);
                work(&mut app, &channel, &shared, slot.thread(thread));
            });
        match spawned {
            Ok(_) => started += 1,
            Err(err) => {
                error!("cannot start worker thread {thread}: {err}");
                queue.leave(thread);
            }
        }
    }
    if masked.is_ok() {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None);
    }
    // This thread holds the GIL since the interpreter started: it lets go for as long
    // as the threads serve.
    let stuck = Python::attach(|py| {
        py.detach(|| {
            if started > 0
                && let Err(err) = channel.read_requests(stop, |request| queue.push(request))
            {
                err.log_end(&std::process::id());
            }
            queue.close();
            queue.wait_for_threads(slot)
        })
    });
    match stuck {
        0 => Finished::Clean,
        stuck => Finished::Abandoned(stuck),
    }
}

/// One serving thread's loop: takes requests until there are no more, or this thread
/// must serve no more (its request timed out, or the channel broke).
fn work(app: &mut App, channel: &Arc<Channel>, queue: &Queue, stamp: WorkerSlot) {
    Python::attach(|py| {
        while let Some(request) = py.detach(|| queue.next()) {
            if stamp.begin(request.stream).is_err() {
                // Cannot happen (a timed-out thread left this loop); should it anyway,
                // the request goes back for another thread.
                queue.push(request);
                return;
            }
            queue.retirement.took(channel);
            if !serve_one(py, app, channel, stamp, request) || !queue.retirement.served(py, channel)
            {
                if !stamp.timed_out() {
                    // The worker has one thread fewer than the front tier counts on: it
                    // retires (the master retires it on a timeout already).
                    channel.retire();
                    let _ = py.detach(|| channel.flush());
                }
                return;
            }
        }
    });
}
