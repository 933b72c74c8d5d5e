"""HTTP/2 abuse, with a raw h2 client: rapid reset (CVE-2023-44487), the advertised
limits, and an oversized header list. Each must cost the abuser its connection or its
stream, never the server its service to others."""

from __future__ import annotations

import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest

from conftest import ROOT, children_of


class RawH2:
    """A prior-knowledge HTTP/2 connection driven by hand."""

    def __init__(self, port: int, settings: dict | None = None,
                 sock: socket.socket | None = None):
        """Over `sock` if given (a TLS socket that chose h2), else a new TCP one; with
        `settings`, our SETTINGS sent with the preface."""
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        if settings:  # our SETTINGS, sent with the preface
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.flush()
        self.events: list = []
        self.pending = b""
        self.closed = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self, seconds: float, until=None) -> list:
        """Reads and handles frames for up to `seconds` (or until `until(events)`)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.closed:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            self.pending += data
            try:
                # Frame by frame: the events of a GOAWAY are kept even when the h2
                # package refuses what follows it (hyper's graceful GOAWAY is followed
                # by a PING, which it takes for a protocol error).
                while len(self.pending) >= 9:
                    end = 9 + int.from_bytes(self.pending[:3], "big")
                    if len(self.pending) < end:
                        break
                    frame, self.pending = self.pending[:end], self.pending[end:]
                    self.events += self.conn.receive_data(frame)
            except h2.exceptions.ProtocolError:
                self.closed = True
                break
            try:
                self.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.closed = True
            if until and until(self.events):
                break
        return self.events

    def headers(self, path: str, extra=(), end=True) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", "GET"), (":scheme", "http"),
                                        (":authority", "h2.test"), (":path", path),
                                        *extra], end_stream=end)
        return stream

    def close(self):
        self.sock.close()


def goaway(events) -> h2.events.ConnectionTerminated | None:
    return next((e for e in events if isinstance(e, h2.events.ConnectionTerminated)), None)


def served(server) -> bool:
    with httpx.Client(http1=False, http2=True, timeout=5) as client:
        return client.get(f"{server.url}/check").status_code == 200


def test_advertised_limits(serve):
    server = serve("guard_apps:echo", workers=1)
    client = RawH2(server.port)
    try:
        events = client.pump(2, until=lambda ev: any(
            isinstance(e, h2.events.RemoteSettingsChanged) for e in ev))
        changed = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged))
        settings = {key: value.new_value for key, value in changed.changed_settings.items()}
        assert settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS) == 128, settings
        assert h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE in settings, settings
    finally:
        client.close()


def test_rapid_reset_costs_the_abuser_its_connection(serve):
    server = serve("guard_apps:echo", workers=1)
    assert served(server)
    children_before = sorted(children_of(server.pid))
    assert len(children_before) == 2, children_before  # the front tier and one worker
    client = RawH2(server.port)
    sent = 0
    try:
        client.pump(1, until=lambda ev: any(
            isinstance(e, h2.events.RemoteSettingsChanged) for e in ev))
        for _ in range(2000):
            try:
                stream = client.headers(f"/reset/{sent}")
                client.conn.reset_stream(stream)
                client.flush()
            except (BrokenPipeError, ConnectionResetError, h2.exceptions.ProtocolError):
                break
            sent += 1
            if sent % 50 == 0:
                client.pump(0.01)
                if client.closed or goaway(client.events):
                    break
        client.pump(3, until=goaway)
        terminated = goaway(client.events)
        assert terminated is not None or client.closed, f"{sent} resets and no GOAWAY"
        assert sent < 2000, "all 2000 rapid resets were taken without a word"
        if terminated is not None:
            assert terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, terminated
    finally:
        client.close()
    # Everyone else is still served, by the same processes.
    assert served(server)
    assert sorted(children_of(server.pid)) == children_before


def test_oversized_header_list_is_refused_and_others_served(serve):
    server = serve("guard_apps:echo", workers=1)
    client = RawH2(server.port)
    try:
        client.pump(1, until=lambda ev: any(
            isinstance(e, h2.events.RemoteSettingsChanged) for e in ev))
        # 200 fields of 8 KiB: far past 100 fields and the advertised header list size
        # (the client is told to ignore the limit the server advertised). rwsgi answers
        # 431 on the stream, or ends the connection (hyper's CONTINUATION flood guard).
        client.conn.remote_settings[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] = 1 << 30
        big = [(f"x-big-{i}", "v" * 8192) for i in range(200)]
        stream = client.headers("/too-big", extra=big)
        client.flush()

        def answered(events):
            return any(getattr(e, "stream_id", None) == stream and isinstance(
                e, (h2.events.ResponseReceived, h2.events.StreamReset)) for e in events) \
                or goaway(events) is not None

        events = client.pump(5, until=answered)
        response = next((e for e in events if isinstance(e, h2.events.ResponseReceived)
                         and e.stream_id == stream), None)
        if response is not None:
            status = dict(response.headers)[b":status"]
            assert status in (b"431", b"400"), status
        else:
            assert answered(events) or client.closed, events
    finally:
        client.close()
    assert served(server)


# -- idle connections: the deadlines of HTTP/1.1 hold for HTTP/2 too -----------------

CERTS = ROOT / "certs"
TLS = ("--tls", f"{CERTS / 'localhost.pem'}:{CERTS / 'localhost.key'}")


def tls_h2(port: int) -> socket.socket:
    """A TLS connection that chose h2 by ALPN (handshake done, nothing sent)."""
    context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    context.set_alpn_protocols(["h2"])
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                               server_hostname="localhost")
    assert sock.selected_alpn_protocol() == "h2"
    return sock


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Reads (and drops) whatever comes until the peer closes; how long that took, or
    None if it was still open after `seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        sock.settimeout(max(0.01, seconds - (time.monotonic() - start)))
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except socket.timeout:
            return None
        except (ConnectionResetError, ssl.SSLError):
            return time.monotonic() - start
    return None


def answered(client: RawH2, stream: int):
    return lambda events: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream
                              for e in events)


def test_silent_tls_h2_connection_is_closed_after_the_header_timeout(serve):
    server = serve("guard_apps:echo", *TLS, "--header-timeout", "1", workers=1)
    sock = tls_h2(server.port)
    try:
        elapsed = closed_within(sock, 6)
    finally:
        sock.close()
    assert elapsed is not None, "a silent h2 connection was still open after 6 s"
    assert 0.5 <= elapsed <= 4, elapsed


def test_h2c_connection_with_no_request_is_closed_after_the_header_timeout(serve):
    """The preface and SETTINGS, PINGs answered, but no request: closed like a silent
    HTTP/1.1 connection."""
    server = serve("guard_apps:echo", "--header-timeout", "1", workers=1)
    client = RawH2(server.port)
    start = time.monotonic()
    try:
        client.pump(6)
    finally:
        client.close()
    assert client.closed, "an h2c connection with no request was still open after 6 s"
    assert 0.5 <= time.monotonic() - start <= 4


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_idle_h2_connection_gets_goaway_after_the_keep_alive_timeout(serve, tls):
    """One request, then only PINGs answered: GOAWAY (NO_ERROR) after --keep-alive, and
    the connection closes, as nginx's keepalive_timeout does for HTTP/2."""
    server = serve("guard_apps:echo", *(TLS if tls else ()), "--keep-alive", "1",
                   "--header-timeout", "30", workers=1)
    client = RawH2(server.port, sock=tls_h2(server.port) if tls else None)
    try:
        stream = client.headers("/one")
        client.flush()
        client.pump(5, until=answered(client, stream))
        assert answered(client, stream)(client.events), client.events
        start = time.monotonic()
        client.pump(6, until=lambda events: client.closed)
        elapsed = time.monotonic() - start
    finally:
        client.close()
    terminated = goaway(client.events)
    assert terminated is not None, "no GOAWAY for an idle h2 connection in 6 s"
    assert terminated.error_code == h2.errors.ErrorCodes.NO_ERROR, terminated
    assert client.closed, "GOAWAY sent but the connection stayed open"
    assert 0.5 <= elapsed <= 4, elapsed


