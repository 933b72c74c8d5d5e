//! The front tier's end of one worker's channel.
//!
//! A reader task decodes the worker's frames and routes them to the stream they belong
//! to, reading eagerly so that a slow client never holds a worker (DESIGN.md §5). When
//! the channel closes, every open stream learns at once that its worker died; no other
//! worker's streams are touched. A worker the master timed out (`--timeout`) is cut off
//! the same way when the master says so, before its channel closes. That task, with the
//! worker's joining and leaving the pool around it, is `control::start`.
//!
//! What a slow client has not taken yet is held in memory within its connection's
//! budget, then spilled to a temporary file within the spill budgets (see `budget`).
//! Beyond both, or when spilling fails, the reader stops reading the channel until that
//! client has taken what its stream holds (or gone away): the worker's writes block, and
//! memory and disk stay bounded. The channel is multiplexed, so a gthread worker's other
//! streams wait too; a credit per stream belongs to the shared-memory transport
//! (DESIGN.md, "Where the design goes next"), where the worker can be told which stream
//! to hold back.
//!
//! How the bytes cross (the socket, or the shared-memory rings with the socket for
//! doorbells) is `transport`'s business; this module sees whole frames.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use tokio::net::UnixStream;
use tokio::sync::Notify;
use tracing::{info, warn};

mod events;
pub(super) mod transport;

pub use events::EventReceiver;
use events::EventSender;
use transport::{push_all, write_all};

use super::budget::{Backlog, Held};
use crate::lock::lock;
use crate::protocol::ring::RingMap;
use crate::protocol::{
    Frame, Kind, MAX_PAYLOAD, ProtocolError, ResponseHead, Trailers, WS_WINDOW, WsAccept, WsClose,
    WsCredit, WsMessage, encode_frame, encode_frame_header,
};
use crate::scoreboard;

/// What happens on a stream, as the request's task sees it.
#[derive(Debug)]
pub enum Event {
    /// The response status and headers.
    Head(ResponseHead),
    /// A chunk of the response body, held against the stream's memory budget until it
    /// is dropped.
    Data(Bytes, Held),
    /// A chunk of the response body, written to the stream's spill file because the
    /// client is slower than the worker.
    Spilled(Spilled),
    /// The response's trailer fields (an ASGI application's), sent once End comes.
    Trailers(Vec<(Bytes, Bytes)>),
    /// The response is complete.
    End,
    /// The response cannot be completed.
    Failed(Failure),
    /// The worker died before it began this request (it was queued behind another, see
    /// `pool`): it may go to another worker.
    Returned(Returned),
    /// The application accepted the WebSocket.
    WsAccept(WsAccept),
    /// A piece of a message for the WebSocket's client.
    WsMessage(WsMessage),
    /// The application closed the WebSocket.
    WsClose(WsClose),
    /// The worker may be sent this many more bytes of the client's messages.
    WsCredit(u32),
}

/// A request given back unstarted, with what it held.
pub struct Returned(pub StreamHold);

impl std::fmt::Debug for Returned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Returned")
    }
}

/// Response bytes kept in the stream's temporary file: `len` bytes from `offset`.
#[derive(Debug)]
pub struct Spilled {
    /// The spill file (unlinked; it goes when the last handle does).
    pub file: Arc<File>,
    /// Where the bytes start.
    pub offset: u64,
    /// How many.
    pub len: u64,
    /// Held against the stream's spill budget until the bytes are read back; nothing
    /// reads it, dropping it is its job.
    #[allow(dead_code)]
    pub held: Held,
}

/// A stream's events, and what its response holds for its client.
pub struct Events {
    /// The events, in order.
    pub receiver: EventReceiver,
    /// The response's bytes held in memory and in its spill file.
    pub backlog: Arc<Backlog>,
}

/// Why a stream failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The worker's channel closed (the worker died or broke the protocol).
    WorkerDied,
    /// The worker abandoned the response (the app failed after sending headers).
    Aborted(String),
    /// The master timed the worker out (`--timeout`): 504.
    TimedOut,
}

/// Why a stream was not opened.
pub enum Refused {
    /// The worker is retiring (or was timed out); the request never reached it and may
    /// go elsewhere.
    Retired(StreamHold),
    /// The stream failed.
    Failed(Failure),
}

