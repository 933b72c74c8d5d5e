"""The master's signals under a steady load: HUP reloads the code (and survives code that
does not load), USR2 + WINCH + TERM upgrade the binary (and roll back), a storm of
HUP/TTIN/TTOU leaves a consistent state, and a killed front tier never refuses a
connection. Every load here is counted: zero failures is the bar."""

from __future__ import annotations

import http.client
import os
import random
import re
import signal
import socket
import threading
import time
from pathlib import Path

from conftest import Server, alive, children_of
from kit import eventually, fronts_of, stop_pid, workers_of

RELOAD_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}


class Load:
    """Clients sending GET / until stopped; every answer and every failure is kept."""

    def __init__(self, port: int, threads: int = 3, keep_alive: bool = False):
        self.port = port
        self.keep_alive = keep_alive
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _client(self):
        conn = None
        while not self._done.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read().decode(errors="replace")
                with self._lock:
                    if response.status == 200:
                        self.answers.append(body)
                    else:
                        self.failures.append(f"{response.status} {body[:100]}")
                if not self.keep_alive or response.getheader("connection") == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as err:
                with self._lock:
                    self.failures.append(repr(err))
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.005)
        if conn is not None:
            conn.close()

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_for(self, predicate, timeout: float = 15.0) -> str:
        """Waits for an answer (given after now) that satisfies `predicate`."""
        start = self.count()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for answer in self.answers[start:]:
                    if predicate(answer):
                        return answer
            time.sleep(0.02)
        raise AssertionError(f"no matching answer in {timeout}s; last: {self.answers[-3:]}")

    def next(self, n: int = 20, timeout: float = 15.0) -> list[str]:
        """The next `n` answers (given after now)."""
        start = self.count()
        eventually(lambda: self.count() >= start + n, timeout, f"{n} more answers")
        with self._lock:
            return self.answers[start:]

    def stop(self) -> list[str]:
        self._done.set()
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive(), "a client is stuck"
        return self.failures


def write_version(directory: Path, version: str):
    (directory / "reload_version.py").write_text(f"VERSION = {version!r}\n")


def last_front(server: Server) -> int:
    """The front tier the master started last, as it logged it."""
    return int(re.findall(r"Booting front tier with pid: (\d+)", server.log)[-1])


def reload_server(serve, tmp_path, *args, workers=2, **kwargs) -> Server:
    write_version(tmp_path, "v1")
    return serve("reload_app:app", "--pythonpath", str(tmp_path), *args, workers=workers,
                 env=RELOAD_ENV, **kwargs)


# -- HUP ------------------------------------------------------------------------------


def test_hup_loads_new_code_under_load_without_a_failure(serve, tmp_path):
    server = reload_server(serve, tmp_path, workers=2)
    old_workers = eventually(lambda: len(workers_of(server.pid)) == 2 and workers_of(server.pid))
    front = fronts_of(server.pid)
    load = Load(server.port, threads=2, keep_alive=True)
    more_load = Load(server.port, threads=1, keep_alive=False)
    try:
        load.wait_for(lambda a: a.startswith("v1"))
        write_version(tmp_path, "v2")
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"Reload done")
        answer = load.wait_for(lambda a: a.startswith("v2"))
        # Once the reload is done, only the new code answers.
        answers = load.next()
        assert all(a.startswith("v2") for a in answers), answers
    finally:
        failures = load.stop() + more_load.stop()
    assert not failures, failures[:5]
    new_workers = eventually(lambda: len(workers_of(server.pid)) == 2 and workers_of(server.pid))
    assert not set(new_workers) & set(old_workers)
    assert int(answer.split()[1]) in new_workers, server.log[-5000:]
    assert fronts_of(server.pid) == front, "the front tier stayed up"
    assert server.log.count("Booting front tier") == 1, server.log


def test_hup_with_code_that_does_not_load_keeps_the_old_workers(serve, tmp_path):
    server = reload_server(serve, tmp_path, workers=2)
    load = Load(server.port, threads=2)
    try:
        load.wait_for(lambda a: a.startswith("v1"))
        (tmp_path / "reload_version.py").write_text("VERSION = 'v2'\ndef broken(:\n")
        server.signal(signal.SIGHUP)
        log = server.wait_for_log(r"Reload failed")
        assert log.count("SyntaxError") == 1 and log.count("Traceback") == 1, log  # once
        answers = load.next()
        assert all(a.startswith("v1") for a in answers)
        assert server.proc.poll() is None
        # Fixed code loads on the next HUP.
        write_version(tmp_path, "v3")
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"Reload done")
        load.wait_for(lambda a: a.startswith("v3"))
    finally:
        failures = load.stop()
    assert not failures, failures[:5]


