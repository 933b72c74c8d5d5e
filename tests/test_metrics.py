"""--metrics-bind: Prometheus text at /metrics on a listener of its own, scraped and
parsed after a known number of requests of each kind."""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import subprocess
import time

from conftest import BINARY, ROOT, free_port
from kit import get, wait_workers

SAMPLE = re.compile(r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$")


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("content-type").startswith("text/plain; version=0.0.4")
    samples = {}
    for line in response.read().decode().splitlines():
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        samples[(name, pairs)] = float(value)
    conn.close()
    return samples


def value(samples, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_count_what_was_served(serve, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x" * 1000)
    metrics_port = free_port()
    server = serve("metrics_app:app", "--metrics-bind", f"127.0.0.1:{metrics_port}",
                   "--static", f"/static={tmp_path}", "--health-path", "/healthz",
                   "--max-requests", "4", workers=2)
    server.wait_for_log(rf"Metrics at: http://127.0.0.1:{metrics_port}/metrics")
    wait_workers(server, 2)
    statuses = [get(server.port, "/")[0] for _ in range(7)]
    statuses += [get(server.port, "/missing")[0] for _ in range(3)]
    statuses += [get(server.port, "/fail")[0]]
    statuses += [get(server.port, "/static/a.txt")[0] for _ in range(2)]
    statuses += [get(server.port, "/static/nothing.txt")[0]]
    statuses += [get(server.port, "/healthz")[0]]
    assert statuses == [200] * 7 + [404] * 3 + [500] + [200, 200, 404, 200]
    server.wait_for_log(r"retired; replacing it")  # --max-requests 4: some restarts
    wait_workers(server, 2)

    # The last responses are counted once their bodies are dropped, and a replacement
    # worker joins once it has said Hello: scrape until both are so.
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(metrics_port)
        settled = (value(samples, "rwsgi_requests_in_flight") == 0
                   and value(samples, "rwsgi_workers_ready") == 2)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    requests = lambda kind, cls: value(samples, "rwsgi_requests_total", kind=kind, **{"class": cls})  # noqa: E731
    assert requests("app", "2xx") == 7
    assert requests("app", "4xx") == 3
    assert requests("app", "5xx") == 1
    assert requests("static", "2xx") == 2
    assert requests("static", "4xx") == 1
    assert requests("health", "2xx") == 1
    for kind, total in (("app", 11), ("static", 3), ("health", 1)):
        assert value(samples, "rwsgi_request_duration_seconds_count", kind=kind) == total
        buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
                          if name == "rwsgi_request_duration_seconds_bucket"
                          and dict(labels)["kind"] == kind))
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and counts[-1] == total, buckets
        assert value(samples, "rwsgi_request_duration_seconds_sum", kind=kind) >= 0
    assert value(samples, "rwsgi_response_body_bytes_total", kind="static") >= 2000
    app_bytes = 7 * len(b"200 OK") + 3 * len(b"404 Not Found") + len(b"500 Internal Server Error")
    assert value(samples, "rwsgi_response_body_bytes_total", kind="app") == app_bytes
    assert value(samples, "rwsgi_requests_in_flight") == 0
    assert value(samples, "rwsgi_requests_queued") == 0
    assert value(samples, "rwsgi_workers_ready") == 2
    assert value(samples, "rwsgi_worker_restarts_total") >= 1
    per_worker = {dict(labels)["pid"]: v for (name, labels), v in samples.items()
                  if name == "rwsgi_worker_requests_total"}
    assert len(per_worker) == 2 and all(0 <= v < 4 for v in per_worker.values()), per_worker
    rss = [v for (name, _), v in samples.items() if name == "rwsgi_worker_resident_bytes"]
    assert len(rss) == 2 and all(v > 1_000_000 for v in rss), rss
    # Only /metrics lives there; the app's port has no /metrics of its own.
    assert get(metrics_port, "/")[0] == 404
    assert get(server.port, "/metrics")[1] == b"200 OK"


def test_a_bad_metrics_address_is_named():
    proc = subprocess.run([str(BINARY), "serve", "--metrics-bind", "nowhere:xyz", "x:app"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--metrics-bind" in proc.stderr, proc.stderr


def test_a_burst_of_connections_is_shared_between_front_threads(serve):
    """Every front thread accepts on the same listener and whichever wakes first takes a
    connection: a burst must not all land on one thread (which would then do all the
    work while the other idles). A thread holding more than its share hands new ones
    to the other."""
    metrics_port = free_port()
    server = serve("metrics_app:app", "--metrics-bind", f"127.0.0.1:{metrics_port}",
                   "--front-threads", "2", workers=2)
    server.wait_for_log(rf"Metrics at: http://127.0.0.1:{metrics_port}/metrics")
    wait_workers(server, 2)
    burst = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
             for _ in range(40)]
    try:
        # Each connection is answered, whichever thread it was handed to.
        for sock in burst:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        for sock in burst:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        samples = scrape(metrics_port)
        open_by_thread = {dict(labels)["thread"]: v for (name, labels), v in samples.items()
                          if name == "rwsgi_connections_open"}
        # The scrape's own connection is on the metrics listener, not counted here.
        assert sorted(open_by_thread) == ["0", "1"], open_by_thread
        assert sum(open_by_thread.values()) == 40, open_by_thread
        assert abs(open_by_thread["0"] - open_by_thread["1"]) <= 3, open_by_thread
    finally:
        for sock in burst:
            sock.close()
    # What a thread counts is given back when its connections close.
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(metrics_port)
        total = sum(v for (name, _), v in samples.items() if name == "rwsgi_connections_open")
        if total == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert total == 0, samples


def test_the_expiry_of_each_tls_certificate_is_given_by_name(serve):
    certs = ROOT / "certs"
    metrics_port = free_port()
    server = serve("basic:hello", "--metrics-bind", f"127.0.0.1:{metrics_port}",
                   "--tls", f"{certs / 'localhost.pem'}:{certs / 'localhost.key'}",
                   "--tls", f"{certs / 'other.test.pem'}:{certs / 'other.test.key'}",
                   workers=1)
    server.wait_for_log(rf"Metrics at: http://127.0.0.1:{metrics_port}/metrics")
    samples = scrape(metrics_port)
    for name, pem in [("localhost", "localhost.pem"), ("other.test", "other.test.pem")]:
        end = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", str(certs / pem)],
                             capture_output=True, text=True, check=True).stdout
        not_after = ssl.cert_time_to_seconds(end.strip().removeprefix("notAfter="))
        assert value(samples, "rwsgi_tls_cert_expiry_seconds", domain=name) == not_after
    # No --acme, no ACME failures counted.
    assert not any(name == "rwsgi_acme_failures_total" for name, _ in samples)
