"""Bounded memory and disk for bodies the front tier holds (issue 13, items 4 and 7).

A slow reader's response goes to memory within its connection's budget, then to a spill
file within --max-temp-file-size; beyond that (or when nothing can be spilled) the worker
waits for the client. HTTP/2 cannot multiply a connection's budget by its streams, and a
response stalled by flow control for --send-timeout closes its connection."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h2.events
import h2.settings

from conftest import APPS, BINARY
from kit import eventually
from test_buffering import front_tier_of, read_head_and_rest, rss
from test_guard import request
from test_h2 import RawH2
from test_limits import connect

sys.path.insert(0, str(APPS))
from guard_apps import pattern_piece  # noqa: E402

MIB = 1024 * 1024


def spilled_bytes(pid: int, tmpdir: Path) -> int:
    """Bytes in the temporary files `pid` holds open in `tmpdir` (unlinked or not)."""
    total = 0
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd).startswith(str(tmpdir)):
                total += os.stat(fd).st_size
        except OSError:
            continue  # closed meanwhile
    return total


def assert_pattern(body: bytes, mib: int):
    assert len(body) == mib * MIB, len(body)
    pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    wrong = [i for i, piece in enumerate(pieces) if piece != pattern_piece(i)]
    assert not wrong, f"pieces out of order or damaged: {wrong[:10]}"


def test_a_slow_readers_spill_stops_at_max_temp_file_size_and_the_response_arrives_whole(
        serve, tmp_path):
    """The worker waits once the spill holds --max-temp-file-size: neither the disk nor
    the memory grows with the response, and the client still gets every byte in order."""
    server = serve("guard_apps:app", workers=1,
                   env={"TMPDIR": str(tmp_path), "RWSGI_MAX_TEMP_FILE_SIZE": "2m"})
    front = front_tier_of(server.pid)
    before = rss(front)
    slow = connect(server.port, rcvbuf=32 * 1024, timeout=10)
    try:
        slow.sendall(request("GET", "/pattern?mib=32"))
        eventually(lambda: spilled_bytes(front, tmp_path) >= 2 * MIB, 10, "nothing was spilled")
        # Left alone a while, the spill must stay put (the worker waits) where it grew
        # by 32 MiB a second before: the second is the point of the test.
        time.sleep(1)
        spilled = spilled_bytes(front, tmp_path)
        grown = rss(front) - before
        assert spilled <= 3 * MIB, f"{spilled / MIB:.1f} MiB spilled past a 2 MiB cap"
        assert grown < 16 * MIB, f"the front tier grew by {grown / MIB:.1f} MiB"
        head, body = read_head_and_rest(slow, 32 * MIB)
    finally:
        slow.close()
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert_pattern(body, 32)


def test_a_response_that_cannot_be_spilled_makes_the_worker_wait_not_memory_grow(
        serve, tmp_path):
    """TMPDIR cannot be written (a file, whatever the user's rights): the response goes
    through the connection's memory budget only, and still arrives whole."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    server = serve("guard_apps:app", workers=1, env={"TMPDIR": str(not_a_dir)})
    front = front_tier_of(server.pid)
    before = rss(front)
    slow = connect(server.port, rcvbuf=32 * 1024, timeout=10)
    try:
        slow.sendall(request("GET", "/pattern?mib=32"))
        server.wait_for_log("cannot spill a response")
        time.sleep(1)  # deliberate: the time to take 32 MiB into memory, were it not bounded
        grown = rss(front) - before
        assert grown < 16 * MIB, f"the front tier grew by {grown / MIB:.1f} MiB"
        head, body = read_head_and_rest(slow, 32 * MIB)
    finally:
        slow.close()
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert_pattern(body, 32)


def post_without_end(client: RawH2, path: str) -> int:
    """Opens a POST stream on `client` whose body is still to come."""
    stream = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"),
                                      (":authority", "h2.test"), (":path", path)])
    return stream


