//! One request through the front tier: buffer the body, take a worker slot, send the
//! head and body down the channel, and turn the worker's answer into a response.
//!
//! Errors are mapped to status codes in one place, [`error_response`], by whose fault
//! they are: the client's (400), the server's capacity (503), a worker's (502, or 504 for
//! one timed out).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, HeaderName, HeaderValue, RETRY_AFTER,
    STRICT_TRANSPORT_SECURITY, TRANSFER_ENCODING,
};
use hyper::{Method, Request, Response, StatusCode, Version};
use tracing::{error, info, warn};

use super::conn::conn_info::ConnInfo;
use super::conn::guard::Tracked;
use super::conn::guard::check::Reject;
use super::conn::ip_text::IpText;
use super::conn::mapped::MappedFiles;
use super::conn::proxy::{ClientFacts, client_facts, direct, is_proxy_header, peer_trusted};
use super::dispatch::body::{self, BodyError, BodyLimits, RequestBody, ResponseBody, WorkerBody};
use super::dispatch::budget::Budgets;
use super::dispatch::channel::{Event, Failure, Queued, Refused, Returned, StreamHold};
use super::dispatch::pool::Pool;
use super::observe::access_log::{AccessLog, Entry};
use super::observe::health::Health;
use super::observe::metrics::{Metrics, Observation, RouteKind};
use super::observe::request_id::{self, X_REQUEST_ID};
use super::observe::request_start;
use super::respond::compress::Compression;
use super::respond::sendfile::Target;
use super::respond::static_files::Files;
use super::ws;
use crate::config::{Limits, Trusted};
use crate::protocol::{
    BodyFile, Kind, ProtocolError, RequestHeadRef, ResponseHead, Scheme, encode_frame,
};

/// What every request of the front tier shares.
pub struct Shared {
    /// The workers.
    pub pool: Arc<Pool>,
    /// Request bodies above this size are spooled to disk.
    pub body_memory_limit: usize,
    /// The memory and spill budgets every connection's are made from.
    pub budgets: Budgets,
    /// `--static` and `--internal` files.
    pub files: Files,
    /// `--compress`, when on.
    pub compression: Option<Compression>,
    /// What a client may send, and how slowly.
    pub limits: Limits,
    /// Peers whose proxy headers are believed.
    pub trusted: Trusted,
    /// `Strict-Transport-Security` for responses over TLS (`--hsts`).
    pub hsts: Option<HeaderValue>,
    /// `--health-path`, when set.
    pub health: Option<Health>,
    /// `--metrics-bind`: the counters, when it is set.
    pub metrics: Option<Arc<Metrics>>,
    /// `--access-logfile`, when on.
    pub access_log: Option<Arc<AccessLog>>,
    /// Whether requests passed to the app get `X-Request-Start`.
    pub request_start: bool,
    /// WebSockets, when the workers serve them (`-k asgi`).
    pub websockets: Option<super::ws::Settings>,
    /// The front tier's stop, which a WebSocket watches to close itself (1001).
    pub stop: Arc<super::conn::stopping::Stop>,
}

/// Whose fault a failed request is; [`error_response`] turns it into a status.
#[derive(Debug)]
enum RequestError {
    /// The client's request is refused with this status (400, 408, 413, 414, 417, 431,
    /// 501); the connection is closed after the answer.
    Client(StatusCode, String),
    /// No worker slot could be had in time.
    Busy,
    /// The worker died or broke off before answering.
    Worker(Failure),
    /// A response head from the worker that HTTP cannot carry.
    BadResponse(String),
    /// Our own failure (spooling, encoding).
    Internal(String),
}

/// What watches a response body go out: the access log entry and the metrics.
type Observers = (Option<Entry>, Option<Observation>);

