"""HTTP transport: keep-alive, pipelining, many clients at once, HTTP/2 with prior
knowledge on the same port, Unix sockets and IPv6."""
import asyncio
import ctypes
import hashlib
import http.client
import json
import os
import random
import socket
import stat
import struct
import subprocess
import threading
import time

import httpx
import pytest

from kit import fronts_of
from rawhttp import read_until, read_until_closed

TIMEOUT = 5


def parse_responses(data: bytes):
    """Splits Content-Length-framed HTTP/1.1 responses: [(status line, headers, body)]."""
    responses = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete head: {head[:200]!r}"
        status, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.decode().lower()] = value.strip().decode("latin-1")
        length = int(headers["content-length"])
        assert len(data) >= length, f"body cut short: {len(data)} < {length}"
        responses.append((status, headers, data[:length]))
        data = data[length:]
    return responses


def test_keep_alive_serves_several_requests_on_one_connection(serve):
    server = serve("wsgi_environ:dump")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.connect()
    sock, local_port = conn.sock, conn.sock.getsockname()[1]
    for i in range(5):
        conn.request("GET", f"/ka/{i}")
        resp = conn.getresponse()
        env = json.loads(resp.read())["environ"]
        assert resp.status == 200
        assert not resp.will_close
        assert env["PATH_INFO"] == f"/ka/{i}"
        # The same TCP connection each time: same client port, same socket object.
        assert env["REMOTE_PORT"] == str(local_port)
        assert conn.sock is sock
    conn.close()


def test_connection_close_is_honoured(serve):
    server = serve("wsgi_environ:dump")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /bye HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        # The server closes after the answer (a timeout here means it kept it open).
        [(status, headers, body)] = parse_responses(read_until_closed(sock))
    assert status == b"HTTP/1.1 200 OK"
    assert headers.get("connection", "").lower() == "close"
    assert json.loads(body)["environ"]["PATH_INFO"] == "/bye"


