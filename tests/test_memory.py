"""--max-worker-memory: a worker whose RSS passes the limit retires after its current
request through the lossless retire handshake, and is replaced."""

from __future__ import annotations

import subprocess
import threading
import time

from conftest import BINARY, alive
from kit import eventually, get, wait_workers
from test_rotation import hammer


def _steady_load(server):
    """Starts GETs of / from 4 clients until the returned event is set; the thread's
    result lands in the returned dict under "out" as (answers, errors)."""
    stop = threading.Event()
    result: dict = {}

    def run():
        result["out"] = hammer(server.port, threads=4, total=10**7, stop=stop)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return stop, thread, result


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * 4096 / (1 << 20)


def test_a_worker_past_max_worker_memory_retires_without_a_failed_request(serve):
    server = serve("memory_app:app", "--max-worker-memory", "40", workers=2)
    first = wait_workers(server, 2)
    assert all(_rss_mib(pid) < 40 for pid in first), "a fresh worker is already past 40 MiB"
    stop, load, result = _steady_load(server)
    time.sleep(0.5)  # the scenario: the load runs a while before a worker grows
    status, body = get(server.port, "/grow")
    assert status == 200
    grown = int(body)
    assert grown in first
    server.wait_for_log(
        rf"Worker \(pid: {grown}\) uses [\d.]+ MiB, past --max-worker-memory 40 MiB")
    server.wait_for_log(rf"Worker \(pid: {grown}, id: \d+\) retired; replacing it")
    eventually(lambda: not alive(grown), timeout=10, what=f"worker {grown} gone")
    time.sleep(0.5)  # the load goes on across the replacement
    stop.set()
    load.join(30)
    assert not load.is_alive()
    answers, errors = result["out"]
    assert not errors, f"{errors[:3]}\n{server.log[-3000:]}"
    assert len(answers) > 100
    assert all(status == 200 for status, _ in answers), server.log[-3000:]
    now = wait_workers(server, 2)
    assert grown not in now
    # Only the grown worker crossed the limit.
    assert server.log.count("past --max-worker-memory") == 1, server.log[-3000:]


def test_without_max_worker_memory_a_grown_worker_stays(serve):
    server = serve("memory_app:app", workers=1)
    (worker,) = wait_workers(server, 1)
    assert int(get(server.port, "/grow")[1]) == worker
    assert _rss_mib(worker) > 60
    for _ in range(20):
        assert get(server.port, "/")[1] == str(worker).encode()
    time.sleep(0.5)  # deliberate: a retirement, were there one, would come meanwhile
    assert wait_workers(server, 1) == [worker]
    assert "max-worker-memory" not in server.log


def test_bad_max_worker_memory_values_name_the_flag():
    for value in ("-1", "x", "1.5", "17592186044416"):
        proc = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0",
                               "--max-worker-memory", value, "memory_app:app"],
                              capture_output=True, text=True, timeout=20)
        assert proc.returncode != 0, value
        assert "--max-worker-memory" in proc.stderr, proc.stderr
