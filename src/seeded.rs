//! A seeded pseudo-random walk (xorshift64) for the unit tests that run a fuzz target's
//! logic over deterministic inputs: the same inputs every run, so a failure repeats.

/// xorshift64 from a non-zero seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next number of the walk.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (which must not be 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// One of `from` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}
