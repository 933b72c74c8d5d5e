//! The worker's end of its channel: blocking reads of request frames (called with the
//! GIL released) and buffered writes of response frames.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::{MsgFlags, recv};

use super::spin::Spin;
use crate::lock::lock;
use crate::protocol::ring::{RingError, RingMap};
use crate::protocol::{
    BodyFile, Decoder, Frame, HEADER_LEN, Header, Hello, Kind, MAX_PAYLOAD, ProtocolError,
    RequestHead, ResponseHead, StreamMap, StreamSet, Trailers, WsAccept, WsClose, WsCredit,
    WsMessage, encode_frame, encode_frame_header,
};
use crate::python::{BodyBytes, ResponseSink, SharedInbox, SocketSink};
use crate::scoreboard::WorkerSlot;

/// Why the channel cannot be used any more.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channel I/O: {0}")]
    Io(#[from] io::Error),
    #[error("channel protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("channel ring: {0}")]
    Ring(#[from] RingError),
}

impl ChannelError {
    /// The front tier closed its end: it stopped or was restarted (a stop signal sent to
    /// the whole process group reaches it as soon as the workers). The master answers
    /// for it; for this worker it is the end of its work, not an error.
    pub fn front_tier_gone(&self) -> bool {
        matches!(self, ChannelError::Io(err) if matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionAborted
        ))
    }

    /// Logs why the worker's channel ended: at INFO when the front tier went away,
    /// as an error otherwise (a protocol error is a bug on one side).
    pub fn log_end(&self, worker: &dyn std::fmt::Display) {
        if self.front_tier_gone() {
            tracing::info!("worker {worker}: the front tier closed the channel ({self})");
        } else {
            tracing::error!("worker {worker}: {self}");
        }
    }
}

/// A request body as it arrived on the channel.
pub enum Body {
    /// The bytes.
    Memory(Bytes),
    /// Read from the ring straight into a `bytes` object (a sync or gthread worker's
    /// body of at least [`DIRECT_BODY`] in one frame: see [`Reader::read_whole_body`]).
    Python(BodyBytes),
    /// The front tier's spool file.
    File { path: PathBuf, length: u64 },
}

/// One whole request: head and body.
pub struct Request {
    /// Its stream id.
    pub stream: u32,
    /// The parsed head.
    pub head: RequestHead,
    /// The body.
    pub body: Body,
    /// A WebSocket's handshake (no body): where its messages arrive.
    pub websocket: Option<SharedInbox>,
}

/// The requests of a worker serving many streams whose frames are still arriving.
#[derive(Default)]
pub struct Incoming {
    partial: StreamMap<Partial>,
    /// Retired has come: frames of the streams still open may follow (an asgi worker's
    /// WebSockets, which the front tier closes then), but no request.
    pub retired: bool,
    /// The front tier closed the channel.
    pub closed: bool,
    /// Aborts of requests being served, counted: an event loop looks for the streams
    /// whose client went away only when this has moved.
    pub aborts: u64,
}

/// A request whose frames are still arriving.
struct Partial {
    stream: u32,
    head: RequestHead,
    chunks: Vec<Bytes>,
    file: Option<BodyFile>,
    /// The body, read straight into a `bytes` object.
    direct: Option<BodyBytes>,
}

impl Partial {
    /// A request begun by its RequestHead frame.
    fn new(frame: Frame) -> Result<Partial, ProtocolError> {
        Ok(Partial {
            stream: frame.stream,
            head: RequestHead::decode(frame.payload)?,
            chunks: Vec::new(),
            file: None,
            direct: None,
        })
    }

    /// Whether a Body frame of `length` bytes for `stream` is this request's whole body
    /// (its Content-Length), not begun yet: then it may be read straight into a `bytes`
    /// object.
    fn whole_body_in(&self, stream: u32, length: usize) -> bool {
        stream == self.stream
            && self.chunks.is_empty()
            && self.file.is_none()
            && self.direct.is_none()
            && self.content_length() == Some(length)
    }

    /// The Content-Length the front tier sent with the head (it buffers bodies whole).
    fn content_length(&self) -> Option<usize> {
        let (_, value) = self
            .head
            .headers
            .iter()
            .find(|(name, _)| &name[..] == b"content-length")?;
        std::str::from_utf8(value).ok()?.parse().ok()
    }

    /// A Body or BodyFile frame of the request.
    fn add(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        match frame.kind {
            Kind::BodyFile => self.file = Some(BodyFile::decode(frame.payload)?),
            _ => self.chunks.push(frame.payload),
        }
        Ok(())
    }

    /// The whole request, once its End frame has come.
    fn finish(self) -> Request {
        let body = match (self.file, self.direct) {
            (_, Some(direct)) => Body::Python(direct),
            (Some(file), None) => {
                use std::os::unix::ffi::OsStrExt;
                let path = PathBuf::from(std::ffi::OsStr::from_bytes(&file.path));
                Body::File {
                    path,
                    length: file.length,
                }
            }
            (None, None) if self.chunks.len() == 1 => {
                Body::Memory(self.chunks.into_iter().next().unwrap_or_default())
            }
            (None, None) => Body::Memory(self.chunks.concat().into()),
        };
        Request {
            stream: self.stream,
            head: self.head,
            body,
            websocket: None,
        }
    }
}

