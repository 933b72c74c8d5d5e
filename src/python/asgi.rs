//! ASGI 3 (asgiref `specs/asgi.rst` 3.0, `www.rst` HTTP 2.5, `lifespan.rst` 2.0): the
//! event loop of an ASGI worker, its lifespan, the `http` scope of each request and the
//! checks of what the application sends.
//!
//! What is about coroutines (the tasks, the order of the messages) is Python, in
//! `asgi.py`, run from the binary. Everything the channel sees goes through Rust: the
//! scope is built here from the request head, and each `send()` becomes frames through
//! the request's [`ResponseSink`], as a WSGI response does. This module knows nothing of
//! the channel: the worker hands it a `poll` callable that makes [`AsgiStream`]s.

use std::ffi::CString;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::{PyConnectionError, PyKeyError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyList, PyModule, PyString, PyTuple, PyType};
use tracing::{error, info, warn};

use super::head::{Fields, parse_asgi_headers, parse_asgi_response_headers};
use super::hooks::{self, Recorder};
use super::response::{end_within_length, log_app_error, send_error_page, within_length};
use super::{App, Body, BootError, RequestLabel, ResponseSink, report_boot_error};
use crate::config::{Asgi, EventLoop, Lifespan};
use crate::protocol::{RequestHead, Scheme};

/// The glue: the event loop, lifespan and one task per request.
const GLUE: &str = include_str!("asgi.py");

/// The most bytes one `http.request` message carries: a larger body comes in several.
const BODY_CHUNK: usize = 64 * 1024;

/// A worker's ASGI application on its event loop, after lifespan startup.
pub struct AsgiApp {
    app: Py<PyAny>,
    glue: Py<PyModule>,
    event_loop: Py<PyAny>,
    /// The lifespan scope's driver; None under `--lifespan off`.
    lifespan: Option<Py<PyAny>>,
    /// The lifespan state, copied into every scope; None when the application does not
    /// speak lifespan.
    state: Option<Py<PyDict>>,
    scopes: Arc<ScopeMaker>,
    parts: Arc<LoopParts>,
    /// Whether `http.response.pathsend` is offered: the front tier serves files only
    /// from `--static` and `--internal` directories.
    pathsend: bool,
}

