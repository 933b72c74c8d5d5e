"""Prefetch (`--prefetch`): a busy sync worker whose requests are short holds a few more
queued behind the one it runs. Those must never be lost: a worker that dies or is timed
out with requests it has not begun gives them back, and they are served by another
worker. Each test sends its requests as HTTP/2 streams in one write, so that they reach
the front tier together and queue on the one worker while it runs the first.
"""

from __future__ import annotations

import http.client
import re
import time

import h2.events
import pytest

from test_h2 import RawH2
from kit import Background, get

BOOT_WORKER = re.compile(r"Booting worker with pid: (\d+)")
GIVEN_BACK = r"worker (\d+) stopped before it began (\d+) request\(s\) queued on it"


def warm_up(port: int, count: int = 60) -> int:
    """Short requests one after another on a keep-alive connection, so that the worker
    has a record of short requests (prefetch needs one); returns its pid."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(count):
            conn.request("GET", "/pid")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (resp.status, body)
        return int(body)
    finally:
        conn.close()


def burst(port: int, first: str, then: str, count: int, seconds: float) -> dict[int, tuple]:
    """Sends `first`, then `count` requests for `then`, as HTTP/2 streams in one write;
    returns {stream id: (status, body)} for every stream that ended or was reset."""
    h2c = RawH2(port)
    paths = [first] + [then] * count
    streams = []
    for path in paths:
        stream = h2c.conn.get_next_available_stream_id()
        h2c.conn.send_headers(stream, [(":method", "GET"), (":path", path),
                                       (":scheme", "http"), (":authority", "localhost")],
                              end_stream=True)
        streams.append(stream)
    h2c.flush()
    status: dict[int, int] = {}
    bodies: dict[int, bytes] = {s: b"" for s in streams}
    done: set[int] = set()

    def finished(events) -> bool:
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                status[event.stream_id] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] += event.data
                h2c.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                done.add(event.stream_id)
        events.clear()
        return done >= set(streams)

    h2c.pump(seconds, until=finished)
    h2c.sock.close()
    return {s: (status.get(s), bodies[s]) for s in streams if s in done}


@pytest.mark.parametrize("flags, first, failed", [
    ((), "/crash?after=0.3", 502),              # the worker dies mid-request
    (("--timeout", "1"), "/sleep?s=30", 504),  # the master times it out
], ids=["died", "timed-out"])
def test_a_stopped_worker_gives_back_the_requests_it_had_not_begun(serve, flags, first, failed):
    server = serve("proc_apps:app", *flags, workers=1)
    # Requests are queued on the worker only while its current one is younger than the
    # prefetch budget (1 ms): on a loaded machine the burst's streams can reach the
    # pool later than that, and then they wait in the front tier instead (and are
    # served all the same). Each attempt must serve every request right; one of three
    # must show requests given back.
    for attempt in range(3):
        first_pid = warm_up(server.port)
        results = burst(server.port, first, "/pid", 6, seconds=30)

        assert len(results) == 7, (results, server.log)
        statuses = sorted(status for status, _ in results.values())
        # The first request alone fails; every other one is served.
        assert statuses == [200] * 6 + [failed], (results, server.log)
        pids = {int(body) for status, body in results.values() if status == 200}
        assert any(pid != first_pid for pid in pids), (pids, first_pid)
        # Written before the successor served what was given back, so before the burst
        # ended; the log is read in the background, hence a moment's grace.
        deadline = time.monotonic() + 2
        while not (given := [m for m in re.finditer(GIVEN_BACK, server.log)
                             if int(m.group(1)) == first_pid]):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if given:
            break
    # Some were queued on the worker that stopped, and came back to be served by its
    # successor.
    assert given, f"no request given back in 3 attempts:\n{server.log}"
    assert 1 <= int(given[0].group(2)) <= 6


def test_nothing_is_queued_behind_a_request_past_the_budget(serve):
    """A request arriving when the worker's current one has run longer than the budget
    waits in the front tier, not on the worker: when that worker dies, nothing of it
    is given back, and the waiting request goes to the new worker."""
    server = serve("proc_apps:app", workers=1)
    first_pid = warm_up(server.port)
    crash = Background(server.port, "/crash?after=1")
    server.wait_for_log(r"/crash under way")
    time.sleep(0.3)  # the scenario: the request has now run longer than the budget
    status, body = get(server.port, "/pid")

    assert status == 200, (status, body)
    assert int(body) != first_pid
    assert crash.join()[0] == 502
    assert not re.search(GIVEN_BACK, server.log), server.log


def test_prefetch_zero_queues_nothing_on_a_worker(serve):
    server = serve("proc_apps:app", "--prefetch", "0", workers=1)
    warm_up(server.port)

    results = burst(server.port, "/crash?after=0.3", "/pid", 4, seconds=30)

    statuses = sorted(status for status, _ in results.values())
    assert statuses == [200] * 4 + [502], (results, server.log)
    # They waited in the front tier, never on the worker.
    assert not re.search(GIVEN_BACK, server.log)
