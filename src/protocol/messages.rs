//! The typed payloads: what a Hello, a request head, a response head and a body file say.

use bytes::Bytes;

use super::codec::{HEADER_LEN, encode_frame_header};
use super::fields::{FieldReader, FieldWriter};
use super::{Kind, MAGIC, MAX_HEADERS, MAX_PAYLOAD, ProtocolError, VERSION};

/// Writes a frame whose payload is produced by `fill`, patching the length afterwards.
pub(super) fn encode_with(
    out: &mut Vec<u8>,
    kind: Kind,
    stream: u32,
    fill: impl FnOnce(&mut FieldWriter<'_>),
) -> Result<(), ProtocolError> {
    let start = out.len();
    encode_frame_header(out, kind, stream, 0);
    fill(&mut FieldWriter::new(out));
    let length = out.len() - start - HEADER_LEN;
    if length > MAX_PAYLOAD {
        out.truncate(start);
        return Err(ProtocolError::FrameTooLarge(
            length.min(u32::MAX as usize) as u32
        ));
    }
    out[start..start + 4].copy_from_slice(&(length as u32).to_be_bytes());
    Ok(())
}

pub(super) fn read_headers(reader: &mut FieldReader) -> Result<Vec<(Bytes, Bytes)>, ProtocolError> {
    let count = reader.u32()?;
    // Each header needs at least its two length prefixes: bound the allocation by what
    // the payload could possibly hold, as well as by the absolute cap.
    if count as usize > MAX_HEADERS || count as usize > reader.remaining() / 8 {
        return Err(ProtocolError::TooManyHeaders(count));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = reader.bytes()?;
        let value = reader.bytes()?;
        headers.push((name, value));
    }
    Ok(headers)
}

pub(super) fn write_headers<'h>(
    writer: &mut FieldWriter<'_>,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
) {
    // The count is the pairs written, patched in after them: any iterator will do,
    // a header map's included, with no vector gathered first.
    let at = writer.position();
    writer.u32(0);
    let mut count = 0u32;
    for (name, value) in headers {
        writer.bytes(name).bytes(value);
        count += 1;
    }
    writer.patch_u32(at, count);
}

/// The worker's opening frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The worker's process id.
    pub pid: u32,
    /// How many streams the worker serves at once (1 for a sync worker).
    pub capacity: u16,
    /// Whether the worker takes its frames through shared-memory rings (see `ring`);
    /// the front tier then answers with a [`Kind::Ring`] frame.
    pub ring: bool,
}

impl Hello {
    /// Appends the Hello frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let fits = encode_with(out, Kind::Hello, 0, |w| {
            w.u32(u32::from_be_bytes(*MAGIC))
                .u16(VERSION)
                .u32(self.pid)
                .u16(self.capacity)
                .u8(u8::from(self.ring));
        });
        debug_assert!(fits.is_ok());
    }

    /// Reads a Hello payload, checking the magic and the version.
    pub fn decode(payload: Bytes) -> Result<Hello, ProtocolError> {
        let mut reader = FieldReader::new(payload, "hello");
        if reader.u32()?.to_be_bytes() != *MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        let version = reader.u16()?;
        if version != VERSION {
            return Err(ProtocolError::Version(version));
        }
        let hello = Hello {
            pid: reader.u32()?,
            capacity: reader.u16()?,
            ring: match reader.u8()? {
                0 => false,
                1 => true,
                _ => return Err(ProtocolError::Invalid("ring flag")),
            },
        };
        reader.finish()?;
        if hello.capacity == 0 {
            return Err(ProtocolError::Invalid("capacity 0"));
        }
        Ok(hello)
    }
}

