"""Automatic HTTPS (--acme) against a real ACME server: Debian's `pebble` (Let's
Encrypt's test CA), with `pebble-challtestsrv` as the DNS server that points the test
domains at 127.0.0.1. Both run on 127.0.0.1 only, with pebble's own TLS certificate made
by openssl here; pebble validates TLS-ALPN-01 on rwsgi's port and HTTP-01 on its
--redirect-http port, and rejects 5% of nonces on purpose (the client must retry). scripts/test installs pebble with apt.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from conftest import free_port
from test_metrics import scrape, value

DOMAIN = "acme.test"
OTHER = "other.acme.test"

if not (shutil.which("pebble") and shutil.which("pebble-challtestsrv")):
    pytest.skip("pebble is not installed (scripts/test installs Debian's package with apt)",
                allow_module_level=True)


def wait_for_file(path: Path, text: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Waits until `proc`'s log at `path` says `text`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        assert proc.poll() is None, path.read_text(errors="replace")
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in:\n{path.read_text(errors='replace')}")


class Pebble:
    """pebble and its DNS server, on 127.0.0.1, validating TLS-ALPN-01 on `rwsgi_port` and
    HTTP-01 on `http_port` (a port nothing listens on when not given)."""

    def __init__(self, tmp: Path, rwsgi_port: int, http_port: int | None = None):
        self.tmp = tmp
        self.cert = tmp / "pebble.pem"
        key = tmp / "pebble.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out",
                        str(self.cert), "-days", "2", "-subj", "/CN=pebble",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        # A server certificate, not a CA (rustls refuses a CA as a server's).
                        "-addext", "basicConstraints=critical,CA:FALSE",
                        "-addext", "extendedKeyUsage=serverAuth"],
                       check=True, capture_output=True)
        self.port = free_port()
        self.management = free_port()
        dns_port = free_port()
        (tmp / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": str(self.cert), "privateKey": str(key),
            "httpPort": http_port or free_port(), "tlsPort": rwsgi_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}))
        self.dns_log = tmp / "dns.log"
        self.dns = subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns_port}", "-http01", "",
             "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}",
             "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
            stdout=self.dns_log.open("w"), stderr=subprocess.STDOUT)
        self.log = tmp / "pebble.log"
        self.proc = subprocess.Popen(
            ["pebble", "-config", str(tmp / "pebble.json"), "-dnsserver",
             f"127.0.0.1:{dns_port}"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, "PEBBLE_VA_NOSLEEP": "1"})
        wait_for_file(self.dns_log, "DNS", self.dns)
        wait_for_file(self.log, "Listening on", self.proc)
        self.directory = f"https://127.0.0.1:{self.port}/dir"

    def root(self) -> Path:
        """pebble's root CA (it makes a new one each run), from its management interface."""
        context = ssl.create_default_context(cafile=str(self.cert))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management}/roots/0",
                                    context=context, timeout=10) as response:
            pem = response.read()
        path = self.tmp / "pebble-root.pem"
        path.write_bytes(pem)
        return path

    def stop(self):
        for proc in (self.proc, self.dns):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)


@pytest.fixture
def pebble_for(tmp_path):
    started: list[Pebble] = []

    def start(rwsgi_port: int, http_port: int | None = None) -> Pebble:
        pebble = Pebble(tmp_path, rwsgi_port, http_port)
        started.append(pebble)
        return pebble

    yield start
    for pebble in started:
        pebble.stop()


def acme_args(pebble: Pebble, cache: Path, *domains: str) -> list[str]:
    args = ["--acme-directory", pebble.directory, "--acme-ca-root", str(pebble.cert),
            "--acme-cache", str(cache), "--acme-email", "ops@acme.test"]
    for domain in domains:
        args += ["--acme", domain]
    return args


def served_certificate(port: int, name: str, root: Path) -> bytes:
    """The leaf certificate served to a client asking for `name`, verified against `root`."""
    context = ssl.create_default_context(cafile=str(root))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert(binary_form=True)


def certificate_facts(der: bytes) -> tuple[str, int]:
    """A DER certificate's serial number and notAfter (seconds since the epoch)."""
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial",
                          "-enddate"], input=der, capture_output=True, check=True).stdout
    fields = dict(line.split("=", 1) for line in out.decode().splitlines())
    return fields["serial"], int(ssl.cert_time_to_seconds(fields["notAfter"]))


def metrics_args(port: int) -> list[str]:
    return ["--metrics-bind", f"127.0.0.1:{port}"]