/// The hyper service function.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Tracked<ResponseBody, Observers>>, Infallible> {
    let mut observation = shared.metrics.clone().map(Observation::new);
    let (index, busy) = conn.guard.begin();
    let version = request.version();
    let present = Present::of(request.headers());
    let request_id = request_id::pick(request.headers(), present.request_id);
    let refused_head = conn.guard.refused_head(index);
    // For the error lines: a refcount, not a copy.
    let path_and_query = request.uri().path_and_query().cloned();
    let mut entry = shared.access_log.as_ref().map(|log| {
        let remote = present
            .client(request.headers(), &conn, &shared.trusted)
            .addr;
        log.begin(&request, remote, &request_id.id, refused_head.is_some())
    });
    let last = request_ends_connection(version, request.headers(), &present);
    let result = match refused_head {
        Some(reject) => Err(refused(reject)),
        None => dispatch(&shared, &conn, index, request, &request_id, present).await,
    };
    let mut response = match result {
        Ok(response) => response,
        Err(err) => {
            let path = path_and_query.as_ref().filter(|_| refused_head.is_none());
            let named = request_id::Named {
                path: path.map(|pq| pq.path()),
                id: &request_id.id,
            };
            error_response(err, version, &named)
        }
    };
    // RFC 6797 §7.2: the header is sent over a secure transport only; an app's own
    // value wins.
    if conn.scheme == Scheme::Https
        && let Some(hsts) = &shared.hsts
    {
        response
            .headers_mut()
            .entry(STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| hsts.clone());
    }
    // Every response names its request, static files and errors too; an app's own
    // value wins.
    response
        .headers_mut()
        .entry(X_REQUEST_ID)
        .or_insert(request_id.id);
    // A 101 never counts: the connection goes on, upgraded.
    if response.status() != StatusCode::SWITCHING_PROTOCOLS
        && (last || response_ends_connection(version, &response))
    {
        conn.guard.last_response().mark();
    }
    if let Some(entry) = &mut entry {
        entry.respond(&response);
    }
    if let Some(observation) = &mut observation {
        let kind = response.extensions().get::<RouteKind>().copied();
        observation.answered(kind.unwrap_or(RouteKind::App), response.status().as_u16());
    }
    let mut observers = (entry, observation);
    if let Some(observed) = response.extensions().get::<super::ws::Observed>() {
        // A WebSocket is logged, and timed, when it ends.
        observed.keep(Box::new(std::mem::take(&mut observers)));
    }
    Ok(response.map(|body| Tracked::new(body, observers, busy)))
}

/// Whether hyper closes the connection after answering a request of `version` with
/// these fields (RFC 9112 §9.3): HTTP/1.1 when its `Connection` says `close`, HTTP/1.0
/// unless it says `keep-alive`.
fn request_ends_connection(
    version: Version,
    headers: &hyper::HeaderMap,
    present: &Present,
) -> bool {
    let says = |token| {
        present.connection
            && headers
                .get_all(CONNECTION)
                .iter()
                .any(|value| ws::has_token(value.as_bytes(), token))
    };
    match version {
        Version::HTTP_11 => says(b"close"),
        Version::HTTP_10 => !says(b"keep-alive") || says(b"close"),
        _ => false,
    }
}

/// Whether hyper closes the HTTP/1 connection after `response` because it says so.
fn response_ends_connection(version: Version, response: &Response<ResponseBody>) -> bool {
    version != Version::HTTP_2
        && response
            .headers()
            .get(CONNECTION)
            .is_some_and(|value| ws::has_token(value.as_bytes(), b"close"))
}

fn refused(reject: Reject) -> RequestError {
    let status = StatusCode::from_u16(reject.status()).unwrap_or(StatusCode::BAD_REQUEST);
    RequestError::Client(status, reject.to_string())
}

/// Which of the request fields the front tier looks for a request carries, found in
/// one pass over its field names. Most requests carry none of them, and comparing a
/// few names costs less than a lookup of each in the header map (which hashes the name
/// every time).
#[derive(Clone, Copy, Default)]
struct Present {
    request_id: bool,
    request_start: bool,
    /// `Forwarded`, `X-Forwarded-For` or `X-Forwarded-Proto`.
    proxy: bool,
    expect: bool,
    content_length: bool,
    transfer_encoding: bool,
    connection: bool,
}

