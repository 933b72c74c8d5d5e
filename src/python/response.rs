//! Calling the application (PEP 3333): `start_response` with its `exc_info` rules and
//! `write()`, iterating the result, always calling its `close()`, and turning it all
//! into response frames through a [`ResponseSink`].
//!
//! Nothing the application returns reaches the wire unchecked: a status or header that
//! HTTP cannot carry (CR, LF, NUL, a non-token name) is an error answered with 500.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::exceptions::{PyAssertionError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use tracing::error;

use super::head::{parse_headers, parse_status};

/// Where a worker sends the response of one stream. Buffered: nothing is written to the
/// channel until [`ResponseSink::flush`], which callers make with the GIL released.
pub trait ResponseSink: Send + Sync {
    /// Queues the response head.
    fn head(
        &self,
        status: u16,
        reason: &[u8],
        close: bool,
        headers: &[(Vec<u8>, Vec<u8>)],
    ) -> io::Result<()>;
    /// Queues a body chunk.
    fn body(&self, chunk: &[u8]) -> io::Result<()>;
    /// Queues the response's trailer fields (after its body, before its end).
    fn trailers(&self, fields: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()>;
    /// Queues the end of the response.
    fn end(&self) -> io::Result<()>;
    /// Queues an abort: the response cannot be completed.
    fn abort(&self, why: &str) -> io::Result<()>;
    /// Writes everything queued to the channel.
    fn flush(&self) -> io::Result<()>;
    /// Whether the front tier said the client went away (a non-blocking check).
    fn client_gone(&self) -> bool;
}

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent whole (or a 500 in its place).
    Complete,
    /// Cut short: the app failed after the head, or the client went away.
    Aborted,
    /// The channel to the front tier is broken; the worker should exit.
    ChannelBroken,
}

struct Head {
    status: u16,
    reason: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    content_length: Option<u64>,
    close: bool,
}

#[derive(Default)]
struct State {
    head: Option<Head>,
    head_sent: bool,
    body_sent: u64,
    channel_broken: bool,
}

/// The `start_response` callable of one request.
#[pyclass(frozen, module = "rwsgi")]
pub struct StartResponse {
    state: Mutex<State>,
    sink: Arc<dyn ResponseSink>,
    /// HEAD, 204 and 304 responses carry no body: chunks are counted, never sent.
    head_only: bool,
}

/// The `write()` callable that `start_response` returns.
#[pyclass(frozen, module = "rwsgi")]
pub struct Write {
    start: Py<StartResponse>,
}

impl StartResponse {
    /// A `start_response` sending to `sink`.
    pub fn new(sink: Arc<dyn ResponseSink>, head_only: bool) -> StartResponse {
        StartResponse {
            state: Mutex::new(State::default()),
            sink,
            head_only,
        }
    }

    /// Whether the response may carry no body: HEAD, and the statuses RFC 9110 §15.3.5
    /// (204) and §15.4.5 (304) define without one. Its chunks are counted, never sent.
    fn bodyless(&self, state: &State) -> bool {
        self.head_only
            || state
                .head
                .as_ref()
                .is_some_and(|head| matches!(head.status, 204 | 304))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        crate::lock::lock(&self.state)
    }

    fn broken(state: &mut State, err: io::Error) -> PyErr {
        state.channel_broken = true;
        pyo3::exceptions::PyConnectionError::new_err(format!("the front tier is gone: {err}"))
    }

    /// Queues the head if it has not been sent yet.
    fn send_head(&self, state: &mut State) -> PyResult<()> {
        if state.head_sent {
            return Ok(());
        }
        let Some(head) = &state.head else {
            return Err(PyAssertionError::new_err(
                "the application did not call start_response before returning a body",
            ));
        };
        let result = self
            .sink
            .head(head.status, &head.reason, head.close, &head.headers);
        state.head_sent = true;
        result.map_err(|e| Self::broken(state, e))
    }

