//! [`ConnInfo`]: what the front tier knows of one connection, which every request on it
//! shares. Its own module below `service` (which serves the requests) and `proxy` (which
//! reads who the client is), so that neither imports the other for it.

use std::net::SocketAddr;
use std::sync::Arc;

use super::guard::ConnGuard;
use super::ip_text::IpText;
use super::stall::Stalls;
use crate::front::dispatch::budget::ConnBudgets;
use crate::protocol::Scheme;

/// What every request of one connection shares.
pub struct ConnInfo {
    /// The peer, for a TCP connection.
    pub remote: Option<SocketAddr>,
    /// The peer's address as text, written once for all the connection's requests.
    pub remote_text: Option<IpText>,
    /// SERVER_NAME: the listening socket's address (or the socket path).
    pub server_name: Arc<str>,
    /// SERVER_PORT: the listening socket's port (empty for a Unix socket).
    pub server_port: Arc<str>,
    /// The scheme the client connected with.
    pub scheme: Scheme,
    /// What the connection's guard found, shared with it.
    pub guard: Arc<ConnGuard>,
    /// The memory its bodies may hold, all its streams together.
    pub budgets: ConnBudgets,
    /// The send timeout of its HTTP/2 responses.
    pub stalls: Arc<Stalls>,
}
