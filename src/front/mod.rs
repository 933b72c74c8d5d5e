//! The front tier: accepts connections on the inherited listeners, speaks HTTP/1.1 and
//! HTTP/2 (hyper), buffers bodies and dispatches requests to workers over their
//! channels.
//!
//! It runs in its own process, forked by the master; tokio exists only here, built
//! after the fork. It never runs application code.

// The folders follow a request: its connection is accepted and held (`conn`),
// `service` walks it through the stages, `dispatch` gets it to a worker and the
// answer back, `respond` answers what the front tier serves itself or transforms,
// `observe` tells about it. Imports run one way: dispatch at the bottom, conn,
// respond and observe above it, service on top.
mod acme;
pub mod conn;
mod dispatch;
mod observe;
mod respond;
mod service;
mod ws;

/// The access log's fuzz entry point, for `fuzz/` (the module itself stays private).
#[cfg(fuzzing)]
pub use observe::access_log::fuzz as access_log_fuzz;

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::config::{BindAddr, Limits, Settings, WorkerClass};
use crate::protocol::Scheme;
use conn::conn_info::ConnInfo;
use conn::ip_text::IpText;
use conn::served::{self, Served};
use conn::{guard, redirect, stopping, tls};
use dispatch::{budget, control, memory, pool, shard};
use observe::access_log::AccessLog;
use observe::{health, metrics};
use respond::{compress, static_files};
use service::Shared;

/// Why the front tier could not start: each ends its process with gunicorn's
/// WORKER_BOOT_ERROR, which stops the master.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// The main runtime.
    #[error("cannot start the front tier's runtime: {0}")]
    Runtime(std::io::Error),
    /// The shards' threads.
    #[error("cannot start the front tier's threads: {0}")]
    Threads(std::io::Error),
    /// `--access-logfile`.
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    /// TERM, QUIT, INT and HUP.
    #[error("cannot install the front tier's signal handlers")]
    Signals,
    /// The certificates (the message names them).
    #[error("{0}")]
    Tls(String),
    /// The `--metrics-bind` listener.
    #[error("cannot use the --metrics-bind listener: {0}")]
    MetricsListener(std::io::Error),
    /// A `--bind` listener.
    #[error("cannot use an inherited listener: {0}")]
    Listener(std::io::Error),
    /// A `--redirect-http` listener.
    #[error("cannot use an inherited --redirect-http listener: {0}")]
    RedirectListener(std::io::Error),
}

impl crate::exit::Failure for FrontError {
    fn exit_code(&self) -> i32 {
        crate::exit::WORKER_BOOT_ERROR
    }
}

/// Runs the front tier until it is told to stop.
pub fn run(
    settings: &Settings,
    listeners: Vec<(RawFd, BindAddr)>,
    control: OwnedFd,
) -> Result<(), FrontError> {
    let runtime = shard::runtime().map_err(FrontError::Runtime)?;
    let shards = shard::Shards::start(settings.front_threads, runtime.handle().clone())
        .map_err(FrontError::Threads)?;
    memory::no_huge_pages();
    let (access_log, writer) = match settings.access_log.as_ref().map(AccessLog::start) {
        None => (None, None),
        Some(Ok((log, writer))) => (Some(log), Some(writer)),
        Some(Err(err)) => return Err(FrontError::AccessLog(err)),
    };
    let served = runtime.block_on(serve(settings, listeners, control, access_log, &shards));
    // Connections still open after a graceful stop's timeout are simply dropped.
    shards.stop();
    runtime.shutdown_timeout(Duration::from_millis(100));
    // After the runtime: the responses it dropped have written their lines.
    if let Some(writer) = writer {
        writer.finish();
    }
    served
}

enum Accepting {
    Tcp(TcpListener, BindAddr),
    Unix(UnixListener, BindAddr),
}

/// Takes ownership of an inherited listener.
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: the master bound this descriptor and the fork gave this process its own
    // copy, which nothing else here owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Registers a listener with the runtime of the calling context.
fn adopt(owned: OwnedFd, addr: BindAddr) -> std::io::Result<Accepting> {
    Ok(match addr {
        BindAddr::Tcp(_) => {
            let listener = std::net::TcpListener::from(owned);
            listener.set_nonblocking(true)?;
            Accepting::Tcp(TcpListener::from_std(listener)?, addr)
        }
        BindAddr::Unix(_) => {
            let listener = std::os::unix::net::UnixListener::from(owned);
            listener.set_nonblocking(true)?;
            Accepting::Unix(UnixListener::from_std(listener)?, addr)
        }
        // The master resolves an inherited socket to the address it is bound to.
        BindAddr::Fd(_) => return Err(std::io::Error::other("an unresolved inherited socket")),
    })
}