/// Things held for as long as a stream is open: the worker slot and any spooled body.
/// Nothing reads them; dropping them when the stream ends is their whole job.
#[allow(dead_code)]
pub struct StreamHold {
    /// The worker slot (`pool::Lease`); dropping it frees the slot. Opaque here, so
    /// that the channel, which the pool's leases name, does not name the pool.
    pub lease: Box<dyn Send>,
    /// The request body's temporary file, which the worker may still be reading.
    pub spool: Option<tempfile::NamedTempFile>,
}

struct Stream {
    events: EventSender,
    backlog: Arc<Backlog>,
    /// The spill file once one was needed, and its length.
    spill: Option<(Arc<File>, u64)>,
    /// Whether spilling failed (the rest of the response goes through memory).
    spill_failed: bool,
    /// A WebSocket's: the bytes of messages the worker may still send (protocol/mod.rs,
    /// 7), granted back as they are written to the client.
    ws_credit: u32,
    hold: StreamHold,
}

/// The reader must wait before it reads the channel again: a stream holds more than
/// its budgets allow, until its client takes it all or goes away.
pub(super) struct Pause {
    backlog: Arc<Backlog>,
    events: EventSender,
}

impl Pause {
    pub(super) async fn wait(self) {
        tokio::select! {
            () = self.backlog.memory.drained() => {}
            () = self.events.closed() => {}
        }
    }
}

impl Stream {
    /// The event for a chunk of the response body: in memory while the budgets allow,
    /// otherwise in the stream's spill file while the spill budgets allow. Beyond both
    /// (or when spilling fails) in memory all the same, since it has been read, with
    /// the word to pause the channel.
    fn data(&mut self, data: Bytes) -> (Event, Option<Pause>) {
        let n = data.len() as u64;
        let backlog = self.backlog.clone();
        if !backlog.waiting() {
            // Bytes begin to wait for the client now (the HTTP/2 send timeout).
            backlog.moved();
        }
        if let Some(held) = backlog.memory.try_hold(n) {
            return (Event::Data(data, held), None);
        }
        if !self.spill_failed {
            match self.spill_out(&data) {
                Ok(Some(spilled)) => return (Event::Spilled(spilled), None),
                Ok(None) => {}
                Err(err) => {
                    // Said once per response; the worker now waits for the client.
                    warn!(
                        "cannot spill a response to a temporary file, the worker waits for the client: {err}"
                    );
                    self.spill_failed = true;
                }
            }
        }
        let held = backlog.memory.hold(n);
        let pause = Pause {
            backlog,
            events: self.events.clone(),
        };
        (Event::Data(data, held), Some(pause))
    }

    /// Writes `data` to the spill file if the spill budgets have room for it.
    fn spill_out(&mut self, data: &[u8]) -> std::io::Result<Option<Spilled>> {
        if self.backlog.spill.used() == 0 {
            // The client has read back all that was spilled: a new file, so that disk
            // use follows what waits, not what passed.
            self.spill = None;
        }
        let Some(held) = self.backlog.spill.try_hold(data.len() as u64) else {
            return Ok(None);
        };
        let (file, end) = match &mut self.spill {
            Some(spill) => spill,
            None => self.spill.insert((Arc::new(tempfile::tempfile()?), 0)),
        };
        // A write to the page cache: brief, so done here rather than on a blocking
        // thread.
        file.write_all_at(data, *end)?;
        let spilled = Spilled {
            file: file.clone(),
            offset: *end,
            len: data.len() as u64,
            held,
        };
        *end += data.len() as u64;
        Ok(Some(spilled))
    }
}

/// Open streams by id.
type OpenStreams = crate::protocol::StreamMap<Stream>;

struct Streams {
    open: OpenStreams,
    /// False once the channel closed or the worker was timed out; no stream may be
    /// opened after that.
    alive: bool,
    /// The master timed the worker out.
    timed_out: bool,
}

