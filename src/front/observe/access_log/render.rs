//! One access log line from a finished request: the compiled text format walked piece
//! by piece, or the JSON object.
//!
//! What the client sent is escaped, so that a header cannot forge a line or a field:
//! in text, `"`, `\`, control and non-ASCII bytes become `\xHH` (as nginx does); in
//! JSON, strings are escaped as RFC 8259 says (bytes that are not UTF-8 as `\u00HH`).

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Atom, Layout, Piece};
use crate::front::conn::ip_text::IpText;
use crate::log::Civil;

use super::Record;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Writes `record`'s line, newline included, to `out`.
pub fn line(layout: &Layout, record: &Record<'_>, out: &mut Vec<u8>) {
    match layout {
        Layout::Text(pieces) => {
            for piece in pieces {
                match piece {
                    Piece::Literal(text) => out.extend_from_slice(text.as_bytes()),
                    Piece::Atom(atom) => text_atom(*atom, record, out),
                }
            }
        }
        Layout::Json => json(record, out),
    }
    out.push(b'\n');
}

fn text_atom(atom: Atom, r: &Record<'_>, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = match atom {
        Atom::RemoteAddr => match r.remote {
            Some(ip) => address(ip, out),
            None => dash(out),
        },
        Atom::User(i) => match r.user(i) {
            Some(user) => escaped_or_dash(&user, out),
            None => dash(out),
        },
        Atom::Time => clf_time(r.finished, out),
        Atom::RequestLine => {
            let _ = escaped_or_dash(r.method.as_bytes(), out);
            out.push(b' ');
            let _ = escaped_or_dash(r.target.as_bytes(), out);
            out.push(b' ');
            let _ = escaped_or_dash(r.protocol.as_bytes(), out);
            Ok(())
        }
        Atom::Method => escaped_or_dash(r.method.as_bytes(), out),
        Atom::Path => escaped_or_dash(r.path.as_bytes(), out),
        Atom::Query => escaped(r.query.as_bytes(), out),
        Atom::Protocol => escaped_or_dash(r.protocol.as_bytes(), out),
        Atom::Status => number(r.status.into(), out),
        Atom::BytesOrDash if r.bytes == 0 => dash(out),
        Atom::BytesOrDash | Atom::Bytes => number(r.bytes, out),
        Atom::Seconds => number(r.took.as_secs(), out),
        Atom::Micros => number(r.took.as_micros() as u64, out),
        Atom::Millis => number(r.took.as_millis() as u64, out),
        Atom::DecimalSeconds => {
            write!(out, "{}.{:06}", r.took.as_secs(), r.took.subsec_micros())
        }
        Atom::Pid => {
            out.push(b'<');
            let _ = number(r.pid.into(), out);
            out.push(b'>');
            Ok(())
        }
        Atom::RequestHeader(i) => header(r.request_headers.get(i), out),
        Atom::ResponseHeader(i) => header(r.response_headers.get(i), out),
        Atom::RequestId => escaped_or_dash(r.request_id, out),
        Atom::Dash => dash(out),
    };
}

fn dash(out: &mut Vec<u8>) -> std::io::Result<()> {
    out.push(b'-');
    Ok(())
}

fn header(
    value: Option<&Option<hyper::header::HeaderValue>>,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    match value {
        Some(Some(value)) => escaped_or_dash(value.as_bytes(), out),
        _ => dash(out),
    }
}

fn escaped_or_dash(bytes: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    if bytes.is_empty() {
        return dash(out);
    }
    escaped(bytes, out)
}

fn escaped(bytes: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    for &byte in bytes {
        match byte {
            b'"' | b'\\' | ..=0x1f | 0x7f.. => write!(out, "\\x{byte:02X}")?,
            _ => out.push(byte),
        }
    }
    Ok(())
}

/// `[25/Nov/2026:09:55:00 +0000]`, gunicorn's `%(t)s` (in UTC).
fn clf_time(at: SystemTime, out: &mut Vec<u8>) -> std::io::Result<()> {
    with_clock(unix(at).as_secs(), |clock| {
        out.extend_from_slice(&clock.clf)
    });
    Ok(())
}

/// A second's two renderings, made once a second per thread rather than once a line.
struct Clock {
    secs: u64,
    /// `[25/Nov/2026:09:55:00 +0000]`.
    clf: Vec<u8>,
    /// `2026-11-25T09:55:00`.
    iso: Vec<u8>,
}