impl Present {
    fn of(headers: &hyper::HeaderMap) -> Present {
        let mut present = Present::default();
        for name in headers.keys() {
            if name == CONTENT_LENGTH {
                present.content_length = true;
            } else if name == TRANSFER_ENCODING {
                present.transfer_encoding = true;
            } else if name == EXPECT {
                present.expect = true;
            } else if name == CONNECTION {
                present.connection = true;
            } else if name == X_REQUEST_ID {
                present.request_id = true;
            } else if name == request_start::X_REQUEST_START {
                present.request_start = true;
            } else if is_proxy_header(name) {
                present.proxy = true;
            }
        }
        present
    }

    /// [`client_facts`], without looking for proxy headers a request has none of.
    fn client(
        &self,
        headers: &hyper::HeaderMap,
        conn: &ConnInfo,
        trusted: &Trusted,
    ) -> ClientFacts {
        match self.proxy {
            true => client_facts(headers, conn, trusted),
            false => direct(conn),
        }
    }
}

/// Limits that hold for every protocol (the guard has checked HTTP/1 already).
fn check_head(
    parts: &hyper::http::request::Parts,
    limits: &Limits,
    websocket: bool,
    present: Present,
) -> Result<(), RequestError> {
    let target = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > limits.request_line {
        return Err(RequestError::Client(
            StatusCode::URI_TOO_LONG,
            "request target too long".into(),
        ));
    }
    if parts.headers.len() > limits.fields {
        return Err(RequestError::Client(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many header fields".into(),
        ));
    }
    let too_long = parts
        .headers
        .iter()
        .any(|(name, value)| name.as_str().len() + value.len() + 4 > limits.field_size); // `name: value\r\n`
    if too_long {
        return Err(RequestError::Client(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header field too long".into(),
        ));
    }
    if parts.version == Version::HTTP_2 {
        check_h2_head(parts)?;
    }
    if parts.method == Method::CONNECT && !websocket {
        // rwsgi is no forward proxy, and WSGI has no way to hold a tunnel (an extended
        // CONNECT opening a WebSocket, RFC 8441, is no tunnel).
        return Err(RequestError::Client(
            StatusCode::NOT_IMPLEMENTED,
            "CONNECT is not supported".into(),
        ));
    }
    if present.expect
        && let Some(expect) = parts.headers.get(EXPECT)
        && !expect.as_bytes().eq_ignore_ascii_case(b"100-continue")
    {
        return Err(RequestError::Client(
            StatusCode::EXPECTATION_FAILED,
            "unknown expectation".into(),
        ));
    }
    let declared = present
        .content_length
        .then(|| parts.headers.get(CONTENT_LENGTH))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body_size) {
        // Answered before any of the body is read (and before 100 Continue is sent).
        return Err(RequestError::Client(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {} bytes", limits.max_body_size),
        ));
    }
    Ok(())
}

/// What the guard checks for HTTP/1 and hyper's h2 lets through.
fn check_h2_head(parts: &hyper::http::request::Parts) -> Result<(), RequestError> {
    let malformed = |why: &str| Err(RequestError::Client(StatusCode::BAD_REQUEST, why.into()));
    // RFC 9113 §8.2.1: a field value with leading or trailing whitespace is malformed.
    let padded = |value: &[u8]| {
        matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t'))
    };
    if parts.headers.values().any(|value| padded(value.as_bytes())) {
        return malformed("a field value with leading or trailing whitespace");
    }
    // RFC 9113 §8.3.1: `:path *` is for OPTIONS only (RFC 9112 §3.2.4 for HTTP/1.1).
    if parts.uri.path() == "*" && parts.method != Method::OPTIONS {
        return malformed("the asterisk-form target is for OPTIONS only");
    }
    Ok(())
}

/// The request's authority wins over its Host header: RFC 9112 §3.2.2 (an absolute-form
/// target) and RFC 9113 §8.3.1 (`:authority`). An app that trusted a Host the target
/// contradicts could be steered by it (host-header poisoning).
fn authority_as_host(parts: &mut hyper::http::request::Parts) {
    let Some(authority) = parts.uri.authority() else {
        return;
    };
    // The host and port only: userinfo (`user:pass@`) is no part of Host (RFC 9110 §7.2).
    let host_port = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, host)| host);
    if let Ok(host) = HeaderValue::from_str(host_port) {
        parts.headers.insert(HOST, host);
    }
}