impl AsgiApp {
    /// Makes the event loop and runs lifespan startup: the worker must take no request
    /// before it is complete. A failure is reported as an application that does not load.
    /// `timeout` (`--timeout`) bounds the wait for startup's answer.
    pub fn start(
        app: &App,
        options: Asgi,
        timeout: Option<Duration>,
    ) -> Result<AsgiApp, BootError> {
        Python::attach(|py| {
            let glue = load_glue(py).map_err(|err| {
                report_boot_error(
                    py,
                    "cannot load rwsgi's ASGI glue",
                    &err,
                    BootError::WorkerReported,
                )
            })?;
            let made = glue
                .call_method1(intern!(py, "new_loop"), (options.event_loop.as_str(),))
                .and_then(|made| made.extract::<(Bound<'_, PyAny>, String)>());
            let (event_loop, kind) = made.map_err(|err| {
                let what = match options.event_loop {
                    EventLoop::Uvloop => "--asgi-loop uvloop: cannot import uvloop in the application's Python environment",
                    _ => "-k asgi: cannot make the event loop",
                };
                report_boot_error(py, what, &err, BootError::WorkerReported)
            })?;
            let _ = py
                .import("asyncio")
                .and_then(|asyncio| asyncio.call_method1("set_event_loop", (&event_loop,)));
            info!(
                "ASGI worker on the {kind} event loop (pid: {})",
                std::process::id()
            );
            let parts = LoopParts::new(py, &event_loop, &glue).map_err(|err| {
                report_boot_error(
                    py,
                    "-k asgi: cannot prepare the event loop",
                    &err,
                    BootError::WorkerReported,
                )
            })?;
            let mut asgi = AsgiApp {
                parts: Arc::new(parts),
                app: app.app.clone_ref(py),
                glue: glue.unbind(),
                event_loop: event_loop.unbind(),
                lifespan: None,
                state: None,
                scopes: Arc::new(ScopeMaker::new(py, &app.root_path).map_err(|err| {
                    report_boot_error(
                        py,
                        "-k asgi: cannot make the scope",
                        &err,
                        BootError::WorkerReported,
                    )
                })?),
                pathsend: false,
            };
            if options.lifespan != Lifespan::Off {
                asgi.startup(py, options.lifespan, timeout)?;
            }
            Ok(asgi)
        })
    }

    /// Offers `http.response.pathsend` when the front tier has directories to serve
    /// its files from (`--static`, `--internal`): the extension rides on `X-Sendfile`.
    pub fn offer_pathsend(mut self, offered: bool) -> AsgiApp {
        self.pathsend = offered;
        self
    }

    fn startup(
        &mut self,
        py: Python<'_>,
        mode: Lifespan,
        timeout: Option<Duration>,
    ) -> Result<(), BootError> {
        let run = || -> PyResult<(Bound<'_, PyAny>, bool)> {
            let lifespan = self
                .glue
                .bind(py)
                .getattr(intern!(py, "Lifespan"))?
                .call1((self.app.bind(py), mode.as_str()))?;
            let timeout = timeout.map(|t| t.as_secs_f64());
            let startup = lifespan.call_method1(intern!(py, "startup"), (timeout,))?;
            let supported = self.run_until_complete(py, &startup)?.is_truthy()?;
            Ok((lifespan, supported))
        };
        let (lifespan, supported) = run().map_err(|err| {
            let what = "ASGI lifespan startup failed: the worker cannot serve";
            report_boot_error(py, what, &err, BootError::AppReported)
        })?;
        if supported {
            let state = lifespan
                .getattr(intern!(py, "state"))
                .and_then(|s| Ok(s.cast_into::<PyDict>()?));
            self.state = state.ok().map(Bound::unbind);
        }
        self.lifespan = Some(lifespan.unbind());
        Ok(())
    }

    fn run_until_complete<'py>(
        &self,
        py: Python<'py>,
        coroutine: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.event_loop
            .bind(py)
            .call_method1(intern!(py, "run_until_complete"), (coroutine,))
    }

    /// Serves until the channel closes and every request in flight is done. `fd` is the
    /// channel's descriptor, which the loop watches; `poll` takes what has arrived on it
    /// without blocking: `(streams, open)`, a list of [`AsgiStream`] and false once the
    /// channel has closed. `stop_check` is how often (seconds) `poll` is called anyway.
    pub fn serve(
        &self,
        py: Python<'_>,
        fd: i32,
        poll: Bound<'_, PyCFunction>,
        stop_check: f64,
    ) -> PyResult<()> {
        let state = self.state.as_ref().map(|s| s.clone_ref(py));
        let serve = self.glue.bind(py).getattr(intern!(py, "serve"))?.call1((
            self.app.bind(py),
            fd,
            poll,
            state,
            stop_check,
            self.parts.flusher.bind(py),
        ))?;
        self.run_until_complete(py, &serve).map(|_| ())
    }

    /// Lifespan shutdown (when startup completed), waiting at most `timeout` for the
    /// application's answer; then the loop is closed.
    pub fn shutdown(&self, py: Python<'_>, timeout: Duration) {
        if let Some(lifespan) = &self.lifespan {
            let done = lifespan
                .bind(py)
                .call_method1(intern!(py, "shutdown"), (timeout.as_secs_f64(),))
                .and_then(|coroutine| self.run_until_complete(py, &coroutine));
            if let Err(err) = done {
                error!(
                    "ASGI lifespan shutdown: {}",
                    super::format_traceback(py, &err).trim_end()
                );
            }
        }
        let _ = self.event_loop.bind(py).call_method0(intern!(py, "close"));
    }

    /// The socket object of one WebSocket for the glue's task; `done` is called once
    /// its task has finished.
    pub fn socket<'py>(
        &self,
        py: Python<'py>,
        stream: u32,
        head: RequestHead,
        sink: Arc<dyn super::SocketSink>,
        inbox: super::SharedInbox,
        done: TaskDone,
    ) -> PyResult<Bound<'py, super::AsgiSocket>> {
        super::AsgiSocket::new(py, stream, head, self.scopes.clone(), sink, inbox, done)
    }

    /// The stream object of one request for the glue's task; `done` is called once its
    /// task has finished.
    pub fn stream<'py>(
        &self,
        py: Python<'py>,
        head: RequestHead,
        body: Body,
        sink: Arc<dyn ResponseSink>,
        done: TaskDone,
    ) -> PyResult<Bound<'py, AsgiStream>> {
        let bodyless = &head.method[..] == b"HEAD";
        let trailers = asks_for_trailers(&head);
        // --hooks: pre_request now; post_request once the task is over, with what the
        // response sent.
        let hooks = hooks::active();
        let req = hooks.and_then(|hooks| hooks.pre_request(py, &head));
        let (sink, hooked) = match (hooks.filter(|h| h.wants_response()), req) {
            (Some(_), Some(req)) => {
                let recorder = Arc::new(Recorder::new(sink));
                let sink: Arc<dyn ResponseSink> = recorder.clone();
                let hooked = Hooked {
                    req: req.unbind(),
                    recorder,
                };
                (sink, Some(hooked))
            }
            _ => (sink, None),
        };
        let body = match body {
            Body::Memory(bytes) => BodyReader::Memory(bytes),
            Body::Python(body) => BodyReader::Memory(Bytes::from_owner(body)),
            Body::File { file, length } => BodyReader::File(file, length),
        };
        Bound::new(
            py,
            AsgiStream {
                head,
                scopes: self.scopes.clone(),
                parts: self.parts.clone(),
                pathsend: self.pathsend,
                trailers_offered: trailers,
                sink,
                hooked,
                state: Mutex::new(StreamState {
                    body,
                    started: false,
                    announced: false,
                    body_done: false,
                    over: false,
                    waiter: None,
                    head: None,
                    head_written: false,
                    declared: None,
                    sent: 0,
                    trailers: Trailing::None,
                    bodyless,
                    gone: false,
                    ended: false,
                    done: Some(done),
                    scope: None,
                }),
            },
        )
    }
}

/// Whether the request allows trailers in its response: `TE: trailers` (RFC 9110
/// §10.1.4), in HTTP/1.1 (chunked, RFC 9112 §7.1.2) or HTTP/2 (RFC 9113 §8.1).
fn asks_for_trailers(head: &RequestHead) -> bool {
    head.version != 10
        && head.headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case(b"te")
                && value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        })
}

