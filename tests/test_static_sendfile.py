"""Large static files: sent with sendfile(2) on plain HTTP/1 connections, read into
memory on TLS and HTTP/2 ones (README, Static files). Whatever the path, the client gets
the file's bytes exactly, in ranges and over keep-alive; a file cut short while it is
sent fails its response without taking the front tier down."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import http.client
import os
import re
import socket
import ssl
import subprocess
import time

import pytest

from conftest import ROOT, Server, alive
from kit import fetch

MIB = 1024 * 1024
# Larger than the size from which files are mapped (64 KiB), over several of hyper's
# chunks, and not a whole number of pages.
BIG = 3 * MIB + 12345
SMALL = b"small and read whole\n"
CERTS = ROOT / "certs"
CA = str(CERTS / "ca.pem")
LOCALHOST = f"{CERTS / 'localhost.pem'}:{CERTS / 'localhost.key'}"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A directory with a large file of random bytes (a byte out of place shows) and a
    small one."""
    root = tmp_path_factory.mktemp("files")
    content = os.urandom(BIG)
    (root / "big.bin").write_bytes(content)
    (root / "small.txt").write_bytes(SMALL)
    return root, content


@pytest.fixture(scope="module")
def site(files, tmp_path_factory):
    root, _ = files
    log = tmp_path_factory.mktemp("log") / "access.log"
    server = Server("static_apps:redirecting", "--static", f"/s={root}",
                    "--internal", f"/protected={root}", "--access-logfile", str(log),
                    workers=1)
    server.access_log = log
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_site(files):
    root, _ = files
    server = Server("static_apps:counting", "--static", f"/s={root}", "--tls", LOCALHOST,
                    workers=1)
    yield server
    server.stop()


def curl(*args: str) -> bytes:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args],
                          capture_output=True, timeout=30, check=True).stdout


def front_tier(server: Server) -> int:
    """The pid of the server's front tier, from its log."""
    return int(re.search(r"Booting front tier with pid: (\d+)",
                         server.wait_for_log("Booting front tier"))[1])


# -- plain HTTP/1: sendfile ---------------------------------------------------------------

def test_large_file_twice_then_a_small_one_on_one_keep_alive_connection(site, files):
    _, content = files
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=20)
    try:
        for _ in range(2):
            conn.request("GET", "/s/big.bin")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            assert resp.getheader("Content-Length") == str(BIG)
            assert digest(body) == digest(content)
        sock = conn.sock
        conn.request("GET", "/s/small.txt")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, SMALL)
        assert conn.sock is sock, "the connection was not kept alive"
    finally:
        conn.close()


@pytest.mark.parametrize("start, end", [
    (100_001, 2_900_000),   # off page boundaries, in the middle
    (BIG - 70_000, BIG - 1),  # the end of the file
    (4096, 4096 + 65535),    # exactly the size from which files are mapped
])
def test_a_range_of_a_large_file(site, files, start, end):
    _, content = files
    status, headers, body = fetch(site.port, "/s/big.bin",
                                  headers={"Range": f"bytes={start}-{end}"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {start}-{end}/{BIG}"
    assert digest(body) == digest(content[start:end + 1])


def test_several_large_ranges_are_one_multipart_body(site, files):
    _, content = files
    ranges = [(2_000_000, 2_999_999), (10, 20), (70_000, 1_000_000)]
    spec = "bytes=" + ", ".join(f"{a}-{b}" for a, b in ranges)
    status, headers, body = fetch(site.port, "/s/big.bin", headers={"Range": spec})
    assert status == 206
    assert headers["Content-Length"] == str(len(body))
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
    parts = [(p["Content-Range"], digest(p.get_payload(decode=True)))
             for p in message.iter_parts()]
    # Sorted by offset, as rwsgi sends them.
    assert parts == [(f"bytes {a}-{b}/{BIG}", digest(content[a:b + 1]))
                     for a, b in sorted(ranges)]


def test_head_of_a_large_file_then_a_get_on_the_same_connection(site, files):
    _, content = files
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=20)
    try:
        conn.request("HEAD", "/s/big.bin")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"")
        assert resp.getheader("Content-Length") == str(BIG)
        conn.request("GET", "/s/big.bin")
        resp = conn.getresponse()
        assert resp.status == 200 and digest(resp.read()) == digest(content)
    finally:
        conn.close()


def test_internal_redirects_to_a_large_file(site, files):
    root, content = files
    status, _, body = fetch(site.port, "/accel?to=/protected/big.bin")
    assert status == 200 and digest(body) == digest(content)
    status, _, body = fetch(site.port, f"/sendfile?path={root / 'big.bin'}",
                            headers={"Range": "bytes=5000-1500000"})
    assert status == 206 and digest(body) == digest(content[5000:1500001])


