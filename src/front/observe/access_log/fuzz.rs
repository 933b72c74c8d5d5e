//! The access log's fuzz entry point: any `--access-log-format` text compiles or is
//! refused with a message, never a panic; a compiled format prints back to a text that
//! compiles to the same format; and a line rendered from any request facts is one line
//! whose values can be read back: in text, every value the client chose is escaped so
//! that it can neither end the line nor forge a field; in JSON, every string decodes to
//! the value it came from.
//!
//! Built for the fuzz target (`fuzz/fuzz_targets/access_log.rs`) and for the unit test
//! below, which runs it over seeded inputs so that every test run exercises it.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, UNIX_EPOCH};

use hyper::header::HeaderValue;

use super::{Record, render};
use crate::config::{Atom, Format, Layout, Piece};

/// The fuzz target's body. The input is parts split at `0xFF` (a byte UTF-8 never
/// holds): the format text, then the method, path, query and request id, then header
/// values given in turn to the request headers and the response headers the format
/// prints.
pub fn format_and_line(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0xff);
    let text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let Ok(format) = Format::parse(&text) else {
        return;
    };
    let again = Format::parse(&unparse(&format));
    assert_eq!(
        again.as_ref(),
        Ok(&format),
        "printed back: {:?}",
        unparse(&format)
    );

    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (method, path, query, request_id) = (next(), next(), next(), next());
    // Header values are bytes as a client sent them (obs-text included), when hyper
    // would have taken them.
    let mut header = || HeaderValue::from_bytes(parts.next().unwrap_or_default()).ok();
    let request_headers: Vec<_> = format.request_headers.iter().map(|_| header()).collect();
    let response_headers: Vec<_> = format.response_headers.iter().map(|_| header()).collect();
    let record = Record {
        remote: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        method: &method,
        target: Cow::Owned(format!("{path}?{query}")),
        path: &path,
        query: &query,
        protocol: "HTTP/1.1",
        status: 200,
        bytes: data.len() as u64,
        took: Duration::from_micros(data.len() as u64 * 1_234),
        finished: UNIX_EPOCH + Duration::from_secs(1_795_000_000),
        request_headers: &request_headers,
        response_headers: &response_headers,
        request_id: request_id.as_bytes(),
        pid: 4321,
    };
    let line = rendered(&format.layout, &record);
    match &format.layout {
        Layout::Json => check_json(&line, &record),
        Layout::Text(pieces) => check_text(pieces, &line, &record),
    }
}

/// `layout`'s line for `record`, without its newline (which must be its last byte).
fn rendered(layout: &Layout, record: &Record<'_>) -> Vec<u8> {
    let mut line = Vec::new();
    render::line(layout, record, &mut line);
    assert_eq!(line.pop(), Some(b'\n'), "a line ends with its newline");
    line
}

/// The line is its literals and its atoms' renderings in order; what an atom printed is
/// printable ASCII without a quote, and a value the client chose reads back from it.
fn check_text(pieces: &[Piece], line: &[u8], record: &Record<'_>) {
    let mut expected = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Literal(text) => expected.extend_from_slice(text.as_bytes()),
            Piece::Atom(atom) => {
                let alone = rendered(&Layout::Text(vec![Piece::Atom(*atom)]), record);
                assert!(
                    alone
                        .iter()
                        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"'),
                    "{atom:?} printed {alone:?}"
                );
                if let Some(value) = value_of(*atom, record) {
                    let shown = if value.is_empty() && *atom != Atom::Query {
                        b"-".to_vec()
                    } else {
                        value
                    };
                    assert_eq!(unescape(&alone), shown, "{atom:?} read back");
                }
                expected.extend_from_slice(&alone);
            }
        }
    }
    assert_eq!(line, expected, "the line is its pieces in order");
}