/// The body is whole before the app runs, so the app gets its length, never its HTTP/1.1
/// chunking or HTTP/2 framing: `Transfer-Encoding` goes, `Content-Length` comes (as nginx
/// does). Without it an app reads a chunked or length-less HTTP/2 body as empty
/// (PEP 3333: `CONTENT_LENGTH` says how much `wsgi.input` holds).
fn declare_length(parts: &mut hyper::http::request::Parts, length: u64, present: Present) {
    let chunked = present.transfer_encoding && parts.headers.remove(TRANSFER_ENCODING).is_some();
    if chunked || (length > 0 && !present.content_length) {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
}

async fn dispatch(
    shared: &Shared,
    conn: &ConnInfo,
    index: u64,
    request: Request<hyper::body::Incoming>,
    request_id: &request_id::Picked,
    present: Present,
) -> Result<Response<ResponseBody>, RequestError> {
    let (mut parts, incoming) = request.into_parts();
    let limits = &shared.limits;
    let websocket = match shared.websockets.map(|_| ws::check(&parts)) {
        None | Some(ws::Check::Plain) => None,
        Some(ws::Check::WebSocket(handshake)) => Some(handshake),
        Some(ws::Check::Refused(status, why)) => {
            return Err(RequestError::Client(status, why.into()));
        }
    };
    check_head(&parts, limits, websocket.is_some(), present)?;
    authority_as_host(&mut parts);
    request_id.install(&mut parts.headers);
    if let Some(response) = shared
        .health
        .as_ref()
        .and_then(|health| health.answer(&parts, &shared.pool))
    {
        return Ok(with_kind(response, RouteKind::Health));
    }
    if let Some(response) = shared
        .files
        .serve_static(&parts, mapped_files(conn, &parts))
    {
        return Ok(with_kind(response, RouteKind::Static));
    }
    // Now, with the head read: a body still to come is part of the wait.
    let stamp = if shared.request_start {
        let trusted = peer_trusted(conn, &shared.trusted);
        request_start::stamp(&mut parts.headers, trusted, present.request_start)
    } else {
        None
    };
    let body_limits = BodyLimits {
        memory: shared.body_memory_limit,
        max: limits.max_body_size,
        idle: limits.body_timeout,
    };
    // A WebSocket's handshake has no body (HTTP/2's extended CONNECT stream is the
    // WebSocket itself, read by its session).
    let body = if websocket.is_some() || hyper::body::Body::is_end_stream(&incoming) {
        // No body (most GETs): nothing to wait for, no timer to set.
        RequestBody::Memory(Vec::new(), conn.budgets.requests.hold(0))
    } else {
        // Boxed: its future (the body's read, its timers, the guard's refusal) would
        // otherwise make every request's future larger, moved and allocated whole per
        // request, with a body or without.
        Box::pin(buffer_body(incoming, body_limits, conn, index)).await?
    };
    declare_length(&mut parts, body.len(), present);
    // `_held` counts the body against the connection's budget until the request is
    // done with it.
    let (body, _held, spool) = match body {
        RequestBody::Memory(bytes, held) => (Some(bytes), Some(held), None),
        RequestBody::File { file, length } => (None, None, Some((file, length))),
    };
    let facts = present.client(&parts.headers, conn, &shared.trusted);
    let spool_path = spool.as_ref().map(|(file, length)| BodyFile {
        path: Bytes::copy_from_slice(file.path().as_os_str().as_encoded_bytes()),
        length: *length,
    });
    let mut spool = spool.map(|(file, _)| file);
    let upgrade = websocket
        .as_ref()
        .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    let encode = |stream: u32, out: &mut Queued<'_>| {
        encode_request(
            &parts,
            conn,
            &facts,
            Added {
                stamp: stamp.as_ref(),
                request_id: request_id.id.as_bytes(),
            },
            stream,
            match websocket.is_some() {
                true => Payload::WebSocket,
                false => Payload::Body {
                    body: body.as_ref(),
                    spool: spool_path.as_ref(),
                },
            },
            out,
        )
    };
    let backlog = conn.budgets.response(parts.version == Version::HTTP_2);
    // A worker that retired between our lease and our write never saw the request, and
    // one that died before it began a request it held queued gives it back: either way
    // it goes to another worker instead of failing.
    let (worker, stream, events, head) = loop {
        // A free worker is taken at once; a wait for one lasts --queue-timeout at most,
        // the pool's business (one look at the workers either way, under one lock).
        let lease = shared
            .pool
            .acquire()
            .await
            .map_err(|_| RequestError::Busy)?;
        let worker = lease.conn().clone();
        let hold = StreamHold {
            lease: Box::new(lease),
            spool: spool.take(),
        };
        let (stream, mut events) = match worker.open_stream(hold, &backlog, encode) {
            Ok(opened) => opened,
            Err(Refused::Retired(hold)) => {
                spool = hold.spool;
                continue;
            }
            Err(Refused::Failed(Failure::Aborted(why))) => {
                return Err(RequestError::Internal(why));
            }
            Err(Refused::Failed(died)) => return Err(RequestError::Worker(died)),
        };
        // A client gone while the worker works on its request (hyper drops this future)
        // is told to the worker, as once the response has begun (WorkerBody): an ASGI
        // application gets its http.disconnect, and send() raises.
        let waiting = UnansweredStream(Some((worker.clone(), stream)));
        let event = events.receiver.recv().await;
        waiting.answered();
        match event {
            Some(Event::Head(head)) => break (worker, stream, events, head),
            Some(Event::WsAccept(accept)) => {
                let (Some(handshake), Some(upgrade), Some(settings)) =
                    (websocket, upgrade, shared.websockets)
                else {
                    return Err(RequestError::BadResponse(
                        "an accept for no WebSocket".into(),
                    ));
                };
                let opened = ws::Opened {
                    closer: ws::Closer {
                        stop: shared.stop.watch(),
                        retiring: worker.retiring(),
                    },
                    worker,
                    stream,
                    events,
                    settings,
                    upgraded: (parts.version != Version::HTTP_2).then(|| conn.guard.clone()),
                    busy: (parts.version == Version::HTTP_2).then(|| conn.guard.hold()),
                    memory: shared.budgets.requests(),
                };
                let response = ws::accepted(handshake, accept, upgrade, opened)
                    .map_err(RequestError::BadResponse)?;
                if parts.version != Version::HTTP_2 {
                    conn.guard.upgrade();
                }
                return Ok(response);
            }
            Some(Event::Returned(Returned(hold))) => {
                spool = hold.spool;
            }
            Some(Event::Failed(failure)) => return Err(RequestError::Worker(failure)),
            Some(other) => {
                return Err(RequestError::BadResponse(format!(
                    "{other:?} before the response head"
                )));
            }
            None => return Err(RequestError::Worker(Failure::WorkerDied)),
        }
    };
    if parts.version == Version::HTTP_2 {
        conn.stalls.watch(&backlog, limits.send_timeout);
    }
    let body = WorkerBody::new(events, worker, stream);
    let response = build_response(head, ResponseBody::Worker(body), parts.version)?;
    if let Some(target) = Target::of(&shared.files, response.headers()) {
        let mapped = mapped_files(conn, &parts);
        return Ok(target.serve(&shared.files, &parts, response, mapped));
    }
    Ok(match &shared.compression {
        Some(compression) => compression.apply(&parts, response),
        None => response,
    })
}

