"""The response side of PEP 3333 over HTTP/1.1, checked on the wire: framing, HEAD,
streaming, write(), close(), exc_info, and the app errors a server must catch."""
import http.client
import os
import re
import socket
import time
import uuid

import pytest

from rawhttp import read_until

TIMEOUT = 5


def exchange(port, request: bytes, timeout=TIMEOUT) -> bytes:
    """Sends raw bytes; returns every byte until the server closes (or resets) the
    connection. A server that neither answers nor closes fails with a timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


def get(path, *headers: str, method="GET", version="1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def split(data: bytes):
    """(status line, {lowercase name: [values]}, the bytes after the head)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:300]!r}"
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.decode().lower(), []).append(value.strip().decode("latin-1"))
    return status, headers, rest


def dechunk(body: bytes):
    """Decodes a chunked body: (data, whether the last-chunk was seen, the bytes after)."""
    out = b""
    while True:
        size_line, sep, body = body.partition(b"\r\n")
        if not sep:
            return out, False, b""
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            trailer_end = body.find(b"\r\n")
            return out, trailer_end == 0, body[2:] if trailer_end == 0 else b""
        if len(body) < size + 2:
            return out + body[:size], False, b""
        out += body[:size]
        assert body[size:size + 2] == b"\r\n", "chunk not followed by CRLF"
        body = body[size + 2:]


def http_get(port, path, method="GET", timeout=TIMEOUT):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), resp.read()
    finally:
        conn.close()