struct Reader {
    socket: UnixStream,
    /// The shared-memory rings, once the front tier sent them: frames then come in
    /// `to_worker`, and the socket carries only doorbells.
    ring: Option<Arc<RingMap>>,
    buf: BytesMut,
    decoder: Decoder,
    /// Frames read while checking for an abort, not yet consumed.
    pending: VecDeque<Frame>,
    /// Where reads land before they are appended to `buf` (zeroed once, not per read).
    scratch: Box<[u8]>,
    /// Whether to look at the ring a while before sleeping.
    spin: Spin,
}

struct Writer {
    socket: UnixStream,
    /// As the reader's: frames then go out in `to_front`.
    ring: Option<Arc<RingMap>>,
    buf: Vec<u8>,
}

/// Both directions of the channel.
pub struct Channel {
    reader: Mutex<Reader>,
    writer: Mutex<Writer>,
    /// Retire was queued; the worker waits for Retired.
    retiring: AtomicBool,
    /// Streams of requests being served whose clients went away (Abort frames read by
    /// [`Channel::read_requests`]).
    gone: Mutex<StreamSet>,
    /// The open WebSockets (an asgi worker's), by stream.
    sockets: Mutex<StreamMap<SharedInbox>>,
    /// WebSockets something arrived for since [`Channel::take_touched`] was last called.
    touched: Mutex<Vec<u32>>,
}

/// How often a blocked read wakes to check whether the worker was told to stop.
const STOP_CHECK: Duration = Duration::from_secs(1);
const STOP_CHECK_MS: u16 = 1000;

/// The most one read of the channel takes.
const READ_SIZE: usize = 64 * 1024;

/// Body chunks from this size on go into the ring from where they are (see
/// `Writer::push_body`); smaller ones are gathered with the frames around them.
const PUSH_BODY: usize = 16 * 1024;

/// Output buffered beyond this is written at once, even mid-response.
const WRITE_HIGH_WATER: usize = 1 << 20;

impl Channel {
    /// Wraps the worker's end of the channel.
    pub fn new(fd: OwnedFd) -> io::Result<Arc<Channel>> {
        let socket = UnixStream::from(fd);
        socket.set_read_timeout(Some(STOP_CHECK))?;
        // A write the front tier holds back returns now and then (see Writer::write_out).
        socket.set_write_timeout(Some(STOP_CHECK))?;
        let writer = socket.try_clone()?;
        Ok(Arc::new(Channel {
            reader: Mutex::new(Reader {
                socket,
                ring: None,
                buf: BytesMut::with_capacity(64 * 1024),
                decoder: Decoder::new(),
                pending: VecDeque::new(),
                scratch: vec![0; READ_SIZE].into_boxed_slice(),
                spin: Spin::new(),
            }),
            writer: Mutex::new(Writer {
                socket: writer,
                ring: None,
                buf: Vec::with_capacity(64 * 1024),
            }),
            retiring: AtomicBool::new(false),
            gone: Mutex::new(StreamSet::default()),
            sockets: Mutex::new(StreamMap::default()),
            touched: Mutex::new(Vec::new()),
        }))
    }

    /// Announces the worker: it is ready for `capacity` requests at once. With `ring`,
    /// it asks for the shared-memory rings and waits for them: the front tier's first
    /// frame then carries their descriptor.
    pub fn hello(&self, capacity: u16, ring: bool) -> io::Result<()> {
        let mut writer = lock(&self.writer);
        Hello {
            pid: std::process::id(),
            capacity,
            ring,
        }
        .encode(&mut writer.buf);
        writer.flush()?;
        drop(writer);
        if !ring {
            return Ok(());
        }
        let map = {
            let mut reader = lock(&self.reader);
            let map = Arc::new(receive_ring(&reader.socket)?);
            reader.ring = Some(map.clone());
            map
        };
        lock(&self.writer).ring = Some(map);
        Ok(())
    }

    /// Waits for the next whole request. `Ok(None)`: the front tier closed the channel,
    /// or answered Retired. Once `stop` is set and no request is under way, the worker
    /// asks to retire, and serves what arrives until the answer (protocol/mod.rs, 5).
    pub fn next_request(&self, stop: &AtomicBool) -> Result<Option<Request>, ChannelError> {
        let mut reader = lock(&self.reader);
        let mut current: Option<Partial> = None;
        // A large Body frame that is not a whole body of the request under way is read
        // as a frame.
        let mut as_frame = false;
        loop {
            let idle = current.is_none() && !self.retiring.load(Ordering::Relaxed);
            let frame = match reader.next_frame(stop, idle, !as_frame)? {
                Wait::Frame(frame) => frame,
                Wait::LargeBody { stream, length } => {
                    as_frame = !reader.read_whole_body(current.as_mut(), stream, length)?;
                    continue;
                }
                Wait::Closed => return Ok(None),
                Wait::Stopping => {
                    self.retire();
                    lock(&self.writer).flush()?;
                    continue;
                }
            };
            as_frame = false;
            let ours = current.as_ref().is_some_and(|p| p.stream == frame.stream);
            match frame.kind {
                Kind::RequestHead if current.is_none() => current = Some(Partial::new(frame)?),
                Kind::Body | Kind::BodyFile if ours => {
                    if let Some(partial) = &mut current {
                        partial.add(frame)?;
                    }
                }
                Kind::End if ours => {
                    if let Some(partial) = current.take() {
                        return Ok(Some(partial.finish()));
                    }
                }
                Kind::Retired if current.is_none() => return Ok(None),
                Kind::Abort if ours => {
                    current = None;
                    self.dropped(frame.stream)?;
                }
                // An abort for a stream already answered: nothing to do.
                Kind::Abort => {}
                _ => {
                    return Err(
                        ProtocolError::Invalid("frame out of order on a sync worker").into(),
                    );
                }
            }
        }
    }