def test_first_order_over_tls_alpn_01_and_a_restart_reuses_the_cache(serve, pebble_for, tmp_path):
    port = free_port()
    metrics_port = free_port()
    pebble = pebble_for(port)
    cache = tmp_path / "cache"
    server = serve("basic:hello", *acme_args(pebble, cache, DOMAIN), *metrics_args(metrics_port),
                   workers=1, bind=f"127.0.0.1:{port}", port=port)
    # The server starts before any certificate exists, and says what it waits for.
    server.wait_for_log(f"ACME: no certificate for {DOMAIN} yet")
    server.wait_for_log(f"ACME: obtained a certificate for {DOMAIN}", timeout=60)
    root = pebble.root()
    assert_verified(port, root)
    first = served_certificate(port, DOMAIN, root)

    # The metrics give the served certificate's notAfter, and no failure.
    samples = scrape(metrics_port)
    assert value(samples, "rwsgi_tls_cert_expiry_seconds", domain=DOMAIN) == \
        certificate_facts(first)[1]
    assert value(samples, "rwsgi_acme_failures_total", domain=DOMAIN) == 0

    # The cache is private: files 0600, directories 0700.
    files = [p for p in cache.rglob("*")]
    assert any(p.name == f"{DOMAIN}.pem" for p in files), files
    assert any(p.name == "account.json" for p in files), files
    for path in [cache, *files]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))

    # A restart serves the cached certificate at once, without a new order.
    server.stop()
    again = serve("basic:hello", *acme_args(pebble, cache, DOMAIN), workers=1,
                  bind=f"127.0.0.1:{port}", port=port)
    again.wait_for_log(f"ACME: serving the cached certificate for {DOMAIN}")
    again.wait_ready()
    assert served_certificate(port, DOMAIN, root) == first
    assert "obtained a certificate" not in again.log
    assert "ordering one" not in again.log


def plain_request(port: int, method: str, path: str, host: str) -> tuple[int, Message, bytes]:
    """`method` `path` over plain HTTP: the status, the headers and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=b"x" if method == "POST" else None,
                     headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def assert_verified(port: int, root: Path):
    """openssl and curl both verify DOMAIN's certificate on `port` against `root`."""
    proc = subprocess.run(["openssl", "s_client", "-brief", "-connect", f"127.0.0.1:{port}",
                           "-servername", DOMAIN, "-verify_hostname", DOMAIN,
                           "-verify_return_error", "-CAfile", str(root)],
                          input="", capture_output=True, text=True, timeout=15)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Verification: OK" in proc.stdout + proc.stderr
    curl = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(root),
                           "--resolve", f"{DOMAIN}:{port}:127.0.0.1",
                           f"https://{DOMAIN}:{port}/"],
                          capture_output=True, text=True, timeout=15)
    assert (curl.returncode, curl.stdout) == (0, "Hello, World!\n"), curl.stderr


def test_first_order_over_http_01_on_the_redirect_listener(serve, pebble_for, tmp_path):
    port = free_port()
    http_port = free_port()
    # pebble validates TLS-ALPN-01 on a port nothing listens on: only HTTP-01, fetched
    # from the --redirect-http listener, can pass.
    pebble = pebble_for(free_port(), http_port=http_port)
    server = serve("basic:hello", *acme_args(pebble, tmp_path / "cache", DOMAIN),
                   "--redirect-http", f"127.0.0.1:{http_port}", workers=1,
                   bind=f"127.0.0.1:{port}", port=port)
    server.wait_for_log(f"ACME: answering the http-01 challenge for {DOMAIN}", timeout=30)
    server.wait_for_log(f"ACME: obtained a certificate for {DOMAIN}", timeout=60)
    # The first order passed: no failure, no fallback to the other challenge.
    assert "tls-alpn-01" not in server.log and "cannot obtain" not in server.log, server.log
    assert_verified(port, pebble.root())
    # Debian's pebble offers no renewal information (RFC 9773 ARI): the renewal is set
    # two thirds into the certificate's life, and the log says why.
    server.wait_for_log(f"ACME: the certificate for {DOMAIN} is to be renewed at .* \\(two "
                        "thirds into its life: no renewal window from the CA: its directory "
                        "offers none\\)")

    # The challenge path answers only tokens of an order in progress; every other path
    # still redirects, and so does a challenge path sent with another method.
    unknown = "/.well-known/acme-challenge/nosuchtoken"
    status, headers, body = plain_request(http_port, "GET", unknown, DOMAIN)
    assert (status, body, headers["Location"]) == (404, b"", None), headers
    for method, path in [("GET", "/.well-known/other?x=1"), ("GET", "/"), ("POST", unknown)]:
        status, headers, _ = plain_request(http_port, method, path, DOMAIN)
        assert (status, headers["Location"]) == (308, f"https://{DOMAIN}:{port}{path}")


