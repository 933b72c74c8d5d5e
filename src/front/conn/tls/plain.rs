//! Plain HTTP sent to a TLS port: recognised by the connection's first byte, before the
//! handshake, and answered `400` with a page saying HTTPS is required (nginx answers
//! "The plain HTTP request was sent to HTTPS port"), instead of a TLS alert that
//! clients print as garbage ("Received HTTP/0.9").
//!
//! The first byte is only peeked: a TLS connection reaches the handshake with every
//! byte it sent. A TLS record starts with its content type, 0x16 for the handshake
//! (RFC 8446 §5.1); an HTTP/1 request starts with its method, a token of letters (RFC
//! 9112 §3), or an empty line a server ignores (§2.2). Anything else goes to the
//! handshake, which refuses it as before. Nothing from such a connection reaches the
//! application, and its time counts against the handshake's `--header-timeout`.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};

/// A connection whose first byte can be looked at without taking it.
pub trait Peek {
    /// The first byte the peer sent, left in place; None if it closed without one.
    fn first_byte(&self) -> impl Future<Output = io::Result<Option<u8>>> + Send;
}

impl Peek for TcpStream {
    async fn first_byte(&self) -> io::Result<Option<u8>> {
        let mut byte = [0];
        Ok((self.peek(&mut byte).await? == 1).then_some(byte[0]))
    }
}

impl Peek for UnixStream {
    // tokio has no peek for Unix streams: wait for readability, then MSG_PEEK.
    async fn first_byte(&self) -> io::Result<Option<u8>> {
        loop {
            self.readable().await?;
            match self.try_io(Interest::READABLE, || peek_byte(self)) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                peeked => return peeked,
            }
        }
    }
}

fn peek_byte(socket: &impl AsFd) -> io::Result<Option<u8>> {
    let mut byte = [MaybeUninit::new(0)];
    let peeked = socket2::SockRef::from(socket).peek(&mut byte)?;
    // SAFETY: the byte was initialised above (and by the peek when it returned 1).
    Ok((peeked == 1).then(|| unsafe { byte[0].assume_init() }))
}

/// Whether a connection starting with `first` speaks plain HTTP/1.
pub fn is_plain_http(first: u8) -> bool {
    first.is_ascii_alphabetic() || first == b'\r' || first == b'\n'
}

/// The answer: a complete HTTP/1.1 response, rwsgi's error page, that closes the
/// connection.
static ANSWER: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let page = crate::error_page::html(
        400,
        "Bad Request",
        Some("The plain HTTP request was sent to HTTPS port."),
    );
    let mut answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        page.len()
    )
    .into_bytes();
    answer.extend_from_slice(page.as_bytes());
    answer
});

/// The most of a request head read before answering: the answer does not depend on it.
const HEAD_READ: usize = 16 * 1024;
/// The most read after answering, while waiting for the client to close.
const LINGER_READ: usize = 64 * 1024;

/// Reads the request head (up to [`HEAD_READ`]), answers 400 and closes. The caller
/// bounds it in time.
pub async fn refuse<S>(mut stream: S) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = [0u8; 2048];
    let mut read = 0;
    // The last bytes seen, to find the blank line ending the head across reads.
    let mut tail = [0u8; 4];
    'head: while read < HEAD_READ {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(()); // gone without waiting for an answer
        }
        read += n;
        for &byte in &buf[..n] {
            tail = [tail[1], tail[2], tail[3], byte];
            if tail == *b"\r\n\r\n" || tail[2..] == *b"\n\n" {
                break 'head;
            }
        }
    }
    stream.write_all(&ANSWER).await?;
    stream.shutdown().await?;
    // Closing with unread bytes would reset the connection, and a reset can destroy the
    // answer before the client reads it: read (and drop) what it still sends until it
    // closes, as nginx's lingering close does.
    let mut lingered = 0;
    while lingered < LINGER_READ {
        match stream.read(&mut buf).await? {
            0 => break,
            n => lingered += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_well_formed() {
        let text = std::str::from_utf8(&ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert!(body.contains("The plain HTTP request was sent to HTTPS port"));
    }

    #[test]
    fn tls_and_http_are_told_apart() {
        assert!(!is_plain_http(0x16));
        assert!(!is_plain_http(0x80));
        for request in [
            &b"GET / HTTP/1.1"[..],
            b"POST",
            b"options",
            b"PRI *",
            b"\r\nGET",
        ] {
            assert!(is_plain_http(request[0]));
        }
    }
}