async fn serve(
    settings: &Settings,
    listeners: Vec<(RawFd, BindAddr)>,
    control: OwnedFd,
    access_log: Option<Arc<AccessLog>>,
    shards: &shard::Shards,
) -> Result<(), FrontError> {
    let pool = pool::Pool::new(
        settings.max_queue,
        settings.limits.queue_timeout,
        shards.count(),
        settings.prefetch,
    );
    tokio::spawn(pool.clone().reap());
    let spread = shard::Spread::new(shards.handles());
    let stop = Arc::new(stopping::Stop::new());
    let websockets = matches!(settings.worker_class, WorkerClass::Asgi(_)).then(|| ws::Settings {
        max_size: settings.limits.ws_max_size,
        ping_interval: settings.limits.ws_ping_interval,
        ping_timeout: settings.limits.ws_ping_timeout,
    });
    let shared = Arc::new(Shared {
        pool: pool.clone(),
        body_memory_limit: settings.body_memory_limit,
        budgets: budget::Budgets::new(settings.limits.max_temp_file_size),
        files: static_files::Files::new(&settings.files),
        compression: settings.compress.as_ref().map(compress::Compression::new),
        limits: settings.limits.clone(),
        trusted: settings.forwarded_allow.clone(),
        hsts: settings
            .tls
            .as_ref()
            .and_then(|tls| tls.hsts)
            .map(hsts_value),
        health: settings.health_path.clone().map(health::Health::new),
        request_start: settings.request_start,
        metrics: settings
            .metrics_bind
            .as_ref()
            .map(|_| Arc::new(metrics::Metrics::new(spread.clone()))),
        access_log,
        websockets,
        stop: stop.clone(),
    });
    let connections = Arc::new(Semaphore::new(settings.limits.max_connections));
    // SIGHUP is the master's to handle (it asks for a reload over the control socket);
    // one sent to the whole process group must not end this process.
    let (Ok(mut term), Ok(mut quit), Ok(mut int), Ok(mut hangup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::quit()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return Err(FrontError::Signals);
    };
    tokio::spawn(async move { while hangup.recv().await.is_some() {} });
    // --acme: the cached certificates are served from the first handshake; the orders
    // run in the background.
    let acme = (settings.tls.as_ref())
        .and_then(|tls| tls.acme.as_ref())
        .map(|acme| Arc::new(acme::Acme::new(acme, !settings.redirect_http.is_empty())));
    let acme_certificates = acme.as_ref().map(|acme| acme.certificates());
    let tls = (settings.tls.as_ref())
        .map(|tls| tls::Tls::new(tls, acme_certificates.clone()))
        .transpose()
        .map_err(FrontError::Tls)?
        .map(Arc::new);
    if let Some(acme) = acme {
        acme.spawn();
    }
    let reload = Arc::new(Notify::new());
    tokio::spawn(tls::reload_when_asked(tls.clone(), reload.clone()));
    // The master passes the --bind listeners first, then the --redirect-http ones, then
    // the --metrics-bind one.
    let mut listeners = listeners;
    let mut redirects = listeners.split_off(settings.binds.len().min(listeners.len()));
    let metrics_listener = redirects.split_off(settings.redirect_http.len().min(redirects.len()));
    if let (Some(metrics), Some((fd, addr))) =
        (&shared.metrics, metrics_listener.into_iter().next())
    {
        let listener = match adopt(own(fd), addr).map_err(FrontError::MetricsListener)? {
            Accepting::Tcp(l, _) => metrics::MetricsListener::Tcp(l),
            Accepting::Unix(l, _) => metrics::MetricsListener::Unix(l),
        };
        tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            pool.clone(),
            tls.clone(),
        ));
    }
    memory::start(shards, shared.budgets.memory());
    let target = redirect::Target::new(listeners.iter().map(|(_, addr)| addr));
    let mut accept_tasks = Vec::new();
    // Every shard accepts on every listener: whichever is free first takes the
    // connection, unless it holds more than its share (`spread`).
    for (fd, addr) in listeners {
        let fd = own(fd);
        for runtime in shards.handles() {
            let _entered = runtime.enter();
            let listener = (fd.try_clone().and_then(|fd| adopt(fd, addr.clone())))
                .map_err(FrontError::Listener)?;
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                shared.clone(),
                stop.clone(),
                connections.clone(),
                tls.clone(),
                spread.clone(),
            )));
        }
    }
    for (fd, addr) in redirects {
        let listener = adopt(own(fd), addr).map_err(FrontError::RedirectListener)?;
        accept_tasks.push(tokio::spawn(redirect::accept_loop(
            listener,
            target,
            acme_certificates.clone(),
            settings.limits.header_timeout,
            stop.clone(),
            connections.clone(),
        )));
    }
    let mut master_gone = tokio::spawn(control::receive(
        control,
        pool.clone(),
        shards.handles().to_vec(),
        reload,
        settings.limits.ring_size,
        stop.replaced(),
    ));
    let graceful_stop = tokio::select! {
        _ = term.recv() => true,
        _ = &mut master_gone => {
            warn!("the master is gone: stopping");
            true
        }
        _ = quit.recv() => false,
        _ = int.recv() => false,
    };
    if let Some(health) = &shared.health {
        health.stopping();
    }
    for task in &accept_tasks {
        task.abort();
    }
    if !graceful_stop {
        return Ok(());
    }
    for task in accept_tasks {
        let _ = task.await;
    }
    // Logged once the connections have been told: a request that arrives after this
    // line meets a stopping connection.
    stop.begin();
    info!(
        "Stopping gracefully: finishing {} open connections",
        stop.open()
    );
    if tokio::time::timeout(settings.graceful_timeout, stop.closed())
        .await
        .is_err()
    {
        warn!("graceful timeout passed with connections still open");
    }
    // The WebSockets closed last told their workers so (their applications' disconnect):
    // those frames leave before the front tier does (at most 3 s: a loaded machine).
    let written = async {
        while !pool.channels().iter().all(|worker| worker.written()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), written).await;
    Ok(())
}

