//! RFC 6455 §5 framing, with no I/O: the client's frames parsed and checked into whole
//! messages and control frames ([`Reader`]), the server's frames written ([`encode`]).
//!
//! Every rule a client can break is a [`Violation`] carrying the close code that says
//! so (§7.4.1): 1002 for the framing rules, 1007 for text that is not UTF-8, 1009 for a
//! message larger than `--ws-max-size`. A length is checked against that bound before
//! anything is allocated for it. permessage-deflate (RFC 7692) is applied here too: a
//! compressed message is inflated within the same bound.

use bytes::{Buf, Bytes, BytesMut};

use super::deflate::Inflater;

/// What a client frame's opcode says (§5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

impl Opcode {
    fn from_u8(byte: u8) -> Option<Opcode> {
        Some(match byte {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A rule of RFC 6455 the client broke, and the close code that answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why} (close {code})")]
pub struct Violation {
    /// 1002, 1007 or 1009.
    pub code: u16,
    /// What was wrong, for the close frame's reason and the log.
    pub why: &'static str,
}

fn protocol(why: &'static str) -> Violation {
    Violation { code: 1002, why }
}

/// What the client sent: a whole message or a control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A whole data message (reassembled, inflated, and for text checked as UTF-8).
    Message { text: bool, data: Bytes },
    /// A ping, to be answered with a pong carrying the same payload (§5.5.2).
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame: its code (None when it had no body: 1005 for the application)
    /// and reason.
    Close(Option<u16>, String),
}

/// A data message being reassembled from its fragments (§5.4).
struct Partial {
    text: bool,
    compressed: bool,
    data: BytesMut,
}

/// The parser of one connection's client frames.
pub struct Reader {
    max_size: usize,
    inflater: Option<Inflater>,
    partial: Option<Partial>,
}

/// A parsed frame header.
struct Head {
    fin: bool,
    rsv1: bool,
    opcode: Opcode,
    mask: [u8; 4],
    /// Bytes of the header itself.
    header: usize,
    length: usize,
}

impl Reader {
    /// A reader refusing messages over `max_size` bytes; `inflater` when
    /// permessage-deflate was negotiated.
    pub fn new(max_size: usize, inflater: Option<Inflater>) -> Reader {
        Reader {
            max_size,
            inflater,
            partial: None,
        }
    }

    /// Bytes of a fragmented message gathered so far.
    pub fn gathered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.data.len())
    }

