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
use pyo3::exceptions::{PyConnectionError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyList, PyModule, PyString, PyTuple};
use tracing::{error, info, warn};

use super::environ::script_name;
use super::head::parse_asgi_headers;
use super::response::{log_app_error, send_error_page};
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
    root_path: Py<PyString>,
}

impl AsgiApp {
    /// Makes the event loop and runs lifespan startup: the worker must take no request
    /// before it is complete. A failure is reported as an application that does not load.
    pub fn start(app: &App, options: Asgi) -> Result<AsgiApp, BootError> {
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
            let mut asgi = AsgiApp {
                app: app.app.clone_ref(py),
                glue: glue.unbind(),
                event_loop: event_loop.unbind(),
                lifespan: None,
                state: None,
                root_path: PyString::new(py, &script_name()).unbind(),
            };
            if options.lifespan != Lifespan::Off {
                asgi.startup(py, options.lifespan)?;
            }
            Ok(asgi)
        })
    }

    fn startup(&mut self, py: Python<'_>, mode: Lifespan) -> Result<(), BootError> {
        let run = || -> PyResult<(Bound<'_, PyAny>, bool)> {
            let lifespan = self
                .glue
                .bind(py)
                .getattr(intern!(py, "Lifespan"))?
                .call1((self.app.bind(py), mode.as_str()))?;
            let startup = lifespan.call_method0(intern!(py, "startup"))?;
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
        let root_path = self.root_path.clone_ref(py);
        super::AsgiSocket::new(py, stream, head, root_path, sink, inbox, done)
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
        let body = match body {
            Body::Memory(bytes) => BodyReader::Memory(bytes),
            Body::File { file, length } => BodyReader::File(file, length),
        };
        Bound::new(
            py,
            AsgiStream {
                head,
                root_path: self.root_path.clone_ref(py),
                sink,
                state: Mutex::new(StreamState {
                    body,
                    bodyless,
                    gone: false,
                    ended: false,
                    done: Some(done),
                }),
            },
        )
    }
}

/// The `http` or `websocket` scope of `head` (www.rst 2.5), with a shallow copy of the
/// lifespan `state`.
pub(super) fn scope_of<'py>(
    py: Python<'py>,
    head: &RequestHead,
    root_path: &Bound<'py, PyString>,
    state: Option<&Bound<'py, PyDict>>,
    websocket: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let scope = PyDict::new(py);
    let kind = match websocket {
        true => intern!(py, "websocket"),
        false => intern!(py, "http"),
    };
    scope.set_item(intern!(py, "type"), kind)?;
    let asgi = PyDict::new(py);
    asgi.set_item(intern!(py, "version"), intern!(py, "3.0"))?;
    asgi.set_item(intern!(py, "spec_version"), intern!(py, "2.5"))?;
    scope.set_item(intern!(py, "asgi"), asgi)?;
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
    if !websocket {
        let method = String::from_utf8_lossy(&head.method);
        scope.set_item(intern!(py, "method"), method.as_ref())?;
    }
    scope.set_item(intern!(py, "scheme"), scheme)?;
    // "path": the target without its query, percent-decoded and read as UTF-8.
    let decoded = percent_encoding::percent_decode(&head.path).decode_utf8_lossy();
    scope.set_item(intern!(py, "path"), decoded.as_ref())?;
    scope.set_item(intern!(py, "raw_path"), PyBytes::new(py, &head.path))?;
    scope.set_item(intern!(py, "query_string"), PyBytes::new(py, &head.query))?;
    scope.set_item(intern!(py, "root_path"), root_path)?;
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
    let client = match head.remote_port {
        Some(port) => {
            let host = String::from_utf8_lossy(&head.remote_addr);
            Some((host.into_owned(), port))
        }
        None => None,
    };
    scope.set_item(intern!(py, "client"), client)?;
    let server_name = String::from_utf8_lossy(&head.server_name).into_owned();
    let server_port = std::str::from_utf8(&head.server_port)
        .ok()
        .and_then(|p| p.parse::<u16>().ok());
    scope.set_item(intern!(py, "server"), (server_name, server_port))?;
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