/// The `Trailer` fields among an application's response headers, which
/// `parse_asgi_headers` checked and left out as hop-by-hop.
fn trailer_fields(headers: &Bound<'_, PyAny>) -> PyResult<Fields> {
    let mut found = Vec::new();
    for item in headers.try_iter()? {
        let item = item?;
        let name = item.get_item(0)?;
        let name = name.cast::<PyBytes>()?.as_bytes();
        if name.eq_ignore_ascii_case(b"trailer") {
            let value = item.get_item(1)?;
            found.push((name.to_vec(), value.cast::<PyBytes>()?.as_bytes().to_vec()));
        }
    }
    Ok(found)
}

/// Makes the scopes of one worker (www.rst 2.5): a template of what every scope of a
/// kind holds, with every key, copied (a copy has its full size at once, and a
/// request's values replace the placeholders rather than grow the dict); the Python
/// strings of the server's and the client's address are kept while they repeat (they
/// nearly always do).
pub(super) struct ScopeMaker {
    /// The `http` template: `type`, `asgi` (one dict for every scope: the application
    /// reads it), `root_path`, and None for the rest.
    http: Py<PyDict>,
    /// The `websocket` template, the same with `subprotocols` and without `method`.
    websocket: Py<PyDict>,
    /// `--root-path` (or `SCRIPT_NAME`), prefixed to a path that does not start with it
    /// (a proxy in front stripped it), as uvicorn does: routers then see the path from
    /// the site's root.
    root_path: Vec<u8>,
    recent: Mutex<RecentAddresses>,
}

#[derive(Default)]
struct RecentAddresses {
    /// The server's name and port as the head gave them, and the `server` pair.
    server: Option<(Vec<u8>, Vec<u8>, Py<PyTuple>)>,
    /// The client's host as the head gave it, and its string.
    client_host: Option<(Vec<u8>, Py<PyString>)>,
}

impl ScopeMaker {
    pub(super) fn new(py: Python<'_>, root_path: &str) -> PyResult<ScopeMaker> {
        let asgi = PyDict::new(py);
        asgi.set_item(intern!(py, "version"), intern!(py, "3.0"))?;
        asgi.set_item(intern!(py, "spec_version"), intern!(py, "2.5"))?;
        let template = |kind: &Bound<'_, PyString>, keys: &[&Bound<'_, PyString>]| {
            let template = PyDict::new(py);
            template.set_item(intern!(py, "type"), kind)?;
            template.set_item(intern!(py, "asgi"), &asgi)?;
            template.set_item(intern!(py, "root_path"), root_path)?;
            for key in keys {
                template.set_item(key, py.None())?;
            }
            Ok::<_, PyErr>(template.unbind())
        };
        let common = [
            intern!(py, "http_version"),
            intern!(py, "scheme"),
            intern!(py, "path"),
            intern!(py, "raw_path"),
            intern!(py, "query_string"),
            intern!(py, "headers"),
            intern!(py, "client"),
            intern!(py, "server"),
            intern!(py, "extensions"),
        ];
        let mut http_keys = common.to_vec();
        http_keys.push(intern!(py, "method"));
        let mut websocket_keys = common.to_vec();
        websocket_keys.push(intern!(py, "subprotocols"));
        Ok(ScopeMaker {
            http: template(intern!(py, "http"), &http_keys)?,
            websocket: template(intern!(py, "websocket"), &websocket_keys)?,
            root_path: root_path.as_bytes().to_vec(),
            recent: Mutex::new(RecentAddresses::default()),
        })
    }

    /// The `http` or `websocket` scope of `head`, with a shallow copy of the lifespan
    /// `state`.
    pub(super) fn scope<'py>(
        &self,
        py: Python<'py>,
        head: &RequestHead,
        state: Option<&Bound<'py, PyDict>>,
        websocket: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let template = match websocket {
            true => &self.websocket,
            false => &self.http,
        };
        let scope = template.bind(py).copy()?;
        let version = match head.version {
            10 => intern!(py, "1.0"),
            20 => intern!(py, "2"),
            _ => intern!(py, "1.1"),
        };
        scope.set_item(intern!(py, "http_version"), version)?;
        let scheme = match (websocket, head.scheme) {
            (false, Scheme::Http) => intern!(py, "http"),
            (false, Scheme::Https) => intern!(py, "https"),
            (true, Scheme::Http) => intern!(py, "ws"),
            (true, Scheme::Https) => intern!(py, "wss"),
        };
        scope.set_item(intern!(py, "scheme"), scheme)?;
        if !websocket {
            scope.set_item(intern!(py, "method"), method(py, &head.method))?;
        }
        // "path": the target without its query, percent-decoded and read as UTF-8, from
        // the site's root (`root_path` included).
        let decoded = percent_encoding::percent_decode(&head.path).decode_utf8_lossy();
        if self.root_path.is_empty() || under(&head.path, &self.root_path) {
            scope.set_item(intern!(py, "path"), decoded.as_ref())?;
        } else {
            let root = String::from_utf8_lossy(&self.root_path);
            scope.set_item(intern!(py, "path"), format!("{root}{decoded}"))?;
        }
        scope.set_item(intern!(py, "raw_path"), PyBytes::new(py, &head.path))?;
        scope.set_item(intern!(py, "query_string"), PyBytes::new(py, &head.query))?;
        let headers = PyList::empty(py);
        let subprotocols = PyList::empty(py);
        for (name, value) in &head.headers {
            // Pseudo-headers are never passed on (www.rst, HTTP/2).
            if name.starts_with(b":") {
                continue;
            }
            if websocket && &name[..] == b"sec-websocket-protocol" {
                // RFC 6455 §11.3.4: a comma-separated list, in the client's order.
                for protocol in String::from_utf8_lossy(value).split(',') {
                    let protocol = protocol.trim();
                    if !protocol.is_empty() {
                        subprotocols.append(protocol)?;
                    }
                }
            }
            let pair = PyTuple::new(py, [PyBytes::new(py, name), PyBytes::new(py, value)])?;
            headers.append(pair)?;
        }
        scope.set_item(intern!(py, "headers"), headers)?;
        if websocket {
            scope.set_item(intern!(py, "subprotocols"), subprotocols)?;
        }
        self.addresses(py, head, &scope)?;
        if let Some(state) = state {
            scope.set_item(intern!(py, "state"), state.copy()?)?;
        }
        let extensions = PyDict::new(py);
        if websocket {
            extensions.set_item(intern!(py, "websocket.http.response"), PyDict::new(py))?;
        }
        scope.set_item(intern!(py, "extensions"), extensions)?;
        Ok(scope)
    }

    /// `client` (left None for a client without an address: a Unix socket) and
    /// `server`.
    fn addresses(
        &self,
        py: Python<'_>,
        head: &RequestHead,
        scope: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let mut recent = crate::lock::lock(&self.recent);
        if let Some(port) = head.remote_port {
            let host = match &recent.client_host {
                Some((bytes, host)) if bytes[..] == head.remote_addr[..] => host.bind(py).clone(),
                _ => {
                    let host = PyString::new(py, &String::from_utf8_lossy(&head.remote_addr));
                    recent.client_host = Some((head.remote_addr.to_vec(), host.clone().unbind()));
                    host
                }
            };
            scope.set_item(intern!(py, "client"), (host, port))?;
        }
        let server = match &recent.server {
            Some((name, port, pair))
                if name[..] == head.server_name[..] && port[..] == head.server_port[..] =>
            {
                pair.bind(py).clone()
            }
            _ => {
                let name = String::from_utf8_lossy(&head.server_name).into_owned();
                let port = std::str::from_utf8(&head.server_port)
                    .ok()
                    .and_then(|p| p.parse::<u16>().ok());
                let pair = PyTuple::new(
                    py,
                    [name.into_pyobject(py)?.into_any(), port.into_pyobject(py)?],
                )?;
                recent.server = Some((
                    head.server_name.to_vec(),
                    head.server_port.to_vec(),
                    pair.clone().unbind(),
                ));
                pair
            }
        };
        scope.set_item(intern!(py, "server"), server)
    }
}

