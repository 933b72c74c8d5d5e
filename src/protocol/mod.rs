//! The worker channel: framed, multiplexed messages between the front tier and a worker.
//!
//! This module is the specification of the channel; both sides use it and nothing else
//! speaks it. It must never panic or allocate more than a checked bound, whatever bytes
//! arrive (the worker may be running arbitrary application code that corrupts memory or
//! writes to the wrong file descriptor).
//!
//! # Byte layout
//!
//! Every frame is a 10-byte header followed by its payload:
//!
//! ```text
//! +----------------+--------+--------+----------------+------------------+
//! | length: u32 BE | kind:u8| flags:u8| stream: u32 BE | payload (length) |
//! +----------------+--------+--------+----------------+------------------+
//! ```
//!
//! `length` counts the payload only and is at most [`MAX_PAYLOAD`]; a longer frame is a
//! protocol error, detected before anything is allocated. Integers are big-endian.
//!
//! The conversation:
//!
//! 1. The worker opens with one [`Kind::Hello`] frame on stream 0 (magic, protocol
//!    version, pid, capacity, whether it takes rings: see 6). The front tier refuses a worker whose version differs.
//!    Capacity is how many streams the worker serves at once: 1 (sync), `--threads`
//!    (gthread) or `--worker-connections` (gevent); the frames of its streams interleave
//!    on the channel, each frame whole.
//! 2. The front tier opens a stream with [`Kind::RequestHead`] (since protocol version
//!    3 it carries the request's id, so that the worker's log lines name the request
//!    as the front tier's do), then sends the body as
//!    [`Kind::Body`] frames or one [`Kind::BodyFile`] frame (a spooled body), then
//!    [`Kind::End`]. A stream id is never reused while the stream is open.
//! 3. The worker answers with [`Kind::ResponseHead`], [`Kind::Body`] frames and
//!    [`Kind::End`], or [`Kind::Abort`] when the response cannot be completed (the front
//!    tier then resets the client's connection or stream instead of sending a truncated
//!    response as if it were whole). Between the last `Body` and the `End` the worker
//!    may send one [`Kind::Trailers`] frame (an ASGI application's
//!    `http.response.trailers`, offered only to a request with `TE: trailers`): its
//!    payload is a header list as in `ResponseHead` (a `u32` count, then per field its
//!    name and its value, each `u32`-length-prefixed); the front tier holds it until
//!    the `End` and sends it as the response's trailer section (RFC 9110 §6.5), or
//!    drops it where HTTP cannot carry it (a response not chunked, RFC 9112 §7.1.2).
//! 4. Either side may send [`Kind::Abort`] for a stream: from the front tier it means the
//!    client went away. The worker still finishes such a stream with `End` or `Abort`,
//!    because only that frees its slot: a request it drops unserved, the Abort having
//!    come before the request was whole, gets an `Abort` back.
//! 5. Retirement (`--max-requests`, or a graceful stop): the worker sends
//!    [`Kind::Retire`] on stream 0 when it is idle (a sync worker) or at once (a worker
//!    of several streams, whose reader never waits on a request). The front tier stops
//!    dispatching to it and answers [`Kind::Retired`] on stream 0, written under the
//!    same lock as request frames and after which no request is written. The worker serves every
//!    request that arrived before `Retired`, then exits. Both payloads are empty.
//!
//! 6. Rings (protocol version 2): a worker whose Hello sets its `ring` flag (a sync or
//!    gthread worker; a gevent hub waits on the socket itself and does not) gets, as the
//!    front tier's first bytes on the socket, one empty [`Kind::Ring`] frame on stream 0
//!    carrying a memfd as SCM_RIGHTS: two single-producer rings in shared memory
//!    ([`ring`], whose module documentation gives the layout). From then on every frame
//!    of the conversation above, in both directions, is written into a ring instead of
//!    the socket, byte for byte as it would have been written to the socket, and decoded
//!    by the same [`Decoder`]. The socket carries only doorbells: a byte (its value means
//!    nothing) written when the reader of a ring has said it sleeps, and never otherwise,
//!    so that a busy pair exchanges frames without a system call. The socket still tells
//!    each side at once when the other is gone (end of file, hang-up). A reader may take
//!    a frame out of the ring in pieces, as long as the bytes it takes are the stream's:
//!    a sync worker, whose request's head announced a `content-length`, reads a Body frame
//!    of that length (64 KiB or more) by peeking at its header in the ring, skipping the
//!    header, then copying its payload straight into the `bytes` object the application
//!    reads, as it arrives; nothing changes for the front tier.
//!
//! 7. WebSockets (protocol version 4). RFC 6455 (handshake, framing, masking, pings,
//!    size limits, permessage-deflate) stays in the front tier; only what ASGI speaks
//!    of crosses the channel, on a stream of its own:
//!    - The front tier opens the stream with [`Kind::WsConnect`], whose payload is a
//!      request head exactly as [`Kind::RequestHead`]'s (the offered subprotocols are
//!      its `sec-websocket-protocol` fields). No Body or End follows it.
//!    - The worker answers [`Kind::WsAccept`] ([`WsAccept`]: the subprotocol chosen
//!      and extra header fields), after which the front tier completes the handshake
//!      (101, or 200 for HTTP/2's extended CONNECT). Or it denies the WebSocket with a
//!      whole response as for a request: [`Kind::ResponseHead`], [`Kind::Body`]
//!      frames and [`Kind::End`] (a close before accept is a 403 made by the worker).
//!    - After the accept, messages go both ways as [`Kind::WsMessage`] frames
//!      ([`WsMessage`]: a flags byte, text and last piece, then the data). A message
//!      may be cut into pieces of any size, each at most [`MAX_PAYLOAD`]; the pieces of
//!      one message follow one another on the stream, and its last piece says so.
//!    - Flow control: each side may send at most [`WS_WINDOW`] bytes of WsMessage
//!      data (flags bytes not counted) beyond what the other has granted with
//!      [`Kind::WsCredit`] ([`WsCredit`]: a `u32` of bytes). The front tier grants
//!      what it has written to the client's connection; the worker what the
//!      application has received (and pieces of a message not yet whole, which it
//!      must hold anyway). A side that sends beyond its credit breaks the protocol.
//!      A slow client therefore makes the application's `send()` wait, and an
//!      application that does not receive makes the front tier stop reading its
//!      client, with at most one window held on each side.
//!    - [`Kind::WsClose`] ([`WsClose`]: a `u16` code, the rest of the payload a UTF-8
//!      reason of at most [`MAX_CLOSE_REASON`] bytes) either way. From the worker: the
//!      application closed (the front tier sends the close frame, RFC 6455 §7.1.2).
//!      From the front tier: the WebSocket is over, whoever closed it (the client's
//!      code; 1006 when the connection ended without a close frame; the front tier's
//!      own 1001 or 1012 when it stops or the worker is rotated, 1002, 1007, 1009
//!      for the client's faults, 1011 for a client that misses its pong, or 1013 when
//!      the front tier's memory for what clients send is spent): the application gets
//!      its `websocket.disconnect`, and nothing more of the WebSocket reaches the front
//!      tier's client. Each side sends at most one WsClose.
//!    - The worker ends the stream with [`Kind::End`] once the application's task is
//!      over (or [`Kind::Abort`]: it failed, the front tier closes with 1011); only
//!      that frees the worker's place. An [`Kind::Abort`] from the front tier means
//!      what it means for a request (the client went away before an answer).
//!
//! Payload fields inside heads are encoded with [`FieldWriter`] and read with
//! [`FieldReader`]: fixed-width integers and `u32`-length-prefixed byte strings.
//!
//! The frames travel over the channel's Unix socket, or through the shared-memory rings
//! of [`ring`] (its own byte table), with the socket kept for doorbells and death.