/// One worker, as the front tier knows it.
pub struct WorkerConn {
    /// The master's id for the worker.
    pub id: u32,
    /// The worker's pid, from its Hello.
    pub pid: u32,
    /// The front tier's shard (thread) that reads its channel.
    pub shard: usize,
    /// It serves one request at a time, in the order they were written (a sync worker):
    /// when it dies, the requests after the first it has not finished never began.
    sequential: bool,
    socket: Arc<UnixStream>,
    /// The shared-memory rings, when the worker asked for them: every frame then
    /// travels in them, and the socket carries only doorbells (see `protocol::ring`).
    pub(super) ring: Option<Arc<RingMap>>,
    /// Frames for the worker, written by the channel's writer task (see [`writer`]).
    outbox: Mutex<Outbox>,
    /// Wakes the writer task when the outbox has something, or when the worker made
    /// room in a full ring while [`WorkerConn::room_wanted`] says the writer waits for it.
    pub(super) outbox_ready: Notify,
    /// The writer task waits for room in the worker's full ring: only then does a
    /// doorbell from the worker wake it (most doorbells say a response is there).
    pub(super) room_wanted: AtomicBool,
    streams: Mutex<Streams>,
    next_stream: AtomicU32,
    /// Set once the worker retires: its WebSockets close (1012).
    retiring: tokio::sync::watch::Sender<bool>,
}

/// What a stream's opening queues for the worker: frames, whose body payloads may stay
/// where they are (the buffers hyper read them into) until the writer task copies them
/// into the ring, rather than being copied into the outbox first.
pub struct Queued<'a> {
    /// The frames (bodies excepted).
    pub bytes: &'a mut Vec<u8>,
    /// Payloads to insert, each at its offset in `bytes`.
    pieces: &'a mut Vec<(usize, Bytes)>,
}

impl Queued<'_> {
    /// Appends Body frames carrying `body` (its pieces in order), referring to the
    /// pieces rather than copying them.
    pub fn body(&mut self, stream: u32, body: &[Bytes]) {
        let total: usize = body.iter().map(Bytes::len).sum();
        let mut pieces = body.iter().filter(|piece| !piece.is_empty()).cloned();
        let mut left = total;
        let mut carried: Option<Bytes> = None;
        while left > 0 {
            let frame = left.min(MAX_PAYLOAD);
            encode_frame_header(self.bytes, Kind::Body, stream, frame);
            let mut room = frame;
            while room > 0 {
                let Some(mut piece) = carried.take().or_else(|| pieces.next()) else {
                    break;
                };
                if piece.len() > room {
                    carried = Some(piece.split_off(room));
                }
                room -= piece.len();
                self.pieces.push((self.bytes.len(), piece));
            }
            left -= frame;
        }
    }
}

/// Frames waiting for the writer task.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    /// Body payloads to insert into `bytes` (see [`Queued`]).
    pieces: Vec<(usize, Bytes)>,
    /// Retired was queued: nothing may follow it but aborts.
    retired: bool,
    /// The channel is done with: the writer task has stopped or is to stop.
    closed: bool,
    /// The writer task is writing what it took from the outbox: nothing else may push
    /// into the ring meanwhile.
    writing: bool,
}

impl Outbox {
    /// Pushes all the outbox holds straight into the worker's ring, when the writer task
    /// is not writing and the ring has room for all of it: the common case then wakes no
    /// writer (for a request from another shard, a wake-up through that shard's
    /// reactor). Called under the outbox lock, which keeps the ring to one producer at a
    /// time. False when the writer task must do it.
    fn push_now(&mut self, conn: &WorkerConn) -> bool {
        let Some(ring) = &conn.ring else {
            return false;
        };
        if self.writing || self.closed {
            return false;
        }
        let ring = ring.to_worker();
        let total: usize = segments(&self.bytes, &self.pieces).map(<[u8]>::len).sum();
        if !ring.free().is_ok_and(|free| free >= total) {
            return false;
        }
        let mut pushed = true;
        for segment in segments(&self.bytes, &self.pieces) {
            pushed &= ring.push(segment).unwrap_or(false);
        }
        self.bytes.clear();
        self.pieces.clear();
        if !pushed {
            // Room measured a moment ago was gone: only a worker writing the ring's
            // header can do that. Frames may be cut: the channel is done with.
            warn!(
                "worker {}'s ring is corrupt; no more requests go to it",
                conn.pid
            );
            self.closed = true;
        } else if ring.take_parked() {
            // A broken socket is the reader's to find.
            let _ = transport::ring_doorbell(&conn.socket);
        }
        true
    }
}

