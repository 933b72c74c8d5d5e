use super::check::{Checker, Limits};

const LIMITS: Limits = Limits {
    request_line: 4094,
    fields: 100,
    field_size: 8190,
};

/// Feeds `input` in pieces of `step` bytes; returns the bytes released, or the refusal.
fn feed(input: &[u8], step: usize) -> Result<usize, u16> {
    let mut checker = Checker::new(LIMITS);
    let mut pending: Vec<u8> = Vec::new();
    let mut released = 0;
    for piece in input.chunks(step) {
        pending.extend_from_slice(piece);
        let examined = checker.examine(&pending).map_err(|r| r.reject.status())?;
        pending.drain(..examined.examined);
        released += examined.released;
    }
    Ok(released)
}

/// The outcome must not depend on how the bytes were split.
fn check(input: &[u8]) -> Result<usize, u16> {
    let whole = feed(input, input.len().max(1));
    for step in [1, 2, 3, 7] {
        assert_eq!(
            feed(input, step),
            whole,
            "split every {step} bytes: {input:?}"
        );
    }
    whole
}

fn ok(input: &[u8]) {
    assert_eq!(
        check(input),
        Ok(input.len()),
        "{}",
        String::from_utf8_lossy(input)
    );
}

fn refused(input: &[u8], status: u16) {
    assert_eq!(
        check(input),
        Err(status),
        "{}",
        String::from_utf8_lossy(input)
    );
}