/// An application's response status, checked: an integer from 200 to 999 (1xx heads
/// are the server's own).
pub(super) fn response_status(status: &Bound<'_, PyAny>) -> PyResult<u16> {
    status
        .extract()
        .ok()
        .filter(|s| (200..=999).contains(s))
        .ok_or_else(|| PyValueError::new_err(format!("invalid response status {status}")))
}

/// Whether `path` is `root` or below it (`/api` is under `/api`, `/api/x` too, `/apix`
/// is not).
fn under(path: &[u8], root: &[u8]) -> bool {
    path.strip_prefix(root)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

/// The method's string: the common ones are made once.
fn method<'py>(py: Python<'py>, method: &[u8]) -> Bound<'py, PyString> {
    match method {
        b"GET" => intern!(py, "GET").clone(),
        b"POST" => intern!(py, "POST").clone(),
        b"HEAD" => intern!(py, "HEAD").clone(),
        b"PUT" => intern!(py, "PUT").clone(),
        b"DELETE" => intern!(py, "DELETE").clone(),
        b"PATCH" => intern!(py, "PATCH").clone(),
        b"OPTIONS" => intern!(py, "OPTIONS").clone(),
        other => PyString::new(py, &String::from_utf8_lossy(other)),
    }
}

/// The glue module, made from the source in the binary.
fn load_glue(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let code = CString::new(GLUE).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let glue = PyModule::from_code(py, &code, c"rwsgi_asgi.py", c"rwsgi_asgi")?;
    let log = PyCFunction::new_closure(py, Some(c"log"), None, |args, _| {
        let (level, message): (String, String) = args.extract()?;
        match level.as_str() {
            "error" => error!("{message}"),
            "warning" => warn!("{message}"),
            _ => info!("{message}"),
        }
        Ok::<(), PyErr>(())
    })?;
    glue.setattr("log", log)?;
    Ok(glue)
}