fn with_clock(secs: u64, f: impl FnOnce(&Clock)) {
    thread_local! {
        static CLOCK: RefCell<Option<Clock>> = const { RefCell::new(None) };
    }
    CLOCK.with_borrow_mut(|cached| {
        if cached.as_ref().is_none_or(|clock| clock.secs != secs) {
            let c = Civil::from_unix(secs);
            let month = MONTHS[(c.month.clamp(1, 12) - 1) as usize];
            let clf = format!(
                "[{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000]",
                c.day, c.year, c.hour, c.minute, c.second
            );
            let iso = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                c.year, c.month, c.day, c.hour, c.minute, c.second
            );
            *cached = Some(Clock {
                secs,
                clf: clf.into_bytes(),
                iso: iso.into_bytes(),
            });
        }
        if let Some(clock) = cached {
            f(clock);
        }
    });
}

/// `n` in decimal; core::fmt's machinery showed in profiles.
fn number(mut n: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    Ok(())
}

fn address(ip: IpAddr, out: &mut Vec<u8>) -> std::io::Result<()> {
    out.extend_from_slice(IpText::new(ip).as_bytes());
    Ok(())
}

fn unix(at: SystemTime) -> Duration {
    at.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// `{"time": …, "remote_addr": …, …}`: the fields are documented in the README.
fn json(r: &Record<'_>, out: &mut Vec<u8>) {
    let since = unix(r.finished);
    out.extend_from_slice(b"{\"time\":\"");
    with_clock(since.as_secs(), |clock| out.extend_from_slice(&clock.iso));
    let millis = since.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
    ]);
    out.extend_from_slice(b"+00:00\",\"remote_addr\":");
    match r.remote {
        Some(ip) => {
            out.push(b'"');
            let _ = address(ip, out);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"method\":");
    json_string(r.method.as_bytes(), out);
    out.extend_from_slice(b",\"path\":");
    json_string(r.path.as_bytes(), out);
    out.extend_from_slice(b",\"query\":");
    json_string(r.query.as_bytes(), out);
    out.extend_from_slice(b",\"protocol\":");
    json_string(r.protocol.as_bytes(), out);
    let micros = r.took.as_micros() as u64;
    out.extend_from_slice(b",\"status\":");
    let _ = number(r.status.into(), out);
    out.extend_from_slice(b",\"bytes\":");
    let _ = number(r.bytes, out);
    out.extend_from_slice(b",\"duration_ms\":");
    let _ = number(micros / 1000, out);
    let _ = write!(out, ".{:03}", micros % 1000);
    // The json layout puts the referer and user agent first among request headers.
    for (name, index) in [(&b",\"referer\":"[..], 0), (b",\"user_agent\":", 1)] {
        out.extend_from_slice(name);
        match r.request_headers.get(index) {
            Some(Some(value)) => json_string(value.as_bytes(), out),
            _ => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b",\"request_id\":");
    json_string(r.request_id, out);
    out.push(b'}');
}

fn json_string(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            for ch in text.chars() {
                match ch {
                    '"' => out.extend_from_slice(b"\\\""),
                    '\\' => out.extend_from_slice(b"\\\\"),
                    '\u{0}'..='\u{1f}' | '\u{7f}' => {
                        let _ = write!(out, "\\u{:04x}", ch as u32);
                    }
                    _ => {
                        let mut utf8 = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                    }
                }
            }
        }
        // Not UTF-8: each byte as the Latin-1 character of that number.
        Err(_) => {
            for &byte in bytes {
                match byte {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    0x20..=0x7e => out.push(byte),
                    _ => {
                        let _ = write!(out, "\\u{byte:04x}");
                    }
                }
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes_what_could_forge_a_line() {
        let mut out = Vec::new();
        escaped(b"a\"b\\c\nd\xe9", &mut out).unwrap();
        assert_eq!(out, b"a\\x22b\\x5Cc\\x0Ad\\xE9");
    }

    #[test]
    fn json_strings() {
        let mut out = Vec::new();
        json_string("é\"\\\u{1}".as_bytes(), &mut out);
        assert_eq!(out, "\"é\\\"\\\\\\u0001\"".as_bytes());
        out.clear();
        json_string(b"a\xff", &mut out);
        assert_eq!(out, b"\"a\\u00ff\"");
    }

    #[test]
    fn clf_times() {
        let mut out = Vec::new();
        clf_time(UNIX_EPOCH + Duration::from_secs(1_795_000_000), &mut out).unwrap();
        assert_eq!(out, b"[18/Nov/2026:11:06:40 +0000]");
        out.clear();
        for n in [0, 7, 10, 1234567890123] {
            number(n, &mut out).unwrap();
            out.push(b' ');
        }
        assert_eq!(out, b"0 7 10 1234567890123 ");
        out.clear();
        address("10.0.255.1".parse().unwrap(), &mut out).unwrap();
        assert_eq!(out, b"10.0.255.1");
    }
}
