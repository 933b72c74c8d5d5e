//! Bodies in the front tier: request bodies buffered whole before dispatch (memory up
//! to a threshold and within the connection's budget, then a temporary file), and the
//! response body fed by a worker.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use super::budget::{Backlog, Budget, Held};
use super::channel::{Event, EventReceiver, Events, Failure, Spilled, WorkerConn};

/// A request body, complete.
pub enum RequestBody {
    /// Held in memory as the pieces it arrived in (small ones gathered), counted against
    /// the connection's budget until dropped.
    Memory(Vec<Bytes>, Held),
    /// Spooled to a temporary file of `length` bytes.
    File {
        file: tempfile::NamedTempFile,
        length: u64,
    },
}

impl RequestBody {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            RequestBody::Memory(pieces, _) => pieces.iter().map(|p| p.len() as u64).sum(),
            RequestBody::File { length, .. } => *length,
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client sent a malformed body or went away.
    #[error("reading the request body: {0}")]
    Client(hyper::Error),
    /// The body is larger than allowed.
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    /// The client sent nothing of the body for too long.
    #[error("request body stalled")]
    TimedOut,
    /// The spool file could not be written (our side).
    #[error("spooling the request body: {0}")]
    Spool(std::io::Error),
}

/// How much of a body to accept, and how patiently.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Bodies above this many bytes are spooled to a temporary file.
    pub memory: usize,
    /// Bodies above this many bytes are refused.
    pub max: u64,
    /// The longest wait for the next piece.
    pub idle: std::time::Duration,
}

/// Pieces of a body at least this large are kept as they came (the buffers hyper read
/// them into); smaller ones are gathered into one, so that a client sending a body in
/// tiny chunks does not make as many frames.
const KEEP_PIECE: usize = 16 * 1024;

/// Reads the whole body: in memory up to `limits.memory` bytes while `budget` (the
/// connection's, which counts all its streams) has room, then into a temporary file in
/// the system's temporary directory. In memory it is not copied: the pieces hyper read
/// it into go to the worker's channel as they are (see `channel::Queued`).
pub async fn buffer(
    mut body: Incoming,
    limits: BodyLimits,
    budget: &Arc<Budget>,
) -> Result<RequestBody, BodyError> {
    // Nothing is refused at 0 bytes.
    let mut held = budget.hold(0);
    // A body of known length that fits in memory is counted against the budgets at
    // once (a client that declares a length and sends nothing must not make memory out
    // of nothing).
    let expected = body.size_hint().exact().unwrap_or(0);
    let reserved = match usize::try_from(expected) {
        Ok(room) if room > 0 && room <= limits.memory && held.try_add(expected) => room,
        _ => 0,
    };
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut small = BytesMut::new();
    let mut spool: Option<tempfile::NamedTempFile> = None;
    let mut length: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(limits.idle, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => return Err(BodyError::TimedOut),
        };
        let frame = frame.map_err(BodyError::Client)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        length += data.len() as u64;
        if length > limits.max {
            return Err(BodyError::TooLarge(limits.max));
        }
        // Writes to the page cache: brief, so done here, as a response's spill is. On
        // blocking threads, an HTTP/2 connection's streams spooling at once took a
        // thread each, and each thread its own memory.
        if let Some(file) = &mut spool {
            file.as_file().write_all(&data).map_err(BodyError::Spool)?;
        } else if length <= limits.memory as u64
            && (length <= reserved as u64 || held.try_add(data.len() as u64))
        {
            if data.len() >= KEEP_PIECE {
                if !small.is_empty() {
                    pieces.push(small.split().freeze());
                }
                pieces.push(data);
            } else {
                small.extend_from_slice(&data);
            }
        } else {
            let named = tempfile::Builder::new()
                .prefix("rwsgi-body-")
                .tempfile()
                .map_err(BodyError::Spool)?;
            let mut file = named.as_file();
            for piece in pieces.drain(..).chain([small.split().freeze(), data]) {
                file.write_all(&piece).map_err(BodyError::Spool)?;
            }
            small = BytesMut::new();
            held = budget.hold(0);
            spool = Some(named);
        }
    }
    match spool {
        Some(file) => Ok(RequestBody::File { file, length }),
        None => {
            if !small.is_empty() {
                pieces.push(small.freeze());
            }
            Ok(RequestBody::Memory(pieces, held))
        }
    }
}

/// A response body: either made by the front tier itself, or streamed from a worker.
pub enum ResponseBody {
    /// A whole body known up front (error pages).
    Full(Option<Bytes>),
    /// Chunks arriving from a worker's stream.
    Worker(WorkerBody),
    /// Any other body the front tier makes: files, compressed app responses.
    Boxed(UnsyncBoxBody<Bytes, ResponseAborted>),
}

impl ResponseBody {
    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::Full(Some(bytes.into()))
    }

    /// An empty body (HEAD, 304).
    pub fn empty() -> ResponseBody {
        ResponseBody::Full(None)
    }

    /// Any body; its errors abort the response.
    pub fn boxed<B>(body: B) -> ResponseBody
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        ResponseBody::Boxed(
            body.map_err(|err| ResponseAborted(Failure::Aborted(err.to_string())))
                .boxed_unsync(),
        )
    }
}

