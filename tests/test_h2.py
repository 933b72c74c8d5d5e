"""HTTP/2 abuse, with a raw h2 client: rapid reset (CVE-2023-44487), the advertised
limits, and an oversized header list. Each must cost the abuser its connection or its
stream, never the server its service to others."""

from __future__ import annotations

import socket
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx

from conftest import children_of


class RawH2:
    """A prior-knowledge HTTP/2 connection driven by hand."""

    def __init__(self, port: int, settings: dict | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        if settings:  # our SETTINGS, sent with the preface
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.flush()
        self.events: list = []
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
            except (ConnectionResetError, BrokenPipeError):
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            try:
                self.events += self.conn.receive_data(data)
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
