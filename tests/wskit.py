"""A raw WebSocket client over a socket, for the conformance tests: frames are built
and read byte by byte (RFC 6455 §5), so that a test can send what no client library
would (unmasked frames, bad UTF-8, control frames between fragments)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True,
          rsv: int = 0) -> bytes:
    """One client frame (§5.2), masked unless told otherwise."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, (0x80 if mask else 0) | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    else:
        header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
    if mask:
        key = os.urandom(4)
        payload = _mask_fast(payload, key)
        header += key
    return header + payload


class Frames:
    """Reads server frames from `buf`, filled by `_fill()`; sends through `_write()`."""

    buf = b""

    def _fill(self):
        raise NotImplementedError

    def _write(self, data: bytes):
        raise NotImplementedError

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True,
             rsv: int = 0):
        """Sends one frame as the client."""
        self._write(frame(opcode, payload, fin, mask, rsv))

    def recv(self) -> tuple[bool, int, bytes]:
        """The next frame from the server: (fin, opcode, payload); servers never mask."""
        b0, b1 = self._exactly(2)
        assert b1 & 0x80 == 0, "a server frame was masked"
        self.rsv1 = bool(b0 & 0x40)  # the last frame's: compressed (RFC 7692)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._exactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._exactly(8))
        return bool(b0 & 0x80), b0 & 0x0F, self._exactly(n)

    def recv_close(self) -> tuple[int | None, str]:
        """Reads frames up to the server's close frame: its code and reason."""
        while True:
            _, opcode, payload = self.recv()
            if opcode == 8:
                if not payload:
                    return None, ""
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


class RawSocket(Frames):
    """One WebSocket opened by hand over HTTP/1.1."""

    def __init__(self, port: int, path: str = "/", headers: bytes = b"", timeout: float = 10,
                 rcvbuf: int | None = None):
        self.sock = socket.socket()
        if rcvbuf:  # a small receive buffer: a client that does not read fills it soon
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
            + headers + b"\r\n")
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.head = head.decode("latin-1")
        if self.status == 101:
            expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
            assert expected in self.head, self.head

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed with {len(self.buf)} bytes unread")
        self.buf += chunk

    def _write(self, data: bytes):
        self.sock.sendall(data)

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(marker, 1)
        return head

    def at_eof(self) -> bool:
        """Whether the server closed the connection (after what is buffered)."""
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self):
        self.sock.close()


class H2Socket(Frames):
    """A WebSocket on an HTTP/2 stream (RFC 8441's extended CONNECT), driven by the h2
    package, over h2c (prior knowledge) or TLS with ALPN h2."""

    def __init__(self, port: int, path: str = "/", tls: bool = False,
                 headers: list[tuple[str, str]] | None = None, timeout: float = 10):
        import h2.config
        import h2.connection
        import h2.events
        import h2.settings
        self.events = h2.events
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            import ssl
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["h2"])
            sock = context.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self._flush()
        self.buf = b""
        self.ended = False
        self.status = None
        self.response_headers: dict[str, str] = {}
        code = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
        while self.conn.remote_settings.get(code) != 1:
            self._pump()
        self.connect_protocol = True
        self.stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.stream, [
            (":method", "CONNECT"), (":protocol", "websocket"),
            (":scheme", "https" if tls else "http"), (":path", path),
            (":authority", "localhost"), ("sec-websocket-version", "13"),
            *(headers or [])])
        self._flush()
        while self.status is None:
            self._pump()

    def _flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _pump(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the connection closed")
        for event in self.conn.receive_data(data):
            if isinstance(event, self.events.ResponseReceived):
                headers = dict(event.headers)
                self.status = int(headers[":status"])
                self.response_headers = headers
            elif isinstance(event, self.events.DataReceived):
                self.buf += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
            elif isinstance(event, (self.events.StreamEnded, self.events.StreamReset)):
                self.ended = True
        self._flush()

    def _fill(self):
        if self.ended:
            raise ConnectionError(f"the stream ended with {len(self.buf)} bytes unread")
        self._pump()

    def _write(self, data: bytes):
        # Within HTTP/2's frame size and flow-control window, waiting for the server's
        # WINDOW_UPDATEs.
        while data:
            room = min(self.conn.local_flow_control_window(self.stream),
                       self.conn.max_outbound_frame_size, len(data))
            if room == 0:
                self._pump()
                continue
            self.conn.send_data(self.stream, data[:room])
            data = data[room:]
            self._flush()

    def close(self):
        self.sock.close()


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    whole = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(whole, "big")).to_bytes(
        len(payload), "big")


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()
