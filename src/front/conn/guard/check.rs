//! A strict HTTP/1.1 framing checker: it reads the same bytes hyper will read and
//! decides, before hyper sees them, whether they are a well-formed request stream.
//!
//! RFC 9112 lets a server tolerate a bare LF as a line end, whitespace before a colon,
//! obs-fold and more; hyper tolerates some of these. A server that faces the internet
//! alone must not: any disagreement about where a message ends between it and some
//! other hop is a request-smuggling hole. So this checker refuses all of them, and the
//! framing it computes (Content-Length or chunked) is the only one allowed.
//!
//! It holds no I/O: [`Checker::examine`] takes bytes and says how many it examined and
//! how many of those may be released to hyper. Head bytes are held until the whole head
//! is checked; body bytes are released as they come.

use std::fmt;

/// Size limits on a request head (gunicorn's `limit_request_*` settings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line, without its CRLF (over it: 414).
    pub request_line: usize,
    /// Most header fields (over it: 431).
    pub fields: usize,
    /// Longest header field line, its CRLF included (over it: 431).
    pub field_size: usize,
}

/// Longest chunk-size line, extensions included.
const CHUNK_LINE_LIMIT: usize = 4096;
/// Fields that must not come as trailers: they frame, route or authenticate the message
/// (RFC 9110 §6.5.1). A hop that merged them into the head could be steered by bytes sent
/// after the body. (Content-Type is seen in trailers in the wild; rwsgi passes no
/// trailer to the app, so it is tolerated.)
const FORBIDDEN_TRAILERS: [&[u8]; 10] = [
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"trailer",
    b"te",
    b"connection",
    b"upgrade",
    b"expect",
    b"authorization",
    b"proxy-authorization",
];
/// Empty lines tolerated before a request line (RFC 9112 §2.2 asks for at least one).
const LEADING_EMPTY_LINES: u8 = 4;

/// Why a request stream is refused, and the status that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400: malformed or ambiguous.
    BadRequest(&'static str),
    /// 414: the request line is too long.
    UriTooLong,
    /// 431: too many header fields, or one too long.
    HeaderTooLarge(&'static str),
    /// 501: a transfer coding rwsgi does not implement.
    NotImplemented(&'static str),
}

impl Reject {
    /// The HTTP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::UriTooLong => 414,
            Reject::HeaderTooLarge(_) => 431,
            Reject::NotImplemented(_) => 501,
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::BadRequest(why) | Reject::HeaderTooLarge(why) | Reject::NotImplemented(why) => {
                f.write_str(why)
            }
            Reject::UriTooLong => f.write_str("request line too long"),
        }
    }
}

/// A refusal, and the bytes before the refused request that may still be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Bytes, counted from the first byte not yet released, that may go to hyper.
    pub released: usize,
    /// Why the rest is refused.
    pub reject: Reject,
}

/// What one call to [`Checker::examine`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Examined {
    /// Bytes of the input examined (the rest must be offered again, after more arrive).
    pub examined: usize,
    /// Bytes, counted from the first byte not yet released, that may now go to hyper.
    pub released: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a request line (empty lines allowed).
    Start,
    /// Header fields.
    Fields,
    /// A Content-Length body: bytes left.
    Body(u64),
    /// A chunk-size line.
    ChunkSize,
    /// Chunk data: bytes left.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// Trailer fields after the last chunk.
    Trailers,
    /// After a bodyless request asking for an `Upgrade` (a WebSocket handshake):
    /// nothing is examined until its answer is known. After a 101 the bytes are not
    /// HTTP; after any other answer the checking resumes ([`Checker::resume`]).
    Upgrade,
    /// Refused: nothing more is examined.
    Refused,
}

/// What the header fields of one request said about its framing.
#[derive(Debug, Default)]
struct Head {
    http10: bool,
    fields: usize,
    hosts: usize,
    content_types: usize,
    content_length: Option<u64>,
    transfer_encoding: Vec<Vec<u8>>,
    /// An `Upgrade` field came (RFC 9110 §7.8).
    upgrade: bool,
}

/// The checker of one connection's request stream.
#[derive(Debug)]
pub struct Checker {
    limits: Limits,
    state: State,
    /// The current line, without its LF.
    line: Vec<u8>,
    /// Bytes examined but not released (a head, a chunk-size line).
    held: usize,
    empty_lines: u8,
    head: Head,
    /// Trailer fields seen in the current chunked body.
    trailers: usize,
    /// Complete request heads released so far.
    heads: u64,
    /// Whether the refusal, if any, was of a request head (not of a body).
    refused_in_head: bool,
}

