//! permessage-deflate (RFC 7692): the offer read and answered, messages inflated and
//! deflated with flate2's raw DEFLATE.
//!
//! rwsgi always answers with `server_no_context_takeover`: its compressor starts afresh
//! for each message (§7.1.1.1), so no message's compression depends on one the client
//! may not have kept. The client's messages are inflated with a context kept across
//! them (what the client expects unless it offered `client_no_context_takeover`), and a
//! window of 15 bits, which reads anything a smaller window wrote. An offer asking the
//! server for a window under 15 bits is declined: flate2's Rust backend cannot bound
//! its window.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The end of a sync flush, taken off each compressed message (§7.2.1) and put back
/// before inflating it (§7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What was agreed: the extension's response header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// The `Sec-WebSocket-Extensions` value of the handshake's response.
    pub response: &'static str,
}

/// Reads the client's `Sec-WebSocket-Extensions` values and accepts the first
/// permessage-deflate offer rwsgi can honour (§5.1), if any.
pub fn negotiate<'a>(offers: impl Iterator<Item = &'a [u8]>) -> Option<Agreed> {
    for value in offers {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for offer in value.split(',') {
            let mut params = offer.split(';').map(str::trim);
            if params.next() != Some("permessage-deflate") {
                continue;
            }
            if let Some(agreed) = accept(params) {
                return Some(agreed);
            }
        }
    }
    None
}

/// The parameters of one offer, or None when one is unknown, repeated or refused.
fn accept<'a>(params: impl Iterator<Item = &'a str>) -> Option<Agreed> {
    let mut seen: Vec<&str> = Vec::new();
    let mut client_no_context = false;
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover", None) => {}
            ("client_no_context_takeover", None) => client_no_context = true,
            ("server_max_window_bits", Some("15")) => {}
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits))
                if bits.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b)) => {}
            _ => return None,
        }
    }
    Some(Agreed {
        response: match client_no_context {
            true => "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            false => "permessage-deflate; server_no_context_takeover",
        },
    })
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit.
    TooLarge,
    /// It is not DEFLATE data.
    Corrupt,
}

/// Inflates a connection's compressed client messages.
pub struct Inflater(Box<Decompress>);

impl Inflater {
    /// A fresh context (raw DEFLATE, a 15-bit window).
    pub fn new() -> Inflater {
        Inflater(Box::new(Decompress::new(false)))
    }

    /// The message `data` compressed, inflated, at most `max` bytes.
    pub fn inflate(&mut self, data: &[u8], max: usize) -> Result<Bytes, InflateError> {
        let mut out = Vec::new();
        let mut scratch = vec![0u8; 32 * 1024];
        for piece in [data, &TAIL[..]] {
            let mut input = piece;
            loop {
                let (in_before, out_before) = (self.0.total_in(), self.0.total_out());
                let status = self
                    .0
                    .decompress(input, &mut scratch, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                let used = (self.0.total_in() - in_before) as usize;
                let made = (self.0.total_out() - out_before) as usize;
                input = &input[used..];
                // Checked before it is kept: a small message may inflate to gigabytes.
                if out.len() + made > max {
                    return Err(InflateError::TooLarge);
                }
                out.extend_from_slice(&scratch[..made]);
                if status == Status::StreamEnd {
                    // A final block ends the stream (allowed, §7.2.3.1): the next
                    // message starts a new one.
                    self.0.reset(false);
                    return Ok(out.into());
                }
                let drained = made < scratch.len();
                if (input.is_empty() && drained) || (used == 0 && made == 0) {
                    break;
                }
            }
        }
        Ok(out.into())
    }
}

/// Deflates the server's messages, each from a fresh context.
pub struct Deflater(Box<Compress>);

impl Deflater {
    /// A compressor at flate2's fast level: messages are small and latency counts.
    pub fn new() -> Deflater {
        Deflater(Box::new(Compress::new(Compression::fast(), false)))
    }

    /// Compresses one piece of a message; `last` ends the message (its tail is taken
    /// off and the context reset for the next one).
    pub fn deflate(&mut self, data: &[u8], last: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut input = data;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = self.0.total_in();
            // A sync flush ends every piece on a byte boundary, ready to be sent.
            if self
                .0
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            input = &input[(self.0.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if last {
            if out.ends_with(&TAIL) {
                out.truncate(out.len() - TAIL.len());
            }
            self.0.reset();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(offer: &str) -> Option<&'static str> {
        negotiate([offer.as_bytes()].into_iter()).map(|a| a.response)
    }

    #[test]
    fn offers_are_accepted_or_declined_by_their_parameters() {
        assert_eq!(
            agreed("permessage-deflate; client_max_window_bits"),
            Some("permessage-deflate; server_no_context_takeover")
        );
        assert_eq!(
            agreed("x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover"),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        assert_eq!(
            agreed("permessage-deflate; server_max_window_bits=10"),
            None
        );
        assert_eq!(
            agreed("permessage-deflate; server_max_window_bits=10, permessage-deflate"),
            Some("permessage-deflate; server_no_context_takeover"),
            "the next offer is taken"
        );
        assert_eq!(agreed("permessage-deflate; foo"), None);
        assert_eq!(
            agreed("permessage-deflate; client_no_context_takeover; client_no_context_takeover"),
            None
        );
        assert_eq!(agreed("x-other"), None);
    }

    #[test]
    fn what_is_deflated_in_pieces_inflates_whole_and_within_its_bound() {
        let message: Vec<u8> = (0..100_000).map(|i| (i % 7) as u8 + b'a').collect();
        let mut deflater = Deflater::new();
        let mut wire = deflater.deflate(&message[..50_000], false);
        wire.extend(deflater.deflate(&message[50_000..], true));
        assert!(wire.len() < message.len() / 10);
        let mut inflater = Inflater::new();
        assert_eq!(&inflater.inflate(&wire, 1 << 20).unwrap()[..], &message[..]);
        // The next message, from a fresh context, inflates with the kept one.
        let second = deflater.deflate(b"hello", true);
        assert_eq!(&inflater.inflate(&second, 100).unwrap()[..], b"hello");
        let empty = deflater.deflate(b"", true);
        assert_eq!(&inflater.inflate(&empty, 100).unwrap()[..], b"");
        let bomb = Deflater::new().deflate(&vec![0; 1 << 20], true);
        assert_eq!(
            Inflater::new().inflate(&bomb, 1000),
            Err(InflateError::TooLarge)
        );
        assert_eq!(
            Inflater::new().inflate(&[0xff; 100], 1000),
            Err(InflateError::Corrupt)
        );
    }
}
