"""A client that leaves mid-stream must not cost the server its worker (regression: the
worker stopped the app but never ended the stream, so its slot stayed taken)."""

import http.client
import time

import pytest

from rawhttp import Connection


# gthread and gevent (issue 6): the Abort comes while the worker's reader waits, or
# while no greenlet yields to the hub, and must still reach the streaming app.
CLASSES = [(), ("--threads", "2"), ("-k", "gevent", "--worker-connections", "2")]


@pytest.mark.parametrize("flags", CLASSES, ids=["sync", "gthread", "gevent"])
def test_worker_freed_when_client_leaves_mid_stream(serve, flags):
    # No --static/--internal: X-Accel-Redirect is left alone and the endless body streams.
    server = serve("static_apps:redirecting", *flags, workers=1)
    for _ in range(3):
        with Connection(server.port, timeout=5) as conn:
            conn.send("GET", "/accel-forever?to=/x")
            status, _ = conn.read_head()
            assert status == 200
            assert conn.read_chunk()
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/count")
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.read()) > 0
        conn.close()
        assert time.monotonic() - started < 5
