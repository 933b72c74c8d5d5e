//! Unit tests of the channel codec: each frame kind round-trips, every split point of a
//! stream decodes to the same frames, and hostile input is refused without panicking.

use bytes::{Bytes, BytesMut};

use super::*;

fn sample_request() -> RequestHead {
    RequestHead {
        method: Bytes::from_static(b"POST"),
        scheme: Scheme::Http,
        version: 11,
        raw_uri: Bytes::from_static(b"/caf%C3%A9?x=1"),
        path: Bytes::from_static(b"/caf%C3%A9"),
        query: Bytes::from_static(b"x=1"),
        remote_addr: Bytes::from_static(b"127.0.0.1"),
        remote_port: Some(51234),
        server_name: Bytes::from_static(b"127.0.0.1"),
        server_port: Bytes::from_static(b"8000"),
        request_id: Bytes::from_static(b"3f2a-id"),
        headers: vec![
            (
                Bytes::from_static(b"host"),
                Bytes::from_static(b"localhost"),
            ),
            (Bytes::from_static(b"x-a"), Bytes::from_static(b"1")),
            (Bytes::from_static(b"x-a"), Bytes::from_static(b"")),
        ],
    }
}

fn sample_response() -> ResponseHead {
    ResponseHead {
        status: 404,
        reason: Bytes::from_static(b"Not Here"),
        close: true,
        headers: vec![(
            Bytes::from_static(b"Content-Type"),
            Bytes::from_static(b"text/plain"),
        )],
    }
}

/// A stream with one frame of every kind, and the frames it must decode to.
fn conversation() -> (Vec<u8>, Vec<(Kind, u32)>) {
    let mut out = Vec::new();
    Hello {
        pid: 42,
        capacity: 1,
        ring: false,
    }
    .encode(&mut out);
    sample_request().encode(&mut out, 7).unwrap();
    encode_frame(&mut out, Kind::Body, 7, b"hello body");
    BodyFile {
        path: Bytes::from_static(b"/tmp/x"),
        length: 99,
    }
    .encode(&mut out, 8)
    .unwrap();
    encode_frame(&mut out, Kind::End, 7, b"");
    sample_response().encode(&mut out, 7).unwrap();
    encode_frame(&mut out, Kind::Abort, 9, b"client went away");
    encode_frame(&mut out, Kind::Retire, 0, b"");
    encode_frame(&mut out, Kind::Retired, 0, b"");
    Trailers::encode_parts(&mut out, 7, sample_trailers()).unwrap();
    let expected = vec![
        (Kind::Hello, 0),
        (Kind::RequestHead, 7),
        (Kind::Body, 7),
        (Kind::BodyFile, 8),
        (Kind::End, 7),
        (Kind::ResponseHead, 7),
        (Kind::Abort, 9),
        (Kind::Retire, 0),
        (Kind::Retired, 0),
        (Kind::Trailers, 7),
    ];
    (out, expected)
}

fn sample_trailers() -> impl Iterator<Item = (&'static [u8], &'static [u8])> {
    [(&b"x-checksum"[..], &b"abc"[..]), (b"x-empty", b"")].into_iter()
}