def wait_for_file_line(path, pattern, timeout=5.0) -> str:
    """The first line of `path` matching `pattern`, waiting for it up to `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        match = re.search(pattern, text, re.M)
        if match:
            return match.group(0)
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not in {path} after {timeout}s: {text!r}")
        time.sleep(0.02)


# -- framing -----------------------------------------------------------------------

def test_app_content_length_is_honoured(serve):
    server = serve("wsgi_responses:fixed")
    status, headers, body = split(exchange(server.port, get("/?n=10000")))
    assert status == b"HTTP/1.1 200 OK"
    assert headers["content-length"] == ["10000"]
    assert "transfer-encoding" not in headers
    assert body == bytes(b"0123456789"[i % 10] for i in range(10000))


def test_many_sized_responses_on_one_worker(serve):
    # Every response frees its worker: 200 in a row on a single worker, some on one
    # keep-alive connection, some on a fresh connection each, all answered in time.
    server = serve("wsgi_responses:fixed", workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for i in range(100):
        conn.request("GET", f"/?n={i + 1}")
        resp = conn.getresponse()
        assert (resp.status, len(resp.read())) == (200, i + 1), f"request {i}"
    conn.close()
    for i in range(100):
        status, _, body = http_get(server.port, f"/?n={i + 1}", timeout=5)
        assert (status, len(body)) == (200, i + 1), f"request {i} on its own connection"


def test_body_longer_than_content_length_is_cut_and_the_connection_stays_usable(serve):
    server = serve("wsgi_responses:long", workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    for _ in range(2):
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.getheader("Content-Length") == "5"
        assert resp.read() == b"01234"
    conn.close()


def test_body_shorter_than_content_length_aborts_the_connection(serve):
    server = serve("wsgi_responses:short")
    # On the wire: the 10 bytes, then the connection ends; nothing pads it to 100.
    status, headers, body = split(exchange(server.port, get("/")))
    assert status == b"HTTP/1.1 200 OK"
    assert headers["content-length"] == ["100"]
    assert body == b"0123456789"
    # A client sees an incomplete read, not a complete response.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("GET", "/")
    resp = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead) as err:
        resp.read()
    assert err.value.partial == b"0123456789"
    conn.close()


def test_no_content_length_means_chunked_on_http11(serve):
    server = serve("wsgi_responses:unsized")
    status, headers, rest = split(exchange(server.port, get("/")))
    assert status == b"HTTP/1.1 200 OK"
    assert headers["transfer-encoding"] == ["chunked"]
    assert "content-length" not in headers
    body, complete, after = dechunk(rest)
    assert (body, complete, after) == (b"alpha-beta-gamma", True, b"")


def test_no_content_length_on_http10_is_close_delimited(serve):
    server = serve("wsgi_responses:unsized")
    status, headers, body = split(exchange(server.port, get("/", version="1.0")))
    assert status.startswith(b"HTTP/1.") and status.endswith(b" 200 OK")
    assert "transfer-encoding" not in headers
    assert body == b"alpha-beta-gamma"


def test_head_sends_headers_but_no_body(serve):
    server = serve("wsgi_responses:fixed")
    # HEAD then GET pipelined: if any body byte followed the HEAD answer, the GET's
    # status line would not start right after the HEAD's head.
    request = (b"HEAD /?n=1234 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
               b"GET /?n=3 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    status, headers, rest = split(exchange(server.port, request))
    assert status == b"HTTP/1.1 200 OK"
    assert headers["content-length"] == ["1234"]
    assert headers["x-method"] == ["HEAD"]
    assert headers["content-type"] == ["text/plain"]
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest[:100]
    status, headers, body = split(rest)
    assert headers["x-method"] == ["GET"]
    assert body == b"012"


def test_head_of_an_unsized_body(serve):
    server = serve("wsgi_responses:unsized")
    request = (b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
               b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    status, headers, rest = split(exchange(server.port, request))
    assert status == b"HTTP/1.1 200 OK"
    assert headers["x-method"] == ["HEAD"]
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest[:100]
    _, headers, rest = split(rest)
    assert headers["x-method"] == ["GET"]
    assert dechunk(rest)[:2] == (b"alpha-beta-gamma", True)


def test_reason_phrase_is_preserved(serve):
    server = serve("wsgi_responses:reason")
    for status in ("200 Fine", "404 Nowhere To Be Found", "200 OK"):
        query = status.replace(" ", "+")
        data = exchange(server.port, get(f"/?status={query}"))
        assert data.split(b"\r\n")[0] == b"HTTP/1.1 " + status.encode()
        assert dechunk(split(data)[2])[:2] == (b"reasoned", True)


# -- streaming, write(), close() ----------------------------------------------------

def test_streamed_chunk_arrives_before_the_generator_ends(serve):
    server = serve("wsgi_responses:stream", workers=1)
    assert http_get(server.port, "/?delay=0")[2] == b"first\nsecond\n"  # worker is up
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(get("/?delay=1.5"))
        start = time.monotonic()
        data = read_until(sock, b"first\n")
        first = time.monotonic() - start
        assert b"second" not in data
        read_until(sock, b"second\n", data)
        second = time.monotonic() - start
    # The generator sleeps 1.5 s between its chunks: the first must not wait for it.
    assert first < 1.0, f"first chunk after {first:.2f}s"
    assert second - first > 1.0, f"first at {first:.2f}s, second at {second:.2f}s"


def test_write_output_comes_before_the_iterable(serve):
    server = serve("wsgi_responses:write_then_iter")
    status, _, body = http_get(server.port, "/")
    assert (status, body) == (200, b"w1-w2-i1-i2")


@pytest.fixture
def close_log(tmp_path):
    return tmp_path / "close.log"


def test_close_is_called_after_a_full_response(serve, close_log):
    server = serve("wsgi_responses:closing", env={"CLOSE_LOG": str(close_log)})
    tag = uuid.uuid4().hex
    status, _, body = http_get(server.port, f"/?mode=normal&tag={tag}")
    assert (status, body) == (200, b"one-two-three")
    assert wait_for_file_line(close_log, f"^close {tag} .*$") == f"close {tag} after 3"
    assert "garbage collected without being closed" not in server.log


def test_close_is_called_when_iteration_raises(serve, close_log):
    server = serve("wsgi_responses:closing", env={"CLOSE_LOG": str(close_log)})
    tag = uuid.uuid4().hex
    status, headers, rest = split(exchange(server.port, get(f"/?mode=raise&tag={tag}")))
    assert status == b"HTTP/1.1 200 OK"
    body, complete, _ = dechunk(rest)
    # The head was out: the response is cut short, never completed.
    assert body == b"before-the-error" and not complete
    assert wait_for_file_line(close_log, f"^close {tag} .*$") == f"close {tag} after 1"
    server.wait_for_log(f"RuntimeError: iteration failed {tag}")


def test_close_is_called_when_the_client_disconnects(serve, close_log):
    server = serve("wsgi_responses:closing", "--graceful-timeout", "2", workers=1,
                   env={"CLOSE_LOG": str(close_log)})
    tag = uuid.uuid4().hex
    # The app would stream 1 KiB every 50 ms for 10 s; the client leaves after ~4 KiB.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    sock.sendall(get(f"/?mode=disconnect&tag={tag}"))
    data = b""
    while data.count(b"x" * 1024) < 4:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    sock.close()
    left = time.monotonic()
    line = wait_for_file_line(close_log, f"^close {tag} after \\d+$", timeout=6)
    waited = time.monotonic() - left
    sent = int(line.rsplit(" ", 1)[1])
    # Stopped soon after the client left, not at the natural end of the stream (200).
    assert sent < 150, f"the app kept streaming to a gone client: {line}"
    assert waited < 6
    # And the (single) worker serves the next request.
    tag2 = uuid.uuid4().hex
    status, _, body = http_get(server.port, f"/?mode=normal&tag={tag2}", timeout=5)
    assert (status, body) == (200, b"one-two-three")


# -- errors ----------------------------------------------------------------------------

def test_exc_info_before_the_head_replaces_the_status(serve):
    server = serve("wsgi_responses:exc_info_replace")
    status, headers, body = http_get(server.port, "/")
    assert status == 503
    assert headers.get("x-replaced") == "yes"
    assert body == b"replaced"


def test_exc_info_after_the_head_aborts_the_response(serve):
    server = serve("wsgi_responses:exc_info_late")
    status, headers, rest = split(exchange(server.port, get("/")))
    assert status == b"HTTP/1.1 200 OK"
    body, complete, _ = dechunk(rest)
    assert body == b"partial"
    assert not complete
    assert b"must-not-be-sent" not in rest
    server.wait_for_log(r"KeyError: 'late-failure'")


def test_second_start_response_without_exc_info_is_500(serve):
    server = serve("wsgi_responses:second_call")
    status, _, body = http_get(server.port, "/")
    assert status == 500
    assert b"must-not-be-sent" not in body
    server.wait_for_log(r"AssertionError: .*start_response")


def test_app_exception_is_500_and_the_worker_keeps_serving(serve):
    server = serve("wsgi_responses:raises", workers=1)
    tag = uuid.uuid4().hex
    status, _, body = http_get(server.port, f"/?tag={tag}")
    assert status == 500
    assert tag.encode() not in body  # no traceback leaks to the client
    log = server.wait_for_log(rf"RuntimeError: boom-{tag}")
    assert "Traceback (most recent call last)" in log
    failed_pid = re.search(rf"boom-{tag} pid=(\d+)", log).group(1)
    status, _, body = http_get(server.port, "/?ok=1")
    assert status == 200
    assert body == f"fine pid={failed_pid}".encode()


@pytest.mark.parametrize("where", ["value-crlf", "value-lf", "value-cr", "value-nul",
                                   "name-crlf", "status-crlf"])
def test_control_characters_in_the_head_are_a_500(serve, where):
    server = serve("wsgi_responses:bad_header", workers=1)
    data = exchange(server.port, get(f"/?where={where}"))
    status, headers, body = split(data)
    assert status == b"HTTP/1.1 500 Internal Server Error"
    assert b"X-Injected" not in data and b"x-injected" not in data
    assert b"\x00" not in data
    assert b"must-not-be-sent" not in data
    assert "x-bad" not in headers
    # One error line naming the request (the log escapes the bad characters).
    server.wait_for_log(rf"\[ERROR\].*\?where={where}")
    # The worker is fine afterwards.
    assert split(exchange(server.port, get("/?where=value-nul")))[0].split(b" ")[1] == b"500"


# -- wsgi.file_wrapper -------------------------------------------------------------------

def test_file_wrapper_behind_the_validator(serve, tmp_path):
    server = serve("wsgi_responses:file_validated")
    path = tmp_path / "data.bin"
    data = os.urandom(300_000)
    path.write_bytes(data)
    status, headers, body = http_get(server.port, f"/?path={path}")
    assert status == 200
    assert headers["content-length"] == str(len(data))
    assert body == data


def test_file_wrapper_sent_by_the_server(serve, tmp_path):
    server = serve("wsgi_responses:file_direct")
    path = tmp_path / "data.bin"
    data = os.urandom(700_000)
    path.write_bytes(data)
    status, _, body = http_get(server.port, f"/?path={path}")
    assert (status, body) == (200, data)
    # From the file's current position, not from its start.
    status, _, body = http_get(server.port, f"/?path={path}&skip=1000")
    assert (status, body) == (200, data[1000:])
