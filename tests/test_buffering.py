"""Responses to slow clients: the front tier reads a worker's response as fast as the
worker writes it, holds up to 1 MiB of it in memory per response and spills the rest to
a temporary file (DESIGN.md §5), and the client still gets every byte in order."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from conftest import APPS, children_of
from test_guard import exchange, request
from test_limits import connect

sys.path.insert(0, str(APPS))
from guard_apps import pattern_piece  # noqa: E402

MIB = 1024 * 1024


def front_tier_of(master: int) -> int:
    """The child of `master` that runs the front tier (by its process title)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for pid in children_of(master):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"rwsgi: front"):
                return pid
        time.sleep(0.05)
    raise AssertionError("no front tier among the master's children")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def read_head_and_rest(s, wanted_body: int, first: bytes = b"") -> tuple[bytes, bytes]:
    data = first
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "closed before the head"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    parts = [body]
    received = len(body)
    while received < wanted_body:
        chunk = s.recv(1 << 20)
        assert chunk, f"closed after {received} of {wanted_body} body bytes"
        parts.append(chunk)
        received += len(chunk)
    return head, b"".join(parts)


def test_slow_client_response_spills_to_disk_and_arrives_whole(serve):
    server = serve("guard_apps:app", workers=1)
    front = front_tier_of(server.pid)
    # Warm the front tier up, then take its resident size as the baseline.
    assert exchange(server.port, request("GET", "/pattern?mib=1"), until=1).statuses == [200]
    before = rss(front)
    slow = connect(server.port, rcvbuf=32 * 1024)
    try:
        slow.sendall(request("GET", "/pattern?mib=24"))
        # Read nothing for a while: the worker finishes, the front tier holds the rest.
        time.sleep(0.5)
        deadline = time.monotonic() + 10
        while True:
            second = exchange(server.port, request("GET", "/second"), until=1, timeout=5)
            if second.statuses == [200] and second.elapsed < 0.5:
                break  # the worker is free: the whole response has left it
            assert time.monotonic() < deadline, "the worker stayed busy with the slow client"
        grown = rss(front) - before
        assert grown < 8 * MIB, f"front tier grew by {grown / MIB:.1f} MiB for a 24 MiB response"
        head, body = read_head_and_rest(slow, 24 * MIB)
    finally:
        slow.close()
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert len(body) == 24 * MIB
    pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    wrong = [i for i, piece in enumerate(pieces) if piece != pattern_piece(i)]
    assert not wrong, f"pieces out of order or damaged: {wrong[:10]}"


def test_fast_client_gets_a_large_response_whole(serve):
    server = serve("guard_apps:app", workers=1)
    s = connect(server.port)
    try:
        s.sendall(request("GET", "/pattern?mib=8"))
        head, body = read_head_and_rest(s, 8 * MIB)
    finally:
        s.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b"".join(pattern_piece(i) for i in range(8 * 16))


def test_response_stays_whole_when_it_cannot_be_spilled(serve, tmp_path):
    """No writable temporary directory: the response is kept in memory instead, whole and
    in order, and the failure is logged once, not once per chunk."""
    server = serve("guard_apps:app", workers=1, env={"TMPDIR": str(tmp_path / "missing")})
    slow = connect(server.port, rcvbuf=32 * 1024)
    try:
        slow.sendall(request("GET", "/pattern?mib=8"))
        time.sleep(1)  # the worker writes it all while the client reads nothing
        head, body = read_head_and_rest(slow, 8 * MIB)
    finally:
        slow.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b"".join(pattern_piece(i) for i in range(8 * 16))
    assert server.log.count("cannot spill a response") == 1, server.log[-2000:]
