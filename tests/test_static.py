"""Static files (--static), internal redirects (X-Accel-Redirect, X-Sendfile), served by
the front tier from the files in static-test/."""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import http.client
import os
import subprocess
import sys
import time
from pathlib import Path

import brotli
import pytest
import zstandard

from conftest import BINARY, ROOT, Server
from rawhttp import request as raw

FILES = ROOT / "static-test"
PUBLIC = FILES / "public"
PRIVATE = FILES / "private"
SECRET = b"top secret"


@pytest.fixture(scope="module")
def site():
    """One server for the read-only cases: two static mounts (the shorter given first,
    so that order cannot decide), an internal one, and an app that counts its calls."""
    server = Server("static_apps:redirecting",
                    "--static", f"/assets={PUBLIC}",
                    "--static", f"/assets/deep={PUBLIC / 'longer'}",
                    "--internal", f"/protected={PRIVATE}",
                    "--static-max-age", "3600",
                    workers=1)
    yield server
    server.stop()


def get(server, path, headers=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def app_calls(server) -> int:
    resp, body = get(server, "/count")
    assert resp.status == 200
    return int(body)


# -- plain files -----------------------------------------------------------------------

@pytest.mark.parametrize("name, content_type", [
    ("hello.txt", "text/plain; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
    ("app.js", "javascript"),
    ("data.json", "application/json"),
    ("pixel.png", "image/png"),
    ("blob.bin", "application/octet-stream"),
])
def test_file_and_content_type(site, name, content_type):
    resp, body = get(site, f"/assets/{name}")
    assert resp.status == 200
    assert body == (PUBLIC / name).read_bytes()
    assert content_type in resp.getheader("Content-Type")
    assert resp.getheader("Content-Length") == str(len(body))
    assert resp.getheader("Accept-Ranges") == "bytes"


def test_validators_and_conditional_304(site):
    resp, _ = get(site, "/assets/hello.txt")
    etag, modified = resp.getheader("ETag"), resp.getheader("Last-Modified")
    assert etag.startswith('"') and etag.endswith('"')
    mtime = os.stat(PUBLIC / "hello.txt").st_mtime
    assert modified == time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(mtime))

    for headers in ({"If-None-Match": etag}, {"If-None-Match": f'"x", W/{etag}'},
                    {"If-None-Match": "*"}, {"If-Modified-Since": modified}):
        resp, body = get(site, "/assets/hello.txt", headers)
        assert resp.status == 304, headers
        assert body == b""
        assert resp.getheader("ETag") == etag
        assert resp.getheader("Cache-Control") == "public, max-age=3600"

    long_ago = "Mon, 01 Jan 2001 00:00:00 GMT"
    for headers in ({"If-None-Match": '"other"'}, {"If-Modified-Since": long_ago},
                    # If-None-Match present: If-Modified-Since is not looked at.
                    {"If-None-Match": '"other"', "If-Modified-Since": modified}):
        resp, body = get(site, "/assets/hello.txt", headers)
        assert resp.status == 200, headers
        assert body == (PUBLIC / "hello.txt").read_bytes()

    resp, _ = get(site, "/assets/hello.txt", {"If-Match": '"other"'})
    assert resp.status == 412
    resp, _ = get(site, "/assets/hello.txt", {"If-Unmodified-Since": long_ago})
    assert resp.status == 412
    resp, _ = get(site, "/assets/hello.txt", {"If-Match": etag})
    assert resp.status == 200


def test_a_changed_file_gets_a_new_etag(serve, tmp_path):
    (tmp_path / "f.txt").write_text("one")
    server = serve("static_apps:counting", "--static", f"/s={tmp_path}", workers=1)
    first, _ = get(server, "/s/f.txt")
    (tmp_path / "f.txt").write_text("two!")
    resp, body = get(server, "/s/f.txt", {"If-None-Match": first.getheader("ETag")})
    assert resp.status == 200 and body == b"two!"
    assert resp.getheader("ETag") != first.getheader("ETag")


def test_a_changed_index_page_is_served_fresh_at_once(serve, tmp_path):
    # Index pages are kept in memory like small files; each answer checks the
    # index.html itself, not its directory.
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.html").write_text("one")
    server = serve("static_apps:counting", "--static", f"/s={tmp_path}", workers=1)
    for _ in range(3):
        resp, body = get(server, "/s/docs/")
        assert resp.status == 200 and body == b"one"
    (tmp_path / "docs" / "index.html").write_text("two!")
    resp, body = get(server, "/s/docs/")
    assert resp.status == 200 and body == b"two!"
    (tmp_path / "docs" / "index.html").unlink()
    resp, _ = get(server, "/s/docs/")
    assert resp.status == 404


def test_precompressed_sibling_added_or_removed_is_seen_within_a_second(serve, tmp_path):
    (tmp_path / "f.txt").write_text("plain text " * 20)
    server = serve("static_apps:counting", "--static", f"/s={tmp_path}", workers=1)
    accept = {"Accept-Encoding": "gzip"}
    resp, body = get(server, "/s/f.txt", accept)
    assert resp.getheader("Content-Encoding") is None and body.startswith(b"plain text")
    (tmp_path / "f.txt.gz").write_bytes(gzip.compress(b"from the sibling"))
    time.sleep(1.2)  # the scenario: past the second the test allows
    resp, body = get(server, "/s/f.txt", accept)
    assert resp.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(body) == b"from the sibling"
    (tmp_path / "f.txt.gz").unlink()
    resp, body = get(server, "/s/f.txt", accept)  # at once: a vanished sibling is not sent
    assert resp.status == 200 and resp.getheader("Content-Encoding") is None
    assert body.startswith(b"plain text")


def test_swapped_current_symlink_is_followed_within_a_second(serve, tmp_path):
    """Deploys swap `current -> release-N`: the new release is served without a restart."""
    for release in ("r1", "r2"):
        (tmp_path / release).mkdir()
        (tmp_path / release / "v.txt").write_text(release)
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "r1")
    server = serve("static_apps:counting", "--static", f"/s={current}", workers=1)
    assert get(server, "/s/v.txt")[1] == b"r1"
    swapped = tmp_path / "current.new"
    swapped.symlink_to(tmp_path / "r2")
    swapped.replace(current)
    time.sleep(1.2)  # the scenario: past the second a swapped root may take
    assert get(server, "/s/v.txt")[1] == b"r2"