def test_h2_stream_in_progress_is_not_cut_by_the_idle_timeouts(serve):
    """A response that takes 3 s outlives --keep-alive 1 and --header-timeout 1; the
    idle time counts from its end."""
    server = serve("guard_apps:echo", "--keep-alive", "1", "--header-timeout", "1",
                   workers=1)
    client = RawH2(server.port)
    try:
        stream = client.headers("/slow?sleep=3")
        client.flush()
        start = time.monotonic()
        client.pump(8, until=answered(client, stream))
        took = time.monotonic() - start
        assert answered(client, stream)(client.events), client.events
        assert goaway(client.events) is None, client.events
        assert not client.closed
        assert took >= 2.5, took
        idle_start = time.monotonic()
        client.pump(6, until=lambda events: client.closed)
        assert client.closed and goaway(client.events) is not None
        assert 0.5 <= time.monotonic() - idle_start <= 4
    finally:
        client.close()


def test_idle_h2_connections_do_not_keep_others_out(serve):
    """--max-connections 2, both held by silent TLS h2 connections: a third client is
    served once they are closed for their silence."""
    server = serve("guard_apps:echo", *TLS, "--max-connections", "2",
                   "--header-timeout", "1", workers=1)
    silent = [tls_h2(server.port), tls_h2(server.port)]
    try:
        context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
        with httpx.Client(verify=context, timeout=8) as other:
            start = time.monotonic()
            assert other.get(f"https://localhost:{server.port}/other").status_code == 200
            assert time.monotonic() - start <= 6
    finally:
        for sock in silent:
            sock.close()
