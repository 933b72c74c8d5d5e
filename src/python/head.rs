//! Checking what the application passes to `start_response` (PEP 3333): the status line
//! and the headers become bytes HTTP can carry, or a Python error (which the response
//! code turns into a 500). Hop-by-hop headers are dropped: the front tier frames the
//! response itself.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// [`is_tchar`] by table: a header name's bytes are looked up, not searched for.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

/// A field value HTTP can carry: no control characters but HTAB (RFC 9110 §5.5).
fn is_field_value(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn latin1_bytes(text: &str, what: &str) -> PyResult<Vec<u8>> {
    if text.is_ascii() {
        return Ok(text.as_bytes().to_vec());
    }
    text.chars()
        .map(|c| {
            u8::try_from(c as u32)
                .map_err(|_| PyValueError::new_err(format!("{what} is not Latin-1: {text:?}")))
        })
        .collect()
}

/// Headers HTTP/1.1 uses per connection; the front tier frames the response itself.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The most header fields one response may carry. A head past it is the app's error,
/// answered 500 for that request alone, rather than a frame the channel cannot carry
/// or a head no client would take.
pub const MAX_RESPONSE_FIELDS: usize = 1000;

/// The most bytes one response head may take, counted as HTTP/1.1 writes it
/// (`name: value\r\n` per field). Beyond the largest header list clients accept
/// (HTTP/2 clients commonly stop at 256 KiB), and well inside one channel frame.
pub const MAX_RESPONSE_HEAD: usize = 256 * 1024;

/// The longest status (`"200 OK"`) an application may pass.
const MAX_STATUS: usize = 1024;

/// The status code and reason phrase of `status` (`"200 OK"`).
pub fn parse_status(status: &str) -> PyResult<(u16, Vec<u8>)> {
    if status.len() > MAX_STATUS {
        return Err(PyValueError::new_err(format!(
            "the status line is longer than {MAX_STATUS} bytes (rwsgi's limit)"
        )));
    }
    let bytes = latin1_bytes(status, "status")?;
    let bad = || PyValueError::new_err(format!("invalid status {status:?}: want '200 OK'"));
    if bytes.len() < 3
        || !bytes[..3].iter().all(u8::is_ascii_digit)
        || (bytes.len() > 3 && bytes[3] != b' ')
    {
        return Err(bad());
    }
    let code =
        (bytes[0] - b'0') as u16 * 100 + (bytes[1] - b'0') as u16 * 10 + (bytes[2] - b'0') as u16;
    if code < 200 {
        return Err(PyValueError::new_err(format!(
            "status {status:?}: an informational status cannot end a response"
        )));
    }
    let reason = bytes.get(4..).unwrap_or_default().to_vec();
    if !is_field_value(&reason) {
        return Err(PyValueError::new_err(format!(
            "invalid character in status {status:?}"
        )));
    }
    Ok((code, reason))
}

/// Header fields as checked bytes: (name, value).
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The app's headers as checked bytes, its Content-Length, and whether it asked to close.
pub type ParsedHeaders = (Fields, Option<u64>, bool);

/// The checks every response header field passes, WSGI's or ASGI's: rwsgi's bounds on
/// the number of fields and the head's size, the field's syntax (RFC 9110 §5.1, §5.5),
/// and the hop-by-hop fields the front tier frames itself.
#[derive(Default)]
struct FieldChecks {
    fields: usize,
    size: usize,
    /// A `Connection: close` was among the hop-by-hop fields.
    close: bool,
    /// The declared Content-Length.
    content_length: Option<u64>,
}

impl FieldChecks {
    /// One more field begins: rwsgi's bound on their number.
    fn one_more(&mut self) -> PyResult<()> {
        self.fields += 1;
        if self.fields > MAX_RESPONSE_FIELDS {
            return Err(PyValueError::new_err(format!(
                "the response has more than {MAX_RESPONSE_FIELDS} header fields (rwsgi's limit)"
            )));
        }
        Ok(())
    }

    /// A field's name, and its size (with a value of `value_len` bytes) against rwsgi's
    /// bound on the head.
    fn name(&mut self, name: &[u8], value_len: usize) -> PyResult<()> {
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return Err(PyValueError::new_err(format!(
                "invalid header name {:?}",
                String::from_utf8_lossy(name)
            )));
        }
        self.size += name.len() + value_len + 4;
        if self.size > MAX_RESPONSE_HEAD {
            return Err(PyValueError::new_err(format!(
                "the response headers take more than {MAX_RESPONSE_HEAD} bytes (rwsgi's limit)"
            )));
        }
        Ok(())
    }

    /// A field's value.
    fn value(name: &[u8], value: &[u8]) -> PyResult<()> {
        if !is_field_value(value) {
            return Err(PyValueError::new_err(format!(
                "invalid header value for {:?}: {:?}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            )));
        }
        Ok(())
    }

    /// A Content-Length field's value: whether it is the first (a repeat of the same
    /// length is dropped, a different one refused, RFC 9110 §8.6).
    fn content_length(&mut self, value: &[u8]) -> PyResult<bool> {
        let text = std::str::from_utf8(value).unwrap_or("").trim();
        let length = text
            .parse::<u64>()
            .ok()
            .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| PyValueError::new_err(format!("invalid Content-Length {text:?}")))?;
        if self.content_length.is_some_and(|l| l != length) {
            return Err(PyValueError::new_err("conflicting Content-Length headers"));
        }
        Ok(self.content_length.replace(length).is_none())
    }

    /// Whether the field is hop-by-hop, not to be passed on (a `Connection: close` is
    /// noted).
    fn hop_by_hop(&mut self, name: &[u8], value: &[u8]) -> bool {
        // Compared without case, not lowercased: no copy of each name.
        if !HOP_BY_HOP
            .iter()
            .any(|hop| name.eq_ignore_ascii_case(hop.as_bytes()))
        {
            return false;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            self.close |= value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        true
    }
}

/// The application's headers, checked.
pub fn parse_headers(headers: &Bound<'_, PyAny>) -> PyResult<ParsedHeaders> {
    let mut parsed = Vec::with_capacity(headers.len().unwrap_or(0).min(MAX_RESPONSE_FIELDS));
    let mut checks = FieldChecks::default();
    for item in headers.try_iter()? {
        let item = item?;
        checks.one_more()?;
        let pair = item.cast::<PyTuple>().map_err(|_| {
            PyTypeError::new_err(format!("header must be a (name, value) tuple, not {item}"))
        })?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err(format!(
                "header must be a (name, value) tuple, not {pair}"
            )));
        }
        let name_obj = pair.get_item(0)?;
        let value_obj = pair.get_item(1)?;
        let name: &str = name_obj
            .extract()
            .map_err(|_| PyTypeError::new_err("header names must be str"))?;
        let value: &str = value_obj
            .extract()
            .map_err(|_| PyTypeError::new_err("header values must be str"))?;
        checks.name(name.as_bytes(), value.len())?;
        let value = latin1_bytes(value, "header value")?;
        FieldChecks::value(name.as_bytes(), &value)?;
        if name.eq_ignore_ascii_case("content-length") {
            if !checks.content_length(&value)? {
                continue;
            }
        } else if checks.hop_by_hop(name.as_bytes(), &value) {
            continue;
        }
        parsed.push((name.as_bytes().to_vec(), value));
    }
    Ok((parsed, checks.content_length, checks.close))
}

/// An ASGI application's `http.response.start` headers (www.rst: an iterable of
/// `[name, value]` byte strings), checked as a WSGI application's are: the fields, and
/// whether it asked to close.
pub fn parse_asgi_headers(headers: &Bound<'_, PyAny>) -> PyResult<(Fields, bool)> {
    parse_asgi_response_headers(headers).map(|(fields, _, close)| (fields, close))
}

/// [`parse_asgi_headers`] with the declared Content-Length (a repeat of the same one
/// dropped, different ones refused), as for WSGI.
pub fn parse_asgi_response_headers(headers: &Bound<'_, PyAny>) -> PyResult<ParsedHeaders> {
    let mut parsed = Vec::with_capacity(headers.len().unwrap_or(0).min(MAX_RESPONSE_FIELDS));
    let mut checks = FieldChecks::default();
    for item in headers.try_iter()? {
        let item = item?;
        checks.one_more()?;
        let (name, value) = asgi_pair(&item).ok_or_else(|| {
            PyTypeError::new_err(format!(
                "header must be a [name, value] pair of bytes, not {item}"
            ))
        })?;
        checks.name(&name, value.len())?;
        FieldChecks::value(&name, &value)?;
        if name.eq_ignore_ascii_case(b"content-length") {
            if !checks.content_length(&value)? {
                continue;
            }
        } else if checks.hop_by_hop(&name, &value) {
            continue;
        }
        parsed.push((name, value));
    }
    Ok((parsed, checks.content_length, checks.close))
}

/// `[name, value]` (a list or tuple of two byte strings) as bytes. A tuple or a list,
/// nearly always what applications send, is indexed; any other iterable goes through
/// its iterator.
fn asgi_pair(item: &Bound<'_, PyAny>) -> Option<(Vec<u8>, Vec<u8>)> {
    use pyo3::types::{PyBytes, PyList};
    let bytes = |part: &Bound<'_, PyAny>| Some(part.cast::<PyBytes>().ok()?.as_bytes().to_vec());
    if item.is_instance_of::<PyTuple>() || item.is_instance_of::<PyList>() {
        let pair = item.cast::<pyo3::types::PySequence>().ok()?;
        return match pair.len() {
            Ok(2) => Some((
                bytes(&pair.get_item(0).ok()?)?,
                bytes(&pair.get_item(1).ok()?)?,
            )),
            _ => None,
        };
    }
    let mut parts = item.try_iter().ok()?;
    let mut next = || bytes(&parts.next()?.ok()?);
    let pair = (next()?, next()?);
    parts.next().is_none().then_some(pair)
}