def test_busy_keep_alive_connection_outlives_the_keep_alive_timeout(serve, tmp_path):
    """The keep-alive timeout counts idle time only: a connection kept busy with fast
    answers (static files answer before the next read) is not closed under it."""
    (tmp_path / "f.txt").write_text("x" * 100)
    server = serve("static_apps:counting", "--static", f"/s={tmp_path}", "--keep-alive", "1",
                   workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.connect()
    first_socket = conn.sock
    deadline = time.monotonic() + 2.5
    count = 0
    try:
        while time.monotonic() < deadline:
            conn.request("GET", "/s/f.txt")
            response = conn.getresponse()
            assert response.status == 200 and response.read() == b"x" * 100
            assert conn.sock is first_socket, f"reconnected after {count} requests"
            count += 1
            time.sleep(0.01)
    finally:
        conn.close()
    assert count > 50


def test_cache_control_only_when_asked(serve):
    resp, _ = get(serve("static_apps:counting", "--static", f"/a={PUBLIC}", workers=1),
                  "/a/hello.txt")
    assert resp.status == 200
    assert resp.getheader("Cache-Control") is None


def test_head(site):
    resp, body = get(site, "/assets/data.json", method="HEAD")
    assert resp.status == 200
    assert body == b""
    assert resp.getheader("Content-Length") == str((PUBLIC / "data.json").stat().st_size)
    assert resp.getheader("ETag")
    # A Range is defined for GET only: HEAD answers as for the whole file.
    resp, body = get(site, "/assets/digits.txt", {"Range": "bytes=0-9"}, method="HEAD")
    assert resp.status == 200 and body == b""
    assert resp.getheader("Content-Length") == "100"
    resp, body = get(site, "/assets/missing.txt", method="HEAD")
    assert resp.status == 404 and body == b""


def test_other_methods_refused(site):
    before = app_calls(site)
    resp, _ = get(site, "/assets/hello.txt", method="POST")
    assert resp.status == 405
    assert resp.getheader("Allow") == "GET, HEAD"
    assert app_calls(site) == before + 1


# -- ranges ----------------------------------------------------------------------------

DIGITS = (PUBLIC / "digits.txt").read_bytes()


@pytest.mark.parametrize("spec, start, end", [
    ("bytes=10-19", 10, 19), ("bytes=-5", 95, 99), ("bytes=95-", 95, 99),
    ("bytes=90-1000", 90, 99), ("bytes=0-0", 0, 0),
])
def test_single_range(site, spec, start, end):
    resp, body = get(site, "/assets/digits.txt", {"Range": spec})
    assert resp.status == 206
    assert resp.getheader("Content-Range") == f"bytes {start}-{end}/100"
    assert body == DIGITS[start:end + 1]
    assert resp.getheader("Content-Length") == str(end - start + 1)


@pytest.mark.parametrize("spec", ["bytes=100-", "bytes=500-600", "bytes=-0"])
def test_unsatisfiable_range(site, spec):
    resp, _ = get(site, "/assets/digits.txt", {"Range": spec})
    assert resp.status == 416
    assert resp.getheader("Content-Range") == "bytes */100"


@pytest.mark.parametrize("spec", ["bytes=5-1", "bytes=abc", "lines=1-2",
                                  "bytes=" + ",".join(f"{i}-{i}" for i in range(40))])
def test_ignored_range_sends_whole_file(site, spec):
    resp, body = get(site, "/assets/digits.txt", {"Range": spec})
    assert resp.status == 200
    assert body == DIGITS


def test_multiple_ranges_are_multipart(site):
    resp, body = get(site, "/assets/digits.txt", {"Range": "bytes=50-54, 0-4"})
    assert resp.status == 206
    ctype = resp.getheader("Content-Type")
    assert ctype.startswith("multipart/byteranges; boundary=")
    assert resp.getheader("Content-Length") == str(len(body))
    boundary = ctype.split("boundary=")[1]
    assert body == (f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    f"Content-Range: bytes 0-4/100\r\n\r\n01234\r\n"
                    f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    f"Content-Range: bytes 50-54/100\r\n\r\n01234\r\n"
                    f"--{boundary}--\r\n").encode()
    # A standard MIME parser reads it back.
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    parts = [(p["Content-Range"], p.get_content_type(), p.get_payload(decode=True))
             for p in message.iter_parts()]
    assert parts == [("bytes 0-4/100", "text/plain", DIGITS[0:5]),
                     ("bytes 50-54/100", "text/plain", DIGITS[50:55])]


def test_overlapping_ranges_are_merged(site):
    resp, body = get(site, "/assets/digits.txt", {"Range": "bytes=0-50, 10-20, 40-60"})
    assert resp.status == 206
    assert resp.getheader("Content-Range") == "bytes 0-60/100"
    assert body == DIGITS[:61]
    # Thirty times the whole file costs no more than once.
    resp, body = get(site, "/assets/digits.txt", {"Range": "bytes=" + ",".join(["0-99"] * 30)})
    assert resp.status == 206
    assert resp.getheader("Content-Range") == "bytes 0-99/100"
    assert body == DIGITS


def test_if_range(site):
    resp, _ = get(site, "/assets/digits.txt")
    etag = resp.getheader("ETag")
    resp, body = get(site, "/assets/digits.txt", {"Range": "bytes=0-1", "If-Range": etag})
    assert resp.status == 206 and body == b"01"
    resp, body = get(site, "/assets/digits.txt", {"Range": "bytes=0-1", "If-Range": '"old"'})
    assert resp.status == 200 and body == DIGITS


# -- precompressed siblings ------------------------------------------------------------

APP_JS = (PUBLIC / "app.js").read_bytes()


@pytest.mark.parametrize("accept, coding, suffix", [
    ("br", "br", ".br"), ("zstd", "zstd", ".zst"), ("gzip", "gzip", ".gz"),
    ("gzip, deflate, br, zstd", "br", ".br"),
    ("gzip;q=1, br;q=0.5", "gzip", ".gz"),
    ("br;q=0, zstd;q=0.8, gzip;q=0.7", "zstd", ".zst"),
])
def test_precompressed_sibling_chosen(site, accept, coding, suffix):
    resp, body = get(site, "/assets/app.js", {"Accept-Encoding": accept})
    assert resp.status == 200
    assert resp.getheader("Content-Encoding") == coding
    assert "Accept-Encoding" in resp.getheader("Vary")
    assert body == (PUBLIC / f"app.js{suffix}").read_bytes()
    assert resp.getheader("Content-Length") == str(len(body))
    assert "javascript" in resp.getheader("Content-Type")
    decoded = {"br": brotli.decompress, "gzip": gzip.decompress,
               "zstd": zstandard.ZstdDecompressor().decompress}[coding](body)
    assert decoded == APP_JS


def test_identity_when_no_sibling_fits(site):
    for headers in ({}, {"Accept-Encoding": "identity"}, {"Accept-Encoding": "deflate"}):
        resp, body = get(site, "/assets/app.js", headers)
        assert resp.getheader("Content-Encoding") is None
        assert body == APP_JS
        assert "Accept-Encoding" in resp.getheader("Vary")
    # data.json has only a .gz sibling.
    resp, body = get(site, "/assets/data.json", {"Accept-Encoding": "br"})
    assert resp.getheader("Content-Encoding") is None
    assert "Accept-Encoding" in resp.getheader("Vary")
    resp, body = get(site, "/assets/data.json", {"Accept-Encoding": "br, gzip"})
    assert resp.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(body) == (PUBLIC / "data.json").read_bytes()
    # No sibling at all: the answer does not vary.
    resp, _ = get(site, "/assets/hello.txt", {"Accept-Encoding": "gzip"})
    assert resp.getheader("Vary") is None


def test_variants_have_their_own_etags_and_ranges_use_identity(site):
    br, _ = get(site, "/assets/app.js", {"Accept-Encoding": "br"})
    plain, _ = get(site, "/assets/app.js")
    assert br.getheader("ETag") != plain.getheader("ETag")
    resp, _ = get(site, "/assets/app.js", {"Accept-Encoding": "br",
                                            "If-None-Match": br.getheader("ETag")})
    assert resp.status == 304
    resp, body = get(site, "/assets/app.js", {"Accept-Encoding": "br", "Range": "bytes=0-5"})
    assert resp.status == 206 and resp.getheader("Content-Encoding") is None
    assert body == APP_JS[:6]


# -- directories -----------------------------------------------------------------------

def test_index_html(site):
    resp, body = get(site, "/assets/sub/")
    assert resp.status == 200
    assert body == (PUBLIC / "sub" / "index.html").read_bytes()
    assert resp.getheader("Content-Type") == "text/html; charset=utf-8"
    resp, _ = get(site, "/assets/sub?x=1")
    assert resp.status == 301
    assert resp.getheader("Location") == "/assets/sub/?x=1"


@pytest.mark.parametrize("path", ["/assets/docs/", "/assets/docs", "/assets/", "/assets",
                                  "/assets/sub/index.html/"])
def test_no_directory_listing(site, path):
    resp, body = get(site, path)
    assert resp.status == 404
    assert b"readme.txt" not in body and b"hello.txt" not in body


# -- refusals ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/assets/../secret.txt",
    "/assets/%2e%2e/secret.txt",
    "/assets/%2E%2E/secret.txt",
    "/assets/..%2fsecret.txt",
    "/assets/..%2Fsecret.txt",
    "/assets/%2e%2e%2fsecret.txt",
    "/assets/.%2e/secret.txt",
    "/assets/sub/../../secret.txt",
    "/assets/sub/%2e%2e/%2e%2e/secret.txt",
    "/assets/%252e%252e/secret.txt",
    "/assets/%00",
    "/assets/hello.txt%00",
    "/assets/hello.txt%00.png",
    "/assets/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/assets/..%5csecret.txt",
])
def test_traversal_refused(site, path):
    before = app_calls(site)
    resp = raw(site.port, "GET", path)
    assert resp.status in (400, 404), (path, resp.status)
    assert SECRET not in resp.body and b"root:" not in resp.body
    assert app_calls(site) == before + 1  # only the /count call reached the app