    /// Reads the requests of any number of streams at once (a gthread worker), handing
    /// each whole one to `deliver`, until the front tier closes the channel or answers
    /// Retired. Once `stop` is set the worker asks to retire at once: what is under way,
    /// and what crosses the Retire on the channel, is still served.
    pub fn read_requests(
        &self,
        stop: &AtomicBool,
        mut deliver: impl FnMut(Request),
    ) -> Result<(), ChannelError> {
        let mut reader = lock(&self.reader);
        let mut incoming = Incoming::default();
        // As in next_request.
        let mut as_frame = false;
        loop {
            let idle = !self.retiring.load(Ordering::Relaxed);
            let frame = match reader.next_frame(stop, idle, !as_frame)? {
                Wait::Frame(frame) => frame,
                Wait::LargeBody { stream, length } => {
                    let partial = incoming.partial.get_mut(&stream);
                    as_frame = !reader.read_whole_body(partial, stream, length)?;
                    continue;
                }
                Wait::Closed => return Ok(()),
                Wait::Stopping => {
                    self.retire();
                    lock(&self.writer).flush()?;
                    continue;
                }
            };
            as_frame = false;
            if self.take(&mut incoming, frame, &mut deliver)? {
                return Ok(());
            }
        }
    }

    /// [`Channel::read_requests`] without waiting (a gevent worker, whose hub waits for
    /// the channel to be readable): takes what has arrived. `Ok(false)` once the front
    /// tier has closed the channel or answered Retired (`incoming` says which); called
    /// again after Retired, it takes the frames of the streams still open.
    pub fn poll_requests(
        &self,
        stop: &AtomicBool,
        incoming: &mut Incoming,
        mut deliver: impl FnMut(Request),
    ) -> Result<bool, ChannelError> {
        let mut reader = lock(&self.reader);
        if stop.load(Ordering::Relaxed) && !self.retiring.load(Ordering::Relaxed) {
            self.retire();
            lock(&self.writer).flush_while_reading()?;
        }
        loop {
            let frame = match reader.try_frame()? {
                Some(Wait::Frame(frame)) => frame,
                Some(_) => {
                    incoming.closed = true;
                    return Ok(false);
                }
                None => return Ok(!incoming.retired),
            };
            if self.take(incoming, frame, &mut deliver)? {
                incoming.retired = true;
                return Ok(false);
            }
        }
    }

    /// One frame of a worker serving many streams; true at Retired. An Abort for a
    /// request being served is remembered for [`StreamSink::client_gone`].
    fn take(
        &self,
        incoming: &mut Incoming,
        frame: Frame,
        deliver: &mut impl FnMut(Request),
    ) -> Result<bool, ChannelError> {
        let partial = &mut incoming.partial;
        match frame.kind {
            Kind::RequestHead if !partial.contains_key(&frame.stream) => {
                partial.insert(frame.stream, Partial::new(frame)?);
            }
            Kind::Body | Kind::BodyFile => match partial.get_mut(&frame.stream) {
                Some(request) => request.add(frame)?,
                None => return Err(ProtocolError::Invalid("body of no request").into()),
            },
            Kind::End => match partial.remove(&frame.stream) {
                Some(request) => deliver(request.finish()),
                None => return Err(ProtocolError::Invalid("end of no request").into()),
            },
            Kind::Retired => return Ok(true),
            Kind::Abort => {
                if partial.remove(&frame.stream).is_some() {
                    self.dropped(frame.stream)?;
                } else if let Some(inbox) = self.socket(frame.stream) {
                    // The client left before the WebSocket was answered.
                    lock(&inbox).closed(1006, String::new());
                } else {
                    lock(&self.gone).insert(frame.stream);
                    incoming.aborts += 1;
                }
            }
            Kind::WsConnect if !partial.contains_key(&frame.stream) => {
                let head = RequestHead::decode(frame.payload)?;
                let inbox = SharedInbox::default();
                lock(&self.sockets).insert(frame.stream, inbox.clone());
                deliver(Request {
                    stream: frame.stream,
                    head,
                    body: Body::Memory(Bytes::new()),
                    websocket: Some(inbox),
                });
            }
            Kind::WsMessage | Kind::WsClose | Kind::WsCredit => self.to_socket(frame)?,
            _ => return Err(ProtocolError::Invalid("frame out of order").into()),
        }
        Ok(false)
    }

    /// The inbox of WebSocket `stream`, while it is open.
    fn socket(&self, stream: u32) -> Option<SharedInbox> {
        let inbox = lock(&self.sockets).get(&stream).cloned();
        if inbox.is_some() {
            lock(&self.touched).push(stream);
        }
        inbox
    }

    /// A frame of a WebSocket, into its inbox (one that has ended drops it).
    fn to_socket(&self, frame: Frame) -> Result<(), ChannelError> {
        let Some(inbox) = self.socket(frame.stream) else {
            return Ok(());
        };
        match frame.kind {
            Kind::WsMessage => {
                let message = WsMessage::decode(frame.payload)?;
                let grant = lock(&inbox).piece(message.text, message.last, message.data);
                if grant > 0 {
                    let mut writer = lock(&self.writer);
                    WsCredit::encode(&mut writer.buf, frame.stream, grant);
                    writer.flush_while_reading()?;
                }
            }
            Kind::WsClose => {
                let close = WsClose::decode(frame.payload)?;
                let reason = String::from_utf8_lossy(&close.reason).into_owned();
                lock(&inbox).closed(close.code, reason);
            }
            _ => lock(&inbox).granted(WsCredit::decode(frame.payload)?.bytes),
        }
        Ok(())
    }