    /// Queues a body chunk (after the head), honouring a declared Content-Length: bytes
    /// past it are not sent.
    fn send_chunk(&self, chunk: &[u8]) -> PyResult<()> {
        let mut state = self.state();
        if chunk.is_empty() {
            return Ok(());
        }
        self.send_head(&mut state)?;
        let declared = state.head.as_ref().and_then(|h| h.content_length);
        let allowed = within_length(declared, state.body_sent, chunk.len());
        state.body_sent += chunk.len() as u64;
        if allowed == 0 || self.bodyless(&state) {
            return Ok(());
        }
        let result = self.sink.body(&chunk[..allowed]);
        result.map_err(|e| Self::broken(&mut state, e))
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let result = py.detach(|| self.sink.flush());
        result.map_err(|e| Self::broken(&mut self.state(), e))
    }
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__(
        slf: &Bound<'_, Self>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Write> {
        let this = slf.get();
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let state = this.state();
            match (&exc_info, state.head.is_some(), state.head_sent) {
                (Some(exc_info), _, true) => {
                    // PEP 3333: too late to change the status; re-raise the app's error.
                    let value = exc_info.get_item(1)?;
                    let traceback = exc_info.get_item(2)?;
                    return Err(PyErr::from_value(
                        value.call_method1(intern!(slf.py(), "with_traceback"), (traceback,))?,
                    ));
                }
                (None, true, _) => {
                    return Err(PyAssertionError::new_err(
                        "start_response called a second time without exc_info",
                    ));
                }
                _ => {}
            }
        }
        let status: &str = status
            .extract()
            .map_err(|_| PyTypeError::new_err("status must be a str"))?;
        let (code, reason) = parse_status(status)?;
        let (mut headers, mut content_length, close) = parse_headers(headers)?;
        if code == 204 {
            // RFC 9110 §8.6: no Content-Length in a 204. (A 304 keeps the app's own: it
            // is the length of the representation the 304 stands for.)
            headers.retain(|(name, _)| !name.eq_ignore_ascii_case(b"content-length"));
            content_length = None;
        }
        this.state().head = Some(Head {
            status: code,
            reason,
            headers,
            content_length,
            close,
        });
        Ok(Write {
            start: slf.clone().unbind(),
        })
    }
}

#[pymethods]
impl Write {
    /// Sends `data` at once (PEP 3333's imperative write).
    fn __call__(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() takes bytes"))?;
        let start = self.start.get();
        start.send_chunk(data.as_bytes())?;
        start.flush(py)
    }
}

/// `wsgi.file_wrapper`: iterates a file in blocks; a regular file is sent from Rust
/// without passing its bytes through Python.
#[pyclass(module = "rwsgi")]
pub struct FileWrapper {
    filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize = 8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> FileWrapper {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let block = self
            .filelike
            .bind(py)
            .call_method1(intern!(py, "read"), (self.blksize,))?;
        Ok((block.len()? > 0).then_some(block))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let filelike = self.filelike.bind(py);
        if filelike.hasattr(intern!(py, "close"))? {
            filelike.call_method0(intern!(py, "close"))?;
        }
        Ok(())
    }
}

/// The traceback of `err` as the text Python would print.
pub fn format_traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py
        .import("traceback")
        .and_then(|tb| {
            tb.call_method1(
                "format_exception",
                (err.get_type(py), err.value(py), err.traceback(py)),
            )
        })
        .and_then(|lines| lines.extract::<Vec<String>>());
    match formatted {
        Ok(lines) => lines.concat(),
        Err(_) => format!("{err}\n"),
    }
}

/// Logs an application's failure on the request `label` names, with its traceback.
pub(super) fn log_app_error(py: Python<'_>, err: &PyErr, label: &dyn std::fmt::Display) {
    error!(
        "Error handling request {label}\n{}",
        format_traceback(py, err).trim_end()
    );
}

/// The worker's 500 page, rwsgi's error page.
static ERROR_PAGE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    crate::error_page::html(500, "Internal Server Error", None).into_bytes()
});

