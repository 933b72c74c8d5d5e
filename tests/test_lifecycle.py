"""The master's lifecycle in its log: each change of phase is one line
(`Phase: serving -> stopping (graceful)`), and `Ready: N workers` says when every worker
has booted, so an operator (and these tests) can watch the server's life."""

from __future__ import annotations

import re
import signal
import socket

import pytest

from conftest import Server, children_of
from kit import eventually, stop_pid

PHASE = re.compile(r"\[(\d+)\] \[INFO\] Phase: (.+?) -> (.+)")
BOOTED = ["booting -> serving"]


def phases(server: Server, pid: int | None = None) -> list[str]:
    """The phase changes a master (`pid`, or any) logged, in order, as `from -> to`."""
    return [f"{old} -> {new}" for by, old, new in PHASE.findall(server.log)
            if pid is None or int(by) == pid]


def test_ready_names_the_workers_once_every_one_has_booted(serve):
    server = serve("lifecycle_app:app", workers=3, env={"SLOW_BOOT": "0.5"})
    log = server.wait_for_log(r"Ready: \d+ workers")
    assert re.findall(r"Ready: (\d+) workers", log) == ["3"], log
    ready = log.index("Ready: 3 workers")
    workers = re.findall(r"Booting worker with pid: (\d+)", log)
    assert len(workers) == 3, log
    for pid in workers:
        imported = log.find(f"Imported in worker {pid}")
        assert 0 <= imported < ready, f"worker {pid} booted after the Ready line:\n{log}"
    assert log.index("Phase: booting -> serving") < ready, log
    assert phases(server) == BOOTED, log


def test_hup_reloads_in_phases_then_is_ready_again(serve):
    server = serve("lifecycle_app:app", workers=2)
    server.wait_for_log(r"Ready: 2 workers")
    server.signal(signal.SIGHUP)
    log = server.wait_for_log(r"Ready: 2 workers", count=2)
    reloaded = log.index("Phase: serving -> reloading")
    assert log.index("Reload done: 2 workers") > reloaded, log
    assert phases(server) == [*BOOTED, "serving -> reloading", "reloading -> serving"], log
    # Two new workers imported the code between the reload and the second Ready line.
    imports = re.findall(r"Imported in worker (\d+)", log[reloaded:log.rindex("Ready:")])
    assert len(imports) == 2, log


def test_term_is_a_graceful_stop_in_the_log(serve):
    server = serve("lifecycle_app:app", workers=2)
    server.wait_for_log(r"Ready: 2 workers")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0, server.log
    assert phases(server) == [*BOOTED, "serving -> stopping (graceful)",
                              "stopping (graceful) -> halted"], server.log


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT], ids=["INT", "QUIT"])
def test_int_and_quit_are_a_fast_stop_in_the_log(serve, sig):
    server = serve("lifecycle_app:app", workers=2)
    server.wait_for_log(r"Ready: 2 workers")
    server.signal(sig)
    assert server.wait() == 0, server.log
    assert phases(server) == [*BOOTED, "serving -> stopping (fast)",
                              "stopping (fast) -> halted"], server.log


def test_int_during_a_graceful_stop_makes_it_fast(serve):
    server = serve("lifecycle_app:app", workers=1)
    server.wait_for_log(r"Ready: 1 workers")
    # A request the graceful stop would wait for, so that INT comes while it stops.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        server.wait_for_log(r"Holding a request in worker")
        server.signal(signal.SIGTERM)
        server.wait_for_log(r"Phase: serving -> stopping \(graceful\)")
        server.signal(signal.SIGINT)
        assert server.wait() == 0, server.log
    assert phases(server) == [*BOOTED, "serving -> stopping (graceful)",
                              "stopping (graceful) -> stopping (fast)",
                              "stopping (fast) -> halted"], server.log


def test_usr2_winch_hup_and_the_new_master_gone_show_the_upgrade_phases(serve):
    server = serve("lifecycle_app:app", workers=1)
    server.wait_for_log(r"Ready: 1 workers")
    server.signal(signal.SIGUSR2)
    log = server.wait_for_log(r"Started a new master \(pid: \d+\)")
    new = int(re.search(r"Started a new master \(pid: (\d+)\)", log)[1])
    try:
        server.wait_for_log(rf"\[{new}\] \[INFO\] Ready: 1 workers")
        # WINCH: this master's children stop; HUP: they start again beside the new master.
        server.signal(signal.SIGWINCH)
        eventually(lambda: children_of(server.pid) == [new], what="the old children gone")
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"Ready: 1 workers", count=3)  # old, new, old again
        # The new master goes: this one serves alone again.
        stop_pid(new)
        server.wait_for_log(rf"\[{server.pid}\] \[INFO\] Phase: upgrading -> serving")
    finally:
        stop_pid(new)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0, server.log
    assert phases(server, server.pid) == [
        *BOOTED, "serving -> upgrading", "upgrading -> upgrading (drained)",
        "upgrading (drained) -> booting", "booting -> upgrading", "upgrading -> serving",
        "serving -> stopping (graceful)", "stopping (graceful) -> halted"], server.log
