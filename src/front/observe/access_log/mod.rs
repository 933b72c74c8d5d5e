//! The access log: one line per finished response, written by the front tier, which sees
//! every request (static files, app responses, its own errors).
//!
//! A request's facts are taken when it arrives ([`AccessLog::begin`]) and when its
//! response head is ready ([`Entry::respond`]); the entry then goes with the response
//! body (the guard's [`Tracked`](crate::front::conn::guard::Tracked) body, which shows
//! it the bytes handed to hyper) and writes the line when the body is dropped: after
//! its last byte, or when the client went away (with what was sent by then). A HEAD
//! response is dropped unpolled: 0 bytes. A client gone before the response head was
//! ready is logged with nginx's 499.
//!
//! Only what the compiled format prints is kept per request. Nothing here does I/O:
//! lines go to a buffer that a thread of its own writes out ([`sink`]).

#[cfg(any(test, fuzzing))]
pub mod fuzz;
mod render;
mod sink;

use std::cell::RefCell;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri, Version};
use tracing::warn;

use crate::config::{self, Format};
use crate::front::conn::guard::Observer;
pub use sink::Writer;

/// The front tier's access log.
pub struct AccessLog {
    format: Format,
    request_names: Vec<HeaderName>,
    response_names: Vec<HeaderName>,
    sink: Arc<sink::Sink>,
    /// This process's pid (`%(p)s`), asked once: getpid is a system call.
    pid: u32,
}

impl AccessLog {
    /// Opens the target and starts the writer thread; [`Writer::finish`] flushes the
    /// last lines when the front tier exits.
    pub fn start(settings: &config::AccessLog) -> io::Result<(Arc<AccessLog>, Writer)> {
        let (sink, writer) = sink::start(&settings.target)?;
        let log = AccessLog {
            request_names: header_names(&settings.format.request_headers),
            response_names: header_names(&settings.format.response_headers),
            format: settings.format.clone(),
            sink,
            pid: std::process::id(),
        };
        Ok((Arc::new(log), writer))
    }

    /// The facts of a request as it arrives. `refused`: the request is the guard's
    /// stand-in for a head it refused, whose method and target are unknown.
    pub fn begin<B>(
        self: &Arc<Self>,
        request: &Request<B>,
        remote: Option<IpAddr>,
        request_id: &HeaderValue,
        refused: bool,
    ) -> Entry {
        let headers = request.headers();
        Entry(Box::new(Facts {
            log: self.clone(),
            started: Instant::now(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            refused,
            remote,
            request_id: request_id.clone(),
            request_headers: self
                .request_names
                .iter()
                .map(|name| headers.get(name).cloned())
                .collect(),
            status: 0,
            response_headers: Vec::new(),
            bytes: 0,
        }))
    }
}

/// Header names a format prints; a name no request can carry never matches.
fn header_names(names: &[String]) -> Vec<HeaderName> {
    names
        .iter()
        .map(|name| {
            HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| {
                warn!("access log format: {name:?} is no header name; it prints -");
                HeaderName::from_static("x-rwsgi-no-such-header")
            })
        })
        .collect()
}

/// One request on its way to an access log line.
pub struct Entry(Box<Facts>);

struct Facts {
    log: Arc<AccessLog>,
    started: Instant,
    method: Method,
    uri: Uri,
    version: Version,
    refused: bool,
    remote: Option<IpAddr>,
    request_id: HeaderValue,
    request_headers: Vec<Option<HeaderValue>>,
    status: u16,
    response_headers: Vec<Option<HeaderValue>>,
    bytes: u64,
}

impl Entry {
    /// Takes the status and the headers the format prints from the response head.
    pub fn respond<B>(&mut self, response: &Response<B>) {
        let facts = &mut *self.0;
        facts.status = response.status().as_u16();
        let headers = response.headers();
        facts.response_headers = facts
            .log
            .response_names
            .iter()
            .map(|name| headers.get(name).cloned())
            .collect();
    }

    /// Writes the line: the response is over.
    fn finish(&self) {
        let facts = &*self.0;
        let took = facts.started.elapsed();
        let record = Record::of(facts, took, SystemTime::now());
        thread_local! {
            /// A line is made here, then copied whole into the shared buffer.
            static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            render::line(&facts.log.format.layout, &record, line);
            facts.log.sink.append(line);
        });
    }
}

/// What a line is made from, borrowed from a finished request's [`Facts`].
pub struct Record<'a> {
    remote: Option<IpAddr>,
    method: &'a str,
    /// The request target as sent (gunicorn's RAW_URI).
    target: std::borrow::Cow<'a, str>,
    path: &'a str,
    query: &'a str,
    protocol: &'static str,
    status: u16,
    bytes: u64,
    took: Duration,
    finished: SystemTime,
    request_headers: &'a [Option<HeaderValue>],
    response_headers: &'a [Option<HeaderValue>],
    request_id: &'a [u8],
    pid: u32,
}

impl<'a> Record<'a> {
    fn of(facts: &'a Facts, took: Duration, finished: SystemTime) -> Record<'a> {
        let uri = &facts.uri;
        let target = if facts.refused {
            "".into()
        } else if facts.version != Version::HTTP_2 && uri.scheme().is_some() {
            // An absolute-form target, logged as it was sent.
            uri.to_string().into()
        } else {
            uri.path_and_query().map_or("", |pq| pq.as_str()).into()
        };
        let (method, path, query) = match facts.refused {
            true => ("", "", ""),
            false => (facts.method.as_str(), uri.path(), uri.query().unwrap_or("")),
        };
        Record {
            remote: facts.remote,
            method,
            target,
            path,
            query,
            // As SERVER_PROTOCOL says it to the application.
            protocol: match facts.version {
                Version::HTTP_09 => "HTTP/0.9",
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_3 => "HTTP/3",
                _ => "HTTP/1.1",
            },
            // No response head: the client went away while the request was under way
            // (nginx's 499, "client closed request").
            status: match facts.status {
                0 => 499,
                status => status,
            },
            bytes: facts.bytes,
            took,
            finished,
            request_headers: &facts.request_headers,
            response_headers: &facts.response_headers,
            request_id: facts.request_id.as_bytes(),
            pid: facts.log.pid,
        }
    }

    /// The user name of `Authorization: Basic …` (the request header at `index`).
    fn user(&self, index: usize) -> Option<Vec<u8>> {
        let value = self.request_headers.get(index)?.as_ref()?.as_bytes();
        let (scheme, credentials) = value.split_at(value.iter().position(|&b| b == b' ')?);
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return None;
        }
        let decoded = base64(credentials.trim_ascii())?;
        let end = decoded.iter().position(|&b| b == b':')?;
        Some(decoded[..end].to_vec())
    }
}

/// Standard base64 (RFC 4648 §4), padding optional; None if it is not base64.
fn base64(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    for &byte in text.iter().take_while(|&&b| b != b'=') {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

impl Observer for Entry {
    fn data(&mut self, bytes: usize) {
        self.0.bytes += bytes as u64;
    }
}

/// The line is written when the entry goes, with the response body: after its last
/// byte, or when the client went away.
impl Drop for Entry {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64(b"dXNlcjpwYXNz").as_deref(), Some(&b"user:pass"[..]));
        assert_eq!(base64(b"YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64(b"a b"), None);
    }
}
