//! A process's resident memory from `/proc/PID/statm`, read by the worker for itself
//! (`--max-worker-memory`) and by the front tier for each worker (the metrics).

/// The system's page size (statm counts pages).
pub fn page_size() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(size)) if size > 0 => size as u64,
        _ => 4096,
    }
}

/// The resident bytes in the text of a statm file: "size resident shared text lib data
/// dt", in pages of `page_size` bytes.
pub fn resident_bytes(statm: &[u8], page_size: u64) -> Option<u64> {
    let text = std::str::from_utf8(statm).ok()?;
    let pages: u64 = text.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_field_in_pages() {
        assert_eq!(
            resident_bytes(b"5000 1200 300 10 0 900 0\n", 4096),
            Some(1200 * 4096)
        );
        assert_eq!(resident_bytes(b"5000\n", 4096), None);
        assert_eq!(resident_bytes(b"", 4096), None);
    }
}