/// `Strict-Transport-Security` for `--hsts SECONDS`. Only `max-age`: includeSubDomains
/// would bind every subdomain to HTTPS, which is the site owner's call to make in the
/// application.
fn hsts_value(seconds: u64) -> HeaderValue {
    // Digits always make a valid value; the fallback is never used.
    HeaderValue::try_from(format!("max-age={seconds}"))
        .unwrap_or_else(|_| HeaderValue::from_static("max-age=0"))
}

/// The connection builders of one listener (see [`served`]): HTTP/1, and HTTP/2 for
/// prior knowledge or TLS with ALPN h2, with the same limits.
fn builders(limits: &Limits, websockets: bool) -> served::Builders {
    let mut h1 = http1::Builder::new();
    // The guard enforces the head timeout and the header limits of HTTP/1 before
    // hyper parses; hyper's header bound stays as a second line. hyper's own head
    // timer is off: the guard's times every head already, and hyper's would arm and
    // disarm a timer for each request.
    h1.keep_alive(true).header_read_timeout(None);
    // hyper's own bound (100) keeps its header arrays on the stack; a set bound, even
    // the same, costs two allocations and their filling per request.
    if limits.fields > HYPER_MAX_HEADERS {
        h1.max_headers(limits.fields.saturating_add(8).min(MAX_H1_HEADERS));
    }
    let header_list = limits
        .field_size
        .saturating_add(32)
        .saturating_mul(limits.fields)
        .min(H2_MAX_HEADER_LIST) as u32;
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(header_list)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .keep_alive_interval(limits.keepalive)
        .keep_alive_timeout(limits.send_timeout);
    if websockets {
        // RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL, so that a client may open
        // a WebSocket on an HTTP/2 stream.
        h2.enable_connect_protocol();
    }
    served::Builders { h1, h2 }
}

/// SERVER_NAME and SERVER_PORT of a connection to `local`.
fn server_of(local: SocketAddr) -> (Arc<str>, Arc<str>) {
    (
        local.ip().to_string().into(),
        local.port().to_string().into(),
    )
}

/// hyper's HTTP/1 header array; the guard's limit is what counts.
const MAX_H1_HEADERS: usize = 1024;

/// hyper's bound on an HTTP/1 head's fields when none is set.
const HYPER_MAX_HEADERS: usize = 100;

/// Concurrent HTTP/2 streams per connection (nginx's default). Kept: bodies are budgeted
/// per connection (see `budget`), so streams no longer multiply memory, and browsers
/// open dozens at once on one page.
const H2_MAX_STREAMS: u32 = 128;
/// The most a HTTP/2 header list may decode to.
const H2_MAX_HEADER_LIST: usize = 1 << 20;
/// Streams a client may reset before they are accepted (rapid reset, CVE-2023-44487).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams this side may reset for a client's protocol errors before it is dropped.
const H2_MAX_LOCAL_RESETS: usize = 256;

