"""Request bodies: buffered by the front tier (in memory up to 1 MiB, spooled to a file
beyond), then read by the app through wsgi.input, byte for byte."""
import hashlib
import http.client
import io
import json
import os
import socket
import threading

import pytest

from rawhttp import read_until_closed

TIMEOUT = 20
MiB = 1 << 20


def post(port, path, body, headers=(), chunked=False):
    """POSTs `body` (bytes, or an iterable of chunks when `chunked`); (status, data)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body=body, headers=dict(headers), encode_chunked=chunked)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_chunked_upload(serve):
    server = serve("wsgi_bodies:digest")
    parts = [os.urandom(n) for n in (1, 4095, 0, 70000, 3, 200000)]

    def chunks():
        yield from parts

    status, data = post(server.port, "/", chunks(), chunked=True)
    assert status == 200, data
    report = json.loads(data)
    body = b"".join(parts)
    assert report["length"] == len(body)
    assert report["sha256"] == sha(body)
    assert report["input_terminated"] is True


def test_chunked_upload_raw_with_extensions_and_trailer(serve):
    server = serve("wsgi_bodies:echo")
    request = (b"POST /raw HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               b"5;name=value\r\nhello\r\n"
               b"1A\r\n, chunked world (26 bytes)\r\n"
               b"0\r\nX-Trailer: ignored\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        data = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert body == b"hello, chunked world (26 bytes)"


def test_ten_mib_upload_echoed_byte_exact(serve):
    server = serve("wsgi_bodies:echo")
    body = os.urandom(10 * MiB)
    status, data = post(server.port, "/echo", body,
                        headers=[("Content-Type", "application/octet-stream")])
    assert status == 200
    assert len(data) == len(body)
    assert data == body


def test_ten_mib_chunked_upload_hashed(serve):
    server = serve("wsgi_bodies:digest")
    body = os.urandom(10 * MiB)
    pieces = (body[i:i + 300_000] for i in range(0, len(body), 300_000))
    status, data = post(server.port, "/", pieces, chunked=True)
    assert status == 200, data
    report = json.loads(data)
    assert (report["length"], report["sha256"]) == (len(body), sha(body))


@pytest.mark.parametrize("size", [1, 64 * 1024, MiB - 1, MiB, MiB + 1, 3 * MiB + 7])
def test_bodies_around_the_spool_threshold(serve, size):
    server = serve("wsgi_bodies:digest", workers=1)
    body = os.urandom(size)
    status, data = post(server.port, "/", body, headers=[("Content-Type", "application/x-test")])
    assert status == 200, data
    report = json.loads(data)
    assert report["length"] == size
    assert report["sha256"] == sha(body)
    assert report["CONTENT_LENGTH"] == str(size)
    assert report["CONTENT_TYPE"] == "application/x-test"


@pytest.mark.parametrize("size", [1000, 64 * 1024, 300_000, MiB, 2 * MiB + 3])
def test_bare_read_returns_the_whole_body(serve, size):
    server = serve("wsgi_bodies:read_all", workers=1)
    body = os.urandom(size)
    status, data = post(server.port, "/", body)
    assert status == 200, data
    assert json.loads(data) == {"length": size, "sha256": sha(body), "after_end": ""}


def lines_body(where: str) -> bytes:
    """Several lines, an empty one, a long one, and a last line with no newline; padded
    past the spool threshold when `spooled` (the long lines then cross buffer fills),
    past 64 KiB when `large` (held in memory, which a sync worker reads straight from
    the ring into a `bytes` object)."""
    lines = [b"first line\n", b"\n", b"second\r\n", b"x" * 300 + b"\n"]
    long_lines = {"memory": 0, "large": 2, "spooled": 10}[where]
    lines += [bytes([65 + i % 26]) * (150_000 + i) + b"\n" for i in range(long_lines)]
    lines.append(b"last, unterminated")
    return b"".join(lines)


def expected_pieces(mode, size, body):
    """What the same calls give on io.BytesIO: the reference for wsgi.input."""
    stream = io.BytesIO(body)
    pieces = []
    if mode == "read_n":
        while True:
            pieces.append(stream.read(size))
            if not pieces[-1]:
                break
    elif mode == "read_negative":
        pieces = [stream.read(-1), stream.read(-1)]
    elif mode == "readline":
        while True:
            pieces.append(stream.readline())
            if not pieces[-1]:
                break
    elif mode == "readline_n":
        while True:
            pieces.append(stream.readline(size))
            if not pieces[-1]:
                break
    elif mode == "readlines":
        pieces = stream.readlines() + [stream.read(1)]
    elif mode == "iter":
        pieces = list(stream)
    elif mode == "mixed":
        pieces = [stream.read(2), stream.readline(), stream.readline(3), *stream.readlines()]
    return [p.decode("latin-1") for p in pieces]


@pytest.mark.parametrize("where", ["memory", "large", "spooled"])
@pytest.mark.parametrize("mode,size", [("read_n", 7), ("read_n", 65536), ("read_negative", -1),
                                       ("readline", -1), ("readline_n", 4),
                                       ("readline_n", 100_000), ("readlines", -1),
                                       ("iter", -1), ("mixed", -1)])
def test_input_methods(serve, mode, size, where):
    server = serve("wsgi_bodies:methods", workers=1)
    body = lines_body(where)
    assert (len(body) > MiB) == (where == "spooled")
    assert (len(body) > 64 * 1024) == (where != "memory")
    status, data = post(server.port, f"/?mode={mode}&size={size}", body)
    assert status == 200, data
    pieces = json.loads(data)["pieces"]
    assert pieces == expected_pieces(mode, size, body)


def test_readlines_with_hint(serve):
    server = serve("wsgi_bodies:methods", workers=1)
    body = lines_body("memory")
    status, data = post(server.port, "/?mode=readlines_hint&size=12", body)
    assert status == 200, data
    pieces = [p.encode("latin-1") for p in json.loads(data)["pieces"]]
    # The hint may stop early (PEP 3333 lets a server ignore it): whole lines, then the rest.
    *lines, rest = pieces
    assert lines and all(line.endswith(b"\n") for line in lines)
    assert b"".join(lines) + rest == body


def test_readline_over_a_spooled_multiline_body(serve):
    server = serve("wsgi_bodies:lines_digest", workers=1)
    lines = [(b"%06d " % i) + b"y" * (i * 37 % 5000) + b"\n" for i in range(600)]
    lines[300] = b"z" * 200_000 + b"\n"  # spans several of the reader's buffer fills
    body = b"".join(lines) + b"tail"
    assert len(body) > MiB
    status, data = post(server.port, "/", body)
    assert status == 200, data
    report = json.loads(data)
    assert report["lengths"] == [len(line) for line in lines] + [4, "no-newline"]
    assert report["sha256"] == sha(body)


def test_empty_post(serve):
    server = serve("wsgi_bodies:digest")
    status, data = post(server.port, "/empty", b"")
    assert status == 200, data
    report = json.loads(data)
    assert report["REQUEST_METHOD"] == "POST"
    assert report["length"] == 0
    assert report["CONTENT_LENGTH"] == "0"


def test_post_without_length_or_chunking_has_an_empty_body(serve):
    server = serve("wsgi_bodies:digest")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    report = json.loads(body)
    assert report["length"] == 0
    assert report["sha256"] == sha(b"")


def test_expect_100_continue(serve):
    server = serve("wsgi_bodies:echo")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Expect: 100-continue\r\nContent-Length: 11\r\n\r\n")
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed before 100 Continue: {interim!r}"
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"hello world")
        data = interim.partition(b"\r\n\r\n")[2] + read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert body == b"hello world"


@pytest.mark.parametrize("threads", [1, 4], ids=["sync", "gthread"])
def test_bodies_around_64_kib_in_a_row_and_at_once_arrive_intact(serve, threads):
    """Bodies from 64 KiB up to the 1 MiB held in memory are read by a sync or gthread
    worker straight from the ring into the `bytes` object the app gets; requests queued
    behind one another on one worker (prefetch) or served side by side by its threads,
    on kept-alive connections, each get their own body, byte for byte."""
    server = serve("wsgi_bodies:digest", "--threads", str(threads), workers=1)
    sizes = [64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 200_000, MiB - 1, MiB]
    failures = []

    def client(seed):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            for round_ in range(3):
                size = sizes[(seed + round_) % len(sizes)]
                body = os.urandom(size)
                conn.request("POST", "/", body=body,
                             headers={"Content-Type": "application/x-test"})
                response = conn.getresponse()
                report = json.loads(response.read())
                if response.status != 200 or report["sha256"] != sha(body):
                    failures.append((seed, size, response.status, report))
        finally:
            conn.close()

    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    assert not any(thread.is_alive() for thread in clients)
    assert failures == []
