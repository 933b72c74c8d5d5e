//! Static files, answered by the front tier without touching the worker pool: the
//! `--static` mounts, and the files an app names with X-Accel-Redirect or X-Sendfile.
//!
//! Shaped like tower-http's ServeDir: look the file up ([`resolve`]) → decide the outcome
//! from the request's conditionals and ranges ([`decide`]) → one place turns outcomes
//! into responses ([`respond`]). rwsgi has its own rather than ServeDir because it must
//! check where every opened file really lies (ServeDir follows symlinks out of the
//! root, precompressed siblings included), evaluate If-Range, answer several ranges, and
//! serve the same files for internal redirects with the client's original headers.
//!
//! It must never serve a file outside the configured directories, list a directory, or
//! read a file on the async threads.

mod beneath;
mod body;
mod conditional;
mod range;
mod resolve;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{
    ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, LAST_MODIFIED, LOCATION, RANGE,
};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use tracing::{debug, error, warn};

use self::body::{FileBody, Segment};
use self::conditional::{Validators, Verdict};
use self::range::{ByteRange, Ranges};
use self::resolve::{Directory, LookupCache, Opened, Resolved};
use crate::config::{FileSettings, Mount};
use crate::front::conn::mapped::MappedFiles;
use crate::front::dispatch::body::ResponseBody;
use crate::front::respond::encoding::{Accepted, vary_on_accept_encoding};

/// The file mounts of the front tier.
pub struct Files {
    /// `--static` mounts, longest prefix first.
    statics: Vec<Mount>,
    /// Every mount (`--static` and `--internal`), longest prefix first: where an
    /// X-Accel-Redirect may point.
    targets: Vec<Mount>,
    /// The Cache-Control of static files, from `--static-max-age`.
    cache_control: Option<HeaderValue>,
    /// What recent lookups found.
    lookups: LookupCache,
}

/// What to answer, before it becomes a response.
enum Outcome {
    /// Send the file, whole or the parts asked for.
    Send {
        opened: Opened,
        validators: Validators,
        ranges: Ranges,
    },
    /// 304: the client's copy is current.
    NotModified {
        opened: Opened,
        validators: Validators,
    },
    /// 412: a precondition failed.
    PreconditionFailed,
    /// 301 to the same path with a trailing slash.
    AddSlash,
    NotFound,
    Forbidden,
    MethodNotAllowed,
    Failed(String),
}

impl Files {
    /// The mounts of `settings`.
    pub fn new(settings: &FileSettings) -> Files {
        let by_length = |mounts: &mut Vec<Mount>| {
            mounts.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        };
        let mut statics = settings.static_mounts.clone();
        by_length(&mut statics);
        let mut targets: Vec<Mount> = settings
            .static_mounts
            .iter()
            .chain(&settings.internal_mounts)
            .cloned()
            .collect();
        by_length(&mut targets);
        Files {
            statics,
            targets,
            cache_control: settings
                .max_age
                .and_then(|age| HeaderValue::from_str(&format!("public, max-age={age}")).ok()),
            lookups: LookupCache::default(),
        }
    }

    /// Whether an app's X-Accel-Redirect or X-Sendfile can point anywhere.
    pub fn has_targets(&self) -> bool {
        !self.targets.is_empty()
    }