impl Checker {
    /// A checker for a new connection.
    pub fn new(limits: Limits) -> Checker {
        Checker {
            limits,
            state: State::Start,
            line: Vec::new(),
            held: 0,
            empty_lines: 0,
            head: Head::default(),
            trailers: 0,
            heads: 0,
            refused_in_head: false,
        }
    }

    /// Request heads released so far: the index hyper will give the next one.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Whether nothing of a next request has arrived yet (the connection is idle).
    pub fn between_requests(&self) -> bool {
        self.state == State::Start && self.held == 0
    }

    /// Whether the refusal was of a request head (else of a body).
    pub fn refused_in_head(&self) -> bool {
        self.refused_in_head
    }

    /// Whether a request head is partly received.
    pub fn in_head(&self) -> bool {
        matches!(self.state, State::Start | State::Fields) && self.held > 0
    }

    /// Body bytes that may go to hyper without being examined: what is left of a
    /// Content-Length body or of the current chunk, when nothing is held before them.
    /// [`Checker::examine`] must still be given them (it only counts them).
    pub fn passable(&self) -> u64 {
        match self.state {
            State::Body(left) | State::ChunkData(left) if self.held == 0 => left,
            _ => 0,
        }
    }

    /// Whether the last request asked for an upgrade and its answer is not known yet:
    /// the bytes after it are not examined meanwhile.
    pub fn awaiting_upgrade(&self) -> bool {
        self.state == State::Upgrade
    }

    /// The upgrade was not made: the bytes after the request are a next request.
    pub fn resume(&mut self) {
        if self.state == State::Upgrade {
            self.state = State::Start;
        }
    }

    /// Examines `data`, the bytes following everything examined before.
    pub fn examine(&mut self, data: &[u8]) -> Result<Examined, Refused> {
        let mut released = 0;
        let result = self.run(data, &mut released);
        result.map_err(|reject| {
            self.refused_in_head = matches!(self.state, State::Start | State::Fields);
            self.state = State::Refused;
            Refused { released, reject }
        })
    }

