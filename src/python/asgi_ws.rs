//! The `websocket` scope of an ASGI worker (asgiref `www.rst` 2.5): what the application's
//! `receive()` takes and its `send()` gives, in Rust; the order of the messages is the
//! glue's (`asgi.py`, `WebSocket`).
//!
//! RFC 6455 is the front tier's: here are only ASGI messages, which cross the channel as
//! the frames of protocol/mod.rs (7) through a [`SocketSink`]. The channel's reader
//! fills each WebSocket's [`Inbox`]; the application's `send()` spends the credit the
//! front tier granted, and waits (the glue awaits a wake-up) when there is none, so a
//! slow client never blocks the event loop nor grows this process's memory.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::asgi::{ScopeMaker, TaskDone};
use super::head::parse_asgi_headers;
use super::response::{log_app_error, send_error_page};
use super::{RequestLabel, ResponseSink};
use crate::protocol::{MAX_PAYLOAD, RequestHead, WS_WINDOW};

/// A WebSocket's way back to the front tier, besides an HTTP response's (a denial).
pub trait SocketSink: ResponseSink {
    /// Queues `websocket.accept`.
    fn accept(&self, subprotocol: Option<&[u8]>, headers: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()>;
    /// Queues a piece of a message.
    fn message(&self, text: bool, last: bool, data: &[u8]) -> io::Result<()>;
    /// Queues `websocket.close`.
    fn close(&self, code: u16, reason: &str) -> io::Result<()>;
    /// Queues a grant of `bytes` more of the client's messages.
    fn credit(&self, bytes: u32) -> io::Result<()>;
}

/// What the channel's reader has received for one WebSocket, until its application
/// takes it.
pub struct Inbox {
    /// Whole messages: text or not, the data, and the credit to grant once taken.
    messages: VecDeque<(bool, Bytes, u32)>,
    /// The message whose pieces are arriving.
    partial: Option<(bool, BytesMut)>,
    /// The WebSocket is over (the front tier's close: the client's code, 1006, or the
    /// server's own), or the application closed it: what `websocket.disconnect` says.
    closed: Option<(u16, String)>,
    /// Bytes the application may still send (the front tier's credit).
    credit: u64,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox {
            messages: VecDeque::new(),
            partial: None,
            closed: None,
            credit: u64::from(WS_WINDOW),
        }
    }
}

impl Inbox {
    /// A piece of a client's message; returns the credit to grant at once (the pieces
    /// of a message not yet whole, which the front tier could not send otherwise when
    /// the message is larger than a window).
    pub fn piece(&mut self, text: bool, last: bool, data: Bytes) -> u32 {
        let size = data.len() as u32;
        let whole = match self.partial.take() {
            None if last => data,
            None => {
                self.partial = Some((text, BytesMut::from(&data[..])));
                return size;
            }
            Some((text, mut gathered)) => {
                gathered.extend_from_slice(&data);
                if !last {
                    self.partial = Some((text, gathered));
                    return size;
                }
                gathered.freeze()
            }
        };
        self.messages.push_back((text, whole, size));
        0
    }

    /// The front tier closed the WebSocket (the first word counts).
    pub fn closed(&mut self, code: u16, reason: String) {
        self.closed.get_or_insert((code, reason));
    }

    /// The front tier granted `bytes` more.
    pub fn granted(&mut self, bytes: u32) {
        self.credit += u64::from(bytes);
    }
}

/// A WebSocket's shared inbox.
pub type SharedInbox = Arc<Mutex<Inbox>>;

struct State {
    accepted: bool,
    /// The stream's End or Abort is queued.
    ended: bool,
    /// A denial's response is under way (`websocket.http.response.start` sent).
    responding: bool,
    done: Option<TaskDone>,
}

/// One WebSocket of an ASGI worker, as the glue's task sees it.
#[pyclass(frozen, module = "rwsgi")]
pub struct AsgiSocket {
    id: u32,
    head: RequestHead,
    scopes: Arc<ScopeMaker>,
    sink: Arc<dyn SocketSink>,
    inbox: SharedInbox,
    state: Mutex<State>,
}