/// Where a file response to `request` maps its pieces for the connection to send with
/// sendfile(2): on a plain connection's HTTP/1 requests only. h2 copies the start of
/// each DATA frame from the body's bytes, which must not be a mapping (see
/// `conn::mapped`): HTTP/2 file bodies are read as before, as TLS ones are.
fn mapped_files<'c>(
    conn: &'c ConnInfo,
    request: &hyper::http::request::Parts,
) -> Option<&'c Arc<MappedFiles>> {
    if !matches!(request.version, Version::HTTP_10 | Version::HTTP_11) {
        return None;
    }
    conn.guard.mapped_files()
}

/// Reads a request's body (see `body::buffer`), or the refusal the guard made meanwhile.
async fn buffer_body(
    incoming: hyper::body::Incoming,
    body_limits: BodyLimits,
    conn: &ConnInfo,
    index: u64,
) -> Result<RequestBody, RequestError> {
    Ok(tokio::select! {
        body = body::buffer(incoming, body_limits, &conn.budgets.requests) => body.map_err(|err| match err {
            BodyError::Client(e) => RequestError::Client(StatusCode::BAD_REQUEST, e.to_string()),
            BodyError::TooLarge(_) => RequestError::Client(StatusCode::PAYLOAD_TOO_LARGE, err.to_string()),
            BodyError::TimedOut => RequestError::Client(StatusCode::REQUEST_TIMEOUT, err.to_string()),
            BodyError::Spool(io) => RequestError::Internal(io.to_string()),
        })?,
        reject = conn.guard.body_refused(index) => return Err(refused(reject)),
    })
}

