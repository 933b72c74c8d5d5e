//! The first stage of a request: accepting and holding its connection. The TLS
//! handshake, the guard between the socket and hyper, hyper's HTTP/1 or HTTP/2 as the
//! guard's look at the first bytes says, what is known of the client (proxy headers,
//! its address as text), the file ranges its responses send with sendfile(2), the last
//! response sent with the FIN, the `--redirect-http` listeners, stalled HTTP/2 sends
//! and the graceful stop of connections.

pub(super) mod conn_info;
pub mod guard;
pub(super) mod ip_text;
pub(super) mod last;
pub(super) mod mapped;
pub(super) mod proxy;
pub(super) mod redirect;
pub(super) mod served;
mod signal;
mod stall;
pub(super) mod stopping;
pub(super) mod tls;
