//! The front tier: accepts connections on the inherited listeners, speaks HTTP/1.1 and
//! HTTP/2 (hyper), buffers bodies and dispatches requests to workers over their
//! channels.
//!
//! It runs in its own process, forked by the master; tokio exists only here, built
//! after the fork. It never runs application code.

mod body;
mod channel;
mod control;
mod pool;
mod redirect;
mod service;
mod tls;

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::{BindAddr, Settings};
use crate::protocol::Scheme;
use service::{ConnInfo, Shared};

/// Runs the front tier until it is told to stop; returns the process exit code.
pub fn run(settings: &Settings, listeners: Vec<(RawFd, BindAddr)>, control: OwnedFd) -> i32 {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            error!("cannot start the front tier's runtime: {err}");
            return crate::master::WORKER_BOOT_ERROR;
        }
    };
    let code = runtime.block_on(serve(settings, listeners, control));
    // Connections still open after a graceful stop's timeout are simply dropped.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

enum Accepting {
    Tcp(TcpListener, BindAddr),
    Unix(UnixListener, BindAddr),
}

fn adopt(fd: RawFd, addr: BindAddr) -> std::io::Result<Accepting> {
    // SAFETY: the master bound this descriptor and the fork gave this process its own
    // copy, which nothing else here owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
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
    })
}

async fn serve(settings: &Settings, listeners: Vec<(RawFd, BindAddr)>, control: OwnedFd) -> i32 {
    let pool = pool::Pool::new(settings.max_queue);
    let shared = Arc::new(Shared {
        pool: pool.clone(),
        body_memory_limit: settings.body_memory_limit,
    });
    let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::quit()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install the front tier's signal handlers");
        return crate::master::WORKER_BOOT_ERROR;
    };
    let tls = match settings.tls.as_ref().map(tls::Tls::new).transpose() {
        Ok(tls) => tls.map(Arc::new),
        Err(err) => {
            error!("{err}");
            return crate::master::WORKER_BOOT_ERROR;
        }
    };
    if let Err(err) = tls::reload_on_hangup(tls.clone()) {
        error!("cannot install the front tier's SIGHUP handler: {err}");
        return crate::master::WORKER_BOOT_ERROR;
    }
    // The master passes the --bind listeners first, then the --redirect-http ones.
    let mut listeners = listeners;
    let redirects = listeners.split_off(settings.binds.len().min(listeners.len()));
    let target = redirect::Target::new(listeners.iter().map(|(_, addr)| addr));
    let graceful = Arc::new(GracefulShutdown::new());
    let mut accept_tasks = Vec::new();
    for (fd, addr) in listeners {
        match adopt(fd, addr) {
            Ok(listener) => accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                shared.clone(),
                graceful.clone(),
                tls.clone(),
            ))),
            Err(err) => {
                error!("cannot use an inherited listener: {err}");
                return crate::master::WORKER_BOOT_ERROR;
            }
        }
    }
    for (fd, addr) in redirects {
        match adopt(fd, addr) {
            Ok(listener) => accept_tasks.push(tokio::spawn(redirect::accept_loop(
                listener,
                target,
                graceful.clone(),
            ))),
            Err(err) => {
                error!("cannot use an inherited --redirect-http listener: {err}");
                return crate::master::WORKER_BOOT_ERROR;
            }
        }
    }
    let mut master_gone = tokio::spawn(control::receive(control, pool));
    let graceful_stop = tokio::select! {
        _ = term.recv() => true,
        _ = &mut master_gone => {
            warn!("the master is gone: stopping");
            true
        }
        _ = quit.recv() => false,
        _ = int.recv() => false,
    };
    for task in &accept_tasks {
        task.abort();
    }
    if !graceful_stop {
        return 0;
    }
    // The accept loops share the shutdown handle; once they are gone it is ours alone.
    for task in accept_tasks {
        let _ = task.await;
    }
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        error!("the graceful shutdown handle is still shared; stopping now");
        return 0;
    };
    info!(
        "Stopping gracefully: finishing {} open connections",
        graceful.count()
    );
    if tokio::time::timeout(settings.graceful_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("graceful timeout passed with connections still open");
    }
    0
}

fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new());
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    builder
}

async fn accept_loop(
    listener: Accepting,
    shared: Arc<Shared>,
    graceful: Arc<GracefulShutdown>,
    tls: Option<Arc<tls::Tls>>,
) {
    let builder = Arc::new(http_builder());
    let scheme = match tls {
        Some(_) => Scheme::Https,
        None => Scheme::Http,
    };
    let hsts = tls.as_ref().and_then(|tls| tls.hsts().cloned());
    loop {
        let accepted = match &listener {
            Accepting::Tcp(listener, addr) => listener.accept().await.map(|(stream, peer)| {
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().ok();
                let info = ConnInfo {
                    remote: Some(peer),
                    server_name: local
                        .map(|a| a.ip().to_string())
                        .unwrap_or_else(|| addr.to_string()),
                    server_port: local.map(|a| a.port().to_string()).unwrap_or_default(),
                    scheme,
                    hsts: hsts.clone(),
                };
                (Connection::Tcp(stream), info)
            }),
            Accepting::Unix(listener, addr) => listener.accept().await.map(|(stream, _)| {
                let path = match addr {
                    BindAddr::Unix(path) => path.display().to_string(),
                    BindAddr::Tcp(_) => String::new(),
                };
                (
                    Connection::Unix(stream),
                    ConnInfo {
                        remote: None,
                        server_name: path,
                        server_port: String::new(),
                        scheme,
                        hsts: hsts.clone(),
                    },
                )
            }),
        };
        let (connection, info) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors or a connection reset before accept: pause briefly
                // rather than spin.
                warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let info = Arc::new(info);
        let (builder, watcher, shared) = (builder.clone(), graceful.watcher(), shared.clone());
        let tls = tls.clone();
        match connection {
            Connection::Tcp(stream) => {
                tokio::spawn(serve_accepted(stream, tls, builder, watcher, shared, info))
            }
            Connection::Unix(stream) => {
                tokio::spawn(serve_accepted(stream, tls, builder, watcher, shared, info))
            }
        };
    }
}

/// Serves an accepted connection, after the TLS handshake when the listeners are TLS.
async fn serve_accepted<S>(
    stream: S,
    tls: Option<Arc<tls::Tls>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match tls {
        None => serve_connection(stream, builder, watcher, shared, info).await,
        Some(tls) => {
            if let Some(stream) = tls.accept(stream, info.remote).await {
                serve_connection(stream, builder, watcher, shared, info).await
            }
        }
    }
}

/// Serves one accepted connection until it closes or a graceful stop ends it.
async fn serve_connection<S>(
    stream: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hsts = info.hsts.clone();
    let service = service_fn(move |request| service::handle(shared.clone(), info.clone(), request));
    let service = tls::WithHsts::new(service, hsts);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!("connection ended with an error: {err}");
    }
}

enum Connection {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}
