"""The hop through shared-memory rings (`--ring-size`, issue 14): the same answers as over
the socket, bodies far larger than the rings in both directions, the flag's checks, and
a worker that scribbles on its rings costs its own request only, never the front tier;
a worker that looked at its ring while requests came close together sleeps once they stop."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import BINARY
from kit import wait_workers

TIMEOUT = 20


def pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


@pytest.mark.parametrize("ring_size", ["4k", "64k", "0"])
def test_big_bodies_both_ways_through_small_rings(serve, ring_size):
    """5 MiB up and 3 MiB down through rings of 4 KiB (each frame wraps many times and
    both sides wait for room), of 64 KiB, and over the socket (0)."""
    server = serve("ring_apps:echo", "--ring-size", ring_size, workers=1)
    body = pattern(5 * 1024 * 1024 + 17)
    with httpx.Client(timeout=TIMEOUT) as client:
        for n in (0, 10, 3 * 1024 * 1024 + 5):
            response = client.post(f"{server.url}/?n={n}", content=body)
            assert response.status_code == 200
            digest, _, rest = response.content.partition(b"\n")
            assert digest.decode() == hashlib.sha256(body).hexdigest()
            assert rest == pattern(n)


def test_gthread_worker_over_rings_serves_many_at_once(serve):
    server = serve("ring_apps:echo", "--ring-size", "4k", "--threads", "4", workers=1)
    with httpx.Client(timeout=TIMEOUT, limits=httpx.Limits(max_connections=8)) as client:
        with ThreadPoolExecutor(8) as pool:
            sizes = [i * 40_000 for i in range(16)]
            answers = list(pool.map(
                lambda n: client.post(f"{server.url}/?n={n}", content=pattern(n)), sizes))
    for n, response in zip(sizes, answers):
        assert response.status_code == 200
        digest, _, rest = response.content.partition(b"\n")
        assert digest.decode() == hashlib.sha256(pattern(n)).hexdigest() and rest == pattern(n)


@pytest.mark.parametrize("value", ["1k", "2g", "lots"])
def test_bad_ring_size_names_the_flag(value, tmp_path):
    done = subprocess.run([str(BINARY), "serve", "--ring-size", value, "basic:hello"],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert done.returncode != 0
    assert "--ring-size" in done.stderr + done.stdout


def test_a_worker_scribbling_on_its_rings_costs_only_its_request(serve):
    """Both sides check every position the other publishes: garbage drops that worker,
    the front tier goes on, a new worker serves the next. The request on it gets a 502,
    or its answer whole when the front tier read the worker's last publish in the
    moment between two of the scribbler's overwrites (the bytes were the worker's own,
    and checked): never anything else."""
    server = serve("ring_apps:scribble", workers=1)
    with httpx.Client(timeout=TIMEOUT) as client:
        first = client.get(f"{server.url}/pid").text
        broken = client.get(f"{server.url}/scribble")
        assert broken.status_code == 502 or (broken.status_code, broken.text) == (200, first)
        # Whichever side reads the garbage first says so and lets go of the worker.
        server.wait_for_log(r"corrupt")
        server.wait_for_log(r"Booting worker with pid", count=2)
        again = client.get(f"{server.url}/pid")
        assert again.status_code == 200 and again.text != first
    assert server.proc.poll() is None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("threads", ["1", "4"])
def test_a_worker_sleeps_once_requests_stop_coming(serve, threads):
    # Under load a worker looks at its ring for a moment before it sleeps (requests
    # then come close together); once they stop it must sleep, not keep looking.
    server = serve("basic:hello", "--threads", threads, workers=1)
    [worker] = wait_workers(server, 1)

    def burst(_):
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            return all(client.get("/").status_code == 200 for _ in range(200))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(burst, range(8)))
    before = cpu_seconds(worker)
    time.sleep(2)
    idle = cpu_seconds(worker) - before
    assert idle < 0.2, f"the worker used {idle:.2f} s of CPU in 2 s without requests"
