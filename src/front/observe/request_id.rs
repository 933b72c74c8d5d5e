//! The request id: a client's (or a proxy's) `X-Request-Id` kept when it is sane,
//! otherwise one made here. It reaches the application (`HTTP_X_REQUEST_ID`), the
//! response (`X-Request-Id`) and the access log, so one request can be followed through
//! all three.
//!
//! Making an id must cost no system call: each thread draws a random prefix once
//! (`getrandom`, when it makes its first id) and then counts; the count goes through a
//! bijective mixer, so ids of one thread never repeat and do not read as a counter.

use std::cell::Cell;

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest id kept from a request; a longer one is replaced.
pub const MAX_LENGTH: usize = 128;

/// A request's id, chosen from its headers by [`pick`].
pub struct Picked {
    /// The id.
    pub id: HeaderValue,
    /// Whether the request's headers carry it already, alone.
    sent: bool,
}

/// The request's own id if it sent one (visible ASCII, 1 to [`MAX_LENGTH`] bytes),
/// else a new one. Several ids, or one with spaces, control or non-ASCII bytes, are
/// replaced: they would be ambiguous, or could forge lines in a log.
///
/// `carried` says whether the request has an `X-Request-Id` at all (known from a pass
/// over its field names): without one, the map is not searched.
pub fn pick(headers: &HeaderMap, carried: bool) -> Picked {
    if !carried {
        return Picked {
            id: generate(),
            sent: false,
        };
    }
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    match (sent.next(), sent.next()) {
        (Some(only), None) if is_sane(only.as_bytes()) => Picked {
            id: only.clone(),
            sent: true,
        },
        _ => Picked {
            id: generate(),
            sent: false,
        },
    }
}

impl Picked {
    /// Makes `headers` carry exactly this id (the head the worker gets). Done after the
    /// request's limits are checked: the client's header count and sizes are its own.
    pub fn install(&self, headers: &mut HeaderMap) {
        if !self.sent {
            // insert() replaces every value the name had.
            headers.insert(X_REQUEST_ID, self.id.clone());
        }
    }
}

/// Names a request in the front tier's error lines as a worker's lines name it: `PATH
/// (request id ID)`, the id being the one of the access log and the response.
pub struct Named<'a> {
    /// The request's path; None for a refused head, whose path is unknown.
    pub path: Option<&'a str>,
    /// The request's id.
    pub id: &'a HeaderValue,
}

impl std::fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A URI's path holds no space or control byte, an id is visible ASCII: neither
        // can break the line.
        let id = String::from_utf8_lossy(self.id.as_bytes());
        write!(f, "{} (request id {id})", self.path.unwrap_or("-"))
    }
}

fn is_sane(id: &[u8]) -> bool {
    (1..=MAX_LENGTH).contains(&id.len()) && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

thread_local! {
    /// This thread's random prefix and next count.
    static STATE: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// A new id: 32 lowercase hex digits (128 bits), unique within this process.
pub fn generate() -> HeaderValue {
    let (prefix, count) = STATE.with(|state| {
        let (prefix, count) = state.get().unwrap_or_else(seed);
        state.set(Some((prefix, count.wrapping_add(1))));
        (prefix, count)
    });
    let mut text = [0u8; 32];
    // The count alone makes the id unique within the thread, the prefix across
    // threads; mixing the prefix with the count too makes no two ids look alike.
    hex(mix(prefix.wrapping_add(count)), &mut text[..16]);
    hex(mix(count), &mut text[16..]);
    // Hex digits are always a valid header value; the fallback is never used.
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A thread's prefix and first count, drawn from the kernel once per thread.
fn seed() -> (u64, u64) {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        // No randomness to be had (a very old kernel): still unique per thread and
        // process, if guessable.
        let fallback = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return (
            mix(fallback ^ (u64::from(std::process::id()) << 32)),
            fallback,
        );
    }
    let [a, b] = [&bytes[..8], &bytes[8..]].map(|half| {
        let mut word = [0u8; 8];
        word.copy_from_slice(half);
        u64::from_le_bytes(word)
    });
    (a, b)
}

/// splitmix64's finalizer: a bijection on u64 that scatters consecutive inputs.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hex(value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(headers: &mut HeaderMap) -> HeaderValue {
        let picked = pick(headers, headers.contains_key(X_REQUEST_ID));
        picked.install(headers);
        picked.id
    }

    #[test]
    fn a_sane_id_is_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(assign(&mut headers), "abc-123");
        assert_eq!(headers.get_all(X_REQUEST_ID).iter().count(), 1);
    }

    #[test]
    fn missing_odd_or_repeated_ids_are_replaced() {
        let long = "a".repeat(MAX_LENGTH + 1);
        for sent in [
            vec![],
            vec!["a b"],
            vec![long.as_str()],
            vec!["x", "y"],
            vec!["é"],
        ] {
            let mut headers = HeaderMap::new();
            for id in &sent {
                headers.append(
                    X_REQUEST_ID,
                    HeaderValue::from_bytes(id.as_bytes()).unwrap(),
                );
            }
            let id = assign(&mut headers);
            assert_eq!(id.len(), 32, "{sent:?}");
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
            let all: Vec<_> = headers.get_all(X_REQUEST_ID).iter().collect();
            assert_eq!(all, [&id]);
        }
    }

    #[test]
    fn ids_do_not_repeat() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