/// The URL scheme the client used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The `wsgi.url_scheme` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A request head as the front tier parsed it; the worker parses no HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, as received (case-sensitive).
    pub method: Bytes,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// HTTP version times ten: 10, 11, 20.
    pub version: u8,
    /// The request target as received (origin form, or absolute form).
    pub raw_uri: Bytes,
    /// The path, still percent-encoded.
    pub path: Bytes,
    /// The query string without `?`, still encoded; empty if none.
    pub query: Bytes,
    /// The peer's address (empty for a Unix socket peer).
    pub remote_addr: Bytes,
    /// The peer's port, when it has one.
    pub remote_port: Option<u16>,
    /// SERVER_NAME: the listening address (or Host for a Unix socket).
    pub server_name: Bytes,
    /// SERVER_PORT, as text (may be empty).
    pub server_port: Bytes,
    /// The id the front tier kept or made for the request (also its `X-Request-Id`
    /// header): the worker's log lines name the request by it.
    pub request_id: Bytes,
    /// Header fields in arrival order, names lower-case.
    pub headers: Vec<(Bytes, Bytes)>,
}

impl RequestHead {
    /// `SERVER_PROTOCOL` for this version, if it is one rwsgi speaks.
    pub fn protocol(&self) -> &'static str {
        protocol_name(self.version)
    }

    /// Appends the RequestHead frame for stream `stream`.
    pub fn encode(&self, out: &mut Vec<u8>, stream: u32) -> Result<(), ProtocolError> {
        let headers = self.headers.iter().map(|(n, v)| (&n[..], &v[..]));
        RequestHeadRef {
            method: &self.method,
            scheme: self.scheme,
            version: self.version,
            raw_uri: &self.raw_uri,
            path: &self.path,
            query: &self.query,
            remote_addr: &self.remote_addr,
            remote_port: self.remote_port,
            server_name: &self.server_name,
            server_port: &self.server_port,
            request_id: &self.request_id,
        }
        .encode(out, stream, headers)
    }

    /// Reads a RequestHead payload.
    pub fn decode(payload: Bytes) -> Result<RequestHead, ProtocolError> {
        let mut r = FieldReader::new(payload, "request head");
        let method = r.bytes()?;
        let scheme = match r.u8()? {
            0 => Scheme::Http,
            1 => Scheme::Https,
            _ => return Err(ProtocolError::Invalid("scheme")),
        };
        let version = r.u8()?;
        if protocol_name(version).is_empty() {
            return Err(ProtocolError::Invalid("http version"));
        }
        let raw_uri = r.bytes()?;
        let path = r.bytes()?;
        let query = r.bytes()?;
        let remote_addr = r.bytes()?;
        let remote_port = match r.u8()? {
            0 => {
                r.u16()?;
                None
            }
            _ => Some(r.u16()?),
        };
        let server_name = r.bytes()?;
        let server_port = r.bytes()?;
        let request_id = r.bytes()?;
        let headers = read_headers(&mut r)?;
        r.finish()?;
        Ok(RequestHead {
            method,
            scheme,
            version,
            raw_uri,
            path,
            query,
            remote_addr,
            remote_port,
            server_name,
            server_port,
            request_id,
            headers,
        })
    }
}

fn protocol_name(version: u8) -> &'static str {
    match version {
        10 => "HTTP/1.0",
        11 => "HTTP/1.1",
        20 => "HTTP/2",
        _ => "",
    }
}

/// A request head borrowed from the front tier's parsed request, for encoding without
/// copying into an owned [`RequestHead`] first.
#[derive(Debug, Clone, Copy)]
pub struct RequestHeadRef<'a> {
    pub method: &'a [u8],
    pub scheme: Scheme,
    pub version: u8,
    pub raw_uri: &'a [u8],
    pub path: &'a [u8],
    pub query: &'a [u8],
    pub remote_addr: &'a [u8],
    pub remote_port: Option<u16>,
    pub server_name: &'a [u8],
    pub server_port: &'a [u8],
    pub request_id: &'a [u8],
}

