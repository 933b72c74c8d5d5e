"""-k gthread / --threads N: one worker serves N requests at once, each in a Python
thread, on its one channel (issue 6). The front tier gives each worker up to N requests
and the least-loaded worker the next one; a request past --timeout is answered 504 on
its own, and its worker retires once its other requests are done."""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
import threading
import time

from conftest import BINARY, alive
from kit import eventually, request, wait_workers
from test_timeout import LOG_LINE


def at_once(count: int, call) -> list:
    """Runs call(i) for i in range(count) in `count` client threads started together;
    the results in order (an exception is returned in place of its result)."""
    results: list = [None] * count
    go = threading.Barrier(count)

    def client(i: int):
        go.wait()
        try:
            results[i] = call(i)
        except Exception as err:  # noqa: BLE001 - reported by the caller's assert
            results[i] = err

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def sleepers(server, workers: int, count: int) -> tuple[list, float]:
    """Once `workers` workers serve, `count` sleeping requests at once: their (status,
    body) pairs, all 200, and the seconds they took together."""
    wait_workers(server, workers)
    request(server.port)  # Warm up.
    start = time.monotonic()
    results = at_once(count, lambda i: request(server.port))
    took = time.monotonic() - start
    assert all(r[0] == 200 for r in results), [r for r in results if r[0] != 200][:3]
    return results, took


def test_two_workers_of_eight_threads_serve_64_sleepers_in_about_4_rounds(serve):
    server = serve("threads_app:sleepy", "--threads", "8", workers=2)
    results, took = sleepers(server, 2, 64)
    # 64 requests of 50 ms on 16 threads: 4 rounds, 0.2 s. One at a time per worker
    # would take 32 rounds, 1.6 s; the bound leaves room for a loaded machine.
    assert took < 1.0, took
    served_by = {body.split()[0] + b" " + body.split()[1] for _, body in results}
    pids = {body.split()[0] for _, body in results}
    assert len(pids) == 2, pids
    assert len(served_by) > 8, served_by  # Threads of both workers.
    assert all(body.split()[2] == b"True" for _, body in results)  # wsgi.multithread


def test_shared_state_is_not_corrupted_under_32_concurrent_clients(serve):
    server = serve("threads_app:counter", "--threads", "8", workers=1)
    numbers: list[int] = []

    def client(i: int) -> list[int]:
        seen = []
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for _ in range(10):
            conn.request("GET", f"/{i}")
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, (response.status, body)
            n = int(body.split(b";")[0][2:])
            # One response's bytes, whole and not mixed with another's.
            assert body == f"n={n};".encode() * 200, body[:200]
            seen.append(n)
        conn.close()
        return seen

    for result in at_once(32, client):
        assert isinstance(result, list), result
        numbers.extend(result)
    assert sorted(numbers) == list(range(1, 321)), "a count was lost or given twice"


def test_each_concurrent_request_of_one_worker_sees_its_own_environ_and_body(serve):
    server = serve("threads_app:echo", "--threads", "8", workers=1)

    def client(i: int) -> tuple[bytes, bytes]:
        # Every fourth body is large enough to be spooled to a file by the front tier.
        size = (2 << 20) + i if i % 4 == 0 else 1000 + i
        body = (f"<{i}>".encode() * size)[:size]
        status, answer = request(server.port, f"/path/{i}?q={i}", "POST", body,
                                 {"X-Tag": f"tag-{i}"})
        assert status == 200, (status, answer[:200])
        return answer, f"tag-{i}|/path/{i}|q={i}|".encode() + body

    for result in at_once(24, client):
        assert isinstance(result, tuple), result
        answer, expected = result
        assert answer == expected, (answer[:80], expected[:80])