def _segments_received(sock: socket.socket) -> int:
    """The TCP segments `sock` has received (tcp_info's tcpi_segs_in, Linux 4.2+)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, 140)[0]


@pytest.mark.parametrize("request_line, headers", [
    ("GET /last HTTP/1.1", "Connection: close\r\n"),
    ("GET /last HTTP/1.1", "Connection: keep-alive, Close\r\n"),
    ("GET /last HTTP/1.0", ""),
])
def test_a_last_response_leaves_in_the_segment_that_closes_the_connection(
        serve, request_line, headers):
    """A response after which the server closes the connection shares its segment with
    the FIN: the client receives the SYN-ACK, the ACK of its request, and the response
    with the FIN, three segments, not four."""
    server = serve("wsgi_environ:dump")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(f"{request_line}\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
            [(status, _, body)] = parse_responses(read_until_closed(sock))
            assert status.endswith(b" 200 OK")
            assert json.loads(body)["environ"]["PATH_INFO"] == "/last"
            assert _segments_received(sock) == 3


def test_a_last_response_streamed_is_not_held_back(serve):
    """Held back for the FIN, a streamed last response's first chunk is pushed out when
    the connection waits for the next one: it arrives at once, not after the 200 ms the
    kernel would hold it (the fastest of three tries, for a noisy machine)."""
    server = serve("wsgi_responses:stream", workers=1)
    firsts = []
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /?delay=0.5 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Connection: close\r\n\r\n")
            start = time.monotonic()
            read_until(sock, b"first\n")
            firsts.append(time.monotonic() - start)
            assert b"second\n" in read_until_closed(sock)
    assert min(firsts) < 0.1, f"first chunks after {firsts}"


def test_pipelined_requests_are_answered_in_order(serve):
    server = serve("wsgi_environ:dump", workers=2)
    requests = (b"POST /first HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
                b"Content-Type: text/plain\r\n\r\nhello"
                b"GET /second?x=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                b"GET /third HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(requests)  # all three in one send
        responses = parse_responses(read_until_closed(sock))
    assert [status for status, _, _ in responses] == [b"HTTP/1.1 200 OK"] * 3
    envs = [json.loads(body)["environ"] for _, _, body in responses]
    assert [(e["REQUEST_METHOD"], e["PATH_INFO"], e["QUERY_STRING"]) for e in envs] == [
        ("POST", "/first", ""), ("GET", "/second", "x=2"), ("GET", "/third", "")]
    assert envs[0]["CONTENT_LENGTH"] == "5"


def test_fifty_concurrent_clients(serve):
    server = serve("wsgi_bodies:echo", workers=4)
    clients, per_client = 50, 4
    barrier = threading.Barrier(clients, timeout=TIMEOUT)
    failures, answered = [], []

    def client(n):
        rng = random.Random(n)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
            barrier.wait()
            for i in range(per_client):
                body = f"client {n} request {i}\n".encode() + rng.randbytes(rng.randrange(0, 20000))
                conn.request("POST", f"/c/{n}/{i}", body=body)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200 or data != body:
                    failures.append((n, i, resp.status, data[:80]))
                else:
                    answered.append((n, i))
            conn.close()
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            failures.append((n, repr(exc)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(4 * TIMEOUT)
    assert not any(t.is_alive() for t in threads), "clients still waiting"
    assert failures == []
    assert len(answered) == clients * per_client


# -- HTTP/2 (cleartext, prior knowledge) ------------------------------------------------

def test_http2_prior_knowledge_with_curl(serve):
    server = serve("wsgi_environ:dump")
    result = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "--max-time", str(TIMEOUT),
         "-H", "X-Repeat: a", "-H", "X-Repeat: b",
         "-w", "\n%{http_version} %{response_code}", f"{server.url}/h2/path?q=1"],
        capture_output=True, text=True, timeout=TIMEOUT + 5)
    assert result.returncode == 0, result.stderr
    body, _, trailer = result.stdout.rpartition("\n")
    assert trailer == "2 200"
    env = json.loads(body)["environ"]
    assert env["SERVER_PROTOCOL"].startswith("HTTP/2")
    assert env["PATH_INFO"] == "/h2/path"
    assert env["QUERY_STRING"] == "q=1"
    assert env["RAW_URI"] == "/h2/path?q=1"
    # HTTP/2 has :authority, not Host; the app still gets HTTP_HOST.
    assert env["HTTP_HOST"] == f"127.0.0.1:{server.port}"
    assert env["HTTP_X_REPEAT"] == "a,b"


def test_http2_prior_knowledge_with_httpx(serve):
    server = serve("wsgi_environ:dump")
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        ports = set()
        for i in range(3):
            resp = client.get(f"{server.url}/x2/{i}")
            assert resp.status_code == 200
            assert resp.http_version == "HTTP/2"
            env = resp.json()["environ"]
            assert env["PATH_INFO"] == f"/x2/{i}"
            ports.add(env["REMOTE_PORT"])
        assert len(ports) == 1, "httpx should reuse its one HTTP/2 connection"


def test_http2_multiplexed_streams(serve):
    server = serve("wsgi_environ:dump", workers=2)

    async def main():
        async with httpx.AsyncClient(http1=False, http2=True, timeout=TIMEOUT) as client:
            return await asyncio.gather(*(client.get(f"{server.url}/s/{i}") for i in range(20)))

    responses = asyncio.run(main())
    envs = [r.json()["environ"] for r in responses]
    assert [r.http_version for r in responses] == ["HTTP/2"] * 20
    assert [e["PATH_INFO"] for e in envs] == [f"/s/{i}" for i in range(20)]
    assert len({e["REMOTE_PORT"] for e in envs}) == 1


def test_http2_request_body(serve):
    server = serve("wsgi_bodies:digest")
    body = os.urandom(2 * (1 << 20) + 11)
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        resp = client.post(f"{server.url}/up", content=body)
    assert resp.http_version == "HTTP/2"
    assert resp.json()["length"] == len(body)
    assert resp.json()["sha256"] == hashlib.sha256(body).hexdigest()


def test_http2_streaming(serve):
    server = serve("wsgi_responses:stream")
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        with client.stream("GET", f"{server.url}/?delay=0.8") as resp:
            assert resp.http_version == "HTTP/2"
            chunks = list(resp.iter_raw())
    assert b"".join(chunks) == b"first\nsecond\n"
    # The two chunks came as separate DATA frames, not buffered into one.
    assert len(chunks) >= 2 and chunks[0] == b"first\n"


# -- other listeners ---------------------------------------------------------------------

def test_unix_socket(serve, tmp_path):
    path = tmp_path / "rwsgi.sock"
    server = serve("wsgi_environ:dump", bind=f"unix:{path}")
    assert stat.S_ISSOCK(path.stat().st_mode)
    result = subprocess.run(
        ["curl", "-sS", "--max-time", str(TIMEOUT), "--unix-socket", str(path),
         "http://localhost/over/unix?u=1"],
        capture_output=True, text=True, timeout=TIMEOUT + 5)
    assert result.returncode == 0, result.stderr + server.log
    env = json.loads(result.stdout)["environ"]
    assert env["PATH_INFO"] == "/over/unix"
    assert env["QUERY_STRING"] == "u=1"
    # No port of its own: the Host header names the server (port 80 by default for http).
    assert env["SERVER_NAME"] == "localhost"
    assert env["SERVER_PORT"] == "80"
    assert isinstance(env["REMOTE_ADDR"], str)

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(b"GET /raw HTTP/1.1\r\nHost: example.test:8080\r\nConnection: close\r\n\r\n")
        [(status, _, body)] = parse_responses(read_until_closed(sock))
    assert status == b"HTTP/1.1 200 OK"
    env = json.loads(body)["environ"]
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.test", "8080")
    assert env["PATH_INFO"] == "/raw"


def ipv6_loopback_port():
    """A free port on ::1, or None when ::1 cannot be bound on this machine."""
    if not socket.has_ipv6:
        return None
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]
    except OSError:
        return None


def test_ipv6_loopback(serve):
    port = ipv6_loopback_port()
    if port is None:
        pytest.skip("this machine cannot bind [::1] (no IPv6 loopback), checked by binding it")
    server = serve("wsgi_environ:dump", bind=f"[::1]:{port}")
    conn = http.client.HTTPConnection("::1", port, timeout=TIMEOUT)
    conn.request("GET", "/v6?x=6")
    local_port = conn.sock.getsockname()[1]
    resp = conn.getresponse()
    assert resp.status == 200, server.log
    env = json.loads(resp.read())["environ"]
    conn.close()
    assert env["REMOTE_ADDR"] == "::1"
    assert env["REMOTE_PORT"] == str(local_port)
    assert env["SERVER_NAME"] in ("::1", "[::1]")
    assert env["SERVER_PORT"] == str(port)
    assert env["HTTP_HOST"] == f"[::1]:{port}"
    assert env["PATH_INFO"] == "/v6"
    assert server.log.count(f"Listening at: http://[::1]:{port}") == 1


def _server_side_socket(front: int, client: socket.socket) -> socket.socket:
    """A duplicate of the front tier's own socket of `client`'s connection (pidfd_getfd,
    Linux 5.6+), to read the options it set on it."""
    libc = ctypes.CDLL(None, use_errno=True)
    local_port, server_port = client.getsockname()[1], client.getpeername()[1]
    inode = None
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            # The server's end: an earlier connection from the same client port may
            # linger in TIME_WAIT, with no socket (inode 0).
            if (fields[1].endswith(f":{server_port:04X}")
                    and fields[2].endswith(f":{local_port:04X}") and fields[9] != "0"):
                inode = fields[9]
    assert inode, "the connection is not in /proc/net/tcp"
    for fd in os.listdir(f"/proc/{front}/fd"):
        try:
            target = os.readlink(f"/proc/{front}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target == f"socket:[{inode}]":
            pidfd = libc.syscall(434, front, 0)  # pidfd_open
            assert pidfd >= 0, os.strerror(ctypes.get_errno())
            try:
                dup = libc.syscall(438, pidfd, int(fd), 0)  # pidfd_getfd
                assert dup >= 0, os.strerror(ctypes.get_errno())
            finally:
                os.close(pidfd)
            return socket.socket(fileno=dup)
    raise AssertionError(f"no socket:[{inode}] among the front tier's descriptors")


def test_accepted_connections_send_without_delay(serve):
    """Nagle's algorithm is off on every accepted connection (TCP_NODELAY, as nginx's
    `tcp_nodelay on`): a small response is not held back waiting for an ACK. Set on the
    listener, which accepted sockets inherit, rather than per connection."""
    server = serve("wsgi_environ:dump")
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
            [front] = fronts_of(server.pid)
            with _server_side_socket(front, client) as ours:
                assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