def test_the_access_log_counts_a_large_files_bytes(site, files):
    fetch(site.port, "/s/big.bin?logged")
    deadline = time.monotonic() + 10
    line = None
    while line is None and time.monotonic() < deadline:
        lines = site.access_log.read_text().splitlines() if site.access_log.exists() else []
        line = next((entry for entry in lines if "/s/big.bin?logged" in entry), None)
        if line is None:
            time.sleep(0.05)
    assert line is not None, "no access log line"
    assert f'HTTP/1.1" 200 {BIG} ' in line, line


def test_a_slow_reader_gets_the_whole_file(site, files):
    """A client that reads nothing for a while, then slowly, in small pieces: the
    server's sends wait for it (sendfile meets a full socket) and finish."""
    _, content = files
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.settimeout(20)
        sock.connect(("127.0.0.1", site.port))
        for _ in range(2):  # twice: the connection is whole after a slow response
            sock.sendall(b"GET /s/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.5)  # the server fills the socket and waits
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(4096)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            reads = 0
            while len(body) < BIG:
                chunk = sock.recv(min(32 * 1024, BIG - len(body)))
                assert chunk, f"closed after {len(body)} of {BIG} bytes"
                body += chunk
                reads += 1
                if reads % 8 == 0:
                    time.sleep(0.01)
            assert digest(body) == digest(content)


@pytest.mark.parametrize("how", [
    "http1",     # sendfile
    "h2c",       # read: h2 copies the start of each frame's bytes
    "tls-http1", "tls-h2",  # read: rustls copies every byte
])
def test_a_file_cut_short_while_sent_fails_the_response_and_the_front_tier_lives(serve,
                                                                                   tmp_path,
                                                                                   how):
    """The file shrinks while a slow client is still reading it: the response ends
    before the promised length, and the front tier serves on. It must never read the
    memory of a mapping past the file's new end (SIGBUS would end it): on TLS and
    HTTP/2 connections, whose libraries read what they send, files are not mapped."""
    size = 32 * MIB
    content = (bytes(range(251)) * (size // 251 + 1))[:size]
    path = tmp_path / "shrinking.bin"
    path.write_bytes(content)
    (tmp_path / "small.txt").write_bytes(SMALL)
    tls = ["--tls", LOCALHOST] if how.startswith("tls") else []
    server = serve("static_apps:counting", "--static", f"/s={tmp_path}", *tls, workers=1)
    front = front_tier(server)
    scheme = "https" if tls else "http"
    version = {"http1": "--http1.1", "h2c": "--http2-prior-knowledge",
               "tls-http1": "--http1.1", "tls-h2": "--http2"}[how]
    # A slow reader: the server fills the socket and waits for it.
    client = subprocess.Popen(["curl", "-sS", "--max-time", "30", "--limit-rate", "2M",
                               "--cacert", CA, version,
                               f"{scheme}://127.0.0.1:{server.port}/s/shrinking.bin"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        body = client.stdout.read(256 * 1024)
        assert len(body) == 256 * 1024, "ended before the file was cut"
        os.truncate(path, MIB)
        rest, error = client.communicate(timeout=30)  # a hang fails the test
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    body += rest
    assert client.returncode != 0, "curl saw a complete response"
    assert len(body) < size, "the whole file arrived although it was cut short"
    # What the file still holds arrives as it is. Bytes past its new end that were
    # already in the socket's buffers may be the old ones or zeros: the socket refers to
    # the page cache, which the truncation cleared (nginx's sendfile does the same).
    kept = min(len(body), MIB)
    assert body[:kept] == content[:kept], "bytes other than the file's were sent"
    # The same front tier answers the next request.
    status = curl("--cacert", CA, "-o", "/dev/null", "-w", "%{http_code}",
                  f"{scheme}://127.0.0.1:{server.port}/s/small.txt")
    assert status == b"200"
    assert alive(front), "the front tier died"
    assert server.log.count("Booting front tier") == 1, server.log


# -- TLS and HTTP/2: read as before ------------------------------------------------------

def test_large_file_over_h2c(site, files):
    _, content = files
    body = curl("--http2-prior-knowledge", f"{site.url}/s/big.bin")
    assert digest(body) == digest(content)
    body = curl("--http2-prior-knowledge", "-H", "Range: bytes=100001-2900000",
                f"{site.url}/s/big.bin")
    assert digest(body) == digest(content[100_001:2_900_001])


def test_large_file_over_tls_http11_and_h2(tls_site, files):
    _, content = files
    context = ssl.create_default_context(cafile=CA)
    conn = http.client.HTTPSConnection("127.0.0.1", tls_site.port, context=context, timeout=20)
    try:
        for _ in range(2):
            conn.request("GET", "/s/big.bin")
            resp = conn.getresponse()
            assert resp.status == 200 and digest(resp.read()) == digest(content)
        conn.request("GET", "/s/big.bin", headers={"Range": "bytes=100001-2900000"})
        resp = conn.getresponse()
        assert resp.status == 206
        assert digest(resp.read()) == digest(content[100_001:2_900_001])
    finally:
        conn.close()
    body = curl("--http2", "--cacert", CA, f"https://127.0.0.1:{tls_site.port}/s/big.bin")
    assert digest(body) == digest(content)