def test_a_request_past_the_timeout_gets_504_alone_and_the_worker_retires(serve):
    server = serve("threads_app:hang", "--threads", "4", "--timeout", "2", workers=1)
    (before,) = wait_workers(server, 1)
    results: dict[str, tuple] = {}

    def get(name: str, path: str):
        start = time.monotonic()
        status, body = request(server.port, path)
        results[name] = (status, body, time.monotonic() - start)

    stuck = threading.Thread(target=get, args=("stuck", "/hang"))
    stuck.start()
    time.sleep(1.0)  # the scenario: the next request comes a second into the stuck one
    # Still running when the stuck one times out (at 2 s to 2.25 s), and silent for
    # less than the timeout: finishes on the same worker, which retires after it.
    slow = threading.Thread(target=get, args=("slow", "/slow?ms=1500"))
    slow.start()
    stuck.join(15)
    slow.join(15)
    status, body, took = results["stuck"]
    assert status == 504, (status, body, server.log[-2000:])
    assert 2.0 <= took < 4.0, took
    status, body, took = results["slow"]
    assert (status, body) == (200, str(before).encode()), (status, body, server.log[-2000:])
    log = server.wait_for_log(rf"WORKER TIMEOUT \(pid:{before}\): thread \d+ silent")
    assert "answering it 504 and retiring the worker" in log
    # faulthandler's dump of every thread (SIGUSR2 from the master) shows the hung one;
    # it is written in pieces, so whole log lines of other processes are taken out first.
    eventually(lambda: re.search(r'File ".*threads_app\.py", line \d+ in _hang\n',
                                 LOG_LINE.sub("", server.log)),
               timeout=5, what=f"the hung thread in the dump\n{server.log[-3000:]}")
    server.wait_for_log(rf"Worker \(pid: {before}, id: \d+\) .* after its timeout; replacing it")
    # No SIGABRT, no SIGKILL: the worker left on its own once its other request was done.
    assert "SIGKILL" not in server.log and "SIGABRT" not in server.log
    (after,) = wait_workers(server, 1)
    assert after != before and not alive(before)
    assert request(server.port, "/again?ms=1") == (200, str(after).encode())


def test_a_gthread_worker_retires_after_max_requests_losing_nothing(serve):
    server = serve("threads_app:sleepy", "--threads", "4", "--max-requests", "10",
                   workers=1)
    results = at_once(24, lambda i: request(server.port, "/?ms=20"))
    assert all(r[0] == 200 for r in results), results
    results += at_once(24, lambda i: request(server.port, "/?ms=20"))
    assert all(r[0] == 200 for r in results), results
    assert len({body.split()[0] for _, body in results}) >= 2, "never retired"


def test_threads_flag_implies_gthread_and_sync_stays_single_threaded(serve):
    threaded = serve("threads_app:sleepy", "--threads", "2", workers=1)
    assert request(threaded.port, "/?ms=1")[1].split()[2] == b"True"
    sync = serve("threads_app:sleepy", "-k", "sync", workers=1)
    assert request(sync.port, "/?ms=1")[1].split()[2] == b"False"


def refused(*flags: str) -> str:
    done = subprocess.run([str(BINARY), "serve", *flags, "threads_app:sleepy"],
                          capture_output=True, text=True, timeout=10)
    assert done.returncode != 0
    return done.stderr


def test_bad_worker_flags_are_refused_before_anything_starts():
    assert "--threads" in refused("--threads", "0")
    assert "--threads" in refused("--threads", "100000")
    assert re.search(r"worker-class|invalid value", refused("-k", "eventlet"))
    assert "--worker-connections" in refused("-k", "gevent", "--worker-connections", "0")


def test_hup_retires_gthread_workers_without_losing_their_requests(serve):
    server = serve("threads_app:sleepy", "--threads", "4", workers=2)
    before = set(wait_workers(server, 2))

    def client(i: int):
        time.sleep(0.01 * (i % 10))  # the scenario: requests spread over 0.1 s
        return request(server.port, "/?ms=300")

    results: list = []
    load = threading.Thread(target=lambda: results.extend(at_once(24, client)))
    load.start()
    time.sleep(0.15)  # Requests are under way in every thread of both workers.
    server.signal(signal.SIGHUP)
    load.join(30)
    assert len(results) == 24 and all(r[0] == 200 for r in results), results
    served_by = {int(body.split()[0]) for _, body in results}
    assert served_by & before, served_by  # The old workers finished theirs.
    eventually(lambda: not set(wait_workers(server, 2)) & before, timeout=10,
               what=f"the old workers gone\n{server.log[-2000:]}")
