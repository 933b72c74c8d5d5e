"""A tiny HTTP/1.1 client over a raw socket, for requests http.client would not send
as written (odd paths) and for reading a chunked body piece by piece."""

from __future__ import annotations

import socket


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    """What the server sends, after `data`, until `marker` has come (all of it read)."""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data[-300:]!r}"
        data += chunk
    return data


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return ", ".join(values) if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Connection:
    """One connection; the request is written as given, byte for byte."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, method: str, target: str, headers: dict | None = None):
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError("connection closed mid-line")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("connection closed mid-body")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_head(self) -> tuple[int, list[tuple[str, str]]]:
        status = int(self._line().split()[1])
        headers = []
        while True:
            line = self._line()
            if not line:
                return status, headers
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))

    def read_chunk(self) -> bytes:
        """The next chunk of a chunked body; b"" at its end."""
        size = int(self._line().split(b";")[0], 16)
        if size == 0:
            while self._line():
                pass
            return b""
        data = self._exact(size)
        self._line()
        return data

    def read_response(self, method: str = "GET") -> Response:
        status, headers = self.read_head()
        lower = {k.lower(): v for k, v in headers}
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif lower.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while chunk := self.read_chunk():
                body += chunk
        elif "content-length" in lower:
            body = self._exact(int(lower["content-length"]))
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return Response(status, headers, body)


def request(port: int, method: str, target: str, headers: dict | None = None,
            timeout: float = 10.0) -> Response:
    with Connection(port, timeout) as conn:
        conn.send(method, target, headers)
        return conn.read_response(method)