    /// The channel has ended (the front tier is gone): every WebSocket still open is
    /// over for its application, 1006 (RFC 6455 §7.1.5: no close frame could cross),
    /// so that its task ends and the worker can exit.
    pub fn end_sockets(&self) {
        let sockets = lock(&self.sockets);
        let mut touched = lock(&self.touched);
        for (&stream, inbox) in sockets.iter() {
            lock(inbox).closed(1006, String::new());
            touched.push(stream);
        }
    }

    /// The WebSockets something arrived for since the last call.
    pub fn take_touched(&self) -> Vec<u32> {
        std::mem::take(&mut *lock(&self.touched))
    }

    /// Tells the front tier that `stream`, aborted before its request was whole, will
    /// not be served: its Abort ends the stream there, which frees the worker's place.
    fn dropped(&self, stream: u32) -> Result<(), ChannelError> {
        let mut writer = lock(&self.writer);
        encode_frame(
            &mut writer.buf,
            Kind::Abort,
            stream,
            b"not served: the client went away",
        );
        writer.flush_while_reading()?;
        Ok(())
    }

    /// The channel's descriptor, for a gevent hub or an event loop to wait on.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        lock(&self.reader).socket.as_raw_fd()
    }

    /// Queues the Retire frame (once); it leaves with the next flush. Sent ahead of the
    /// last response's End, it takes the worker out of the front tier's pool before its
    /// slot frees, so no further request is sent its way.
    pub fn retire(&self) {
        if !self.retiring.swap(true, Ordering::Relaxed) {
            encode_frame(&mut lock(&self.writer).buf, Kind::Retire, 0, b"");
        }
    }

    /// Writes whatever is queued (a Retire queued between requests) at once.
    pub fn flush(&self) -> io::Result<()> {
        lock(&self.writer).flush()
    }

    /// Whether the front tier has aborted `stream` (its client went away). Never blocks.
    pub fn aborted(&self, stream: u32) -> bool {
        if lock(&self.gone).remove(&stream) {
            return true;
        }
        // A gthread or gevent worker's reader holds the reader for good, and notes
        // aborts in `gone` as they come.
        let Ok(mut reader) = self.reader.try_lock() else {
            return false;
        };
        let reader = &mut *reader;
        if reader.ring.is_some() {
            let _ = reader.pull_ring();
        } else {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = recv(
                reader.socket.as_raw_fd(),
                &mut chunk,
                MsgFlags::MSG_DONTWAIT,
            ) {
                reader.buf.extend_from_slice(&chunk[..n]);
            }
        }
        while let Ok(Some(frame)) = reader.decoder.decode(&mut reader.buf) {
            reader.pending.push_back(frame);
        }
        let before = reader.pending.len();
        reader
            .pending
            .retain(|f| !(f.kind == Kind::Abort && f.stream == stream));
        reader.pending.len() != before
    }
}

/// What a pull from the ring gave.
enum Pulled {
    /// Whether it moved any bytes onto the read buffer.
    Bytes(bool),
    /// A large Body frame is next, left in the ring.
    LargeBody { stream: u32, length: usize },
}

/// Request bodies from this size on, sent in one Body frame, are read by a sync or
/// gthread worker from the ring straight into the `bytes` object the application gets (see
/// [`BodyBytes`]); smaller ones are not worth a second path.
const DIRECT_BODY: usize = 64 * 1024;

/// What one wait on the channel gave.
enum Wait {
    Frame(Frame),
    /// The next frame is a Body frame of at least [`DIRECT_BODY`] bytes, all of it still
    /// in the ring (asked for with `direct`): [`Reader::read_body_into`] reads it, or
    /// asking again without `direct` reads it as a frame.
    LargeBody {
        stream: u32,
        length: usize,
    },
    /// The front tier closed the channel.
    Closed,
    /// Told to stop while idle (and Retire not sent yet).
    Stopping,
}

impl Reader {
    /// The next frame, the end of the channel, or word that it is time to retire.
    fn next_frame(
        &mut self,
        stop: &AtomicBool,
        idle: bool,
        direct: bool,
    ) -> Result<Wait, ChannelError> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Wait::Frame(frame));
        }
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Wait::Frame(frame));
            }
            if self.ring.is_some() {
                let pulled = match direct {
                    true => match self.pull_ring_to_large_body()? {
                        Pulled::LargeBody { stream, length } => {
                            return Ok(Wait::LargeBody { stream, length });
                        }
                        Pulled::Bytes(pulled) => pulled,
                    },
                    false => self.pull_ring()?,
                };
                if pulled {
                    self.spin.done();
                    self.room_made()?;
                    continue;
                }
                if idle && stop.load(Ordering::Relaxed) {
                    return Ok(Wait::Stopping);
                }
                if self.sleep_on_ring()? {
                    return Ok(Wait::Closed);
                }
                continue;
            }
            if idle && stop.load(Ordering::Relaxed) {
                return Ok(Wait::Stopping);
            }
            // Wait in poll(2), not in read(2): a reader asleep in read is woken each
            // time the front tier drains what this worker wrote (write space and input
            // share the socket's wait queue), a needless context switch per request.
            // poll wakes for input only.
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, STOP_CHECK_MS) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(err) => return Err(io::Error::from(err).into()),
            }
            match self.socket.read(&mut self.scratch) {
                Ok(0) => return Ok(Wait::Closed),
                Ok(n) => self.buf.extend_from_slice(&self.scratch[..n]),
                Err(err) => match err.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => {}
                    _ => return Err(err.into()),
                },
            }
        }
    }
}

