"""-k asgi WebSockets (issue 17): RFC 6455 in the front tier, ASGI messages in the worker
(asgiref www.rst 2.5). Driven by the `websockets` client library and by a raw client of
our own (wskit) for what no library sends: the conformance cases of RFC 6455 §5-7."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import pytest

from kit import eventually, fronts_of, get, workers_of
from rawhttp import read_until
from wskit import H2Socket, RawSocket, close_payload

websockets = pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "marker"


def noted(marker, line: str, timeout: float = 10) -> list[str]:
    """The application's notes, once `line` is among them."""
    eventually(lambda: marker.exists() and line in marker.read_text().splitlines(),
               timeout, f"the app to note {line!r}")
    return marker.read_text().splitlines()


@pytest.fixture
def echo(serve, marker):
    return serve("asgi_ws:echo", "-k", "asgi", "--access-logfile", "-", workers=1,
                 env={"ASGI_MARKER": str(marker)})


def test_messages_both_ways_with_the_scope_of_the_spec(echo):
    url = f"ws://127.0.0.1:{echo.port}/room%20a/b?x=1"
    with connect(url, subprotocols=["chat", "other"], compression=None, max_size=None) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response.headers["x-accepted"] == "yes"
        ws.send("héllo")
        assert ws.recv() == "héllo"
        ws.send(b"\x00\xff")
        assert ws.recv() == b"\x00\xff"
        ws.send("")
        assert ws.recv() == ""
        # Larger than the channel's credit window and than one channel frame, both ways.
        big = bytes(range(256)) * (3 * 4096 + 7)
        ws.send(big)
        assert ws.recv() == big
        ws.send("scope")
        import json
        scope = json.loads(ws.recv())
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert scope["scheme"] == "ws" and scope["http_version"] == "1.1"
    assert scope["path"] == "/room a/b" and scope["raw_path"] == "/room%20a/b"
    assert scope["query_string"] == "x=1"
    assert scope["subprotocols"] == ["chat", "other"]
    assert "method" not in scope
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert ["sec-websocket-protocol", "chat, other"] in scope["headers"]
    assert scope["client"][0] == "127.0.0.1" and scope["server"] == ["127.0.0.1", echo.port]


def test_a_close_by_the_application_reaches_the_client_and_its_disconnect_comes_once(
        echo, marker):
    with connect(f"ws://127.0.0.1:{echo.port}/") as ws:
        ws.send("close 4001")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd.code == 4001 and closed.value.rcvd.reason == "asked to"
    notes = noted(marker, "again websocket.disconnect")
    # The disconnect once (the second receive() answers it again, as the same event),
    # and a send() after it is an OSError, as www.rst 2.5 says.
    assert notes == ["disconnect 4001 'asked to'", "OSError ClientDisconnected",
                     "again websocket.disconnect"]



def test_a_websocket_is_one_access_log_line_written_when_it_ends(serve):
    import json
    server = serve("asgi_ws:echo", "-k", "asgi", "--access-logfile", "-",
                   "--access-log-format", "json", workers=1)
    with connect(f"ws://127.0.0.1:{server.port}/logged") as ws:
        ws.send("hi")
        assert ws.recv() == "hi"
        time.sleep(0.5)  # the WebSocket's life, which its line measures
        # Open: not logged yet.
        assert '"/logged"' not in server.log
    server.wait_for_log('"/logged"')
    [line] = [json.loads(line[line.index("{"):]) for line in server.log.splitlines()
              if '"/logged"' in line]
    assert line["status"] == 101 and line["duration_ms"] >= 500, line


def test_a_close_by_the_client_is_answered_and_the_application_gets_its_code(echo, marker):
    ws = connect(f"ws://127.0.0.1:{echo.port}/")
    ws.send("ping me")
    assert ws.recv() == "ping me"
    ws.close(4002, "bye")
    # The server answered the close frame with its own (echoing the code).
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 4002
    assert noted(marker, "again websocket.disconnect")[:2] == [
        "disconnect 4002 'bye'", "OSError ClientDisconnected"]


