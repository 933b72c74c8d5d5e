"""The test kit: waiting for something observable, talking HTTP with http.client, and
watching the server's processes. One copy of each helper, imported by the tests (the
raw-socket client is `rawhttp`, the running server `conftest.Server`)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from conftest import APPS, BINARY, alive, children_of


def eventually(predicate, timeout: float = 15.0, what: str = "the condition",
               interval: float = 0.05):
    """Polls `predicate` until it returns something true, and returns that; fails with
    `what` named once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached in {timeout}s (last: {value!r})")
        time.sleep(interval)


# -- rwsgi run to completion ------------------------------------------------------------


def run(*args: str, timeout: float = 15.0, env: dict | None = None, cwd=None):
    """Runs rwsgi to completion; returns (exit code, stdout + stderr)."""
    full_env = dict(os.environ, PYTHONPATH=str(APPS), PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    proc = subprocess.run([str(BINARY), *args], capture_output=True, text=True,
                          errors="replace", timeout=timeout, env=full_env, cwd=cwd)
    return proc.returncode, proc.stdout + proc.stderr


def clean_env(**extra: str) -> dict:
    """The test's environment without any rwsgi (or gunicorn) setting inherited from
    outside, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RWSGI_", "GUNICORN_")) and k != "FORWARDED_ALLOW_IPS"}
    env.update({"PYTHONPATH": str(APPS), "PYTHONUNBUFFERED": "1", **extra})
    return env


def rwsgi(*args: str, cwd=None, **env: str) -> subprocess.CompletedProcess:
    """Runs rwsgi to completion in a clean environment (plus `env`)."""
    return subprocess.run([str(BINARY), *args], cwd=cwd, env=clean_env(**env),
                          capture_output=True, text=True, timeout=60)


# -- HTTP over http.client --------------------------------------------------------------


def fetch(port: int, path: str = "/", method: str = "GET", body: bytes | None = None,
          headers: dict | None = None, timeout: float = 30.0
          ) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a connection of its own: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def request(port: int, path: str = "/", method: str = "GET", body: bytes | None = None,
            headers: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """One request on a connection of its own: (status, body)."""
    status, _, answer = fetch(port, path, method, body, headers, timeout)
    return status, answer


def get(port: int, path: str = "/", timeout: float = 15.0) -> tuple[int, bytes]:
    """GET `path`: (status, body)."""
    return request(port, path, timeout=timeout)


class Background:
    """One GET in a thread; `.result` is (status, body) or the exception raised."""

    def __init__(self, port: int, path: str, timeout: float = 20.0):
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(port, path, timeout), daemon=True)
        self.thread.start()

    def _run(self, port, path, timeout):
        try:
            self.result = get(port, path, timeout)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.result = exc

    def join(self, timeout: float = 20.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "request still running"
        return self.result


def get_json(port: int, path: str = "/", timeout: float = 15.0):
    """GET `path`, which must answer 200 with JSON: the value."""
    status, body = get(port, path, timeout)
    assert status == 200, body
    return json.loads(body)


# -- processes --------------------------------------------------------------------------


BOOT_WORKER = re.compile(r"Booting worker with pid: (\d+)")


def worker_pids(server) -> list[int]:
    """Workers of `server` that are alive now (the master's children it logged as workers)."""
    booted = {int(p) for p in BOOT_WORKER.findall(server.log)}
    return [p for p in children_of(server.pid) if p in booted and alive(p)]


def wait_workers(server, count: int, timeout: float = 10.0) -> list[int]:
    """Waits until `server` has exactly `count` live workers; returns their pids."""
    try:
        return eventually(lambda: len(pids := worker_pids(server)) == count and pids,
                          timeout, f"{count} workers")
    except AssertionError:
        raise AssertionError(f"expected {count} workers, have {worker_pids(server)}:\n"
                             f"{server.log}") from None


def comm(pid: int) -> str:
    """A process's name (its title's role once it has set it); "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def workers_of(master: int) -> list[int]:
    return [pid for pid in children_of(master) if comm(pid) == "rwsgi-worker"]


def fronts_of(master: int) -> list[int]:
    return [pid for pid in children_of(master) if comm(pid) == "rwsgi-front"]


def stop_pid(pid: int):
    """Stops a master we started (through our server): TERM, then KILL."""
    if not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    try:
        eventually(lambda: not alive(pid), timeout=15, what=f"pid {pid} gone")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