impl AsgiSocket {
    /// The socket of stream `id`, whose frames arrive in `inbox`.
    pub(super) fn new(
        py: Python<'_>,
        id: u32,
        head: RequestHead,
        scopes: Arc<ScopeMaker>,
        sink: Arc<dyn SocketSink>,
        inbox: SharedInbox,
        done: TaskDone,
    ) -> PyResult<Bound<'_, AsgiSocket>> {
        Bound::new(
            py,
            AsgiSocket {
                id,
                head,
                scopes,
                sink,
                inbox,
                state: Mutex::new(State {
                    accepted: false,
                    ended: false,
                    responding: false,
                    done: Some(done),
                }),
            },
        )
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        crate::lock::lock(&self.inbox)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        crate::lock::lock(&self.state)
    }

    fn sent(&self, py: Python<'_>, queued: io::Result<()>) -> PyResult<()> {
        let sink = &self.sink;
        queued
            .and_then(|()| py.detach(|| sink.flush()))
            .map_err(|err| PyConnectionError::new_err(format!("the front tier is gone: {err}")))
    }

    /// Raises the glue's ClientDisconnected when the WebSocket is over.
    fn check_open(&self) -> PyResult<()> {
        match &self.inbox().closed {
            Some((code, _)) => Err(PyConnectionError::new_err(format!(
                "the WebSocket is closed ({code})"
            ))),
            None => Ok(()),
        }
    }
}

#[pymethods]
impl AsgiSocket {
    /// The stream id, which the worker's poll names when something arrived for it.
    #[getter]
    fn id(&self) -> u32 {
        self.id
    }