def test_hup_tells_systemd_reloading_then_ready(tmp_path):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(15)
    write_version(tmp_path, "v1")
    server = Server("reload_app:app", "--pythonpath", str(tmp_path), workers=1,
                    env={"NOTIFY_SOCKET": address, **RELOAD_ENV})
    try:
        assert "READY=1" in listener.recv(4096).decode().splitlines()
        server.signal(signal.SIGHUP)
        reloading = listener.recv(4096).decode().splitlines()
        assert "RELOADING=1" in reloading, reloading
        usec = [line for line in reloading if line.startswith("MONOTONIC_USEC=")]
        assert usec and int(usec[0].split("=")[1]) > 0, reloading
        assert "READY=1" in listener.recv(4096).decode().splitlines()
    finally:
        server.stop()
        listener.close()


# -- USR2 / WINCH ---------------------------------------------------------------------


def new_master_of(server: Server) -> int:
    """The new master the old one started, as the old one logged it."""
    log = server.wait_for_log(r"Started a new master \(pid: \d+\)")
    return int(re.findall(r"Started a new master \(pid: (\d+)\)", log)[-1])


def upgrade(server: Server, workers: int) -> int:
    """USR2 to `server`; returns the new master once its workers run."""
    server.signal(signal.SIGUSR2)
    new = new_master_of(server)
    server.wait_for_log(rf"Listening at: \S+ \({new}\)")
    eventually(lambda: len(workers_of(new)) == workers, what="the new master's workers")
    return new


def test_usr2_winch_term_upgrades_without_a_failed_request(serve, tmp_path):
    pidfile = tmp_path / "rwsgi.pid"
    server = reload_server(serve, tmp_path, "--pid", str(pidfile), workers=2)
    load = Load(server.port, threads=3)
    new = None
    try:
        load.wait_for(lambda a: a.startswith("v1"))
        write_version(tmp_path, "v2")
        new = upgrade(server, workers=2)
        load.wait_for(lambda a: a.startswith("v2"))  # both masters serve
        assert pidfile.read_text().strip() == str(new)
        assert Path(f"{pidfile}.oldbin").read_text().strip() == str(server.pid)
        title = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert b"master (old)" in title, title
        # WINCH: the old master's front tier and workers go; the old master stays.
        server.signal(signal.SIGWINCH)
        eventually(lambda: set(children_of(server.pid)) == {new}, what="the old children gone")
        answers = load.next()
        assert all(a.startswith("v2") for a in answers)
        assert {int(a.split()[1]) for a in answers} <= set(workers_of(new))
        # TERM: the old master ends; the new one serves on.
        server.signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
        answers = load.next()
    finally:
        failures = load.stop()
        if new is not None:
            stop_pid(new)
    assert not failures, failures[:5]
    assert not pidfile.exists() or pidfile.read_text().strip() != str(server.pid)


def test_new_master_stopped_rolls_back_to_the_old_one(serve, tmp_path):
    pidfile = tmp_path / "rwsgi.pid"
    server = reload_server(serve, tmp_path, "--pid", str(pidfile), workers=1)
    load = Load(server.port, threads=2)
    new = None
    try:
        new = upgrade(server, workers=1)
        server.signal(signal.SIGWINCH)
        eventually(lambda: set(children_of(server.pid)) == {new}, what="the old children gone")
        # The new master is stopped: the old one serves again and takes its pid file back.
        os.kill(new, signal.SIGTERM)
        server.wait_for_log(r"The new master .* carries on")
        eventually(lambda: len(workers_of(server.pid)) == 1, what="the old master's worker")
        answers = load.next()
        assert {int(a.split()[1]) for a in answers} <= set(workers_of(server.pid))
        eventually(lambda: pidfile.exists() and pidfile.read_text().strip() == str(server.pid),
                   what="the pid file back")
        assert not Path(f"{pidfile}.oldbin").exists()
    finally:
        failures = load.stop()
        if new is not None:
            stop_pid(new)
    assert not failures, failures[:5]


def test_winch_without_a_new_master_is_ignored(serve):
    server = serve("basic:hello", workers=1)
    server.signal(signal.SIGWINCH)
    server.wait_for_log(r"Ignoring SIGWINCH")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200
    assert len(children_of(server.pid)) == 2