impl WorkerConn {
    fn streams(&self) -> MutexGuard<'_, Streams> {
        lock(&self.streams)
    }

    /// The front tier's end of worker `id`'s channel, once it has said Hello; spawns
    /// the channel's writer task on the current runtime.
    pub(super) fn new(
        id: u32,
        pid: u32,
        shard: usize,
        sequential: bool,
        socket: Arc<UnixStream>,
        ring: Option<Arc<RingMap>>,
    ) -> Arc<WorkerConn> {
        let conn = Arc::new(WorkerConn {
            id,
            pid,
            shard,
            sequential,
            socket,
            ring,
            outbox: Mutex::new(Outbox::default()),
            outbox_ready: Notify::new(),
            room_wanted: AtomicBool::new(false),
            streams: Mutex::new(Streams {
                open: OpenStreams::default(),
                alive: true,
                timed_out: false,
            }),
            next_stream: AtomicU32::new(1),
            retiring: tokio::sync::watch::Sender::new(false),
        });
        tokio::spawn(writer(conn.clone()));
        conn
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        lock(&self.outbox)
    }

    /// Opens a stream: registers it and queues its frames (built by `encode` for the
    /// new stream id) for the worker. Events for the stream arrive on the returned
    /// receiver. A worker that has been told [`Kind::Retired`] gets nothing: the hold
    /// comes back in [`Refused::Retired`] so that the request can go to another worker.
    ///
    /// The request's task does no I/O here: the channel's writer task writes what is
    /// queued, so that a request given up half-way (its client went away) can never
    /// leave half a frame on the channel, and requests queued together go in one write.
    pub fn open_stream(
        self: &Arc<Self>,
        hold: StreamHold,
        backlog: &Arc<Backlog>,
        encode: impl FnOnce(u32, &mut Queued<'_>) -> Result<(), ProtocolError>,
    ) -> Result<(u32, Events), Refused> {
        // Checked and queued under the outbox lock, the one `retire` holds while it
        // queues Retired: no request can follow that frame. Stream ids are taken under
        // it too, so that they follow the order of the requests on the channel.
        let mut outbox = self.outbox();
        if outbox.retired {
            return Err(Refused::Retired(hold));
        }
        if outbox.closed {
            return Err(Refused::Failed(Failure::WorkerDied));
        }
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = events::events();
        {
            let mut streams = self.streams();
            if streams.timed_out {
                return Err(Refused::Retired(hold));
            }
            if !streams.alive {
                return Err(Refused::Failed(Failure::WorkerDied));
            }
            streams.open.insert(
                id,
                Stream {
                    events: tx,
                    backlog: backlog.clone(),
                    spill: None,
                    spill_failed: false,
                    ws_credit: WS_WINDOW,
                    hold,
                },
            );
        }
        let (queued, pieces) = (outbox.bytes.len(), outbox.pieces.len());
        let outbox_now = &mut *outbox;
        let mut frames = Queued {
            bytes: &mut outbox_now.bytes,
            pieces: &mut outbox_now.pieces,
        };
        if let Err(err) = encode(id, &mut frames) {
            outbox.bytes.truncate(queued);
            outbox.pieces.truncate(pieces);
            drop(outbox);
            // Its hold goes with it, freeing the worker's slot.
            self.streams().open.remove(&id);
            warn!("cannot encode a request for worker {}: {err}", self.pid);
            return Err(Refused::Failed(Failure::Aborted(err.to_string())));
        }
        if !outbox.push_now(self) {
            drop(outbox);
            self.outbox_ready.notify_one();
        }
        Ok((
            id,
            Events {
                receiver: rx,
                backlog: backlog.clone(),
            },
        ))
    }

    /// Answers a worker's Retire: from now on no request is written to it.
    pub(super) fn retire(&self) {
        let mut outbox = self.outbox();
        if outbox.retired {
            return;
        }
        outbox.retired = true;
        encode_frame(&mut outbox.bytes, Kind::Retired, 0, b"");
        drop(outbox);
        self.outbox_ready.notify_one();
        self.retiring.send_replace(true);
    }

    /// Whether everything queued for the worker has been written (or never will be).
    pub fn written(&self) -> bool {
        let outbox = self.outbox();
        outbox.closed || (outbox.bytes.is_empty() && !outbox.writing)
    }

    /// Whether the worker sleeps until a doorbell (its ring's `parked` flag): a request
    /// given to a worker still awake costs no doorbell. A hint; false without rings.
    pub fn asleep(&self) -> bool {
        self.ring
            .as_ref()
            .is_some_and(|ring| ring.to_worker().consumer_parked())
    }

    /// Watches for the worker's retirement (its WebSockets then close).
    pub fn retiring(&self) -> tokio::sync::watch::Receiver<bool> {
        self.retiring.subscribe()
    }

    /// Queues a frame of WebSocket `stream` for the worker, if the stream is open.
    fn ws_frame(&self, stream: u32, encode: impl FnOnce(&mut Vec<u8>)) {
        if !self.streams().open.contains_key(&stream) {
            return;
        }
        let mut outbox = self.outbox();
        if outbox.closed {
            return;
        }
        encode(&mut outbox.bytes);
        drop(outbox);
        self.outbox_ready.notify_one();
    }

    /// A piece of a client's message (within the worker's credit).
    pub fn ws_message(&self, stream: u32, text: bool, last: bool, data: &[u8]) {
        self.ws_frame(stream, |out| {
            // A piece is cut to fit a frame by the caller.
            let _ = WsMessage::encode(out, stream, text, last, data);
        });
    }

    /// The WebSocket is over for the client: the application gets its
    /// `websocket.disconnect` with `code`.
    pub fn ws_close(&self, stream: u32, code: u16, reason: &str) {
        self.ws_frame(stream, |out| WsClose::encode(out, stream, code, reason));
    }

    /// The handshake was never completed (the client left): the application is told.
    pub fn ws_gone(&self, stream: u32, code: u16) {
        self.ws_close(stream, code, "");
    }

    /// `bytes` of the worker's messages have been written to the client.
    pub fn ws_credit(&self, stream: u32, bytes: u32) {
        if let Some(open) = self.streams().open.get_mut(&stream) {
            open.ws_credit = open.ws_credit.saturating_add(bytes);
        }
        self.ws_frame(stream, |out| WsCredit::encode(out, stream, bytes));
    }

    /// Tells the worker that the client of `stream` went away. The stream stays open
    /// (its slot busy) until the worker ends it.
    pub fn abort_stream(&self, stream: u32) {
        if !self.streams().open.contains_key(&stream) {
            return;
        }
        let mut outbox = self.outbox();
        encode_frame(&mut outbox.bytes, Kind::Abort, stream, b"client went away");
        drop(outbox);
        self.outbox_ready.notify_one();
    }

    /// Routes one frame to its stream; a [`Pause`] says to wait before reading on.
    pub(super) fn route(&self, frame: Frame) -> Result<Option<Pause>, ProtocolError> {
        let event = match frame.kind {
            Kind::ResponseHead => Event::Head(ResponseHead::decode(frame.payload)?),
            Kind::Body => {
                let mut streams = self.streams();
                // Data for a client that went away is dropped; the worker carries on
                // until it ends the stream.
                if let Some(stream) = streams.open.get_mut(&frame.stream)
                    && !stream.events.is_closed()
                {
                    let (event, pause) = stream.data(frame.payload);
                    let _ = stream.events.send(event);
                    return Ok(pause);
                }
                return Ok(None);
            }
            Kind::Trailers => Event::Trailers(Trailers::decode(frame.payload)?.headers),
            Kind::WsAccept => Event::WsAccept(WsAccept::decode(frame.payload)?),
            Kind::WsMessage => {
                let message = WsMessage::decode(frame.payload)?;
                let mut streams = self.streams();
                if let Some(stream) = streams.open.get_mut(&frame.stream) {
                    // What the front tier holds for a slow client is bounded by the
                    // credit: a worker sending beyond it breaks the protocol.
                    let size = message.data.len() as u32;
                    stream.ws_credit =
                        stream
                            .ws_credit
                            .checked_sub(size)
                            .ok_or(ProtocolError::Invalid(
                                "WebSocket message beyond its credit",
                            ))?;
                }
                Event::WsMessage(message)
            }
            Kind::WsClose => Event::WsClose(WsClose::decode(frame.payload)?),
            Kind::WsCredit => Event::WsCredit(WsCredit::decode(frame.payload)?.bytes),
            Kind::End => Event::End,
            Kind::Abort => Event::Failed(Failure::Aborted(
                String::from_utf8_lossy(&frame.payload).into_owned(),
            )),
            _ => return Err(ProtocolError::Invalid("frame kind from a worker")),
        };
        let finished = matches!(event, Event::End | Event::Failed(_));
        let mut streams = self.streams();
        if finished {
            // Removing the stream drops its hold, which frees the worker's slot.
            if let Some(stream) = streams.open.remove(&frame.stream) {
                drop(streams);
                let _ = stream.events.send(event);
            }
        } else if let Some(stream) = streams.open.get(&frame.stream) {
            let _ = stream.events.send(event);
        }
        Ok(None)
    }

    /// The master timed the worker out: its open streams fail with [`Failure::TimedOut`]
    /// now (their slots go with them), and no stream is opened on it again. Whatever it
    /// still sends is dropped.
    pub fn time_out(&self) {
        let open = {
            let mut streams = self.streams();
            streams.alive = false;
            streams.timed_out = true;
            std::mem::take(&mut streams.open)
        };
        let (open, unstarted) = self.split_unstarted(open);
        fail_all(open, Failure::TimedOut);
        self.give_back(unstarted);
    }

    /// Of the streams open when a sequential worker stopped, those it never began: all
    /// but the first (it serves them in stream order). A worker serving several at once
    /// may have begun any, so none is taken out.
    fn split_unstarted(&self, mut open: OpenStreams) -> (OpenStreams, Vec<Stream>) {
        let Some(first) = open.keys().min().copied().filter(|_| self.sequential) else {
            return (open, Vec::new());
        };
        let begun = open.remove(&first).map(|stream| (first, stream));
        let unstarted = open.into_values().collect();
        (begun.into_iter().collect(), unstarted)
    }

    /// The master timed out these streams of a gthread worker: they fail with
    /// [`Failure::TimedOut`] now (their slots go with them); the worker's other streams
    /// go on. Whatever it still sends for them is dropped.
    pub fn time_out_streams(&self, ids: &[u32]) {
        let mut timed_out = OpenStreams::default();
        {
            let mut streams = self.streams();
            for id in ids {
                if let Some(stream) = streams.open.remove(id) {
                    timed_out.insert(*id, stream);
                }
            }
        }
        fail_all(timed_out, Failure::TimedOut);
    }

    /// Gives requests the worker never began back to their tasks, with what they hold.
    fn give_back(&self, unstarted: Vec<Stream>) {
        if unstarted.is_empty() {
            return;
        }
        info!(
            "worker {} stopped before it began {} request(s) queued on it: they go to other workers",
            self.pid,
            unstarted.len()
        );
        for stream in unstarted {
            let Stream { events, hold, .. } = stream;
            let _ = events.send(Event::Returned(Returned(hold)));
        }
    }

    pub(super) fn close(&self) {
        {
            let mut outbox = self.outbox();
            outbox.closed = true;
            outbox.bytes.clear();
            outbox.pieces.clear();
        }
        self.outbox_ready.notify_one();
        let open = {
            let mut streams = self.streams();
            streams.alive = false;
            std::mem::take(&mut streams.open)
        };
        let (open, unstarted) = self.split_unstarted(open);
        self.give_back(unstarted);
        if open.is_empty() {
            return;
        }
        // The channel may close before the master's word that the worker (or some of
        // its requests) timed out has been read; the shared scoreboard already says so.
        let whole = scoreboard::timed_out(self.pid);
        let streams = match whole {
            true => Vec::new(),
            false => scoreboard::timed_out_streams(self.pid),
        };
        for (id, stream) in open {
            let failure = if whole || streams.contains(&id) {
                Failure::TimedOut
            } else {
                Failure::WorkerDied
            };
            let _ = stream.events.send(Event::Failed(failure));
        }
    }
}

