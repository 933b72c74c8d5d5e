"""Apps for the guard, limits, proxy and conformance tests.

Each is wrapped in wsgiref's validator, except `conformance_echo`: gunicorn's corpus holds
requests (`OPTIONS *`, `CONNECT host:port`) whose PATH_INFO ("*", "") the validator
refuses, and echoing them back unchanged is the point of that app.
"""
import json
import os
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator


def _read_body(environ):
    """The whole request body, read in pieces (the validator wants read(n))."""
    stream = environ["wsgi.input"]
    chunks = []
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _count_call(environ):
    """Appends one line to $GUARD_COUNT_FILE (if set): how many requests the app saw."""
    path = os.environ.get("GUARD_COUNT_FILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{environ['REQUEST_METHOD']} {environ.get('RAW_URI', '')}\n")


def _headers_of(environ):
    return {k: v for k, v in environ.items()
            if k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH")}


def _json(start_response, data, status="200 OK"):
    body = json.dumps(data, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _echo(environ, start_response):
    """Echoes what the app saw: method, target, client facts, headers, body; counts calls.

    `?sleep=S` sleeps S seconds first.
    """
    _count_call(environ)
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if "sleep" in query:
        time.sleep(float(query["sleep"][0]))
    body = _read_body(environ)
    return _json(start_response, {
        "method": environ["REQUEST_METHOD"],
        "raw_uri": environ.get("RAW_URI"),
        "path": environ.get("PATH_INFO"),
        "query": environ.get("QUERY_STRING"),
        "protocol": environ.get("SERVER_PROTOCOL"),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "scheme": environ["wsgi.url_scheme"],
        "headers": _headers_of(environ),
        "body": body.decode("latin-1"),
    })


def _big(environ, start_response):
    """`?mib=N` (default 20) MiB of b"x", in 64 KiB pieces, with a Content-Length."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    mib = int(query.get("mib", ["20"])[0])
    piece = b"x" * 65536
    count = mib * 16
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(count * len(piece)))])
    return (piece for _ in range(count))


def pattern_piece(index: int) -> bytes:
    """The 64 KiB piece number `index` of `/pattern`: its number, repeated."""
    return index.to_bytes(4, "big") * 16384


def _pattern(environ, start_response):
    """`?mib=N` MiB of numbered 64 KiB pieces (see `pattern_piece`), with a Content-Length:
    a reader can tell a piece out of order or missing."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    count = int(query.get("mib", ["20"])[0]) * 16
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(count * 65536))])
    return (pattern_piece(i) for i in range(count))


def _router(environ, start_response):
    """/big: `big`; /pattern: `pattern`; anything else: `echo`."""
    if environ.get("PATH_INFO") == "/big":
        return _big(environ, start_response)
    if environ.get("PATH_INFO") == "/pattern":
        return _pattern(environ, start_response)
    return _echo(environ, start_response)


echo = validator(_echo)
big = validator(_big)
app = validator(_router)


def conformance_echo(environ, start_response):
    """Like `echo`, without the validator (see the module docstring)."""
    body = _read_body(environ)
    return _json(start_response, {
        "method": environ["REQUEST_METHOD"],
        "raw_uri": environ.get("RAW_URI"),
        "path": environ.get("PATH_INFO"),
        "query": environ.get("QUERY_STRING"),
        "protocol": environ.get("SERVER_PROTOCOL"),
        "headers": _headers_of(environ),
        "body": body.decode("latin-1"),
    })
