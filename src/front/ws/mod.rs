//! WebSockets in the front tier: the handshake (RFC 6455 §4 over HTTP/1.1, RFC 8441's
//! extended CONNECT over HTTP/2), then a [`session`] per WebSocket that does all of RFC
//! 6455 (framing, masking, fragments, control frames, pings, limits, close codes) and
//! permessage-deflate (RFC 7692), and passes only whole ASGI messages to and from the
//! worker over the channel (protocol/mod.rs, 7).
//!
//! The framing is rwsgi's own ([`frame`], [`deflate`] on flate2): tungstenite, the
//! well-kept crate, has no permessage-deflate (as of 0.29), and its stream gives no hold
//! on when the client is read, which the channel's credit needs. This module never
//! blocks on the worker: every wait is on the client, the channel's events or a timer.

pub mod deflate;
pub mod frame;
mod session;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::{
    CONNECTION, HeaderName, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Method, Response, StatusCode, Version};

use super::dispatch::body::ResponseBody;
use super::dispatch::channel::{Events, WorkerConn};
use crate::protocol::WsAccept;
pub use session::Closer;

/// The GUID every accept key is made with (§1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What the front tier's WebSockets may do (`--ws-max-size`, `--ws-ping-interval`,
/// `--ws-ping-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The largest message a client may send (larger: close 1009).
    pub max_size: usize,
    /// How often the server pings an idle client; None: never.
    pub ping_interval: Option<Duration>,
    /// How long a pong may take before the WebSocket is closed (1011).
    pub ping_timeout: Duration,
}

/// A valid WebSocket handshake request.
#[derive(Debug)]
pub struct Handshake {
    /// HTTP/1.1's `Sec-WebSocket-Key`; None over HTTP/2 (RFC 8441 §5 has none).
    key: Option<HeaderValue>,
    /// permessage-deflate, when the client offered it in a form rwsgi takes.
    deflate: Option<deflate::Agreed>,
}

/// What a request is, for WebSockets.
#[derive(Debug)]
pub enum Check {
    /// Not a WebSocket handshake.
    Plain,
    /// A valid one.
    WebSocket(Handshake),
    /// A WebSocket handshake that breaks the rules: this status, and why.
    Refused(StatusCode, &'static str),
}

/// Whether `parts` opens a WebSocket (RFC 6455 §4.2.1, RFC 8441 §4-5).
pub fn check(parts: &hyper::http::request::Parts) -> Check {
    let headers = &parts.headers;
    let h2 = parts.version == Version::HTTP_2;
    if h2 {
        let protocol = parts.extensions.get::<hyper::ext::Protocol>();
        if parts.method != Method::CONNECT || protocol.is_none() {
            return Check::Plain;
        }
        if protocol.map(hyper::ext::Protocol::as_str) != Some("websocket") {
            return Check::Refused(StatusCode::NOT_IMPLEMENTED, "unknown :protocol");
        }
    } else {
        let upgrade = headers.get_all(UPGRADE).iter();
        if !upgrade
            .into_iter()
            .any(|v| has_token(v.as_bytes(), b"websocket"))
        {
            return Check::Plain;
        }
        if parts.method != Method::GET || parts.version != Version::HTTP_11 {
            return Check::Refused(StatusCode::BAD_REQUEST, "a WebSocket handshake is a GET");
        }
        let connection = headers.get_all(CONNECTION).iter();
        if !connection
            .into_iter()
            .any(|v| has_token(v.as_bytes(), b"upgrade"))
        {
            return Check::Refused(StatusCode::BAD_REQUEST, "Connection lacks upgrade");
        }
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        // §4.4: the versions the server speaks go with the refusal.
        return Check::Refused(
            StatusCode::UPGRADE_REQUIRED,
            "Sec-WebSocket-Version is not 13",
        );
    }
    let key = match h2 {
        true => None,
        false => match headers.get(SEC_WEBSOCKET_KEY) {
            // §4.2.1: 16 bytes in base64 are 24 characters ending "==".
            Some(key) if key.len() == 24 && key.as_bytes().ends_with(b"==") => Some(key.clone()),
            _ => return Check::Refused(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key"),
        },
    };
    let offers = headers.get_all(SEC_WEBSOCKET_EXTENSIONS).iter();
    Check::WebSocket(Handshake {
        key,
        deflate: deflate::negotiate(offers.map(HeaderValue::as_bytes)),
    })
}

/// Whether a comma-separated header value holds `token` (any case): `Upgrade` and
/// `Connection` here, `Connection` for the service too (as hyper reads it).
pub(in crate::front) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for a key (§4.2.2, item 5.4).
fn accept_key(key: &HeaderValue) -> HeaderValue {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(ctx.finish());
    // Base64 is always a valid header value.
    HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static(""))
}

/// Where a WebSocket's access-log entry and metrics wait for its end: the response
/// carries it, the request's service fills it, the session empties it when it is over.
#[derive(Clone, Default)]
pub struct Observed(Arc<Mutex<Option<Box<dyn Send>>>>);

impl Observed {
    /// Keeps `observers` until the WebSocket ends.
    pub fn keep(&self, observers: Box<dyn Send>) {
        *crate::lock::lock(&self.0) = Some(observers);
    }

