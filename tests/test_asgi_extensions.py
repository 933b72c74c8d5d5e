"""-k asgi: the extensions of the ASGI HTTP spec (www.rst 2.5) and the response rules
the server enforces whatever the application sends (issue 17).

`http.response.pathsend` is served by the front tier as an X-Sendfile answer is, under
the same rules; the checks below mirror tests/test_static.py's for X-Sendfile."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from urllib.parse import quote

import h2.events
import httpx
import pytest

import rawhttp
from conftest import APPS, BINARY, ROOT, children_of
from kit import eventually
from test_h2 import RawH2

FILES = ROOT / "static-test"
PUBLIC = FILES / "public"
PRIVATE = FILES / "private"
REPORT = (PRIVATE / "report.txt").read_bytes()
SECRET = b"top secret"


def get(server, path, headers=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


@pytest.fixture
def files(serve):
    return serve("asgi_extensions:pathsend", "-k", "asgi", "--static", f"/assets={PUBLIC}",
                 "--internal", f"/protected={PRIVATE}", workers=1)


def sendpath(server, path, headers=None, method="GET"):
    return get(server, f"/?path={quote(str(path))}", headers, method)


def test_pathsend_is_served_by_the_front_tier_with_the_apps_headers(files):
    resp, body = sendpath(files, PRIVATE / "report.txt")
    assert (resp.status, body) == (200, REPORT)
    # The file's length, not the app's; the app's other headers kept.
    assert resp.getheader("Content-Length") == str(len(REPORT))
    assert resp.getheader("Content-Disposition") == 'attachment; filename="f"'
    assert resp.getheader("X-App") == "kept"
    assert resp.getheader("X-Sendfile") is None
    assert resp.getheader("ETag") and resp.getheader("Last-Modified")
    # Under the client's own headers: ranges and conditionals apply, HEAD has no body.
    resp, body = sendpath(files, PUBLIC / "digits.txt", {"Range": "bytes=-3"})
    assert (resp.status, body) == (206, b"789")
    etag = sendpath(files, PRIVATE / "report.txt")[0].getheader("ETag")
    resp, body = sendpath(files, PRIVATE / "report.txt", {"If-None-Match": etag})
    assert (resp.status, body) == (304, b"")
    resp, body = sendpath(files, PRIVATE / "report.txt", method="HEAD")
    assert (resp.status, body) == (200, b"")
    assert resp.getheader("Content-Length") == str(len(REPORT))


@pytest.mark.parametrize("path", [
    str(FILES / "secret.txt"),
    str(PRIVATE / ".." / "secret.txt"),
    "/etc/passwd",
    str(PRIVATE),
    str(PRIVATE / "missing.txt"),
])
def test_pathsend_outside_the_directories_is_refused(files, path):
    resp, body = sendpath(files, path)
    assert resp.status == 404
    assert SECRET not in body and b"root:" not in body


def test_a_relative_pathsend_is_the_apps_error(files):
    resp, body = sendpath(files, "private/report.txt")
    assert resp.status == 500
    files.wait_for_log("is not an absolute path")
    # The worker serves on.
    assert sendpath(files, PRIVATE / "report.txt")[1] == REPORT


def test_pathsend_symlink_out_of_its_directory_refused(serve, tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "ok.txt").write_bytes(b"inside")
    server = serve("asgi_extensions:pathsend", "-k", "asgi", "--internal", f"/p={root}",
                   workers=1)
    resp, body = sendpath(server, root / "link.txt")
    assert resp.status == 404 and SECRET not in body
    assert sendpath(server, root / "ok.txt")[1] == b"inside"


def test_pathsend_is_not_offered_without_a_directory(serve):
    server = serve("asgi_extensions:pathsend", "-k", "asgi", workers=1)
    resp, body = sendpath(server, PRIVATE / "report.txt")
    assert resp.status == 501
    assert "http.response.pathsend" not in json.loads(body)


# -- http.response.trailers ------------------------------------------------------------

CHUNKS = [f"chunk-{i}\n".encode() for i in range(3)]
CHECKSUM = hashlib.sha256(b"".join(CHUNKS)).hexdigest()


def raw_get(port: int, headers: str = "") -> bytes:
    """The whole answer to one HTTP/1.1 GET, the connection closed after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET /?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
                     .encode())
        return rawhttp.read_until_closed(sock)


