"""-t/--timeout: a worker silent on one request past the timeout is aborted (SIGABRT, a
traceback of where it hung in the error log, SIGKILL after a grace), its client gets
504, a new worker takes its place, and nobody else notices."""

from __future__ import annotations

import http.client
import re
import subprocess
import threading
import time

from conftest import BINARY, alive
from kit import wait_workers

TIMEOUT = 2.0
TIMED_OUT = re.compile(r"WORKER TIMEOUT \(pid:(\d+)\)")
# One line of rwsgi's log, written with one write(2).
LOG_LINE = re.compile(r"\[\d{4}-\d\d-\d\d [\d:]+ \+0000\] \[\d+\] \[[A-Z]+\] [^\n]*\n")


def traceback_names(log: str, function: str) -> bool:
    """Whether faulthandler's traceback in `log` shows a frame of `function`.
    faulthandler writes a line in several writes, so another process's log line may
    land inside it: those are taken out first."""
    dump = LOG_LINE.sub("", log)
    return re.search(rf'File ".*timeout_app\.py", line \d+ in {function}\n', dump) is not None


class Load:
    """Steady GETs of the fast path from two clients, counting every failure."""

    def __init__(self, port: int):
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(2)]

    def _client(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.done.is_set():
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                with self.lock:
                    if response.status == 200 and body.isdigit():
                        self.ok += 1
                    else:
                        self.failures.append(f"{response.status} {body[:80]!r}")
            except (OSError, http.client.HTTPException) as err:
                with self.lock:
                    self.failures.append(repr(err))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            time.sleep(0.01)
        conn.close()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        for thread in self.threads:
            thread.join(15)
            assert not thread.is_alive(), "a load client is stuck"


def timed_get(port: int, path: str, timeout: float = 20.0) -> tuple[int, bytes, float]:
    """GET `path`; (status, body, seconds until the whole answer was in)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    start = time.monotonic()
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return response.status, body, time.monotonic() - start
    finally:
        conn.close()


def assert_replaced(server, before: list[int]) -> int:
    """The one worker the log says timed out was one of `before`, is gone, and a new
    worker took its place; returns its pid."""
    log = server.wait_for_log(r"WORKER TIMEOUT \(pid:\d+\)", timeout=5)
    (pid,) = {int(p) for p in TIMED_OUT.findall(log)}
    assert pid in before, log
    server.wait_for_log(rf"Worker \(pid: {pid}, id: \d+\) .* after its timeout; replacing it")
    deadline = time.monotonic() + 10
    while True:
        now = wait_workers(server, 2)
        if pid not in now:
            break
        assert time.monotonic() < deadline, server.log
        time.sleep(0.05)
    assert not alive(pid)
    assert set(now) - set(before), f"no new worker: {before} -> {now}"
    return pid


def hang(server, path: str, before: list[int]) -> int:
    """GET a path that hangs: answered 504 within the timeout + 2 s, and its worker is
    replaced; returns the pid of the worker timed out."""
    status, body, took = timed_get(server.port, path)
    assert status == 504, (status, body, server.log[-3000:])
    assert b"504 Gateway Timeout" in body
    assert TIMEOUT <= took <= TIMEOUT + 2, took
    return assert_replaced(server, before)


def start_server(serve, *flags: str, workers: int = 2):
    server = serve("timeout_app:app", *flags, workers=workers)
    return server, wait_workers(server, workers)


def test_a_hung_request_gets_504_a_traceback_and_a_new_worker(serve):
    server, before = start_server(serve, "--timeout", str(TIMEOUT))
    with Load(server.port) as load:
        time.sleep(0.3)  # the scenario: the load is under way before the hang
        pid = hang(server, "/sleep", before)
        time.sleep(0.5)  # The new worker serves the load too.
    assert not load.failures, f"{load.failures[:3]}\n{server.log[-3000:]}"
    assert load.ok > 20, load.ok
    log = server.wait_for_log(r"Worker aborted \(SIGABRT")
    # faulthandler's traceback, from inside the hung function, in the error log.
    assert traceback_names(log, "sleep_forever"), log
    assert "worker timed out on a request (--timeout): 504" in log
    # It went on SIGABRT: no SIGKILL was needed, and it is no boot failure.
    assert f"Worker (pid: {pid}) still alive" not in log
    assert "died while booting" not in log


def test_a_tight_python_loop_is_aborted_too(serve):
    server, before = start_server(serve, "--timeout", str(TIMEOUT))
    pid = hang(server, "/spin", before)
    log = server.wait_for_log(r"Worker aborted \(SIGABRT")
    assert traceback_names(log, "spin_forever"), log
    assert f"Worker (pid: {pid}) still alive" not in log


def test_a_worker_that_blocks_sigabrt_is_killed_after_the_grace(serve):
    server, before = start_server(serve, "--timeout", str(TIMEOUT))
    with Load(server.port) as load:
        # The front tier answers at once; the kill comes a second later.
        pid = hang(server, "/blocked", before)
    assert not load.failures, f"{load.failures[:3]}\n{server.log[-3000:]}"
    log = server.log
    assert f"Worker (pid: {pid}) still alive" in log
    assert f"Worker (pid: {pid}, id: " in log and "was killed by SIGKILL after its timeout" in log
    assert "Perhaps out of memory" not in log


def test_a_response_that_keeps_streaming_is_not_timed_out(serve):
    server, before = start_server(serve, "--timeout", str(TIMEOUT))
    # 8 chunks, 0.5 s apart: 4 s in all, twice the timeout, never silent for long.
    status, body, took = timed_get(server.port, "/trickle?8,0.5")
    assert status == 200, server.log[-3000:]
    assert body == b"".join(b"chunk %d\n" % i for i in range(8))
    assert took >= 2 * TIMEOUT
    assert "WORKER TIMEOUT" not in server.log
    assert sorted(wait_workers(server, 2)) == sorted(before)


def test_a_stream_that_falls_silent_is_cut_off(serve):
    # The head and a chunk are out when the worker hangs: too late for a 504, so the
    # client's connection is aborted rather than the response passed off as whole.
    server, before = start_server(serve, "--timeout", str(TIMEOUT))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        conn.request("GET", "/stall")
        response = conn.getresponse()
        assert response.status == 200
        assert response.readline() == b"first\n"
        start = time.monotonic()
        try:
            rest = response.read()
        except (http.client.IncompleteRead, ConnectionError) as err:
            rest = err
        assert not isinstance(rest, bytes), f"a cut response passed as whole: {rest!r}"
        assert time.monotonic() - start <= TIMEOUT + 2
    finally:
        conn.close()
    assert_replaced(server, before)


def test_timeout_0_turns_it_off(serve):
    server, before = start_server(serve, "--timeout", "0", workers=1)
    status, body, took = timed_get(server.port, "/nap?3")
    assert status == 200, server.log[-3000:]
    assert took >= 3
    assert "WORKER TIMEOUT" not in server.log
    assert wait_workers(server, 1) == before


def test_a_short_request_under_the_timeout_is_left_alone(serve):
    server, before = start_server(serve, "-t", "3", workers=1)
    status, _, _ = timed_get(server.port, "/nap?1.5")
    assert status == 200, server.log[-3000:]
    assert "WORKER TIMEOUT" not in server.log
    assert wait_workers(server, 1) == before


def test_bad_timeout_values_name_the_flag():
    for value in ("-1", "nan", "soon"):
        proc = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0", "--timeout", value,
                               "timeout_app:app"], capture_output=True, text=True, timeout=20)
        assert proc.returncode != 0, value
        assert "--timeout" in proc.stderr, proc.stderr


def test_more_workers_than_the_scoreboard_holds_is_refused():
    proc = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0", "-w", "1025",
                           "timeout_app:app"], capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0
    assert "--workers" in proc.stderr and "1024" in proc.stderr, proc.stderr


def test_a_hung_request_over_http2_gets_504_and_its_connection_lives(serve):
    import httpx

    server, before = start_server(serve, "--timeout", str(TIMEOUT))
    with httpx.Client(http1=False, http2=True, timeout=20) as client:
        start = time.monotonic()
        response = client.get(f"http://127.0.0.1:{server.port}/sleep")
        took = time.monotonic() - start
        assert response.http_version == "HTTP/2"
        assert response.status_code == 504, server.log[-3000:]
        assert TIMEOUT <= took <= TIMEOUT + 2, took
        # The same connection carries on with the other worker and the new one.
        assert client.get(f"http://127.0.0.1:{server.port}/").status_code == 200
    assert_replaced(server, before)
