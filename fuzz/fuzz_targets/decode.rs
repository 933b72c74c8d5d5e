//! Any byte sequence given to the channel decoder is an error or a message, never a
//! panic, an abort or an unbounded allocation.
//!
//! Three checks per input:
//! 1. `fuzz_decode`, the library's own entry point: frames, then every typed payload.
//! 2. The control-socket message decoder on the same bytes.
//! 3. The decoder fed incrementally, in chunks whose size the first byte picks, must
//!    give the same frames and stop at the same point as when fed the whole input.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rwsgi::protocol::{Decoder, Frame, ProtocolError, control::Message, fuzz_decode};

/// Every frame the decoder yields from `chunks` fed one after the other, and how it
/// ended: `Ok(())` when it wanted more bytes at the end, or the error that stopped it.
fn decode_all<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<Frame>, Result<(), ProtocolError>) {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => return (frames, Err(error)),
            }
        }
    }
    (frames, Ok(()))
}

fuzz_target!(|data: &[u8]| {
    fuzz_decode(data);

    if let Some(message) = Message::decode(data) {
        assert_eq!(Message::decode(&message.encode()), Some(message));
    }

    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 32) + 1;
    let whole = decode_all(std::iter::once(rest));
    let split = decode_all(rest.chunks(chunk));
    assert_eq!(whole, split, "decoding in chunks of {chunk} differs from decoding at once");
});