mod codec;
pub mod control;
mod fields;
mod messages;
pub mod ring;
mod stream_ids;
mod websocket;

pub use codec::{Decoder, Frame, HEADER_LEN, Header, encode_frame, encode_frame_header};
pub use fields::{FieldReader, FieldWriter};
pub use messages::{BodyFile, Hello, RequestHead, RequestHeadRef, ResponseHead, Scheme, Trailers};
pub use stream_ids::{StreamMap, StreamSet};
pub use websocket::{
    MAX_CLOSE_REASON, WS_WINDOW, WsAccept, WsClose, WsCredit, WsMessage, truncate_utf8,
};

/// The protocol version spoken by this build; both sides must agree.
pub const VERSION: u16 = 4;

/// Magic bytes opening the Hello payload, so a stray writer is detected at once.
pub const MAGIC: &[u8; 4] = b"RWSG";

/// The largest payload one frame may carry. Bodies are split into frames this size.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The most headers one head may carry (a request's are bounded far lower by the front tier).
pub const MAX_HEADERS: usize = 10_000;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Worker → front, stream 0, first frame: who the worker is.
    Hello = 1,
    /// Front → worker: opens a stream with the parsed request head.
    RequestHead = 2,
    /// Either way: a chunk of the stream's body.
    Body = 3,
    /// Front → worker: the whole request body is in this file.
    BodyFile = 4,
    /// Either way: the sender has sent all of the stream.
    End = 5,
    /// Worker → front: the response status and headers.
    ResponseHead = 6,
    /// Either way: the stream is abandoned (payload: a reason, UTF-8).
    Abort = 7,
    /// Worker → front, stream 0: send me no more requests; I will exit.
    Retire = 8,
    /// Front → worker, stream 0: no request follows this frame.
    Retired = 9,
    /// Front → worker, stream 0, empty, sent on the socket with the shared-memory
    /// rings' descriptor (SCM_RIGHTS): from now on every frame travels in the rings.
    Ring = 10,
    /// Worker → front: the response's trailer fields, after its body, before its End.
    Trailers = 11,
    /// Front → worker: opens a WebSocket stream with the handshake's request head.
    WsConnect = 20,
    /// Worker → front: the application accepted the WebSocket.
    WsAccept = 21,
    /// Either way: a piece of a WebSocket message.
    WsMessage = 22,
    /// Either way: the WebSocket closes (code and reason).
    WsClose = 23,
    /// Either way: more WsMessage bytes may be sent.
    WsCredit = 24,
}

