//! `--redirect-http`: plain HTTP listeners that answer every request with a 308 to the
//! same URL over HTTPS (RFC 9110 §15.4.9: 308 keeps the method and the body).
//!
//! Nothing else is served here and no worker is involved, so a request never reaches
//! the application over plain HTTP. A request that names no valid host (no Host
//! header, or a malformed one) gets 400: there is nowhere to send it. With `--acme`,
//! `GET /.well-known/acme-challenge/TOKEN` answers the HTTP-01 challenge (RFC 8555
//! §8.3) instead: the key authorization of an order in progress, else 404.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Method;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue, LOCATION};
use hyper::http::uri::Authority;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use super::stopping::Stop;
use crate::config::BindAddr;
use crate::front::Accepting;
use crate::front::acme::Certificates;

/// Where the CA fetches an HTTP-01 token (RFC 8555 §8.3).
const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// Where redirects point: the port of the HTTPS listener.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The port to name in `Location`; None for 443 (the https default) or when no
    /// `--bind` is a TCP address.
    port: Option<u16>,
}

impl Target {
    /// The target for HTTPS served on `binds` (the first TCP one is used).
    pub fn new<'a>(binds: impl IntoIterator<Item = &'a BindAddr>) -> Target {
        let port = binds.into_iter().find_map(|bind| match bind {
            BindAddr::Tcp(addr) => Some(addr.port()),
            BindAddr::Unix(_) | BindAddr::Fd(_) => None,
        });
        Target {
            port: port.filter(|&port| port != 443),
        }
    }

    /// `https://HOST[:PORT]/path?query` for a request, or None when the request does
    /// not say which host it was for.
    fn location<B>(&self, request: &Request<B>) -> Option<String> {
        // An absolute-form target's authority wins over Host (RFC 9112 §3.2.2); an
        // HTTP/2 request carries :authority in the URI.
        let authority = request.uri().authority().cloned().or_else(|| {
            let host = request.headers().get(HOST)?.to_str().ok()?;
            host.parse::<Authority>().ok()
        })?;
        let host = authority.host();
        if host.is_empty() || authority.as_str().contains('@') {
            return None;
        }
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let path = match request.uri().path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.as_str(),
            _ => "/",
        };
        Some(format!("https://{host}{port}{path}"))
    }
}

fn builder(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .header_read_timeout(header_timeout)
        .timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Accepts connections on a `--redirect-http` listener until the task is aborted; they
/// count against --max-connections like any other. `acme`: the HTTP-01 tokens to
/// answer, with `--acme`.
pub async fn accept_loop(
    listener: Accepting,
    target: Target,
    acme: Option<Arc<Certificates>>,
    header_timeout: Duration,
    stop: Arc<Stop>,
    connections: Arc<Semaphore>,
) {
    let service = Arc::new(Service {
        target,
        acme,
        builder: builder(header_timeout),
    });
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let accepted = match &listener {
            Accepting::Tcp(listener, _) => listener.accept().await.map(|(stream, _)| {
                tokio::spawn(serve(stream, service.clone(), &stop, permit));
            }),
            Accepting::Unix(listener, _) => listener.accept().await.map(|(stream, _)| {
                tokio::spawn(serve(stream, service.clone(), &stop, permit));
            }),
        };
        if let Err(err) = accepted {
            warn!("accept failed: {err}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn serve<S>(
    stream: S,
    service: Arc<Service>,
    stop: &Stop,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let watch = stop.watch();
    async move {
        let _permit = permit;
        let begun = Arc::new(AtomicBool::new(false));
        let begins = begun.clone();
        let answers = service.clone();
        let handler = service_fn(move |request: Request<hyper::body::Incoming>| {
            begins.store(true, Ordering::Relaxed);
            let response = answers.answer(&request);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = (service.builder)
            .serve_connection(TokioIo::new(stream), handler)
            .into_owned();
        // Its HTTP/1 connections are closed by hyper's own timers, never as idle here;
        // its socket is not guarded, so it never holds a response back.
        let idle = std::future::pending();
        if let Err(err) = watch
            .serve(
                Box::pin(connection),
                || begun.load(Ordering::Relaxed),
                idle,
                || (),
            )
            .await
        {
            debug!("redirect connection ended with an error: {err}");
        }
    }
}

/// What a redirect listener answers, and its connections' settings.
struct Service {
    target: Target,
    acme: Option<Arc<Certificates>>,
    builder: auto::Builder<TokioExecutor>,
}

impl Service {
    fn answer<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        (self.acme.as_deref())
            .and_then(|acme| challenge(acme, request))
            .unwrap_or_else(|| respond(self.target.location(request)))
    }
}

/// The answer to an HTTP-01 validation, or None when `request` is not one.
fn challenge<B>(acme: &Certificates, request: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let token = request.uri().path().strip_prefix(CHALLENGE_PATH)?;
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let (status, body) = match acme.key_authorization(token) {
        // RFC 8555 §8.3: the body is exactly the key authorization.
        Some(key_authorization) => (StatusCode::OK, key_authorization),
        None => (StatusCode::NOT_FOUND, String::new()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(response)
}

fn respond(location: Option<String>) -> Response<Full<Bytes>> {
    let location = location.and_then(|l| HeaderValue::from_str(&l).ok().map(|v| (l, v)));
    let (status, body, header) = match location {
        Some((text, value)) => (
            StatusCode::PERMANENT_REDIRECT,
            format!("Redirecting to {text}\n"),
            Some(value),
        ),
        None => (
            StatusCode::BAD_REQUEST,
            "A Host header is needed to redirect to https.\n".to_string(),
            None,
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(value) = header {
        headers.insert(LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn location(target: Target, uri: &str, host: Option<&str>) -> Option<String> {
        let mut request = Request::builder().uri(uri);
        if let Some(host) = host {
            request = request.header(HOST, host);
        }
        target.location(&request.body(()).unwrap())
    }

    #[test]
    fn locations() {
        let on =
            |port: u16| Target::new(&[BindAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))]);
        assert_eq!(
            location(on(8443), "/a/b?x=1&y", Some("example.com:8080")).as_deref(),
            Some("https://example.com:8443/a/b?x=1&y")
        );
        assert_eq!(
            location(on(443), "/", Some("example.com")).as_deref(),
            Some("https://example.com/")
        );
        assert_eq!(
            location(on(8443), "/p", Some("[::1]:80")).as_deref(),
            Some("https://[::1]:8443/p")
        );
        assert_eq!(
            location(on(8443), "http://abs.example/q?z", Some("other")).as_deref(),
            Some("https://abs.example:8443/q?z")
        );
        assert_eq!(
            location(on(8443), "*", Some("h")).as_deref(),
            Some("https://h:8443/")
        );
        assert_eq!(location(on(8443), "/", None), None);
        assert_eq!(location(on(8443), "/", Some("bad host")), None);
        assert_eq!(location(on(8443), "/", Some("user@evil.example")), None);
        assert_eq!(location(on(8443), "/", Some("")), None);
        let unix = Target::new(&[BindAddr::Unix("/tmp/s".into())]);
        assert_eq!(
            location(unix, "/", Some("h")).as_deref(),
            Some("https://h/")
        );
    }
}