async fn accept_loop(
    listener: Accepting,
    shared: Arc<Shared>,
    stop: Arc<stopping::Stop>,
    connections: Arc<Semaphore>,
    tls: Option<Arc<tls::Tls>>,
    spread: Arc<shard::Spread>,
) {
    let builders = Arc::new(builders(&shared.limits, shared.websockets.is_some()));
    let scheme = match tls {
        Some(_) => Scheme::Https,
        None => Scheme::Http,
    };
    // SERVER_NAME and SERVER_PORT of a listener bound to one address are its own, the
    // same for every connection: read once, not by a system call per connection.
    let server: Option<(Arc<str>, Arc<str>)> = match &listener {
        Accepting::Tcp(listener, _) => listener
            .local_addr()
            .ok()
            .filter(|local| !local.ip().is_unspecified())
            .map(server_of),
        Accepting::Unix(..) => None,
    };
    // Accepted sockets inherit TCP_NODELAY from their listener (Linux copies the
    // listener's options into each): set once here, not by a system call per
    // connection, unless setting it on the listener failed.
    let nodelay_inherited = match &listener {
        Accepting::Tcp(listener, _) => socket2::SockRef::from(listener)
            .set_tcp_nodelay(true)
            .is_ok(),
        Accepting::Unix(..) => false,
    };
    loop {
        // Beyond --max-connections, new connections wait in the listen backlog.
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let accepted = match &listener {
            Accepting::Tcp(listener, addr) => listener.accept().await.map(|(stream, peer)| {
                if !nodelay_inherited {
                    let _ = stream.set_nodelay(true);
                }
                let (server_name, server_port) = match &server {
                    Some(server) => server.clone(),
                    // A wildcard address: the connection's own says which was dialled.
                    None => stream
                        .local_addr()
                        .map_or_else(|_| (addr.to_string().into(), "".into()), server_of),
                };
                let info = ConnInfo {
                    remote: Some(peer),
                    remote_text: Some(IpText::new(peer.ip())),
                    server_name,
                    server_port,
                    scheme,
                    guard: Arc::default(),
                    budgets: shared.budgets.connection(),
                    stalls: Arc::default(),
                };
                (Connection::Tcp(stream), info)
            }),
            Accepting::Unix(listener, addr) => listener.accept().await.map(|(stream, _)| {
                let path = match addr {
                    BindAddr::Unix(path) => path.display().to_string(),
                    BindAddr::Tcp(_) | BindAddr::Fd(_) => String::new(),
                };
                (
                    Connection::Unix(stream),
                    ConnInfo {
                        remote: None,
                        remote_text: None,
                        server_name: path.into(),
                        server_port: "".into(),
                        scheme,
                        guard: Arc::default(),
                        budgets: shared.budgets.connection(),
                        stalls: Arc::default(),
                    },
                )
            }),
        };
        let (connection, info) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors or a connection reset before accept: pause briefly
                // rather than spin.
                if accept_failure_to_log() {
                    warn!("accept failed: {err}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (elsewhere, slot) = spread.place();
        let conn = Conn {
            builders: builders.clone(),
            watch: stop.watch(),
            shared: shared.clone(),
            info: Arc::new(info),
            _permit: permit,
            _spread: slot,
        };
        let tls = tls.clone();
        match (connection, elsewhere) {
            (Connection::Tcp(stream), None) => serve_here(stream, tls, conn),
            (Connection::Unix(stream), None) => serve_here(stream, tls, conn),
            (Connection::Tcp(stream), Some(shard)) => move_to(
                shard,
                stream.into_std(),
                tokio::net::TcpStream::from_std,
                tls,
                conn,
            ),
            (Connection::Unix(stream), Some(shard)) => move_to(
                shard,
                stream.into_std(),
                tokio::net::UnixStream::from_std,
                tls,
                conn,
            ),
        }
    }
}

/// Serves an accepted connection on this shard, after the TLS handshake when the
/// listeners are TLS. Each case has a task of its own: a task takes the room of its
/// largest state, moved whole when it is spawned, and the handshake's is several
/// kilobytes that a plain connection does not need.
fn serve_here<S>(stream: S, tls: Option<Arc<tls::Tls>>, conn: Conn)
where
    S: served::Stream + tls::Peek,
{
    drop(match tls {
        None => tokio::spawn(serve_connection(stream, false, conn)),
        Some(tls) => tokio::spawn(serve_tls(stream, tls, conn)),
    });
}

/// Serves an accepted connection on another shard (see [`shard::Spread`]): it leaves
/// this shard's reactor (`stream`, from `into_std`) and joins that one's (`adopt`).
fn move_to<T, S>(
    shard: &tokio::runtime::Handle,
    stream: std::io::Result<T>,
    adopt: fn(T) -> std::io::Result<S>,
    tls: Option<Arc<tls::Tls>>,
    conn: Conn,
) where
    T: Send + 'static,
    S: served::Stream + tls::Peek,
{
    // The connection's task joins that shard's reactor, on its thread; as on this
    // shard, a plain connection's task has no room for a TLS handshake.
    let moved = stream.map(|stream| {
        drop(match tls {
            None => shard.spawn(async move {
                if let Some(stream) = adopted(adopt, stream) {
                    serve_connection(stream, false, conn).await
                }
            }),
            Some(tls) => shard.spawn(async move {
                if let Some(stream) = adopted(adopt, stream) {
                    serve_tls(stream, tls, conn).await
                }
            }),
        })
    });
    if let Err(err) = moved {
        warn!("cannot move a connection to another front thread: {err}");
    }
}

/// `stream` joined to the current shard's reactor by `adopt`, or None (logged).
fn adopted<T, S>(adopt: fn(T) -> std::io::Result<S>, stream: T) -> Option<S> {
    adopt(stream)
        .inspect_err(|err| warn!("cannot serve a connection on another front thread: {err}"))
        .ok()
}

/// Whether to log an accept failure now: once a second at most for the whole front
/// tier, however many shards' accept loops meet it (out of descriptors, every one of
/// them fails every 50 ms).
fn accept_failure_to_log() -> bool {
    /// When the last line was logged ([`budget::now_ms`]), NEVER before the first.
    static LOGGED: AtomicU64 = AtomicU64::new(NEVER);
    const NEVER: u64 = u64::MAX;
    let now = budget::now_ms();
    let last = LOGGED.load(Ordering::Relaxed);
    (last == NEVER || now.saturating_sub(last) >= 1000)
        && LOGGED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// What one accepted connection is served with.
struct Conn {
    builders: Arc<served::Builders>,
    watch: stopping::Watch,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    /// Its place under --max-connections, held for the connection's life.
    _permit: OwnedSemaphorePermit,
    /// Its place in its shard's count of connections.
    _spread: shard::SpreadSlot,
}

/// Serves a connection after its TLS handshake.
async fn serve_tls<S>(stream: S, tls: Arc<tls::Tls>, conn: Conn)
where
    S: served::Stream + tls::Peek,
{
    // A client that connects and says nothing is closed after the head timeout.
    let timeout = conn.shared.limits.header_timeout;
    if let Some(stream) = tls.accept(stream, conn.info.remote, timeout).await {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        serve_connection(stream, h2, conn).await
    }
}

/// Serves one connection until it closes or a graceful stop ends it. HTTP/1 passes the
/// guard's checks; a TLS connection that chose `h2` by ALPN goes to hyper's HTTP/2 only
/// (the guard then keeps only its send timeout).
async fn serve_connection<S>(stream: S, alpn_h2: bool, conn: Conn)
where
    S: served::Stream,
{
    let Conn {
        builders,
        watch,
        shared,
        info,
        _permit,
        _spread,
    } = conn;
    let limits = &shared.limits;
    let check = guard::check::Limits {
        request_line: limits.request_line,
        fields: limits.fields,
        field_size: limits.field_size,
    };
    let timeouts = guard::Timeouts {
        head: limits.header_timeout,
        keepalive: limits.keepalive,
        send: limits.send_timeout,
    };
    let stream = guard::Guarded::new(stream, info.guard.clone(), check, timeouts);
    let stream = match alpn_h2 {
        true => stream.pass_through(),
        false => stream.send_files(),
    };
    let guard = info.guard.clone();
    let stalls = info.stalls.clone();
    // Boxed: hyper keeps room for one request's future for the connection's life, and
    // this one is kilobytes; boxed, it lives only while a request does.
    let service =
        service_fn(move |request| Box::pin(service::handle(shared.clone(), info.clone(), request)));
    let connection = Box::pin(Served::new(stream, service, builders));
    // An HTTP/2 response stalled by flow control for --send-timeout drops the
    // connection (see `stall`).
    tokio::select! {
        // In order: no random pick each time the task runs.
        biased;
        served = watch.serve(
            connection,
            || guard.begun(),
            guard.h2_idle(),
            || guard.last_response().push(),
        ) => {
            if let Err(err) = served {
                tracing::debug!("connection ended with an error: {err}");
            }
            // A connection upgraded to a WebSocket keeps its place until it ends.
            guard.upgraded_session().await;
        }
        () = stalls.fired() => {}
    }
}

enum Connection {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}
