//! One WebSocket after its handshake: the client's frames read and answered, whole
//! messages passed to the worker within its credit, the worker's messages framed for
//! the client, pings, and the closing handshake whoever begins it (RFC 6455 §5-7).
//!
//! Two tasks: this one reads the client and the channel's events; a writer task owns the
//! connection's write half and is fed through a small bounded queue. The worker's
//! messages are bounded by the credit it is granted only once their bytes are written
//! to the client, so a slow client holds at most one window here; a message the
//! application has not received stops the reading of the client, so an application
//! that does not receive holds at most one message here (`--ws-max-size`).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use super::deflate::{Deflater, Inflater};
use super::frame::{self, Incoming, Opcode, Reader, Violation};
use super::{Opened, Settings};
use crate::front::conn::stopping::Watch;
use crate::front::dispatch::budget::Held;
use crate::front::dispatch::channel::{Event, EventReceiver, WorkerConn};
use crate::protocol::{MAX_PAYLOAD, WS_WINDOW};

/// RFC 6455 §7.4.1 (IANA registry): the server is overloaded, try again later; sent when
/// the front tier's memory for what clients send is spent.
const TRY_AGAIN_LATER: u16 = 1013;

/// How long the other side has to answer a close frame before the connection is
/// dropped (a stop is never held longer by a WebSocket).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Frames queued for the writer task (each at most a message piece of the channel).
const OUT_QUEUE: usize = 16;

/// The most one read of the client takes.
const READ_SIZE: usize = 16 * 1024;

/// Why the server closes a WebSocket by itself: the front tier stops (1001, going
/// away), or the worker serving it is rotated or a new master takes over (1012, service
/// restart).
pub struct Closer {
    /// The front tier's stop.
    pub stop: Watch,
    /// Set when the worker retires (HUP, USR2, --max-requests, TTOU).
    pub retiring: tokio::sync::watch::Receiver<bool>,
}

impl Closer {
    /// The close code, once the server must close.
    async fn wait(&mut self) -> u16 {
        tokio::select! {
            biased;
            restart = self.stop.begun() => if restart { 1012 } else { 1001 },
            _ = self.retiring.wait_for(|retiring| *retiring) => 1012,
        }
    }
}

/// What goes to the writer task.
enum Out {
    /// Frame bytes, and the credit to grant the worker once they are written.
    Frame(Vec<u8>, u32),
}

/// A message of the client waiting for the worker's credit.
struct Waiting {
    text: bool,
    data: bytes::Bytes,
    sent: usize,
}

struct Session {
    worker: Arc<WorkerConn>,
    stream: u32,
    settings: Settings,
    reader: Reader,
    inbuf: BytesMut,
    out: mpsc::Sender<Out>,
    /// What the worker may still be sent (protocol `WsCredit`).
    credit: u32,
    waiting: Option<Waiting>,
    deflater: Option<Deflater>,
    /// A message of the worker's has begun and not ended: its next piece continues it.
    sending: bool,
    /// A ping was sent: the pong must come by then.
    pong_due: Option<Instant>,
    next_ping: Option<Instant>,
    /// The client's bytes held here (a frame still arriving, a fragmented message, a
    /// message waiting for the worker's credit), counted against the front tier's
    /// memory: `--ws-max-size` bounds one WebSocket, this all of them together.
    held: Held,
}

/// How a session ended.
enum Ended {
    /// Wait for the client's close frame (we sent ours).
    AwaitClose,
    /// Over at once.
    Now,
}

/// Runs the WebSocket over `io` until it is closed, whoever closes it.
pub async fn run<S>(io: S, opened: Opened, deflate: bool)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Opened {
        worker,
        stream,
        events,
        mut closer,
        settings,
        busy,
        memory,
        ..
    } = opened;
    let (mut rd, wr) = tokio::io::split(io);
    let (out, queue) = mpsc::channel(OUT_QUEUE);
    let writer = tokio::spawn(write_loop(wr, queue, worker.clone(), stream));
    let mut session = Session {
        worker,
        stream,
        settings,
        reader: Reader::new(settings.max_size, deflate.then(Inflater::new)),
        inbuf: BytesMut::new(),
        out,
        credit: WS_WINDOW,
        waiting: None,
        deflater: deflate.then(Deflater::new),
        sending: false,
        pong_due: None,
        next_ping: settings.ping_interval.map(|every| Instant::now() + every),
        held: memory.hold(0),
    };
    let mut events = events.receiver;
    let ended = session.serve(&mut rd, &mut events, &mut closer).await;
    if let Ended::AwaitClose = ended {
        // §7.1.1: the server closes the TCP connection once the close frames have
        // crossed; a client that does not answer is not waited for long.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.await_close(&mut rd)).await;
    }
    drop(session);
    drop(events);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer).await;
    // The HTTP/2 connection may go idle now.
    drop(busy);
}

