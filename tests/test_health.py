"""--health-path: answered by the front tier (never the app), 200 while a worker takes
requests, 503 while none does."""

from __future__ import annotations

import subprocess

from conftest import BINARY, Server
from kit import eventually, fetch


def test_health_is_answered_by_the_front_tier(serve):
    server = serve("slow_boot:app", "--health-path", "/healthz", workers=1)
    eventually(lambda: fetch(server.port, "/healthz")[0] == 200, timeout=10, what="healthy")
    status, headers, body = fetch(server.port, "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["Cache-Control"] == "no-store"
    status, _, body = fetch(server.port, "/healthz", "HEAD")
    assert (status, body) == (200, b"")
    # Other methods, and other paths, go to the app; the app never saw the probes.
    assert fetch(server.port, "/healthz", "POST")[2] == b"/healthz"
    assert fetch(server.port, "/other")[2] == b"/healthz /other"


def test_health_is_503_until_a_worker_is_ready(tmp_path):
    # Not waiting for the Ready line: the probe must come while the worker boots.
    server = Server("slow_boot:app", "--health-path", "/healthz", workers=1,
                    env={"SLOW_BOOT": "3"}, wait=False)
    try:
        status, headers, body = fetch(server.port, "/healthz")
        assert (status, body) == (503, b"no worker ready\n")
        assert headers["Retry-After"] == "1"
        eventually(lambda: fetch(server.port, "/healthz")[0] == 200, what="healthy")
    finally:
        server.stop()


def test_a_health_path_that_is_no_path_is_named():
    for bad in ("healthz", "/h?x=1"):
        proc = subprocess.run([str(BINARY), "serve", "--health-path", bad, "x:app"],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and "--health-path" in proc.stderr, proc.stderr
