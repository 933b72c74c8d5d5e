//! The graceful stop of the front tier's connections.
//!
//! hyper-util's `GracefulShutdown` tells every connection to stop the moment the stop
//! begins. A connection accepted just before, whose request is on its way or not read
//! yet, is then closed unanswered: its client saw the connection accepted and sent a
//! request into it. Here a connection whose first request has not begun gets
//! [`FIRST_REQUEST_GRACE`] for it; that request is answered (`Connection: close`), and
//! only a connection that stays silent that long is closed without one.
//!
//! The same graceful shutdown ends an HTTP/2 connection that has been idle too long
//! (GOAWAY, then close): the guard says when.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::watch;

/// How long a connection with no request yet is given for its first one once the stop
/// has begun: a request sent as the connection was accepted arrives within a round trip.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// The stop signal, shared by the accept loops; each connection holds a [`Watch`].
pub struct Stop {
    signal: watch::Sender<bool>,
    /// Set before the signal is sent: a connection looks at this flag, not at its
    /// receiver, each time its task runs (see [`Watch::serve`]).
    begun: Arc<AtomicBool>,
    /// A new master takes over (USR2): the stop is a restart of the service.
    replaced: Arc<AtomicBool>,
}

/// One connection's view of the stop; the stop waits for every one of them to go.
pub struct Watch {
    stopping: watch::Receiver<bool>,
    begun: Arc<AtomicBool>,
    replaced: Arc<AtomicBool>,
}

impl Stop {
    pub fn new() -> Stop {
        Stop {
            signal: watch::Sender::new(false),
            begun: Arc::default(),
            replaced: Arc::default(),
        }
    }

    /// A watch for one more connection.
    pub fn watch(&self) -> Watch {
        Watch {
            stopping: self.signal.subscribe(),
            begun: self.begun.clone(),
            replaced: self.replaced.clone(),
        }
    }

    /// Connections open (their watches alive).
    pub fn open(&self) -> usize {
        self.signal.receiver_count()
    }

    /// Set when a new master takes over (the master says so): the coming stop is a
    /// restart.
    pub fn replaced(&self) -> Arc<AtomicBool> {
        self.replaced.clone()
    }

    /// Tells every connection to stop.
    pub fn begin(&self) {
        self.begun.store(true, Ordering::Release);
        self.signal.send_replace(true);
    }

    /// Waits until every connection has closed.
    pub async fn closed(&self) {
        self.signal.closed().await;
    }
}

impl Watch {
    /// Resolves once the stop has begun: for a connection hyper no longer serves (a
    /// WebSocket), which closes itself then. True when it is a restart (a new master
    /// took over), false when the server goes away.
    pub async fn begun(&mut self) -> bool {
        // An error means the stop's sender is gone: the front tier is ending anyway.
        let _ = self.stopping.wait_for(|stopping| *stopping).await;
        self.replaced.load(Ordering::Acquire)
    }

    /// Serves `connection` until it ends. When the stop begins, it is told to stop at
    /// once if a request has begun on it (`begun`), else once one begins or
    /// [`FIRST_REQUEST_GRACE`] has passed. When `idle` resolves, it is told to stop
    /// too, and served until it has.
    ///
    /// The connection comes boxed: the task serving it then stays small, and the
    /// connection's state takes only the room it needs. Each time it waits, `waiting`
    /// runs first (it pushes out what its socket holds back: see [`super::last`]).
    pub async fn serve<C: Graceful>(
        mut self,
        mut connection: Pin<Box<C>>,
        begun: impl Fn() -> bool,
        idle: impl Future<Output = ()>,
        waiting: impl Fn(),
    ) -> Result<(), C::Error> {
        let begun_stop = self.begun;
        let mut stop = pin!(self.stopping.wait_for(|stopping| *stopping));
        let mut idle = pin!(idle);
        // The stop's receiver is polled once, which registers the task's waker (the
        // same for the connection's life), and then only once the flag says the stop
        // has begun: polling it takes a lock, and the task runs several times per
        // request.
        let mut registered = false;
        let stopping = poll_fn(|cx| {
            if let Poll::Ready(result) = poll_waiting(&mut connection, cx, &waiting) {
                return Poll::Ready(Err(result));
            }
            if !registered || begun_stop.load(Ordering::Acquire) {
                registered = true;
                // An error means the stop's sender is gone: the front tier is ending
                // anyway.
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(true));
                }
            }
            match idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(false)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let stopping = match stopping {
            Ok(stopping) => stopping,
            Err(result) => return result,
        };
        if !stopping {
            connection.as_mut().graceful_shutdown();
            return poll_fn(|cx| poll_waiting(&mut connection, cx, &waiting)).await;
        }
        if !begun() {
            let mut grace = pin!(tokio::time::sleep(FIRST_REQUEST_GRACE));
            // Polled by hand: a request begins inside the connection's own poll, so it
            // is checked right after it.
            let ended = poll_fn(|cx| {
                if let Poll::Ready(result) = poll_waiting(&mut connection, cx, &waiting) {
                    return Poll::Ready(Some(result));
                }
                if begun() || grace.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            if let Some(result) = ended {
                return result;
            }
        }
        connection.as_mut().graceful_shutdown();
        poll_fn(|cx| poll_waiting(&mut connection, cx, &waiting)).await
    }
}

/// A connection that can be told to finish what it serves and end.
pub trait Graceful: Future<Output = Result<(), Self::Error>> {
    type Error;

    fn graceful_shutdown(self: Pin<&mut Self>);
}

/// hyper-util's connections (the `--redirect-http` listeners').
impl<C: GracefulConnection> Graceful for C {
    type Error = C::Error;

    fn graceful_shutdown(self: Pin<&mut Self>) {
        GracefulConnection::graceful_shutdown(self)
    }
}

/// Polls `connection`; if it waits, runs `waiting` first.
fn poll_waiting<F: Future>(
    connection: &mut Pin<Box<F>>,
    cx: &mut Context<'_>,
    waiting: &impl Fn(),
) -> Poll<F::Output> {
    let polled = connection.as_mut().poll(cx);
    if polled.is_pending() {
        waiting();
    }
    polled
}
