//! The send timeout of HTTP/2 responses stalled by flow control.
//!
//! On HTTP/1 a client that reads nothing blocks the socket write, and the guard's send
//! timer closes the connection. On HTTP/2 a stream whose flow-control window is 0
//! blocks no write at all: hyper simply stops polling its body (it waits for window
//! first), so nothing inside the body can notice, and no socket write ever starts the
//! guard's timer. Such a stream would hold its response (memory, spill, and through
//! backpressure a worker) for as long as the client keeps the connection open.
//!
//! Hence a watchdog outside the bodies, one per HTTP/2 connection, running only while
//! the connection has responses under way: each response's [`Backlog`] says whether
//! bytes wait for the client and since when nothing has been taken; a response whose
//! bytes have waited `--send-timeout` with none taken closes the whole connection (GOAWAY
//! is pointless: the client is not reading). hyper offers no handle to reset one stream
//! from outside its body, and a client that leaves a stream stalled that long is not one
//! whose other streams are worth keeping; nginx's `send_timeout` also gives up on the
//! client rather than waiting on it.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tracing::debug;

use super::signal::Signal;
use crate::front::dispatch::budget::{Backlog, now_ms};

/// The watchdog of one connection.
#[derive(Default)]
pub struct Stalls {
    inner: Mutex<Watched>,
    /// Set when the connection is to close.
    fired: Signal,
}

#[derive(Default)]
struct Watched {
    responses: Vec<Weak<Backlog>>,
    /// Whether the watchdog task runs.
    running: bool,
}

impl Stalls {
    fn lock(&self) -> MutexGuard<'_, Watched> {
        crate::lock::lock(&self.inner)
    }

    /// Watches `backlog` (a response under way) for as long as it lives, starting the
    /// watchdog task if it is not running.
    pub fn watch(self: &Arc<Self>, backlog: &Arc<Backlog>, timeout: Duration) {
        let mut watched = self.lock();
        watched.responses.push(Arc::downgrade(backlog));
        if !watched.running {
            watched.running = true;
            tokio::spawn(watchdog(self.clone(), timeout));
        }
    }

    /// Resolves when a response of the connection stalled for the send timeout.
    pub async fn fired(&self) {
        self.fired.wait().await
    }
}

/// Sleeps until the earliest moment a response under way could have stalled for
/// `timeout`, looks, and goes on while responses remain.
async fn watchdog(stalls: Arc<Stalls>, timeout: Duration) {
    let timeout_ms = timeout.as_millis() as u64;
    let mut wait = timeout_ms;
    loop {
        tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        let now = now_ms();
        let mut watched = stalls.lock();
        watched.responses.retain(|w| w.strong_count() > 0);
        if watched.responses.is_empty() {
            watched.running = false;
            return;
        }
        wait = timeout_ms;
        for backlog in watched.responses.iter().filter_map(Weak::upgrade) {
            if !backlog.waiting() {
                continue;
            }
            let waited = now.saturating_sub(backlog.since());
            if waited >= timeout_ms {
                debug!("closing an HTTP/2 connection: a response made no progress for {timeout:?}");
                watched.responses.clear();
                watched.running = false;
                drop(watched);
                stalls.fired.set();
                return;
            }
            wait = wait.min(timeout_ms - waited);
        }
    }
}
