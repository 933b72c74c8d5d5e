"""Django Channels under -k asgi: Django's ASGI handler for HTTP and Channels consumers
for WebSockets in one application, driven by httpx and the `websockets` client (issue
17). The places Channels users hurt with other servers: a server-initiated close must
still run the consumer's `disconnect()`, exactly once, and Django's missing lifespan must
not be logged as an error."""

from __future__ import annotations

import socket

import httpx
import pytest

from kit import eventually

pytest.importorskip("channels")
websockets_sync = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosed  # noqa: E402

APP = "channels_site:application"


def ws_url(server, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


@pytest.fixture
def site(serve, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    server = serve(APP, "-k", "asgi", workers=1, env={"CHANNELS_MARKS": str(marks)})
    return server, marks


def closes_seen(marks, name: str) -> list[str]:
    path = marks / name
    return path.read_text().split() if path.exists() else []


def test_django_http_and_a_websocket_echo_in_one_application(site):
    server, _ = site
    response = httpx.get(f"{server.url}/hello", timeout=15)
    assert response.status_code == 200, response.text
    assert response.json() == {"hello": "django", "path": "/hello"}
    with websockets_sync.connect(ws_url(server, "/ws/echo?echo"), open_timeout=15) as ws:
        ws.send("héllo")
        assert ws.recv(timeout=15) == "héllo"
        ws.send(b"\x00\xffbytes")
        assert ws.recv(timeout=15) == b"\x00\xffbytes"


def test_a_server_initiated_close_runs_disconnect_once(site):
    server, marks = site
    with websockets_sync.connect(ws_url(server, "/ws/echo?server-close"), open_timeout=15) as ws:
        ws.send("close")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    eventually(lambda: closes_seen(marks, "server-close"), what="disconnect() to run")
    # Once, with the code the consumer closed with, however long we look.
    with httpx.Client(timeout=15) as client:
        assert client.get(f"{server.url}/hello").status_code == 200
    assert closes_seen(marks, "server-close") == ["4000"]


def test_a_client_that_leaves_runs_disconnect_with_its_code(site):
    server, marks = site
    ws = websockets_sync.connect(ws_url(server, "/ws/echo?client-close"), open_timeout=15)
    ws.send("ping?")
    assert ws.recv(timeout=15) == "ping?"
    ws.close(code=1000)
    eventually(lambda: closes_seen(marks, "client-close"), what="disconnect() to run")
    assert closes_seen(marks, "client-close") == ["1000"]


def test_a_client_dropped_without_a_close_frame_runs_disconnect(site):
    server, marks = site
    ws = websockets_sync.connect(ws_url(server, "/ws/echo?dropped"), open_timeout=15)
    ws.send("x")
    assert ws.recv(timeout=15) == "x"
    # The TCP connection ends without a closing handshake (shutdown first: the client's
    # own reading thread holds the socket open past a bare close).
    ws.socket.shutdown(socket.SHUT_RDWR)
    ws.socket.close()
    eventually(lambda: closes_seen(marks, "dropped"), what="disconnect() to run")
    # RFC 6455 §7.1.5: no close frame received is code 1006.
    assert closes_seen(marks, "dropped") == ["1006"]


def test_a_group_broadcast_reaches_every_member(site):
    server, _ = site
    url = ws_url(server, "/ws/room")
    with websockets_sync.connect(url, open_timeout=15) as a, \
            websockets_sync.connect(url, open_timeout=15) as b:
        # b has joined once its handshake is done: a's message reaches both.
        a.send("to all")
        assert a.recv(timeout=15) == "to all"
        assert b.recv(timeout=15) == "to all"


def test_django_without_lifespan_is_one_info_line_and_no_traceback(site):
    server, _ = site
    assert httpx.get(f"{server.url}/hello", timeout=15).status_code == 200
    log = server.log
    assert "lifespan" in log and "appears unsupported" in log, log
    assert "Traceback" not in log, log
    assert "[ERROR]" not in log, log
