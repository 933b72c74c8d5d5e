//! Tables keyed by stream id, on either side of the channel. Ids are a counter the
//! front tier hands out, so they need no hashing against collisions an attacker could
//! choose: a multiplication spreads them, where the standard library's SipHash costs
//! hundreds of instructions per lookup.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A map by stream id.
pub type StreamMap<V> = HashMap<u32, V, BuildHasherDefault<StreamIds>>;

/// A set of stream ids.
pub type StreamSet = HashSet<u32, BuildHasherDefault<StreamIds>>;

/// Hashes a stream id to itself, spread over the word (see [`StreamMap`]).
#[derive(Default)]
pub struct StreamIds(u64);

impl Hasher for StreamIds {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8 | u64::from(*byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        // Fibonacci hashing: consecutive ids land far apart in the table's top bits.
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