/// The bytes the client chose that `atom` prints, when it prints one such value.
fn value_of(atom: Atom, record: &Record<'_>) -> Option<Vec<u8>> {
    let header = |headers: &[Option<HeaderValue>], i: usize| match headers.get(i) {
        Some(Some(value)) => value.as_bytes().to_vec(),
        _ => Vec::new(),
    };
    Some(match atom {
        Atom::Method => record.method.as_bytes().to_vec(),
        Atom::Path => record.path.as_bytes().to_vec(),
        Atom::Query => record.query.as_bytes().to_vec(),
        Atom::RequestId => record.request_id.to_vec(),
        Atom::RequestHeader(i) => header(record.request_headers, i),
        Atom::ResponseHeader(i) => header(record.response_headers, i),
        _ => return None,
    })
}

/// Undoes the text escaping: `\xHH` is the byte HH.
fn unescape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < text.len() {
        if text[at] == b'\\' {
            let hex = std::str::from_utf8(text.get(at + 2..at + 4).unwrap_or_default());
            let byte = hex.ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            assert_eq!(text.get(at + 1), Some(&b'x'), "a backslash starts \\xHH");
            let Some(byte) = byte else {
                panic!("a backslash starts \\xHH: {text:?}");
            };
            out.push(byte);
            at += 4;
        } else {
            out.push(text[at]);
            at += 1;
        }
    }
    out
}

/// The line is one flat JSON object with the documented fields, free of control
/// bytes, and its strings decode to the values they came from.
fn check_json(line: &[u8], record: &Record<'_>) {
    assert!(
        line.iter().all(|&b| b >= 0x20 && b != 0x7f),
        "a control byte in {line:?}"
    );
    let text = std::str::from_utf8(line).unwrap_or_else(|_| panic!("not UTF-8: {line:?}"));
    let fields = flat_object(text);
    let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "time",
            "remote_addr",
            "method",
            "path",
            "query",
            "protocol",
            "status",
            "bytes",
            "duration_ms",
            "referer",
            "user_agent",
            "request_id"
        ]
    );
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    // The values came from Strings, so they are UTF-8 and decode to themselves.
    assert_eq!(field("method"), Some(Some(record.method.to_string())));
    assert_eq!(field("path"), Some(Some(record.path.to_string())));
    assert_eq!(field("query"), Some(Some(record.query.to_string())));
    let id = String::from_utf8_lossy(record.request_id).into_owned();
    assert_eq!(field("request_id"), Some(Some(id)));
}

/// The fields of a flat JSON object (RFC 8259 §4): each name with its value decoded
/// when it is a string, None when it is a number or null. Panics on anything else.
fn flat_object(text: &str) -> Vec<(String, Option<String>)> {
    let mut chars = text.chars().peekable();
    assert_eq!(chars.next(), Some('{'), "{text}");
    let mut fields = Vec::new();
    loop {
        let name = json_string(&mut chars, text);
        assert_eq!(chars.next(), Some(':'), "{text}");
        let value = match chars.peek() {
            Some('"') => Some(json_string(&mut chars, text)),
            _ => {
                let scalar: String =
                    std::iter::from_fn(|| chars.next_if(|c| !",}".contains(*c))).collect();
                assert!(
                    scalar == "null" || scalar.parse::<f64>().is_ok(),
                    "{scalar:?} in {text}"
                );
                None
            }
        };
        fields.push((name, value));
        match chars.next() {
            Some(',') => continue,
            Some('}') => break,
            other => panic!("{other:?} after a value in {text}"),
        }
    }
    assert_eq!(chars.next(), None, "{text}");
    fields
}

/// A JSON string at `chars`, decoded.
fn json_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, text: &str) -> String {
    assert_eq!(chars.next(), Some('"'), "{text}");
    let mut out = String::new();
    loop {
        match chars.next() {
            Some('"') => return out,
            Some('\\') => match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let code = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                    let Some(code) = code else {
                        panic!("\\u{hex} in {text}");
                    };
                    out.push(code);
                }
                other => panic!("\\{other:?} in {text}"),
            },
            Some(c) if c < ' ' => panic!("a raw control character in {text}"),
            Some(c) => out.push(c),
            None => panic!("an unclosed string in {text}"),
        }
    }
}