impl Reader {
    /// Moves all the requests' ring holds onto `buf`; whether anything came. All, not a
    /// read's worth: a front tier pushing a body larger than the ring waits for room,
    /// and each pop that makes some wakes it (a megabyte body in 64 KiB pops woke it
    /// sixteen times). `buf` grows by at most the ring's capacity.
    fn pull_ring(&mut self) -> Result<bool, ChannelError> {
        let Some(ring) = &self.ring else {
            return Ok(false);
        };
        let ring = ring.to_worker();
        Ok(ring.pop_into(&mut self.buf, ring.capacity())? > 0)
    }

    /// [`Reader::pull_ring`] up to a large Body frame: the frames before it are moved
    /// onto `buf`, and once `buf` holds nothing more, that frame is announced, left in
    /// the ring for [`Reader::read_body_into`].
    fn pull_ring_to_large_body(&mut self) -> Result<Pulled, ChannelError> {
        let Some(map) = &self.ring else {
            return Ok(Pulled::Bytes(false));
        };
        let ring = map.to_worker();
        let pending = ring.pending()?;
        // Where the next frame begins in the ring: after the rest of one begun in `buf`
        // (a header cut short there: wherever, all is moved as usual).
        let mut next = match self.buf.len() {
            0 => 0,
            held if held >= HEADER_LEN => {
                let begun = Header::read(&self.buf).length as usize;
                (HEADER_LEN + begun).saturating_sub(held)
            }
            _ => pending,
        };
        let mut header = [0u8; HEADER_LEN];
        while next < pending && ring.peek(next, &mut header)? {
            let Header {
                length,
                kind,
                stream,
            } = Header::read(&header);
            let length = length as usize;
            if kind == Kind::Body as u8 && (DIRECT_BODY..=MAX_PAYLOAD).contains(&length) {
                if next == 0 && self.buf.is_empty() {
                    return Ok(Pulled::LargeBody { stream, length });
                }
                break;
            }
            next = next.saturating_add(HEADER_LEN + length);
        }
        // A frame cut short at the end: it is moved whole as it comes.
        let take = if next >= pending || !ring.peek(next, &mut header)? {
            pending
        } else {
            next
        };
        Ok(Pulled::Bytes(ring.pop_into(&mut self.buf, take)? > 0))
    }

    /// The large Body frame announced by [`Wait::LargeBody`], when it is the whole body
    /// of `partial`, read straight into a new `bytes` object; false (nothing read) when
    /// it is not, or Python could not make the object: then it is read as a frame.
    fn read_whole_body(
        &mut self,
        partial: Option<&mut Partial>,
        stream: u32,
        length: usize,
    ) -> Result<bool, ChannelError> {
        let whole = partial
            .filter(|partial| partial.whole_body_in(stream, length))
            .and_then(|partial| Some((partial, BodyBytes::new(length)?)));
        let Some((partial, mut body)) = whole else {
            return Ok(false);
        };
        self.read_body_into(body.to_fill())?;
        partial.direct = Some(body);
        Ok(true)
    }

