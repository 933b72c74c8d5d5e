"""--max-requests and --max-requests-jitter: workers retire and are replaced, and the
retire handshake on the channel loses no request (nor does a graceful stop)."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import threading
import time

from conftest import BINARY, children_of
from kit import BOOT_WORKER, eventually, fronts_of, wait_workers


def hammer(port: int, threads: int, total: int, stop: threading.Event | None = None,
           keep_alive: bool = True):
    """`total` GETs of / from `threads` clients; returns (answers, errors), where an
    answer is (status, body) and an error the exception a client saw."""
    answers: list[tuple[int, bytes]] = []
    errors: list[Exception] = []
    lock = threading.Lock()
    left = [total]

    def take() -> bool:
        with lock:
            if left[0] <= 0 or (stop is not None and stop.is_set()):
                return False
            left[0] -= 1
            return True

    def client():
        conn = None
        while take():
            try:
                if conn is None or not keep_alive:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
                conn.request("GET", "/")
                resp = conn.getresponse()
                answer = (resp.status, resp.read())
                with lock:
                    answers.append(answer)
                if not keep_alive:
                    conn.close()
            except Exception as exc:  # noqa: BLE001 - judged by the test
                with lock:
                    errors.append(exc)
                if conn is not None:
                    conn.close()
                conn = None
                if stop is not None:
                    return

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert not w.is_alive(), "a client is stuck"
    return answers, errors


def test_max_requests_rotates_workers_without_a_failed_request(serve):
    server = serve("rotation_app:app", "--max-requests", "20", "--max-requests-jitter", "5",
                   workers=2)
    wait_workers(server, 2)
    answers, errors = hammer(server.port, threads=8, total=600)
    assert not errors, f"{errors[:3]}\n{server.log[-3000:]}"
    assert len(answers) == 600
    booted = {int(p) for p in BOOT_WORKER.findall(server.log)}
    for status, body in answers:
        assert status == 200, server.log[-3000:]
        assert int(body) in booted
    seen = {int(body) for _, body in answers}
    assert len(seen) > 2, f"no rotation: {seen}"
    assert "Autorestarting worker" in server.log
    assert "retired; replacing it" in server.log
    # A worker that served its last request under the load may still be retiring; in
    # the end there are two again (wait_workers fails if not).
    wait_workers(server, 2)


def test_max_requests_1_gives_every_request_a_new_worker(serve):
    server = serve("rotation_app:app", "--max-requests", "1", workers=2)
    wait_workers(server, 2)
    answers, errors = hammer(server.port, threads=2, total=30)
    assert not errors, f"{errors[:3]}\n{server.log[-3000:]}"
    assert all(status == 200 for status, _ in answers)
    pids = [int(body) for _, body in answers]
    assert len(pids) == 30
    assert len(set(pids)) == 30, f"a worker served twice: {pids}"


def test_sigterm_under_load_answers_every_accepted_request(serve):
    server = serve("rotation_app:app", "--max-requests", "15", workers=2)
    wait_workers(server, 2)
    stop = threading.Event()
    result = {}

    def run():
        result["out"] = hammer(server.port, threads=6, total=100_000, stop=stop,
                               keep_alive=False)

    load = threading.Thread(target=run, daemon=True)
    load.start()
    time.sleep(1.5)  # the scenario: the load runs (and workers rotate) a while first
    server.signal(signal.SIGTERM)
    load.join(60)
    stop.set()
    assert not load.is_alive()
    answers, errors = result["out"]
    assert len(answers) > 50, server.log[-3000:]
    bad = [a for a in answers if a[0] != 200 or not a[1].isdigit()]
    assert not bad, f"{bad[:3]}\n{server.log[-3000:]}"
    # Only refusals of new connections once the listeners closed: never a torn answer.
    assert all(isinstance(e, (ConnectionError, http.client.RemoteDisconnected))
               for e in errors), errors[:3]
    assert server.wait(20) == 0, server.log[-3000:]


def test_bad_max_requests_values_name_the_flag():
    for flag, value in (("--max-requests", "-1"), ("--max-requests-jitter", "x")):
        proc = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0", flag, value,
                               "rotation_app:app"], capture_output=True, text=True, timeout=20)
        assert proc.returncode != 0
        assert flag in proc.stderr, proc.stderr


def test_sigterm_to_a_busy_worker_retires_it_without_a_failed_request(serve):
    # The same handshake, started by a signal at any moment: requests already on their
    # way to the worker are served or go to the other worker, never answered 502.
    server = serve("rotation_app:app", workers=2)
    first = wait_workers(server, 2)
    result = {}
    # Open-ended, so that the load outlasts the signals however fast the machine is.
    done = threading.Event()

    def run():
        result["out"] = hammer(server.port, threads=8, total=10**7, stop=done)

    load = threading.Thread(target=run, daemon=True)
    load.start()
    time.sleep(0.2)  # the scenario: the load is under way before the first TERM
    for pid in first:
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.2)  # the scenario: one worker retiring after the other
    wait_workers(server, 2)
    time.sleep(0.5)  # the new workers serve part of the load
    done.set()
    load.join(60)
    assert not load.is_alive()
    answers, errors = result["out"]
    assert not errors, f"{errors[:3]}\n{server.log[-3000:]}"
    assert len(answers) > 100
    assert all(status == 200 for status, _ in answers), server.log[-3000:]
    served_by = {int(body) for _, body in answers}
    assert served_by & set(first) and served_by - set(first), "the signals missed the load"
    now = wait_workers(server, 2)
    assert not set(now) & set(first), server.log[-3000:]


def _workers_of(server) -> list[int]:
    """The master's children that are workers (all but the front tier)."""
    front = fronts_of(server.pid)
    return [pid for pid in children_of(server.pid) if pid not in front]


def _wait_worker_count(server, count: int, timeout: float = 10) -> list[int]:
    """The workers once there are `count` of them (or as they are after `timeout`)."""
    try:
        eventually(lambda: len(_workers_of(server)) == count, timeout, f"{count} workers")
    except AssertionError:
        pass  # the caller's assertion names the count
    return _workers_of(server)


def test_ttin_and_ttou_change_the_worker_count_without_failures(serve):
    server = serve("rotation_app:app", workers=2)
    assert len(_wait_worker_count(server, 2)) == 2
    failures: list[str] = []
    done = threading.Event()

    def load():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        while not done.is_set():
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    failures.append(f"{response.status} {body[:80]!r}")
            except (OSError, http.client.HTTPException) as err:
                failures.append(repr(err))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.close()

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for sent in range(1, 3):  # one at a time: the kernel merges signals pending together
            server.signal(signal.SIGTTIN)
            server.wait_for_log(r"Handling signal: ttin", count=sent)
        assert len(_wait_worker_count(server, 4)) == 4, server.log
        for sent in range(1, 6):  # more than there are workers: one is always kept
            server.signal(signal.SIGTTOU)
            server.wait_for_log(r"Handling signal: ttou", count=sent)
        assert len(_wait_worker_count(server, 1)) == 1, server.log
        time.sleep(0.5)  # deliberate: a worker started by mistake would show meanwhile
        assert len(_workers_of(server)) == 1
    finally:
        done.set()
        for thread in threads:
            thread.join(15)
    assert not failures, failures[:5]
