"""The front tier's framing guard: malformed and smuggling-prone requests are refused with
their exact status and the connection is closed; pipelined requests before a refused one
are answered normally; the application never sees a refused request.

The raw-socket helpers at the top are shared with test_limits, test_proxy and
test_conformance (imported from here).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import Server

HOST = b"Host: guard.test\r\n"


# -- raw HTTP/1 over a socket ---------------------------------------------------------

@dataclass
class Response:
    status: int
    reason: bytes
    headers: dict  # lower-case name -> list of values (str, latin-1)
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


@dataclass
class Exchange:
    raw: bytes = b""
    responses: list = field(default_factory=list)
    #: "eof", "reset" or None (still open when we stopped reading)
    closed: str | None = None
    #: seconds from the end of sending to the end of reading
    elapsed: float = 0.0
    #: the connection broke while we were still sending
    send_failed: bool = False

    @property
    def statuses(self) -> list:
        return [r.status for r in self.responses]


def parse_responses(buf: bytes, at_eof: bool = False) -> tuple[list, bytes]:
    """Complete responses at the start of `buf` (1xx included), and what is left."""
    responses = []
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            break
        head = buf[:end].split(b"\r\n")
        status_line = head[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
            raise AssertionError(f"not an HTTP response: {buf[:200]!r}")
        status = int(status_line[1])
        reason = status_line[2] if len(status_line) > 2 else b""
        headers: dict = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower().decode("latin-1"), []).append(
                value.strip().decode("latin-1"))
        rest = buf[end + 4:]
        if 100 <= status < 200 or status in (204, 304):
            body, buf = b"", rest
        elif "content-length" in headers:
            length = int(headers["content-length"][0])
            if len(rest) < length:
                break
            body, buf = rest[:length], rest[length:]
        elif "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
            body, pos, done = b"", 0, False
            while True:
                eol = rest.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(rest[pos:eol].split(b";")[0], 16)
                if size == 0:
                    trailer_end = rest.find(b"\r\n\r\n", eol)
                    if rest[eol:eol + 4] == b"\r\n\r\n":
                        trailer_end = eol
                    if trailer_end < 0:
                        break
                    pos, done = trailer_end + 4, True
                    break
                if len(rest) < eol + 2 + size + 2:
                    break
                body += rest[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
            if not done:
                break
            buf = rest[pos:]
        else:
            if not at_eof:
                break
            body, buf = rest, b""
        responses.append(Response(status, reason, headers, body))
    return responses, buf


def exchange(port: int, data: bytes = b"", *, timeout: float = 3.0, split: int | None = None,
             pause: float = 0.05, shut: bool = False, until: int | None = None,
             sock: socket.socket | None = None) -> Exchange:
    """Sends `data` (in two writes around `split`, `pause` apart), optionally half-closes,
    then reads until the connection ends, `timeout` passes, or `until` final (non-1xx)
    responses are complete."""
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=timeout)
    result = Exchange()
    try:
        try:
            if split is not None:
                s.sendall(data[:split])
                time.sleep(pause)
                s.sendall(data[split:])
            elif data:
                s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            # The server may answer and close before it has all we meant to send (a
            # refusal after the first part of a split request): read what it said.
            result.send_failed = True
        start = time.monotonic()
        deadline = start + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            s.settimeout(remaining)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except (ConnectionResetError, BrokenPipeError):
                result.closed = "reset"
                break
            if not chunk:
                result.closed = "eof"
                break
            result.raw += chunk
            if until is not None:
                responses, _ = parse_responses(result.raw)
                if sum(r.status >= 200 for r in responses) >= until:
                    break
        result.elapsed = time.monotonic() - start
    finally:
        if sock is None:
            s.close()
    result.responses, _ = parse_responses(result.raw, at_eof=result.closed is not None)
    result.responses = [r for r in result.responses if r.status >= 200]
    return result


def request(method: str = "GET", target: str = "/", *headers: str, body: bytes = b"",
            version: str = "HTTP/1.1", host: bool = True) -> bytes:
    """A well-formed request's bytes."""
    lines = [f"{method} {target} {version}"]
    if host:
        lines.append("Host: guard.test")
    lines.extend(headers)
    if body and not any(h.lower().startswith(("content-length", "transfer-encoding"))
                        for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_refused(result: Exchange, status: int, before: int = 0):
    """`before` normal 200 answers, then `status` with Connection: close, then the end."""
    assert result.statuses == [200] * before + [status], result.raw[:600]
    refusal = result.responses[-1]
    assert (refusal.header("connection") or "").lower() == "close", refusal.headers
    assert result.closed, f"connection still open after the {status}: {result.raw[:300]!r}"


# -- the server and the application's call count ---------------------------------------

@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    count_file = tmp_path_factory.mktemp("guard") / "calls"
    count_file.touch()
    server = Server("guard_apps:echo", workers=1,
                    env={"GUARD_COUNT_FILE": str(count_file)})
    server.count_file = count_file
    yield server
    server.stop()


def calls(server) -> int:
    return len(Path(server.count_file).read_text().splitlines())


# -- refused heads -------------------------------------------------------------------

def _req(*lines: bytes, body: bytes = b"", start: bytes = b"POST / HTTP/1.1") -> bytes:
    return start + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


H = b"Host: guard.test"

REFUSED_HEADS = [
    # Content-Length / Transfer-Encoding ambiguity (CL.TE / TE.CL smuggling).
    ("cl_then_te", _req(H, b"Content-Length: 5", b"Transfer-Encoding: chunked",
                        body=b"0\r\n\r\n"), 400),
    ("te_then_cl", _req(H, b"Transfer-Encoding: chunked", b"Content-Length: 5",
                        body=b"0\r\n\r\n"), 400),
    ("two_content_lengths", _req(H, b"Content-Length: 5", b"Content-Length: 6",
                                 body=b"hello!"), 400),
    ("content_length_list_conflict", _req(H, b"Content-Length: 5, 6", body=b"hello!"), 400),
    ("content_length_plus_sign", _req(H, b"Content-Length: +5", body=b"hello"), 400),
    ("content_length_minus_sign", _req(H, b"Content-Length: -5", body=b"hello"), 400),
    ("content_length_hex", _req(H, b"Content-Length: 0x5", body=b"hello"), 400),
    ("content_length_trailing_junk", _req(H, b"Content-Length: 5a", body=b"hello"), 400),
    ("content_length_inner_space", _req(H, b"Content-Length: 1 5", body=b"hello"), 400),
    ("content_length_overflow", _req(H, b"Content-Length: 99999999999999999999999"), 400),
    # Line structure.
    ("obs_fold", _req(H, b"X-A: one", b" two", start=b"GET / HTTP/1.1"), 400),
    ("obs_fold_first_field", _req(b" X-A: one", H, start=b"GET / HTTP/1.1"), 400),
    ("bare_lf_everywhere", b"GET / HTTP/1.1\nHost: guard.test\n\n", 400),
    ("bare_lf_in_one_field", b"GET / HTTP/1.1\r\nHost: guard.test\r\nX-A: b\n\r\n", 400),
    ("bare_lf_request_line", b"GET / HTTP/1.1\nHost: guard.test\r\n\r\n", 400),
    ("bare_cr_in_value", _req(H, b"X-A: a\rb", start=b"GET / HTTP/1.1"), 400),
    ("bare_cr_line_end", b"GET / HTTP/1.1\rHost: guard.test\r\n\r\n", 400),
    ("space_before_colon", _req(H, b"Content-Length : 5", body=b"hello"), 400),
    ("tab_before_colon", _req(H, b"X-A\t: 1", start=b"GET / HTTP/1.1"), 400),
    ("no_colon", _req(H, b"X-A 1", start=b"GET / HTTP/1.1"), 400),
    ("name_with_at", _req(H, b"X@A: 1", start=b"GET / HTTP/1.1"), 400),
    ("name_with_space", _req(H, b"X A: 1", start=b"GET / HTTP/1.1"), 400),
    ("empty_name", _req(H, b": 1", start=b"GET / HTTP/1.1"), 400),
    ("name_non_ascii", _req(H, b"X-\xe9: 1", start=b"GET / HTTP/1.1"), 400),
    ("nul_in_value", _req(H, b"X-A: a\x00b", start=b"GET / HTTP/1.1"), 400),
    ("control_in_value", _req(H, b"X-A: a\x01b", start=b"GET / HTTP/1.1"), 400),
    ("del_in_value", _req(H, b"X-A: a\x7fb", start=b"GET / HTTP/1.1"), 400),
    # Host.
    ("http11_without_host", _req(start=b"GET / HTTP/1.1"), 400),
    ("two_hosts", _req(H, b"Host: other.test", start=b"GET / HTTP/1.1"), 400),
    # Transfer-Encoding.
    ("te_in_http10", _req(b"Transfer-Encoding: chunked", body=b"0\r\n\r\n",
                          start=b"POST / HTTP/1.0"), 400),
    ("te_not_ending_in_chunked", _req(H, b"Transfer-Encoding: chunked, identity",
                                      body=b"0\r\n\r\n"), 400),
    ("te_gzip_only", _req(H, b"Transfer-Encoding: gzip", body=b"hello"), 400),
    ("te_chunked_twice", _req(H, b"Transfer-Encoding: chunked, chunked",
                              body=b"0\r\n\r\n"), 400),
    ("te_chunked_twice_two_fields", _req(H, b"Transfer-Encoding: chunked",
                                         b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400),
    ("te_empty", _req(H, b"Transfer-Encoding: ", body=b"0\r\n\r\n"), 400),
    ("te_gzip_chunked", _req(H, b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501),
    # Request line.
    ("request_line_two_parts", b"GET /\r\nHost: guard.test\r\n\r\n", 400),
    ("request_line_double_space", b"GET  / HTTP/1.1\r\nHost: guard.test\r\n\r\n", 400),
    ("request_line_trailing_space", b"GET / HTTP/1.1 \r\nHost: guard.test\r\n\r\n", 400),
    ("method_with_bad_char", b"GE(T / HTTP/1.1\r\nHost: guard.test\r\n\r\n", 400),
    ("target_with_control_char", b"GET /a\x01b HTTP/1.1\r\nHost: guard.test\r\n\r\n", 400),
    ("target_with_del", b"GET /a\x7fb HTTP/1.1\r\nHost: guard.test\r\n\r\n", 400),
    ("version_http2_text", b"GET / HTTP/2.0\r\nHost: guard.test\r\n\r\n", 400),
    ("version_http12", b"GET / HTTP/1.2\r\nHost: guard.test\r\n\r\n", 400),
    ("version_lowercase", b"GET / http/1.1\r\nHost: guard.test\r\n\r\n", 400),
    ("version_http09_style", b"GET /\r\n\r\n", 400),
    ("five_empty_lines_first", b"\r\n" * 5 + b"GET / HTTP/1.1\r\nHost: guard.test\r\n\r\n", 400),
    # Limits (defaults).
    ("request_line_too_long", b"GET /" + b"a" * 4100 + b" HTTP/1.1\r\nHost: guard.test\r\n\r\n",
     414),
    ("too_many_fields", _req(H, *[b"X-F%d: v" % i for i in range(101)],
                             start=b"GET / HTTP/1.1"), 431),
    ("field_too_long", _req(H, b"X-Long: " + b"v" * 8200, start=b"GET / HTTP/1.1"), 431),
]


@pytest.mark.parametrize("data,status", [pytest.param(d, s, id=i) for i, d, s in REFUSED_HEADS])
def test_refused_head(guarded, data, status):
    seen = calls(guarded)
    result = exchange(guarded.port, data)
    assert_refused(result, status)
    assert calls(guarded) == seen, "the application saw a refused request"


@pytest.mark.parametrize("data,status", [pytest.param(d, s, id=i) for i, d, s in REFUSED_HEADS])
def test_refused_head_after_a_pipelined_request(guarded, data, status):
    """The request before a refused one is answered normally, then the refusal comes."""
    seen = calls(guarded)
    first = request("POST", "/first", body=b"payload")
    result = exchange(guarded.port, first + data)
    assert_refused(result, status, before=1)
    assert b'"raw_uri": "/first"' in result.responses[0].body
    assert b'"body": "payload"' in result.responses[0].body
    assert calls(guarded) == seen + 1


def test_two_good_requests_then_a_smuggling_attempt(guarded):
    seen = calls(guarded)
    data = (request("GET", "/one") + request("GET", "/two")
            + _req(H, b"Content-Length: 4", b"Transfer-Encoding: chunked",
                   body=b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: guard.test\r\n\r\n"))
    result = exchange(guarded.port, data)
    assert_refused(result, 400, before=2)
    assert b"/one" in result.responses[0].body and b"/two" in result.responses[1].body
    assert b"smuggled" not in result.raw
    assert calls(guarded) == seen + 2


def test_refused_head_split_across_writes(guarded):
    """The checker does not depend on how the bytes arrive."""
    data = _req(H, b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n")
    for split in (1, 10, data.index(b"Transfer"), data.index(b"\r\n\r\n") + 2):
        assert_refused(exchange(guarded.port, data, split=split), 400)


def test_four_empty_lines_before_a_request_are_tolerated(guarded):
    result = exchange(guarded.port, b"\r\n" * 4 + request("GET", "/after-blank-lines"), until=1)
    assert result.statuses == [200]
    assert b"/after-blank-lines" in result.responses[0].body


# -- refused bodies ------------------------------------------------------------------

def _chunked(body: bytes) -> bytes:
    return _req(H, b"Transfer-Encoding: chunked", body=body)


REFUSED_BODIES = [
    ("size_plus_sign", _chunked(b"+5\r\nhello\r\n0\r\n\r\n")),
    ("size_minus_sign", _chunked(b"-5\r\nhello\r\n0\r\n\r\n")),
    ("size_0x_prefix", _chunked(b"0x5\r\nhello\r\n0\r\n\r\n")),
    ("size_overflow_17_hex_digits", _chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n")),
    ("size_missing", _chunked(b"\r\nhello\r\n0\r\n\r\n")),
    ("size_leading_space", _chunked(b" 5\r\nhello\r\n0\r\n\r\n")),
    ("size_bare_lf", _chunked(b"5\nhello\r\n0\r\n\r\n")),
    ("extension_without_semicolon", _chunked(b"5 ext\r\nhello\r\n0\r\n\r\n")),
    ("extension_control_char", _chunked(b"5;a\x01b\r\nhello\r\n0\r\n\r\n")),
    ("extension_bare_cr", _chunked(b"5;a=b\rc\r\nhello\r\n0\r\n\r\n")),
    ("extension_line_too_long", _chunked(b"5;a=" + b"b" * 5000 + b"\r\nhello\r\n0\r\n\r\n")),
    ("data_longer_than_size", _chunked(b"5\r\nhello, world\r\n0\r\n\r\n")),
    ("data_without_crlf", _chunked(b"5\r\nhello0\r\n\r\n")),
    ("trailer_obs_fold", _chunked(b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n")),
    ("trailer_bad_name", _chunked(b"5\r\nhello\r\n0\r\nX T: a\r\n\r\n")),
]


@pytest.mark.parametrize("data", [pytest.param(d, id=i) for i, d in REFUSED_BODIES])
def test_refused_chunked_body(guarded, data):
    seen = calls(guarded)
    result = exchange(guarded.port, data)
    assert_refused(result, 400)
    assert calls(guarded) == seen, "the application saw a request with a refused body"


def test_refused_chunked_body_after_a_pipelined_request(guarded):
    seen = calls(guarded)
    data = request("GET", "/fine") + _chunked(b"5\r\nhello\r\n-1\r\n\r\n")
    result = exchange(guarded.port, data)
    assert_refused(result, 400, before=1)
    assert calls(guarded) == seen + 1


def test_chunked_body_cut_short_by_half_close(guarded):
    """The last chunk without its final CRLF, then the client's EOF."""
    seen = calls(guarded)
    result = exchange(guarded.port, _chunked(b"5\r\nhello\r\n0\r\n"), shut=True)
    assert result.closed
    assert all(s >= 400 for s in result.statuses), result.raw[:300]
    assert calls(guarded) == seen


def test_valid_chunked_body_with_extensions_and_trailers(guarded):
    data = _chunked(b"5;name=\"quoted value\"\r\nhello\r\n0006;x\r\n world\r\n0\r\n"
                    b"X-Trailer: t\r\n\r\n")
    result = exchange(guarded.port, data, until=1)
    assert result.statuses == [200]
    assert b'"body": "hello world"' in result.responses[0].body


def test_large_bodies_then_a_pipelined_refusal(guarded):
    """Body bytes beyond what the guard has read go to the server unexamined (only
    counted), so a large body costs no copies: what follows the body, a chunk-size line
    or the next request, is still checked."""
    seen = calls(guarded)
    big = b"x" * (300 * 1024)
    chunk = b"y" * (200 * 1024)
    size = b"%x\r\n" % len(chunk)
    data = (request("POST", "/big", body=big)
            + _chunked(size + chunk + b"\r\n" + size + chunk + b"\r\n0\r\n\r\n")
            + _chunked(size + chunk + b"\r\n" + b"-1\r\n\r\n"))
    result = exchange(guarded.port, data, timeout=10)
    assert_refused(result, 400, before=2)
    assert b'"raw_uri": "/big"' in result.responses[0].body
    assert b'"body": "' + big + b'"' in result.responses[0].body
    assert b'"body": "' + chunk * 2 + b'"' in result.responses[1].body
    assert calls(guarded) == seen + 2


# -- HTTP/2 ---------------------------------------------------------------------------

def test_http2_prior_knowledge_passes_the_guard(guarded):
    """An HTTP/2 connection (prior knowledge) is recognised by its preface and not run
    through the HTTP/1 checker."""
    import httpx

    seen = calls(guarded)
    with httpx.Client(http1=False, http2=True, timeout=5) as client:
        responses = [client.post(f"{guarded.url}/h2?n={i}", content=b"x" * i) for i in range(3)]
    for i, response in enumerate(responses):
        assert response.http_version == "HTTP/2"
        assert response.status_code == 200
        assert response.json()["body"] == "x" * i
    assert calls(guarded) == seen + 3


# -- and afterwards ------------------------------------------------------------------

def test_zz_good_request_on_a_new_connection_still_works(guarded):
    """After every refusal above, the server still answers, and the application has seen
    exactly the requests that were not refused."""
    seen = calls(guarded)
    result = exchange(guarded.port, request("POST", "/still-fine", body=b"ok"), until=1)
    assert result.statuses == [200]
    assert b'"body": "ok"' in result.responses[0].body
    assert calls(guarded) == seen + 1
    lines = Path(guarded.count_file).read_text().splitlines()
    assert not any("smuggled" in line for line in lines), lines
    assert guarded.proc.poll() is None