    /// The next message or control frame whole in `buf` (consumed from it), None when
    /// more bytes are needed.
    pub fn read(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, Violation> {
        loop {
            let Some(head) = self.head(buf)? else {
                return Ok(None);
            };
            // The buffer grows as the bytes come, not by what the header announces: a
            // client cannot make the server set aside --ws-max-size with a few bytes.
            if buf.len() < head.header + head.length {
                return Ok(None);
            }
            buf.advance(head.header);
            let mut payload = buf.split_to(head.length);
            unmask(&mut payload, head.mask);
            if let Some(incoming) = self.frame(head, payload)? {
                return Ok(Some(incoming));
            }
        }
    }

    /// The header at the start of `buf`, checked (§5.2), or None while incomplete.
    fn head(&self, buf: &[u8]) -> Result<Option<Head>, Violation> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 {
            return Err(protocol("reserved bits set"));
        }
        let opcode = Opcode::from_u8(b0 & 0x0f).ok_or_else(|| protocol("unknown opcode"))?;
        // §5.1: a server MUST close the connection upon a frame that is not masked.
        if b1 & 0x80 == 0 {
            return Err(protocol("client frame not masked"));
        }
        let (length, at) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(n) => (u64::from(u16::from_be_bytes([n[0], n[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(n) => {
                    let mut bytes = [0; 8];
                    bytes.copy_from_slice(n);
                    (u64::from_be_bytes(bytes), 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if opcode.is_control() {
            // §5.5: control frames carry at most 125 bytes and are never fragmented.
            if length > 125 {
                return Err(protocol("control frame longer than 125 bytes"));
            }
            if !fin {
                return Err(protocol("fragmented control frame"));
            }
            if rsv1 {
                return Err(protocol("compressed control frame"));
            }
        } else {
            match (&self.partial, opcode) {
                (None, Opcode::Continuation) => {
                    return Err(protocol("continuation of no message"));
                }
                (Some(_), Opcode::Text | Opcode::Binary) => {
                    return Err(protocol("new message before the last one ended"));
                }
                _ => {}
            }
            // RFC 7692 §6: RSV1 marks the first frame of a compressed message only.
            if rsv1 && (self.inflater.is_none() || opcode == Opcode::Continuation) {
                return Err(protocol("RSV1 set without permessage-deflate"));
            }
            let so_far = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
            if so_far.saturating_add(length) > self.max_size as u64 {
                return Err(Violation {
                    code: 1009,
                    why: "message larger than --ws-max-size",
                });
            }
        }
        let Some(mask) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        Ok(Some(Head {
            fin,
            rsv1,
            opcode,
            mask: [mask[0], mask[1], mask[2], mask[3]],
            header: at + 4,
            // Bounded by max_size (a usize) or 125 above.
            length: length as usize,
        }))
    }

    /// One whole frame: a message or control frame when it completes one.
    fn frame(&mut self, head: Head, payload: BytesMut) -> Result<Option<Incoming>, Violation> {
        match head.opcode {
            Opcode::Ping => Ok(Some(Incoming::Ping(payload.freeze()))),
            Opcode::Pong => Ok(Some(Incoming::Pong)),
            Opcode::Close => {
                close_payload(&payload).map(|(code, reason)| Some(Incoming::Close(code, reason)))
            }
            Opcode::Text | Opcode::Binary => {
                self.partial = Some(Partial {
                    text: head.opcode == Opcode::Text,
                    compressed: head.rsv1,
                    data: payload,
                });
                self.finish(head.fin)
            }
            Opcode::Continuation => {
                if let Some(partial) = &mut self.partial {
                    partial.data.extend_from_slice(&payload);
                }
                self.finish(head.fin)
            }
        }
    }

    /// The message, once its last fragment has come.
    fn finish(&mut self, fin: bool) -> Result<Option<Incoming>, Violation> {
        if !fin {
            return Ok(None);
        }
        let Some(partial) = self.partial.take() else {
            return Ok(None);
        };
        let data = match (&mut self.inflater, partial.compressed) {
            (Some(inflater), true) => {
                inflater
                    .inflate(&partial.data, self.max_size)
                    .map_err(|err| match err {
                        super::deflate::InflateError::TooLarge => Violation {
                            code: 1009,
                            why: "message larger than --ws-max-size once inflated",
                        },
                        super::deflate::InflateError::Corrupt => {
                            protocol("permessage-deflate data is corrupt")
                        }
                    })?
            }
            _ => partial.data.freeze(),
        };
        // §8.1: a text message that is not UTF-8 fails the connection (1007, §7.4.1).
        if partial.text && std::str::from_utf8(&data).is_err() {
            return Err(Violation {
                code: 1007,
                why: "text message is not UTF-8",
            });
        }
        Ok(Some(Incoming::Message {
            text: partial.text,
            data,
        }))
    }
}

/// A close frame's body (§5.5.1): none, or a code and a UTF-8 reason.
fn close_payload(payload: &[u8]) -> Result<(Option<u16>, String), Violation> {
    match payload {
        [] => Ok((None, String::new())),
        [_] => Err(protocol("close frame body of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !valid_close_code(code) {
                return Err(protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Violation {
                code: 1007,
                why: "close reason is not UTF-8",
            })?;
            Ok((Some(code), reason.to_owned()))
        }
    }
}

/// Whether a close frame may carry `code` (§7.4: 1004-1006 and 1015 are never sent;
/// 1012-1014 were registered with IANA since; 3000-4999 belong to libraries and
/// applications).
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Applies (or removes) the masking key (§5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Appends a server frame (never masked, §5.1) carrying `payload`.
pub fn encode(out: &mut Vec<u8>, fin: bool, rsv1: bool, opcode: Opcode, payload: &[u8]) {
    let b0 = u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode as u8;
    out.push(b0);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// A close frame's payload: the code, then a reason cut to fit 125 bytes.
pub fn close_body(code: u16, reason: &str) -> Vec<u8> {
    let reason = crate::protocol::truncate_utf8(reason, crate::protocol::MAX_CLOSE_REASON);
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason.as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![b0];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut masked = payload.to_vec();
        unmask(&mut masked, mask);
        out.extend_from_slice(&masked);
        out
    }

    /// Everything `bytes` yields, fed at every split point: how the bytes arrive must
    /// not change what comes out.
    fn read_all(max: usize, bytes: &[u8]) -> Result<Vec<Incoming>, Violation> {
        let mut first: Option<Result<Vec<Incoming>, Violation>> = None;
        for split in 0..=bytes.len() {
            let mut reader = Reader::new(max, None);
            let mut buf = BytesMut::new();
            let mut seen = Vec::new();
            let result = (|| {
                for part in [&bytes[..split], &bytes[split..]] {
                    buf.extend_from_slice(part);
                    while let Some(incoming) = reader.read(&mut buf)? {
                        seen.push(incoming);
                    }
                }
                Ok(seen)
            })();
            match &first {
                None => first = Some(result),
                Some(expected) => assert_eq!(&result, expected, "split at {split}"),
            }
        }
        first.unwrap_or(Ok(Vec::new()))
    }

    fn text(data: &str) -> Incoming {
        Incoming::Message {
            text: true,
            data: Bytes::copy_from_slice(data.as_bytes()),
        }
    }

    #[test]
    fn fragments_are_reassembled_with_control_frames_between_them() {
        let mut bytes = client(0x01, b"hel");
        bytes.extend(client(0x89, b"p"));
        bytes.extend(client(0x00, b"lo "));
        bytes.extend(client(0x8a, b""));
        bytes.extend(client(0x80, "wörld".as_bytes()));
        bytes.extend(client(0x82, &[0, 255]));
        let seen = read_all(1 << 20, &bytes).unwrap();
        assert_eq!(
            seen,
            [
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Pong,
                text("hello wörld"),
                Incoming::Message {
                    text: false,
                    data: Bytes::from_static(&[0, 255])
                },
            ]
        );
    }

    #[test]
    fn the_lengths_of_16_and_64_bits_are_read() {
        for n in [126, 65_535, 65_536, 200_000] {
            let payload = vec![b'a'; n];
            let seen = read_all(1 << 20, &client(0x82, &payload));
            assert!(
                matches!(&seen.unwrap()[..], [Incoming::Message { data, .. }] if data.len() == n)
            );
        }
    }

    #[test]
    fn each_broken_rule_has_its_close_code() {
        let code = |bytes: Vec<u8>| read_all(100, &bytes).unwrap_err().code;
        let mut unmasked = client(0x81, b"hi");
        unmasked[1] &= 0x7f;
        unmasked.drain(2..6);
        assert_eq!(code(unmasked), 1002);
        assert_eq!(code(client(0xc1, b"hi")), 1002, "RSV1 without an extension");
        assert_eq!(code(client(0xa1, b"hi")), 1002, "RSV2");
        assert_eq!(code(client(0x83, b"hi")), 1002, "opcode 3");
        assert_eq!(code(client(0x80, b"hi")), 1002, "continuation of nothing");
        assert_eq!(code(client(0x09, b"")), 1002, "fragmented ping");
        assert_eq!(code(client(0x89, &[0; 126])), 1002, "long ping");
        let mut two = client(0x01, b"a");
        two.extend(client(0x81, b"b"));
        assert_eq!(code(two), 1002, "a new message inside another");
        assert_eq!(code(client(0x81, &[0xff, 0xfe])), 1007);
        // The UTF-8 check is of the whole message: a character cut between fragments is
        // fine.
        let mut split = client(0x01, &[0xc3]);
        split.extend(client(0x80, &[0xa9]));
        assert_eq!(read_all(100, &split).unwrap(), [text("é")]);
        assert_eq!(code(client(0x82, &[0; 101])), 1009);
        let mut growing = client(0x02, &[0; 60]);
        growing.extend(client(0x80, &[0; 41]));
        assert_eq!(code(growing), 1009);
        assert_eq!(code(client(0x88, &[3])), 1002, "a one-byte close body");
        assert_eq!(code(client(0x88, &1005u16.to_be_bytes())), 1002);
        assert_eq!(code(client(0x88, &999u16.to_be_bytes())), 1002);
        assert_eq!(code(client(0x88, &[3, 232, 0xff])), 1007);
    }

    #[test]
    fn close_frames_carry_their_code_and_reason() {
        let mut body = 4000u16.to_be_bytes().to_vec();
        body.extend_from_slice(b"bye");
        assert_eq!(
            read_all(100, &client(0x88, &body)).unwrap(),
            [Incoming::Close(Some(4000), "bye".into())]
        );
        assert_eq!(
            read_all(100, &client(0x88, b"")).unwrap(),
            [Incoming::Close(None, String::new())]
        );
    }

    #[test]
    fn server_frames_are_unmasked_with_the_shortest_length() {
        for (n, header) in [(5, 2), (126, 4), (70_000, 10)] {
            let mut out = Vec::new();
            encode(&mut out, true, false, Opcode::Binary, &vec![7; n]);
            assert_eq!(out.len(), header + n);
            assert_eq!(out[0], 0x82);
            assert_eq!(out[1] & 0x80, 0);
        }
        assert_eq!(close_body(1000, &"x".repeat(200)).len(), 125);
    }
}