fn fail_all(open: OpenStreams, failure: Failure) {
    for (_, stream) in open {
        let _ = stream.events.send(Event::Failed(failure.clone()));
    }
}

/// The channel's writer task: writes whatever the outbox holds, all of it in one write
/// when several requests were queued meanwhile, until the channel is closed or a write
/// fails (the worker is gone; the reader sees the channel end).
async fn writer(conn: Arc<WorkerConn>) {
    let mut spare = Vec::new();
    let mut spare_pieces = Vec::new();
    loop {
        let closed = {
            let mut outbox = conn.outbox();
            std::mem::swap(&mut outbox.bytes, &mut spare);
            std::mem::swap(&mut outbox.pieces, &mut spare_pieces);
            outbox.writing = !spare.is_empty();
            outbox.closed
        };
        if spare.is_empty() {
            if closed {
                return;
            }
            conn.outbox_ready.notified().await;
            continue;
        }
        let written = write_out(&conn, &spare, &spare_pieces).await;
        let mut outbox = conn.outbox();
        outbox.writing = false;
        if written.is_err() {
            outbox.closed = true;
            return;
        }
        drop(outbox);
        spare.clear();
        spare_pieces.clear();
        // A big request body passed through: do not keep its buffer for every channel.
        spare.shrink_to(KEPT_OUTBOX);
    }
}