/// The body of a worker's response. Dropped before the worker ended the stream (the
/// client went away), it tells the worker to stop.
pub struct WorkerBody {
    events: EventReceiver,
    /// What the stream holds for the client.
    backlog: Arc<Backlog>,
    /// The spilled chunk being read back, if any.
    reading: Option<Spilled>,
    conn: Arc<WorkerConn>,
    stream: u32,
    finished: bool,
    /// A failure held back one poll, so hyper writes out what came before it.
    failure: Option<Failure>,
    /// Trailer fields held until the stream's End: sent last, once the body is whole.
    trailers: Option<Vec<(Bytes, Bytes)>>,
}

impl WorkerBody {
    /// The rest of stream `stream` of `conn`, after its head.
    pub fn new(events: Events, conn: Arc<WorkerConn>, stream: u32) -> WorkerBody {
        WorkerBody {
            events: events.receiver,
            backlog: events.backlog,
            reading: None,
            conn,
            stream,
            finished: false,
            failure: None,
            trailers: None,
        }
    }
}

/// A worker's trailer fields as a header map. The worker checked them; a field that is
/// not one anyway (a worker's bytes are not trusted) is left out, and logged.
fn trailer_map(fields: Vec<(Bytes, Bytes)>) -> hyper::HeaderMap {
    let mut map = hyper::HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        match (
            hyper::header::HeaderName::from_bytes(&name),
            hyper::header::HeaderValue::from_maybe_shared(value),
        ) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            _ => tracing::warn!(
                "a worker's trailer field {:?} is not valid HTTP: left out",
                String::from_utf8_lossy(&name)
            ),
        }
    }
    map
}

/// The most read back from a spill file at a time.
const SPILL_READ: u64 = 64 * 1024;

impl WorkerBody {
    /// The next piece of the spilled chunk being read back. A read from the page cache,
    /// done in place like the write that put it there.
    fn read_spilled(&mut self) -> Option<Result<Bytes, Failure>> {
        let chunk = self.reading.as_mut()?;
        self.backlog.moved();
        let len = chunk.len.min(SPILL_READ);
        let mut piece = vec![0; len as usize];
        let result = chunk.file.read_exact_at(&mut piece, chunk.offset);
        chunk.offset += len;
        chunk.len -= len;
        if chunk.len == 0 {
            // Its hold on the spill budget goes with it.
            self.reading = None;
        }
        Some(match result {
            Ok(()) => Ok(piece.into()),
            Err(err) => Err(Failure::Aborted(format!(
                "cannot read back a spilled response: {err}"
            ))),
        })
    }
}

impl Drop for WorkerBody {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.abort_stream(self.stream);
        }
    }
}

/// The response could not be completed; hyper resets the connection or stream.
#[derive(Debug, thiserror::Error)]
#[error("response aborted: {0:?}")]
pub struct ResponseAborted(pub Failure);

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseAborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Worker(body) => body.poll_frame(cx),
            ResponseBody::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Worker(body) => body.finished && body.trailers.is_none(),
            ResponseBody::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Worker(_) => SizeHint::default(),
            ResponseBody::Boxed(body) => body.size_hint(),
        }
    }
}

impl WorkerBody {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseAborted>>> {
        if let Some(failure) = self.failure.take() {
            return Poll::Ready(Some(Err(ResponseAborted(failure))));
        }
        if self.finished {
            // The trailers were the last frame.
            return Poll::Ready(None);
        }
        loop {
            if let Some(piece) = self.read_spilled() {
                return Poll::Ready(Some(match piece {
                    Ok(bytes) => Ok(Frame::data(bytes)),
                    Err(failure) => {
                        self.finished = true;
                        Err(ResponseAborted(failure))
                    }
                }));
            }
            return match self.events.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Event::Data(data, held))) => {
                    self.backlog.moved();
                    drop(held);
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Poll::Ready(Some(Event::Spilled(spilled))) => {
                    self.reading = Some(spilled);
                    continue;
                }
                Poll::Ready(Some(Event::Trailers(fields))) => {
                    self.trailers = Some(fields);
                    continue;
                }
                Poll::Ready(Some(Event::End)) => {
                    self.finished = true;
                    match self.trailers.take() {
                        Some(fields) => Poll::Ready(Some(Ok(Frame::trailers(trailer_map(fields))))),
                        None => Poll::Ready(None),
                    }
                }
                Poll::Ready(Some(Event::Failed(failure))) => {
                    // hyper flushes its buffer when the body is pending: the head and the
                    // bytes before the failure reach the client before the connection is
                    // cut.
                    self.finished = true;
                    self.failure = Some(failure);
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Poll::Ready(Some(Event::Head(_))) => {
                    self.finished = true;
                    Poll::Ready(Some(Err(ResponseAborted(Failure::Aborted(
                        "a second response head".into(),
                    )))))
                }
                // Only a request whose head has not come can be given back.
                Poll::Ready(Some(Event::Returned(_))) => {
                    self.finished = true;
                    Poll::Ready(Some(Err(ResponseAborted(Failure::WorkerDied))))
                }
                // A WebSocket's frames in an HTTP response: the worker broke the protocol.
                Poll::Ready(Some(
                    Event::WsAccept(_)
                    | Event::WsMessage(_)
                    | Event::WsClose(_)
                    | Event::WsCredit(_),
                )) => {
                    self.finished = true;
                    Poll::Ready(Some(Err(ResponseAborted(Failure::Aborted(
                        "a WebSocket frame in an HTTP response".into(),
                    )))))
                }
                Poll::Ready(None) => {
                    self.finished = true;
                    Poll::Ready(Some(Err(ResponseAborted(Failure::WorkerDied))))
                }
            };
        }
    }
}