    /// Reads the large Body frame announced by [`Wait::LargeBody`] straight from the
    /// ring into `into` (its payload's length), waiting for the rest as the front tier
    /// pushes it.
    fn read_body_into(&mut self, into: &mut [MaybeUninit<u8>]) -> Result<(), ChannelError> {
        let Some(map) = self.ring.clone() else {
            return Err(ProtocolError::Invalid("a body read from a ring, with none").into());
        };
        let ring = map.to_worker();
        if !ring.skip(HEADER_LEN)? {
            return Err(ProtocolError::Invalid("a large body's header gone").into());
        }
        let mut filled = 0;
        while filled < into.len() {
            let got = ring.pop_to(&mut into[filled..])?;
            if got > 0 {
                filled += got;
                self.spin.done();
                self.room_made()?;
                continue;
            }
            if self.wait_for_doorbell()? && ring.pending()? == 0 {
                // The front tier went away mid-body.
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
        Ok(())
    }

    /// Sleeps on the socket until the front tier rings (or [`STOP_CHECK`] passes),
    /// having said so in the ring first. True once the front tier has closed the channel
    /// and left nothing more in the ring.
    fn sleep_on_ring(&mut self) -> Result<bool, ChannelError> {
        Ok(self.wait_for_doorbell()? && !self.pull_ring()?)
    }

    /// Says in the requests' ring that the worker sleeps, then sleeps on the socket
    /// until the front tier rings (or [`STOP_CHECK`] passes) and reads the doorbells;
    /// true if the front tier has closed its end (what its ring holds is still there).
    fn wait_for_doorbell(&mut self) -> Result<bool, ChannelError> {
        let Some(ring) = &self.ring else {
            return Ok(false);
        };
        if self
            .spin
            .look(|| Ok::<_, RingError>(ring.to_worker().pending()? > 0))?
        {
            return Ok(false);
        }
        if !ring.to_worker().park()? {
            return Ok(false);
        }
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        let woken = poll(&mut fds, STOP_CHECK_MS);
        ring.to_worker().unpark();
        match woken {
            Ok(0) | Err(Errno::EINTR) => Ok(false),
            Ok(_) => Ok(drain_doorbells(&self.socket, &mut self.scratch)?),
            Err(err) => Err(io::Error::from(err).into()),
        }
    }

    /// Reads the doorbells; true if the front tier closed the channel and its ring holds
    /// nothing more (what it pushed before it closed is still served).
    fn closed_and_empty(&mut self) -> Result<bool, ChannelError> {
        Ok(drain_doorbells(&self.socket, &mut self.scratch)? && !self.pull_ring()?)
    }

    /// After reading from the requests' ring: a front tier waiting for room is told.
    fn room_made(&self) -> io::Result<()> {
        match &self.ring {
            Some(ring) if ring.to_worker().take_waiting() => ring_doorbell(&self.socket),
            _ => Ok(()),
        }
    }

    /// The next frame if one has arrived, without waiting; `Some(Wait::Closed)` at the
    /// end of the channel.
    fn try_frame(&mut self) -> Result<Option<Wait>, ChannelError> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Some(Wait::Frame(frame)));
        }
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(Wait::Frame(frame)));
            }
            if self.ring.is_some() {
                if self.pull_ring()? {
                    self.room_made()?;
                    continue;
                }
                let held = self.buf.len();
                if self.closed_and_empty()? {
                    return Ok(Some(Wait::Closed));
                }
                if self.buf.len() > held {
                    continue; // pushed before the front tier closed
                }
                return Ok(None);
            }
            match recv(
                self.socket.as_raw_fd(),
                &mut self.scratch,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => return Ok(Some(Wait::Closed)),
                Ok(n) => self.buf.extend_from_slice(&self.scratch[..n]),
                Err(Errno::EAGAIN) => return Ok(None),
                Err(Errno::EINTR) => {}
                Err(err) => return Err(io::Error::from(err).into()),
            }
        }
    }
}

impl Writer {
    fn flush(&mut self) -> io::Result<()> {
        self.write_out(None)
    }

    /// A flush made while reading: a front tier that has gone (it may stop first, as
    /// after USR2 and WINCH) is not an error here, so that what it sent before going is
    /// still read, and its end is seen where the reading meets it.
    fn flush_while_reading(&mut self) -> io::Result<()> {
        match self.flush() {
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            done => done,
        }
    }

    /// Sends a large body chunk of `stream` into the ring from where it is, after what
    /// is queued, rather than copying it into the queue first (a 64 KiB body was copied
    /// twice on the way out); false over a socket, where it must be queued. The doorbell
    /// waits for the flush that follows every chunk.
    fn push_body(
        &mut self,
        stream: u32,
        chunk: &[u8],
        slot: Option<&WorkerSlot>,
    ) -> io::Result<bool> {
        let Some(ring) = &self.ring else {
            return Ok(false);
        };
        for piece in chunk.chunks(MAX_PAYLOAD) {
            encode_frame_header(&mut self.buf, Kind::Body, stream, piece.len());
            let result = push_all(ring, &self.socket, &[&self.buf, piece], slot, false);
            self.buf.clear();
            result?;
        }
        Ok(true)
    }

    /// Writes what is queued. The front tier stops reading the channel while a slow
    /// client holds more than its budgets allow (backpressure, see front::dispatch::channel), so
    /// a write may wait as long as the client takes: every [`STOP_CHECK`] of that wait
    /// shows life in `slot`, since a worker waiting to send is not silent (`--timeout`
    /// measures silence). Only the waiting request's own stamp is refreshed: in a
    /// gthread worker, threads queued behind this one on the writer's lock are not.
    fn write_out(&mut self, slot: Option<&WorkerSlot>) -> io::Result<()> {
        if let Some(ring) = &self.ring {
            let result = push_all(ring, &self.socket, &[&self.buf], slot, true);
            self.buf.clear();
            return result;
        }
        let mut rest = &self.buf[..];
        let result = loop {
            if rest.is_empty() {
                break Ok(());
            }
            match self.socket.write(rest) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Some(Err(timed_out)) = slot.map(WorkerSlot::alive) {
                        break Err(io::Error::other(timed_out));
                    }
                }
                Err(err) => break Err(err),
            }
        };
        self.buf.clear();
        result
    }
}

/// Waits for the front tier's [`Kind::Ring`] frame, the first it sends after a Hello
/// that asked for rings, and maps the rings its descriptor names.
fn receive_ring(socket: &UnixStream) -> io::Result<RingMap> {
    use nix::sys::socket::{ControlMessageOwned, recvmsg};
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut header = [0u8; HEADER_LEN];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    loop {
        let mut iov = [io::IoSliceMut::new(&mut header)];
        let received = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let message = match received {
            Ok(message) => message,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        };
        if message.bytes == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut fd = None;
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: the kernel installed this descriptor in our table for this
                    // message; nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    fd.get_or_insert(owned);
                }
            }
        }
        if message.bytes != HEADER_LEN || header[4] != Kind::Ring as u8 {
            return Err(io::Error::other(
                "the front tier did not answer with the rings",
            ));
        }
        let fd = fd.ok_or_else(|| io::Error::other("the rings came without a descriptor"))?;
        return RingMap::open(fd).map_err(io::Error::other);
    }
}

