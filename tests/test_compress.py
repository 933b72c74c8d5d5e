"""--compress: app responses compressed by Accept-Encoding, and only when that is right."""

from __future__ import annotations

import gzip
import subprocess
import time
import zlib

import brotli
import pytest
import zstandard

from conftest import ROOT, Server
from rawhttp import Connection
from test_static import get

PUBLIC = ROOT / "static-test" / "public"


def text(size: int) -> bytes:
    return ("compress me please " * (size // 19 + 1))[:size].encode()


def decode(coding: str, body: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        return brotli.decompress(body)
    if coding == "zstd":
        # Streamed frames carry no content size: decode as a stream.
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    raise AssertionError(coding)


@pytest.fixture(scope="module")
def server():
    server = Server("static_apps:compressing", "--compress",
                    "--static", f"/assets={PUBLIC}", workers=1)
    yield server
    server.stop()


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("path, expected", [
    ("/text?size=5000", text(5000)),
    ("/text?size=300000", text(300000)),
])
def test_codings_decode_back(server, coding, path, expected):
    resp, body = get(server, path, {"Accept-Encoding": coding})
    assert resp.status == 200
    assert resp.getheader("Content-Encoding") == coding
    assert resp.getheader("Content-Length") is None
    assert "Accept-Encoding" in resp.getheader("Vary")
    assert len(body) < len(expected) / 5
    assert decode(coding, body) == expected


def test_json_and_generated_bodies(server):
    resp, body = get(server, "/json?size=5000", {"Accept-Encoding": "gzip"})
    assert resp.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(body).startswith(b'{"items": ["value"')
    resp, body = get(server, "/generated", {"Accept-Encoding": "br"})
    assert resp.getheader("Content-Encoding") == "br"
    expected = b"".join(f"<p>line {i}</p>\n".encode() for i in range(2000))
    assert brotli.decompress(body) == expected


def test_client_preference(server):
    for accept, coding in (("gzip, br, zstd", "zstd"), ("gzip;q=1, br;q=0.5", "gzip"),
                           ("*", "zstd"), ("br, zstd;q=0", "br")):
        resp, body = get(server, "/text", {"Accept-Encoding": accept})
        assert resp.getheader("Content-Encoding") == coding, accept
        assert decode(coding, body) == text(5000)


@pytest.mark.parametrize("headers", [{}, {"Accept-Encoding": "identity"},
                                     {"Accept-Encoding": "deflate"},
                                     {"Accept-Encoding": "gzip;q=0"}])
def test_identity_when_nothing_acceptable(server, headers):
    resp, body = get(server, "/text", headers)
    assert resp.getheader("Content-Encoding") is None
    assert resp.getheader("Content-Length") == "5000"
    assert body == text(5000)
    assert "Accept-Encoding" in resp.getheader("Vary")


def test_below_min_size_not_compressed(server, serve):
    resp, body = get(server, "/text?size=1000", {"Accept-Encoding": "gzip"})
    assert resp.getheader("Content-Encoding") is None
    assert body == text(1000)
    assert resp.getheader("Vary") is None
    resp, body = get(server, "/text?size=1024", {"Accept-Encoding": "gzip"})
    assert resp.getheader("Content-Encoding") == "gzip"
    small = serve("static_apps:compressing", "--compress", "--compress-min-size", "50",
                  workers=1)
    resp, body = get(small, "/text?size=100", {"Accept-Encoding": "gzip"})
    assert resp.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(body) == text(100)


@pytest.mark.parametrize("path", ["/png?size=5000", "/no-transform"])
def test_not_compressible_untouched(server, path):
    resp, body = get(server, path, {"Accept-Encoding": "gzip, br, zstd"})
    assert resp.status == 200
    assert resp.getheader("Content-Encoding") is None
    assert resp.getheader("Content-Length") == str(len(body))


def test_ranged_response_untouched(server):
    resp, body = get(server, "/partial", {"Accept-Encoding": "gzip", "Range": "bytes=0-99"})
    assert resp.status == 206
    assert resp.getheader("Content-Encoding") is None
    assert resp.getheader("Content-Range") == "bytes 0-99/5000"
    assert body == text(5000)[:100]


def test_apps_own_encoding_untouched(server):
    resp, body = get(server, "/encoded", {"Accept-Encoding": "br, zstd"})
    assert resp.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(body) == text(5000)


def test_strong_etag_becomes_weak(server):
    resp, _ = get(server, "/etag", {"Accept-Encoding": "gzip"})
    assert resp.getheader("ETag") == 'W/"v1"'
    resp, _ = get(server, "/etag")
    assert resp.getheader("ETag") == '"v1"'


def test_head_says_what_get_would(server):
    resp, body = get(server, "/text", {"Accept-Encoding": "gzip"}, method="HEAD")
    assert resp.status == 200 and body == b""
    assert resp.getheader("Content-Encoding") == "gzip"


def test_static_files_not_compressed_on_the_fly(server):
    resp, body = get(server, "/assets/hello.txt", {"Accept-Encoding": "gzip"})
    assert resp.getheader("Content-Encoding") is None
    assert body == (PUBLIC / "hello.txt").read_bytes()


def test_off_by_default(serve):
    plain = serve("static_apps:compressing", workers=1)
    resp, body = get(plain, "/text", {"Accept-Encoding": "gzip, br, zstd"})
    assert resp.getheader("Content-Encoding") is None
    assert body == text(5000)


def test_curl_decodes(server):
    for coding in ("gzip", "br", "zstd"):
        out = subprocess.run(["curl", "-sS", "--compressed", "-H", f"Accept-Encoding: {coding}",
                              "--max-time", "10", f"{server.url}/text?size=20000"],
                             capture_output=True, timeout=20, check=True).stdout
        assert out == text(20000), coding


class Incremental:
    def __init__(self, coding):
        if coding == "gzip":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self.feed = d.decompress
        elif coding == "br":
            self.feed = brotli.Decompressor().process
        else:
            self.feed = zstandard.ZstdDecompressor().decompressobj().decompress


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_streaming_still_streams(server, coding, tmp_path):
    """The app yields one chunk, then waits until the test has decoded it: only a
    compressor that flushes what it has lets the test see that chunk in time."""
    marker = tmp_path / "decoded-first-chunk"
    decoder = Incremental(coding)
    with Connection(server.port, timeout=8) as conn:
        conn.send("GET", f"/stream?marker={marker}", {"Accept-Encoding": coding})
        status, headers = conn.read_head()
        assert status == 200
        assert dict((k.lower(), v) for k, v in headers)["content-encoding"] == coding
        decoded = b""
        started = time.monotonic()
        while b"first chunk " * 10 not in decoded:
            chunk = conn.read_chunk()  # times out (fails) if the chunk is held back
            assert chunk, "body ended before the first chunk was decoded"
            decoded += decoder.feed(chunk)
        assert time.monotonic() - started < 8
        marker.touch()
        while chunk := conn.read_chunk():
            decoded += decoder.feed(chunk)
    assert decoded == b"first chunk " * 10 + b"second chunk"
