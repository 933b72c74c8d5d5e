"""Apps for the static-file, internal-redirect and compression tests."""
import gzip
import os
import time
from urllib.parse import parse_qs

CALLS = 0


def _query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _text(start_response, body, status="200 OK", headers=()):
    body = body.encode() if isinstance(body, str) else body
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body))), *headers])
    return [body]


def counting(environ, start_response):
    """Counts the requests this worker served; /count tells how many."""
    global CALLS
    CALLS += 1
    if environ["PATH_INFO"] == "/count":
        return _text(start_response, str(CALLS))
    return _text(start_response, f"app saw {environ['PATH_INFO']}")


def redirecting(environ, start_response):
    """Answers with X-Accel-Redirect or X-Sendfile as the query asks."""
    global CALLS
    CALLS += 1
    q = _query(environ)
    path = environ["PATH_INFO"]
    extra = [("Content-Disposition", 'attachment; filename="report.txt"'),
             ("Cache-Control", "private, max-age=60"),
             ("Set-Cookie", "seen=1"),
             ("X-App", "kept")]
    if path == "/count":
        return _text(start_response, str(CALLS))
    if path == "/accel":
        headers = [("X-Accel-Redirect", q["to"]), *extra]
        if "type" in q:
            headers.append(("Content-Type", q["type"]))
        start_response("200 OK", headers)
        return [b"the app's own body, which must never reach the client"]
    if path == "/sendfile":
        start_response("200 OK", [("X-Sendfile", q["path"]), *extra])
        return [b"the app's own body, which must never reach the client"]
    if path == "/accel-forever":
        # A body that never ends: only dropping it frees the worker.
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("X-Accel-Redirect", q["to"])])

        def forever():
            while True:
                yield b"x" * 1024
                time.sleep(0.01)

        return forever()
    return _text(start_response, f"app saw {path}")


def compressing(environ, start_response):
    """Bodies of several types and sizes for --compress."""
    q = _query(environ)
    path = environ["PATH_INFO"]
    size = int(q.get("size", "5000"))
    text = ("compress me please " * (size // 19 + 1))[:size]
    if path == "/text":
        return _text(start_response, text)
    if path == "/json":
        body = ('{"items": [' + ", ".join(['"value"'] * (size // 9)) + "]}").encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/png":
        body = b"\x89PNG\r\n\x1a\n" + b"\x00" * size
        start_response("200 OK", [("Content-Type", "image/png"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/encoded":
        body = gzip.compress(text.encode(), mtime=0)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Encoding", "gzip"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/partial":
        body = text[:100].encode()
        start_response("206 Partial Content", [
            ("Content-Type", "text/plain"), ("Content-Range", f"bytes 0-99/{size}"),
            ("Content-Length", str(len(body)))])
        return [body]
    if path == "/etag":
        return _text(start_response, text, headers=[("ETag", '"v1"')])
    if path == "/no-transform":
        return _text(start_response, text, headers=[("Cache-Control", "no-transform")])
    if path == "/generated":
        # No Content-Length: a generator of many small chunks.
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return (f"<p>line {i}</p>\n".encode() for i in range(2000))
    if path == "/stream":
        # One chunk, then wait (bounded) for the test to say it decoded that chunk.
        marker = q["marker"]
        start_response("200 OK", [("Content-Type", "text/plain")])

        def stream():
            yield b"first chunk " * 10
            deadline = time.monotonic() + 10
            while not os.path.exists(marker) and time.monotonic() < deadline:
                time.sleep(0.02)
            yield b"second chunk" if os.path.exists(marker) else b"marker never came"

        return stream()
    return _text(start_response, "not found", status="404 Not Found")
