"""-k gevent: the worker monkey-patches at boot, before the application is imported, and
runs each request in a greenlet, up to --worker-connections at once (issue 6)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from conftest import APPS, BINARY
from kit import eventually, request, wait_workers
from test_threads import at_once, sleepers

pytest.importorskip("gevent")


def test_one_gevent_worker_serves_200_sleeping_requests_at_once(serve):
    server = serve("threads_app:sleepy", "-k", "gevent", workers=1)
    results, took = sleepers(server, 1, 200)
    # 200 x 50 ms one at a time would take 10 s; together, one round plus overheads.
    assert took < 3.0, took
    assert {body.split()[0] for _, body in results} == {results[0][1].split()[0]}
    assert all(body.split()[2] == b"True" for _, body in results)  # wsgi.multithread


def test_worker_connections_bounds_the_requests_of_one_worker(serve):
    server = serve("threads_app:sleepy", "-k", "gevent", "--worker-connections", "10",
                   workers=1)
    start = time.monotonic()
    results = at_once(40, lambda i: request(server.port, "/?ms=100"))
    took = time.monotonic() - start
    assert all(r[0] == 200 for r in results), results
    # 40 requests, 10 at a time: 4 rounds of 100 ms, never fewer.
    assert 0.4 <= took < 3.0, took


def test_each_greenlet_sees_its_own_environ_and_body(serve):
    server = serve("threads_app:echo", "-k", "gevent", workers=1)

    def client(i: int):
        body = f"[{i}]".encode() * (300 + i)
        status, answer = request(server.port, f"/g/{i}?n={i}", "POST", body,
                                 {"X-Tag": f"g{i}"})
        return status, answer, f"g{i}|/g/{i}|n={i}|".encode() + body

    for result in at_once(50, client):
        assert not isinstance(result, Exception), result
        status, answer, expected = result
        assert (status, answer) == (200, expected), answer[:80]


def test_gevent_missing_is_one_clear_error_and_a_failed_start(tmp_path):
    fake = tmp_path / "gevent"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("no gevent in this environment")\n')
    done = subprocess.run(
        [str(BINARY), "serve", "-b", "127.0.0.1:0", "-w", "3", "-k", "gevent",
         "threads_app:sleepy"],
        env={"PYTHONPATH": f"{tmp_path}:{APPS}", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    log = done.stdout + done.stderr
    assert log.count("-k gevent: cannot import gevent") == 1, log
    assert "no gevent in this environment" in log


def test_a_graceful_stop_answers_every_greenlet_in_flight(serve, tmp_path):
    started = tmp_path / "started"
    server = serve("threads_app:sleepy", "-k", "gevent", workers=1,
                   env={"SLEEPY_STARTED": str(started)})
    results: list = []
    load = threading.Thread(
        target=lambda: results.extend(at_once(50, lambda i: request(server.port, "/?ms=1000"))))
    load.start()
    # Stopped once every request is in the app (on a busy machine they take a while).
    eventually(lambda: started.exists() and len(started.read_text().splitlines()) >= 50,
               20, f"50 requests in the app\n{server.log[-2000:]}")
    server.signal(signal.SIGTERM)
    load.join(30)
    assert len(results) == 50 and all(r[0] == 200 for r in results), results[:3]
    assert server.wait(15) == 0


def test_a_silent_gevent_worker_is_timed_out_as_a_whole(serve):
    server = serve("threads_app:hang", "-k", "gevent", "--timeout", "1", workers=1)
    (before,) = wait_workers(server, 1)
    start = time.monotonic()
    status, _ = request(server.port, "/hang")
    assert status == 504 and time.monotonic() - start < 4
    server.wait_for_log(rf"WORKER TIMEOUT \(pid:{before}\)")
    eventually(lambda: before not in wait_workers(server, 1), 10,
               f"worker {before} replaced\n{server.log[-2000:]}")
    assert request(server.port, "/ok?ms=1")[0] == 200
