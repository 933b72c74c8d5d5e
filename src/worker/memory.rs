//! `--max-worker-memory`: the worker's resident set size, read after each request.
//!
//! One `pread` of `/proc/self/statm` on a descriptor opened once (its second field is
//! the resident pages): a few microseconds, no allocation, no `open` per request.

use std::fs::File;
use std::os::unix::fs::FileExt;

use tracing::warn;

/// The limit and the means to check it.
pub struct MemoryLimit {
    statm: File,
    page_size: u64,
    limit: u64,
}

const MIB: f64 = (1 << 20) as f64;

impl MemoryLimit {
    /// A limit of `limit` bytes; None when there is none (0), or when this system cannot
    /// tell a process its RSS (said once in the log).
    pub fn new(limit: u64) -> Option<MemoryLimit> {
        if limit == 0 {
            return None;
        }
        let page_size = crate::procfs::page_size();
        match File::open("/proc/self/statm") {
            Ok(statm) => Some(MemoryLimit {
                statm,
                page_size,
                limit,
            }),
            Err(err) => {
                warn!("--max-worker-memory is ignored: cannot read /proc/self/statm: {err}");
                None
            }
        }
    }

    /// The resident set size in bytes.
    fn rss(&self) -> Option<u64> {
        let mut buf = [0u8; 128];
        let n = self.statm.read_at(&mut buf, 0).ok()?;
        crate::procfs::resident_bytes(buf.get(..n)?, self.page_size)
    }

    /// Whether the worker has passed the limit; says so in the log when it has.
    pub fn exceeded(&self) -> bool {
        let Some(rss) = self.rss().filter(|&rss| rss > self.limit) else {
            return false;
        };
        warn!(
            "Worker (pid: {}) uses {:.1} MiB, past --max-worker-memory {} MiB: retiring after the current request.",
            std::process::id(),
            rss as f64 / MIB,
            self.limit >> 20
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_rss() {
        let small = MemoryLimit::new(1).unwrap();
        assert!(small.rss().unwrap() > 1 << 20);
        assert!(small.exceeded());
        assert!(!MemoryLimit::new(u64::MAX).unwrap().exceeded());
        assert!(MemoryLimit::new(0).is_none());
    }
}