/// Reads the doorbell bytes the front tier wrote (their value means nothing) without
/// waiting; true if the front tier closed the channel. A read that leaves room in
/// `scratch` has drained the socket: no second read only to be told EAGAIN (a doorbell
/// rung since then wakes the next poll at once, which is harmless).
fn drain_doorbells(socket: &UnixStream, scratch: &mut [u8]) -> io::Result<bool> {
    loop {
        match recv(socket.as_raw_fd(), scratch, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Ok(true),
            Ok(n) if n < scratch.len() => return Ok(false),
            Ok(_) => {}
            Err(Errno::EAGAIN) => return Ok(false),
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
}

/// Rings the front tier's doorbell: one byte on the socket. A full socket buffer
/// already holds doorbells the front tier has yet to read, so that is no error.
fn ring_doorbell(socket: &UnixStream) -> io::Result<()> {
    match nix::sys::socket::send(socket.as_raw_fd(), b"!", MsgFlags::MSG_DONTWAIT) {
        Ok(_) | Err(Errno::EAGAIN) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// How long a worker whose ring is full waits before it looks again, at most: the
/// front tier is slow to read only while it holds a slow client's response back.
const ROOM_WAIT_MS: u16 = 10;

/// Pushes `segments` into `to_front` in order, as much at a time as there is room.
/// With no room it rings the doorbell if the front tier sleeps, then waits (showing life
/// in `slot`, as `write_out` does) and watches the socket for the front tier's end. With
/// `doorbell`, it rings once all is in if the front tier sleeps; without, the caller
/// flushes soon, and that rings.
fn push_all(
    ring: &RingMap,
    socket: &UnixStream,
    segments: &[&[u8]],
    slot: Option<&WorkerSlot>,
    doorbell: bool,
) -> io::Result<()> {
    let ring = ring.to_front();
    let mut waited_ms: u16 = 1;
    for mut bytes in segments.iter().copied() {
        while !bytes.is_empty() {
            let pushed = ring.push_partial(bytes).map_err(io::Error::other)?;
            if pushed > 0 {
                bytes = &bytes[pushed..];
                waited_ms = 1;
                continue;
            }
            if ring.take_parked() {
                ring_doorbell(socket)?;
            }
            if let Some(Err(timed_out)) = slot.map(WorkerSlot::alive) {
                return Err(io::Error::other(timed_out));
            }
            // No events asked: poll reports only the front tier's end (HUP, ERR).
            let mut fds = [PollFd::new(socket.as_fd(), PollFlags::empty())];
            match poll(&mut fds, waited_ms) {
                Ok(0) | Err(Errno::EINTR) => {}
                Ok(_) => return Err(io::ErrorKind::BrokenPipe.into()),
                Err(err) => return Err(err.into()),
            }
            waited_ms = (waited_ms * 2).min(ROOM_WAIT_MS);
        }
    }
    if doorbell && ring.take_parked() {
        ring_doorbell(socket)?;
    }
    Ok(())
}

/// A response's way back to the front tier: one stream of the channel.
pub struct StreamSink {
    channel: Arc<Channel>,
    stream: u32,
    /// Where the request shows signs of life: the worker's slot, or its thread's stamp.
    slot: WorkerSlot,
    /// Aborts are only those the worker's reading loop noted: the socket is not read
    /// here (an event loop watches it, and would not be woken for frames read aside).
    noted_aborts_only: bool,
}

impl StreamSink {
    /// The sink for `stream`, whose signs of life go to `slot`.
    pub fn new(channel: Arc<Channel>, stream: u32, slot: WorkerSlot) -> StreamSink {
        StreamSink {
            channel,
            stream,
            slot,
            noted_aborts_only: false,
        }
    }

    /// The sink for `stream` of a worker whose event loop reads the channel (-k asgi).
    pub fn for_event_loop(channel: Arc<Channel>, stream: u32, slot: WorkerSlot) -> StreamSink {
        let mut sink = StreamSink::new(channel, stream, slot);
        sink.noted_aborts_only = true;
        sink
    }

    fn queue(&self, fill: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        let mut writer = lock(&self.channel.writer);
        fill(&mut writer.buf)?;
        if writer.buf.len() >= WRITE_HIGH_WATER {
            writer.write_out(Some(&self.slot))?;
        }
        Ok(())
    }
}

impl ResponseSink for StreamSink {
    fn head(
        &self,
        status: u16,
        reason: &[u8],
        close: bool,
        headers: &[(Vec<u8>, Vec<u8>)],
    ) -> io::Result<()> {
        let headers = headers.iter().map(|(n, v)| (&n[..], &v[..]));
        self.queue(|buf| {
            ResponseHead::encode_parts(buf, self.stream, status, reason, close, headers)
                .map_err(io::Error::other)
        })
    }

    fn body(&self, chunk: &[u8]) -> io::Result<()> {
        if chunk.len() >= PUSH_BODY
            && lock(&self.channel.writer).push_body(self.stream, chunk, Some(&self.slot))?
        {
            return Ok(());
        }
        self.queue(|buf| {
            for piece in chunk.chunks(MAX_PAYLOAD) {
                encode_frame(buf, Kind::Body, self.stream, piece);
            }
            Ok(())
        })
    }

    fn trailers(&self, fields: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        let fields = fields.iter().map(|(n, v)| (&n[..], &v[..]));
        self.queue(|buf| Trailers::encode_parts(buf, self.stream, fields).map_err(io::Error::other))
    }

    fn end(&self) -> io::Result<()> {
        self.queue(|buf| {
            encode_frame(buf, Kind::End, self.stream, b"");
            Ok(())
        })
    }

    fn abort(&self, why: &str) -> io::Result<()> {
        self.queue(|buf| {
            encode_frame(buf, Kind::Abort, self.stream, why.as_bytes());
            Ok(())
        })
    }

    fn flush(&self) -> io::Result<()> {
        // Sending a piece of the response keeps the request alive (`--timeout` measures
        // silence). Once the master has timed the worker out, nothing more is sent: the
        // client has its 504, and the worker goes.
        self.slot.alive().map_err(io::Error::other)?;
        lock(&self.channel.writer).write_out(Some(&self.slot))
    }

    fn client_gone(&self) -> bool {
        if self.noted_aborts_only {
            let mut gone = lock(&self.channel.gone);
            return !gone.is_empty() && gone.remove(&self.stream);
        }
        self.channel.aborted(self.stream)
    }
}

impl SocketSink for StreamSink {
    fn accept(&self, subprotocol: Option<&[u8]>, headers: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        let accept = WsAccept {
            subprotocol: subprotocol.map(Bytes::copy_from_slice),
            headers: headers
                .iter()
                .map(|(n, v)| (Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)))
                .collect(),
        };
        self.queue(|buf| accept.encode(buf, self.stream).map_err(io::Error::other))
    }

    fn message(&self, text: bool, last: bool, data: &[u8]) -> io::Result<()> {
        self.queue(|buf| {
            WsMessage::encode(buf, self.stream, text, last, data).map_err(io::Error::other)
        })
    }

    fn close(&self, code: u16, reason: &str) -> io::Result<()> {
        self.queue(|buf| {
            WsClose::encode(buf, self.stream, code, reason);
            Ok(())
        })
    }

    fn credit(&self, bytes: u32) -> io::Result<()> {
        self.queue(|buf| {
            WsCredit::encode(buf, self.stream, bytes);
            Ok(())
        })
    }
}

impl Drop for StreamSink {
    fn drop(&mut self) {
        // An abort that came after the response was done is forgotten with it, and a
        // WebSocket's inbox with its stream.
        lock(&self.channel.gone).remove(&self.stream);
        lock(&self.channel.sockets).remove(&self.stream);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::AtomicBool;

    use bytes::BytesMut;

    use super::*;
    use crate::protocol::{RequestHeadRef, Scheme};

    /// A channel over one end of a socket pair; the other end plays the front tier.
    fn channel() -> (Arc<Channel>, UnixStream) {
        let (worker, front) = UnixStream::pair().unwrap();
        (Channel::new(worker.into()).unwrap(), front)
    }

    fn head(out: &mut Vec<u8>, stream: u32) {
        RequestHeadRef {
            method: b"POST",
            scheme: Scheme::Http,
            version: 11,
            raw_uri: b"/",
            path: b"/",
            query: b"",
            remote_addr: b"127.0.0.1",
            remote_port: Some(1),
            server_name: b"127.0.0.1",
            server_port: b"80",
            request_id: b"id",
        }
        .encode(out, stream, std::iter::empty())
        .unwrap();
    }

    /// Checks that the worker wrote back one frame: an Abort of `stream`.
    fn assert_only_abort_back(front: &mut UnixStream, stream: u32) {
        let back = written(front);
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].kind, back[0].stream), (Kind::Abort, stream));
    }

    /// The frames the worker wrote back.
    fn written(front: &mut UnixStream) -> Vec<Frame> {
        front.set_nonblocking(true).unwrap();
        let mut bytes = BytesMut::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = front.read(&mut chunk) {
            bytes.extend_from_slice(&chunk[..n]);
        }
        let mut decoder = Decoder::new();
        std::iter::from_fn(|| decoder.decode(&mut bytes).unwrap()).collect()
    }

    #[test]
    fn a_request_aborted_before_it_is_whole_is_answered_with_an_abort() {
        // A worker of several streams: the head and part of the body, then the Abort.
        let (channel, mut front) = channel();
        let mut frames = Vec::new();
        head(&mut frames, 3);
        encode_frame(&mut frames, Kind::Body, 3, b"part");
        encode_frame(&mut frames, Kind::Abort, 3, b"client went away");
        front.write_all(&frames).unwrap();
        let mut incoming = Incoming::default();
        let mut delivered = 0;
        let open = channel
            .poll_requests(&AtomicBool::new(false), &mut incoming, |_| delivered += 1)
            .unwrap();
        assert!(open);
        assert_eq!(delivered, 0);
        assert_only_abort_back(&mut front, 3);
    }

    #[test]
    fn a_sync_worker_drops_a_request_aborted_before_it_is_whole_and_says_so() {
        // A sync worker: the aborted request is skipped, the next one served.
        let (channel, mut front) = channel();
        let mut frames = Vec::new();
        head(&mut frames, 1);
        encode_frame(&mut frames, Kind::Abort, 1, b"client went away");
        head(&mut frames, 2);
        encode_frame(&mut frames, Kind::End, 2, b"");
        front.write_all(&frames).unwrap();
        let request = channel
            .next_request(&AtomicBool::new(false))
            .unwrap()
            .unwrap();
        assert_eq!(request.stream, 2);
        assert_only_abort_back(&mut front, 1);
    }
}
