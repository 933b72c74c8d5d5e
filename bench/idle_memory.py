"""Memory of the front tier per idle connection, and whether it comes back.

Starts rwsgi on 127.0.0.1 with bench/app.py, then, twice over (first N silent
connections, which connect and send nothing, then N idle keep-alive connections, each
of which made one GET and read its answer), opens the N connections, waits until the
front tier holds them all, reads its resident memory (VmRSS in /proc/PID/status) and
prints the cost per connection; then closes them, waits until the front tier has let
them all go, and reads the memory again SETTLE seconds later.

    python3 bench/idle_memory.py [BINARY] [--connections N] [--tls] [--settle S]

BINARY defaults to $RWSGI_BINARY, else target/release/rwsgi. --tls serves with the
test certificate in certs/ and opens TLS connections (each silent one has finished its
handshake). Output, one line per measurement:

    baseline rss=KiB
    silent open rss=KiB per_conn=KiB
    silent closed+10s rss=KiB ratio=R
    keepalive open rss=KiB per_conn=KiB
    keepalive closed+10s rss=KiB ratio=R

where ratio is that memory over the baseline. The script raises its own soft limit of
open files to the hard limit; rwsgi needs N descriptors more than it holds at rest, and
is started with --max-connections N+16 and long head and keep-alive timeouts so that
nothing is closed while it measures. Every wait is bounded; only the rwsgi it started
is stopped (SIGTERM to its pid, SIGKILL after 10 s).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
WAIT = 60.0  # the most any wait for the front tier takes


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds(pid: int, ok, what: str):
    deadline = time.monotonic() + WAIT
    while not ok(open_fds(pid)):
        if time.monotonic() > deadline:
            sys.exit(f"the front tier did not {what} within {WAIT:.0f} s")
        time.sleep(0.1)


class Rwsgi:
    """The rwsgi this script started; its front tier's pid from the log."""

    def __init__(self, binary: str, port: int, connections: int, tls: bool):
        argv = [binary, "serve", "-b", f"{HOST}:{port}", "-w", "1",
                "--max-connections", str(connections + 16), "--backlog", "4096",
                "--header-timeout", "600", "--keep-alive", "600"]
        if tls:
            argv += ["--tls", f"{ROOT / 'certs/localhost.pem'}:{ROOT / 'certs/localhost.key'}"]
        argv.append("app:app")
        self.proc = subprocess.Popen(argv, cwd=ROOT / "bench", stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.front = None
        deadline = time.monotonic() + 30
        # Both lines come within the first few of the log.
        listening = False
        while (self.front is None or not listening) and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            found = re.search(r"Booting front tier with pid: (\d+)", line)
            if found:
                self.front = int(found.group(1))
            listening = listening or "Listening at:" in line
        if self.front is None or not listening:
            self.stop()
            sys.exit("rwsgi did not start")
        # The rest of the log is read and dropped, so that rwsgi never blocks on it.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def connect(port: int, tls: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=10)
    if tls:
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    return sock


def get(sock: socket.socket):
    """One keep-alive GET; returns once its whole answer is read."""
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            sys.exit("rwsgi closed a keep-alive connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(4096)


def wait_for_port(port: int):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("rwsgi does not answer")


def phase(name: str, server: Rwsgi, port: int, n: int, tls, settle: float, baseline: int):
    at_rest = open_fds(server.front)
    socks = []
    for _ in range(n):
        sock = connect(port, tls)
        if name == "keepalive":
            get(sock)
        socks.append(sock)
    wait_fds(server.front, lambda fds: fds >= at_rest + n, "hold every connection")
    held = rss_kib(server.front)
    print(f"{name} open rss={held} per_conn={(held - baseline) / n:.1f}", flush=True)
    for sock in socks:
        sock.close()
    wait_fds(server.front, lambda fds: fds <= at_rest, "close every connection")
    time.sleep(settle)
    after = rss_kib(server.front)
    print(f"{name} closed+{settle:g}s rss={after} ratio={after / baseline:.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary", nargs="?", default=os.environ.get(
        "RWSGI_BINARY", str(ROOT / "target/release/rwsgi")))
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.connections + 64:
        sys.exit(f"the hard limit of open files ({hard}) is too low for {args.connections}")
    tls = None
    if args.tls:
        tls = ssl.create_default_context(cafile=str(ROOT / "certs/ca.pem"))

    print(f"binary={args.binary} connections={args.connections} tls={args.tls}")
    for name in ("silent", "keepalive"):
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        server = Rwsgi(args.binary, port, args.connections, args.tls)
        try:
            wait_for_port(port)
            # One request first, so that the baseline has the buffers of a served one.
            with connect(port, tls) as sock:
                get(sock)
            time.sleep(1)
            baseline = rss_kib(server.front)
            print(f"{name} baseline rss={baseline}", flush=True)
            phase(name, server, port, args.connections, tls, args.settle, baseline)
        finally:
            server.stop()

if __name__ == "__main__":
    main()
