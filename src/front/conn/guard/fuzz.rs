//! The guard's fuzz entry point, a split-point differential: the same request stream
//! given to the [`Checker`] whole, a byte at a time and cut at points the input picks
//! must get the same verdict (the bytes released to hyper, the refusal and its reason,
//! the heads counted, the state left). hyper reads whatever the network delivers, so a
//! verdict that depended on where a read ended would let a client choose it by timing
//! its packets. Any input must also end in a verdict, never a panic.
//!
//! Built for the fuzz target (`fuzz/fuzz_targets/guard.rs`) and for the unit test below,
//! which runs it over seeded inputs so that every test run exercises it.

use super::check::{Checker, Limits, Reject};

/// Inputs longer than this are not also fed a byte at a time (quadratic in the worst
/// case: a held head is offered again with every byte).
const BYTEWISE_MAX: usize = 4096;

/// The limits a connection normally has (gunicorn's defaults).
const DEFAULT_LIMITS: Limits = Limits {
    request_line: 4094,
    fields: 100,
    field_size: 8190,
};

/// Limits small enough for short inputs to reach each of them.
const SMALL_LIMITS: Limits = Limits {
    request_line: 24,
    fields: 3,
    field_size: 32,
};

/// Everything a stream fed to a checker ends in.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    /// Bytes released to hyper, in all.
    released: usize,
    /// The refusal, if the stream was refused.
    refused: Option<Reject>,
    refused_in_head: bool,
    heads: u64,
    between_requests: bool,
    in_head: bool,
    passable: u64,
}

/// The fuzz target's body. The input is `[flags, cuts…, stream…]`: bit 0 of `flags`
/// picks the small limits, bits 1 to 4 how many cuts follow (two bytes each, big-endian,
/// taken modulo the stream's length); the rest is the request stream.
pub fn split_points(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let limits = if flags & 1 == 1 {
        SMALL_LIMITS
    } else {
        DEFAULT_LIMITS
    };
    let cut_bytes = (usize::from(flags >> 1) & 0xf) * 2;
    let (cuts, stream) = rest.split_at(cut_bytes.min(rest.len()));
    let mut cuts: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|pair| usize::from(u16::from_be_bytes([pair[0], pair[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();

    let whole = feed(limits, [stream]);
    let mut pieces = Vec::new();
    let mut from = 0;
    for &cut in &cuts {
        pieces.push(&stream[from..cut]);
        from = cut;
    }
    pieces.push(&stream[from..]);
    assert_eq!(feed(limits, pieces), whole, "cut at {cuts:?}");
    if stream.len() <= BYTEWISE_MAX {
        assert_eq!(feed(limits, stream.chunks(1)), whole, "a byte at a time");
    }
}

/// Feeds `pieces` one after the other as reads of the guard would: bytes a call did not
/// examine are offered again with the next piece; nothing follows a refusal.
fn feed<'a>(limits: Limits, pieces: impl IntoIterator<Item = &'a [u8]>) -> Verdict {
    let mut checker = Checker::new(limits);
    let mut pending: Vec<u8> = Vec::new();
    let mut released = 0;
    let mut refused = None;
    for piece in pieces {
        pending.extend_from_slice(piece);
        match checker.examine(&pending) {
            Ok(examined) => {
                assert!(
                    examined.examined <= pending.len(),
                    "examined past the input"
                );
                pending.drain(..examined.examined);
                released += examined.released;
            }
            Err(refusal) => {
                released += refusal.released;
                refused = Some(refusal.reject);
                break;
            }
        }
    }
    Verdict {
        released,
        refused,
        refused_in_head: checker.refused_in_head(),
        heads: checker.heads(),
        between_requests: checker.between_requests(),
        in_head: checker.in_head(),
        passable: checker.passable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeded::Rng;

    /// Pieces of request streams, well-formed and not: joined at random, they reach
    /// every state of the checker far more often than random bytes do.
    const FRAGMENTS: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n",
        b"POST /upload?x=1 HTTP/1.1\r\n",
        b"GET http://a/x HTTP/1.0\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"Host: a\r\n",
        b"Host: b\r\n",
        b"Upgrade: websocket\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: 5, 5\r\n",
        b"Content-Length: 12\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Content-Type: a/b\r\n",
        b"X-Long-Field-Name: a value long enough for the small limits\r\n",
        b"\r\n",
        b"\r\n\r\n",
        b"5\r\nhello\r\n",
        b"5;ext=\"a b\"\r\nhello\r\n",
        b"0\r\n\r\n",
        b"0\r\nX-Trailer: 1\r\n\r\n",
        b"0\r\nHost: x\r\n\r\n",
        b"hello",
        b"\n",
        b"\r",
        b" ",
        b":",
        b"\0",
    ];

    #[test]
    fn the_verdict_does_not_depend_on_where_reads_end() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut passed, mut refused) = (0, 0);
        for _ in 0..3000 {
            let cuts = rng.below(16);
            let mut input = vec![(rng.next() as u8 & 1) | (cuts as u8) << 1];
            for _ in 0..cuts {
                input.extend_from_slice(&(rng.next() as u16).to_be_bytes());
            }
            let mut stream = Vec::new();
            for _ in 0..rng.below(12) {
                match rng.below(20) {
                    // Now and then a few random bytes, to land in the middle of things.
                    0 => stream.extend((0..rng.below(4)).map(|_| rng.next() as u8)),
                    _ => stream.extend_from_slice(rng.pick(FRAGMENTS)),
                }
            }
            let limits = match input[0] & 1 {
                1 => SMALL_LIMITS,
                _ => DEFAULT_LIMITS,
            };
            match feed(limits, [&stream[..]]).refused {
                Some(_) => refused += 1,
                None => passed += 1,
            }
            input.extend_from_slice(&stream);
            split_points(&input);
        }
        // The inputs reach both verdicts, often.
        assert!(
            passed > 300 && refused > 300,
            "{passed} passed, {refused} refused"
        );
    }

    #[test]
    fn any_input_ends_in_a_verdict() {
        split_points(b"");
        split_points(b"\x03");
        split_points(b"\x02\xff\xffGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }
}
