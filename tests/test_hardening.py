"""Regression tests for issue 13 (found by real clients and an attack run): bodies that
lost data on the way to or from the app, the request's authority against its Host,
HTTP/2 heads HTTP/1.1 refuses, 204/304 framing, oversized response heads, and a stop of
the whole process group that must not be logged as an error."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import httpx

from conftest import Server, children_of

TIMEOUT = 10


def h2_client() -> httpx.Client:
    """HTTP/2 with prior knowledge (h2c), as curl --http2-prior-knowledge."""
    return httpx.Client(http1=False, http2=True, timeout=TIMEOUT)


# -- item 1: write() then a list ------------------------------------------------------

def test_write_then_a_list_sends_both_over_http1(serve):
    """Issue 13 item 1: the list after write() was lost (a Content-Length counting only
    the list was declared after the head went out chunked)."""
    server = serve("hardening_apps:write_then_list", workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    for _ in range(2):  # and the keep-alive connection stays usable after it
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b"via-write;via-iter"
    conn.close()


def test_write_then_a_list_sends_both_over_http2(serve):
    server = serve("hardening_apps:write_then_list", workers=1)
    with h2_client() as client:
        response = client.get(f"{server.url}/")
    assert response.http_version == "HTTP/2"
    assert response.content == b"via-write;via-iter"


# -- item 2: bodies without a Content-Length ------------------------------------------

def test_chunked_body_reaches_the_app_with_its_length(serve):
    """Issue 13 item 2: the whole body is buffered first, so the app gets CONTENT_LENGTH
    and no Transfer-Encoding (as behind nginx); it reads the body by that length."""
    server = serve("hardening_apps:seen", workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    body = [b"name=rwsgi&", b"csrf=token-", b"x" * 70000]
    conn.request("POST", "/", body=iter(body), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked", "Content-Type": "text/plain"})
    response = conn.getresponse()
    seen = json.loads(response.read())
    assert response.status == 200
    assert seen["transfer_encoding"] is None
    assert seen["content_length"] == str(sum(map(len, body)))
    assert seen["body"] == b"".join(body).decode()
    conn.close()


def test_empty_chunked_body_has_length_zero(serve):
    server = serve("hardening_apps:seen", workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("POST", "/", body=iter([]), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    seen = json.loads(conn.getresponse().read())
    assert seen["content_length"] == "0" and seen["transfer_encoding"] is None
    conn.close()


def test_chunked_body_spooled_to_disk_has_its_length(serve):
    """A body past the in-memory threshold goes through a temporary file: same rule."""
    server = serve("hardening_apps:seen", workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    body = [bytes([65 + i % 26]) * 65536 for i in range(40)]  # 2.5 MiB
    conn.request("POST", "/", body=iter(body), encode_chunked=True)
    seen = json.loads(conn.getresponse().read())
    assert seen["content_length"] == str(40 * 65536)
    assert seen["body"].encode() == b"".join(body)
    conn.close()


def test_http2_body_without_length_reaches_the_app_with_its_length(serve):
    """An HTTP/2 request body sent without content-length (a streamed upload)."""
    server = serve("hardening_apps:seen", workers=1)

    def pieces():
        yield b"csrfmiddlewaretoken=abc&"
        yield b"username=admin"

    with h2_client() as client:
        response = client.post(f"{server.url}/", content=pieces())
    seen = response.json()
    assert response.http_version == "HTTP/2"
    assert seen["content_length"] == str(len(b"csrfmiddlewaretoken=abc&username=admin"))
    assert seen["body"] == "csrfmiddlewaretoken=abc&username=admin"
    assert seen["transfer_encoding"] is None


def test_get_without_body_gets_no_content_length(serve):
    """A request without a body is passed as it came: no CONTENT_LENGTH is made up."""
    server = serve("hardening_apps:seen", workers=1)
    with httpx.Client(timeout=TIMEOUT) as client:
        assert client.get(f"{server.url}/").json()["content_length"] is None
    with h2_client() as client:
        assert client.get(f"{server.url}/").json()["content_length"] is None


# -- item 9: the request's authority wins over Host -----------------------------------

def test_absolute_form_target_wins_over_host(serve):
    """RFC 9112 §3.2.2: the host of an absolute-form target, not the Host header."""
    server = serve("hardening_apps:seen", workers=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET http://good.test/ HTTP/1.1\r\nHost: evil.test\r\n"
                     b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert json.loads(data.partition(b"\r\n\r\n")[2])["host"] == "good.test"


def test_http2_authority_wins_over_host(serve):
    """RFC 9113 §8.3.1: `:authority`, not a host header that contradicts it."""
    server = serve("hardening_apps:seen", workers=1)
    status, body = _h2_request(server.port, [
        (":method", "GET"), (":scheme", "http"), (":authority", "good.test"), (":path", "/"),
        ("host", "evil.test")])
    assert status == 200
    assert json.loads(body)["host"] == "good.test"


# -- item 10: HTTP/2 heads that HTTP/1.1 refuses --------------------------------------

def _h2_request(port: int, headers: list[tuple[str, str]]) -> tuple[int | str, bytes]:
    """(status, body) of one HTTP/2 request sent unchecked by the client library; the
    status is "reset" or "closed" when the server refused the stream or connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                       normalize_outbound_headers=False,
                                       validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=True)
    sock.sendall(conn.data_to_send())
    status: int | str = "closed"
    body = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                return status, body
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    return status, body
                elif isinstance(event, h2.events.StreamReset):
                    return "reset", body
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    raise AssertionError("no answer")