    fn run(&mut self, data: &[u8], released: &mut usize) -> Result<Examined, Reject> {
        let mut at = 0;
        while at < data.len() {
            match self.state {
                State::Refused => return Err(Reject::BadRequest("request after a refused one")),
                State::Upgrade => break,
                State::Body(left) | State::ChunkData(left) => {
                    let take = left.min((data.len() - at) as u64);
                    at += take as usize;
                    *released += self.held + take as usize;
                    self.held = 0;
                    let left = left - take;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Start,
                        (State::Body(_), left) => State::Body(left),
                        (_, 0) => State::ChunkEnd,
                        (_, left) => State::ChunkData(left),
                    };
                }
                _ => {
                    let rest = &data[at..];
                    match memchr::memchr(b'\n', rest) {
                        None => {
                            self.line.extend_from_slice(rest);
                            self.held += rest.len();
                            at = data.len();
                            self.check_line_length()?;
                        }
                        Some(end) => {
                            self.held += end + 1;
                            at += end + 1;
                            // A line that arrived whole is read where it lies; only one
                            // split across reads was gathered in `line`.
                            let complete = if self.line.is_empty() {
                                self.check_length(end)?;
                                self.on_line(&rest[..end])?
                            } else {
                                self.line.extend_from_slice(&rest[..end]);
                                self.check_line_length()?;
                                let mut line = std::mem::take(&mut self.line);
                                let complete = self.on_line(&line);
                                line.clear();
                                self.line = line;
                                complete?
                            };
                            if complete {
                                *released += self.held;
                                self.held = 0;
                            }
                        }
                    }
                }
            }
        }
        Ok(Examined {
            examined: at,
            released: *released,
        })
    }

    /// A line too long for its place is refused before it is complete.
    fn check_line_length(&self) -> Result<(), Reject> {
        self.check_length(self.line.len())
    }

    /// [`Checker::check_line_length`] for a line of `held` bytes (its CR included,
    /// its LF not).
    fn check_length(&self, held: usize) -> Result<(), Reject> {
        // The CR of the CRLF is still counted in `held`.
        let length = held.saturating_sub(1);
        match self.state {
            State::Start if length > self.limits.request_line => Err(Reject::UriTooLong),
            // A field line is counted with its CRLF, as gunicorn counts it.
            State::Fields | State::Trailers if length + 2 > self.limits.field_size => {
                Err(Reject::HeaderTooLarge("header field too long"))
            }
            State::ChunkSize | State::ChunkEnd if length > CHUNK_LINE_LIMIT => {
                Err(Reject::BadRequest("chunk size line too long"))
            }
            _ => Ok(()),
        }
    }

    /// Handles one complete line (LF removed). Returns whether everything held may now
    /// be released.
    fn on_line(&mut self, line: &[u8]) -> Result<bool, Reject> {
        let Some((&b'\r', line)) = line.split_last() else {
            return Err(Reject::BadRequest("line ends with a bare LF"));
        };
        if memchr::memchr(b'\r', line).is_some() {
            return Err(Reject::BadRequest("bare CR in a line"));
        }
        match self.state {
            State::Start if line.is_empty() => {
                self.empty_lines += 1;
                if self.empty_lines > LEADING_EMPTY_LINES {
                    return Err(Reject::BadRequest("too many empty lines before a request"));
                }
                Ok(false)
            }
            State::Start => {
                self.head = Head {
                    http10: request_line(line)?,
                    ..Head::default()
                };
                self.state = State::Fields;
                Ok(false)
            }
            State::Fields if line.is_empty() => {
                self.state = self.framing()?;
                self.heads += 1;
                self.empty_lines = 0;
                Ok(true)
            }
            State::Fields => {
                self.head.fields += 1;
                if self.head.fields > self.limits.fields {
                    return Err(Reject::HeaderTooLarge("too many header fields"));
                }
                let (name, value) = field(line)?;
                self.record_field(name, value)?;
                Ok(false)
            }
            State::ChunkSize => {
                let size = chunk_size(line)?;
                self.state = if size == 0 {
                    State::Trailers
                } else {
                    State::ChunkData(size)
                };
                self.trailers = 0;
                Ok(true)
            }
            State::ChunkEnd => {
                if !line.is_empty() {
                    return Err(Reject::BadRequest("chunk data longer than its size"));
                }
                self.state = State::ChunkSize;
                Ok(true)
            }
            State::Trailers if line.is_empty() => {
                self.state = State::Start;
                Ok(true)
            }
            State::Trailers => {
                self.trailers += 1;
                if self.trailers > self.limits.fields {
                    return Err(Reject::HeaderTooLarge("too many trailer fields"));
                }
                let (name, _) = field(line)?;
                if FORBIDDEN_TRAILERS
                    .iter()
                    .any(|forbidden| name.eq_ignore_ascii_case(forbidden))
                {
                    return Err(Reject::BadRequest("a trailer field that must not be one"));
                }
                Ok(true)
            }
            State::Body(_) | State::ChunkData(_) | State::Upgrade | State::Refused => {
                unreachable!("lines are only read in line states")
            }
        }
    }

    fn record_field(&mut self, name: &[u8], value: &[u8]) -> Result<(), Reject> {
        if name.eq_ignore_ascii_case(b"content-length") {
            for item in value.split(|&b| b == b',') {
                let length = content_length(trim(item))?;
                match self.head.content_length {
                    Some(seen) if seen != length => {
                        return Err(Reject::BadRequest("conflicting Content-Length values"));
                    }
                    _ => self.head.content_length = Some(length),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in value.split(|&b| b == b',') {
                let coding = trim(coding);
                if coding.is_empty() {
                    return Err(Reject::BadRequest("empty transfer coding"));
                }
                self.head
                    .transfer_encoding
                    .push(coding.to_ascii_lowercase());
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.head.upgrade = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            self.head.hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-type") {
            // Two media types cannot be combined into one (RFC 9110 §5.3).
            self.head.content_types += 1;
            if self.head.content_types > 1 {
                return Err(Reject::BadRequest("more than one Content-Type"));
            }
        }
        Ok(())
    }

    /// The body framing the finished head declares, refusing every ambiguity.
    fn framing(&self) -> Result<State, Reject> {
        let head = &self.head;
        if head.hosts > 1 {
            return Err(Reject::BadRequest("more than one Host header"));
        }
        if head.hosts == 0 && !head.http10 {
            return Err(Reject::BadRequest("HTTP/1.1 request without Host"));
        }
        if head.transfer_encoding.is_empty() {
            return Ok(match head.content_length {
                Some(length) if length > 0 => State::Body(length),
                // HTTP/1.0 has no upgrade (RFC 9110 §7.8).
                _ if head.upgrade && !head.http10 => State::Upgrade,
                _ => State::Start,
            });
        }
        if head.content_length.is_some() {
            return Err(Reject::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if head.http10 {
            return Err(Reject::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        let chunked = head
            .transfer_encoding
            .iter()
            .filter(|c| *c == b"chunked")
            .count();
        if chunked > 1 {
            return Err(Reject::BadRequest("chunked applied more than once"));
        }
        match head.transfer_encoding.as_slice() {
            [only] if only == b"chunked" => Ok(State::ChunkSize),
            [.., last] if last == b"chunked" => {
                Err(Reject::NotImplemented("transfer coding other than chunked"))
            }
            _ => Err(Reject::BadRequest(
                "Transfer-Encoding not ending in chunked",
            )),
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// `method SP request-target SP HTTP-version`; returns whether it is HTTP/1.0.
fn request_line(line: &[u8]) -> Result<bool, Reject> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::BadRequest("malformed request line"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Reject::BadRequest("invalid method"));
    }
    if target.is_empty() || !target.iter().all(|&b| b > b' ' && b != 0x7f) {
        return Err(Reject::BadRequest("invalid request target"));
    }
    if !target_fits_method(method, target) {
        return Err(Reject::BadRequest("request target of the wrong form"));
    }
    match version {
        b"HTTP/1.1" => Ok(false),
        b"HTTP/1.0" => Ok(true),
        _ => Err(Reject::BadRequest("unsupported HTTP version")),
    }
}

/// RFC 9112 §3.2: origin-form (`/path`) or absolute-form (`scheme://…`) for any method,
/// asterisk-form (`*`) for OPTIONS only, authority-form (`host:port`) for CONNECT only.
fn target_fits_method(method: &[u8], target: &[u8]) -> bool {
    match target {
        [b'/', ..] => true,
        b"*" => method == b"OPTIONS",
        _ if method == b"CONNECT" => true,
        _ => is_absolute_form(target),
    }
}

/// `scheme "://"`, the scheme a letter then letters, digits, `+`, `-` or `.`.
fn is_absolute_form(target: &[u8]) -> bool {
    let Some(end) = target.windows(3).position(|w| w == b"://") else {
        return false;
    };
    let scheme = &target[..end];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

/// `name ":" OWS value OWS`, with nothing between the name and the colon.
fn field(line: &[u8]) -> Result<(&[u8], &[u8]), Reject> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(Reject::BadRequest("obsolete line folding"));
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(Reject::BadRequest("header field without a colon"));
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(Reject::BadRequest("invalid header field name"));
    }
    if !value.iter().all(|&b| is_field_byte(b)) {
        return Err(Reject::BadRequest(
            "invalid character in a header field value",
        ));
    }
    Ok((name, trim(value)))
}

fn content_length(digits: &[u8]) -> Result<u64, Reject> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Reject::BadRequest("invalid Content-Length"));
    }
    Ok(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// `1*HEXDIG *( BWS ";" BWS ext-name [ BWS "=" BWS ext-value ] )`.
fn chunk_size(line: &[u8]) -> Result<u64, Reject> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Reject::BadRequest("invalid chunk size"));
    }
    // Leading zeros are harmless; more than 16 significant hex digits overflow a u64.
    let significant = line[..digits].iter().skip_while(|&&b| b == b'0').count();
    if significant > 16 {
        return Err(Reject::BadRequest("chunk size too large"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(16).unwrap_or(0);
        (n << 4) | u64::from(digit)
    });
    // Whitespace may come only before a `;` (BWS), never at the end of the size.
    let extensions = trim(&line[digits..]);
    if extensions.is_empty() && digits < line.len() {
        return Err(Reject::BadRequest("whitespace after a chunk size"));
    }
    if !extensions.is_empty() {
        let valid = extensions[0] == b';'
            && extensions.iter().all(|&b| {
                is_tchar(b)
                    || b" \t;=\"\\".contains(&b)
                    || (0x80..=0xff).contains(&b)
                    || b"(),/:<>?@[]{}".contains(&b)
            });
        if !valid {
            return Err(Reject::BadRequest("invalid chunk extension"));
        }
    }
    Ok(size)
}
