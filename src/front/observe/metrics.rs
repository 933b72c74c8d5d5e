//! `--metrics-bind`: Prometheus metrics of the front tier, served on a listener of their
//! own (never on the public one) at `/metrics`, in the text exposition format 0.0.4.
//!
//! The front tier sees every request, so it counts them: by route kind (the app, static
//! files, the health path) and status class, a latency histogram (from the request head
//! to the response's last byte handed to the connection), bytes sent, requests in
//! flight and waiting for a worker. Per worker, the requests it served come from the
//! shared scoreboard (the worker counts them there), and its resident memory from
//! `/proc`; worker restarts are counted by the master in the scoreboard. With TLS, the
//! expiry of the certificate served for each name, and `--acme`'s failed orders.
//!
//! Recording is a few relaxed atomic additions per response, and nothing at all without
//! `--metrics-bind`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tracing::warn;

use crate::front::conn::tls::Tls;
use crate::front::dispatch::pool::Pool;
use crate::front::dispatch::shard::Spread;
use crate::procfs;
use crate::scoreboard;

/// Which part of the front tier answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// A worker (or an error answered in its stead).
    App,
    /// `--static` files.
    Static,
    /// `--health-path`.
    Health,
}

const KINDS: [(RouteKind, &str); 3] = [
    (RouteKind::App, "app"),
    (RouteKind::Static, "static"),
    (RouteKind::Health, "health"),
];
/// nginx's status for a request whose client left before the response was ready.
const CLIENT_CLOSED_REQUEST: u16 = 499;
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Upper bounds of the latency buckets, in seconds (Prometheus' defaults).
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct PerKind {
    by_class: [AtomicU64; 5],
    /// Counts per bucket (not cumulative; summed when written out), then +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    micros: AtomicU64,
    bytes: AtomicU64,
}

/// The front tier's counters.
pub struct Metrics {
    kinds: [PerKind; 3],
    in_flight: AtomicI64,
    /// The open connections of each front thread.
    spread: Arc<Spread>,
}

impl Metrics {
    pub fn new(spread: Arc<Spread>) -> Metrics {
        Metrics {
            kinds: Default::default(),
            in_flight: AtomicI64::new(0),
            spread,
        }
    }

    /// A request has begun.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request's response is over: `bytes` of body sent in `took`.
    pub fn finish(&self, kind: RouteKind, status: u16, took: Duration, bytes: u64) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let counters = &self.kinds[kind as usize];
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        counters.by_class[class].fetch_add(1, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(BUCKETS.len());
        counters.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        counters.micros.fetch_add(micros, Ordering::Relaxed);
        counters.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, pool: &Pool, tls: Option<&Tls>) -> String {
        let mut out = String::with_capacity(4096);
        let _ = self.write(&mut out, pool);
        if let Some(tls) = tls {
            let _ = write_tls(&mut out, tls);
        }
        out
    }

    fn write(&self, out: &mut String, pool: &Pool) -> std::fmt::Result {
        writeln!(
            out,
            "# HELP rwsgi_requests_total Requests answered, by route kind and status class."
        )?;
        writeln!(out, "# TYPE rwsgi_requests_total counter")?;
        for (kind, name) in KINDS {
            let counters = &self.kinds[kind as usize];
            for (class, label) in CLASSES.iter().enumerate() {
                let n = counters.by_class[class].load(Ordering::Relaxed);
                writeln!(
                    out,
                    "rwsgi_requests_total{{kind=\"{name}\",class=\"{label}\"}} {n}"
                )?;
            }
        }
        writeln!(
            out,
            "# HELP rwsgi_request_duration_seconds From the request head to the response's last byte."
        )?;
        writeln!(out, "# TYPE rwsgi_request_duration_seconds histogram")?;
        for (kind, name) in KINDS {
            let counters = &self.kinds[kind as usize];
            let mut cumulative = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += counters.buckets[i].load(Ordering::Relaxed);
                writeln!(
                    out,
                    "rwsgi_request_duration_seconds_bucket{{kind=\"{name}\",le=\"{le}\"}} {cumulative}"
                )?;
            }
            cumulative += counters.buckets[BUCKETS.len()].load(Ordering::Relaxed);
            writeln!(
                out,
                "rwsgi_request_duration_seconds_bucket{{kind=\"{name}\",le=\"+Inf\"}} {cumulative}"
            )?;
            let sum = counters.micros.load(Ordering::Relaxed) as f64 / 1e6;
            writeln!(
                out,
                "rwsgi_request_duration_seconds_sum{{kind=\"{name}\"}} {sum}"
            )?;
            writeln!(
                out,
                "rwsgi_request_duration_seconds_count{{kind=\"{name}\"}} {cumulative}"
            )?;
        }
        writeln!(
            out,
            "# HELP rwsgi_response_body_bytes_total Response body bytes handed to clients' connections."
        )?;
        writeln!(out, "# TYPE rwsgi_response_body_bytes_total counter")?;
        for (kind, name) in KINDS {
            let bytes = self.kinds[kind as usize].bytes.load(Ordering::Relaxed);
            writeln!(
                out,
                "rwsgi_response_body_bytes_total{{kind=\"{name}\"}} {bytes}"
            )?;
        }
        let gauges = [
            (
                "rwsgi_requests_in_flight",
                "Requests being answered.",
                self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "rwsgi_requests_queued",
                "Requests waiting for a free worker.",
                pool.queued() as u64,
            ),
            (
                "rwsgi_workers_ready",
                "Workers taking requests.",
                pool.ready_workers() as u64,
            ),
        ];
        for (name, help, value) in gauges {
            writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            )?;
        }
        writeln!(
            out,
            "# HELP rwsgi_connections_open Client connections open, by front thread (--front-threads).\n# TYPE rwsgi_connections_open gauge"
        )?;
        for (thread, open) in self.spread.open().enumerate() {
            writeln!(out, "rwsgi_connections_open{{thread=\"{thread}\"}} {open}")?;
        }
        writeln!(
            out,
            "# HELP rwsgi_worker_restarts_total Workers the master has replaced (retired, crashed or timed out)."
        )?;
        writeln!(out, "# TYPE rwsgi_worker_restarts_total counter")?;
        writeln!(
            out,
            "rwsgi_worker_restarts_total {}",
            scoreboard::worker_restarts()
        )?;
        let workers = pool.workers();
        writeln!(
            out,
            "# HELP rwsgi_worker_requests_total Requests each worker has served."
        )?;
        writeln!(out, "# TYPE rwsgi_worker_requests_total counter")?;
        for &(id, pid) in &workers {
            let served = scoreboard::served(pid).unwrap_or(0);
            writeln!(
                out,
                "rwsgi_worker_requests_total{{worker=\"{id}\",pid=\"{pid}\"}} {served}"
            )?;
        }
        writeln!(
            out,
            "# HELP rwsgi_worker_resident_bytes Each worker's resident memory (RSS)."
        )?;
        writeln!(out, "# TYPE rwsgi_worker_resident_bytes gauge")?;
        for &(id, pid) in &workers {
            if let Some(rss) = resident_bytes(pid) {
                writeln!(
                    out,
                    "rwsgi_worker_resident_bytes{{worker=\"{id}\",pid=\"{pid}\"}} {rss}"
                )?;
            }
        }
        Ok(())
    }
}