def test_a_failed_http_01_order_is_tried_again_over_tls_alpn_01(serve, pebble_for, tmp_path):
    port = free_port()
    # pebble looks for HTTP-01 tokens on a port nothing listens on: the first order
    # fails, the next one (after the first backoff, about 10 s) passes over TLS-ALPN-01.
    pebble = pebble_for(port)
    server = serve("basic:hello", *acme_args(pebble, tmp_path / "cache", DOMAIN),
                   "--redirect-http", f"127.0.0.1:{free_port()}", workers=1,
                   bind=f"127.0.0.1:{port}", port=port)
    log = server.wait_for_log(f"ACME: cannot obtain a certificate for {DOMAIN}", timeout=30)
    assert f"answering the http-01 challenge for {DOMAIN}" in log, log
    server.wait_for_log(f"ACME: answering the tls-alpn-01 challenge for {DOMAIN}", timeout=30)
    server.wait_for_log(f"ACME: obtained a certificate for {DOMAIN}", timeout=60)
    assert_verified(port, pebble.root())


def test_a_ca_that_cannot_be_reached_is_a_warning_and_the_cached_certificate_stays(
        serve, pebble_for, tmp_path):
    port = free_port()
    pebble = pebble_for(port)
    cache = tmp_path / "cache"
    server = serve("basic:hello", *acme_args(pebble, cache, DOMAIN), workers=1,
                   bind=f"127.0.0.1:{port}", port=port)
    server.wait_for_log(f"ACME: obtained a certificate for {DOMAIN}", timeout=60)
    root = pebble.root()
    first = served_certificate(port, DOMAIN, root)
    server.stop()
    pebble.stop()

    # pebble is gone: the cached domain is still served, the new one is a WARNING
    # naming it and the CA, and its handshakes fail cleanly meanwhile.
    metrics_port = free_port()
    again = serve("basic:hello", *acme_args(pebble, cache, DOMAIN, OTHER),
                  *metrics_args(metrics_port), workers=1, bind=f"127.0.0.1:{port}", port=port)
    log = again.wait_for_log(f"ACME: cannot obtain a certificate for {OTHER}", timeout=30)
    line = next(l for l in log.splitlines() if f"certificate for {OTHER} from" in l)
    assert "WARNING" in line and pebble.directory in line, line
    assert "retrying in" in line, line
    assert served_certificate(port, DOMAIN, root) == first
    with pytest.raises(ssl.SSLError):
        served_certificate(port, OTHER, root)
    assert f"cannot obtain a certificate for {DOMAIN}" not in again.log
    assert again.proc.poll() is None
    # The failure is counted for its domain; only the cached certificate has an expiry.
    samples = scrape(metrics_port)
    assert value(samples, "rwsgi_acme_failures_total", domain=OTHER) >= 1
    assert value(samples, "rwsgi_acme_failures_total", domain=DOMAIN) == 0
    assert value(samples, "rwsgi_tls_cert_expiry_seconds", domain=DOMAIN) == \
        certificate_facts(first)[1]
    assert ("rwsgi_tls_cert_expiry_seconds", frozenset({("domain", OTHER)})) not in samples


def https_get(port: int, name: str, root: Path) -> tuple[bytes, bytes]:
    """GET / over a new TLS connection asking for `name`: the certificate and the answer."""
    context = ssl.create_default_context(cafile=str(root))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
                        .encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            return tls.getpeercert(binary_form=True), answer