# -- a storm of signals ---------------------------------------------------------------


def test_a_storm_of_hup_ttin_ttou_leaves_a_consistent_state(serve, tmp_path):
    server = reload_server(serve, tmp_path, workers=2)
    load = Load(server.port, threads=2, keep_alive=True)
    rng = random.Random(4)
    try:
        for _ in range(300):
            server.signal(rng.choice([signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU]))
            time.sleep(0.005)  # ~200 a second
        # Whatever the kernel merged, the master's last word on the count is the truth.
        def state():
            log = server.log
            counts = re.findall(r"workers: (\d+)", log)
            want = int(counts[-1]) if counts else 2
            reloads = log.count("Reloading:")
            finished = log.count("Reload done") + log.count("Reload failed")
            return want, reloads, finished, sorted(workers_of(server.pid))

        def settled():
            # The same state for two seconds: no signal left in the master's pipe, no
            # reload under way, and exactly the workers it wants, all of one generation.
            first = state()
            want, reloads, finished, workers = first
            if len(workers) != want or reloads != finished or reloads == 0:
                return None
            time.sleep(2)
            return state() == first and first

        want, _, _, workers = eventually(settled, timeout=90, what="a settled worker count")
        answers = load.next()
        assert {int(a.split()[1]) for a in answers} <= set(workers)
    finally:
        failures = load.stop()
    assert not failures, failures[:5]
    assert server.log.count("Booting front tier") == 1
    server.signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    assert not [pid for pid in workers if alive(pid)]


# -- the front tier killed ------------------------------------------------------------


def test_killed_front_tier_never_refuses_a_connection(serve):
    server = serve("basic:hello", workers=1)
    refused: list[str] = []
    connected = [0]
    done = threading.Event()

    def connect():
        while not done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=5):
                    connected[0] += 1
            except OSError as err:
                refused.append(repr(err))
            time.sleep(0.002)  # a client connecting ~500 times a second

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    try:
        for round_ in range(1, 4):
            server.wait_for_log(r"Booting front tier with pid: ", count=round_)
            os.kill(last_front(server), signal.SIGKILL)
            server.wait_for_log(r"Booting front tier with pid: ", count=round_ + 1)
            served = connected[0]
            eventually(lambda: connected[0] >= served + 20, what="connections to the new front tier")
    finally:
        done.set()
        thread.join(10)
    assert connected[0] > 50
    assert not refused, refused[:5]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"Hello, World!\n"


# -- HUP re-reads the configuration -----------------------------------------------------


def test_hup_rereads_the_config_file(serve, tmp_path):
    write_version(tmp_path, "v1")
    config = tmp_path / "rwsgi.toml"
    config.write_text("workers = 1\nkeep_alive = 5\n")
    server = serve("reload_app:app", "--pythonpath", str(tmp_path), workers=None, cwd=tmp_path,
                   env=RELOAD_ENV)
    eventually(lambda: len(workers_of(server.pid)) == 1, what="one worker")
    load = Load(server.port, threads=2)
    try:
        # A mistake in the file: the HUP keeps what runs.
        config.write_text("workers = 2\nwokers = 3\n")
        old = workers_of(server.pid)
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"the configuration is not usable.*wokers")
        server.wait_for_log(r"Reload done")
        eventually(lambda: not set(old) & set(workers_of(server.pid)), what="the old worker retired")
        assert len(workers_of(server.pid)) == 1
        # Fixed: the workers' settings apply, the front tier's wait for a restart.
        config.write_text("workers = 2\nkeep_alive = 9\n")
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"HUP: 2 workers \(was 1\)")
        server.wait_for_log(r"apply only after a restart or USR2.*front tier")
        eventually(lambda: len(workers_of(server.pid)) == 2, what="two workers")
        # TTIN then a HUP that leaves the count alone: the TTIN stays.
        server.signal(signal.SIGTTIN)
        old = eventually(lambda: len(workers_of(server.pid)) == 3 and workers_of(server.pid),
                         what="three workers")
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"Reload done", count=3)
        eventually(lambda: not set(old) & set(workers_of(server.pid)), what="the old workers retired")
        # Three, once the master has reaped what it told to go: a worker still exiting
        # (or exited and not yet reaped, on a loaded machine) is listed for a moment.
        eventually(lambda: len(workers_of(server.pid)) == 3, what="three workers after the HUP")
    finally:
        failures = load.stop()
    assert not failures, failures[:5]