/// The certificates' expiry and `--acme`'s failures.
fn write_tls(out: &mut String, tls: &Tls) -> std::fmt::Result {
    by_domain(
        out,
        "rwsgi_tls_cert_expiry_seconds",
        "gauge",
        "When the certificate served for each name expires (notAfter), in seconds since the epoch.",
        tls.expiries(),
    )?;
    let Some(acme) = tls.acme() else {
        return Ok(());
    };
    by_domain(
        out,
        "rwsgi_acme_failures_total",
        "counter",
        "ACME orders that failed (each retried with backoff), by domain.",
        acme.failures(),
    )
}

/// One metric family with a sample per domain.
fn by_domain<D: AsRef<str>, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (D, V)>,
) -> std::fmt::Result {
    writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}")?;
    for (domain, value) in samples {
        writeln!(
            out,
            "{name}{{domain=\"{}\"}} {value}",
            label(domain.as_ref())
        )?;
    }
    Ok(())
}

/// A label value as the exposition format writes it (backslash, quote and newline
/// escaped): a `--tls` certificate's names are not checked to be DNS names.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A process's resident memory.
fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read(format!("/proc/{pid}/statm")).ok()?;
    procfs::resident_bytes(&statm, procfs::page_size())
}

/// The metrics listener: either kind of socket the master may have bound.
pub enum MetricsListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Serves `/metrics` on `listener` until the front tier stops.
pub async fn serve(
    listener: MetricsListener,
    metrics: Arc<Metrics>,
    pool: Arc<Pool>,
    tls: Option<Arc<Tls>>,
) {
    loop {
        let accepted = match &listener {
            MetricsListener::Tcp(l) => l.accept().await.map(|(s, _)| Stream::Tcp(s)),
            MetricsListener::Unix(l) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(err) => {
                warn!("--metrics-bind: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, pool, tls) = (metrics.clone(), pool.clone(), tls.clone());
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let response = answer(&request, &metrics, &pool, tls.as_deref());
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        tokio::spawn(async move {
            let builder = hyper::server::conn::http1::Builder::new();
            let served = match stream {
                Stream::Tcp(s) => builder.serve_connection(TokioIo::new(s), service).await,
                Stream::Unix(s) => builder.serve_connection(TokioIo::new(s), service).await,
            };
            // A scraper that hangs up early is no news.
            drop(served);
        });
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

fn answer(
    request: &Request<hyper::body::Incoming>,
    metrics: &Metrics,
    pool: &Pool,
    tls: Option<&Tls>,
) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            metrics.render(pool, tls),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "only GET /metrics here\n".to_owned(),
            "text/plain",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// One request, measured from its head on: recorded in the [`Metrics`] when it is
/// dropped (its response's last byte handed to the connection, or the client gone).
/// A client that leaves before its response is ready is counted as nginx logs it, 499.
pub struct Observation {
    metrics: Arc<Metrics>,
    kind: RouteKind,
    status: u16,
    started: tokio::time::Instant,
    bytes: u64,
}

impl Observation {
    /// Starts measuring a request (counted in flight from now).
    pub fn new(metrics: Arc<Metrics>) -> Observation {
        metrics.begin();
        Observation {
            metrics,
            kind: RouteKind::App,
            status: CLIENT_CLOSED_REQUEST,
            started: tokio::time::Instant::now(),
            bytes: 0,
        }
    }

    /// The response is ready: `kind` answered it with `status`.
    pub fn answered(&mut self, kind: RouteKind, status: u16) {
        self.kind = kind;
        self.status = status;
    }
}

impl crate::front::conn::guard::Observer for Observation {
    fn data(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        self.metrics
            .finish(self.kind, self.status, took, self.bytes);
    }
}