/// What the outbox holds, in the order it goes out: `bytes` with `pieces` inserted at
/// their offsets (ascending, within `bytes`: recorded as the frames were queued).
fn segments<'a>(bytes: &'a [u8], pieces: &'a [(usize, Bytes)]) -> impl Iterator<Item = &'a [u8]> {
    let starts = std::iter::once(0).chain(pieces.iter().map(|(offset, _)| *offset));
    let tail = pieces.last().map_or(0, |(offset, _)| *offset);
    pieces
        .iter()
        .zip(starts)
        .flat_map(move |((offset, piece), start)| [&bytes[start..*offset], &piece[..]])
        .chain(std::iter::once(&bytes[tail..]))
}

/// Writes `bytes` with `pieces` inserted (see [`segments`]).
async fn write_out(
    conn: &WorkerConn,
    bytes: &[u8],
    pieces: &[(usize, Bytes)],
) -> std::io::Result<()> {
    for segment in segments(bytes, pieces) {
        write_segment(conn, segment).await?;
    }
    Ok(())
}

async fn write_segment(conn: &WorkerConn, segment: &[u8]) -> std::io::Result<()> {
    match &conn.ring {
        _ if segment.is_empty() => Ok(()),
        Some(ring) => push_all(ring, &conn.socket, segment, conn).await,
        None => write_all(&conn.socket, segment).await,
    }
}

