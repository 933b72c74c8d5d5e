//! A connection served by hyper's HTTP/1 or its HTTP/2, chosen by the guard.
//!
//! A client speaking HTTP/2 with prior knowledge opens with the preface; the guard
//! examines a connection's first bytes anyway ([`Guarded::poll_detect`]) and keeps
//! them for the server chosen. hyper-util's `auto` builder makes the same choice with a
//! read of its own (24 bytes, replayed through a wrapper around the socket for the
//! connection's life) and a copy of both protocols' settings per connection; on a
//! connection per request, that showed in profiles.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::guard::Guarded;
use super::mapped::SendFile;
use super::stopping::Graceful;

/// The errors a served connection ends with (logged only).
pub type Error = Box<dyn StdError + Send + Sync>;

/// A client's stream, which the guard wraps.
pub trait Stream: AsyncRead + AsyncWrite + SendFile + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + SendFile + Unpin + Send + 'static> Stream for T {}

/// A service that hyper serves over either protocol here.
pub trait Service:
    HttpService<
        Incoming,
        Error: Into<Error>,
        ResBody: Body<Data: Send, Error: Into<Error>> + Send + 'static,
        Future: Send + 'static,
    > + Unpin
{
}

impl<T> Service for T where
    T: HttpService<
            Incoming,
            Error: Into<Error>,
            ResBody: Body<Data: Send, Error: Into<Error>> + Send + 'static,
            Future: Send + 'static,
        > + Unpin
{
}

/// The settings of both protocols for one listener's connections.
pub struct Builders {
    pub h1: http1::Builder,
    pub h2: http2::Builder<TokioExecutor>,
}

/// One connection: its protocol being detected, then served by hyper.
// Most connections become HTTP/1: boxing that state too would cost each of them one
// more allocation, to spare a few hundred bytes while the first bytes arrive.
#[allow(clippy::large_enum_variant)]
pub enum Served<S, Svc: HttpService<Incoming>> {
    /// Until the guard knows the protocol. `parts` is None once a graceful shutdown
    /// has closed the connection.
    Detecting {
        parts: Option<(Guarded<S>, Svc)>,
        builders: Arc<Builders>,
    },
    H1(http1::UpgradeableConnection<TokioIo<Guarded<S>>, Svc>),
    /// Boxed: its state is twice the size of HTTP/1's, which every connection would
    /// otherwise carry.
    H2(Box<http2::Connection<TokioIo<Guarded<S>>, Svc, TokioExecutor>>),
}

impl<S: Stream, Svc: Service> Served<S, Svc> {
    /// Serves `stream` with `service`: by what its first bytes say, or as HTTP/2 at the
    /// first poll, before any read, when it negotiated h2 by ALPN (its guard then passes
    /// everything through, which [`Guarded::poll_detect`] tells at once).
    pub fn new(stream: Guarded<S>, service: Svc, builders: Arc<Builders>) -> Self {
        Served::Detecting {
            parts: Some((stream, service)),
            builders,
        }
    }
}

impl<S: Stream, Svc: Service> Future for Served<S, Svc> {
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this {
                Served::H1(conn) => return Pin::new(conn).poll(cx).map_err(Error::from),
                Served::H2(conn) => return Pin::new(&mut **conn).poll(cx).map_err(Error::from),
                Served::Detecting { parts, builders } => {
                    let Some((stream, _)) = parts else {
                        return Poll::Ready(Ok(()));
                    };
                    let h2 = match stream.poll_detect(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(err)) => return Poll::Ready(Err(err.into())),
                        Poll::Ready(Ok(h2)) => h2,
                    };
                    let Some((stream, service)) = parts.take() else {
                        return Poll::Ready(Ok(()));
                    };
                    let io = TokioIo::new(stream);
                    *this = match h2 {
                        true => Served::H2(Box::new(builders.h2.serve_connection(io, service))),
                        false => {
                            Served::H1(builders.h1.serve_connection(io, service).with_upgrades())
                        }
                    };
                }
            }
        }
    }
}

impl<S: Stream, Svc: Service> Graceful for Served<S, Svc> {
    type Error = Error;

    /// A connection still silent is closed; one being served finishes its requests.
    fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.get_mut() {
            Served::Detecting { parts, .. } => *parts = None,
            Served::H1(conn) => Pin::new(conn).graceful_shutdown(),
            Served::H2(conn) => Pin::new(&mut **conn).graceful_shutdown(),
        }
    }
}