fn decode_all(chunks: &[&[u8]]) -> Result<Vec<Frame>, ProtocolError> {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(frame) = decoder.decode(&mut buf)? {
            frames.push(frame);
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    Ok(frames)
}

#[test]
fn every_kind_round_trips() {
    let (bytes, expected) = conversation();
    let frames = decode_all(&[&bytes]).unwrap();
    let kinds: Vec<_> = frames.iter().map(|f| (f.kind, f.stream)).collect();
    assert_eq!(kinds, expected);
    assert_eq!(
        Hello::decode(frames[0].payload.clone()).unwrap(),
        Hello {
            pid: 42,
            capacity: 1,
            ring: false
        }
    );
    assert_eq!(
        RequestHead::decode(frames[1].payload.clone()).unwrap(),
        sample_request()
    );
    assert_eq!(&frames[2].payload[..], b"hello body");
    let file = BodyFile::decode(frames[3].payload.clone()).unwrap();
    assert_eq!((&file.path[..], file.length), (&b"/tmp/x"[..], 99));
    assert!(frames[4].payload.is_empty());
    assert_eq!(
        ResponseHead::decode(frames[5].payload.clone()).unwrap(),
        sample_response()
    );
    assert_eq!(&frames[6].payload[..], b"client went away");
    assert!(frames[7].payload.is_empty() && frames[8].payload.is_empty());
    let trailers = Trailers::decode(frames[9].payload.clone()).unwrap();
    let expected: Vec<(Bytes, Bytes)> = sample_trailers()
        .map(|(n, v)| (Bytes::from_static(n), Bytes::from_static(v)))
        .collect();
    assert_eq!(trailers.headers, expected);
}

#[test]
fn trailers_refuse_a_count_the_payload_cannot_hold_and_trailing_bytes() {
    assert_eq!(Kind::from_u8(11), Some(Kind::Trailers));
    // A count of a billion fields in a 4-byte payload: refused before allocating.
    let huge = Bytes::from_static(&[0x3b, 0x9a, 0xca, 0x00]);
    assert!(matches!(
        Trailers::decode(huge),
        Err(ProtocolError::TooManyHeaders(_))
    ));
    let mut out = Vec::new();
    Trailers::encode_parts(&mut out, 1, sample_trailers()).unwrap();
    let mut payload = out[HEADER_LEN..].to_vec();
    payload.push(0);
    assert!(matches!(
        Trailers::decode(payload.into()),
        Err(ProtocolError::TrailingBytes(..))
    ));
    let empty = Trailers::decode(Bytes::from_static(&[0, 0, 0, 0])).unwrap();
    assert!(empty.headers.is_empty());
}

#[test]
fn retire_kinds_have_stable_wire_bytes() {
    // Both sides of a rotation must agree on these bytes across builds.
    assert_eq!(Kind::from_u8(8), Some(Kind::Retire));
    assert_eq!(Kind::from_u8(9), Some(Kind::Retired));
    assert_eq!(Kind::from_u8(10), Some(Kind::Ring));
    assert_eq!(Kind::from_u8(11), Some(Kind::Trailers));
    assert_eq!(Kind::from_u8(12), None);
    let mut out = Vec::new();
    encode_frame(&mut out, Kind::Retired, 0, b"");
    assert_eq!(out, [0, 0, 0, 0, 9, 0, 0, 0, 0, 0]);
}

/// "Shotgun" test: the stream split in two at every byte decodes to the same frames.
#[test]
fn every_split_point_decodes_the_same() {
    let (bytes, _) = conversation();
    let whole = decode_all(&[&bytes]).unwrap();
    for split in 0..=bytes.len() {
        let (a, b) = bytes.split_at(split);
        assert_eq!(decode_all(&[a, b]).unwrap(), whole, "split at {split}");
    }
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(decode_all(&singles).unwrap(), whole);
}

#[test]
fn oversized_length_is_refused_before_allocating() {
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 3, 0, 0, 0, 0, 1][..]);
    let capacity = buf.capacity();
    assert_eq!(
        Decoder::new().decode(&mut buf),
        Err(ProtocolError::FrameTooLarge(u32::MAX))
    );
    assert_eq!(buf.capacity(), capacity);
}

#[test]
fn unknown_kind_is_refused() {
    let mut buf = BytesMut::from(&[0, 0, 0, 0, 99, 0, 0, 0, 0, 1][..]);
    assert_eq!(
        Decoder::new().decode(&mut buf),
        Err(ProtocolError::UnknownKind(99))
    );
}

#[test]
fn hello_checks_magic_version_and_capacity() {
    let mut out = Vec::new();
    Hello {
        pid: 1,
        capacity: 4,
        ring: true,
    }
    .encode(&mut out);
    let mut payload = out[HEADER_LEN..].to_vec();
    assert!(Hello::decode(Bytes::from(payload.clone())).is_ok());
    payload[5] = 99;
    assert_eq!(
        Hello::decode(Bytes::from(payload.clone())),
        Err(ProtocolError::Version(99))
    );
    payload[0] = b'X';
    assert_eq!(
        Hello::decode(Bytes::from(payload)),
        Err(ProtocolError::BadMagic)
    );
    let mut zero = Vec::new();
    Hello {
        pid: 1,
        capacity: 0,
        ring: false,
    }
    .encode(&mut zero);
    assert!(Hello::decode(Bytes::copy_from_slice(&zero[HEADER_LEN..])).is_err());
}

#[test]
fn every_truncation_of_a_head_is_an_error() {
    let mut out = Vec::new();
    sample_request().encode(&mut out, 1).unwrap();
    let payload = &out[HEADER_LEN..];
    for cut in 0..payload.len() {
        assert!(
            RequestHead::decode(Bytes::copy_from_slice(&payload[..cut])).is_err(),
            "cut {cut}"
        );
    }
    let mut longer = payload.to_vec();
    longer.push(0);
    assert_eq!(
        RequestHead::decode(Bytes::from(longer)),
        Err(ProtocolError::TrailingBytes("request head", 1))
    );
}