def test_a_renewal_under_load_fails_no_request_and_new_handshakes_get_the_new_certificate(
        serve, pebble_for, tmp_path):
    port = free_port()
    pebble = pebble_for(port)
    # A renewal window longer than pebble's certificates live: each is renewed as soon as
    # it is served (and the log says so).
    renew_before = str(10 * 365 * 86400)
    server = serve("basic:hello", *acme_args(pebble, tmp_path / "cache", DOMAIN),
                   "--acme-renew-before", renew_before, workers=1,
                   bind=f"127.0.0.1:{port}", port=port)
    server.wait_for_log(f"ACME: obtained a certificate for {DOMAIN}", timeout=60)
    assert f"no more than --acme-renew-before ({renew_before}s)" in server.wait_for_log(
        "renewed at once")
    root = pebble.root()
    # A connection open across the renewals keeps working.
    context = ssl.create_default_context(cafile=str(root))
    kept = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                               server_hostname=DOMAIN)

    def ask_kept() -> bytes:
        kept.sendall(f"GET / HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
        answer = b""
        while not answer.endswith(b"Hello, World!\n"):
            chunk = kept.recv(65536)
            assert chunk, answer
            answer += chunk
        return answer

    assert ask_kept().startswith(b"HTTP/1.1 200 ")

    # New connections, one request each, until the load has seen a renewal (two
    # certificates) and made 200 requests: bounded by 2000 requests and 60 s.
    seen: list[bytes] = []
    failures: list[str] = []

    def load():
        deadline = time.monotonic() + 60
        while len(seen) + len(failures) < 2000 and time.monotonic() < deadline:
            if len(seen) >= 200 and len(set(seen)) >= 2:
                return
            try:
                cert, answer = https_get(port, DOMAIN, root)
            except OSError as err:
                failures.append(repr(err))
                continue
            if answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"Hello, World!\n"):
                seen.append(cert)
            else:
                failures.append(answer[:200].decode(errors="replace"))

    thread = threading.Thread(target=load)
    thread.start()
    thread.join(timeout=90)
    assert not thread.is_alive()
    assert failures == [], failures[:5]
    assert len(set(seen)) >= 2, f"no renewal in {len(seen)} requests:\n{server.log}"
    assert "ACME: renewing the certificate for" in server.log
    assert ask_kept().startswith(b"HTTP/1.1 200 ")
    kept.close()
    # Once renewed, new handshakes get the new certificate: another serial.
    first_serial = certificate_facts(seen[0])[0]
    assert certificate_facts(served_certificate(port, DOMAIN, root))[0] != first_serial


def test_acme_flags_are_checked_before_the_start(serve, tmp_path):
    for args, says in [
        (["--acme", "*.example.com"], "wildcard"),
        (["--acme", "a_b.example"], "not a domain name"),
        (["--acme-email", "ops@example.com"], "needs --acme"),
        (["--acme", "example.com", "--acme-staging", "--acme-directory", "https://x/d"],
         "give one of them"),
        (["--acme", "example.com", "--acme-directory", "http://x/d"], "https://"),
        (["--acme", "example.com", "--acme-renew-before", "0"], "--acme-renew-before"),
        (["--acme-renew-before", "86400"], "needs --acme"),
    ]:
        server = serve("basic:hello", *args, "--acme-cache", str(tmp_path), workers=1,
                       wait=False)
        assert server.wait() != 0
        assert says in server.log, (args, server.log)


def test_instances_sharing_a_cache_take_the_certificate_another_renewed(
        serve, pebble_for, tmp_path):
    """Two instances with one --acme-cache: the one whose renewal comes second finds the
    certificate the first renewed and serves it, without an order of its own."""
    first_port, second_port = free_port(), free_port()
    pebble = pebble_for(first_port)  # only the first instance is validated
    cache = tmp_path / "cache"
    first = serve("basic:hello", *acme_args(pebble, cache, DOMAIN), workers=1,
                  bind=f"127.0.0.1:{first_port}", port=first_port)
    first.wait_for_log(f"ACME: obtained a certificate for {DOMAIN}", timeout=60)
    root = pebble.root()
    original, not_after = certificate_facts(served_certificate(first_port, DOMAIN, root))
    first.stop()

    # The second is due 40 s from now; the first, started again, 10 s from now, and then
    # again soon after each renewal: it renews first, and keeps renewing.
    def due_in(seconds: int) -> str:
        return str(not_after - int(time.time()) - seconds)

    second = serve("basic:hello", *acme_args(pebble, cache, DOMAIN),
                   "--acme-renew-before", due_in(40), workers=1,
                   bind=f"127.0.0.1:{second_port}", port=second_port)
    second.wait_for_log(f"ACME: serving the cached certificate for {DOMAIN}")
    first = serve("basic:hello", *acme_args(pebble, cache, DOMAIN),
                  "--acme-renew-before", due_in(10), workers=1,
                  bind=f"127.0.0.1:{first_port}", port=first_port)
    first.wait_for_log(f"ACME: obtained a certificate for {DOMAIN}", timeout=60)

    second.wait_for_log(f"ACME: serving the certificate for {DOMAIN} found renewed in",
                        timeout=90)
    assert certificate_facts(served_certificate(second_port, DOMAIN, root))[0] != original
    assert "ACME: renewing the certificate" not in second.log, second.log
    assert "obtained a certificate" not in second.log, second.log