def test_symlink_escape_refused(serve, tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (root / "ok.txt").write_text("inside")
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "leakdir").symlink_to(outside)
    (root / "alias.txt").symlink_to(root / "ok.txt")  # stays inside: allowed
    (root / "ok.txt.gz").symlink_to(outside / "secret.txt")  # an escaping sibling
    server = serve("static_apps:counting", "--static", f"/s={root}", workers=1)
    for path in ("/s/leak.txt", "/s/leakdir/secret.txt", "/s/leakdir/"):
        resp = raw(server.port, "GET", path)
        assert resp.status == 404, path
        assert SECRET not in resp.body
    resp = raw(server.port, "GET", "/s/alias.txt")
    assert (resp.status, resp.body) == (200, b"inside")
    resp = raw(server.port, "GET", "/s/ok.txt", {"Accept-Encoding": "gzip"})
    assert (resp.status, resp.body) == (200, b"inside")
    assert resp.header("Content-Encoding") is None


# Swaps two names in one step with renameat2(2)'s RENAME_EXCHANGE, as fast as Python can,
# until the deadline (argv[3], seconds) or until it is stopped.
SWAPPER = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
a, b = sys.argv[1].encode(), sys.argv[2].encode()
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    for _ in range(100):
        if libc.renameat2(-100, a, -100, b, 2) != 0:
            sys.exit("renameat2: errno %d" % ctypes.get_errno())
