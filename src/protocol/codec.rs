//! Frame boundaries: splitting a byte stream into frames and writing frame headers.

use bytes::{Buf, Bytes, BytesMut};

use super::{Kind, MAX_PAYLOAD, ProtocolError};

/// Bytes in a frame header: length (4), kind (1), flags (1), stream (4).
pub const HEADER_LEN: usize = 10;

/// One decoded frame; the payload shares the receive buffer's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is.
    pub kind: Kind,
    /// Reserved bits; senders write 0 and receivers ignore them.
    pub flags: u8,
    /// The stream it belongs to (0 for Hello).
    pub stream: u32,
    /// The payload, at most [`MAX_PAYLOAD`] bytes.
    pub payload: Bytes,
}

/// A frame header's fields, unchecked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The payload's length.
    pub length: u32,
    /// The kind's byte ([`Kind::from_u8`] says which, if any).
    pub kind: u8,
    pub stream: u32,
}

impl Header {
    /// Reads the header that `bytes` begins with; `bytes` holds at least [`HEADER_LEN`].
    pub fn read(bytes: &[u8]) -> Header {
        Header {
            length: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            kind: bytes[4],
            stream: u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]),
        }
    }
}

/// An incremental frame decoder: feed it any split of the byte stream.
#[derive(Debug, Default)]
pub struct Decoder {
    _private: (),
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Decoder {
        Decoder { _private: () }
    }

    /// Takes one whole frame off the front of `buf`, or returns `Ok(None)` when more
    /// bytes are needed (having reserved room for them). A length over [`MAX_PAYLOAD`]
    /// or an unknown kind is an error; the connection cannot be resynchronised after it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = Header::read(&buf[..HEADER_LEN]);
        let length = header.length;
        if length as usize > MAX_PAYLOAD {
            return Err(ProtocolError::FrameTooLarge(length));
        }
        let kind = Kind::from_u8(header.kind).ok_or(ProtocolError::UnknownKind(header.kind))?;
        let total = HEADER_LEN + length as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let flags = buf[5];
        let stream = header.stream;
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(length as usize).freeze();
        Ok(Some(Frame {
            kind,
            flags,
            stream,
            payload,
        }))
    }
}

/// Appends a frame header for a payload of `length` bytes.
///
/// Callers split larger payloads; a length over [`MAX_PAYLOAD`] here is a bug, so it is
/// checked in debug builds.
pub fn encode_frame_header(out: &mut Vec<u8>, kind: Kind, stream: u32, length: usize) {
    debug_assert!(length <= MAX_PAYLOAD);
    out.extend_from_slice(&(length as u32).to_be_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// Appends one whole frame. `payload` must not exceed [`MAX_PAYLOAD`].
pub fn encode_frame(out: &mut Vec<u8>, kind: Kind, stream: u32, payload: &[u8]) {
    encode_frame_header(out, kind, stream, payload.len());
    out.extend_from_slice(payload);
}