/// Called once a request's task has finished (the worker's bookkeeping).
pub type TaskDone = Box<dyn FnOnce(Python<'_>) + Send + Sync>;

/// A request body read in [`BODY_CHUNK`]s.
enum BodyReader {
    Memory(Bytes),
    /// The front tier's spool file and how many bytes of it are left.
    File(std::fs::File, u64),
}

impl BodyReader {
    /// The next chunk and whether more follows.
    fn next(&mut self) -> io::Result<(Bytes, bool)> {
        match self {
            BodyReader::Memory(bytes) => {
                let chunk = bytes.split_to(bytes.len().min(BODY_CHUNK));
                Ok((chunk, !bytes.is_empty()))
            }
            BodyReader::File(file, left) => {
                let want = (*left).min(BODY_CHUNK as u64) as usize;
                let mut chunk = vec![0; want];
                file.read_exact(&mut chunk)?;
                *left -= want as u64;
                Ok((chunk.into(), *left > 0))
            }
        }
    }
}

/// A response head checked at `http.response.start` and written with the first body
/// chunk (or the file of a pathsend): until then a failure still answers 500.
struct PendingHead {
    status: u16,
    headers: Fields,
    close: bool,
}

/// Where a response that announced trailers (`"trailers": True`) stands.
enum Trailing {
    /// No trailers announced (or none offered): the last body chunk ends the response.
    None,
    /// Announced; the body is still coming.
    Announced,
    /// The body is whole: the fields gathered so far wait for the last trailers message.
    Gathering(Fields),
}

struct StreamState {
    body: BodyReader,
    trailers: Trailing,
    /// `http.response.start` came.
    started: bool,
    /// The response announced trailers, which this request was offered: the
    /// application's `http.response.trailers` are sent, not dropped.
    announced: bool,
    head: Option<PendingHead>,
    /// The head went to the front tier: a failure can only abort the stream.
    head_written: bool,
    /// The Content-Length the application declared, and the body bytes it gave.
    declared: Option<u64>,
    sent: u64,
    /// HEAD, 204 and 304: the body's bytes are not sent.
    bodyless: bool,
    /// The client went away (remembered: the channel tells once).
    gone: bool,
    /// The stream's End or Abort is queued: the response is complete, a `send()` now
    /// raises `ClientDisconnected`, and the front tier frees its place.
    ended: bool,
    /// The last `http.request` went to the application.
    body_done: bool,
    /// The response is complete or the client is gone: what the last `receive()` waits
    /// for before it answers `http.disconnect`.
    over: bool,
    /// The future that `receive()` waits on for that; made only when one waits (most
    /// requests never do).
    waiter: Option<Py<PyAny>>,
    done: Option<TaskDone>,
    /// The scope the application got, kept for `post_request` (with `--hooks` only).
    scope: Option<Py<PyDict>>,
}

/// What `post_request` is called with once a request's task is over.
struct Hooked {
    req: Py<PyAny>,
    recorder: Arc<Recorder>,
}

/// What the requests of one worker share with its event loop.
pub(super) struct LoopParts {
    event_loop: Py<PyAny>,
    /// A future done with None: what every `send()` of an http scope returns. A send
    /// never waits: its frames are queued, and the [`Flusher`] writes them.
    sent: Py<PyAny>,
    flusher: Py<Flusher>,
    /// The glue's `ClientDisconnected` (an `OSError`: www.rst 2.4).
    disconnected: Py<PyType>,
}

impl LoopParts {
    fn new(
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        glue: &Bound<'_, PyModule>,
    ) -> PyResult<LoopParts> {
        let sent = event_loop.call_method0(intern!(py, "create_future"))?;
        sent.call_method1(intern!(py, "set_result"), (py.None(),))?;
        let flusher = Flusher {
            event_loop: event_loop.clone().unbind(),
            wanted: Mutex::new(None),
        };
        Ok(LoopParts {
            event_loop: event_loop.clone().unbind(),
            sent: sent.unbind(),
            flusher: Py::new(py, flusher)?,
            disconnected: glue
                .getattr(intern!(py, "ClientDisconnected"))?
                .cast_into()?
                .unbind(),
        })
    }

    /// A future done with `value`: what `receive()` returns when it has its message.
    fn ready<'py>(
        &self,
        py: Python<'py>,
        value: Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let future = self
            .event_loop
            .bind(py)
            .call_method0(intern!(py, "create_future"))?;
        future.call_method1(intern!(py, "set_result"), (value,))?;
        Ok(future)
    }

    fn client_disconnected(&self, py: Python<'_>, why: String) -> PyErr {
        PyErr::from_type(self.disconnected.bind(py).clone(), why)
    }
}

/// Writes what the responses queued once per turn of the loop, not once per `send()`:
/// the responses finished in one turn leave in one write. A `send()` that queues more
/// than the channel's high-water mark is written at once by its sink.
#[pyclass(frozen, module = "rwsgi")]
pub struct Flusher {
    event_loop: Py<PyAny>,
    /// A sink of the channel while a flush is asked for: the flush writes the whole
    /// channel's queue, whichever stream asked.
    wanted: Mutex<Option<Arc<dyn ResponseSink>>>,
}

impl Flusher {
    /// Asks for a flush at the loop's next turn (once, however many ask).
    fn want(flusher: &Bound<'_, Flusher>, sink: &Arc<dyn ResponseSink>) -> PyResult<()> {
        {
            let mut wanted = crate::lock::lock(&flusher.get().wanted);
            if wanted.is_some() {
                return Ok(());
            }
            *wanted = Some(sink.clone());
        }
        let py = flusher.py();
        let event_loop = flusher.get().event_loop.bind(py);
        event_loop.call_method1(intern!(py, "call_soon"), (flusher,))?;
        Ok(())
    }
}

#[pymethods]
impl Flusher {
    fn __call__(&self, py: Python<'_>) {
        let sink = crate::lock::lock(&self.wanted).take();
        if let Some(sink) = sink {
            // A front tier gone is seen by the reader (the channel's end), not here.
            let _ = py.detach(|| sink.flush());
        }
    }
}

/// One request of an ASGI worker: its scope, `receive` and `send` (www.rst 2.5), for
/// the glue's task.
#[pyclass(frozen, module = "rwsgi")]
pub struct AsgiStream {
    head: RequestHead,
    scopes: Arc<ScopeMaker>,
    parts: Arc<LoopParts>,
    pathsend: bool,
    /// The request's `TE: trailers` allows `http.response.trailers`.
    trailers_offered: bool,
    sink: Arc<dyn ResponseSink>,
    hooked: Option<Hooked>,
    state: Mutex<StreamState>,
}