"""


def test_directory_swapped_for_an_escaping_symlink_never_leaks(serve, tmp_path):
    """Issue 13, item 12: a directory inside the root swapped with a symlink to an
    outside directory, over and over, between the lookup's check and its open."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "inside").mkdir(parents=True)
    outside.mkdir()
    (root / "inside" / "page.txt").write_bytes(b"inside")
    (outside / "page.txt").write_bytes(SECRET)
    # Absolute, so that the lookup's symlink check runs on every swapped request.
    (root / "swap").symlink_to(outside)
    server = serve("static_apps:counting", "--static", f"/s={root}", workers=1)
    # Two swappers, so that the name can change twice between a check and an open.
    swappers = [subprocess.Popen([sys.executable, "-c", SWAPPER, str(root / "inside"),
                                  str(root / "swap"), "30"]) for _ in range(2)]
    answers: dict[tuple[int, bytes], int] = {}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(3000):
            conn.request("GET", "/s/inside/page.txt")
            resp = conn.getresponse()
            body = resp.read()
            key = (resp.status, body if resp.status == 200 else b"")
            answers[key] = answers.get(key, 0) + 1
    finally:
        conn.close()
        early = [swapper.poll() for swapper in swappers]
        for swapper in swappers:
            swapper.kill()
            swapper.wait()
    assert early == [None, None], "a swapper stopped before the requests did"
    assert not any(SECRET in body for _, body in answers), answers
    # Only the inside file or "not found" (while the name is the symlink).
    assert set(answers) <= {(200, b"inside"), (404, b"")}, answers
    assert answers.get((200, b"inside"), 0) > 300, answers


