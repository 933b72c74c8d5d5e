"""-k asgi: an ASGI 3 application served by tasks on an event loop, one per request,
with lifespan once per worker (issue 17, first increment: HTTP, no WebSockets).

Real frameworks (Starlette, FastAPI) and real clients (httpx over HTTP/1.1 and h2c,
http.client, raw sockets); plain ASGI apps where the scope itself is checked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid

import httpx
import pytest

from conftest import APPS, BINARY, Server
from kit import eventually, request, wait_workers
from test_threads import at_once

pytest.importorskip("starlette")
pytest.importorskip("fastapi")

FRAMEWORKS = ["asgi_frameworks:starlette_app", "asgi_frameworks:fastapi_app"]


def client(server, http2: bool) -> httpx.Client:
    return httpx.Client(base_url=server.url, http1=not http2, http2=http2, timeout=15)


def test_plain_app_sees_the_http_scope_of_the_spec(serve):
    server = serve("asgi_plain:scope_echo", "-k", "asgi", workers=1,
                   env={"SCRIPT_NAME": "/mount/"})
    body = b"x" * (150 * 1024)  # three http.request messages of at most 64 KiB
    conn = socket.create_connection(("127.0.0.1", server.port))
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1")) as c:
        response = c.post(f"{server.url}/mount/a%20b/%C3%A9t%C3%A9?x=1&y=%20", content=body,
                          headers={"X-Mixed-Case": "Value"})
    conn.close()
    assert response.status_code == 200, response.text
    scope = response.json()
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "POST"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/mount/a b/été"
    assert scope["raw_path"] == "/mount/a%20b/%C3%A9t%C3%A9"
    assert scope["query_string"] == "x=1&y=%20"
    assert scope["root_path"] == "/mount"
    assert ["x-mixed-case", "Value"] in scope["headers"]
    assert all(name == name.lower() and not name.startswith(":")
               for name, _ in scope["headers"]), scope["headers"]
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["extensions"] == {}
    assert scope["has_state"] is True
    assert (scope["body_length"], scope["messages"]) == (len(body), 3)

    # HTTP/2 (h2c): version "2", and no pseudo-header reaches the app.
    with httpx.Client(http1=False, http2=True) as c:
        scope = c.get(f"{server.url}/h2").json()
    assert scope["http_version"] == "2"
    assert scope["messages"] == 1 and scope["body_length"] == 0
    assert not [n for n, _ in scope["headers"] if n.startswith(":")]

    # HTTP/1.0 over a raw socket.
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["http_version"] == "1.0"


def test_root_path_is_prefixed_to_a_path_a_proxy_stripped(serve):
    """--root-path as uvicorn's: the scope's path is from the site's root, so a router
    that strips root_path (Starlette's) finds its route whether the proxy in front
    stripped the prefix or not."""
    server = serve("asgi_plain:scope_echo", "-k", "asgi", "--root-path", "/api", workers=1)
    stripped = httpx.get(f"{server.url}/items/1", timeout=15).json()
    assert (stripped["root_path"], stripped["path"]) == ("/api", "/api/items/1")
    assert stripped["raw_path"] == "/items/1"
    kept = httpx.get(f"{server.url}/api/items/1", timeout=15).json()
    assert (kept["root_path"], kept["path"]) == ("/api", "/api/items/1")


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
def test_server_sent_events_reach_the_client_as_they_are_sent(serve, tmp_path, http2):
    """An event leaves when the app sends it, not when the response ends: the second
    event is only produced once the client has read the first."""
    server = serve("asgi_frameworks:starlette_app", "-k", "asgi", workers=1)
    go = tmp_path / "go"
    with client(server, http2) as c, c.stream("GET", "/events", params={"go": str(go)}) as sse:
        assert sse.status_code == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        lines = sse.iter_lines()
        first = [next(lines) for _ in range(3)]
        assert first == ["event: greeting", "data: one", ""]
        go.touch()
        assert [next(lines) for _ in range(2)] == ["data: two", ""]


def test_a_unix_socket_client_is_none(serve, tmp_path):
    path = tmp_path / "asgi.sock"
    server = serve("asgi_plain:scope_echo", "-k", "asgi", workers=1, bind=f"unix:{path}")
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport) as c:
        scope = c.get("http://localhost/u").json()
    assert scope["client"] is None
    assert scope["path"] == "/u"


@pytest.mark.parametrize("app", FRAMEWORKS)
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
def test_frameworks_json_form_upload_stream_state(serve, app, http2):
    server = serve(app, "-k", "asgi", workers=1)
    fastapi = "fastapi" in app
    with client(server, http2) as c:
        answer = c.post("/json", json={"a": [1, 2], "b": "é"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["got"] == {"a": [1, 2], "b": "é"}
        assert answer.http_version == ("HTTP/2" if http2 else "HTTP/1.1")

        upload = os.urandom(300 * 1024)  # spans several http.request messages
        answer = c.post("/upload" if fastapi else "/form", data={"name": "n1"},
                        files={"upload": ("data.bin", upload, "application/octet-stream")})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"name": "n1", "file": "data.bin", "size": len(upload)}

        with c.stream("GET", "/stream") as streamed:
            lines = list(streamed.iter_lines())
        assert lines == [f"chunk-{i}" for i in range(5)]

        answer = c.get("/state")
        assert answer.status_code == 200
        state = answer.json()["started_by"] if fastapi else answer.text
        worker = wait_workers(server, 1)[0]
        assert state == f"lifespan-{worker}"


@pytest.mark.parametrize("app", FRAMEWORKS)
def test_an_exception_in_the_app_is_a_500_with_its_traceback_logged(serve, app):
    server = serve(app, "-k", "asgi", workers=1)
    with client(server, False) as c:
        answer = c.get("/boom")
        assert answer.status_code == 500
        assert "Internal Server Error" in answer.text
        request_id = answer.headers["x-request-id"]
        # The worker serves on.
        assert c.get("/state").status_code == 200
    log = server.wait_for_log(f"request id {request_id}")
    assert "RuntimeError: boom from the" in log, log


def test_an_exception_after_a_complete_response_is_logged_and_the_response_kept(serve):
    server = serve("asgi_plain:fails_after_answering", "-k", "asgi", workers=1)
    with client(server, False) as c:
        for _ in range(2):  # the same connection serves on
            answer = c.get("/")
            assert (answer.status_code, answer.content) == (200, b"answered")
    request_id = answer.headers["x-request-id"]
    log = server.wait_for_log(f"request id {request_id}")
    assert "RuntimeError: failed after answering" in log, log


def test_a_form_post_and_a_background_task(serve, tmp_path):
    server = serve("asgi_frameworks:starlette_app", "-k", "asgi", workers=1)
    marker = tmp_path / "background"
    with client(server, False) as c:
        answer = c.post("/form", data={"name": "plain form"})
        assert answer.json() == {"name": "plain form", "file": None, "size": 0}
        answer = c.get("/background", params={"marker": str(marker)})
        assert (answer.status_code, answer.text) == (200, "answered")
    eventually(lambda: marker.exists() and marker.read_text() == "background ran",
               what="the background task's marker")


def test_requests_run_concurrently_on_one_worker(serve):
    server = serve("asgi_plain:sleepy", "-k", "asgi", workers=1)
    request(server.port, "/?s=0")  # warm up
    start = time.monotonic()
    results = at_once(20, lambda i: request(server.port, "/?s=0.5"))
    took = time.monotonic() - start
    assert all(not isinstance(r, Exception) and r[0] == 200 for r in results), results
    assert len({r[1] for r in results}) == 1  # one worker process served them all
    # One after the other they would take 10 s: together, about one sleep.
    assert took < 5.0, took


def test_send_after_the_client_left_raises_oserror(serve, tmp_path):
    marker = tmp_path / "send"
    # One request at a time: the abandoned one must give its place back.
    server = serve("asgi_plain:abandoned", "-k", "asgi", "--worker-connections", "1",
                   workers=1, env={"ASGI_MARKER": str(marker)})
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # the request reaches the app, which sleeps 1 s
    eventually(lambda: marker.exists() and marker.read_text(), what="the app's record")
    assert marker.read_text() == "OSError ClientDisconnected http.disconnect\n"
    assert "Error handling request" not in server.log, server.log
    # The worker's one place is free again: the next request is served.
    marker.unlink()
    assert request(server.port, "/next", timeout=10) == (200, b"too late")


def test_a_receive_given_up_does_not_spoil_the_next_one(serve, tmp_path):
    # asyncio.wait_for cancels the first wait for http.disconnect; the next receive()
    # still gets its http.disconnect once the response is complete, not the
    # cancellation of the first.
    marker = tmp_path / "outcome"
    server = serve("asgi_plain:gives_up_waiting", "-k", "asgi", workers=1,
                   env={"ASGI_MARKER": str(marker)})
    assert request(server.port, "/") == (200, b"answered")
    eventually(lambda: marker.exists() and marker.read_text(), what="the app's record")
    assert marker.read_text() == "http.disconnect\n"
    assert "Error handling request" not in server.log, server.log


def test_lifespan_off_sends_no_lifespan_scope(serve, tmp_path):
    marker = tmp_path / "lifespan"
    server = serve("asgi_plain:no_lifespan", "-k", "asgi", "--lifespan", "off", workers=1,
                   env={"ASGI_MARKER": str(marker)})
    assert request(server.port) == (200, b"served")
    assert not marker.exists()
    # The same app under the default (auto) does get it: the check above can fail.
    other = tmp_path / "auto"
    server = serve("asgi_plain:no_lifespan", "-k", "asgi", workers=1,
                   env={"ASGI_MARKER": str(other)})
    assert request(server.port) == (200, b"served")
    assert other.read_text() == "lifespan\n"


def test_lifespan_auto_serves_an_app_that_refuses_it_with_one_info_line(serve):
    server = serve("asgi_plain:raises_on_lifespan", "-k", "asgi", workers=2)
    assert request(server.port) == (200, b"served without lifespan")
    log = server.wait_for_log("lifespan' protocol appears unsupported", count=2)
    assert "[INFO]" in [line for line in log.splitlines() if "unsupported" in line][0]
    assert "[ERROR]" not in log, log


def test_a_failed_startup_under_lifespan_on_stops_the_server(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(APPS)}
    done = subprocess.run(
        [str(BINARY), "serve", "-b", "127.0.0.1:0", "-w", "2", "-k", "asgi",
         "--lifespan", "on", "asgi_plain:failing_startup"],
        capture_output=True, text=True, timeout=30, env=env)
    log = done.stdout + done.stderr
    assert done.returncode == 4, log
    # Once, though both workers fail.
    assert log.count("RuntimeError: the database is not there (failing_startup)") == 1, log
    assert "ASGI lifespan startup failed" in log


def test_graceful_stop_finishes_requests_then_shuts_lifespan_down(tmp_path):
    marker = tmp_path / "lifespan"
    server = Server("asgi_plain:lifespan_marks", "-k", "asgi", workers=1,
                    env={"ASGI_MARKER": str(marker)})
    try:
        assert marker.read_text() == "startup\n"
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(b"GET /?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)  # in flight
            server.signal(signal.SIGTERM)
            answer = b""
            while chunk := raw.recv(65536):  # the server closes it: it is stopping
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert answer.endswith(b"set at startup\r\n0\r\n\r\n"), answer
        assert server.wait(15) == 0
        assert marker.read_text() == "startup\nshutdown\n"
    finally:
        server.stop()


def test_max_requests_rotates_asgi_workers(serve, tmp_path):
    server = serve("asgi_plain:sleepy", "-k", "asgi", "--max-requests", "3", workers=1)
    pids = [request(server.port, "/?s=0")[1] for _ in range(9)]
    assert all(pid.isdigit() for pid in pids), pids
    assert len(set(pids)) >= 3, pids


def test_uvloop_is_used_when_installed_and_asyncio_on_request(serve):
    pytest.importorskip("uvloop")
    server = serve("asgi_plain:sleepy", "-k", "asgi", workers=1)
    server.wait_for_log("ASGI worker on the uvloop event loop")
    server = serve("asgi_plain:sleepy", "-k", "asgi", "--asgi-loop", "asyncio", workers=1)
    server.wait_for_log("ASGI worker on the asyncio event loop")
    assert request(server.port, "/?s=0")[0] == 200


def test_a_worker_whose_event_loop_is_blocked_is_timed_out(serve):
    server = serve("asgi_plain:blocks_the_loop", "-k", "asgi", "--timeout", "1",
                   "--lifespan", "off", workers=1)
    start = time.monotonic()
    status, _ = request(server.port, "/", timeout=20)
    assert status == 504
    assert time.monotonic() - start < 15
    server.wait_for_log("WORKER TIMEOUT")


@pytest.mark.parametrize("app", ["asgi_plain:scope_echo", "asgi_frameworks:fastapi_app"])
def test_an_asgi_callable_is_served_as_asgi_without_k(serve, app):
    """`rwsgi serve main:app`: a coroutine function (a plain app) or an object whose
    __call__ is one (FastAPI) is recognised, served as -k asgi would, and the log says so."""
    server = serve(app, workers=1)
    server.wait_for_log("The application is an ASGI callable: serving it as -k asgi")
    with client(server, http2=False) as c:
        # FastAPI's /state is set by its lifespan startup: lifespan ran too.
        response = c.get("/" if app.endswith("scope_echo") else "/state")
    assert response.status_code == 200, response.text
    if app.endswith("scope_echo"):
        assert response.json()["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    else:
        assert response.json()["started_by"], response.text


def test_a_wsgi_app_and_an_explicit_class_are_left_as_they_are(serve):
    wsgi = serve("basic:hello", workers=1)
    assert httpx.get(wsgi.url + "/").text == "Hello, World!\n"
    # -k sync given: the user's choice stands, even for an ASGI callable (which then
    # fails as a WSGI app: 500).
    chosen = serve("asgi_plain:scope_echo", "-k", "sync", workers=1)
    assert httpx.get(chosen.url + "/").status_code == 500
    for server in (wsgi, chosen):
        assert "ASGI callable" not in server.log
