//! A connection's last response leaves in the packet that closes it.
//!
//! When hyper closes a plain TCP connection after a response (the request said
//! `Connection: close`, or was HTTP/1.0 without keep-alive, or the response said
//! `Connection: close`), it writes the response, then shuts the socket down. Written
//! plainly, the response and the FIN are two segments, each acknowledged: ten segments
//! for a one-request connection. Written with `MSG_MORE`, the response waits in the
//! socket's queue for the shutdown that follows in the same turn of the connection's
//! task, and leaves with the FIN in one segment: eight, with less work for both ends.
//!
//! The kernel holds such bytes until something pushes them; nothing else would. So the
//! connection's task, each time it is about to wait (a streamed body whose next chunk
//! has not come), pushes what is held first ([`LastResponse::push`]): setting
//! `TCP_NODELAY`, already set, sends a socket's queue at once; so does the guard when
//! a connection ends without a shutdown (an error). A response is never delayed; at
//! worst it costs that one system call more.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// What one connection knows of its last response: shared by the service, which knows
/// the connection ends after the response, and the guard, which writes it.
pub struct LastResponse {
    /// The response under way is the connection's last.
    last: AtomicBool,
    /// The socket holding back bytes written with `MSG_MORE`, or [`NONE`].
    held: AtomicI32,
}

/// No socket holds bytes back.
const NONE: RawFd = -1;

impl Default for LastResponse {
    fn default() -> LastResponse {
        LastResponse {
            last: AtomicBool::new(false),
            held: AtomicI32::new(NONE),
        }
    }
}

impl LastResponse {
    /// The response under way ends the connection: called by the service before it
    /// returns the response to hyper.
    pub fn mark(&self) {
        self.last.store(true, Ordering::Relaxed);
    }

    /// Whether the connection ends after the response under way.
    pub fn is_last(&self) -> bool {
        self.last.load(Ordering::Relaxed)
    }

    /// Socket `fd` holds back bytes written with `MSG_MORE`.
    pub fn holding(&self, fd: RawFd) {
        self.held.store(fd, Ordering::Relaxed);
    }

    /// The socket was shut down: its FIN took what it held.
    pub fn shut(&self) {
        self.held.store(NONE, Ordering::Relaxed);
    }

    /// Sends what the socket holds back, if it does. Called by the connection's task
    /// each time it is about to wait, while it owns the connection (and so the socket),
    /// and by the guard as it drops, before the socket it owns closes.
    pub fn push(&self) {
        let fd = self.held.swap(NONE, Ordering::Relaxed);
        if fd == NONE {
            return;
        }
        // SAFETY: `fd` is the socket of this connection, recorded by its guard on a
        // write; the callers own the connection or the guard, which own the socket, so
        // it is open for the call (and not reused for another file until it is closed).
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Err(err) = socket2::SockRef::from(&socket).set_tcp_nodelay(true) {
            // The connection is failing anyway: its next write or its close says so.
            tracing::debug!("cannot push a held response: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_sends_what_the_socket_held_back() {
        use std::io::Read;
        use std::os::fd::AsRawFd;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        sender.set_nodelay(true).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        receiver.set_nonblocking(true).unwrap();
        let data = b"held back";
        // SAFETY: the socket is open; the buffer is valid for its length.
        let sent = unsafe {
            libc::send(
                sender.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_MORE,
            )
        };
        assert_eq!(sent, data.len() as isize);
        let mut got = [0; 64];
        let early = receiver.read(&mut got).unwrap_err();
        assert_eq!(
            early.kind(),
            std::io::ErrorKind::WouldBlock,
            "not held back"
        );

        let last = LastResponse::default();
        last.holding(sender.as_raw_fd());
        last.push();
        receiver.set_nonblocking(false).unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let read = receiver.read(&mut got).unwrap();
        assert_eq!(&got[..read], data);
        assert_eq!(last.held.load(Ordering::Relaxed), NONE);
    }

    #[test]
    fn a_push_without_a_held_socket_does_nothing_and_a_shutdown_forgets_the_socket() {
        let last = LastResponse::default();
        assert!(!last.is_last());
        last.push();
        last.holding(7);
        last.shut();
        assert_eq!(last.held.load(Ordering::Relaxed), NONE);
        last.mark();
        assert!(last.is_last());
    }
}