struct StreamState {
    body: BodyReader,
    /// HEAD, 204 and 304: the body's bytes are not sent.
    bodyless: bool,
    /// The client went away (remembered: the channel tells once).
    gone: bool,
    /// The stream's End or Abort is queued: the front tier frees its place then.
    ended: bool,
    done: Option<TaskDone>,
}

/// One request of an ASGI worker, as the glue's task sees it.
#[pyclass(frozen, module = "rwsgi")]
pub struct AsgiStream {
    head: RequestHead,
    root_path: Py<PyString>,
    sink: Arc<dyn ResponseSink>,
    state: Mutex<StreamState>,
}

impl AsgiStream {
    fn state(&self) -> std::sync::MutexGuard<'_, StreamState> {
        crate::lock::lock(&self.state)
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let sink = &self.sink;
        py.detach(|| sink.flush())
            .map_err(|err| PyConnectionError::new_err(format!("the front tier is gone: {err}")))
    }
}

#[pymethods]
impl AsgiStream {
    /// The `http` scope (www.rst 2.5), with a shallow copy of the lifespan `state`.
    fn scope<'py>(
        &self,
        py: Python<'py>,
        state: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        scope_of(py, &self.head, self.root_path.bind(py), state, false)
    }

    /// The next `http.request` body chunk and whether more follows.
    fn read_body<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyBytes>, bool)> {
        let (chunk, more) =
            self.state().body.next().map_err(|err| {
                pyo3::exceptions::PyOSError::new_err(format!("request body: {err}"))
            })?;
        Ok((PyBytes::new(py, &chunk), more))
    }

    /// Whether the client went away (the front tier aborted the stream).
    fn gone(&self) -> bool {
        let mut state = self.state();
        state.gone = state.gone || self.sink.client_gone();
        state.gone
    }

    /// `http.response.start`: the head, checked, is queued.
    fn start(&self, status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let status: u16 = status
            .extract()
            .ok()
            .filter(|s| (200..=999).contains(s))
            .ok_or_else(|| PyValueError::new_err(format!("invalid response status {status}")))?;
        let (headers, close) = parse_asgi_headers(headers)?;
        let mut state = self.state();
        state.bodyless |= matches!(status, 204 | 304);
        self.sink
            .head(status, b"", close, &headers)
            .map_err(|err| PyConnectionError::new_err(format!("the front tier is gone: {err}")))
    }

    /// `http.response.body`: the chunk goes out now; the response ends without `more`.
    fn body(&self, py: Python<'_>, body: &Bound<'_, PyAny>, more: bool) -> PyResult<()> {
        let chunk = body.cast::<PyBytes>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err("http.response.body: body must be bytes")
        })?;
        let bodyless = self.state().bodyless;
        self.state().ended |= !more;
        let chunk = chunk.as_bytes();
        let queued = (|| {
            if !chunk.is_empty() && !bodyless {
                self.sink.body(chunk)?;
            }
            if !more {
                self.sink.end()?;
            }
            Ok::<(), io::Error>(())
        })();
        queued
            .map_err(|err| PyConnectionError::new_err(format!("the front tier is gone: {err}")))?;
        self.flush(py)
    }

    /// The application failed: the traceback goes to the error log with the request's
    /// id; the client gets a 500 if no response started, else its stream is aborted.
    fn fail(&self, py: Python<'_>, error: &Bound<'_, PyAny>, started: bool) {
        log_app_error(
            py,
            &PyErr::from_value(error.clone()),
            &RequestLabel(&self.head),
        );
        let sent = if started {
            self.sink
                .abort("the application failed after sending the response head")
        } else {
            send_error_page(&*self.sink, self.state().bodyless)
        };
        if sent.is_ok() {
            let _ = self.flush(py);
        }
    }

    /// The request's task is over. A stream not ended yet (its client went away, and
    /// the application stopped there) is aborted: the front tier holds the worker's
    /// place for it until then.
    fn close(&self, py: Python<'_>) {
        let ended = std::mem::replace(&mut self.state().ended, true);
        if !ended && self.sink.abort("the client went away").is_ok() {
            let _ = self.flush(py);
        }
        let done = self.state().done.take();
        if let Some(done) = done {
            done(py);
        }
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