    /// The answer to a request under a `--static` prefix (the longest that matches), or
    /// None when no prefix matches and the request belongs to the app. `mapped`: where
    /// the connection finds file pieces to send with sendfile(2), if it can.
    pub fn serve_static(
        &self,
        request: &Parts,
        mapped: Option<&Arc<MappedFiles>>,
    ) -> Option<Response<ResponseBody>> {
        let path = request.uri.path();
        let (mount, rest) = self
            .statics
            .iter()
            .find_map(|m| m.strip(path).map(|rest| (m, rest)))?;
        let head = request.method == Method::HEAD;
        let outcome = if request.method != Method::GET && !head {
            Outcome::MethodNotAllowed
        } else if let Some(relative) = resolve::relative_path(rest) {
            let directory = if rest.ends_with('/') {
                Directory::Index
            } else {
                Directory::Redirect
            };
            self.find(&request.headers, head, |accepted| {
                resolve::under_root(&mount.root, &relative, directory, accepted, &self.lookups)
            })
        } else {
            // Traversal attempts are the client's doing (and scanners send many).
            debug!("refused static path {path:?}");
            Outcome::NotFound
        };
        let mut response = respond(outcome, head, mapped);
        if response.status() == StatusCode::MOVED_PERMANENTLY {
            let location = match request.uri.query() {
                Some(query) => format!("{path}/?{query}"),
                None => format!("{path}/"),
            };
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(LOCATION, location);
            }
        }
        if let Some(cache_control) = &self.cache_control
            && is_file_answer(response.status())
        {
            response
                .headers_mut()
                .insert(CACHE_CONTROL, cache_control.clone());
        }
        Some(response)
    }

    /// The file an X-Accel-Redirect names: a URL path under a `--internal` or `--static`
    /// prefix, answered under the client's original request headers.
    pub fn serve_internal_uri(
        &self,
        target: &str,
        request: &Parts,
        mapped: Option<&Arc<MappedFiles>>,
    ) -> Response<ResponseBody> {
        let head = request.method == Method::HEAD;
        let path = target.split('?').next().unwrap_or("");
        let found = self
            .targets
            .iter()
            .find_map(|m| m.strip(path).map(|rest| (m, rest)));
        let outcome = match found {
            None => {
                warn!("X-Accel-Redirect {target:?} is under no --internal or --static prefix");
                Outcome::NotFound
            }
            Some((mount, rest)) => match resolve::relative_path(rest) {
                None => {
                    warn!("refused X-Accel-Redirect {target:?}");
                    Outcome::NotFound
                }
                Some(relative) => {
                    let directory = if rest.ends_with('/') {
                        Directory::Index
                    } else {
                        Directory::Refuse
                    };
                    self.find(&request.headers, head, |accepted| {
                        resolve::under_root(
                            &mount.root,
                            &relative,
                            directory,
                            accepted,
                            &self.lookups,
                        )
                    })
                }
            },
        };
        respond(outcome, head, mapped)
    }

    /// The file an X-Sendfile names: an absolute path inside a `--internal` or `--static`
    /// directory, answered under the client's original request headers.
    pub fn serve_internal_path(
        &self,
        target: &[u8],
        request: &Parts,
        mapped: Option<&Arc<MappedFiles>>,
    ) -> Response<ResponseBody> {
        let head = request.method == Method::HEAD;
        let path = resolve::os_path(target);
        let roots: Vec<&Path> = self.targets.iter().map(|m| m.root.as_path()).collect();
        let outcome = self.find(&request.headers, head, |accepted| {
            resolve::under_any_root(&roots, &path, accepted, &self.lookups)
        });
        respond(outcome, head, mapped)
    }

    /// Runs a lookup, then weighs the request's conditionals.
    fn find(
        &self,
        headers: &HeaderMap,
        head: bool,
        lookup: impl FnOnce(Option<&Accepted>) -> Resolved,
    ) -> Outcome {
        // A ranged request gets the identity file: ranges of a compressed stream are of
        // no use to a client that would have to decode them.
        let accepted = if headers.contains_key(RANGE) && !head {
            None
        } else {
            Accepted::from_headers(headers)
        };
        // In place, not on a blocking thread: a few metadata calls answered from the
        // kernel's caches cost less than the hand-over (nginx does the same).
        decide(lookup(accepted.as_ref()), headers, head)
    }
}

/// Applies the conditionals (RFC 9110 §13.2.2) and ranges (§14) to a looked-up file.
fn decide(resolved: Resolved, headers: &HeaderMap, head: bool) -> Outcome {
    let opened = match resolved {
        Resolved::File(opened) => opened,
        Resolved::AddSlash => return Outcome::AddSlash,
        Resolved::NotFound => return Outcome::NotFound,
        Resolved::Forbidden => return Outcome::Forbidden,
        Resolved::Failed(err) => return Outcome::Failed(err.to_string()),
    };
    let validators = Validators::new(opened.length, opened.modified);
    match conditional::evaluate(headers, &validators) {
        Verdict::NotModified => {
            return Outcome::NotModified { opened, validators };
        }
        Verdict::Failed => return Outcome::PreconditionFailed,
        Verdict::Proceed => {}
    }
    // §14.2: Range is defined for GET only; HEAD answers as a GET without it would.
    let ranges = match headers.get(RANGE).map(HeaderValue::to_str) {
        Some(Ok(text)) if !head && conditional::range_allowed(headers, &validators) => {
            range::parse(text, opened.length)
        }
        _ => Ranges::Ignore,
    };
    Outcome::Send {
        opened,
        validators,
        ranges,
    }
}

/// Whether a status is a file's answer (which carries its caching headers).
fn is_file_answer(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
    )
}

