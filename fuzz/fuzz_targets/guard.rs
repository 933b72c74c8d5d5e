//! The HTTP/1 guard's verdict does not depend on where reads end: a request stream given
//! to the checker whole, a byte at a time and cut at points the input picks gets the same
//! bytes released, the same refusal and the same state, and never a panic.
//!
//! The input is `[flags, cuts…, stream…]` (`rwsgi::front::conn::guard::fuzz::split_points`
//! says how it is read).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rwsgi::front::conn::guard::fuzz::split_points;

fuzz_target!(|data: &[u8]| {
    split_points(data);
});