# -- mounts ------------------------------------------------------------------------------

def test_longest_prefix_wins(site):
    resp, body = get(site, "/assets/deep/which.txt")
    assert (resp.status, body) == (200, b"longer prefix\n")
    resp, body = get(site, "/assets/which.txt")
    assert (resp.status, body) == (200, b"shorter prefix\n")


def test_prefix_matches_whole_segments_and_app_never_sees_static(site):
    before = app_calls(site)
    for path in ("/assets/hello.txt", "/assets/missing", "/assets/sub/", "/assets/deep/which.txt",
                 "/assets/%2e%2e/secret.txt"):
        get(site, path)
    get(site, "/assets/hello.txt", method="HEAD")
    assert app_calls(site) == before + 1
    resp, body = get(site, "/assetsfoo/hello.txt")
    assert (resp.status, body) == (200, b"app saw /assetsfoo/hello.txt")
    # An --internal prefix is not served to clients: the request is the app's.
    resp, body = get(site, "/protected/report.txt")
    assert (resp.status, body) == (200, b"app saw /protected/report.txt")


def test_http2_and_curl(site):
    out = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-D", "-", "-H", "Range: bytes=3-5",
         "--max-time", "10", f"{site.url}/assets/digits.txt"],
        capture_output=True, timeout=20, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 206")
    assert b"content-range: bytes 3-5/100" in head.lower()
    assert body == b"345"


@pytest.mark.parametrize("flag, value, message", [
    ("--static", "/x=/no/such/dir", "/no/such/dir is not a directory"),
    ("--internal", "/x=/no/such/dir", "/no/such/dir is not a directory"),
    ("--static", "nodir", "URL_PREFIX=DIR"),
    ("--static", f"x={PUBLIC}", "must start with '/'"),
])
def test_bad_mount_is_one_clear_error(flag, value, message):
    result = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0", flag, value,
                             "static_apps:counting"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert flag in lines[0] and message in lines[0]


# -- internal redirects ------------------------------------------------------------------

REPORT = (PRIVATE / "report.txt").read_bytes()


