//! `X-Request-Start: t=MICROSECONDS`: when the front tier read a request's head, in
//! microseconds since the Unix epoch, on every request passed to the app.
//!
//! nginx users add it by hand (`proxy_set_header X-Request-Start "t=${msec}"`) so that
//! APM agents (New Relic, Datadog, Scout) can show how long a request waited before the
//! app began on it: with it, the queue in front of the workers shows up as its own
//! slice of the response time. A value a trusted proxy (`--forwarded-allow-ips`) sent
//! is kept, since that proxy saw the request first; anyone else's is replaced, so that
//! a client cannot make its own requests look queued.

use std::time::{SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;
use hyper::header::HeaderName;

/// The header's name, as the request head on the channel carries it.
pub const NAME: &[u8] = b"x-request-start";

/// The header's name, for the header map.
pub static X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");

/// The value stamped on one request: `t=` and up to 20 digits, on the stack.
pub struct Stamp {
    text: [u8; 22],
    len: usize,
}

impl Stamp {
    /// The header's value.
    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

/// The stamp for a request with `headers`, now: `None` when a trusted peer
/// (`peer_trusted`) already set one, which stays. Anyone else's is removed from
/// `headers`; the stamp goes into the request head beside them (see
/// `service::encode_request`), without a header map entry of its own. `carried` says
/// whether `headers` have one at all (known from a pass over their names): without
/// one, the map is not searched.
pub fn stamp(headers: &mut HeaderMap, peer_trusted: bool, carried: bool) -> Option<Stamp> {
    if carried {
        if peer_trusted {
            if headers.contains_key(&X_REQUEST_START) {
                return None;
            }
        } else {
            headers.remove(&X_REQUEST_START);
        }
    }
    // A clock before 1970 is no clock to report: 0 rather than nothing. u64 holds
    // microseconds for half a million years.
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    let micros = u64::try_from(micros).unwrap_or(u64::MAX);
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(micros).as_bytes();
    let mut text = [0; 22];
    text[..2].copy_from_slice(b"t=");
    text[2..2 + digits.len()].copy_from_slice(digits);
    Some(Stamp {
        text,
        len: 2 + digits.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use hyper::header::HeaderValue;

    #[test]
    fn a_trusted_peers_value_stays_and_anyone_elses_is_replaced() {
        let mut headers = HeaderMap::new();
        headers.append(&X_REQUEST_START, HeaderValue::from_static("t=1"));
        headers.append(&X_REQUEST_START, HeaderValue::from_static("t=2"));
        assert!(stamp(&mut headers, true, true).is_none());
        assert_eq!(headers.get_all(&X_REQUEST_START).iter().count(), 2);
        let stamped = stamp(&mut headers, false, true).unwrap();
        assert!(!headers.contains_key(&X_REQUEST_START));
        let text = std::str::from_utf8(stamped.as_bytes()).unwrap();
        let micros: u64 = text.strip_prefix("t=").unwrap().parse().unwrap();
        assert!(micros > 1_700_000_000_000_000, "{micros}");
        // A trusted peer that sent none gets one too.
        assert!(stamp(&mut headers, true, false).is_some());
    }
}
