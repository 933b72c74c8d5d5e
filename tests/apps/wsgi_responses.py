"""Apps exercising the response side of PEP 3333: start_response, write(), iterables,
close(), exc_info, streaming, file_wrapper, and the errors a server must catch."""
import os
import sys
import time
import warnings
from urllib.parse import parse_qs
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)

TEXT = [("Content-Type", "text/plain")]


def _query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _pattern(n: int) -> bytes:
    return bytes(b"0123456789"[i % 10] for i in range(n))


def _record(line: str):
    """Appends a line to the file named by $CLOSE_LOG (set by the test for its server)."""
    path = os.environ.get("CLOSE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()


@validator
def fixed(environ, start_response):
    """?n= bytes with their Content-Length, from a generator so only the app's header
    tells the length."""
    n = int(_query(environ).get("n", "10"))
    body = _pattern(n)
    start_response("200 OK", TEXT + [("Content-Length", str(n)),
                                     ("X-Method", environ["REQUEST_METHOD"])])

    def gen():
        for i in range(0, n, 4096):
            yield body[i:i + 4096]

    return gen()


@validator
def unsized(environ, start_response):
    """A generator body with no Content-Length: chunked on HTTP/1.1."""
    start_response("200 OK", TEXT + [("X-Method", environ["REQUEST_METHOD"])])

    def gen():
        yield b"alpha-"
        yield b""  # an empty chunk must not end the chunked body early
        yield b"beta-"
        yield b"gamma"

    return gen()


@validator
def stream(environ, start_response):
    """One chunk, a pause of ?delay= seconds, a second chunk."""
    delay = float(_query(environ).get("delay", "1.5"))
    start_response("200 OK", TEXT)

    def gen():
        yield b"first\n"
        time.sleep(delay)
        yield b"second\n"

    return gen()


@validator
def short(environ, start_response):
    """Declares 100 bytes, sends 10."""
    start_response("200 OK", TEXT + [("Content-Length", "100")])

    def gen():
        yield b"0123456789"

    return gen()


@validator
def long(environ, start_response):
    """Declares 5 bytes, yields 10: only the declared 5 may go out."""
    start_response("200 OK", TEXT + [("Content-Length", "5")])

    def gen():
        yield b"01234"
        yield b"56789"

    return gen()


@validator
def write_then_iter(environ, start_response):
    """PEP 3333's write() callable, then an iterable: the written bytes come first."""
    write = start_response("200 OK", TEXT)
    write(b"w1-")
    write(b"w2-")

    def gen():
        yield b"i1-"
        yield b"i2"

    return gen()


class _Closing:
    """A body that records its close() to $CLOSE_LOG."""

    def __init__(self, tag, mode):
        self.tag, self.mode, self.sent = tag, mode, 0

    def __iter__(self):
        _record(f"start {self.tag}")
        if self.mode == "normal":
            for part in (b"one-", b"two-", b"three"):
                self.sent += 1
                yield part
        elif self.mode == "disconnect":
            # Streams for at most ~10 s; a server that notices the client left stops sooner.
            for _ in range(200):
                self.sent += 1
                yield b"x" * 1024
                time.sleep(0.05)
        elif self.mode == "raise":
            self.sent += 1
            yield b"before-the-error"
            raise RuntimeError(f"iteration failed {self.tag}")

    def close(self):
        _record(f"close {self.tag} after {self.sent}")


@validator
def closing(environ, start_response):
    query = _query(environ)
    start_response("200 OK", TEXT)
    return _Closing(query["tag"], query["mode"])


@validator
def exc_info_replace(environ, start_response):
    """start_response again with exc_info before anything was sent: the new status wins."""
    start_response("200 OK", TEXT)
    try:
        raise ValueError("changed my mind")
    except ValueError:
        start_response("503 Service Unavailable", TEXT + [("X-Replaced", "yes")], sys.exc_info())
    return [b"replaced"]


@validator
def exc_info_late(environ, start_response):
    """exc_info after the head went out: start_response must re-raise (PEP 3333)."""
    write = start_response("200 OK", TEXT)
    write(b"partial")
    try:
        raise KeyError("late-failure")
    except KeyError:
        start_response("500 Internal Server Error", TEXT, sys.exc_info())
    return [b"must-not-be-sent"]


@validator
def second_call(environ, start_response):
    """start_response a second time without exc_info: an error (PEP 3333)."""
    start_response("200 OK", TEXT)
    start_response("202 Accepted", TEXT)
    return [b"must-not-be-sent"]


@validator
def raises(environ, start_response):
    """Raises before start_response; ?ok=1 answers normally instead."""
    query = _query(environ)
    if query.get("ok"):
        start_response("200 OK", TEXT)
        return [f"fine pid={os.getpid()}".encode()]
    raise RuntimeError(f"boom-{query.get('tag', '')} pid={os.getpid()}")


def bad_header(environ, start_response):
    """Not validated: wsgiref's validator rejects control characters in headers itself,
    and here the server's own check is what is tested."""
    where = _query(environ)["where"]
    status, headers = "200 OK", list(TEXT)
    if where == "value-crlf":
        headers.append(("X-Bad", "a\r\nX-Injected: yes"))
    elif where == "value-lf":
        headers.append(("X-Bad", "a\nX-Injected: yes"))
    elif where == "value-cr":
        headers.append(("X-Bad", "a\rX-Injected: yes"))
    elif where == "value-nul":
        headers.append(("X-Bad", "a\x00X-Injected"))
    elif where == "name-crlf":
        headers.append(("X-Bad\r\nX-Injected", "yes"))
    elif where == "status-crlf":
        status = "200 OK\r\nX-Injected: yes"
    else:
        raise ValueError(where)
    start_response(status, headers)
    return [b"must-not-be-sent"]


@validator
def reason(environ, start_response):
    """Answers with the status line given in ?status= (e.g. '200 Fine')."""
    start_response(_query(environ)["status"], TEXT)
    return [b"reasoned"]


@validator
def file_validated(environ, start_response):
    """wsgi.file_wrapper over the file ?path=, behind the validator (which iterates it)."""
    path = _query(environ)["path"]
    f = open(path, "rb")
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(os.path.getsize(path)))])
    return environ["wsgi.file_wrapper"](f, 8192)


def file_direct(environ, start_response):
    """Not validated: the validator wraps the returned file_wrapper in its own iterator,
    hiding it from the server, whose fast path for real files is what is tested here.
    ?skip= bytes are read first, so the file's position is not 0."""
    query = _query(environ)
    f = open(query["path"], "rb")
    skip = int(query.get("skip", "0"))
    f.read(skip)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](f)