/// Calls the application for one request and sends its response through `sink`.
/// `label` names the request in error logs.
pub fn respond(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    environ: Bound<'_, pyo3::types::PyDict>,
    sink: Arc<dyn ResponseSink>,
    head_only: bool,
    label: &dyn std::fmt::Display,
) -> Outcome {
    let start = match Bound::new(py, StartResponse::new(sink.clone(), head_only)) {
        Ok(start) => start,
        Err(err) => {
            log_app_error(py, &err, label);
            return Outcome::ChannelBroken;
        }
    };
    let outcome = match app.call1((environ, &start)) {
        Ok(iterable) => {
            let sent = send_iterable(py, start.get(), &iterable);
            // close() is called whatever happened, as PEP 3333 requires.
            let closed = close_iterable(py, &iterable);
            sent.and_then(|outcome| closed.map(|_| outcome))
        }
        Err(err) => Err(err),
    };
    let start = start.get();
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(err) => {
            if start.state().channel_broken {
                return Outcome::ChannelBroken;
            }
            log_app_error(py, &err, label);
            fail(start)
        }
    };
    if outcome == Outcome::ChannelBroken || start.state().channel_broken {
        return Outcome::ChannelBroken;
    }
    match py.detach(|| sink.flush()) {
        Ok(()) => outcome,
        Err(_) => Outcome::ChannelBroken,
    }
}

/// The app failed: a 500 if nothing was sent yet, else the response is aborted.
fn fail(start: &StartResponse) -> Outcome {
    let head_sent = start.state().head_sent;
    let result = if head_sent {
        start
            .sink
            .abort("the application failed after sending the response head")
    } else {
        send_error_page(&*start.sink, start.head_only)
    };
    match (result, head_sent) {
        (Err(_), _) => Outcome::ChannelBroken,
        (Ok(()), true) => Outcome::Aborted,
        (Ok(()), false) => Outcome::Complete,
    }
}

/// Queues a whole 500 response (its body left out for HEAD).
pub fn send_error_page(sink: &dyn ResponseSink, head_only: bool) -> io::Result<()> {
    let headers = [
        (
            b"Content-Type".to_vec(),
            b"text/html; charset=utf-8".to_vec(),
        ),
        (
            b"Content-Length".to_vec(),
            ERROR_PAGE.len().to_string().into_bytes(),
        ),
    ];
    sink.head(500, b"Internal Server Error", false, &headers)?;
    if !head_only {
        sink.body(&ERROR_PAGE)?;
    }
    sink.end()
}

fn close_iterable(py: Python<'_>, iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    // Lists, tuples and bytes have no close(); skip the failing attribute lookup.
    if iterable.is_exact_instance_of::<PyList>()
        || iterable.is_exact_instance_of::<PyTuple>()
        || iterable.is_exact_instance_of::<PyBytes>()
    {
        return Ok(());
    }
    if let Ok(close) = iterable.getattr(intern!(py, "close")) {
        close.call0()?;
    }
    Ok(())
}

