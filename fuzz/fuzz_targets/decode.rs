//! Any byte sequence given to the channel decoder is an error or a message, never a
//! panic, an abort or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rwsgi::protocol::fuzz_decode(data);
});
