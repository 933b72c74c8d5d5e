"""Apps that read the request body (`wsgi.input`) every way PEP 3333 allows."""
import hashlib
import json
import warnings
from urllib.parse import parse_qs
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)

BLOCK = 64 * 1024


def _read_blocks(stream):
    """The whole body through read(n) only (the validator forbids a bare read()).
    wsgi.input_terminated is set, so reading until b'' is allowed."""
    parts = []
    while True:
        block = stream.read(BLOCK)
        if not block:
            return b"".join(parts)
        parts.append(block)


def _json(start_response, report):
    body = json.dumps(report).encode("ascii")
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


@validator
def echo(environ, start_response):
    """The request body, byte for byte."""
    data = _read_blocks(environ["wsgi.input"])
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(data)))])
    return [data]


@validator
def digest(environ, start_response):
    """The body's length and SHA-256, with what the environ said about it."""
    data = _read_blocks(environ["wsgi.input"])
    return _json(start_response, {
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "CONTENT_LENGTH": environ.get("CONTENT_LENGTH"),
        "CONTENT_TYPE": environ.get("CONTENT_TYPE"),
        "REQUEST_METHOD": environ["REQUEST_METHOD"],
        "input_terminated": environ.get("wsgi.input_terminated"),
    })


def _show(chunk: bytes) -> str:
    return chunk.decode("latin-1")


@validator
def methods(environ, start_response):
    """Reads the body with the method named by ?mode=, reporting each piece it got."""
    query = parse_qs(environ["QUERY_STRING"])
    mode = query["mode"][0]
    size = int(query.get("size", ["-1"])[0])
    stream = environ["wsgi.input"]
    pieces = []
    if mode == "read_n":
        # read(n) in steps of `size`, then read(n) once more past the end.
        while True:
            piece = stream.read(size)
            pieces.append(piece)
            if not piece:
                break
    elif mode == "read_negative":
        pieces = [stream.read(-1), stream.read(-1)]
    elif mode == "readline":
        while True:
            line = stream.readline()
            pieces.append(line)
            if not line:
                break
    elif mode == "readline_n":
        while True:
            line = stream.readline(size)
            pieces.append(line)
            if not line:
                break
    elif mode == "readlines":
        pieces = stream.readlines()
        pieces.append(stream.read(1))
    elif mode == "readlines_hint":
        pieces = stream.readlines(size)
        pieces.append(stream.read(BLOCK))
    elif mode == "iter":
        pieces = list(stream)
    elif mode == "mixed":
        pieces = [stream.read(2), stream.readline(), stream.readline(3), *stream.readlines()]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return _json(start_response, {"pieces": [_show(p) for p in pieces]})


@validator
def lines_digest(environ, start_response):
    """Reads the body with readline() only; reports each line's length and a digest
    of the lines joined (to compare with the body sent)."""
    stream = environ["wsgi.input"]
    lengths, sha = [], hashlib.sha256()
    while True:
        line = stream.readline()
        if not line:
            break
        lengths.append(len(line))
        sha.update(line)
        # Each line but the last one must end in its newline.
        if not line.endswith(b"\n"):
            lengths.append("no-newline")
    return _json(start_response, {"lengths": lengths, "sha256": sha.hexdigest()})


def read_all(environ, start_response):
    """Not validated: wsgiref's validator forbids read() without a size, which this app
    exists to call (rwsgi sets wsgi.input_terminated, so a bare read() must return the
    whole body)."""
    stream = environ["wsgi.input"]
    first = stream.read()
    second = stream.read()
    body = json.dumps({"length": len(first), "sha256": hashlib.sha256(first).hexdigest(),
                       "after_end": _show(second)}).encode("ascii")
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