def test_a_connection_dropped_without_a_close_frame_is_1006_for_the_application(echo, marker):
    raw = RawSocket(echo.port)
    raw.send(TEXT, b"hi")
    assert raw.recv() == (True, TEXT, b"hi")
    raw.sock.shutdown(socket.SHUT_RDWR)
    raw.close()
    assert noted(marker, "again websocket.disconnect")[0] == "disconnect 1006 ''"


def test_denials_before_the_accept(echo):
    with pytest.raises(InvalidStatus) as denied:
        connect(f"ws://127.0.0.1:{echo.port}/deny")
    assert denied.value.response.status_code == 403
    # websocket.http.response: the application's own response.
    raw = RawSocket(echo.port, "/respond")
    assert raw.status == 401
    assert "x-why: no" in raw.head.lower()
    assert b"not you" in raw._until(b"0\r\n\r\n")
    raw.close()
    with pytest.raises(InvalidStatus) as failed:
        connect(f"ws://127.0.0.1:{echo.port}/fail-before")
    assert failed.value.response.status_code == 500
    echo.wait_for_log("failing before the accept")


def test_a_denied_handshake_leaves_the_connection_usable_for_the_next_request(echo):
    raw = RawSocket(echo.port, "/deny")
    assert raw.status == 403
    raw.sock.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw._until(b"\r\n\r\n").startswith(b"HTTP/1.1 200")
    raw.close()


def test_an_application_failing_after_the_accept_closes_with_1011_and_its_traceback(echo):
    with connect(f"ws://127.0.0.1:{echo.port}/") as ws:
        ws.send("fail")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd.code == 1011
    echo.wait_for_log("failing after the accept")