def _h2_status(port: int, headers: list[tuple[str, str]]) -> int | str:
    return _h2_request(port, headers)[0]


def test_http2_field_value_with_surrounding_whitespace_is_refused(serve):
    """RFC 9113 §8.2.1: malformed; HTTP/1.1 gets 400 for the same."""
    server = serve("hardening_apps:seen", workers=1)
    base = [(":method", "GET"), (":scheme", "http"), (":authority", "h2.test"), (":path", "/")]
    for value in (" padded", "padded ", "\tpadded"):
        status = _h2_status(server.port, [*base, ("x-test", value)])
        assert status in (400, "reset"), (value, status)
    assert _h2_status(server.port, [*base, ("x-test", "in side")]) == 200


def test_http2_asterisk_path_is_for_options_only(serve):
    server = serve("hardening_apps:seen", workers=1)
    head = [(":scheme", "http"), (":authority", "h2.test"), (":path", "*")]
    assert _h2_status(server.port, [(":method", "GET"), *head]) in (400, "reset")


# -- item 11: 204 and 304 -------------------------------------------------------------

def _raw(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\nGET /?204 HTTP/1.1\r\n"
                     "Host: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_204_has_no_content_length_and_no_body(serve):
    """RFC 9110 §8.6: no Content-Length in a 204 (one was made from the app's list), and
    the body the app returned is not sent: the pipelined response after it is intact."""
    server = serve("hardening_apps:bodyless", workers=1)
    data = _raw(server.port, "/?204")
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 204")
    assert b"content-length" not in first.lower()
    assert rest.startswith(b"HTTP/1.1 204"), rest[:100]
    with h2_client() as client:
        response = client.get(f"{server.url}/?204")
    assert response.status_code == 204
    assert "content-length" not in response.headers and response.content == b""


def test_304_sends_no_body_and_no_made_up_length(serve):
    server = serve("hardening_apps:bodyless", workers=1)
    first, _, rest = _raw(server.port, "/?304").partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 304")
    assert b"content-length: 11" not in first.lower()
    assert rest.startswith(b"HTTP/1.1 204"), rest[:100]
    # The app's own length (of the representation the 304 stands for) is kept.
    first, _, rest = _raw(server.port, "/?304-length").partition(b"\r\n\r\n")
    assert b"content-length: 1234" in first.lower()
    assert rest.startswith(b"HTTP/1.1 204"), rest[:100]


# -- item 8: an oversized response head costs its own request only -------------------

def test_oversized_response_head_is_a_500_for_that_request_only(serve):
    """Issue 13 item 8: 10,000 headers made the front tier drop the channel (502 for every
    request on the worker, and a new worker); a 1 MiB header made the worker retire."""
    server = serve("hardening_apps:many_headers", "--threads", "4", workers=1)
    with httpx.Client(timeout=TIMEOUT) as client:
        pid = client.get(f"{server.url}/ok").text
        results: dict[str, int] = {}

        def fetch(name, path):
            results[name] = client.get(f"{server.url}{path}").status_code

        threads = [threading.Thread(target=fetch, args=(n, p)) for n, p in
                   [("many", "/?count=10000"), ("big", "/?big=1048576"),
                    ("ok1", "/ok"), ("ok2", "/ok")]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert results == {"many": 500, "big": 500, "ok1": 200, "ok2": 200}
        # The same worker, not a replacement.
        assert client.get(f"{server.url}/ok").text == pid
    log = server.log
    assert "more than 1000 header fields" in log
    assert "more than 262144 bytes" in log
    assert "502" not in log and "retir" not in log.lower(), log


# -- item 15: TERM to the whole process group -----------------------------------------

def test_term_to_the_process_group_logs_no_error():
    """Issue 13 item 15: systemd (KillMode=control-group) and timeout(1) signal every
    process at once; the stop is clean and nothing above INFO is logged for it. (The
    front tier's end of a channel could close first: the workers logged that as an
    error in about one stop in three.)"""
    for attempt in range(10):
        server = Server("basic:hello", workers=2, start_new_session=True)
        try:
            stop = threading.Event()
            answered: list[int] = []

            def load():
                while not stop.is_set():
                    try:
                        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
                        for _ in range(20):
                            conn.request("GET", "/")
                            response = conn.getresponse()
                            response.read()
                            answered.append(response.status)
                        conn.close()
                    except OSError:
                        return

            threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
            for thread in threads:
                thread.start()
            # Requests must be flowing when the stop lands.
            deadline = time.monotonic() + TIMEOUT
            while len(answered) < 50 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.killpg(server.pid, signal.SIGTERM)  # the group we started, by its id
            assert server.wait(20) == 0
            stop.set()
            for thread in threads:
                thread.join(5)
        finally:
            server.stop()
        assert len(answered) >= 50 and set(answered) == {200}
        bad = [line for line in server.log.splitlines()
               if re.search(r"\[(ERROR|WARNING|CRITICAL)\]", line)]
        assert not bad, f"attempt {attempt}:\n" + "\n".join(bad)