/// A format text that compiles to `format` (for a text layout): the inverse of
/// [`Format::parse`], up to how atoms are spelled.
fn unparse(format: &Format) -> String {
    let Layout::Text(pieces) = &format.layout else {
        return "json".into();
    };
    let mut text = String::new();
    for piece in pieces {
        let name = match piece {
            Piece::Literal(literal) => {
                text.push_str(&literal.replace('%', "%%"));
                continue;
            }
            Piece::Atom(atom) => match atom {
                Atom::RemoteAddr => "h".into(),
                Atom::User(_) => "u".into(),
                Atom::Time => "t".into(),
                Atom::RequestLine => "r".into(),
                Atom::Method => "m".into(),
                Atom::Path => "U".into(),
                Atom::Query => "q".into(),
                Atom::Protocol => "H".into(),
                Atom::Status => "s".into(),
                Atom::BytesOrDash => "b".into(),
                Atom::Bytes => "B".into(),
                Atom::Seconds => "T".into(),
                Atom::Micros => "D".into(),
                Atom::Millis => "M".into(),
                Atom::DecimalSeconds => "L".into(),
                Atom::Pid => "p".into(),
                Atom::RequestHeader(i) => format!("{{{}}}i", format.request_headers[*i]),
                Atom::ResponseHeader(i) => format!("{{{}}}o", format.response_headers[*i]),
                Atom::RequestId => "{x-request-id}i".into(),
                Atom::Dash => "l".into(),
            },
        };
        text.push_str(&format!("%({name})s"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeded::Rng;

    /// Pieces of formats and of values: joined at random they make formats that compile
    /// and formats that don't, and values that need escaping.
    const FORMAT_PIECES: &[&str] = &[
        "%(h)s",
        "%(l)s",
        "%(u)s",
        "%(t)s",
        "%(r)s",
        "%(m)s",
        "%(U)s",
        "%(q)s",
        "%(H)s",
        "%(s)s",
        "%(b)s",
        "%(B)s",
        "%(f)s",
        "%(a)s",
        "%(T)s",
        "%(D)s",
        "%(M)s",
        "%(L)s",
        "%(p)s",
        "%(zz)s",
        "%({X-Request-Id}i)s",
        "%({HTTP_X_REQUEST_ID}e)s",
        "%({User-Agent}i)s",
        "%({x-a}i)s",
        "%({X-A}o)s",
        "%({Content-Type}o)s",
        "%({HTTP_ACCEPT}e)s",
        "%({PATH_INFO}e)s",
        "%({NOPE}e)s",
        "%({a)b}i)s",
        "%%",
        "%",
        "%(",
        "%(h)",
        "%(h)d",
        " ",
        "\"",
        "json",
        "é",
        "\n",
        "}",
        "{",
        ")",
    ];
    const VALUE_PIECES: &[&str] = &[
        "a",
        "/p",
        "x=1",
        "\"",
        "\\",
        "\n",
        "\r",
        "\t",
        "\u{1}",
        "\u{7f}",
        "é",
        "𝄞",
        " ",
        "%",
        "\\x41",
        "Basic dXNlcjpwYXNz",
        "-",
    ];

    #[test]
    fn formats_compile_and_lines_read_back() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut compiled = 0;
        for round in 0..3000 {
            let mut input = Vec::new();
            if round % 10 == 0 {
                input.extend_from_slice(b"json");
            } else {
                for _ in 0..rng.next() % 10 {
                    input.extend_from_slice(rng.pick(FORMAT_PIECES).as_bytes());
                }
            }
            compiled += usize::from(Format::parse(&String::from_utf8_lossy(&input)).is_ok());
            for _ in 0..rng.next() % 10 {
                let pieces = rng.next() % 4;
                let value: String = (0..pieces).map(|_| rng.pick(VALUE_PIECES)).collect();
                input.push(0xff);
                input.extend_from_slice(value.as_bytes());
            }
            format_and_line(&input);
        }
        assert!(compiled > 1000, "only {compiled} formats compiled");
    }

    #[test]
    fn gunicorns_format_reads_back() {
        let format = r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;
        let values = [
            "GET",
            "/a\"b",
            "q=\n",
            "id\u{1}",
            "Basic dXNlcjpwYXNz",
            "r\"",
            "é",
        ];
        let mut input = format.as_bytes().to_vec();
        for value in values {
            input.push(0xff);
            input.extend_from_slice(value.as_bytes());
        }
        format_and_line(&input);
    }
}