impl Session {
    async fn serve<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        events: &mut EventReceiver,
        closer: &mut Closer,
    ) -> Ended {
        loop {
            // What is already read, until a message must wait for the application.
            while self.waiting.is_none() {
                match self.reader.read(&mut self.inbuf) {
                    Ok(Some(incoming)) => {
                        if let Some(ended) = self.incoming(incoming).await {
                            return ended;
                        }
                    }
                    Ok(None) => break,
                    Err(violation) => return self.fail(violation).await,
                }
            }
            self.forward();
            if !self.account() {
                let why = "server busy: try again later";
                debug!("closing a WebSocket: the front tier's memory for client data is spent");
                self.worker.ws_close(self.stream, TRY_AGAIN_LATER, why);
                return self.close(TRY_AGAIN_LATER, why).await;
            }
            let reading = self.waiting.is_none();
            let alarm = self.alarm(reading);
            tokio::select! {
                biased;
                code = closer.wait() => {
                    let why = if code == 1001 { "server stopping" } else { "server restarting" };
                    debug!("closing a WebSocket: {why}");
                    self.worker.ws_close(self.stream, code, why);
                    return self.close(code, why).await;
                }
                event = events.recv() => {
                    if let Some(ended) = self.event(event).await {
                        return ended;
                    }
                }
                read = rd.read_buf(&mut self.inbuf), if reading => {
                    self.inbuf.reserve(READ_SIZE);
                    match read {
                        Ok(1..) => {}
                        // §7.1.5: closed without a close frame, 1006.
                        Ok(0) | Err(_) => {
                            self.worker.ws_close(self.stream, 1006, "");
                            return Ended::Now;
                        }
                    }
                }
                () = sleep_until(alarm) => {
                    if let Some(ended) = self.ping().await {
                        return ended;
                    }
                }
            }
        }
    }

    /// Holds what the client's bytes here take now against the front tier's memory;
    /// false when there is no room for them.
    fn account(&mut self) -> bool {
        let waiting = self.waiting.as_ref().map_or(0, |w| w.data.len() - w.sent);
        let holding = (self.inbuf.len() + self.reader.gathered() + waiting) as u64;
        let held = self.held.held();
        match holding.checked_sub(held) {
            Some(0) => true,
            Some(more) => self.held.try_add(more),
            None => {
                self.held.release(held - holding);
                true
            }
        }
    }

    /// When the ping timer next fires: a pong due, or the next ping. No pong is awaited
    /// while the client is not read (its pong could not be seen).
    fn alarm(&mut self, reading: bool) -> Option<Instant> {
        if !reading {
            self.pong_due = None;
        }
        self.pong_due.or(self.next_ping)
    }

    async fn ping(&mut self) -> Option<Ended> {
        let now = Instant::now();
        if self.pong_due.is_some_and(|due| due <= now) {
            debug!("closing a WebSocket: no pong within --ws-ping-timeout");
            self.worker.ws_close(self.stream, 1011, "ping timeout");
            return Some(self.close(1011, "ping timeout").await);
        }
        if let Some(every) = self.settings.ping_interval {
            self.next_ping = Some(now + every);
            if self.pong_due.is_none() {
                self.pong_due = Some(now + self.settings.ping_timeout);
                if !self.send(Opcode::Ping, b"rwsgi").await {
                    return Some(Ended::Now);
                }
            }
        }
        None
    }

    /// One message or control frame of the client.
    async fn incoming(&mut self, incoming: Incoming) -> Option<Ended> {
        match incoming {
            Incoming::Message { text, data } => {
                self.waiting = Some(Waiting {
                    text,
                    data,
                    sent: 0,
                });
            }
            // §5.5.2: a pong with the ping's payload, as soon as practical.
            Incoming::Ping(payload) => {
                if !self.send(Opcode::Pong, &payload).await {
                    return Some(Ended::Now);
                }
            }
            Incoming::Pong => self.pong_due = None,
            Incoming::Close(code, reason) => {
                // §5.5.1: the close is answered, echoing the client's code.
                self.worker
                    .ws_close(self.stream, code.unwrap_or(1005), &reason);
                let body = code
                    .map(|code| frame::close_body(code, ""))
                    .unwrap_or_default();
                self.send(Opcode::Close, &body).await;
                return Some(Ended::Now);
            }
        }
        None
    }

    /// Passes what the worker's credit allows of the waiting message.
    fn forward(&mut self) {
        let Some(waiting) = &mut self.waiting else {
            return;
        };
        loop {
            let left = waiting.data.len() - waiting.sent;
            let piece = left.min(self.credit as usize).min(MAX_PAYLOAD - 1);
            // An empty message is one empty piece, which needs no credit.
            if piece == 0 && left > 0 {
                return;
            }
            let data = &waiting.data[waiting.sent..waiting.sent + piece];
            let last = piece == left;
            self.worker
                .ws_message(self.stream, waiting.text, last, data);
            self.credit -= piece as u32;
            waiting.sent += piece;
            if last {
                self.waiting = None;
                return;
            }
        }
    }

    /// One event of the worker's stream.
    async fn event(&mut self, event: Option<Event>) -> Option<Ended> {
        match event {
            Some(Event::WsMessage(message)) => {
                let opcode = match (self.sending, message.text) {
                    (true, _) => Opcode::Continuation,
                    (false, true) => Opcode::Text,
                    (false, false) => Opcode::Binary,
                };
                let credit = message.data.len() as u32;
                let mut bytes = Vec::with_capacity(message.data.len() + 10);
                match &mut self.deflater {
                    Some(deflater) => {
                        let compressed = deflater.deflate(&message.data, message.last);
                        let first = !self.sending;
                        frame::encode(&mut bytes, message.last, first, opcode, &compressed);
                    }
                    None => frame::encode(&mut bytes, message.last, false, opcode, &message.data),
                }
                self.sending = !message.last;
                if self.out.send(Out::Frame(bytes, credit)).await.is_err() {
                    self.worker.ws_close(self.stream, 1006, "");
                    return Some(Ended::Now);
                }
                None
            }
            Some(Event::WsCredit(bytes)) => {
                self.credit = self.credit.saturating_add(bytes);
                None
            }
            // The application closed (websocket.close): it knows; only the client is
            // told.
            Some(Event::WsClose(close)) => {
                let code = match frame::valid_close_code(close.code) {
                    true => close.code,
                    false => 1000,
                };
                let reason = String::from_utf8_lossy(&close.reason).into_owned();
                Some(self.close(code, &reason).await)
            }
            // The application returned without closing: a normal closure.
            Some(Event::End) => Some(self.close(1000, "").await),
            // §7.4.1: 1011, the server met a condition it could not handle (the
            // application failed, its worker died or timed out).
            Some(Event::Failed(_)) | None => Some(self.close(1011, "").await),
            Some(_) => None,
        }
    }

    /// The client broke the protocol: the close frame says how (§7.1.7), and the
    /// application is told with the same code.
    async fn fail(&mut self, violation: Violation) -> Ended {
        debug!("failing a WebSocket: {violation}");
        self.worker
            .ws_close(self.stream, violation.code, violation.why);
        self.close(violation.code, violation.why).await;
        Ended::Now
    }

    /// Sends our close frame; the client's answer is then awaited.
    async fn close(&mut self, code: u16, reason: &str) -> Ended {
        match self
            .send(Opcode::Close, &frame::close_body(code, reason))
            .await
        {
            true => Ended::AwaitClose,
            false => Ended::Now,
        }
    }

    /// Queues one unfragmented server frame; false when the writer is gone.
    async fn send(&mut self, opcode: Opcode, payload: &[u8]) -> bool {
        let mut bytes = Vec::with_capacity(payload.len() + 4);
        frame::encode(&mut bytes, true, false, opcode, payload);
        self.out.send(Out::Frame(bytes, 0)).await.is_ok()
    }

    /// Reads the client until its close frame (or its end), discarding the rest.
    async fn await_close<R: AsyncRead + Unpin>(&mut self, rd: &mut R) {
        loop {
            loop {
                match self.reader.read(&mut self.inbuf) {
                    Ok(Some(Incoming::Close(..))) | Err(_) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                }
            }
            self.inbuf.reserve(READ_SIZE);
            match rd.read_buf(&mut self.inbuf).await {
                Ok(1..) => {}
                _ => return,
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Writes the queued frames to the client; once they are written, grants the worker
/// the credit they carry. Ends (shutting the write side) when the session drops its
/// sender, or when a write fails.
async fn write_loop<W: AsyncWrite>(
    mut wr: WriteHalf<W>,
    mut queue: mpsc::Receiver<Out>,
    worker: Arc<WorkerConn>,
    stream: u32,
) {
    let mut owed = 0u32;
    while let Some(Out::Frame(bytes, credit)) = queue.recv().await {
        if wr.write_all(&bytes).await.is_err() {
            return;
        }
        owed = owed.saturating_add(credit);
        // Granted once the queue is empty, or a quarter window is owed: fewer frames
        // on the channel for a stream of small messages.
        if owed > 0 && (queue.is_empty() || owed >= WS_WINDOW / 4) {
            if wr.flush().await.is_err() {
                return;
            }
            worker.ws_credit(stream, owed);
            owed = 0;
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}