def test_a_bad_handshake_is_refused(echo):
    with socket.create_connection(("127.0.0.1", echo.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 8\r\n\r\n")
        answer = sock.recv(4096).lower()
        assert answer.startswith(b"http/1.1 426")
        assert b"sec-websocket-version: 13" in answer


# -- RFC 6455 §5-7 with a raw client ---------------------------------------------------

def test_fragments_are_reassembled_around_control_frames(echo):
    raw = RawSocket(echo.port)
    raw.send(TEXT, "fra".encode(), fin=False)
    raw.send(PING, b"in between")
    raw.send(0, "gmé".encode()[:4], fin=False)
    raw.send(PONG, b"unasked")  # an unsolicited pong is allowed (§5.5.3)
    raw.send(0, "gmé".encode()[4:], fin=True)
    assert raw.recv() == (True, PONG, b"in between")
    assert raw.recv() == (True, TEXT, "fragmé".encode())
    raw.send(CLOSE, close_payload(1000))
    assert raw.recv_close() == (1000, "")
    assert raw.at_eof()


@pytest.mark.parametrize("case, code", [
    ("unmasked", 1002),
    ("reserved opcode", 1002),
    ("rsv bit", 1002),
    ("continuation of nothing", 1002),
    ("fragmented ping", 1002),
    ("close code 1005", 1002),
    ("invalid utf-8", 1007),
    ("invalid utf-8 across fragments", 1007),
    ("oversized", 1009),
    ("oversized in fragments", 1009),
])
def test_each_protocol_violation_closes_with_its_code(serve, marker, case, code):
    server = serve("asgi_ws:echo", "-k", "asgi", "--ws-max-size", "1k", workers=1,
                   env={"ASGI_MARKER": str(marker)})
    raw = RawSocket(server.port)
    if case == "unmasked":
        raw.send(TEXT, b"hi", mask=False)
    elif case == "reserved opcode":
        raw.send(3, b"")
    elif case == "rsv bit":
        raw.send(TEXT, b"hi", rsv=2)
    elif case == "continuation of nothing":
        raw.send(0, b"hi")
    elif case == "fragmented ping":
        raw.send(PING, b"", fin=False)
    elif case == "close code 1005":
        raw.send(CLOSE, close_payload(1005))
    elif case == "invalid utf-8":
        raw.send(TEXT, b"ok \xff\xfe")
    elif case == "invalid utf-8 across fragments":
        raw.send(TEXT, b"\xc3", fin=False)
        raw.send(0, b"(")
    elif case == "oversized":
        raw.send(BINARY, b"x" * 1025)
    elif case == "oversized in fragments":
        raw.send(BINARY, b"x" * 600, fin=False)
        raw.send(0, b"x" * 600)
    assert raw.recv_close()[0] == code
    assert raw.at_eof()
    assert noted(marker, "again websocket.disconnect")[0].startswith(f"disconnect {code} ")


def test_messages_on_their_way_count_against_the_front_tiers_memory(serve, marker):
    """--ws-max-size bounds one WebSocket; all of them together are bounded by the
    front tier's memory for what clients send (96 MiB of its 128): a WebSocket whose
    bytes would pass it is closed with 1013 (try again later), the others go on, and
    what a closed one held is given back."""
    server = serve("asgi_ws:echo", "-k", "asgi", workers=1, env={"ASGI_MARKER": str(marker)})
    big = os.urandom(15 << 20)  # under --ws-max-size (16 MiB): allowed alone

    def holding(raw):
        """A first fragment of 15 MiB, then a ping: the pong says it is held, not
        refused."""
        raw.send(BINARY, big, fin=False)
        raw.send(PING, b"still here")
        return raw.recv()

    held = [RawSocket(server.port, timeout=30) for _ in range(6)]
    for raw in held:  # 90 MiB
        assert holding(raw) == (True, PONG, b"still here")
    over = RawSocket(server.port, timeout=30)
    with contextlib.suppress(OSError):  # the server may stop reading before the end
        over.send(BINARY, big, fin=False)
    assert over.recv_close() == (1013, "server busy: try again later")
    assert noted(marker, "disconnect 1013 'server busy: try again later'")
    for raw in held:
        raw.close()
    # What they held is given back: a new WebSocket may hold as much again.
    eventually(lambda: holding(RawSocket(server.port, timeout=30)) == (True, PONG, b"still here"),
               what="room again once the others closed")


def test_a_close_without_a_code_is_1005_for_the_application(echo, marker):
    raw = RawSocket(echo.port)
    raw.send(CLOSE, b"")
    assert raw.recv_close() == (None, "")
    assert noted(marker, "again websocket.disconnect")[0] == "disconnect 1005 ''"


def test_a_message_of_the_largest_size_passes(serve):
    server = serve("asgi_ws:echo", "-k", "asgi", "--ws-max-size", "1k", workers=1)
    raw = RawSocket(server.port)
    raw.send(BINARY, b"y" * 1024)
    assert raw.recv() == (True, BINARY, b"y" * 1024)
    raw.close()


# -- backpressure ----------------------------------------------------------------------

def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def sent_so_far(marker) -> int:
    lines = marker.read_text().splitlines() if marker.exists() else []
    return max((int(line.split()[1]) for line in lines if line.startswith("sent ")), default=0)


def test_a_client_that_does_not_read_holds_the_applications_send_and_bounded_memory(
        serve, marker):
    """The application sends 200 MiB to a client that reads nothing: its send() waits
    once the front tier's window and the sockets' buffers are full, and neither the front
    tier nor the worker grows by more than a few MiB."""
    server = serve("asgi_ws:flood", "-k", "asgi", "--ws-ping-interval", "0", workers=1,
                   env={"ASGI_MARKER": str(marker), "FLOOD_MIB": "200"})
    [front] = fronts_of(server.pid)
    [worker] = workers_of(server.pid)
    before = rss_mib(front), rss_mib(worker)
    raw = RawSocket(server.port, rcvbuf=64 * 1024)
    eventually(lambda: sent_so_far(marker) >= 2, 15, "the app to send 2 MiB")
    # Then nothing more moves: measured over a while, since what is observed is that
    # nothing happens.
    plateau = sent_so_far(marker)
    time.sleep(2)
    held = sent_so_far(marker)
    after = rss_mib(front), rss_mib(worker)
    # The worker's event loop is free meanwhile: only the send() waits.
    assert get(server.port, "/", timeout=5) == (200, b"the loop is free")
    raw.close()
    assert held <= plateau + 2, f"send() kept going: {plateau} MiB, then {held} MiB"
    assert held < 32, f"the app sent {held} MiB to a client that reads nothing"
    grown = after[0] - before[0], after[1] - before[1]
    print(f"\nfront tier RSS {before[0]:.1f} -> {after[0]:.1f} MiB, "
          f"worker {before[1]:.1f} -> {after[1]:.1f} MiB, app's send() held at {held} MiB")
    assert grown[0] < 24, f"the front tier grew by {grown[0]:.1f} MiB"
    assert grown[1] < 24, f"the worker grew by {grown[1]:.1f} MiB"
    # The client gone, the application's send() raises and it stops.
    eventually(lambda: any(line.startswith("stopped ")
                           for line in marker.read_text().splitlines()), 15, "send() to raise")


def test_an_application_that_does_not_receive_stops_the_reading_of_its_client(serve, marker):
    """The client sends megabytes to an application that does not receive: past one
    message waiting in the front tier and one credit window in the worker, the front
    tier stops reading, and the client's sends block (its socket buffers fill)."""
    server = serve("asgi_ws:sink", "-k", "asgi", "--ws-ping-interval", "0", workers=1,
                   env={"ASGI_MARKER": str(marker), "SINK_SLEEP": "4"})
    [front] = fronts_of(server.pid)
    [worker] = workers_of(server.pid)
    before = rss_mib(front), rss_mib(worker)
    raw = RawSocket(server.port)
    noted(marker, "accepted")
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    raw.sock.settimeout(2)
    pushed = 0
    message = b"m" * (256 * 1024)
    with pytest.raises(TimeoutError):
        while pushed < 200 << 20:
            raw.send(BINARY, message)
            pushed += len(message)
    after = rss_mib(front), rss_mib(worker)
    print(f"\nclient pushed {pushed >> 20} MiB before blocking; front tier RSS "
          f"{before[0]:.1f} -> {after[0]:.1f} MiB, worker {before[1]:.1f} -> {after[1]:.1f} MiB")
    assert pushed < 32 << 20, f"{pushed >> 20} MiB taken from a client nobody reads"
    assert after[0] - before[0] < 24 and after[1] - before[1] < 24
    raw.close()


# -- pings -----------------------------------------------------------------------------

def test_the_server_pings_and_a_client_that_answers_stays(serve, marker):
    server = serve("asgi_ws:echo", "-k", "asgi", "--ws-ping-interval", "0.3",
                   "--ws-ping-timeout", "1", workers=1, env={"ASGI_MARKER": str(marker)})
    raw = RawSocket(server.port)
    for _ in range(3):
        fin, opcode, payload = raw.recv()
        assert (fin, opcode) == (True, PING)
        raw.send(PONG, payload)
    raw.send(TEXT, b"still here")
    while (frame := raw.recv())[1] == PING:
        raw.send(PONG, frame[2])
    assert frame == (True, TEXT, b"still here")
    raw.close()


def test_a_client_that_does_not_answer_pings_is_closed_with_1011(serve, marker):
    server = serve("asgi_ws:echo", "-k", "asgi", "--ws-ping-interval", "0.3",
                   "--ws-ping-timeout", "0.5", workers=1, env={"ASGI_MARKER": str(marker)})
    raw = RawSocket(server.port)
    assert raw.recv()[1] == PING
    assert raw.recv_close()[0] == 1011
    assert noted(marker, "again websocket.disconnect")[0].startswith("disconnect 1011 ")


def test_the_websockets_client_keeps_a_pinged_connection(serve):
    server = serve("asgi_ws:echo", "-k", "asgi", "--ws-ping-interval", "0.2",
                   "--ws-ping-timeout", "0.5", workers=1)
    with connect(f"ws://127.0.0.1:{server.port}/") as ws:
        time.sleep(1.5)  # several pings, answered by the client library meanwhile
        ws.send("alive")
        assert ws.recv() == "alive"


# -- TLS and HTTP/2 (RFC 8441) ---------------------------------------------------------

CERTS = __import__("pathlib").Path(__file__).resolve().parent.parent / "certs"
LOCALHOST = f"{CERTS / 'localhost.pem'}:{CERTS / 'localhost.key'}"


def test_websockets_over_tls(serve):
    import ssl
    server = serve("asgi_ws:echo", "-k", "asgi", "--tls", LOCALHOST, workers=1)
    context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    with connect(f"wss://localhost:{server.port}/tls", ssl=context) as ws:
        ws.send("scope")
        import json
        scope = json.loads(ws.recv())
        ws.send(b"\x01" * 100_000)
        assert ws.recv() == b"\x01" * 100_000
    assert scope["scheme"] == "wss" and scope["path"] == "/tls"


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_websockets_over_http2_extended_connect(serve, marker, tls):
    args = ["--tls", LOCALHOST] if tls else []
    server = serve("asgi_ws:echo", "-k", "asgi", *args, workers=1,
                   env={"ASGI_MARKER": str(marker)})
    ws = H2Socket(server.port, "/over/h2?q=1", tls=tls,
                  headers=[("sec-websocket-protocol", "chat")])
    # RFC 8441 §3 (SETTINGS_ENABLE_CONNECT_PROTOCOL was awaited) and §5: a 200.
    assert ws.status == 200
    assert ws.response_headers.get("sec-websocket-protocol") == "chat"
    ws.send(TEXT, "héllo h2".encode())
    assert ws.recv() == (True, TEXT, "héllo h2".encode())
    ws.send(TEXT, b"scope")
    import json
    scope = json.loads(ws.recv()[2])
    assert scope["http_version"] == "2" and scope["scheme"] == ("wss" if tls else "ws")
    assert scope["path"] == "/over/h2" and scope["query_string"] == "q=1"
    assert scope["subprotocols"] == ["chat"]
    big = b"z" * 300_000  # larger than HTTP/2's initial window: flow control both ways
    ws.send(BINARY, big)
    assert ws.recv() == (True, BINARY, big)
    ws.send(TEXT, b"close 4003")
    assert ws.recv_close() == (4003, "asked to")
    assert noted(marker, "again websocket.disconnect")[0] == "disconnect 4003 'asked to'"
    ws.close()


def test_an_http2_client_violating_rfc_6455_is_closed_with_1002(serve, marker):
    server = serve("asgi_ws:echo", "-k", "asgi", workers=1, env={"ASGI_MARKER": str(marker)})
    ws = H2Socket(server.port)
    ws.send(TEXT, b"hi", mask=False)
    assert ws.recv_close()[0] == 1002
    assert noted(marker, "again websocket.disconnect")[0].startswith("disconnect 1002 ")
    ws.close()


# -- permessage-deflate (RFC 7692) -----------------------------------------------------

def test_permessage_deflate_with_the_websockets_client(echo):
    # The websockets client offers permessage-deflate by default.
    with connect(f"ws://127.0.0.1:{echo.port}/", max_size=None) as ws:
        extensions = ws.response.headers["sec-websocket-extensions"]
        assert extensions.startswith("permessage-deflate")
        text = "compressible " * 100_000
        ws.send(text)
        assert ws.recv() == text
        for i in range(50):  # the server's context restarts with each message
            ws.send(f"message {i}")
            assert ws.recv() == f"message {i}"
        noise = bytes(range(256)) * 5000
        ws.send(noise)
        assert ws.recv() == noise


def deflate(data: bytes) -> bytes:
    import zlib
    compressor = zlib.compressobj(wbits=-15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def test_permessage_deflate_on_the_wire(serve, marker):
    import zlib
    server = serve("asgi_ws:echo", "-k", "asgi", "--ws-max-size", "64k", workers=1,
                   env={"ASGI_MARKER": str(marker)})
    offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    raw = RawSocket(server.port, headers=offer)
    assert "permessage-deflate; server_no_context_takeover" in raw.head
    message = b"a" * 50_000
    raw.send(BINARY, deflate(message), rsv=4)  # RSV1: compressed (§6)
    fin, opcode, payload = raw.recv()
    assert (fin, opcode, raw.rsv1) == (True, BINARY, True)
    assert len(payload) < 1000
    assert zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff") == message
    # Uncompressed messages stay allowed; compressed control frames do not.
    raw.send(TEXT, b"plain")
    fin, opcode, payload = raw.recv()
    assert zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff") == b"plain"
    # A small message that inflates past --ws-max-size: 1009, before it is all inflated.
    raw.send(BINARY, deflate(b"\0" * (10 << 20)), rsv=4)
    assert raw.recv_close()[0] == 1009
    assert noted(marker, "again websocket.disconnect")[0].startswith("disconnect 1009 ")


def test_without_an_offer_nothing_is_compressed(echo):
    raw = RawSocket(echo.port)
    assert "sec-websocket-extensions" not in raw.head.lower()
    raw.send(BINARY, b"b" * 1000)
    assert raw.recv() == (True, BINARY, b"b" * 1000) and not raw.rsv1
    raw.send(BINARY, deflate(b"x"), rsv=4)
    assert raw.recv_close()[0] == 1002


# -- graceful stop and rotation --------------------------------------------------------

def test_term_closes_open_websockets_with_1001_at_once(serve, marker):
    import signal
    server = serve("asgi_ws:echo", "-k", "asgi", "--graceful-timeout", "60", workers=1,
                   env={"ASGI_MARKER": str(marker)})
    sockets = [connect(f"ws://127.0.0.1:{server.port}/") for _ in range(3)]
    for ws in sockets:
        ws.send("hi")
        assert ws.recv() == "hi"
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    for ws in sockets:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
        assert closed.value.rcvd.code == 1001
    # Every application was told once, and the server stopped well within
    # --graceful-timeout.
    noted(marker, "disconnect 1001 'server stopping'")
    eventually(lambda: marker.read_text().splitlines().count(
        "disconnect 1001 'server stopping'") == 3, 10,
        f"three disconnects, in:\n{marker.read_text()}\n{server.log}")
    assert server.wait(30) == 0
    assert time.monotonic() - started < 20


def test_a_worker_whose_front_tier_is_gone_ends_its_websockets_and_exits(serve, marker):
    """The front tier killed: the worker's channel ends, its open WebSocket is over for
    the application (1006, no close frame could cross) and the worker exits by itself
    instead of waiting for ever for a message that cannot come (a worker left so
    ignored TERM, its loop waiting for the task)."""
    import signal
    from conftest import alive
    server = serve("asgi_ws:echo", "-k", "asgi", workers=1, env={"ASGI_MARKER": str(marker)})
    ws = connect(f"ws://127.0.0.1:{server.port}/")
    ws.send("hi")
    assert ws.recv() == "hi"
    (worker,) = workers_of(server.pid)
    (front,) = fronts_of(server.pid)
    try:
        # The master held still (it would stop the worker itself), the front tier gone
        # at once (no close frame of its own).
        os.kill(server.pid, signal.SIGSTOP)
        os.kill(front, signal.SIGKILL)
        noted(marker, "disconnect 1006 ''")
        eventually(lambda: not alive(worker), what="the worker to exit")
    finally:
        os.kill(server.pid, signal.SIGKILL)
        if alive(worker):
            os.kill(worker, signal.SIGKILL)
        ws.close()


@pytest.mark.parametrize("how", ["hup", "max-requests"])
def test_a_rotated_worker_closes_its_websockets_with_1012(serve, marker, how):
    import signal
    args = ["--max-requests", "2"] if how == "max-requests" else []
    server = serve("asgi_ws:echo", "-k", "asgi", *args, workers=1,
                   env={"ASGI_MARKER": str(marker)})
    ws = connect(f"ws://127.0.0.1:{server.port}/")
    ws.send("hi")
    assert ws.recv() == "hi"
    if how == "hup":
        server.signal(signal.SIGHUP)
    else:
        assert get(server.port, "/plain")[0] == 200  # the second request: it retires
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=15)
    assert closed.value.rcvd.code == 1012
    noted(marker, "disconnect 1012 'server restarting'")
    # The new worker serves WebSockets; nothing hung.
    def reconnects():
        try:
            with connect(f"ws://127.0.0.1:{server.port}/", open_timeout=5) as again:
                again.send("back")
                return again.recv(timeout=5) == "back"
        except (OSError, InvalidStatus, ConnectionClosed):
            return False
    eventually(reconnects, 20, "a WebSocket on the new worker")


# -- frameworks ------------------------------------------------------------------------

@pytest.mark.parametrize("app", ["asgi_ws_frameworks:starlette_app",
                                 "asgi_ws_frameworks:fastapi_app"])
def test_starlette_and_fastapi_websockets_echo_and_broadcast(serve, marker, app):
    pytest.importorskip("fastapi")
    server = serve(app, "-k", "asgi", workers=1, env={"ASGI_MARKER": str(marker)})
    base = f"ws://127.0.0.1:{server.port}"
    with connect(f"{base}/echo", subprotocols=["v1"]) as ws:
        assert ws.subprotocol == "v1"
        ws.send("text")
        assert ws.recv() == "text"
        ws.send(b"bytes")
        assert ws.recv() == b"bytes"
    members = [connect(f"{base}/room") for _ in range(3)]
    members[0].send("to all")
    assert [member.recv(timeout=10) for member in members] == ["to all"] * 3
    members[2].close(4005)
    members[1].send("still here")
    assert [member.recv(timeout=10) for member in members[:2]] == ["still here"] * 2
    for member in members[:2]:
        member.close()
    notes = noted(marker, "room disconnect 1000")
    assert "echo disconnect 1000" in notes and "room disconnect 4005" in notes


def test_a_new_master_taking_over_closes_the_old_ones_websockets_with_1012(serve, marker):
    """USR2 then WINCH: the old front tier drains, a restart of the service for its
    WebSockets (1012), while the new master serves them again."""
    import signal
    from kit import stop_pid
    from test_signals import upgrade
    server = serve("asgi_ws:echo", "-k", "asgi", workers=1, env={"ASGI_MARKER": str(marker)})
    ws = connect(f"ws://127.0.0.1:{server.port}/")
    ws.send("hi")
    assert ws.recv() == "hi"
    new = upgrade(server, workers=1)
    try:
        server.signal(signal.SIGWINCH)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
        assert closed.value.rcvd.code == 1012
        eventually(lambda: marker.exists() and "disconnect 1012 'server restarting'"
                   in marker.read_text().splitlines(), 10,
                   f"the app's 1012 disconnect, in:\n{marker.read_text() if marker.exists() else ''}"
                   f"\n{server.log}")
        with connect(f"ws://127.0.0.1:{server.port}/") as again:
            again.send("new master")
            assert again.recv(timeout=10) == "new master"
    finally:
        stop_pid(new)


def test_a_websocket_keeps_its_place_under_max_connections(serve):
    server = serve("asgi_ws:echo", "-k", "asgi", "--max-connections", "1", workers=1)
    with connect(f"ws://127.0.0.1:{server.port}/") as ws:
        ws.send("hi")
        assert ws.recv() == "hi"
        # The one place is the WebSocket's: a second connection waits in the backlog.
        with pytest.raises(TimeoutError):
            connect(f"ws://127.0.0.1:{server.port}/", open_timeout=1)
    # Closed, the place is free again.
    with connect(f"ws://127.0.0.1:{server.port}/", open_timeout=10) as ws:
        ws.send("again")
        assert ws.recv() == "again"


def test_an_idle_websocket_on_http2_outlives_the_keep_alive_timeout(serve):
    server = serve("asgi_ws:echo", "-k", "asgi", "--keep-alive", "0.5",
                   "--ws-ping-interval", "0", workers=1)
    ws = H2Socket(server.port)
    ws.send(TEXT, b"one")
    assert ws.recv() == (True, TEXT, b"one")
    time.sleep(1.5)  # past the keep-alive timeout twice: an idle connection would be gone
    ws.send(TEXT, b"two")
    assert ws.recv() == (True, TEXT, b"two")
    ws.close()


def test_a_handshake_that_also_says_close_gets_its_101_at_once(echo):
    """A 101 is never held back for a FIN (a request's `Connection: close` says the
    connection's last response is coming, but a 101 goes on upgraded): the fastest of
    three handshakes is answered well within the 200 ms the kernel would hold it."""
    took = []
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", echo.port), timeout=5) as sock:
            start = time.monotonic()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade, close\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n")
            answer = read_until(sock, b"\r\n\r\n")
            took.append(time.monotonic() - start)
            assert answer.lower().startswith(b"http/1.1 101")
    assert min(took) < 0.1, f"101 after {took}"
