"""X-Request-Start: t=MICROSECONDS (since the epoch, when the front tier read the head)
on every request passed to the app, as nginx users set it for APM agents to show the
time a request queued. A trusted proxy's value is kept, anyone else's replaced;
--no-request-start turns it off."""

from __future__ import annotations

import json
import re
import time

from test_guard import exchange, request


def headers_seen(server, *headers: str) -> dict:
    result = exchange(server.port, request("GET", "/echo", *headers), until=1)
    assert result.statuses == [200], result.raw[:300]
    return json.loads(result.responses[0].body)["headers"]


def micros(value: str) -> int:
    match = re.fullmatch(r"t=([0-9]{16})", value)
    assert match, value
    return int(match.group(1))


def test_the_app_sees_when_the_front_tier_read_the_request(serve):
    server = serve("guard_apps:echo", workers=1)
    before = time.time_ns() // 1000
    seen = headers_seen(server)
    after = time.time_ns() // 1000
    assert before <= micros(seen["HTTP_X_REQUEST_START"]) <= after, (before, seen, after)


def test_a_queued_request_shows_its_wait(serve):
    """The stamp is taken when the head is read, not when a worker takes the request:
    behind a request that sleeps, the app sees the time it was queued."""
    import threading
    server = serve("guard_apps:echo", workers=1)
    slow = threading.Thread(target=exchange,
                            args=(server.port, request("GET", "/echo?sleep=1")),
                            kwargs={"until": 1})
    slow.start()
    time.sleep(0.2)
    seen = headers_seen(server)
    began = time.time_ns() // 1000
    slow.join()
    waited = began - micros(seen["HTTP_X_REQUEST_START"])
    assert waited >= 500_000, waited


def test_a_trusted_proxys_value_is_kept_and_a_clients_replaced(serve):
    # 127.0.0.1 is trusted by default: its value is the proxy's, kept.
    server = serve("guard_apps:echo", workers=1)
    seen = headers_seen(server, "X-Request-Start: t=1700000000000000")
    assert seen["HTTP_X_REQUEST_START"] == "t=1700000000000000"

    # Not trusted: a client cannot make its request look queued.
    untrusted = serve("guard_apps:echo", "--forwarded-allow-ips", "192.0.2.1", workers=1)
    seen = headers_seen(untrusted, "X-Request-Start: t=1700000000000000")
    assert micros(seen["HTTP_X_REQUEST_START"]) > 1_700_000_000_000_000 + 10**12, seen


def test_no_request_start_turns_it_off(serve):
    server = serve("guard_apps:echo", "--no-request-start", workers=1)
    assert "HTTP_X_REQUEST_START" not in headers_seen(server)
    # What a client sends is then a header like any other.
    seen = headers_seen(server, "X-Request-Start: t=5")
    assert seen["HTTP_X_REQUEST_START"] == "t=5"
