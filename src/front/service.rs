//! One request through the front tier: buffer the body, take a worker slot, send the
//! head and body down the channel, and turn the worker's answer into a response.
//!
//! Errors are mapped to status codes in one place, [`error_response`], by whose fault
//! they are: the client's (400), the server's capacity (503), a worker's (502).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue, RETRY_AFTER,
};
use hyper::{Request, Response, StatusCode, Version};
use tracing::{error, warn};

use super::body::{self, RequestBody, ResponseBody, WorkerBody};
use super::channel::{Event, Failure, StreamHold};
use super::pool::Pool;
use crate::protocol::{
    BodyFile, Kind, MAX_PAYLOAD, ProtocolError, RequestHeadRef, ResponseHead, Scheme, encode_frame,
};

/// What every request of one connection shares.
pub struct ConnInfo {
    /// The peer, for a TCP connection.
    pub remote: Option<SocketAddr>,
    /// SERVER_NAME: the listening socket's address (or the socket path).
    pub server_name: String,
    /// SERVER_PORT: the listening socket's port (empty for a Unix socket).
    pub server_port: String,
    /// The scheme the client connected with (https over TLS).
    pub scheme: Scheme,
    /// Strict-Transport-Security for this connection's responses (TLS with `--hsts`).
    pub hsts: Option<HeaderValue>,
}

/// What every request of the front tier shares.
pub struct Shared {
    /// The workers.
    pub pool: Arc<Pool>,
    /// Request bodies above this size are spooled to disk.
    pub body_memory_limit: usize,
}

/// Whose fault a failed request is; [`error_response`] turns it into a status.
#[derive(Debug)]
enum RequestError {
    /// The client's request could not be read.
    BadRequest(body::BodyError),
    /// No worker slot could be had in time.
    Busy,
    /// The worker died or broke off before answering.
    Worker(Failure),
    /// A response head from the worker that HTTP cannot carry.
    BadResponse(String),
    /// Our own failure (spooling, encoding).
    Internal(String),
}

/// The hyper service function.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let version = request.version();
    Ok(match dispatch(&shared, &conn, request).await {
        Ok(response) => response,
        Err(err) => error_response(err, version),
    })
}

