"""TLS: --tls, --tls-key, SNI, SIGHUP reload, --hsts and --redirect-http.

Clients are the real ones a user would reach for: `openssl s_client`, curl, httpx and
Python's ssl module, all trusting only the test CA in certs/ (see certs/README.md).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time

import httpx

from conftest import ROOT, free_port
from kit import run
from rawhttp import read_until_closed

CERTS = ROOT / "certs"
CA = str(CERTS / "ca.pem")
LOCALHOST = f"{CERTS / 'localhost.pem'}:{CERTS / 'localhost.key'}"
OTHER = f"{CERTS / 'other.test.pem'}:{CERTS / 'other.test.key'}"


def context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=CA)


def s_client(port: int, *args: str) -> tuple[int, str]:
    """One handshake with `openssl s_client -brief`; returns (exit code, its output)."""
    proc = subprocess.run(["openssl", "s_client", "-brief", "-connect", f"127.0.0.1:{port}",
                           "-CAfile", CA, *args],
                          input="", capture_output=True, text=True, timeout=15)
    return proc.returncode, proc.stdout + proc.stderr


def peer_subject(port: int, *args: str) -> str:
    code, out = s_client(port, *args)
    assert code == 0, out
    for line in out.splitlines():
        if line.startswith("Peer certificate:"):
            return line
    raise AssertionError(f"no peer certificate in:\n{out}")


def curl(*args: str) -> tuple[int, str]:
    proc = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", CA, *args],
                          capture_output=True, text=True, timeout=15)
    return proc.returncode, proc.stdout + proc.stderr


def https_get(port: int, path: str = "/", conn=None) -> tuple[int, dict, bytes]:
    conn = conn or http.client.HTTPSConnection("127.0.0.1", port, context=context(), timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


# -- handshakes ---------------------------------------------------------------------


def test_tls13_and_tls12_handshakes_verify_against_the_test_ca(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, workers=1)
    for flag, version in (("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")):
        code, out = s_client(server.port, flag, "-verify_return_error")
        assert code == 0, out
        assert f"Protocol version: {version}" in out, out
        assert "Verification: OK" in out, out
        assert "CN = localhost" in out, out


def test_alpn_prefers_h2_and_takes_http11(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, workers=1)

    def alpn(*args: str) -> str:
        proc = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}",
                               "-CAfile", CA, *args], input="", capture_output=True,
                              text=True, errors="replace", timeout=15)
        lines = [line for line in proc.stdout.splitlines() if "ALPN" in line]
        assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
        return lines[0]

    assert alpn("-alpn", "http/1.1,h2") == "ALPN protocol: h2"
    assert alpn("-alpn", "http/1.1") == "ALPN protocol: http/1.1"
    assert alpn() == "No ALPN negotiated"
    # Offering only protocols rwsgi does not speak fails the handshake (RFC 7301 §3.2).
    code, out = s_client(server.port, "-alpn", "spdy/3")
    assert code != 0 and "no application protocol" in out, out



def test_the_server_chooses_the_cipher_suite(serve):
    """Issue 13, item 13: the server's order wins over the client's, so a client that
    lists a weaker suite first still gets the strongest both support."""
    server = serve("basic:hello", "--tls", LOCALHOST, workers=1)
    for flag, offered, expected in (
        ("-tls1_2", ("-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"),
         "ECDHE-ECDSA-AES256-GCM-SHA384"),
        ("-tls1_3", ("-ciphersuites", "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"),
         "TLS_AES_256_GCM_SHA384"),
    ):
        code, out = s_client(server.port, flag, *offered)
        assert code == 0, out
        assert f"Ciphersuite: {expected}" in out, out


def test_tls11_is_refused(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, workers=1)
    # SECLEVEL=0 makes this OpenSSL really offer TLS 1.1, so the refusal is the server's.
    code, out = s_client(server.port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert code != 0, out
    assert "alert" in out, out
    assert "no protocols available" not in out, out
    assert "Protocol version: TLSv1.1" not in out, out
    # The failed handshake is not worth a line at the default log level.
    time.sleep(0.3)  # deliberate: a line about it, were there one, would be out by then
    assert "handshake" not in server.log.lower(), server.log


def test_curl_negotiates_http2_by_default_and_http11_on_request(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, workers=1)
    url = f"https://localhost:{server.port}/"
    resolve = f"localhost:{server.port}:127.0.0.1"
    code, out = curl("--resolve", resolve, "-w", "\n%{http_version}", url)
    assert code == 0, out
    assert out == "Hello, World!\n\n2", out
    code, out = curl("--http2", "--resolve", resolve, "-w", "\n%{http_version}", url)
    assert code == 0, out
    assert out == "Hello, World!\n\n2", out
    code, out = curl("--http1.1", "--resolve", resolve, "-w", "\n%{http_version}", url)
    assert code == 0, out
    assert out == "Hello, World!\n\n1.1", out
    # By address: the certificate names 127.0.0.1 too.
    code, out = curl("-w", "\n%{http_version}", f"https://127.0.0.1:{server.port}/")
    assert code == 0, out
    assert out.endswith("\n2"), out


def test_httpx_http2_over_tls_and_the_environ(serve):
    server = serve("tls_apps:environ", "--tls", LOCALHOST, workers=1)
    with httpx.Client(http2=True, verify=context(), timeout=10) as client:
        resp = client.get(f"https://127.0.0.1:{server.port}/")
    assert resp.status_code == 200
    assert resp.http_version == "HTTP/2"
    seen = resp.json()
    assert seen["wsgi.url_scheme"] == "https"
    assert seen["HTTPS"] == "on"
    assert seen["SERVER_PROTOCOL"] == "HTTP/2"
    # And over HTTP/1.1.
    status, _, body = https_get(server.port)
    assert status == 200
    seen = json.loads(body)
    assert (seen["wsgi.url_scheme"], seen["HTTPS"], seen["SERVER_PROTOCOL"]) == \
        ("https", "on", "HTTP/1.1")


def test_plain_http_environ_has_no_https(serve):
    server = serve("tls_apps:environ", workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/")
    seen = json.loads(conn.getresponse().read())
    assert seen["wsgi.url_scheme"] == "http"
    assert seen["HTTPS"] is None


def test_key_in_the_certificate_file(serve, tmp_path):
    both = tmp_path / "both.pem"
    both.write_bytes((CERTS / "localhost.pem").read_bytes() + (CERTS / "localhost.key").read_bytes())
    server = serve("basic:hello", "--tls", str(both), workers=1)
    assert https_get(server.port)[2] == b"Hello, World!\n"


def test_tls_key_flag(serve):
    server = serve("basic:hello", "--tls", str(CERTS / "localhost.pem"),
                   "--tls-key", str(CERTS / "localhost.key"), workers=1)
    assert https_get(server.port)[2] == b"Hello, World!\n"
    assert f"Listening at: https://127.0.0.1:{server.port}" in server.log


# -- start-up errors ----------------------------------------------------------------


def test_mismatched_key_is_a_startup_error_naming_it():
    code, out = run("serve", "-b", f"127.0.0.1:{free_port()}", "--tls",
                    f"{CERTS / 'localhost.pem'}:{CERTS / 'other.test.key'}", "basic:hello")
    assert code == 2, out
    assert "--tls" in out and "other.test.key" in out and "does not match" in out, out
    assert "Listening at" not in out


def test_mismatched_tls_key_flag_is_named():
    code, out = run("serve", "-b", f"127.0.0.1:{free_port()}", "--tls",
                    str(CERTS / "other.test.pem"), "--tls-key", str(CERTS / "localhost.key"),
                    "basic:hello")
    assert code == 2, out
    assert "--tls-key" in out and "localhost.key" in out and "does not match" in out, out


def test_missing_files_are_named(tmp_path):
    missing = tmp_path / "missing.pem"
    code, out = run("serve", "--tls", str(missing), "--tls-key", str(CERTS / "localhost.key"),
                    "basic:hello")
    assert code == 2, out
    assert "--tls" in out and "missing.pem" in out and "No such file" in out, out
    code, out = run("serve", "--tls", str(CERTS / "localhost.pem"),
                    "--tls-key", str(tmp_path / "nokey.pem"), "basic:hello")
    assert code == 2, out
    assert "--tls-key" in out and "nokey.pem" in out, out
    # A certificate alone, with no key anywhere, says how to give one.
    code, out = run("serve", "--tls", str(CERTS / "localhost.pem"), "basic:hello")
    assert code == 2, out
    assert "no private key" in out and "--tls-key" in out, out


def test_unreadable_pem_is_named(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
    code, out = run("serve", "--tls", f"{junk}:{CERTS / 'localhost.key'}", "basic:hello")
    assert code == 2, out
    assert "junk.pem" in out and "PEM" in out, out
    text = tmp_path / "text.pem"
    text.write_text("hello\n")
    code, out = run("serve", "--tls", f"{text}:{CERTS / 'localhost.key'}", "basic:hello")
    assert code == 2, out
    assert "text.pem" in out and "no PEM certificate" in out, out


def test_tls_only_flags_need_tls():
    for flags in (["--hsts", "60"], ["--redirect-http", "127.0.0.1:0"],
                  ["--tls-key", str(CERTS / "localhost.key")]):
        code, out = run("serve", *flags, "basic:hello")
        assert code == 2, out
        assert f"{flags[0]}: needs --tls" in out, out


def test_expired_certificate_is_a_warning_and_still_served(serve):
    server = serve("basic:hello", "--tls", f"{CERTS / 'expired.pem'}:{CERTS / 'localhost.key'}",
                   workers=1)
    assert "WARNING" in server.log and "expired.pem" in server.log, server.log
    assert "expired on" in server.log, server.log
    code, out = s_client(server.port)
    assert "CN = localhost" in out, out
    assert "expired" in out, out  # the client's verdict on it
    code, out = curl("--insecure", f"https://127.0.0.1:{server.port}/")
    assert code == 0 and out == "Hello, World!\n", out


# -- SNI ----------------------------------------------------------------------------


def test_sni_picks_the_certificate_and_the_first_is_the_default(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, "--tls", OTHER, workers=1)
    port = server.port
    assert "CN = other.test" in peer_subject(port, "-servername", "other.test")
    assert "CN = other.test" in peer_subject(port, "-servername", "www.other.test")
    assert "CN = localhost" in peer_subject(port, "-servername", "localhost")
    assert "CN = localhost" in peer_subject(port, "-servername", "unknown.example")
    assert "CN = localhost" in peer_subject(port, "-noservername")
    # A verifying client reaches each name.
    code, out = curl("--resolve", f"other.test:{port}:127.0.0.1", f"https://other.test:{port}/")
    assert code == 0 and out == "Hello, World!\n", out


# -- SIGHUP reload ------------------------------------------------------------------


def test_sighup_reloads_certificates_and_keeps_open_connections(serve, tmp_path):
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(CERTS / "localhost.pem", cert)
    shutil.copy(CERTS / "localhost.key", key)
    server = serve("basic:hello", "--tls", f"{cert}:{key}", workers=1)
    # A keep-alive connection opened before the reload.
    before = http.client.HTTPSConnection("127.0.0.1", server.port, context=context(), timeout=10)
    assert https_get(server.port, conn=before)[0] == 200
    assert "CN = localhost" in peer_subject(server.port, "-servername", "localhost")

    shutil.copy(CERTS / "other.test.pem", cert)
    shutil.copy(CERTS / "other.test.key", key)
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reloaded TLS certificates \(other\.test")
    # A new connection gets the new certificate, whatever name it asks for.
    assert "CN = other.test" in peer_subject(server.port, "-servername", "localhost")
    # The connection from before still works, on the certificate it agreed on.
    for _ in range(2):
        assert https_get(server.port, conn=before)[:3:2] == (200, b"Hello, World!\n")
    assert dict(x[0] for x in before.sock.getpeercert()["subject"])["commonName"] == "localhost"
    before.close()

    # A broken file: an error line, and the current certificate stays.
    cert.write_text("not a certificate\n")
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"cannot reload the TLS certificates: --tls: .*live\.pem")
    assert "CN = other.test" in peer_subject(server.port, "-servername", "other.test")
    code, out = curl("--resolve", f"other.test:{server.port}:127.0.0.1",
                     f"https://other.test:{server.port}/")
    assert code == 0 and out == "Hello, World!\n", out
    # A key that no longer matches: the same.
    shutil.copy(CERTS / "localhost.pem", cert)
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"cannot reload the TLS certificates: .*does not match")
    assert "CN = other.test" in peer_subject(server.port, "-servername", "localhost")
    assert server.proc.poll() is None
    assert "Front tier" not in server.log, server.log  # nothing was restarted


def test_a_restarted_front_tier_serves_tls_again(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, workers=1)
    assert https_get(server.port)[0] == 200
    front = int(re.search(r"Booting front tier with pid: (\d+)", server.log).group(1))
    os.kill(front, signal.SIGKILL)
    server.wait_for_log(r"Booting front tier with pid: ", count=2)
    deadline = time.monotonic() + 10
    while True:
        try:
            status, _, body = https_get(server.port)
            break
        except OSError:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
    assert (status, body) == (200, b"Hello, World!\n")


def test_sighup_without_tls_keeps_serving(serve):
    server = serve("basic:hello", workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"Hello, World!\n"
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reload done")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"Hello, World!\n"
    assert "Front tier" not in server.log, server.log  # it was not restarted


# -- handshake hygiene --------------------------------------------------------------


HTTPS_REQUIRED = b"The plain HTTP request was sent to HTTPS port"


def assert_https_required(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert b"\r\nContent-Type: text/html" in head, answer
    assert b"\r\nConnection: close" in head, answer
    assert f"\r\nContent-Length: {len(body)}".encode() in head, answer
    assert HTTPS_REQUIRED in body, answer


def test_plain_http_on_the_tls_port_gets_a_400_saying_https_is_required(serve, tmp_path):
    """Issue 13, item 14: as nginx, not a TLS alert (curl: "Received HTTP/0.9")."""
    sock_path = tmp_path / "tls.sock"
    server = serve("basic:hello", "--tls", LOCALHOST, "-b", f"unix:{sock_path}", workers=1)
    code, out = curl("-w", "\n%{http_code}", f"http://127.0.0.1:{server.port}/")
    assert code == 0, out
    assert out.endswith("\n400"), out
    assert HTTPS_REQUIRED.decode() in out, out
    # The same on a Unix socket served with TLS.
    code, out = curl("-w", "\n%{http_code}", "--unix-socket", str(sock_path), "http://localhost/")
    assert code == 0 and out.endswith("\n400") and HTTPS_REQUIRED.decode() in out, out
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert_https_required(read_until_closed(sock))
    # A body the answer does not wait for does not reset the answer away.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n"
                     + b"x" * 40000)
        assert_https_required(read_until_closed(sock))
    # HTTPS is untouched, HTTP/1.1 and HTTP/2.
    url = f"https://localhost:{server.port}/"
    resolve = f"localhost:{server.port}:127.0.0.1"
    for flag, version in (("--http1.1", "1.1"), ("--http2", "2")):
        code, out = curl(flag, "--resolve", resolve, "-w", "\n%{http_version}", url)
        assert (code, out) == (0, f"Hello, World!\n\n{version}"), out
    time.sleep(0.3)  # deliberate: a line about it, were there one, would be out by then
    assert "handshake" not in server.log.lower(), server.log


def test_a_plain_http_client_that_stalls_is_closed_after_the_header_timeout(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, "--header-timeout", "1.5", workers=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # the head never ends
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        waited = time.monotonic() - started
    assert 1.0 < waited < 5, waited


def test_a_silent_client_is_dropped_after_the_header_timeout(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, "--header-timeout", "1.5", workers=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        assert https_get(server.port)[0] == 200  # the front tier is up and accepting
        started = time.monotonic()
        assert sock.recv(1) == b""
        waited = time.monotonic() - started
    assert 1.0 < waited < 5, waited


def test_a_client_silent_after_the_handshake_is_dropped_too(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, "--header-timeout", "1.5", workers=1)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    with context().wrap_socket(raw, server_hostname="localhost") as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
        waited = time.monotonic() - started
    assert 1.0 < waited < 5, waited


# -- the HTTP/1 guard over TLS ------------------------------------------------------


def tls_exchange(port: int, request: bytes) -> bytes:
    """Sends raw bytes over TLS (ALPN http/1.1) and reads until the server closes."""
    ctx = context()
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        sock.sendall(request)
        return read_until_closed(sock)


def test_guard_refuses_smuggling_over_tls(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, workers=1)
    answer = tls_exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert b"Hello, World!" not in answer, answer
    # A well-formed request on the same kind of connection is served.
    answer = tls_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b"Hello, World!\n"), answer


def test_guard_limits_apply_over_tls(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, "--limit-request-line", "100", workers=1)
    answer = tls_exchange(server.port, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414 "), answer


def test_limits_apply_to_http2_over_tls(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, "--limit-request-field-size", "200",
                   workers=1)
    with httpx.Client(http2=True, verify=context(), timeout=10) as client:
        ok = client.get(f"https://127.0.0.1:{server.port}/", headers={"x-small": "a" * 50})
        big = client.get(f"https://127.0.0.1:{server.port}/", headers={"x-big": "a" * 400})
    assert (ok.http_version, ok.status_code) == ("HTTP/2", 200)
    assert (big.http_version, big.status_code) == ("HTTP/2", 431)


# -- HSTS ---------------------------------------------------------------------------


def test_hsts_header_on_tls_responses(serve):
    server = serve("basic:hello", "--tls", LOCALHOST, "--hsts", "31536000", workers=1)
    _, headers, _ = https_get(server.port)
    assert headers.get("strict-transport-security") == "max-age=31536000", headers
    with httpx.Client(http2=True, verify=context(), timeout=10) as client:
        resp = client.get(f"https://127.0.0.1:{server.port}/")
    assert resp.http_version == "HTTP/2"
    assert resp.headers["strict-transport-security"] == "max-age=31536000"


def test_hsts_leaves_the_apps_own_header_and_is_off_by_default(serve):
    server = serve("tls_apps:own_hsts", "--tls", LOCALHOST, "--hsts", "60", workers=1)
    _, headers, _ = https_get(server.port)
    assert headers.get("strict-transport-security") == "max-age=1; includeSubDomains"
    plain = serve("basic:hello", "--tls", LOCALHOST, workers=1)
    _, headers, _ = https_get(plain.port)
    assert "strict-transport-security" not in headers, headers


def test_static_files_over_tls_get_hsts_too(serve, tmp_path):
    (tmp_path / "hello.txt").write_text("static hello\n")
    server = serve("basic:hello", "--tls", LOCALHOST, "--hsts", "600",
                   "--static", f"/assets={tmp_path}", workers=1)
    status, headers, body = https_get(server.port, "/assets/hello.txt")
    assert (status, body) == (200, b"static hello\n")
    assert headers.get("strict-transport-security") == "max-age=600", headers


# -- --redirect-http ----------------------------------------------------------------


def test_redirect_http_answers_308_to_the_https_url(serve):
    redirect = free_port()
    server = serve("basic:hello", "--tls", LOCALHOST, "--redirect-http", f"127.0.0.1:{redirect}",
                   workers=1)
    server.wait_for_log(re.escape(f"Listening at: http://127.0.0.1:{redirect}"))
    for method in ("GET", "POST"):
        conn = http.client.HTTPConnection("127.0.0.1", redirect, timeout=10)
        conn.request(method, "/some/path?x=1&y=%20", body=b"data" if method == "POST" else None,
                     headers={"Host": f"example.com:{redirect}"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 308
        assert resp.getheader("Location") == \
            f"https://example.com:{server.port}/some/path?x=1&y=%20"
        assert resp.getheader("Strict-Transport-Security") is None
        conn.close()
    # A client that follows it lands on the application.
    code, out = curl("-L", "--resolve", f"localhost:{redirect}:127.0.0.1",
                     "--resolve", f"localhost:{server.port}:127.0.0.1",
                     "-w", "\n%{http_code} %{url_effective}", f"http://localhost:{redirect}/hi")
    assert code == 0, out
    assert out == f"Hello, World!\n\n200 https://localhost:{server.port}/hi", out


def test_redirect_http_bad_address_is_named():
    code, out = run("serve", "--tls", LOCALHOST, "--redirect-http", "127.0.0.1:notaport",
                    "basic:hello")
    assert code == 2, out
    assert "--redirect-http" in out and "notaport" in out, out


def test_redirect_http_without_a_usable_host_is_400(serve):
    redirect = free_port()
    serve("basic:hello", "--tls", LOCALHOST, "--redirect-http", f"127.0.0.1:{redirect}",
          workers=1)
    for head in (b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: user@evil.example\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", redirect), timeout=10) as sock:
            sock.sendall(head)
            answer = sock.recv(65536)
        assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 ")), (head, answer)
        assert b"location" not in answer.lower(), answer