    fn end(&self) {
        let observers = crate::lock::lock(&self.0).take();
        drop(observers);
    }
}

/// What a session needs besides the handshake.
pub struct Opened {
    /// The worker serving it.
    pub worker: Arc<WorkerConn>,
    /// Its stream on the worker's channel.
    pub stream: u32,
    /// The stream's events (the worker's messages, closes and credit).
    pub events: Events,
    /// Tells it to close for a stop of the front tier (1001) or a rotation (1012).
    pub closer: Closer,
    /// `--ws-max-size` and the pings.
    pub settings: Settings,
    /// An HTTP/1.1 connection's guard, told when the WebSocket ends (the connection's
    /// task waits for it).
    pub upgraded: Option<Arc<crate::front::conn::guard::ConnGuard>>,
    /// An HTTP/2 connection's busy token, held while the WebSocket lives on its stream.
    pub busy: Option<crate::front::conn::guard::Busy>,
    /// What the client's bytes held here count against: the front tier's memory for
    /// what clients send.
    pub memory: Arc<crate::front::dispatch::budget::Budget>,
}

/// The application accepted: the response completing the handshake (101, or 200 over
/// HTTP/2), and the session spawned to run once hyper hands over the connection.
pub fn accepted(
    handshake: Handshake,
    accept: WsAccept,
    upgrade: hyper::upgrade::OnUpgrade,
    opened: Opened,
) -> Result<Response<ResponseBody>, String> {
    let mut response = Response::new(ResponseBody::Full(None));
    let headers = response.headers_mut();
    for (name, value) in accept.headers {
        let name = HeaderName::from_bytes(&name).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_maybe_shared(value).map_err(|e| e.to_string())?;
        headers.append(name, value);
    }
    if let Some(subprotocol) = accept.subprotocol {
        let value = HeaderValue::from_maybe_shared(subprotocol).map_err(|e| e.to_string())?;
        headers.insert(SEC_WEBSOCKET_PROTOCOL, value);
    }
    if let Some(agreed) = &handshake.deflate {
        headers.insert(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(agreed.response),
        );
    }
    let status = match &handshake.key {
        Some(key) => {
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept_key(key));
            StatusCode::SWITCHING_PROTOCOLS
        }
        // RFC 8441 §5: a 2xx answers the extended CONNECT.
        None => StatusCode::OK,
    };
    *response.status_mut() = status;
    let observed = Observed::default();
    response.extensions_mut().insert(observed.clone());
    let deflate = handshake.deflate.is_some();
    let upgraded = opened.upgraded.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                session::run(io, opened, deflate).await;
            }
            Err(err) => {
                tracing::debug!("WebSocket handshake not completed: {err}");
                opened.worker.ws_gone(opened.stream, 1006);
            }
        }
        observed.end();
        if let Some(guard) = upgraded {
            guard.session_over();
        }
    });
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_value_names_its_tokens_in_any_case_and_place() {
        assert!(has_token(b"close", b"close"));
        assert!(has_token(b"Keep-Alive, CLOSE", b"close"));
        assert!(has_token(b" upgrade ,close ", b"close"));
        assert!(!has_token(b"closed", b"close"));
        assert!(!has_token(b"keep-alive", b"close"));
        assert!(!has_token(b"", b"close"));
    }

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        // §1.3's worked example.
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept_key(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn handshakes_are_told_apart() {
        let parts =
            |builder: hyper::http::request::Builder| builder.body(()).unwrap().into_parts().0;
        let good = || {
            hyper::Request::get("/ws")
                .version(Version::HTTP_11)
                .header("upgrade", "WebSocket")
                .header("connection", "keep-alive, Upgrade")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("sec-websocket-version", "13")
        };
        assert!(matches!(check(&parts(good())), Check::WebSocket(_)));
        assert!(matches!(
            check(&parts(hyper::Request::get("/"))),
            Check::Plain
        ));
        let old = good().header("sec-websocket-version", "8");
        let mut old = parts(old);
        old.headers
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert!(matches!(
            check(&old),
            Check::Refused(StatusCode::UPGRADE_REQUIRED, _)
        ));
        let mut keyless = parts(good());
        keyless.headers.remove("sec-websocket-key");
        assert!(matches!(
            check(&keyless),
            Check::Refused(StatusCode::BAD_REQUEST, _)
        ));
        let mut post = parts(good());
        post.method = Method::POST;
        assert!(matches!(
            check(&post),
            Check::Refused(StatusCode::BAD_REQUEST, _)
        ));
    }
}