async fn dispatch(
    shared: &Shared,
    conn: &ConnInfo,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<ResponseBody>, RequestError> {
    let (parts, incoming) = request.into_parts();
    let body = body::buffer(incoming, shared.body_memory_limit)
        .await
        .map_err(|err| match err {
            body::BodyError::Client(_) => RequestError::BadRequest(err),
            body::BodyError::Spool(io) => RequestError::Internal(io.to_string()),
        })?;
    let lease = shared
        .pool
        .acquire()
        .await
        .map_err(|_| RequestError::Busy)?;
    let worker = lease.conn().clone();
    let (body, spool) = match body {
        RequestBody::Memory(bytes) => (Some(bytes), None),
        RequestBody::File { file, length } => (None, Some((file, length))),
    };
    let spool_path = spool.as_ref().map(|(file, length)| BodyFile {
        path: Bytes::copy_from_slice(file.path().as_os_str().as_encoded_bytes()),
        length: *length,
    });
    let hold = StreamHold {
        lease,
        spool: spool.map(|(file, _)| file),
    };
    let encode = |stream: u32, out: &mut Vec<u8>| {
        encode_request(
            &parts,
            conn,
            stream,
            body.as_ref(),
            spool_path.as_ref(),
            out,
        )
    };
    let (stream, mut events) =
        worker
            .open_stream(hold, encode)
            .await
            .map_err(|failure| match failure {
                Failure::Aborted(why) => RequestError::Internal(why),
                died => RequestError::Worker(died),
            })?;
    let head = match events.recv().await {
        Some(Event::Head(head)) => head,
        Some(Event::Failed(failure)) => return Err(RequestError::Worker(failure)),
        Some(other) => {
            return Err(RequestError::BadResponse(format!(
                "{other:?} before the response head"
            )));
        }
        None => return Err(RequestError::Worker(Failure::WorkerDied)),
    };
    let body = WorkerBody::new(events, worker, stream);
    build_response(head, ResponseBody::Worker(body), parts.version)
}

fn version_code(version: Version) -> u8 {
    match version {
        Version::HTTP_10 | Version::HTTP_09 => 10,
        Version::HTTP_2 => 20,
        _ => 11,
    }
}

/// The frames opening a stream: the head, the body, End.
fn encode_request(
    parts: &hyper::http::request::Parts,
    conn: &ConnInfo,
    stream: u32,
    body: Option<&Bytes>,
    spool: Option<&BodyFile>,
    out: &mut Vec<u8>,
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
    let remote_addr = conn.remote.map(|a| a.ip().to_string()).unwrap_or_default();
    let mut headers: Vec<(&[u8], &[u8])> = Vec::with_capacity(parts.headers.len() + 1);
    if parts.version == Version::HTTP_2
        && !parts.headers.contains_key(HOST)
        && let Some(authority) = uri.authority()
    {
        headers.push((b"host", authority.as_str().as_bytes()));
    }
    headers.extend(
        parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
    );
    RequestHeadRef {
        method: parts.method.as_str().as_bytes(),
        scheme: conn.scheme,
        version: version_code(parts.version),
        raw_uri: raw_uri.as_bytes(),
        path: uri.path().as_bytes(),
        query: uri.query().unwrap_or("").as_bytes(),
        remote_addr: remote_addr.as_bytes(),
        remote_port: conn.remote.map(|a| a.port()),
        server_name: conn.server_name.as_bytes(),
        server_port: conn.server_port.as_bytes(),
    }
    .encode(out, stream, headers.into_iter())?;
    if let Some(body) = body {
        for chunk in body.chunks(MAX_PAYLOAD) {
            encode_frame(out, Kind::Body, stream, chunk);
        }
    }
    if let Some(file) = spool {
        file.encode(out, stream)?;
    }
    encode_frame(out, Kind::End, stream, b"");
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
    for (name, value) in &head.headers {
        let name =
            HeaderName::from_bytes(name).map_err(|e| RequestError::BadResponse(e.to_string()))?;
        let value =
            HeaderValue::from_bytes(value).map_err(|e| RequestError::BadResponse(e.to_string()))?;
        headers.append(name, value);
    }
    if version != Version::HTTP_2 {
        if head.close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if status.canonical_reason().map(str::as_bytes) != Some(&head.reason[..])
            && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(head.reason.clone())
        {
            response.extensions_mut().insert(reason);
        }
    }
    Ok(response)
}

fn error_response(err: RequestError, version: Version) -> Response<ResponseBody> {
    let status = match &err {
        RequestError::BadRequest(_) => StatusCode::BAD_REQUEST,
        RequestError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        RequestError::Worker(_) | RequestError::BadResponse(_) => StatusCode::BAD_GATEWAY,
        RequestError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    match &err {
        RequestError::BadRequest(e) => warn!("bad request: {e}"),
        RequestError::Busy => warn!("no worker free and the queue is full: 503"),
        RequestError::Worker(Failure::WorkerDied) => {
            error!("worker died while handling a request: 502")
        }
        RequestError::Worker(Failure::Aborted(why)) => {
            error!("worker abandoned a request ({why}): 502")
        }
        RequestError::BadResponse(why) => {
            error!("worker sent a response HTTP cannot carry ({why}): 502")
        }
        RequestError::Internal(why) => error!("internal error: {why}"),
    }
    let reason = status.canonical_reason().unwrap_or("Error");
    let page = format!(
        "<!DOCTYPE html>\n<html><head><title>{code} {reason}</title></head>\n<body><h1>{code} {reason}</h1></body></html>\n",
        code = status.as_u16()
    );
    let length = page.len();
    let mut response = Response::new(ResponseBody::full(page));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::BAD_REQUEST && version != Version::HTTP_2 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