def test_x_accel_redirect(site):
    resp, body = get(site, "/accel?to=/protected/report.txt")
    assert resp.status == 200
    assert body == REPORT
    assert resp.getheader("Content-Length") == str(len(REPORT))
    assert resp.getheader("X-Accel-Redirect") is None
    assert resp.getheader("Content-Disposition") == 'attachment; filename="report.txt"'
    assert resp.getheader("Cache-Control") == "private, max-age=60"
    assert resp.getheader("Set-Cookie") == "seen=1"
    assert resp.getheader("X-App") == "kept"
    assert resp.getheader("Content-Type") == "text/plain; charset=utf-8"
    assert resp.getheader("ETag") and resp.getheader("Last-Modified")
    # The app's Content-Type is kept, as nginx keeps it.
    resp, body = get(site, "/accel?to=/protected/report.txt&type=application/x-report")
    assert resp.getheader("Content-Type") == "application/x-report" and body == REPORT
    # A --static prefix is a valid target too.
    resp, body = get(site, "/accel?to=/assets/hello.txt")
    assert (resp.status, body) == (200, (PUBLIC / "hello.txt").read_bytes())


def test_x_accel_redirect_honours_the_clients_ranges_and_conditionals(site):
    resp, body = get(site, "/accel?to=/protected/report.txt", {"Range": "bytes=0-6"})
    assert resp.status == 206 and body == b"private"
    assert resp.getheader("Content-Range") == f"bytes 0-6/{len(REPORT)}"
    resp, _ = get(site, "/accel?to=/protected/report.txt")
    resp, body = get(site, "/accel?to=/protected/report.txt",
                     {"If-None-Match": resp.getheader("ETag")})
    assert resp.status == 304 and body == b""
    resp, body = get(site, "/accel?to=/protected/report.txt", {"Accept-Encoding": "gzip"})
    assert resp.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(body) == REPORT
    resp, body = get(site, "/accel?to=/protected/report.txt", method="HEAD")
    assert resp.status == 200 and body == b""
    assert resp.getheader("Content-Length") == str(len(REPORT))


@pytest.mark.parametrize("target", [
    "/protected/../secret.txt", "/protected/%252e%252e/secret.txt", "/protected/missing.txt",
    "/elsewhere/report.txt", "/protectedfoo/report.txt", "relative.txt",
    "/protected/",
])
def test_x_accel_redirect_refused(site, target):
    resp, body = get(site, f"/accel?to={target}")
    assert resp.status == 404
    assert b"never reach the client" not in body and SECRET not in body
    assert resp.getheader("X-Accel-Redirect") is None


def test_x_sendfile(site):
    resp, body = get(site, f"/sendfile?path={PRIVATE / 'report.txt'}")
    assert (resp.status, body) == (200, REPORT)
    assert resp.getheader("X-Sendfile") is None
    assert resp.getheader("Content-Disposition") == 'attachment; filename="report.txt"'
    resp, body = get(site, f"/sendfile?path={PUBLIC / 'digits.txt'}", {"Range": "bytes=-3"})
    assert (resp.status, body) == (206, b"789")


@pytest.mark.parametrize("path", [
    str(FILES / "secret.txt"),
    str(PRIVATE / ".." / "secret.txt"),
    "private/report.txt",
    "/etc/passwd",
    str(PRIVATE),
])
def test_x_sendfile_refused_outside_roots(site, path):
    resp, body = get(site, f"/sendfile?path={path}")
    assert resp.status == 404
    assert SECRET not in body and b"root:" not in body
    assert b"never reach the client" not in body


def test_x_sendfile_symlink_out_of_root_refused(serve, tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    server = serve("static_apps:redirecting", "--internal", f"/p={root}", workers=1)
    resp, body = get(server, f"/sendfile?path={root / 'link.txt'}")
    assert resp.status == 404 and SECRET not in body
    resp, body = get(server, "/accel?to=/p/link.txt")
    assert resp.status == 404 and SECRET not in body


def test_headers_pass_through_without_file_directories(serve):
    # Without --static or --internal rwsgi leaves the headers to a proxy in front.
    server = serve("static_apps:redirecting", workers=1)
    resp, body = get(server, "/accel?to=/protected/report.txt")
    assert resp.getheader("X-Accel-Redirect") == "/protected/report.txt"
    assert body == b"the app's own body, which must never reach the client"


def test_worker_freed_after_internal_redirect(site):
    # The app's body never ends; with one worker, the next request is answered only
    # if the front tier let go of that body and the worker stopped.
    for _ in range(3):
        resp, body = get(site, "/accel-forever?to=/protected/report.txt")
        assert (resp.status, body) == (200, REPORT)
        started = time.monotonic()
        assert app_calls(site) > 0
        assert time.monotonic() - started < 5