#[test]
fn simple_requests_pass_whole() {
    ok(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    ok(b"GET /x?y=1 HTTP/1.0\r\n\r\n");
    ok(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello");
    ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b;c=\"d e\"\r\nhello\r\n0\r\nX-T: 1\r\n\r\n");
    ok(b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n");
}

#[test]
fn pipelined_requests_pass() {
    ok(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: a\r\n\r\n");
}

#[test]
fn head_bytes_are_held_until_the_head_is_complete() {
    assert_eq!(check(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(0));
    // A body is released as it arrives.
    assert_eq!(
        check(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"),
        Ok(51)
    );
}

#[test]
fn counts_heads() {
    let mut checker = Checker::new(LIMITS);
    let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET";
    let examined = checker.examine(input).map_err(|r| r.reject.status());
    assert_eq!(examined.map(|e| e.examined), Ok(input.len()));
    assert_eq!(checker.heads(), 2);
    assert!(checker.in_head());
}

#[test]
fn smuggling_attempts_are_refused() {
    let cases: &[&[u8]] = &[
        // Both framings.
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        // Conflicting lengths.
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
        // Obsolete folding.
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
        // Bare LF, bare CR.
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        // Whitespace before the colon, non-token names.
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX\tY: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX(Y): b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
        // Control characters in a value.
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
        // Host missing or repeated.
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        // Transfer-Encoding not ending in chunked, in HTTP/1.0, chunked twice, empty.
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n",
        // Bad request lines.
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        b"GET / http/1.1\r\nHost: a\r\n\r\n",
        b"GET /\r\n\r\n",
        b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for case in cases {
        refused(case, 400);
    }
}

#[test]
fn bad_chunks_are_refused() {
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let bodies: &[&[u8]] = &[
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",
        b"fffffffffffffffff\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5 x\r\nhello\r\n0\r\n\r\n",
        b"5;a\x01\r\nhello\r\n0\r\n\r\n",
        b"0\r\nX: \x00\r\n\r\n",
        b"0\r\n X: folded\r\n\r\n",
    ];
    for body in bodies {
        refused(&[&head[..], body].concat(), 400);
    }
    let long_extension = [&b"5;"[..], &vec![b'a'; 5000], b"\r\nhello\r\n0\r\n\r\n"].concat();
    refused(&[&head[..], &long_extension].concat(), 400);
    // Leading zeros are fine, and so is the largest size that fits.
    assert!(check(&[&head[..], b"0005\r\nhello\r\n0\r\n\r\n"].concat()).is_ok());
    assert!(check(&[&head[..], b"00000000000000000ffffffffffffffff\r\n"].concat()).is_ok());
}

#[test]
fn unknown_transfer_codings_are_not_implemented() {
    refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    );
}

#[test]
fn limits_give_their_statuses() {
    let long_uri = [
        &b"GET /"[..],
        &vec![b'a'; 5000],
        b" HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
    .concat();
    refused(&long_uri, 414);
    let long_field = [
        &b"GET / HTTP/1.1\r\nHost: a\r\nX: "[..],
        &vec![b'a'; 9000],
        b"\r\n\r\n",
    ]
    .concat();
    refused(&long_field, 431);
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    refused(&many, 431);
    // Exactly at the limits passes.
    let line = [
        &b"GET /"[..],
        &vec![b'a'; 4094 - 15],
        b" HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
    .concat();
    ok(&line);
}

#[test]
fn a_refusal_is_final() {
    let mut checker = Checker::new(LIMITS);
    assert!(checker.examine(b"GET / HTTP/1.1\nHost: a\r\n\r\n").is_err());
    assert!(
        checker
            .examine(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .is_err()
    );
}

#[test]
fn a_field_line_is_counted_with_its_crlf() {
    let field = |length: usize| {
        let value = vec![b'v'; length - 3];
        [
            &b"GET / HTTP/1.1\r\nHost: a\r\nX: "[..],
            &value,
            b"\r\n\r\n",
        ]
        .concat()
    };
    // 8188 bytes + CRLF = 8190, the limit; one byte more is too long (as gunicorn counts).
    ok(&field(8188));
    refused(&field(8189), 431);
}

#[test]
fn request_targets_must_fit_their_method() {
    ok(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    ok(b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n");
    ok(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
    refused(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    refused(b"GET a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    refused(b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    refused(b"GET ://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    refused(b"GET 1http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

#[test]
fn two_content_types_are_refused() {
    refused(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Type: a/b\r\ncontent-type: c/d\r\n\r\n",
        400,
    );
}

#[test]
fn whitespace_only_before_a_chunk_extension() {
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    ok(&[&head[..], b"5 ;a=b\r\nhello\r\n0\r\n\r\n"].concat());
    refused(&[&head[..], b"5\r\nhello\r\n0 \r\n\r\n"].concat(), 400);
    refused(&[&head[..], b"5\t\r\nhello\r\n0\r\n\r\n"].concat(), 400);
}

#[test]
fn framing_and_routing_fields_are_refused_as_trailers() {
    let head =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n";
    ok(&[&head[..], b"X-Checksum: 1\r\n\r\n"].concat());
    for trailer in [
        &b"Content-Length: 99\r\n\r\n"[..],
        b"Host: b\r\n\r\n",
        b"transfer-encoding: chunked\r\n\r\n",
        b"Authorization: x\r\n\r\n",
    ] {
        refused(&[&head[..], trailer].concat(), 400);
    }
}

#[test]
fn bytes_after_an_upgrade_request_wait_for_its_answer() {
    let handshake =
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    // A WebSocket frame is no HTTP: held, not refused, until the answer is known.
    let frame = b"\x81\x82abcd\x01\x02";
    let mut stream = handshake.to_vec();
    stream.extend_from_slice(frame);
    assert_eq!(check(&stream), Ok(handshake.len()));
    let mut checker = Checker::new(LIMITS);
    let examined = checker.examine(&stream).unwrap();
    assert_eq!(
        (examined.examined, examined.released),
        (handshake.len(), handshake.len())
    );
    assert!(checker.awaiting_upgrade());
    assert_eq!(checker.examine(frame).unwrap().examined, 0);
    // Answered without a 101: what follows is a next request, checked as any.
    checker.resume();
    assert!(!checker.awaiting_upgrade());
    let next = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(checker.examine(next).unwrap().released, next.len());
    // An upgrade asked with a body, or in HTTP/1.0, is no upgrade to wait for.
    ok(b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    ok(b"GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
}

/// `socket` guarded with roomy limits and timeouts.
fn guarded<S>(socket: S, guard: std::sync::Arc<super::ConnGuard>) -> super::Guarded<S> {
    let limits = Limits {
        request_line: 8192,
        fields: 100,
        field_size: 8192,
    };
    let wait = std::time::Duration::from_secs(10);
    let timeouts = super::Timeouts {
        head: wait,
        keepalive: wait,
        send: wait,
    };
    super::Guarded::new(socket, guard, limits, timeouts)
}

#[tokio::test]
async fn the_guard_sends_mapped_slices_from_the_file_and_the_rest_as_written() {
    use std::io::{self, IoSlice};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::ConnGuard;
    use crate::front::conn::mapped::tests::file_of;

    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let file = file_of(&content);
    let (socket, mut peer) = UnixStream::pair().unwrap();
    let guard = Arc::new(ConnGuard::default());
    let mut guarded = guarded(socket, guard.clone()).send_files();
    let files = guard.mapped_files().unwrap().clone();
    let mapped = files.map(&file, 1000, 200_000).unwrap();
    let mut expected = b"head:".to_vec();
    expected.extend_from_slice(&content[1000..201_000]);
    expected.extend_from_slice(b":tail");
    let length = expected.len();
    let reader = tokio::spawn(async move {
        let mut got = vec![0; length];
        peer.read_exact(&mut got).await.unwrap();
        (got, peer)
    });
    let mut bufs = [
        IoSlice::new(b"head:"),
        IoSlice::new(&mapped[..100_000]),
        IoSlice::new(&mapped[100_000..]),
        IoSlice::new(b":tail"),
    ];
    let mut slices = &mut bufs[..];
    while !slices.is_empty() {
        let n = guarded.write_vectored(slices).await.unwrap();
        IoSlice::advance_slices(&mut slices, n);
    }
    let (got, _peer) = reader.await.unwrap();
    assert!(got == expected, "the bytes sent differ");
    // Cut short (once what was sent is read: the socket refers to the page cache
    // until then): the next send of the mapping fails as the file ends, where
    // writing the memory of the mapping would have faulted.
    file.set_len(100_000).unwrap();
    let failed = guarded.write(&mapped[150_000..]).await.unwrap_err();
    assert_eq!(failed.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_last_response_held_for_the_fin_goes_out_when_the_guard_drops_without_a_shutdown() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    use super::ConnGuard;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    ours.set_nodelay(true).unwrap();
    ours.set_nonblocking(true).unwrap();
    let socket = tokio::net::TcpStream::from_std(ours).unwrap();
    // Input never read: closing the socket then resets the connection, which discards
    // whatever the socket still held back.
    peer.write_all(b"unread").unwrap();
    let guard = Arc::new(ConnGuard::default());
    guard.last_response().mark();
    let mut guarded = guarded(socket, guard);
    guarded.write_all(b"the last response").await.unwrap();
    drop(guarded);
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = [0; 64];
    let read = peer.read(&mut got).expect("the response before the reset");
    assert_eq!(&got[..read], b"the last response");
}

#[tokio::test]
async fn the_guard_tells_http2_prior_knowledge_from_http1_and_keeps_the_bytes_it_read() {
    use std::future::poll_fn;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::ConnGuard;

    const SETTINGS: &[u8] = b"\0\0\0\x04\0\0\0\0\0";
    let http1: &[&[u8]] = &[b"GET / HTTP/1.1\r\n", b"Host: a\r\n\r\n"];
    let http2: &[&[u8]] = &[b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n", SETTINGS];
    // The preface's first bytes, then a difference: HTTP/1 after all.
    let almost: &[&[u8]] = &[b"PRI * HTTP/2", b".1\r\nHost: a\r\n\r\n"];
    // What the reader gets: "PRI * HTTP/2.1" is no HTTP/1 request line either, so it
    // is refused and the reader gets the stand-in in its place (then nothing, ever).
    for (pieces, h2, expected) in [
        (http1, false, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        (http2, true, [super::H2_PREFACE, SETTINGS].concat()),
        (almost, false, super::STAND_IN.to_vec()),
        (&[][..], false, Vec::new()),
    ] {
        let (socket, mut peer) = UnixStream::pair().unwrap();
        let mut guarded = guarded(socket, Arc::new(ConnGuard::default()));
        let sender = tokio::spawn(async move {
            for piece in pieces {
                peer.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The end of input follows what was sent.
        });
        let detected = poll_fn(|cx| guarded.poll_detect(cx)).await.unwrap();
        assert_eq!(detected, h2, "{pieces:?}");
        sender.await.unwrap();
        let mut got = vec![0; expected.len()];
        guarded.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected, "{pieces:?}");
        if pieces != almost {
            assert_eq!(guarded.read(&mut [0; 16]).await.unwrap(), 0, "{pieces:?}");
        }
    }
}
