"""The error log: --error-logfile (every process's lines and Python's tracebacks in one
file), USR1 reopening it after logrotate moved it, and --log-level."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BINARY, Server, children_of, free_port
from kit import comm, eventually, get


def wait_for_text(path: Path, text: str, timeout: float = 10.0) -> str:
    read = lambda: path.read_text() if path.exists() else ""  # noqa: E731
    try:
        return eventually(lambda: text in (content := read()) and content, timeout,
                          f"{text!r} in {path}")
    except AssertionError:
        raise AssertionError(f"{text!r} not in {path} after {timeout}s:\n{read()}") from None


class FileLoggingServer(Server):
    """A server whose log goes to a file: ready once its port answers. Its address is
    not on its standard output (nor anywhere at --log-level warning), so it is bound to
    a port found free beforehand."""

    def __init__(self, *args, **kwargs):
        port = free_port()
        super().__init__(*args, bind=f"127.0.0.1:{port}", port=port, **kwargs)

    def wait_ready(self, timeout: float = 15.0):
        def answers():
            assert self.proc.poll() is None, self.log
            return self._port_answers()
        eventually(answers, timeout, f"port {self.port} answering\n{self.log}")


def start_logging_to(path: Path, *args: str, workers: int = 2) -> Server:
    server = FileLoggingServer("logs_app:app", "--error-logfile", str(path), *args,
                               workers=workers)
    wait_for_text(path, "Listening at:")
    return server


def settled_children(server: Server, count: int) -> list[int]:
    """The master's children once there are `count` of them, each titled (booted)."""
    def settled():
        children = children_of(server.pid)
        names = [comm(pid) for pid in children]
        return len(children) == count and "rwsgi-master" not in names and children

    return eventually(settled, 15, f"{count} children, each titled")


def workers_among(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}/comm").read_text().strip() == "rwsgi-worker"]


def test_error_logfile_takes_every_process_and_python_traceback(tmp_path):
    log = tmp_path / "error.log"
    server = start_logging_to(log)
    try:
        assert get(server.port, "/boom")[0] == 500
        assert get(server.port, "/errors")[0] == 200
        content = wait_for_text(log, "a line on wsgi.errors")
        wait_for_text(log, "RuntimeError: boom for the error log")
        assert "Booting worker with pid" in content  # the master's lines
        assert "Traceback (most recent call last)" in log.read_text()  # the worker's
    finally:
        server.stop()
    content = log.read_text()
    assert "Shutting down: Master" in content
    assert "Listening at" not in server.log  # nothing went to stderr/stdout


def test_usr1_reopens_the_log_file_after_it_was_moved(tmp_path):
    log = tmp_path / "error.log"
    server = start_logging_to(log)
    try:
        front_and_workers = settled_children(server, 3)
        workers = workers_among(front_and_workers)
        assert len(workers) == 2
        rotated = tmp_path / "error.log.1"
        log.rename(rotated)
        server.signal(signal.SIGUSR1)
        wait_for_text(log, "Handling signal: usr1")  # the master reopened it
        # Each child reopens it too: a traceback from any worker lands in the new file.
        deadline = time.monotonic() + 10
        for _ in range(6):
            assert get(server.port, "/boom")[0] == 500
        content = wait_for_text(log, "RuntimeError: boom for the error log")
        assert content.count("RuntimeError: boom") == 6, content
        assert "RuntimeError" not in rotated.read_text()
        assert time.monotonic() < deadline
        # Nobody died of the signal.
        assert sorted(children_of(server.pid)) == sorted(front_and_workers)
    finally:
        server.stop()
    content = log.read_text()
    assert "Shutting down: Master" in content
    # Every child wrote its last words to the new file: the front tier, both workers.
    assert "Stopping gracefully" in content, content
    for pid in workers:
        assert f"Worker exiting (pid: {pid})" in content, content
    assert "Stopping gracefully" not in rotated.read_text()


