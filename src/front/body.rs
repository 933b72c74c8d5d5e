//! Bodies in the front tier: request bodies buffered whole before dispatch (memory up
//! to a threshold, then a temporary file), and the response body fed by a worker.

use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::channel::{Event, Events, Failure, Spilled, WorkerConn};

/// A request body, complete.
pub enum RequestBody {
    /// Held in memory.
    Memory(Bytes),
    /// Spooled to a temporary file of `length` bytes.
    File {
        file: tempfile::NamedTempFile,
        length: u64,
    },
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

/// Reads the whole body: in memory up to `limits.memory` bytes, then into a temporary
/// file in the system's temporary directory.
pub async fn buffer(mut body: Incoming, limits: BodyLimits) -> Result<RequestBody, BodyError> {
    let mut memory = BytesMut::new();
    let mut spool: Option<(tempfile::NamedTempFile, tokio::fs::File)> = None;
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
        if let Some((_, file)) = &mut spool {
            file.write_all(&data).await.map_err(BodyError::Spool)?;
        } else if memory.len() + data.len() <= limits.memory {
            if memory.is_empty() && body.is_end_stream() {
                // The common case of a body in one piece: no copy.
                return Ok(RequestBody::Memory(data));
            }
            memory.extend_from_slice(&data);
        } else {
            let named = tempfile::Builder::new()
                .prefix("rwsgi-body-")
                .tempfile()
                .map_err(BodyError::Spool)?;
            let mut file =
                tokio::fs::File::from_std(named.as_file().try_clone().map_err(BodyError::Spool)?);
            file.write_all(&memory).await.map_err(BodyError::Spool)?;
            file.write_all(&data).await.map_err(BodyError::Spool)?;
            memory = BytesMut::new();
            spool = Some((named, file));
        }
    }
    match spool {
        Some((named, mut file)) => {
            file.flush().await.map_err(BodyError::Spool)?;
            Ok(RequestBody::File {
                file: named,
                length,
            })
        }
        None => Ok(RequestBody::Memory(memory.freeze())),
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
    events: mpsc::UnboundedReceiver<Event>,
    /// The stream's count of response bytes held in memory.
    in_memory: Arc<AtomicUsize>,
    /// The spilled chunk being read back, if any.
    reading: Option<Spilled>,
    conn: Arc<WorkerConn>,
    stream: u32,
    finished: bool,
    /// A failure held back one poll, so hyper writes out what came before it.
    failure: Option<Failure>,
}

impl WorkerBody {
    /// The rest of stream `stream` of `conn`, after its head.
    pub fn new(events: Events, conn: Arc<WorkerConn>, stream: u32) -> WorkerBody {
        WorkerBody {
            events: events.receiver,
            in_memory: events.in_memory,
            reading: None,
            conn,
            stream,
            finished: false,
            failure: None,
        }
    }
}

/// The most read back from a spill file at a time.
const SPILL_READ: u64 = 64 * 1024;

impl WorkerBody {
    /// The next piece of the spilled chunk being read back. A read from the page cache,
    /// done in place like the write that put it there.
    fn read_spilled(&mut self) -> Option<Result<Bytes, Failure>> {
        let chunk = self.reading.as_mut()?;
        let len = chunk.len.min(SPILL_READ);
        let mut piece = vec![0; len as usize];
        let result = chunk.file.read_exact_at(&mut piece, chunk.offset);
        chunk.offset += len;
        chunk.len -= len;
        if chunk.len == 0 {
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
            ResponseBody::Worker(body) => body.finished,
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
                Poll::Ready(Some(Event::Data(data))) => {
                    self.in_memory.fetch_sub(data.len(), Ordering::AcqRel);
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Poll::Ready(Some(Event::Spilled(spilled))) => {
                    self.reading = Some(spilled);
                    continue;
                }
                Poll::Ready(Some(Event::End)) => {
                    self.finished = true;
                    Poll::Ready(None)
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
                Poll::Ready(None) => {
                    self.finished = true;
                    Poll::Ready(Some(Err(ResponseAborted(Failure::WorkerDied))))
                }
            };
        }
    }
}
