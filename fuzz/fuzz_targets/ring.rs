//! Any bytes a hostile worker can write over a shared-memory ring region are an error or
//! a value for the front tier, never a panic, an abort, a read outside the mapping or an
//! allocation past the caller's bound.
//!
//! `fuzz_ring`, the library's own entry point, scribbles the input over a fresh region's
//! header fields and data areas, drives both sides of both rings over it (from the front
//! tier's mapping, and from a second one opened as a worker would), and decodes whatever
//! frames come out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rwsgi::protocol::fuzz_ring;

fuzz_target!(|data: &[u8]| {
    fuzz_ring(data);
});