impl RequestHeadRef<'_> {
    /// Appends the RequestHead frame; fails if the head exceeds [`MAX_PAYLOAD`].
    pub fn encode<'h>(
        &self,
        out: &mut Vec<u8>,
        stream: u32,
        headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    ) -> Result<(), ProtocolError> {
        self.encode_as(out, Kind::RequestHead, stream, headers)
    }

    /// Appends the head as a frame of `kind`: [`Kind::RequestHead`], or
    /// [`Kind::WsConnect`] for a WebSocket handshake (the same payload).
    pub fn encode_as<'h>(
        &self,
        out: &mut Vec<u8>,
        kind: Kind,
        stream: u32,
        headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    ) -> Result<(), ProtocolError> {
        encode_with(out, kind, stream, |w| {
            w.bytes(self.method)
                .u8(match self.scheme {
                    Scheme::Http => 0,
                    Scheme::Https => 1,
                })
                .u8(self.version)
                .bytes(self.raw_uri)
                .bytes(self.path)
                .bytes(self.query)
                .bytes(self.remote_addr)
                .u8(self.remote_port.is_some() as u8)
                .u16(self.remote_port.unwrap_or(0))
                .bytes(self.server_name)
                .bytes(self.server_port)
                .bytes(self.request_id);
            write_headers(w, headers);
        })
    }
}

/// A response head from the application, already validated by the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code (100-999; the worker refuses informational codes).
    pub status: u16,
    /// The reason phrase the application gave.
    pub reason: Bytes,
    /// The application asked for `Connection: close`.
    pub close: bool,
    /// Header fields, in the application's order and case.
    pub headers: Vec<(Bytes, Bytes)>,
}

impl ResponseHead {
    /// Reads a ResponseHead payload.
    pub fn decode(payload: Bytes) -> Result<ResponseHead, ProtocolError> {
        let mut r = FieldReader::new(payload, "response head");
        let status = r.u16()?;
        let reason = r.bytes()?;
        let close = r.u8()? != 0;
        let headers = read_headers(&mut r)?;
        r.finish()?;
        Ok(ResponseHead {
            status,
            reason,
            close,
            headers,
        })
    }

    /// Appends a ResponseHead frame built from borrowed parts.
    pub fn encode_parts<'h>(
        out: &mut Vec<u8>,
        stream: u32,
        status: u16,
        reason: &[u8],
        close: bool,
        headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    ) -> Result<(), ProtocolError> {
        encode_with(out, Kind::ResponseHead, stream, |w| {
            w.u16(status).bytes(reason).u8(close as u8);
            write_headers(w, headers);
        })
    }

    /// Appends this head's frame.
    pub fn encode(&self, out: &mut Vec<u8>, stream: u32) -> Result<(), ProtocolError> {
        let headers = self.headers.iter().map(|(n, v)| (&n[..], &v[..]));
        ResponseHead::encode_parts(out, stream, self.status, &self.reason, self.close, headers)
    }
}

/// The trailer fields of a response (an ASGI application's `http.response.trailers`),
/// sent after its last Body frame and before its End.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailers {
    /// Trailer fields, in the application's order and case.
    pub headers: Vec<(Bytes, Bytes)>,
}

impl Trailers {
    /// Reads a Trailers payload.
    pub fn decode(payload: Bytes) -> Result<Trailers, ProtocolError> {
        let mut r = FieldReader::new(payload, "trailers");
        let headers = read_headers(&mut r)?;
        r.finish()?;
        Ok(Trailers { headers })
    }

    /// Appends a Trailers frame built from borrowed fields.
    pub fn encode_parts<'h>(
        out: &mut Vec<u8>,
        stream: u32,
        headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    ) -> Result<(), ProtocolError> {
        encode_with(out, Kind::Trailers, stream, |w| write_headers(w, headers))
    }
}

/// A request body spooled to a file by the front tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFile {
    /// The file's path (raw bytes of an OS path).
    pub path: Bytes,
    /// How many bytes of it are the body.
    pub length: u64,
}

impl BodyFile {
    /// Appends the BodyFile frame.
    pub fn encode(&self, out: &mut Vec<u8>, stream: u32) -> Result<(), ProtocolError> {
        encode_with(out, Kind::BodyFile, stream, |w| {
            w.bytes(&self.path).u64(self.length);
        })
    }

    /// Reads a BodyFile payload.
    pub fn decode(payload: Bytes) -> Result<BodyFile, ProtocolError> {
        let mut r = FieldReader::new(payload, "body file");
        let file = BodyFile {
            path: r.bytes()?,
            length: r.u64()?,
        };
        r.finish()?;
        Ok(file)
    }
}