/// Marks which part of the front tier answered (for the metrics).
fn with_kind(mut response: Response<ResponseBody>, kind: RouteKind) -> Response<ResponseBody> {
    response.extensions_mut().insert(kind);
    response
}

fn version_code(version: Version) -> u8 {
    match version {
        Version::HTTP_10 | Version::HTTP_09 => 10,
        Version::HTTP_2 => 20,
        _ => 11,
    }
}

/// A request's body as the channel carries it: in memory, or the spool file's path;
/// or a WebSocket's handshake, which has none.
enum Payload<'a> {
    Body {
        body: Option<&'a Vec<Bytes>>,
        spool: Option<&'a BodyFile>,
    },
    WebSocket,
}

/// What the front tier adds to a request's head for the worker.
struct Added<'a> {
    /// `X-Request-Start`, when on.
    stamp: Option<&'a request_start::Stamp>,
    /// The id `Picked::install` left in the headers, given as it is rather than looked
    /// up again.
    request_id: &'a [u8],
}

/// The frames opening a stream: the head, the body, End; a WebSocket's WsConnect.
fn encode_request(
    parts: &hyper::http::request::Parts,
    conn: &ConnInfo,
    facts: &ClientFacts,
    added: Added<'_>,
    stream: u32,
    payload: Payload<'_>,
    out: &mut Queued<'_>,
) -> Result<(), ProtocolError> {
    let uri = &parts.uri;
    let path_and_query = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("");
    let absolute;
    let raw_uri = if parts.version != Version::HTTP_2 && uri.scheme().is_some() {
        absolute = uri.to_string();
        absolute.as_str()
    } else {
        path_and_query
    };
    // The connection's peer, unless a trusted proxy named another client.
    let other_client;
    let remote_addr = match facts.addr {
        Some(ip) if conn.remote.map(|peer| peer.ip()) != Some(ip) => {
            other_client = IpText::new(ip);
            other_client.as_bytes()
        }
        Some(_) => conn.remote_text.as_ref().map_or(&[][..], IpText::as_bytes),
        None => &[][..],
    };
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .chain(
            added
                .stamp
                .map(|stamp| (request_start::NAME, stamp.as_bytes())),
        );
    let kind = match payload {
        Payload::WebSocket => Kind::WsConnect,
        Payload::Body { .. } => Kind::RequestHead,
    };
    RequestHeadRef {
        method: parts.method.as_str().as_bytes(),
        scheme: facts.scheme,
        version: version_code(parts.version),
        raw_uri: raw_uri.as_bytes(),
        path: uri.path().as_bytes(),
        query: uri.query().unwrap_or("").as_bytes(),
        remote_addr,
        remote_port: conn.remote.map(|a| a.port()),
        server_name: conn.server_name.as_bytes(),
        server_port: conn.server_port.as_bytes(),
        request_id: added.request_id,
    }
    .encode_as(out.bytes, kind, stream, headers)?;
    let Payload::Body { body, spool } = payload else {
        return Ok(());
    };
    if let Some(body) = body {
        out.body(stream, body);
    }
    if let Some(file) = spool {
        file.encode(out.bytes, stream)?;
    }
    encode_frame(out.bytes, Kind::End, stream, b"");
    Ok(())
}

