"""The process model: workers that die, stop signals, a killed master, replaced workers.

Every test starts the real binary (conftest's `serve`) and only signals pids it started:
the master it spawned, or children that master forked for it (read from /proc).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from conftest import BINARY, alive, children_of
from kit import Background, eventually, fronts_of, get, wait_workers, worker_pids
from rawhttp import read_until_closed

SLEEP_BODY = b"x" * 200_000 + b"END"  # what proc_apps answers on /sleep


def answer(port: int, path: str):
    """(status, body), or None when the connection fails."""
    try:
        return get(port, path, timeout=5)
    except OSError:
        return None


def connect_refused(port: int) -> bool:
    """Whether a new connection is turned away: refused, or reset when the listener
    closes with it still in the backlog (both are the kernel's no)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True


# -- 1. a worker dies mid-request ---------------------------------------------------


def test_worker_exit_mid_request_gives_502_only_to_that_request(serve):
    server = serve("proc_apps:app", workers=2)
    before = set(wait_workers(server, 2))

    slow = Background(server.port, "/sleep?s=2")  # holds one worker for 2 s
    server.wait_for_log(r"/sleep under way")
    crash = Background(server.port, "/crash?after=0.2")  # lands on the other one
    crash_result = crash.join()
    slow_result = slow.join()

    assert isinstance(crash_result, tuple), f"crashing request: {crash_result!r}\n{server.log}"
    assert crash_result[0] == 502, crash_result
    assert isinstance(slow_result, tuple), slow_result
    assert slow_result == (200, SLEEP_BODY), slow_result[0]

    # The next requests succeed, served by a new worker.
    for _ in range(4):
        status, body = get(server.port, "/pid")
        assert status == 200
    after = set(wait_workers(server, 2))
    gone = before - after
    assert len(gone) == 1, (before, after)
    (dead,) = gone
    assert len(after - before) == 1
    assert int(body) in after

    # One log line tells of that worker's exit, with its pid and its status (code 1).
    server.wait_for_log(rf"\b{dead}\b.*(exit|code|status)")
    lines = [line for line in server.log.splitlines()
             if re.search(rf"\b{dead}\b", line) and re.search(r"exit|code|status|died", line)]
    assert len(lines) == 1, lines
    assert re.search(r"(exit|code|status)\D*\b1\b", lines[0]), lines[0]


# -- 2. stop signals -----------------------------------------------------------------


def test_sigterm_finishes_in_flight_request_then_exits_0(serve):
    server = serve("proc_apps:app", workers=2)
    wait_workers(server, 2)
    started = time.monotonic()
    slow = Background(server.port, "/sleep?s=2")
    server.wait_for_log(r"/sleep under way")
    server.signal(signal.SIGTERM)
    server.wait_for_log(r"Phase: serving -> stopping \(graceful\)")
    time.sleep(0.5)  # the point: the master must not exit while the request runs
    assert server.proc.poll() is None, f"master exited with a request in flight:\n{server.log}"

    result = slow.join()
    assert isinstance(result, tuple), f"{result!r}\n{server.log}"
    status, body = result
    assert status == 200
    assert body == SLEEP_BODY
    assert time.monotonic() - started >= 2.0

    assert server.wait(10) == 0, server.log
    assert connect_refused(server.port)


def test_sigterm_refuses_new_connections_while_draining(serve):
    server = serve("proc_apps:app", workers=2)
    wait_workers(server, 2)
    slow = Background(server.port, "/sleep?s=2")
    server.wait_for_log(r"/sleep under way")
    server.signal(signal.SIGTERM)

    # As gunicorn: the listeners close when the stop begins, before in-flight requests
    # end, so a new connection is refused rather than left unanswered in the backlog.
    refused = False
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline and slow.thread.is_alive():
        if connect_refused(server.port):
            refused = True
            break
        time.sleep(0.05)  # polling for 1.2 s at most: how long it takes is the point
    in_flight = slow.thread.is_alive()
    slow.join()
    assert refused, f"connections still accepted 1.2 s into a graceful stop:\n{server.log}"
    assert in_flight, "the in-flight request ended before the refusal was seen"
    assert server.wait(10) == 0, server.log


def test_a_connection_accepted_before_sigterm_gets_its_first_request_answered(serve):
    """A client whose connection was accepted just before the stop sends its request
    just after: it gets its answer (and `Connection: close`), not a closed connection."""
    server = serve("proc_apps:app", workers=1)
    wait_workers(server, 1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        time.sleep(0.3)  # the scenario: accepted by the front tier, nothing sent yet
        server.signal(signal.SIGTERM)
        # the front tier has told its connections (the master's phase line comes first)
        server.wait_for_log(r"Stopping gracefully: finishing")
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n")
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 200 "), (reply, server.log)
    assert b"\r\nconnection: close\r\n" in reply.lower(), reply
    assert server.wait(10) == 0, server.log


def test_a_silent_connection_holds_the_graceful_stop_a_moment_only(serve):
    server = serve("proc_apps:app", "--graceful-timeout", "20", workers=1)
    wait_workers(server, 1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        time.sleep(0.3)  # the scenario: a connection that stays silent
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(10) == 0, server.log
        elapsed = time.monotonic() - started
        assert read_until_closed(sock) == b""  # closed unanswered
    assert elapsed < 5, f"a silent connection held the stop {elapsed:.1f} s\n{server.log}"


def _fast_stop(serve, sig):
    server = serve("proc_apps:app", workers=2)
    wait_workers(server, 2)
    slow = Background(server.port, "/sleep?s=30", timeout=40)
    server.wait_for_log(r"/sleep under way")
    started = time.monotonic()
    server.signal(sig)
    code = server.wait(10)
    elapsed = time.monotonic() - started
    assert elapsed < 4.0, f"{sig.name}: took {elapsed:.1f}s\n{server.log}"
    assert code == 0, server.log
    result = slow.join(10)
    # The abandoned request does not get a normal answer.
    assert not (isinstance(result, tuple) and result == (200, SLEEP_BODY)), result


def test_sigint_is_a_fast_stop(serve):
    _fast_stop(serve, signal.SIGINT)


def test_sigquit_is_a_fast_stop(serve):
    _fast_stop(serve, signal.SIGQUIT)


def test_graceful_timeout_bounds_the_stop(serve):
    server = serve("proc_apps:app", "--graceful-timeout", "1", workers=1)
    wait_workers(server, 1)
    slow = Background(server.port, "/sleep?s=5", timeout=20)
    server.wait_for_log(r"/sleep under way")
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    server.wait(10)
    elapsed = time.monotonic() - started
    # gunicorn SIGKILLs the workers once graceful_timeout has passed; allow some grace
    # (rwsgi's master gives the last responses 2 s more before it kills).
    assert elapsed < 4.5, f"stop took {elapsed:.1f}s with --graceful-timeout 1\n{server.log}"
    result = slow.join(10)
    assert not (isinstance(result, tuple) and result == (200, SLEEP_BODY)), result


# -- 3. the master is killed ---------------------------------------------------------


def _ours(pid: int) -> bool:
    """Still our rwsgi process (guards the cleanup against a reused pid)."""
    try:
        exe = Path(f"/proc/{pid}/exe").resolve()
    except OSError:
        return False
    return exe == BINARY.resolve()


def test_children_exit_when_master_is_sigkilled(serve):
    server = serve("proc_apps:app", workers=3)
    wait_workers(server, 3)
    direct = children_of(server.pid)
    family = set(direct)
    for child in direct:
        family.update(children_of(child))
    assert len(direct) >= 4, (direct, server.log)  # the front tier and three workers
    try:
        server.signal(signal.SIGKILL)
        server.proc.wait(5)
        try:
            eventually(lambda: not any(alive(p) for p in family), timeout=10,
                       what="the children's exit")
        except AssertionError:
            pass  # named by the assertion below
        survivors = [p for p in family if alive(p)]
        assert not survivors, f"children still alive 10 s after the master died: {survivors}"
    finally:
        for pid in family:
            if alive(pid) and _ours(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# -- 4. a worker killed from outside -------------------------------------------------


def test_worker_killed_from_outside_is_replaced(serve):
    server = serve("proc_apps:app", workers=2)
    before = wait_workers(server, 2)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)

    try:
        eventually(lambda: len(now := worker_pids(server)) == 2 and victim not in now,
                   timeout=10, what="the victim replaced")
    except AssertionError:
        pass  # named by the assertion below
    now = worker_pids(server)
    assert victim not in now and len(now) == 2, (before, now, server.log)
    (new,) = set(now) - set(before)
    assert new in children_of(server.pid)

    seen = set()
    for _ in range(10):
        status, body = get(server.port, "/pid")
        assert status == 200
        seen.add(int(body))
    assert victim not in seen
    assert seen <= set(now)
    server.wait_for_log(rf"\b{victim}\b.*(SIGKILL|killed)")


def test_killed_front_tier_never_stops_the_master(serve):
    # Regression: the master replaced a worker that saw its channel close, then sent the
    # new worker SIGTERM before the child had dropped the master's signal handler; the
    # handler wrote to the inherited self-pipe and the whole server stopped.
    server = serve("proc_apps:app", workers=2)
    for round_ in range(1, 6):
        log = server.wait_for_log(r"Booting front tier with pid: ", count=round_)
        front = int(re.findall(r"Booting front tier with pid: (\d+)", log)[-1])
        os.kill(front, signal.SIGKILL)
        server.wait_for_log(r"Booting front tier with pid: ", count=round_ + 1)
        status, _ = eventually(lambda: answer(server.port, "/pid"), timeout=10,
                               what=f"an answer from front tier {round_ + 1}\n{server.log}")
        assert status == 200
        assert server.proc.poll() is None, server.log
    assert "Handling signal: term" not in server.log, server.log


def test_workers_dying_while_booting_make_the_master_give_up(serve):
    """A worker that dies as it boots (killed by a signal, so no boot-error exit code) is
    started again after a growing pause; after 8 such deaths in a row the master stops
    with exit code 3 and says why, instead of forking for ever."""
    started = time.monotonic()
    server = serve("proc_bootcrash:application", workers=2, wait=False)  # never ready
    code = server.wait(30)
    elapsed = time.monotonic() - started
    assert code == 3, server.log
    assert "Worker failed to boot: 8 workers in a row died" in server.log, server.log
    booted = server.log.count("Booting worker")
    assert 8 <= booted <= 10, f"{booted} workers started:\n{server.log}"
    assert "the next starts in" in server.log  # it backed off before giving up
    assert elapsed < 25, elapsed


def test_one_worker_death_at_boot_is_not_fatal(serve):
    """A single quick death (as in test_worker_exit_mid_request...) is simply replaced."""
    server = serve("proc_apps:app", workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/crash?after=0")
        try:
            assert conn.getresponse().status == 502
        except (http.client.RemoteDisconnected, ConnectionResetError):
            pass
    finally:
        conn.close()
    eventually(lambda: (answer(server.port, "/") or (0,))[0] == 200, timeout=10,
               what=f"a new worker\n{server.log}")
    assert server.proc.poll() is None


@pytest.mark.parametrize("flags, policy", [
    ((), os.SCHED_BATCH),
    (("--threads", "4"), os.SCHED_BATCH),
    (("--no-batch-scheduling",), os.SCHED_OTHER),
])
def test_workers_run_under_batch_scheduling_unless_told_otherwise(serve, flags, policy):
    """Workers are SCHED_BATCH (a doorbell does not make them preempt the front tier),
    a replaced one too; the master and the front tier keep the normal policy."""
    server = serve("wsgi_environ:dump", *flags, workers=2)
    assert get(server.port, "/")[0] == 200
    workers = wait_workers(server, 2)
    assert [os.sched_getscheduler(pid) for pid in workers] == [policy, policy]
    [front] = fronts_of(server.pid)
    assert os.sched_getscheduler(server.pid) == os.SCHED_OTHER
    assert os.sched_getscheduler(front) == os.SCHED_OTHER
    os.kill(workers[0], signal.SIGKILL)
    replaced = eventually(lambda: (set(worker_pids(server)) - set(workers)) or None,
                          what="a new worker")
    [new] = replaced
    eventually(lambda: os.sched_getscheduler(new) == policy, what="the new worker's policy")
