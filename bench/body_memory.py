"""Memory and disk the front tier spends on bodies held for clients (issue 13, items 4
and 7), for one rwsgi binary:

  h2-window-0   2 HTTP/2 connections with SETTINGS_INITIAL_WINDOW_SIZE 0, 128 streams
                each asking for a 4 MiB response, --send-timeout 10: the front tier's
                RSS before, with the streams answered, 5 s after the clients left, and
                whether the connections were still open 25 s on.
  h2-bodies     2 HTTP/2 connections x 128 streams each sending 1 MB of a body never
                finished: RSS before and once the bodies are taken.
  slow-reader   one client reading nothing of a 2 GiB streamed response for 10 s: bytes
                in $TMPDIR's spill files, and RSS.
  no-tmpdir     $TMPDIR not writable, one client reading nothing of a 200 MiB response
                for 5 s: RSS.

Talks only to 127.0.0.1, stops by itself (about 90 s), needs the `h2` package (tests'
requirements). The app is tests/apps/guard_apps.py (/pattern?mib=N).

Usage: python3 bench/body_memory.py BINARY [SCENARIO...]
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, *flags, env=None):
        self.port = free_port()
        full = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "apps"), **(env or {}))
        self.proc = subprocess.Popen(
            [binary, "serve", "-b", f"127.0.0.1:{self.port}", "-w", "2", *flags,
             "guard_apps:app"], env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        self.front = self._front()

    def _front(self) -> int:
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:
            if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"rwsgi: front"):
                return int(child)
        raise RuntimeError("no front tier")

    def rss(self) -> float:
        for line in Path(f"/proc/{self.front}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def spilled(self, tmpdir) -> float:
        total = 0
        for fd in Path(f"/proc/{self.front}/fd").iterdir():
            try:
                if os.readlink(fd).startswith(str(tmpdir)):
                    total += os.stat(fd).st_size
            except OSError:
                pass
        return total / MIB

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class H2:
    def __init__(self, port, settings=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.events, self.closed = [], False

    def pump(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.closed:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                break
            self.events += self.conn.receive_data(data)
            try:
                self.sock.sendall(self.conn.data_to_send())
            except OSError:
                self.closed = True

    def request(self, path, method="GET", end=True):
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", method), (":scheme", "http"),
                                        (":authority", "bench"), (":path", path)],
                               end_stream=end)
        return stream


def h2_window_0(binary):
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(binary, "--threads", "8", "--send-timeout", "10", env={"TMPDIR": tmp})
        try:
            before = server.rss()
            clients = [H2(server.port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
                       for _ in range(2)]
            for client in clients:
                for _ in range(128):
                    client.request("/pattern?mib=4")
                client.sock.sendall(client.conn.data_to_send())
            start = time.monotonic()
            peak = before
            while time.monotonic() - start < 15:
                for client in clients:
                    client.pump(0.2)
                peak = max(peak, server.rss())
            answered = server.rss()
            while time.monotonic() - start < 25:
                for client in clients:
                    client.pump(0.5)
            open_at_25 = sum(not c.closed for c in clients)
            for client in clients:
                client.sock.close()
            time.sleep(5)
            print(f"h2-window-0  before={before:.1f} MiB  peak={peak:.1f} MiB  "
                  f"answered={answered:.1f} MiB  open-at-25s={open_at_25}/2  "
                  f"5s-after-leaving={server.rss():.1f} MiB")
        finally:
            server.stop()


def h2_bodies(binary):
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(binary, env={"TMPDIR": tmp})
        try:
            before = server.rss()
            clients = [H2(server.port) for _ in range(2)]
            size = 1_000_000
            pending = {}
            for client in clients:
                for _ in range(128):
                    pending[(client, client.request("/echo", "POST", end=False))] = size
            piece = b"b" * 16384
            deadline = time.monotonic() + 30
            while pending and time.monotonic() < deadline:
                for (client, stream), left in list(pending.items()):
                    n = min(client.conn.local_flow_control_window(stream),
                            client.conn.max_outbound_frame_size, left)
                    if n > 0:
                        client.conn.send_data(stream, piece[:n])
                        pending[(client, stream)] = left - n
                        if left == n:
                            del pending[(client, stream)]
                for client in clients:
                    client.sock.sendall(client.conn.data_to_send())
                    client.pump(0.02)
            time.sleep(2)
            held = server.rss()
            for client in clients:
                client.sock.close()
            time.sleep(5)
            print(f"h2-bodies    before={before:.1f} MiB  bodies-taken={held:.1f} MiB  "
                  f"5s-after-leaving={server.rss():.1f} MiB  unsent={len(pending)}")
        finally:
            server.stop()


def slow_get(port, mib):
    """Asks for `mib` MiB on a connection with a small receive buffer, read by no one."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    s.sendall(f"GET /pattern?mib={mib} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    return s


def slow_reader(binary, seconds=10):
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(binary, env={"TMPDIR": tmp})
        try:
            before = server.rss()
            s = slow_get(server.port, 2048)
            time.sleep(seconds)
            print(f"slow-reader  spilled-after-{seconds}s={server.spilled(tmp):.0f} MiB  "
                  f"rss before={before:.1f} MiB after={server.rss():.1f} MiB")
            s.close()
        finally:
            server.stop()


def no_tmpdir(binary, seconds=5):
    with tempfile.TemporaryDirectory() as tmp:
        not_a_dir = Path(tmp) / "file"
        not_a_dir.write_bytes(b"")
        server = Server(binary, env={"TMPDIR": str(not_a_dir)})
        try:
            before = server.rss()
            s = slow_get(server.port, 200)
            time.sleep(seconds)
            print(f"no-tmpdir    rss before={before:.1f} MiB  after-{seconds}s={server.rss():.1f} MiB")
            s.close()
        finally:
            server.stop()


SCENARIOS = {"h2-window-0": h2_window_0, "h2-bodies": h2_bodies,
             "slow-reader": slow_reader, "no-tmpdir": no_tmpdir}

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for name in sys.argv[2:] or SCENARIOS:
        SCENARIOS[name](sys.argv[1])