def test_usr1_with_the_log_on_stderr_changes_nothing(serve):
    server = serve("logs_app:app", workers=1)
    children = settled_children(server, 2)
    server.signal(signal.SIGUSR1)
    server.wait_for_log(r"no log file to reopen")
    assert get(server.port, "/")[0] == 200
    assert sorted(children_of(server.pid)) == sorted(children)


def test_log_level_warning_drops_info_lines(tmp_path):
    log = tmp_path / "error.log"
    server = FileLoggingServer("logs_app:app", "--error-logfile", str(log), "--log-level",
                               "warning", workers=1)
    try:
        assert get(server.port, "/boom")[0] == 500
        content = wait_for_text(log, "RuntimeError")
        assert "[INFO]" not in content, content
    finally:
        server.stop()


def test_bad_log_flags_are_named(tmp_path):
    bad_level = subprocess.run([str(BINARY), "serve", "--log-level", "loud", "logs_app:app"],
                               capture_output=True, text=True, timeout=30)
    assert bad_level.returncode == 2 and "--log-level" in bad_level.stderr, bad_level.stderr
    nowhere = tmp_path / "missing" / "error.log"
    bad_file = subprocess.run([str(BINARY), "serve", "--error-logfile", str(nowhere),
                               "logs_app:app"], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parent / "apps")})
    assert bad_file.returncode == 1, bad_file.stderr
    assert "--error-logfile" in bad_file.stderr and str(nowhere) in bad_file.stderr


def test_an_app_error_names_the_request_id(serve):
    server = serve("logs_app:app", workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/boom", headers={"X-Request-Id": "trace-7"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 500 and response.getheader("x-request-id") == "trace-7"
    server.wait_for_log(r"Error handling request /boom \(request id trace-7\)")


def get_with_id(port: int, path: str, request_id: str | None) -> tuple[int, str, bytes]:
    """GET `path`, sending `request_id` as X-Request-Id when given: the status, the id
    the response names and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", path, headers={"X-Request-Id": request_id} if request_id else {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, response.getheader("x-request-id"), body


def expected_id(sent: str | None, answered: str) -> str:
    """The id the response names: the one sent, or a new one (32 hex digits)."""
    if sent:
        assert answered == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", answered), answered
    return answered


@pytest.mark.parametrize("sent", ["trace-502", None])
def test_a_worker_killed_mid_request_logs_its_502_with_the_request(serve, sent):
    server = serve("logs_app:app", workers=1)
    status, answered, _ = get_with_id(server.port, "/crash", sent)
    assert status == 502
    request_id = expected_id(sent, answered)
    server.wait_for_log(r"worker died while handling a request: 502 for /crash "
                        rf"\(request id {re.escape(request_id)}\)")


@pytest.mark.parametrize("sent", ["trace-504", None])
def test_a_timed_out_request_logs_its_504_with_the_request(serve, sent):
    server = serve("logs_app:app", "--timeout", "1", workers=1)
    status, answered, _ = get_with_id(server.port, "/hang", sent)
    assert status == 504
    request_id = expected_id(sent, answered)
    server.wait_for_log(r"worker timed out on a request \(--timeout\): 504 for /hang "
                        rf"\(request id {re.escape(request_id)}\)")


@pytest.mark.parametrize("sent", ["trace-app", None])
def test_the_app_sees_the_request_id_in_its_environ(serve, sent):
    server = serve("logs_app:app", workers=1)
    status, answered, body = get_with_id(server.port, "/id", sent)
    assert status == 200
    assert body.decode() == expected_id(sent, answered)
    # The worker's own lines name the same id (it comes in the request head).
    status, answered, _ = get_with_id(server.port, "/boom", sent)
    assert status == 500
    server.wait_for_log(rf"Error handling request /boom \(request id "
                        rf"{re.escape(expected_id(sent, answered))}\)")
