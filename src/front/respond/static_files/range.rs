//! Byte ranges (RFC 9110 §14): which parts of a file a `Range: bytes=…` asks for.
//!
//! Safety against range abuse (many small or overlapping ranges making a response far
//! larger than the file): a header with more than [`MAX_RANGES`] ranges is ignored (the
//! whole file is sent, as §14.2 allows), and ranges that overlap or touch are merged
//! (§14.6 allows coalescing), so the parts sent never cover a byte twice.

/// More ranges than this in one header and the header is ignored.
pub const MAX_RANGES: usize = 32;

/// An inclusive range of byte offsets, `start <= end < length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// The first byte.
    pub start: u64,
    /// The last byte.
    pub end: u64,
}

impl ByteRange {
    /// How many bytes the range covers.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// What a Range header means for a representation of a given length.
#[derive(Debug, PartialEq, Eq)]
pub enum Ranges {
    /// Send the whole representation (malformed header, unknown unit, too many ranges).
    Ignore,
    /// No range overlaps the representation: 416 (§15.5.17).
    Unsatisfiable,
    /// These ranges, sorted and merged; never empty.
    Satisfiable(Vec<ByteRange>),
}

/// Reads a Range header value against a representation of `length` bytes.
pub fn parse(header: &str, length: u64) -> Ranges {
    let Some((unit, specs)) = header.split_once('=') else {
        return Ranges::Ignore;
    };
    // §14.2: a range unit the server does not understand is ignored.
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranges::Ignore;
    }
    let mut wanted = Vec::new();
    let mut count = 0;
    for spec in specs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        count += 1;
        if count > MAX_RANGES {
            return Ranges::Ignore;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return Ranges::Ignore;
        };
        let (first, last) = (first.trim(), last.trim());
        let range = if first.is_empty() {
            // suffix-range: the last N bytes.
            let Some(suffix) = number(last) else {
                return Ranges::Ignore;
            };
            (suffix > 0 && length > 0).then(|| ByteRange {
                start: length.saturating_sub(suffix),
                end: length - 1,
            })
        } else {
            let Some(start) = number(first) else {
                return Ranges::Ignore;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match number(last) {
                    // §14.1.1: a last-pos below first-pos makes the ranges invalid.
                    Some(end) if end >= start => end,
                    _ => return Ranges::Ignore,
                }
            };
            (start < length).then(|| ByteRange {
                start,
                end: end.min(length - 1),
            })
        };
        wanted.extend(range);
    }
    if count == 0 {
        return Ranges::Ignore;
    }
    if wanted.is_empty() {
        return Ranges::Unsatisfiable;
    }
    wanted.sort_by_key(|r| r.start);
    let mut merged: Vec<ByteRange> = Vec::with_capacity(wanted.len());
    for range in wanted {
        match merged.last_mut() {
            Some(last) if range.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(range.end);
            }
            _ => merged.push(range),
        }
    }
    Ranges::Satisfiable(merged)
}

/// A run of ASCII digits as a number; a value too large for u64 saturates.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(parse("bytes=0-9", 100), Ranges::Satisfiable(vec![r(0, 9)]));
        assert_eq!(
            parse("bytes=90-", 100),
            Ranges::Satisfiable(vec![r(90, 99)])
        );
        assert_eq!(
            parse("bytes=-10", 100),
            Ranges::Satisfiable(vec![r(90, 99)])
        );
        assert_eq!(
            parse("bytes=-500", 100),
            Ranges::Satisfiable(vec![r(0, 99)])
        );
        assert_eq!(
            parse("bytes=95-500", 100),
            Ranges::Satisfiable(vec![r(95, 99)])
        );
        assert_eq!(
            parse("BYTES = 5-5", 100),
            Ranges::Satisfiable(vec![r(5, 5)])
        );
        assert_eq!(
            parse("bytes=0-99999999999999999999999", 100),
            Ranges::Satisfiable(vec![r(0, 99)])
        );
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(parse("bytes=100-", 100), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=200-300", 100), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=-5", 0), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=200-300, 400-", 100), Ranges::Unsatisfiable);
    }

    #[test]
    fn ignored() {
        for header in [
            "bytes=5-1",
            "bytes=a-b",
            "bytes=1",
            "bytes=",
            "items=0-1",
            "0-1",
            "bytes=--1",
            "bytes=1-2-3",
            "bytes=+1-2",
        ] {
            assert_eq!(parse(header, 100), Ranges::Ignore, "{header}");
        }
        let many = (0..=MAX_RANGES)
            .map(|i| format!("{}-{}", i * 2, i * 2))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse(&format!("bytes={many}"), 1000), Ranges::Ignore);
    }

    #[test]
    fn several_are_sorted_and_merged() {
        assert_eq!(
            parse("bytes=50-59, 0-9", 100),
            Ranges::Satisfiable(vec![r(0, 9), r(50, 59)])
        );
        assert_eq!(
            parse("bytes=0-49, 10-20, 40-60, -10", 100),
            Ranges::Satisfiable(vec![r(0, 60), r(90, 99)])
        );
        // Adjacent ranges become one.
        assert_eq!(
            parse("bytes=0-9,10-19", 100),
            Ranges::Satisfiable(vec![r(0, 19)])
        );
        // The same range many times costs no more than once.
        assert_eq!(
            parse("bytes=0-99,0-99,0-99,0-99", 100),
            Ranges::Satisfiable(vec![r(0, 99)])
        );
        // Unsatisfiable ones among satisfiable ones are dropped.
        assert_eq!(
            parse("bytes=500-600, 0-0", 100),
            Ranges::Satisfiable(vec![r(0, 0)])
        );
        // Empty list elements are allowed (RFC 9110 §5.6.1).
        assert_eq!(
            parse("bytes=0-0,,2-2", 100),
            Ranges::Satisfiable(vec![r(0, 0), r(2, 2)])
        );
    }
}