/// The most an idle channel's writer keeps allocated for the next frames.
const KEPT_OUTBOX: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use std::io::Read;

    use bytes::BytesMut;

    use super::*;
    use crate::protocol::Decoder;

    /// A body queued as pieces of any sizes, larger in all than one frame may carry,
    /// comes out as whole Body frames of at most [`MAX_PAYLOAD`] whose payloads are the
    /// body, byte for byte, between the frames queued around it.
    #[test]
    fn a_body_queued_as_pieces_makes_whole_frames() {
        let body: Vec<u8> = (0..MAX_PAYLOAD * 2 + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        let cuts = [
            0,
            1,
            10,
            70_000,
            MAX_PAYLOAD - 5,
            MAX_PAYLOAD + 3,
            body.len(),
        ];
        let pieces: Vec<Bytes> = cuts
            .windows(2)
            .map(|w| Bytes::copy_from_slice(&body[w[0]..w[1]]))
            .collect();
        let (mut bytes, mut inserted) = (Vec::new(), Vec::new());
        let mut queued = Queued {
            bytes: &mut bytes,
            pieces: &mut inserted,
        };
        encode_frame(queued.bytes, Kind::End, 1, b"");
        queued.body(7, &pieces);
        encode_frame(queued.bytes, Kind::End, 7, b"");
        let wire: Vec<u8> = segments(&bytes, &inserted).flatten().copied().collect();
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::from(&wire[..]);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            frames.push(frame);
        }
        assert!(buf.is_empty());
        let kinds: Vec<(Kind, u32)> = frames.iter().map(|f| (f.kind, f.stream)).collect();
        let mut expected = vec![(Kind::End, 1)];
        expected.extend([(Kind::Body, 7); 3]);
        expected.push((Kind::End, 7));
        assert_eq!(kinds, expected);
        let received: Vec<u8> = frames[1..4]
            .iter()
            .flat_map(|f| f.payload.to_vec())
            .collect();
        assert!(received == body, "the body arrived altered");
    }

    /// Requests opened on a worker that is not reading (a busy sync worker holding a
    /// prefetched request) are queued at once, without waiting on the channel; the
    /// writer task then delivers every frame whole and in order, also of a request given
    /// up meanwhile, so nothing its client does can cut a frame in half.
    #[tokio::test(flavor = "current_thread")]
    async fn frames_for_a_worker_that_is_not_reading_arrive_whole_and_in_order() {
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let socket = Arc::new(UnixStream::from_std(ours).unwrap());
        let conn = WorkerConn::new(1, 4242, 0, false, socket, None);

        // Far more than the socket's buffer holds.
        let piece = 64 * 1024;
        let body = vec![b'b'; 16 * piece];
        let mut streams = Vec::new();
        for pieces in [&body[..], b"tail"] {
            let hold = StreamHold {
                lease: Box::new(()),
                spool: None,
            };
            let backlog = crate::front::dispatch::budget::Budgets::new(1 << 30)
                .connection()
                .response(false);
            let opened = conn.open_stream(hold, &backlog, |id, out| {
                for chunk in pieces.chunks(piece) {
                    encode_frame(out.bytes, Kind::Body, id, chunk);
                }
                encode_frame(out.bytes, Kind::End, id, b"");
                Ok(())
            });
            let (id, events) = opened.unwrap_or_else(|_| panic!("not opened"));
            streams.push((id, events));
            if streams.len() == 1 {
                conn.abort_stream(id); // its client went away at once
            }
        }
        let (first, second) = (streams[0].0, streams[1].0);

        let reader = tokio::task::spawn_blocking(move || {
            let mut decoder = Decoder::new();
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            let mut chunk = vec![0; 8192];
            let done = |frames: &[Frame]| {
                frames.last().map(|f| (f.kind, f.stream)) == Some((Kind::End, second))
            };
            loop {
                while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                    frames.push(frame);
                }
                if done(&frames) {
                    break;
                }
                let n = theirs.read(&mut chunk).unwrap();
                assert!(n > 0, "the channel ended early");
                buf.extend_from_slice(&chunk[..n]);
            }
            frames
        });
        let frames = reader.await.unwrap();
        let kinds: Vec<(Kind, u32)> = frames.iter().map(|f| (f.kind, f.stream)).collect();
        let mut expected = vec![(Kind::Body, first); 16];
        expected.extend([
            (Kind::End, first),
            (Kind::Abort, first),
            (Kind::Body, second),
            (Kind::End, second),
        ]);
        assert_eq!(kinds, expected);
        let received: Vec<u8> = frames[..16]
            .iter()
            .flat_map(|f| f.payload.to_vec())
            .collect();
        assert!(received == body, "the body arrived altered");
        assert_eq!(&frames[18].payload[..], b"tail");
    }
}