/// A field of an application's message: a mapping, nearly always a dict.
fn field<'py>(
    message: &Bound<'py, PyAny>,
    key: &Bound<'py, PyString>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if let Ok(dict) = message.cast::<PyDict>() {
        return dict.get_item(key);
    }
    match message.get_item(key) {
        Ok(value) => Ok(Some(value)),
        Err(err) if err.is_instance_of::<PyKeyError>(message.py()) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A field's truth, false when it is missing.
fn flag(message: &Bound<'_, PyAny>, key: &Bound<'_, PyString>) -> PyResult<bool> {
    field(message, key)?.map_or(Ok(false), |value| value.is_truthy())
}

/// A message's header list: `()` when it is missing or empty.
fn header_list<'py>(message: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = message.py();
    match field(message, intern!(py, "headers"))? {
        Some(headers) if headers.is_truthy()? => Ok(headers),
        _ => Ok(PyTuple::empty(py).into_any()),
    }
}

fn runtime_error(why: impl Into<String>) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(why.into())
}

impl AsgiStream {
    fn state(&self) -> std::sync::MutexGuard<'_, StreamState> {
        crate::lock::lock(&self.state)
    }

    /// Whether the client went away (the front tier aborted the stream).
    fn gone(&self, state: &mut StreamState) -> bool {
        state.gone = state.gone || self.sink.client_gone();
        state.gone
    }

    /// The response is complete or the client is gone: a `receive()` waiting for
    /// `http.disconnect` gets it now, and the next ones at once.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let waiter = {
            let mut state = self.state();
            state.over = true;
            state.waiter.take()
        };
        if let Some(waiter) = waiter {
            let waiter = waiter.bind(py);
            if !waiter.call_method0(intern!(py, "done"))?.is_truthy()? {
                waiter.call_method1(intern!(py, "set_result"), (disconnect(py)?,))?;
            }
        }
        Ok(())
    }

    /// Ends the response: an Abort instead of the End when its body fell short of its
    /// declared Content-Length (the client must not wait for bytes that never come).
    fn end(&self, state: &mut StreamState) -> io::Result<()> {
        state.ended = true;
        end_within_length(&*self.sink, state.declared, state.sent, state.bodyless).map(|_| ())
    }

    /// Queues the pending head, with `extra` fields replacing those of the same names.
    fn write_head(&self, state: &mut StreamState, extra: &[(&[u8], Vec<u8>)]) -> io::Result<()> {
        let Some(PendingHead {
            status,
            mut headers,
            close,
        }) = state.head.take()
        else {
            return Ok(());
        };
        state.head_written = true;
        if !extra.is_empty() {
            headers.retain(|(name, _)| !extra.iter().any(|(n, _)| name.eq_ignore_ascii_case(n)));
            headers.extend(extra.iter().map(|(n, v)| (n.to_vec(), v.clone())));
        }
        self.sink.head(status, b"", close, &headers)
    }

    /// `http.response.start`: the head, checked, waits for the body (or the file).
    /// Trailers announced (and offered) keep the response's `Trailer` field, which
    /// names them (RFC 9110 §6.6.2) and without which HTTP/1.1 sends none.
    fn start(&self, message: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = message.py();
        if self.state().started {
            return Err(runtime_error("http.response.start sent twice"));
        }
        let status = response_status(&message.get_item(intern!(py, "status"))?)?;
        let headers = header_list(message)?;
        let trailers = self.trailers_offered && flag(message, intern!(py, "trailers"))?;
        let (mut fields, declared, close) = parse_asgi_response_headers(&headers)?;
        if trailers {
            fields.extend(trailer_fields(&headers)?);
        }
        let mut state = self.state();
        state.started = true;
        state.announced = trailers;
        state.bodyless |= matches!(status, 204 | 304);
        state.declared = declared;
        if trailers {
            state.trailers = Trailing::Announced;
        }
        state.head = Some(PendingHead {
            status,
            headers: fields,
            close,
        });
        Ok(())
    }

    /// `http.response.body`: the chunk is queued; the response ends without
    /// `more_body` (or with its trailers, when it announced them).
    fn body(&self, message: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = message.py();
        let more = flag(message, intern!(py, "more_body"))?;
        let body = field(message, intern!(py, "body"))?;
        let chunk = match &body {
            Some(body) => body
                .cast::<PyBytes>()
                .map_err(|_| {
                    pyo3::exceptions::PyTypeError::new_err("http.response.body: body must be bytes")
                })?
                .as_bytes(),
            None => b"",
        };
        let mut state = self.state();
        if !state.started {
            return Err(runtime_error(
                "http.response.body before http.response.start",
            ));
        }
        if !matches!(state.trailers, Trailing::None | Trailing::Announced) {
            return Err(runtime_error(
                "http.response.body after the body's last message",
            ));
        }
        self.write_head(&mut state, &[]).map_err(front_gone)?;
        // Bytes past a declared Content-Length are not sent, as for WSGI.
        let allowed = within_length(state.declared, state.sent, chunk.len());
        state.sent += chunk.len() as u64;
        if allowed > 0 && !state.bodyless {
            self.sink.body(&chunk[..allowed]).map_err(front_gone)?;
        }
        if !more {
            if let Trailing::Announced = state.trailers {
                // The response ends with the last trailers message.
                state.trailers = Trailing::Gathering(Vec::new());
            } else {
                self.end(&mut state).map_err(front_gone)?;
            }
        }
        Ok(())
    }

    /// `http.response.trailers` (the ASGI extension): its fields are checked as the
    /// head's are and gathered; the last (without `more_trailers`) sends them all, and
    /// ends the response. A HEAD, 204 or 304 response, which has no body, gets none.
    fn trailers(&self, message: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = message.py();
        let more = flag(message, intern!(py, "more_trailers"))?;
        let (fields, _) = parse_asgi_headers(&header_list(message)?)?;
        let mut state = self.state();
        let Trailing::Gathering(gathered) = &mut state.trailers else {
            return Err(runtime_error(
                "http.response.trailers before the body's last message, or not announced",
            ));
        };
        gathered.extend(fields);
        if more {
            return Ok(());
        }
        let gathered = std::mem::replace(&mut state.trailers, Trailing::None);
        if let Trailing::Gathering(fields) = gathered
            && !state.bodyless
            && !fields.is_empty()
        {
            self.sink.trailers(&fields).map_err(front_gone)?;
        }
        self.end(&mut state).map_err(front_gone)
    }

    /// `http.response.pathsend` (the ASGI extension): the front tier sends the file
    /// named by the absolute `path` itself, as it does an `X-Sendfile` answer, and under
    /// the same rules (inside a `--static` or `--internal` directory, no symlink out of
    /// it, the client's ranges and conditionals, the file's status).
    fn pathsend(&self, message: &Bound<'_, PyAny>) -> PyResult<()> {
        use std::os::unix::ffi::OsStrExt;
        if !self.pathsend {
            return Err(runtime_error(
                "http.response.pathsend is not offered: no --static or --internal directory",
            ));
        }
        if !self.state().started {
            return Err(runtime_error(
                "http.response.pathsend before http.response.start",
            ));
        }
        let path: std::path::PathBuf =
            message.get_item(intern!(message.py(), "path"))?.extract()?;
        let bytes = path.as_os_str().as_bytes();
        if !path.is_absolute() || bytes.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(PyValueError::new_err(format!(
                "http.response.pathsend: {path:?} is not an absolute path HTTP can carry"
            )));
        }
        let mut state = self.state();
        state.ended = true;
        // An X-Accel-Redirect of the app's would win over the X-Sendfile.
        if let Some(head) = &mut state.head {
            head.headers
                .retain(|(name, _)| !name.eq_ignore_ascii_case(b"x-accel-redirect"));
        }
        let target: &[u8] = b"x-sendfile";
        self.write_head(&mut state, &[(target, bytes.to_vec())])
            .map_err(front_gone)?;
        self.sink.end().map_err(front_gone)
    }

    /// The application failed: the traceback goes to the error log with the request's
    /// id; the client gets a 500 if no response started, else its stream is aborted
    /// (unless the response was complete: its End is queued already). True when it
    /// queued something to flush.
    fn fail(&self, py: Python<'_>, error: &PyErr) -> bool {
        log_app_error(py, error, &RequestLabel(&self.head));
        let mut state = self.state();
        if std::mem::replace(&mut state.ended, true) {
            return false;
        }
        // A head not written yet is dropped: the client gets the 500 instead.
        state.head = None;
        let queued = if state.started && state.head_written {
            self.sink
                .abort("the application failed after sending the response head")
        } else {
            send_error_page(&*self.sink, state.bodyless)
        };
        queued.is_ok()
    }
}