impl Kind {
    /// The kind for a wire byte, if it names one.
    pub fn from_u8(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Hello,
            2 => Kind::RequestHead,
            3 => Kind::Body,
            4 => Kind::BodyFile,
            5 => Kind::End,
            6 => Kind::ResponseHead,
            7 => Kind::Abort,
            8 => Kind::Retire,
            9 => Kind::Retired,
            10 => Kind::Ring,
            11 => Kind::Trailers,
            20 => Kind::WsConnect,
            21 => Kind::WsAccept,
            22 => Kind::WsMessage,
            23 => Kind::WsClose,
            24 => Kind::WsCredit,
            _ => return None,
        })
    }
}

/// Everything that can be wrong with bytes received on the channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    FrameTooLarge(u32),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("{0} has {1} trailing bytes")]
    TrailingBytes(&'static str, usize),
    #[error("too many headers ({0})")]
    TooManyHeaders(u32),
    #[error("bad magic in hello")]
    BadMagic,
    #[error("protocol version {0} is not {VERSION}")]
    Version(u16),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

#[cfg(test)]
mod tests;

/// The fuzzing entry point: decodes frames and every typed payload from arbitrary bytes.
/// It must return for any input; a panic or an abort is a bug.
pub fn fuzz_decode(data: &[u8]) {
    let mut decoder = Decoder::new();
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        let payload = frame.payload;
        let _ = Hello::decode(payload.clone());
        let _ = RequestHead::decode(payload.clone());
        let _ = ResponseHead::decode(payload.clone());
        let _ = Trailers::decode(payload.clone());
        let _ = WsAccept::decode(payload.clone());
        let _ = WsMessage::decode(payload.clone());
        let _ = WsClose::decode(payload.clone());
        let _ = WsCredit::decode(payload.clone());
        let _ = BodyFile::decode(payload);
    }
}

/// The fuzzing entry point for the shared-memory rings: overwrites a fresh region's
/// header and data with `data`, as a hostile worker could, then drives both sides of both
/// rings over it and decodes whatever frames come out. Every call must end in a value or
/// a [`ring::RingError`]; a panic, an abort or a read outside the mapping is a bug.
pub fn fuzz_ring(data: &[u8]) {
    let Ok((map, fd)) = ring::RingMap::create(ring::MIN_CAPACITY) else {
        return;
    };
    if ring::scribble(&fd, data).is_err() {
        return;
    }
    // The front tier's view (its own positions intact), then the worker's view of the
    // same bytes through `open`, which takes up the scribbled positions if they pass.
    exercise_ring(&map, data);
    if let Ok(opened) = fd
        .try_clone()
        .map_err(ring::RingError::from)
        .and_then(ring::RingMap::open)
    {
        exercise_ring(&opened, data);
    }
}

/// Every operation of both rings once, with the invariants any answer must keep.
fn exercise_ring(map: &ring::RingMap, data: &[u8]) {
    let capacity = map.capacity();
    for ring in [map.to_front(), map.to_worker()] {
        let max = data.first().map_or(capacity, |&b| usize::from(b) * 64 + 1);
        let mut out = bytes::BytesMut::new();
        if let Ok(n) = ring.pop_into(&mut out, max) {
            assert!(n <= max.min(capacity) && out.len() == n);
        }
        let _ = ring.pending().map(|n| assert!(n <= capacity));
        let _ = ring.take_waiting();
        if let Ok(false) = ring.park() {
            let _ = ring.pop_into(&mut out, capacity);
        }
        ring.unpark();
        let _ = ring.free().map(|n| assert!(n <= capacity));
        let _ = ring.push(&data[..data.len().min(capacity)]);
        let _ = ring.push_partial(data);
        let _ = ring.take_parked();
        let _ = ring.wait_for_room(data.len());
        let mut decoder = Decoder::new();
        while let Ok(Some(frame)) = decoder.decode(&mut out) {
            let _ = ResponseHead::decode(frame.payload.clone());
            let _ = RequestHead::decode(frame.payload);
        }
    }
}