/// The one place outcomes become responses.
fn respond(
    outcome: Outcome,
    head: bool,
    mapped: Option<&Arc<MappedFiles>>,
) -> Response<ResponseBody> {
    let (opened, validators, ranges) = match outcome {
        Outcome::Send {
            opened,
            validators,
            ranges,
        } => (opened, validators, ranges),
        Outcome::NotModified { opened, validators } => {
            let mut response = Response::new(ResponseBody::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            validator_headers(response.headers_mut(), &opened, &validators);
            return response;
        }
        Outcome::PreconditionFailed => return page(StatusCode::PRECONDITION_FAILED, head),
        Outcome::AddSlash => return page(StatusCode::MOVED_PERMANENTLY, head),
        Outcome::NotFound => return page(StatusCode::NOT_FOUND, head),
        Outcome::Forbidden => return page(StatusCode::FORBIDDEN, head),
        Outcome::MethodNotAllowed => {
            let mut response = page(StatusCode::METHOD_NOT_ALLOWED, head);
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        Outcome::Failed(why) => {
            error!("cannot serve a file: {why}");
            return page(StatusCode::INTERNAL_SERVER_ERROR, head);
        }
    };
    let length = opened.length;
    let (status, body_length, segments, content_type, content_range) = match ranges {
        Ranges::Ignore => (
            StatusCode::OK,
            length,
            vec![Segment::File { offset: 0, length }],
            opened.content_type.clone(),
            None,
        ),
        Ranges::Unsatisfiable => {
            let mut response = page(StatusCode::RANGE_NOT_SATISFIABLE, head);
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{length}")) {
                response.headers_mut().insert(CONTENT_RANGE, value);
            }
            return response;
        }
        Ranges::Satisfiable(parts) if parts.len() == 1 => {
            let part = parts[0];
            (
                StatusCode::PARTIAL_CONTENT,
                part.len(),
                vec![Segment::File {
                    offset: part.start,
                    length: part.len(),
                }],
                opened.content_type.clone(),
                HeaderValue::from_str(&content_range(part, length)).ok(),
            )
        }
        Ranges::Satisfiable(parts) => {
            let (content_type, segments) = multipart(&parts, length, &opened.content_type);
            let body_length = segments
                .iter()
                .map(|s| match s {
                    Segment::Bytes(b) => b.len() as u64,
                    Segment::File { length, .. } => *length,
                })
                .sum();
            (
                StatusCode::PARTIAL_CONTENT,
                body_length,
                segments,
                content_type,
                None,
            )
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body_length));
    if let Some(content_range) = content_range {
        headers.insert(CONTENT_RANGE, content_range);
    }
    if let Some(coding) = opened.encoding {
        headers.insert(CONTENT_ENCODING, coding.header_value());
    }
    validator_headers(&mut headers, &opened, &validators);
    let body = if head {
        ResponseBody::empty()
    } else {
        ResponseBody::boxed(FileBody::new(opened.source, segments, mapped.cloned()))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// ETag, Last-Modified, Accept-Ranges and Vary: what a 200, 206 and 304 share.
fn validator_headers(headers: &mut HeaderMap, opened: &Opened, validators: &Validators) {
    if let Some(etag) = validators.etag_value() {
        headers.insert(ETAG, etag);
    }
    if let Some(date) = validators.last_modified_value() {
        headers.insert(LAST_MODIFIED, date);
    }
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if opened.varies {
        vary_on_accept_encoding(headers);
    }
}

fn content_range(part: ByteRange, length: u64) -> String {
    format!("bytes {}-{}/{length}", part.start, part.end)
}

/// The pieces of a `multipart/byteranges` body (RFC 9110 §14.6) and its Content-Type.
fn multipart(
    parts: &[ByteRange],
    length: u64,
    content_type: &HeaderValue,
) -> (HeaderValue, Vec<Segment>) {
    let boundary = boundary();
    let part_type = String::from_utf8_lossy(content_type.as_bytes()).into_owned();
    let mut segments = Vec::with_capacity(parts.len() * 2 + 1);
    for (i, part) in parts.iter().enumerate() {
        let head = format!(
            "{}--{boundary}\r\nContent-Type: {part_type}\r\nContent-Range: {}\r\n\r\n",
            if i == 0 { "" } else { "\r\n" },
            content_range(*part, length),
        );
        segments.push(Segment::Bytes(Bytes::from(head)));
        segments.push(Segment::File {
            offset: part.start,
            length: part.len(),
        });
    }
    segments.push(Segment::Bytes(Bytes::from(format!(
        "\r\n--{boundary}--\r\n"
    ))));
    let content_type = HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
        .unwrap_or_else(|_| HeaderValue::from_static("multipart/byteranges"));
    (content_type, segments)
}

/// A boundary unlikely to occur in any file: 128 random bits (the standard library's
/// randomly keyed hasher is the randomness).
fn boundary() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut text = String::with_capacity(32);
    for _ in 0..2 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0);
        text.push_str(&format!("{:016x}", hasher.finish()));
    }
    text
}

/// The front tier's own response for a status: rwsgi's error page (its body left out
/// for HEAD).
pub fn page(status: StatusCode, head: bool) -> Response<ResponseBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let text = crate::error_page::html(status.as_u16(), reason, None);
    let length = text.len();
    let mut response = Response::new(if head {
        ResponseBody::empty()
    } else {
        ResponseBody::full(text)
    });
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    response
}