def test_trailers_over_chunked_http1_when_the_request_allows_them(serve):
    server = serve("asgi_extensions:trailers", "-k", "asgi", workers=1)
    answer = raw_get(server.port, "TE: trailers\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"\r\nx-extensions: http.response.trailers" in head.lower(), head
    assert b"\r\ntransfer-encoding: chunked" in head.lower(), head
    assert b"\r\ntrailer: x-checksum" in head.lower(), head
    assert all(chunk in body for chunk in CHUNKS), body
    # The last chunk, then the trailer section (RFC 9112 §7.1.2).
    assert body.endswith(f"0\r\nx-checksum: {CHECKSUM}\r\n\r\n".encode()), body

    # Without TE: trailers the extension is not offered, and no trailer is sent.
    answer = raw_get(server.port)
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"x-extensions: \r\n" in head.lower(), head
    assert body.endswith(b"0\r\n\r\n") and b"x-checksum" not in body, body


def test_trailers_over_http2(serve):
    server = serve("asgi_extensions:trailers", "-k", "asgi", workers=1)
    client = RawH2(server.port)
    try:
        stream = client.headers("/?n=3", extra=[("te", "trailers")])
        events = client.pump(10, until=lambda evs: any(
            isinstance(e, h2.events.StreamEnded) and e.stream_id == stream for e in evs))
        heads = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
        data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert heads and dict(heads[0].headers)[b"x-extensions"] == b"http.response.trailers"
        assert data == b"".join(CHUNKS)
        assert trailers and dict(trailers[0].headers)[b"x-checksum"] == CHECKSUM.encode()

        # Without TE: trailers, none.
        stream = client.headers("/?n=3")
        events = client.pump(10, until=lambda evs: any(
            isinstance(e, h2.events.StreamEnded) and e.stream_id == stream for e in evs))
        assert not [e for e in events if isinstance(e, h2.events.TrailersReceived)
                    and e.stream_id == stream]
    finally:
        client.close()


# -- --hooks and --reload ----------------------------------------------------------------

def read_calls(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_pre_and_post_request_hooks_run_around_an_asgi_request(serve, tmp_path):
    log = tmp_path / "hooks.jsonl"
    server = serve("asgi_extensions:declared_length", "-k", "asgi", "--hooks", "hooks_asgi",
                   workers=1, env={"HOOKS_LOG": str(log)})
    resp, body = get(server, "/length?send=10")
    assert (resp.status, body) == (200, b"aaaaabbbbb")
    eventually(lambda: any(c["hook"] == "post_request" for c in read_calls(log)),
               what="post_request called")
    calls = read_calls(log)
    assert [c["hook"] for c in calls] == ["pre_request", "app", "post_request"], calls
    pre, _, post = calls
    assert pre["req"] == {"method": "GET", "path": "/length", "query": "send=10",
                          "nr": 0}
    assert post["req"] == {**pre["req"], "nr": 1}
    assert post["carried"] == "set in pre_request"
    # environ is the http scope the app got; resp what was sent.
    assert post["scope"] == {"type": "http", "path": "/length"}
    assert (post["status_code"], post["sent"]) == (200, 10)


APP_V1 = """\
import helper


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": helper.NAME.encode()})
"""


def test_reload_shows_an_import_error_and_serves_the_fix(serve, tmp_path):
    (tmp_path / "devasgi.py").write_text(APP_V1)
    (tmp_path / "helper.py").write_text("raise RuntimeError('not yet')\n")
    server = serve("devasgi:app", "-k", "asgi", "--reload", cwd=tmp_path, workers=None,
                   env={"PYTHONDONTWRITEBYTECODE": "1"})
    resp, page = get(server, "/")
    assert resp.status == 500 and b"RuntimeError: not yet" in page and b"<pre>" in page, page
    server.wait_for_log(r"Watching \d+ directories")
    (tmp_path / "helper.py").write_text("NAME = 'ready'\n")
    eventually(lambda: get(server, "/")[1] == b"ready", what="the fixed app served")
    # Broken again by a save: the page again, the server still up.
    (tmp_path / "helper.py").write_text("NAME = (\n")
    eventually(lambda: b"SyntaxError" in get(server, "/")[1], what="the traceback page")
    assert server.proc.poll() is None


# -- a body that does not match its Content-Length --------------------------------------

def exchange(sock: socket.socket, path: str) -> tuple[bytes, bytes]:
    """One keep-alive GET: the head, and the body as its Content-Length frames it."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head, rest


def test_a_body_longer_than_its_content_length_is_cut_to_it(serve):
    server = serve("asgi_extensions:declared_length", "-k", "asgi", workers=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head, body = exchange(sock, "/?send=16")
        assert head.startswith(b"HTTP/1.1 200") and body == b"aaaaaaaabb", (head, body)
        # Nothing past the declared length: the next answer on the connection is whole.
        head, body = exchange(sock, "/?send=10")
        assert head.startswith(b"HTTP/1.1 200") and body == b"aaaaabbbbb", (head, body)
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        answer = client.get(f"{server.url}/?send=16")
        assert (answer.status_code, answer.content) == (200, b"aaaaaaaabb")


def test_a_body_shorter_than_its_content_length_aborts_the_connection(serve):
    server = serve("asgi_extensions:declared_length", "-k", "asgi", workers=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /?send=4 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = rawhttp.read_until_closed(sock)  # closed, not left waiting for 6 bytes
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\naabb"), data
    server.wait_for_log("declared Content-Length: 10 but sent 4 bytes")
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"{server.url}/?send=4")
        # The connection's other streams go on.
        assert client.get(f"{server.url}/?send=10").content == b"aaaaabbbbb"


# -- a lifespan startup that never answers ----------------------------------------------

@pytest.mark.parametrize("lifespan", ["auto", "on"])
def test_a_startup_never_answered_fails_the_boot_after_timeout(lifespan):
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(BINARY), "serve", "-b", "127.0.0.1:0", "-w", "1", "-k", "asgi", "--timeout", "2",
         "--lifespan", lifespan, "asgi_extensions:silent_startup"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(APPS)})
    try:
        log, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        # Still waiting for the app: stop what this test started, by pid, workers first.
        for pid in [*(c for k in children_of(proc.pid) for c in children_of(k)),
                    *children_of(proc.pid), proc.pid]:
            os.kill(pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"the server still waited for lifespan startup after 30 s:\n{log}")
    assert proc.returncode == 4, log
    assert time.monotonic() - started < 20, log
    assert "lifespan.startup not answered within 2 s (--timeout)" in log, log
    assert "ASGI lifespan startup failed" in log, log


def test_a_failure_between_start_and_the_first_body_is_a_500(serve):
    # The head waits for the first body message (pathsend needs that), so the client
    # gets the 500 page rather than a cut response.
    server = serve("asgi_extensions:fails_after_start", "-k", "asgi", workers=1)
    resp, body = get(server, "/")
    assert resp.status == 500 and b"Internal Server Error" in body
    server.wait_for_log("RuntimeError: failed between start and body")