/// `{"type": "http.disconnect"}`.
fn disconnect(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let message = PyDict::new(py);
    message.set_item(intern!(py, "type"), intern!(py, "http.disconnect"))?;
    Ok(message)
}

fn front_gone(err: io::Error) -> PyErr {
    PyConnectionError::new_err(format!("the front tier is gone: {err}"))
}

#[pymethods]
impl AsgiStream {
    /// The `http` scope (www.rst 2.5), with a shallow copy of the lifespan `state`.
    fn scope<'py>(
        &self,
        py: Python<'py>,
        state: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let scope = self.scopes.scope(py, &self.head, state, false)?;
        if self.pathsend || self.trailers_offered {
            let extensions = scope
                .get_item(intern!(py, "extensions"))?
                .ok_or_else(|| PyValueError::new_err("the scope has no extensions"))?;
            if self.pathsend {
                extensions.set_item(intern!(py, "http.response.pathsend"), PyDict::new(py))?;
            }
            if self.trailers_offered {
                extensions.set_item(intern!(py, "http.response.trailers"), PyDict::new(py))?;
            }
        }
        if self.hooked.is_some() {
            self.state().scope = Some(scope.clone().unbind());
        }
        Ok(scope)
    }

    /// The application's `receive()`: the body in `http.request` messages of at most
    /// 64 KiB, then `http.disconnect` once the response is complete or the client is
    /// gone (waiting for it until then).
    fn receive<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut state = self.state();
        let gone = self.gone(&mut state);
        if !state.body_done && !gone {
            let (chunk, more) = state.body.next().map_err(|err| {
                pyo3::exceptions::PyOSError::new_err(format!("request body: {err}"))
            })?;
            state.body_done = !more;
            drop(state);
            let message = PyDict::new(py);
            message.set_item(intern!(py, "type"), intern!(py, "http.request"))?;
            message.set_item(intern!(py, "body"), PyBytes::new(py, &chunk))?;
            message.set_item(intern!(py, "more_body"), more)?;
            return self.parts.ready(py, message);
        }
        if state.over || gone {
            drop(state);
            return self.parts.ready(py, disconnect(py)?);
        }
        // A waiter cancelled with its task (a receive() given up) is not reused.
        let waiting = state.waiter.take();
        drop(state);
        let waiter = match waiting {
            Some(waiter)
                if !waiter
                    .bind(py)
                    .call_method0(intern!(py, "done"))?
                    .is_truthy()? =>
            {
                waiter.into_bound(py)
            }
            _ => self
                .parts
                .event_loop
                .bind(py)
                .call_method0(intern!(py, "create_future"))?,
        };
        self.state().waiter = Some(waiter.clone().unbind());
        Ok(waiter)
    }

    /// The application's `send()`: the message checked and queued (the loop's next turn
    /// writes it). Returns a future already done: a send never waits. After the
    /// response is complete or the client went away it raises `ClientDisconnected`
    /// (www.rst 2.4).
    fn send<'py>(
        slf: &Bound<'py, Self>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let kind = message.get_item(intern!(py, "type"))?;
        let kind = kind.cast::<PyString>()?.to_str()?;
        {
            let mut state = this.state();
            if kind == "http.response.trailers" && state.started && !state.announced {
                // Not offered (no TE: trailers): dropped, as RFC 9110 §6.5.1 allows.
                return Ok(this.parts.sent.bind(py).clone());
            }
            if state.ended || this.gone(&mut state) {
                drop(state);
                let why = format!("{kind}: the response is complete or the client is gone");
                return Err(this.parts.client_disconnected(py, why));
            }
        }
        let sent = match kind {
            "http.response.start" => {
                return this
                    .start(message)
                    .map(|()| this.parts.sent.bind(py).clone());
            }
            "http.response.body" => this.body(message),
            "http.response.trailers" => this.trailers(message),
            "http.response.pathsend" => this.pathsend(message),
            _ => {
                return Err(runtime_error(format!(
                    "unexpected ASGI message {kind:?} on an http scope"
                )));
            }
        };
        if let Err(err) = sent {
            if !err.is_instance_of::<PyConnectionError>(py) {
                return Err(err);
            }
            this.finish(py)?;
            return Err(this
                .parts
                .client_disconnected(py, err.value(py).to_string()));
        }
        Flusher::want(this.parts.flusher.bind(py), &this.sink)?;
        if this.state().ended {
            this.finish(py)?;
        }
        Ok(this.parts.sent.bind(py).clone())
    }

    /// After a client went away: a `receive()` waiting for `http.disconnect` gets it.
    fn wake_if_gone(&self, py: Python<'_>) -> PyResult<()> {
        let gone = self.gone(&mut self.state());
        if gone { self.finish(py) } else { Ok(()) }
    }

    /// The request's task is over, with the application's `error` if it raised. An
    /// error is logged and answered (500 or an aborted stream) unless it is only the
    /// client's going away; an application that returned without completing its
    /// response is one too. A stream not ended yet (its client went away, and the
    /// application stopped there) is aborted: the front tier holds the worker's place
    /// for it until then.
    #[pyo3(signature = (error))]
    fn close(&self, py: Python<'_>, error: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let (ended, gone) = {
            let mut state = self.state();
            let gone = self.gone(&mut state);
            (state.ended, gone)
        };
        let failure = match error {
            Some(_) if gone => None,
            Some(error) if error.is_instance(self.parts.disconnected.bind(py))? => None,
            Some(error) => Some(PyErr::from_value(error.clone())),
            None if ended || gone => None,
            None => Some(runtime_error(
                "the ASGI application returned without completing the response",
            )),
        };
        let mut queued = failure.is_some_and(|failure| self.fail(py, &failure));
        self.finish(py)?;
        let ended = std::mem::replace(&mut self.state().ended, true);
        queued |= !ended && self.sink.abort("the client went away").is_ok();
        let (done, scope) = {
            let mut state = self.state();
            (state.done.take(), state.scope.take())
        };
        if let (Some(hooked), Some(hooks)) = (&self.hooked, hooks::active()) {
            // As for WSGI, after the response has left (written now, not at the loop's
            // next flush); `environ` is the http scope.
            let sink = &self.sink;
            let _ = py.detach(|| sink.flush());
            let scope = scope.map_or_else(|| PyDict::new(py), |s| s.into_bound(py));
            hooks.post_request(py, hooked.req.bind(py), &scope, &hooked.recorder);
        }
        if let Some(done) = done {
            done(py);
        }
        if queued {
            Flusher::want(self.parts.flusher.bind(py), &self.sink)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks a body is read in, and each one's `more_body`.
    fn chunks(mut body: BodyReader) -> Vec<(usize, bool)> {
        let mut seen = Vec::new();
        loop {
            let (chunk, more) = body.next().unwrap();
            seen.push((chunk.len(), more));
            if !more {
                return seen;
            }
        }
    }

    #[test]
    fn an_empty_body_is_one_empty_message() {
        assert_eq!(chunks(BodyReader::Memory(Bytes::new())), [(0, false)]);
    }

    #[test]
    fn a_body_comes_in_chunks_of_at_most_64_kib_from_memory_or_a_spool_file() {
        let length = 2 * BODY_CHUNK + 100;
        let expected = [(BODY_CHUNK, true), (BODY_CHUNK, true), (100, false)];
        assert_eq!(chunks(BodyReader::Memory(vec![7; length].into())), expected);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &vec![7; length]).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        assert_eq!(chunks(BodyReader::File(file, length as u64)), expected);
        let exact = BodyReader::Memory(vec![1; BODY_CHUNK].into());
        assert_eq!(chunks(exact), [(BODY_CHUNK, false)]);
    }
}