def test_h2_streams_with_no_window_cost_one_connection_budget_and_are_closed_at_send_timeout(
        serve, tmp_path):
    """64 streams whose window is 0, each answered 2 MiB: the connection holds its budget
    in memory, the rest waits on disk, and the connection is closed once nothing has
    moved for --send-timeout (no socket write is ever blocked, so only a watch on the
    responses can see it)."""
    server = serve("guard_apps:app", "--send-timeout", "2", "--threads", "4", workers=2,
                   env={"TMPDIR": str(tmp_path)})
    front = front_tier_of(server.pid)
    before = rss(front)
    client = RawH2(server.port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    try:
        streams = [client.headers("/pattern?mib=2") for _ in range(64)]
        client.flush()

        def answered(events):
            heads = {e.stream_id for e in events if isinstance(e, h2.events.ResponseReceived)}
            return heads >= set(streams)

        client.pump(15, until=answered)
        assert answered(client.events), "not every stream was answered"
        # The responses have left their workers (what memory does not hold is spilled).
        eventually(lambda: spilled_bytes(front, tmp_path) >= 60 * MIB, 10,
                 "the responses did not reach the front tier")
        grown = rss(front) - before
        assert grown < 32 * MIB, f"the front tier grew by {grown / MIB:.1f} MiB"
        answered_at = time.monotonic()
        client.pump(10)
        assert client.closed, "the stalled connection was still open 10 s later"
        assert time.monotonic() - answered_at < 6
    finally:
        client.close()
    # The spill files go with the connection.
    eventually(lambda: spilled_bytes(front, tmp_path) == 0, 5, "spill files outlived the connection")


def test_unfinished_h2_request_bodies_are_spooled_by_the_connections_total(serve, tmp_path):
    """64 streams each send 1,000,000 bytes of a body they never finish: each is under the
    per-request memory threshold, but together they are spooled past the connection's
    budget rather than held in memory."""
    server = serve("guard_apps:app", workers=1, env={"TMPDIR": str(tmp_path)})
    front = front_tier_of(server.pid)
    before = rss(front)
    client = RawH2(server.port)
    size = 1_000_000
    try:
        streams = [post_without_end(client, "/echo") for _ in range(64)]
        client.flush()
        piece = b"b" * 16384
        pending = {stream: size for stream in streams}
        deadline = time.monotonic() + 20
        while pending:
            assert time.monotonic() < deadline, "the server did not take the bodies"
            for stream in list(pending):
                window = min(client.conn.local_flow_control_window(stream),
                             client.conn.max_outbound_frame_size, pending[stream])
                if window > 0:
                    client.conn.send_data(stream, piece[:window])
                    pending[stream] -= window
                    if not pending[stream]:
                        del pending[stream]
            client.flush()
            client.pump(0.05)
            assert not client.closed
        # The front tier has taken the bodies, to disk or (before the fix) to memory.
        eventually(lambda: spilled_bytes(front, tmp_path) >= 60 * size
                 or rss(front) - before >= 60 * size, 10, "the bodies were not taken")
        grown = rss(front) - before
        assert grown < 32 * MIB, f"the front tier grew by {grown / MIB:.1f} MiB"
    finally:
        client.close()


def test_bad_max_temp_file_size_values_name_the_flag():
    for value in ("x", "-1m", "99999999999999g"):
        proc = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0",
                               f"--max-temp-file-size={value}", "guard_apps:app"],
                              capture_output=True, text=True, timeout=20)
        assert proc.returncode != 0, value
        assert "--max-temp-file-size" in proc.stderr, proc.stderr


def test_a_worker_held_back_by_a_slow_client_is_not_timed_out(serve, tmp_path):
    """Backpressure blocks the worker's writes for as long as the client takes: that is
    not the silence --timeout is for, and the response must not be cut by it."""
    server = serve("guard_apps:app", "--timeout", "2", workers=1,
                   env={"TMPDIR": str(tmp_path), "RWSGI_MAX_TEMP_FILE_SIZE": "1m"})
    front = front_tier_of(server.pid)
    slow = connect(server.port, rcvbuf=32 * 1024, timeout=10)
    try:
        slow.sendall(request("GET", "/pattern?mib=32"))
        eventually(lambda: spilled_bytes(front, tmp_path) >= 1 * MIB, 10, "nothing was spilled")
        time.sleep(4)  # the scenario: twice --timeout with the worker held back
        head, body = read_head_and_rest(slow, 32 * MIB)
    finally:
        slow.close()
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert_pattern(body, 32)
    assert "timed out" not in server.log, server.log[-2000:]
