"""--health-path: answered by the front tier (never the app), 200 while a worker takes
requests, 503 while none does."""

from __future__ import annotations

import http.client
import subprocess
import time

from conftest import BINARY, Server


def request(port: int, method: str, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read(), response.headers  # any case
    finally:
        conn.close()


def test_health_is_answered_by_the_front_tier(serve):
    server = serve("slow_boot:app", "--health-path", "/healthz", workers=1)
    deadline = time.monotonic() + 10
    while request(server.port, "GET", "/healthz")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status, body, headers = request(server.port, "GET", "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["Cache-Control"] == "no-store"
    status, body, _ = request(server.port, "HEAD", "/healthz")
    assert (status, body) == (200, b"")
    # Other methods, and other paths, go to the app; the app never saw the probes.
    assert request(server.port, "POST", "/healthz")[1] == b"/healthz"
    assert request(server.port, "GET", "/other")[1] == b"/healthz /other"


def test_health_is_503_until_a_worker_is_ready(tmp_path):
    server = Server("slow_boot:app", "--health-path", "/healthz", workers=1,
                    env={"SLOW_BOOT": "3"})
    try:
        status, body, headers = request(server.port, "GET", "/healthz")
        assert (status, body) == (503, b"no worker ready\n")
        assert headers["Retry-After"] == "1"
        deadline = time.monotonic() + 15
        while request(server.port, "GET", "/healthz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        server.stop()


def test_a_health_path_that_is_no_path_is_named():
    for bad in ("healthz", "/h?x=1"):
        proc = subprocess.run([str(BINARY), "serve", "--health-path", bad, "x:app"],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and "--health-path" in proc.stderr, proc.stderr
