"""Limits and timeouts of the front tier: head sizes (414/431), body size (413), Expect
(100/417), body/head/keep-alive/send timeouts, slow clients, connection and queue limits,
and bad flag values."""

from __future__ import annotations

import resource
import selectors
import socket
import subprocess
import threading
import time

import pytest

from conftest import BINARY, APPS
from test_guard import assert_refused, exchange, request

MIB = 1 << 20


def connect(port: int, timeout: float = 5.0, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def read_head(s: socket.socket, timeout: float) -> bytes:
    """Reads until the end of one response head (or EOF / timeout); returns what came."""
    s.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    return data


def wait_closed(s: socket.socket, timeout: float) -> tuple[str | None, int, float]:
    """Reads (and discards) until EOF or reset; returns (how, bytes read, seconds)."""
    start = time.monotonic()
    total = 0
    deadline = start + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, total, time.monotonic() - start
        s.settimeout(remaining)
        try:
            chunk = s.recv(1 << 16)
        except socket.timeout:
            return None, total, time.monotonic() - start
        except (ConnectionResetError, BrokenPipeError):
            return "reset", total, time.monotonic() - start
        if not chunk:
            return "eof", total, time.monotonic() - start
        total += len(chunk)


# -- head limits -----------------------------------------------------------------------

def test_default_head_limits_and_their_boundaries(serve):
    server = serve("guard_apps:echo", workers=1)

    def target_for(line_length):  # "GET <target> HTTP/1.1" is line_length bytes long
        return "/" + "a" * (line_length - len("GET / HTTP/1.1"))

    ok = exchange(server.port, request("GET", target_for(4094)), until=1)
    assert ok.statuses == [200]
    assert_refused(exchange(server.port, request("GET", target_for(4095))), 414)

    # Host plus 99 more fields: 100 in all.
    fields = [f"X-F{i}: v" for i in range(99)]
    assert exchange(server.port, request("GET", "/", *fields), until=1).statuses == [200]
    assert_refused(exchange(server.port, request("GET", "/", *fields, "X-One-More: v")), 431)

    # A field line of 8188 bytes is allowed, 8191 is not. (Whether the limit counts the
    # CRLF, as gunicorn's does, is left to test_conformance: 8189 and 8190 differ.)
    def field_of(length):
        return "X-Long: " + "v" * (length - len("X-Long: "))

    assert exchange(server.port, request("GET", "/", field_of(8188)), until=1).statuses == [200]
    # gunicorn counts the CRLF: 8188 bytes + CRLF is the longest line accepted.
    assert_refused(exchange(server.port, request("GET", "/", field_of(8189))), 431)


def test_configured_head_limits(serve):
    server = serve("guard_apps:echo", "--limit-request-line", "100",
                   "--limit-request-fields", "5", "--limit-request-field-size", "50", workers=1)
    assert exchange(server.port, request("GET", "/" + "a" * 49), until=1).statuses == [200]
    assert_refused(exchange(server.port, request("GET", "/" + "a" * 199)), 414)
    four = [f"X-F{i}: v" for i in range(4)]  # plus Host: 5
    assert exchange(server.port, request("GET", "/", *four), until=1).statuses == [200]
    assert_refused(exchange(server.port, request("GET", "/", *four, "X-Sixth: v")), 431)
    assert exchange(server.port, request("GET", "/", "X-A: " + "v" * 43), until=1).statuses == [200]
    assert_refused(exchange(server.port, request("GET", "/", "X-A: " + "v" * 46)), 431)


# -- body size and Expect --------------------------------------------------------------

@pytest.fixture
def small_bodies(serve):
    return serve("guard_apps:echo", "--max-body-size", "1k", workers=1)


def test_declared_body_too_large_is_refused_before_it_is_sent(small_bodies):
    s = connect(small_bodies.port)
    try:
        s.sendall(request("POST", "/", "Content-Length: 2000"))  # the head only
        start = time.monotonic()
        head = read_head(s, 3)
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert time.monotonic() - start < 2
        assert b"100 Continue" not in head
        assert b"connection: close" in head.lower()
        how, _, _ = wait_closed(s, 3)
        assert how, "connection left open after the 413"
    finally:
        s.close()


def test_body_at_the_limit_is_accepted(small_bodies):
    result = exchange(small_bodies.port, request("POST", "/", body=b"b" * 1024), until=1)
    assert result.statuses == [200]
    assert result.responses[0].body.count(b"b") >= 1024


def test_chunked_body_growing_past_the_limit(small_bodies):
    s = connect(small_bodies.port)
    try:
        s.sendall(request("POST", "/", "Transfer-Encoding: chunked")
                  + b"258\r\n" + b"a" * 600 + b"\r\n")
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            early = s.recv(100)
            pytest.fail(f"answered before the body passed the limit: {early!r}")
        s.sendall(b"258\r\n" + b"a" * 600 + b"\r\n")
        result = exchange(0, sock=s, timeout=3)
    finally:
        s.close()
    assert_refused(result, 413)


def test_expect_100_continue(small_bodies):
    s = connect(small_bodies.port)
    try:
        s.sendall(request("POST", "/", "Content-Length: 10", "Expect: 100-continue"))
        interim = read_head(s, 3)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        s.sendall(b"0123456789")
        result = exchange(0, sock=s, timeout=3, until=1)
    finally:
        s.close()
    assert result.statuses == [200]
    assert b'"body": "0123456789"' in result.responses[0].body


def test_expect_100_continue_with_too_large_body(small_bodies):
    s = connect(small_bodies.port)
    try:
        s.sendall(request("POST", "/", "Content-Length: 5000", "Expect: 100-continue"))
        result = exchange(0, sock=s, timeout=3)
    finally:
        s.close()
    assert b"100 Continue" not in result.raw
    assert_refused(result, 413)


def test_unknown_expectation(small_bodies):
    result = exchange(small_bodies.port,
                      request("POST", "/", "Content-Length: 4", "Expect: something-else",
                              body=b"body"))
    assert_refused(result, 417)


# -- timeouts --------------------------------------------------------------------------

def test_stalled_body_gets_408(serve, tmp_path):
    count = tmp_path / "calls"
    server = serve("guard_apps:echo", "--body-timeout", "1", workers=1,
                   env={"GUARD_COUNT_FILE": str(count)})
    result = exchange(server.port, request("POST", "/", "Content-Length: 10") + b"abc",
                      timeout=5)
    assert_refused(result, 408)
    assert 0.8 <= result.elapsed <= 3, result.elapsed
    assert not count.exists() or count.read_text() == ""


def test_partial_head_is_closed_after_the_header_timeout(serve):
    server = serve("guard_apps:echo", "--header-timeout", "2", workers=1)
    partial = connect(server.port)
    silent = connect(server.port)
    try:
        partial.sendall(b"GET / HTTP/1.1\r\nHost: guard.test\r\nX-Unfinished: ")
        results = {}

        def watch(name, s):
            results[name] = wait_closed(s, 6)

        threads = [threading.Thread(target=watch, args=item)
                   for item in (("partial", partial), ("silent", silent))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(8)
    finally:
        partial.close()
        silent.close()
    for name, (how, received, elapsed) in results.items():
        assert how, f"{name}: still open after 6 s"
        assert received == 0, f"{name}: the connection is closed silently"
        assert 1.5 <= elapsed <= 4, f"{name}: closed after {elapsed:.2f} s"
    # A normal client is not affected.
    assert exchange(server.port, request("GET", "/"), until=1).statuses == [200]


def test_slowloris(serve):
    """100 connections trickling a request head one byte a second neither delay a normal
    request nor outlive --header-timeout."""
    server = serve("guard_apps:echo", "--header-timeout", "3", workers=1)
    head = b"GET / HTTP/1.1\r\nHost: guard.test\r\nX-Slow: " + b"a" * 100
    socks = []
    sel = selectors.DefaultSelector()
    closed_after: dict = {}
    start = time.monotonic()
    try:
        for i in range(100):
            s = connect(server.port)
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, i)
        stop = threading.Event()

        def trickle():
            sent = 0
            next_byte = time.monotonic()
            while not stop.is_set() and len(closed_after) < len(socks):
                now = time.monotonic()
                if now - start > 6.5:
                    break
                if now >= next_byte:
                    for i, s in enumerate(socks):
                        if i not in closed_after:
                            try:
                                s.send(head[sent:sent + 1])
                            except OSError:
                                closed_after[i] = time.monotonic() - start
                    sent += 1
                    next_byte += 1.0
                for key, _ in sel.select(timeout=0.05):
                    i = key.data
                    try:
                        data = key.fileobj.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        closed_after.setdefault(i, time.monotonic() - start)
                        sel.unregister(key.fileobj)
                    else:
                        closed_after.setdefault(i, -1.0)  # answered: not expected
                        sel.unregister(key.fileobj)

        trickler = threading.Thread(target=trickle)
        trickler.start()
        time.sleep(1.2)  # the scenario: well into the trickle, before the header timeout
        normal = exchange(server.port, request("GET", "/normal"), until=1, timeout=3)
        assert normal.statuses == [200]
        assert normal.elapsed < 0.5, f"a normal request took {normal.elapsed:.2f} s"
        assert len(closed_after) == 0, "trickling connections closed too early"
        trickler.join(8)
        stop.set()
    finally:
        sel.close()
        for s in socks:
            s.close()
    assert len(closed_after) == 100, f"{100 - len(closed_after)} trickling connections still open"
    times = sorted(closed_after.values())
    assert times[0] >= 2.5, f"closed before the header timeout: {times[:5]}"
    assert times[-1] <= 6, f"closed too late: {times[-5:]}"


def test_keep_alive_timeout(serve):
    server = serve("guard_apps:echo", "--keep-alive", "1", workers=1)
    s = connect(server.port)
    try:
        # Idle for 0.5 s between requests: still open.
        assert exchange(0, request("GET", "/one"), sock=s, until=1).statuses == [200]
        time.sleep(0.5)
        assert exchange(0, request("GET", "/two"), sock=s, until=1).statuses == [200]
        # A response that takes 2 s is not cut by the keep-alive timeout.
        slow = exchange(0, request("GET", "/?sleep=2"), sock=s, until=1, timeout=5)
        assert slow.statuses == [200], slow.raw[:200]
        assert slow.elapsed >= 1.9
        # Then idle: closed about 1 s later.
        how, received, elapsed = wait_closed(s, 4)
    finally:
        s.close()
    assert how, "idle keep-alive connection still open after 4 s"
    assert received == 0
    assert 0.7 <= elapsed <= 2.5, elapsed


def test_slow_reader_does_not_hold_the_worker(serve):
    """-w 1: a client reading a 20 MiB response at ~100 KiB/s does not block another
    client: the front tier buffers the response and frees the worker."""
    server = serve("guard_apps:app", workers=1)
    slow = connect(server.port, rcvbuf=32 * 1024)
    received = 0
    try:
        slow.sendall(request("GET", "/big?mib=20"))
        start = time.monotonic()
        got_second = None
        while time.monotonic() - start < 3:
            slow.settimeout(1)
            chunk = slow.recv(10 * 1024)
            assert chunk, "the slow reader's response ended early"
            received += len(chunk)
            time.sleep(0.1)  # ~100 KiB/s
            if got_second is None and time.monotonic() - start > 1:
                second = exchange(server.port, request("GET", "/second"), until=1, timeout=5)
                got_second = second
        assert got_second is not None
        assert got_second.statuses == [200]
        assert got_second.elapsed < 1, f"second client waited {got_second.elapsed:.2f} s"
        assert received < 2 * MIB, "the slow reader was not slow"
    finally:
        slow.close()


def test_send_timeout_drops_a_client_that_reads_nothing(serve):
    server = serve("guard_apps:app", "--send-timeout", "1", workers=1)
    s = connect(server.port, rcvbuf=32 * 1024)
    try:
        s.sendall(request("GET", "/big?mib=20"))
        time.sleep(3)  # the scenario: reading nothing for three times --send-timeout
        how, received, _ = wait_closed(s, 5)
    finally:
        s.close()
    assert how, "the connection of a client reading nothing was not dropped"
    assert received < 10 * MIB, f"received {received} bytes"
    # The worker is free again.
    assert exchange(server.port, request("GET", "/after"), until=1).statuses == [200]


# -- connection and queue limits -------------------------------------------------------

def test_max_connections(serve):
    server = serve("guard_apps:echo", "--max-connections", "2", "--keep-alive", "30",
                   "--header-timeout", "30", workers=1)
    first, second = connect(server.port), connect(server.port)
    third = None
    try:
        for s in (first, second):
            assert exchange(0, request("GET", "/"), sock=s, until=1).statuses == [200]
        third = connect(server.port)  # queued in the listen backlog
        third.sendall(request("GET", "/third"))
        third.settimeout(1)
        with pytest.raises(socket.timeout):
            early = third.recv(100)
            pytest.fail(f"a third connection was served: {early!r}")
        first.close()
        result = exchange(0, sock=third, until=1, timeout=3)
        assert result.statuses == [200]
        assert b"/third" in result.responses[0].body
        assert result.elapsed < 2
    finally:
        for s in (first, second, third):
            if s is not None:
                s.close()


def _open_files(soft: int, hard: int):
    """A preexec_fn giving rwsgi (and so its children) these limits of open files."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_soft_limit_of_open_files_is_raised_for_max_connections(serve):
    """Under a soft limit of 256 (hard 4096) the front tier still holds 400 connections:
    the master raised the soft limit to what --max-connections 1000 needs."""
    server = serve("guard_apps:echo", "--max-connections", "1000", "--header-timeout", "30",
                   workers=1, preexec_fn=_open_files(256, 4096))
    held = [connect(server.port) for _ in range(399)]
    try:
        last = exchange(server.port, request("GET", "/four-hundredth"), until=1, timeout=5)
        assert last.statuses == [200], last.raw[:200]
    finally:
        for s in held:
            s.close()
    assert "Raised the soft limit of open files from 256 to 1256" in server.log, server.log
    assert "accept failed" not in server.log
    assert "hard limit of open files" not in server.log


def test_hard_limit_below_max_connections_is_named_in_the_log(serve):
    server = serve("guard_apps:echo", workers=1, preexec_fn=_open_files(256, 4096))
    server.wait_for_log(r"\[WARNING\] the hard limit of open files \(4096\) is below the "
                        r"10256 that --max-connections 10000 needs")
    assert "Raised the soft limit of open files from 256 to 4096" in server.log


def test_accept_failures_are_logged_once_a_second(serve):
    """Out of descriptors (soft = hard = 64), 150 waiting connections: accept fails
    over and over in every shard, and says so at most once a second."""
    server = serve("guard_apps:echo", "--header-timeout", "30", workers=1,
                   preexec_fn=_open_files(64, 64))
    held = []
    try:
        start = time.monotonic()
        held = [connect(server.port) for _ in range(150)]
        server.wait_for_log(r"accept failed: Too many open files")
        # The point: how many lines three seconds of failing accepts make.
        time.sleep(max(0.0, 3 - (time.monotonic() - start)))
        lines = server.log.count("accept failed: Too many open files")
        seconds = time.monotonic() - start
    finally:
        for s in held:
            s.close()
    assert 1 <= lines <= seconds + 1, f"{lines} lines in {seconds:.1f} s"


def _timed_request(port, target, results, key, delay):
    time.sleep(delay)  # the scenario: requests staggered in time
    start = time.monotonic()
    r = exchange(port, request("GET", target), until=1, timeout=8)
    results[key] = (r, time.monotonic() - start)


def test_queue_full_gets_503_with_retry_after(serve):
    server = serve("guard_apps:echo", "--max-queue", "1", workers=1)
    results = {}
    threads = [threading.Thread(target=_timed_request,
                                args=(server.port, f"/?sleep=2&n={i}", results, i, 0.3 * i))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    statuses = sorted(results[i][0].statuses[0] for i in range(3))
    assert statuses == [200, 200, 503], {i: r.statuses for i, (r, _) in results.items()}
    refused = [r for r, _ in results.values() if r.statuses == [503]][0]
    assert refused.responses[0].header("retry-after"), refused.responses[0].headers
    # The one turned away (the last to arrive, unless the machine delayed the first)
    # is answered at once, not after waiting.
    (elapsed,) = [e for r, e in results.values() if r.statuses == [503]]
    assert elapsed < 1, elapsed


def test_queue_timeout(serve):
    server = serve("guard_apps:echo", "--queue-timeout", "1", workers=1)
    results = {}
    threads = [threading.Thread(target=_timed_request,
                                args=(server.port, target, results, key, delay))
               for key, target, delay in (("slow", "/?sleep=3", 0), ("waiting", "/w", 0.3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    waiting, elapsed = results["waiting"]
    assert waiting.statuses == [503], waiting.raw[:300]
    assert waiting.responses[0].header("retry-after")
    assert 0.8 <= elapsed <= 2, elapsed
    assert results["slow"][0].statuses == [200]


# -- bad flag values ---------------------------------------------------------------------

@pytest.mark.parametrize("flags,named", [
    (["--max-body-size", "abc"], "--max-body-size"),
    (["--forwarded-allow-ips", "nope"], "--forwarded-allow-ips"),
    (["--forwarded-allow-ips", "10.0.0.0/99"], "--forwarded-allow-ips"),
    (["--header-timeout", "0"], "--header-timeout"),
    (["--body-timeout=-1"], "--body-timeout"),
    (["--keep-alive", "nan"], "--keep-alive"),
    (["--send-timeout", "0"], "--send-timeout"),
    (["--queue-timeout", "inf"], "--queue-timeout"),
    (["--max-connections", "0"], "--max-connections"),
    (["--backlog", "0"], "--backlog"),
    (["--max-queue", "many"], "--max-queue"),
    (["--limit-request-line=-5"], "--limit-request-line"),
])
def test_bad_flag_value(flags, named):
    proc = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0", "-w", "1", *flags,
                           "guard_apps:echo"], capture_output=True, text=True, timeout=10,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(APPS)})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert named in output, output
    assert "Listening at" not in output


def test_bad_forwarded_allow_ips_from_the_environment():
    proc = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0", "-w", "1",
                           "guard_apps:echo"], capture_output=True, text=True, timeout=10,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(APPS),
                               "FORWARDED_ALLOW_IPS": "nope"})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "--forwarded-allow-ips" in output, output