#[test]
fn hostile_header_count_is_refused_without_allocating() {
    // A response head claiming four billion headers in a few bytes.
    let mut payload = Vec::new();
    FieldWriter::new(&mut payload)
        .u16(200)
        .bytes(b"OK")
        .u8(0)
        .u32(u32::MAX);
    assert_eq!(
        ResponseHead::decode(Bytes::from(payload)),
        Err(ProtocolError::TooManyHeaders(u32::MAX))
    );
}

#[test]
fn a_head_larger_than_a_frame_is_an_error_not_a_corrupt_frame() {
    let mut head = sample_request();
    head.headers.push((
        Bytes::from_static(b"x-big"),
        Bytes::from(vec![b'a'; MAX_PAYLOAD]),
    ));
    let mut out = vec![1, 2, 3];
    assert!(head.encode(&mut out, 1).is_err());
    assert_eq!(out, vec![1, 2, 3], "nothing half-written");
}

#[test]
fn garbage_never_panics() {
    // A deterministic pseudo-random walk over byte strings; the fuzz target does more.
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..2000 {
        let mut bytes = Vec::new();
        for _ in 0..(seed % 64) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push(seed as u8);
        }
        crate::protocol::fuzz_decode(&bytes);
    }
}

/// The WebSocket payloads round-trip, and what they must refuse is refused.
#[test]
fn websocket_payloads_round_trip_and_refuse_what_they_must() {
    let decode_one = |out: &[u8]| {
        let mut buf = BytesMut::from(out);
        let frame = Decoder::new().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        frame
    };
    let accept = WsAccept {
        subprotocol: Some(Bytes::from_static(b"chat")),
        headers: vec![(Bytes::from_static(b"x-a"), Bytes::from_static(b"1"))],
    };
    let mut out = Vec::new();
    accept.encode(&mut out, 9).unwrap();
    let frame = decode_one(&out);
    assert_eq!((frame.kind, frame.stream), (Kind::WsAccept, 9));
    assert_eq!(WsAccept::decode(frame.payload).unwrap(), accept);
    let none = WsAccept {
        subprotocol: None,
        headers: Vec::new(),
    };
    out.clear();
    none.encode(&mut out, 1).unwrap();
    assert_eq!(WsAccept::decode(decode_one(&out).payload).unwrap(), none);

    for (text, last) in [(true, true), (false, false), (true, false), (false, true)] {
        out.clear();
        WsMessage::encode(&mut out, 3, text, last, b"hi\x00").unwrap();
        let message = WsMessage::decode(decode_one(&out).payload).unwrap();
        assert_eq!((message.text, message.last), (text, last));
        assert_eq!(&message.data[..], b"hi\x00");
    }
    assert!(WsMessage::decode(Bytes::new()).is_err());
    assert!(WsMessage::decode(Bytes::from_static(b"\x04data")).is_err());

    out.clear();
    let long = "é".repeat(100);
    WsClose::encode(&mut out, 3, 1001, &long);
    let close = WsClose::decode(decode_one(&out).payload).unwrap();
    assert_eq!(close.code, 1001);
    assert!(close.reason.len() <= MAX_CLOSE_REASON && close.reason.len().is_multiple_of(2));
    assert!(WsClose::decode(Bytes::from_static(b"\x03\xe8\xff")).is_err());
    assert!(WsClose::decode(Bytes::from_static(b"\x03")).is_err());

    out.clear();
    WsCredit::encode(&mut out, 3, WS_WINDOW);
    let credit = WsCredit::decode(decode_one(&out).payload).unwrap();
    assert_eq!(credit.bytes, WS_WINDOW);
    assert!(WsCredit::decode(Bytes::from_static(b"\0\0\0\x01\x02")).is_err());

    // A WebSocket handshake's head is a request head under another kind.
    out.clear();
    let head = sample_request();
    RequestHeadRef {
        method: &head.method,
        scheme: head.scheme,
        version: head.version,
        raw_uri: &head.raw_uri,
        path: &head.path,
        query: &head.query,
        remote_addr: &head.remote_addr,
        remote_port: head.remote_port,
        server_name: &head.server_name,
        server_port: &head.server_port,
        request_id: &head.request_id,
    }
    .encode_as(
        &mut out,
        Kind::WsConnect,
        5,
        head.headers.iter().map(|(n, v)| (&n[..], &v[..])),
    )
    .unwrap();
    let frame = decode_one(&out);
    assert_eq!(frame.kind, Kind::WsConnect);
    assert_eq!(RequestHead::decode(frame.payload).unwrap(), head);
    assert_eq!(Kind::from_u8(24), Some(Kind::WsCredit));
    assert_eq!(Kind::from_u8(25), None);
}
