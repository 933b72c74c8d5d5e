//! The typed payloads of a WebSocket stream (protocol version 4): what an accept, a
//! message piece, a close and a credit say. The frames and their order are specified in
//! the module documentation of `protocol`; RFC 6455 itself (handshake, framing, masking,
//! pings) never crosses the channel.

use bytes::Bytes;

use super::fields::FieldReader;
use super::messages::{encode_with, read_headers, write_headers};
use super::{Kind, ProtocolError};

/// Bytes of [`Kind::WsMessage`] data each side may send on a WebSocket stream before
/// the other grants more with [`Kind::WsCredit`]: what either side holds for one
/// WebSocket whose peer does not keep up.
pub const WS_WINDOW: u32 = 1 << 20;

/// The longest close reason: a close frame's payload is at most 125 bytes, two of them
/// the code (RFC 6455 §5.5).
pub const MAX_CLOSE_REASON: usize = 123;

/// Worker → front: the application accepted the WebSocket (`websocket.accept`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsAccept {
    /// The subprotocol chosen, if any (`Sec-WebSocket-Protocol`).
    pub subprotocol: Option<Bytes>,
    /// Extra response header fields, names lower-case, already checked by the worker.
    pub headers: Vec<(Bytes, Bytes)>,
}

impl WsAccept {
    /// Appends the WsAccept frame of `stream`.
    pub fn encode(&self, out: &mut Vec<u8>, stream: u32) -> Result<(), ProtocolError> {
        encode_with(out, Kind::WsAccept, stream, |w| {
            w.u8(u8::from(self.subprotocol.is_some()))
                .bytes(self.subprotocol.as_deref().unwrap_or_default());
            write_headers(w, self.headers.iter().map(|(n, v)| (&n[..], &v[..])));
        })
    }

    /// Reads a WsAccept payload.
    pub fn decode(payload: Bytes) -> Result<WsAccept, ProtocolError> {
        let mut r = FieldReader::new(payload, "websocket accept");
        let present = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(ProtocolError::Invalid("subprotocol flag")),
        };
        let subprotocol = r.bytes()?;
        let headers = read_headers(&mut r)?;
        r.finish()?;
        Ok(WsAccept {
            subprotocol: present.then_some(subprotocol),
            headers,
        })
    }
}

/// The flags byte opening a [`Kind::WsMessage`] payload.
pub mod message_flags {
    /// The message is text (UTF-8); else bytes.
    pub const TEXT: u8 = 1;
    /// This piece ends its message.
    pub const LAST: u8 = 2;
}

/// One piece of a WebSocket message, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsMessage {
    /// A text message (its pieces together are UTF-8); else a bytes message.
    pub text: bool,
    /// This piece ends the message.
    pub last: bool,
    /// The piece's bytes.
    pub data: Bytes,
}

impl WsMessage {
    /// Appends a WsMessage frame; `data` must fit in one frame.
    pub fn encode(
        out: &mut Vec<u8>,
        stream: u32,
        text: bool,
        last: bool,
        data: &[u8],
    ) -> Result<(), ProtocolError> {
        let flags =
            if text { message_flags::TEXT } else { 0 } | if last { message_flags::LAST } else { 0 };
        encode_with(out, Kind::WsMessage, stream, |w| {
            w.u8(flags).raw(data);
        })
    }

    /// Reads a WsMessage payload (the data shares its memory).
    pub fn decode(mut payload: Bytes) -> Result<WsMessage, ProtocolError> {
        let Some(&flags) = payload.first() else {
            return Err(ProtocolError::Truncated("websocket message"));
        };
        if flags & !(message_flags::TEXT | message_flags::LAST) != 0 {
            return Err(ProtocolError::Invalid("websocket message flags"));
        }
        let data = payload.split_off(1);
        Ok(WsMessage {
            text: flags & message_flags::TEXT != 0,
            last: flags & message_flags::LAST != 0,
            data,
        })
    }
}

/// Either way: the WebSocket closes with this code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsClose {
    /// The close code (RFC 6455 §7.4): the client's, the application's, or the front
    /// tier's own (1006 when the connection ended without a close frame).
    pub code: u16,
    /// The reason, UTF-8, at most [`MAX_CLOSE_REASON`] bytes.
    pub reason: Bytes,
}

impl WsClose {
    /// Appends a WsClose frame; a longer reason is cut at a character boundary.
    pub fn encode(out: &mut Vec<u8>, stream: u32, code: u16, reason: &str) {
        let reason = truncate_utf8(reason, MAX_CLOSE_REASON);
        let fits = encode_with(out, Kind::WsClose, stream, |w| {
            w.u16(code).raw(reason.as_bytes());
        });
        debug_assert!(fits.is_ok());
    }

    /// Reads a WsClose payload.
    pub fn decode(payload: Bytes) -> Result<WsClose, ProtocolError> {
        let mut r = FieldReader::new(payload, "websocket close");
        let code = r.u16()?;
        let reason = r.rest();
        if reason.len() > MAX_CLOSE_REASON || std::str::from_utf8(&reason).is_err() {
            return Err(ProtocolError::Invalid("websocket close reason"));
        }
        Ok(WsClose { code, reason })
    }
}

/// Either way: the receiver of WsMessage data grants its sender `bytes` more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsCredit {
    /// Bytes of WsMessage data (not counting the flags byte).
    pub bytes: u32,
}

impl WsCredit {
    /// Appends a WsCredit frame.
    pub fn encode(out: &mut Vec<u8>, stream: u32, bytes: u32) {
        let fits = encode_with(out, Kind::WsCredit, stream, |w| {
            w.u32(bytes);
        });
        debug_assert!(fits.is_ok());
    }

    /// Reads a WsCredit payload.
    pub fn decode(payload: Bytes) -> Result<WsCredit, ProtocolError> {
        let mut r = FieldReader::new(payload, "websocket credit");
        let bytes = r.u32()?;
        r.finish()?;
        Ok(WsCredit { bytes })
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