fn build_response(
    head: ResponseHead,
    body: ResponseBody,
    version: Version,
) -> Result<Response<ResponseBody>, RequestError> {
    let status =
        StatusCode::from_u16(head.status).map_err(|e| RequestError::BadResponse(e.to_string()))?;
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    // Room for the worker's headers and the few the front tier adds, at once.
    headers.reserve(head.headers.len() + 4);
    for (name, value) in head.headers {
        let name = header_name(&name).map_err(|e| RequestError::BadResponse(e.to_string()))?;
        // The value's bytes stay where the channel's reader put them (no copy).
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|e| RequestError::BadResponse(e.to_string()))?;
        headers.append(name, value);
    }
    if status == StatusCode::NO_CONTENT {
        // RFC 9110 §8.6: never in a 204, whatever the worker said.
        headers.remove(CONTENT_LENGTH);
    }
    if version != Version::HTTP_2 {
        if head.close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        // An empty reason (an ASGI response has none) leaves hyper's canonical one.
        if !head.reason.is_empty()
            && status.canonical_reason().map(str::as_bytes) != Some(&head.reason[..])
            && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(head.reason.clone())
        {
            response.extensions_mut().insert(reason);
        }
    }
    Ok(response)
}

/// A response field's name. The names applications send most, in the spellings they
/// send them, are matched as they are: `HeaderName::from_bytes` lowercases a name and
/// then looks it up among the standard ones, several times the work.
fn header_name(name: &[u8]) -> Result<HeaderName, hyper::header::InvalidHeaderName> {
    match name {
        b"Content-Type" | b"content-type" => Ok(CONTENT_TYPE),
        b"Content-Length" | b"content-length" => Ok(CONTENT_LENGTH),
        _ => HeaderName::from_bytes(name),
    }
}

fn error_response(
    err: RequestError,
    version: Version,
    named: &request_id::Named<'_>,
) -> Response<ResponseBody> {
    let status = match &err {
        RequestError::Client(status, _) => *status,
        RequestError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        RequestError::Worker(Failure::TimedOut) => StatusCode::GATEWAY_TIMEOUT,
        RequestError::Worker(_) | RequestError::BadResponse(_) => StatusCode::BAD_GATEWAY,
        RequestError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    // Each line names the request as the worker's lines and the access log do.
    match &err {
        RequestError::Client(status, why) => {
            info!("refused a request: {} ({why}) for {named}", status.as_u16())
        }
        RequestError::Busy => {
            warn!("no worker free in time and the queue is full: 503 for {named}")
        }
        RequestError::Worker(Failure::WorkerDied) => {
            error!("worker died while handling a request: 502 for {named}")
        }
        RequestError::Worker(Failure::Aborted(why)) => {
            error!("worker abandoned a request ({why}): 502 for {named}")
        }
        RequestError::Worker(Failure::TimedOut) => {
            error!("worker timed out on a request (--timeout): 504 for {named}")
        }
        RequestError::BadResponse(why) => {
            error!("worker sent a response HTTP cannot carry ({why}): 502 for {named}")
        }
        RequestError::Internal(why) => error!("internal error: {why}: 500 for {named}"),
    }
    let mut response = super::respond::static_files::page(status, false);
    let headers = response.headers_mut();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::UPGRADE_REQUIRED {
        // RFC 6455 §4.4: the WebSocket versions the server speaks.
        headers.insert(
            hyper::header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    if matches!(err, RequestError::Client(..)) && version != Version::HTTP_2 {
        // What is left of the connection cannot be trusted to be framed right.
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A stream whose request went to a worker and whose response head has not come back:
/// dropped before [`UnansweredStream::answered`] (its client went away), it aborts the
/// stream.
struct UnansweredStream(Option<(Arc<super::dispatch::channel::WorkerConn>, u32)>);

impl UnansweredStream {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for UnansweredStream {
    fn drop(&mut self) {
        if let Some((worker, stream)) = self.0.take() {
            worker.abort_stream(stream);
        }
    }
}
