"""Shared fixtures: start the real rwsgi binary and talk to it over real sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
BINARY = Path(os.environ.get("RWSGI_BINARY", ROOT / "target" / "release" / "rwsgi"))

LISTENING = re.compile(r"Listening at: (\S+) \((\d+)\)")
# The master's line once every worker has booted (its phases: README, Logs).
READY = re.compile(r"Ready: (\d+) workers")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One running `rwsgi serve`: its process, its address and everything it logged."""

    def __init__(self, app: str | None, *args: str, workers: int | None = 2, bind: str | None = None,
                 env: dict | None = None, cwd: str | os.PathLike | None = None,
                 wait: bool = True, port: int | None = None, wrap: list[str] | None = None,
                 binary: str | os.PathLike = BINARY, **popen):
        # Without a bind: port 0, and the port rwsgi picked is read from its log (a port
        # found free and closed before rwsgi binds it could be taken meanwhile).
        self._port = port
        self._port_from_log = bind is None
        if bind is None:
            bind = "127.0.0.1:0"
        self.bind = bind
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        full_env["PYTHONPATH"] = str(APPS)
        if env:
            full_env.update(env)
        binding = ["-b", bind] if bind else []  # bind="": no --bind at all
        # workers=None, app=None: no -w, no APP (a config file gives them).
        counting = ["-w", str(workers)] if workers is not None else []
        self.argv = [*(wrap or []), str(binary), "serve", *binding, *counting, *args,
                     *([app] if app is not None else [])]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=full_env, cwd=cwd, text=True, errors="replace",
                                     **popen)
        self._lines: list[str] = []
        self._closed = False  # its output ended: nothing more will be logged
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait:
            self.wait_ready()

    # -- log -----------------------------------------------------------------------
    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def log(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until `pattern` (a regex) appears `count` times in the log; return the log."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = "".join(self._lines)
                if len(regex.findall(text)) >= count:
                    return text
                remaining = deadline - time.monotonic()
                if self._closed:
                    raise AssertionError(f"{pattern!r} not seen {count}x before rwsgi's output "
                                         f"ended (exit code {self.proc.poll()}); log:\n{text}")
                if remaining <= 0:
                    raise AssertionError(f"{pattern!r} not seen {count}x in {timeout}s; log:\n{text}")
                self._cond.wait(min(remaining, 0.2))

    def wait_ready(self, timeout: float = 15.0):
        """Wait until every worker has booted: the master's `Ready: N workers` line (the
        port answers earlier, while workers still boot)."""
        self.wait_for_log(READY.pattern, timeout)

    def _port_answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    @property
    def port(self) -> int | None:
        """The port it listens on: given, or the one its log says it bound."""
        if self._port is None and self._port_from_log:
            address = LISTENING.search(self.wait_for_log(LISTENING.pattern))[1]
            self._port = int(address.rsplit(":", 1)[1])
        return self._port

    @port.setter
    def port(self, value: int | None):
        self._port = value

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- life ----------------------------------------------------------------------
    def signal(self, sig: int):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self):
        """Stop the server we started (only that pid), harder if it does not listen."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


@pytest.fixture
def serve():
    """Factory fixture: serve(app, *flags, workers=N) -> Server; all stopped at the end."""
    started: list[Server] = []

    def start(app: str, *args: str, **kwargs) -> Server:
        server = Server(app, *args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; it only waits for its parent to reap it.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="session", autouse=True)
def _binary_built():
    if not BINARY.exists():
        pytest.exit(f"{BINARY} not found: run `cargo build --release` first", returncode=2)