    /// The `websocket` scope (www.rst 2.5), with a shallow copy of the lifespan `state`.
    fn scope<'py>(
        &self,
        py: Python<'py>,
        state: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.scopes.scope(py, &self.head, state, true)
    }

    /// The next message received: `(True, str)`, `(False, bytes)`, `(code, reason)`
    /// once the WebSocket is over (after every message), or None for now. Taking a
    /// message grants its credit back to the front tier.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let mut inbox = self.inbox();
        if let Some((text, data, credit)) = inbox.messages.pop_front() {
            drop(inbox);
            if credit > 0 && !self.state().ended {
                // A grant that cannot be sent is moot: the WebSocket is going.
                let _ = self.sent(py, self.sink.credit(credit));
            }
            let message = match text {
                // Checked as UTF-8 by the front tier (RFC 6455 §8.1).
                true => PyString::new(py, &String::from_utf8_lossy(&data)).into_any(),
                false => PyBytes::new(py, &data).into_any(),
            };
            return Ok(Some((text, message).into_pyobject(py)?.into_any()));
        }
        match &inbox.closed {
            Some((code, reason)) => {
                Ok(Some((*code, reason.as_str()).into_pyobject(py)?.into_any()))
            }
            None => Ok(None),
        }
    }

    /// Whether the WebSocket is over (the glue then answers `websocket.disconnect`).
    fn gone(&self) -> bool {
        self.inbox().closed.is_some()
    }

    /// `websocket.accept`.
    fn accept(
        &self,
        py: Python<'_>,
        subprotocol: Option<&Bound<'_, PyAny>>,
        headers: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.check_open()?;
        let subprotocol = match subprotocol {
            Some(s) if !s.is_none() => Some(s.extract::<String>().map_err(|_| {
                PyTypeError::new_err("websocket.accept: subprotocol must be a str")
            })?),
            _ => None,
        };
        let (headers, _) = parse_asgi_headers(headers)?;
        let mut state = self.state();
        if state.accepted || state.responding {
            return Err(PyRuntimeError::new_err(
                "websocket.accept after the WebSocket was accepted or answered",
            ));
        }
        state.accepted = true;
        drop(state);
        let subprotocol = subprotocol.as_deref().map(str::as_bytes);
        self.sent(py, self.sink.accept(subprotocol, &headers))
    }

    /// Sends what the credit allows of a message from `offset`; returns the new
    /// offset (the whole length once its last piece has gone). Raises a
    /// ConnectionError once the WebSocket is over.
    fn send(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyBytes>,
        text: bool,
        offset: usize,
    ) -> PyResult<usize> {
        self.check_open()?;
        if !self.state().accepted {
            return Err(PyRuntimeError::new_err(
                "websocket.send before websocket.accept",
            ));
        }
        let data = data.as_bytes();
        let mut at = offset.min(data.len());
        loop {
            let left = data.len() - at;
            let credit = self.inbox().credit;
            let piece = left.min(MAX_PAYLOAD - 1).min(credit as usize);
            // An empty message is one empty piece, and needs no credit.
            if piece == 0 && left > 0 {
                return Ok(at);
            }
            let last = piece == left;
            self.inbox().credit -= piece as u64;
            self.sent(py, self.sink.message(text, last, &data[at..at + piece]))?;
            at += piece;
            if last {
                return Ok(data.len());
            }
        }
    }

    /// Whether the front tier's credit allows sending now.
    fn can_send(&self) -> bool {
        let inbox = self.inbox();
        inbox.credit > 0 || inbox.closed.is_some()
    }

    /// `websocket.close`: after the accept, the close frame; before it, a 403 (www.rst:
    /// a close before the accept denies the connection).
    fn close(&self, py: Python<'_>, code: u16, reason: &str) -> PyResult<()> {
        self.check_open()?;
        let accepted = self.state().accepted;
        if !accepted {
            return self.deny(py);
        }
        // What the application's receive() answers from now on.
        self.inbox().closed(code, reason.to_owned());
        self.sent(py, self.sink.close(code, reason))
    }

    /// Denies the WebSocket with a 403.
    fn deny(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut state = self.state();
            if state.accepted || state.responding || state.ended {
                return Ok(());
            }
            state.ended = true;
        }
        self.inbox().closed(1000, String::new());
        let headers = [(b"content-length".to_vec(), b"0".to_vec())];
        let queued = self
            .sink
            .head(403, b"", false, &headers)
            .and_then(|()| self.sink.end());
        self.sent(py, queued)
    }

    /// `websocket.http.response.start` (the denial response extension).
    fn start(
        &self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let status = super::asgi::response_status(status)?;
        let (headers, close) = parse_asgi_headers(headers)?;
        {
            let mut state = self.state();
            if state.accepted || state.responding {
                return Err(PyRuntimeError::new_err(
                    "websocket.http.response.start after an accept or a response",
                ));
            }
            state.responding = true;
        }
        self.sent(py, self.sink.head(status, b"", close, &headers))
    }

    /// `websocket.http.response.body`; the response ends without `more`.
    fn body(&self, py: Python<'_>, body: &Bound<'_, PyAny>, more: bool) -> PyResult<()> {
        let chunk = body.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err("websocket.http.response.body: body must be bytes")
        })?;
        {
            let mut state = self.state();
            if !state.responding || state.ended {
                return Err(PyRuntimeError::new_err(
                    "websocket.http.response.body without its start, or after its end",
                ));
            }
            state.ended |= !more;
        }
        let chunk = chunk.as_bytes();
        let mut queued = Ok(());
        if !chunk.is_empty() {
            queued = self.sink.body(chunk);
        }
        if !more {
            queued = queued.and_then(|()| self.sink.end());
            self.inbox().closed(1000, String::new());
        }
        self.sent(py, queued)
    }

    /// The application failed: the traceback goes to the error log; the client gets a
    /// 500 before the accept, a close 1011 after it (the stream's Abort).
    fn fail(&self, py: Python<'_>, error: &Bound<'_, PyAny>) {
        log_app_error(
            py,
            &PyErr::from_value(error.clone()),
            &RequestLabel(&self.head),
        );
        let (accepted, responding, ended) = {
            let state = self.state();
            (state.accepted, state.responding, state.ended)
        };
        if ended {
            return;
        }
        self.state().ended = true;
        let queued = match accepted || responding {
            true => self.sink.abort("the application failed"),
            false => send_error_page(&*self.sink, false),
        };
        let _ = self.sent(py, queued);
    }

    /// The WebSocket's task is over: its stream ends (which frees the worker's place).
    fn finish(&self, py: Python<'_>) {
        let (ended, accepted) = {
            let mut state = self.state();
            (std::mem::replace(&mut state.ended, true), state.accepted)
        };
        if !ended {
            let queued = match accepted {
                true => self.sink.end(),
                false => self
                    .sink
                    .abort("the application neither accepted nor denied"),
            };
            let _ = self.sent(py, queued);
        }
        let done = self.state().done.take();
        if let Some(done) = done {
            done(py);
        }
    }
}