fn chunk_bytes<'a, 'py>(item: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, PyBytes>> {
    item.cast::<PyBytes>().map_err(|_| {
        PyTypeError::new_err(format!(
            "the response body must be bytes, not {}",
            item.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })
}

fn send_iterable(
    py: Python<'_>,
    start: &StartResponse,
    iterable: &Bound<'_, PyAny>,
) -> PyResult<Outcome> {
    if let Ok(list) = iterable.cast::<PyList>() {
        // The whole body is known: declare its length rather than chunk it.
        set_length_if_known(
            start,
            list.iter()
                .map(|item| item.cast::<PyBytes>().map(|b| b.as_bytes().len()).ok()),
        );
        for item in list.iter() {
            start.send_chunk(chunk_bytes(&item)?.as_bytes())?;
        }
    } else if let Ok(wrapper) = iterable.cast::<FileWrapper>() {
        if !send_file(py, start, wrapper)? {
            return client_went_away(py, start);
        }
    } else {
        for item in iterable.try_iter()? {
            let item = item?;
            let chunk = chunk_bytes(&item)?.as_bytes();
            if chunk.is_empty() {
                continue;
            }
            start.send_chunk(chunk)?;
            // A generator streams: each chunk goes out as it is produced.
            start.flush(py)?;
            if start.sink.client_gone() {
                return client_went_away(py, start);
            }
        }
    }
    finish(start)
}

/// The client went away mid-response: the stream is ended with an abort so the front
/// tier frees this worker's slot.
fn client_went_away(py: Python<'_>, start: &StartResponse) -> PyResult<Outcome> {
    start
        .sink
        .abort("the client went away")
        .and_then(|_| py.detach(|| start.sink.flush()))
        .map(|_| Outcome::Aborted)
        .map_err(|err| StartResponse::broken(&mut start.state(), err))
}

/// Declares the body's length when the whole of it is known, unless the head already
/// went out (the app called `write()` first): a length added then would count only the
/// list, and the bytes past it would be cut (PEP 3333: both reach the client, in order).
fn set_length_if_known(start: &StartResponse, lengths: impl Iterator<Item = Option<usize>>) {
    let mut state = start.state();
    if state.head_sent || start.bodyless(&state) {
        return;
    }
    if let Some(head) = &mut state.head
        && head.content_length.is_none()
        && let Some(total) = lengths.sum::<Option<usize>>()
    {
        head.content_length = Some(total as u64);
        head.headers
            .push((b"Content-Length".to_vec(), total.to_string().into_bytes()));
    }
}

/// Ends the response: sends the head if the body was empty, and refuses to pass off a
/// body shorter than its declared Content-Length as complete.
fn finish(start: &StartResponse) -> PyResult<Outcome> {
    let mut state = start.state();
    start.send_head(&mut state)?;
    let declared = state.head.as_ref().and_then(|h| h.content_length);
    let bodyless = start.bodyless(&state);
    let result = end_within_length(&*start.sink, declared, state.body_sent, bodyless);
    result.map_err(|e| StartResponse::broken(&mut state, e))
}

/// How many bytes of a `len`-byte chunk a declared Content-Length still lets out once
/// `sent` bytes were given: bytes past it are not sent (RFC 9112 §6.3: the recipient
/// would take them for the next response).
pub(super) fn within_length(declared: Option<u64>, sent: u64, len: usize) -> usize {
    match declared {
        Some(length) => length.saturating_sub(sent).min(len as u64) as usize,
        None => len,
    }
}

/// Ends a response whose application gave `sent` body bytes: an End, or an Abort (and
/// an error line) when that is fewer than its declared Content-Length, so that the
/// client sees a cut response rather than waiting for bytes that never come.
pub(super) fn end_within_length(
    sink: &dyn ResponseSink,
    declared: Option<u64>,
    sent: u64,
    bodyless: bool,
) -> io::Result<Outcome> {
    match declared {
        Some(length) if sent < length && !bodyless => {
            error!(
                "the application declared Content-Length: {length} but sent {sent} bytes; aborting the response"
            );
            sink.abort("body shorter than its Content-Length")
                .map(|_| Outcome::Aborted)
        }
        _ => sink.end().map(|_| Outcome::Complete),
    }
}

/// Sends a `wsgi.file_wrapper` response. A regular file with a descriptor is read from
/// Rust with the GIL released; anything else is iterated like any other body. Returns
/// false if the client went away.
fn send_file(
    py: Python<'_>,
    start: &StartResponse,
    wrapper: &Bound<'_, FileWrapper>,
) -> PyResult<bool> {
    let filelike = wrapper.borrow().filelike.clone_ref(py).into_bound(py);
    let fd = filelike
        .call_method0(intern!(py, "fileno"))
        .and_then(|fd| fd.extract::<i32>())
        .ok();
    let Some(fd) = fd.filter(|&fd| {
        // SAFETY: the descriptor belongs to the live file object, which outlives this call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        nix::sys::stat::fstat(borrowed).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
    }) else {
        for item in wrapper.as_any().try_iter()? {
            start.send_chunk(chunk_bytes(&item?)?.as_bytes())?;
        }
        return Ok(true);
    };
    // Python's buffered reader may have read ahead; its tell() is the true position.
    let mut offset = filelike
        .call_method0(intern!(py, "tell"))
        .and_then(|t| t.extract::<i64>())
        .unwrap_or(0);
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        // SAFETY: as above, the file object keeps the descriptor open for this call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let read = py.detach(|| nix::sys::uio::pread(borrowed, &mut buffer, offset));
        let n = read.map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
        if n == 0 {
            return Ok(true);
        }
        offset += n as i64;
        start.send_chunk(&buffer[..n])?;
        start.flush(py)?;
        if start.sink.client_gone() {
            return Ok(false);
        }
    }
}
