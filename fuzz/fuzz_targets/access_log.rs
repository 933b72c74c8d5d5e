//! Any `--access-log-format` compiles or is refused, never panics; a compiled format
//! prints back to a text compiling to the same; a line rendered from any request facts
//! is one line whose values read back (escaped in text, decoded in JSON).
//!
//! The input is parts split at `0xFF`: the format, then the request's values
//! (`rwsgi::front::access_log_fuzz::format_and_line` says which).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rwsgi::front::access_log_fuzz::format_and_line;

fuzz_target!(|data: &[u8]| {
    format_and_line(data);
});
