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

use bytes::Bytes;
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

static X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");

/// Sets `X-Request-Start` to now, unless a trusted peer (`peer_trusted`) already did.
pub fn stamp(headers: &mut HeaderMap, peer_trusted: bool) {
    if peer_trusted && headers.contains_key(&X_REQUEST_START) {
        return;
    }
    // A clock before 1970 is no clock to report: 0 rather than nothing.
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    // `t=` and digits are always a valid value.
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(format!("t={micros}"))) {
        headers.insert(X_REQUEST_START.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trusted_peers_value_stays_and_anyone_elses_is_replaced() {
        let mut headers = HeaderMap::new();
        headers.append(&X_REQUEST_START, HeaderValue::from_static("t=1"));
        headers.append(&X_REQUEST_START, HeaderValue::from_static("t=2"));
        stamp(&mut headers, true);
        assert_eq!(headers.get_all(&X_REQUEST_START).iter().count(), 2);
        stamp(&mut headers, false);
        let values: Vec<_> = headers.get_all(&X_REQUEST_START).iter().collect();
        assert_eq!(values.len(), 1);
        let micros: u128 = values[0].to_str().unwrap()[2..].parse().unwrap();
        assert!(micros > 1_700_000_000_000_000, "{micros}");
    }
}