#[cfg(test)]
mod ws_tests {
    use super::*;

    /// A worker may send a WebSocket's messages only within the credit the front tier
    /// granted: beyond it, the frame is a protocol error, not memory held.
    #[tokio::test(flavor = "current_thread")]
    async fn a_worker_sending_beyond_its_websocket_credit_breaks_the_protocol() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let socket = Arc::new(UnixStream::from_std(ours).unwrap());
        let conn = WorkerConn::new(1, 4242, 0, false, socket, None);
        let hold = StreamHold {
            lease: Box::new(()),
            spool: None,
        };
        let backlog = crate::front::dispatch::budget::Budgets::new(1 << 30)
            .connection()
            .response(false);
        let opened = conn.open_stream(hold, &backlog, |_, _| Ok(()));
        let (id, _events) = opened.unwrap_or_else(|_| panic!("not opened"));
        let message = |size: usize| {
            let mut out = Vec::new();
            WsMessage::encode(&mut out, id, false, true, &vec![0; size]).unwrap();
            let mut buf = bytes::BytesMut::from(&out[..]);
            crate::protocol::Decoder::new()
                .decode(&mut buf)
                .unwrap()
                .unwrap()
        };
        let piece = MAX_PAYLOAD - 1;
        let mut left = WS_WINDOW as usize;
        while left > 0 {
            let size = left.min(piece);
            assert!(conn.route(message(size)).is_ok());
            left -= size;
        }
        assert!(conn.route(message(1)).is_err());
        conn.ws_credit(id, 10);
        assert!(conn.route(message(10)).is_ok());
        assert!(conn.route(message(1)).is_err());
    }
}
