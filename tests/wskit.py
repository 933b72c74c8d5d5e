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


class RawSocket:
    """One WebSocket opened by hand."""

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

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}: {self.buf!r}")
            self.buf += chunk
        head, self.buf = self.buf.split(marker, 1)
        return head

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed with {len(self.buf)} of {n} bytes")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True,
             rsv: int = 0):
        """Sends one frame as the client."""
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
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 65536 \
                else _mask_fast(payload, key)
            header += key
        self.sock.sendall(header + payload)

    def recv(self) -> tuple[bool, int, bytes]:
        """The next frame from the server: (fin, opcode, payload); servers never mask."""
        b0, b1 = self._exactly(2)
        assert b1 & 0x80 == 0, "a server frame was masked"
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

    def at_eof(self) -> bool:
        """Whether the server closed the connection (after what is buffered)."""
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self):
        self.sock.close()


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    whole = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(whole, "big")).to_bytes(
        len(payload), "big")


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()
