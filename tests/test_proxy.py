"""Proxy headers: X-Forwarded-For / X-Forwarded-Proto / Forwarded set REMOTE_ADDR and
wsgi.url_scheme only when the peer is trusted (--forwarded-allow-ips, FORWARDED_ALLOW_IPS,
Unix socket peers)."""

from __future__ import annotations

import json
import socket

from test_guard import exchange, request

XFF = "X-Forwarded-For: 203.0.113.9, 198.51.100.7"


def environ_of(server, *headers: str) -> dict:
    result = exchange(server.port, request("GET", "/proxy", *headers), until=1)
    assert result.statuses == [200], result.raw[:300]
    return json.loads(result.responses[0].body)


def test_trusted_peer_x_forwarded_for_and_proto(serve):
    server = serve("guard_apps:echo", workers=1)  # default: 127.0.0.1,::1 trusted
    seen = environ_of(server)
    assert (seen["remote_addr"], seen["scheme"]) == ("127.0.0.1", "http")

    seen = environ_of(server, XFF)
    assert seen["remote_addr"] == "198.51.100.7"
    assert seen["scheme"] == "http"

    seen = environ_of(server, "X-Forwarded-Proto: https")
    assert seen["scheme"] == "https"
    assert seen["remote_addr"] == "127.0.0.1"

    seen = environ_of(server, XFF, "X-Forwarded-Proto: https")
    assert (seen["remote_addr"], seen["scheme"]) == ("198.51.100.7", "https")

    # A trusted hop on the right is skipped: the nearest untrusted address is the client.
    seen = environ_of(server, "X-Forwarded-For: 203.0.113.9, 198.51.100.7, 127.0.0.1")
    assert seen["remote_addr"] == "198.51.100.7"


def test_trusted_peer_forwarded_header(serve):
    server = serve("guard_apps:echo", workers=1)
    seen = environ_of(server, "Forwarded: for=192.0.2.60;proto=https")
    assert (seen["remote_addr"], seen["scheme"]) == ("192.0.2.60", "https")
    # Forwarded is preferred when both kinds are present.
    seen = environ_of(server, "Forwarded: for=192.0.2.60;proto=https", XFF,
                      "X-Forwarded-Proto: http")
    assert (seen["remote_addr"], seen["scheme"]) == ("192.0.2.60", "https")
    seen = environ_of(server, 'Forwarded: for="[2001:db8:cafe::17]:4711"')
    assert seen["remote_addr"] == "2001:db8:cafe::17"


def test_untrusted_peer_changes_nothing(serve):
    server = serve("guard_apps:echo", "--forwarded-allow-ips", "10.0.0.1", workers=1)
    seen = environ_of(server, XFF, "X-Forwarded-Proto: https")
    assert (seen["remote_addr"], seen["scheme"]) == ("127.0.0.1", "http")
    assert seen["headers"]["HTTP_X_FORWARDED_FOR"] == "203.0.113.9, 198.51.100.7"
    assert seen["headers"]["HTTP_X_FORWARDED_PROTO"] == "https"
    seen = environ_of(server, "Forwarded: for=192.0.2.60;proto=https")
    assert (seen["remote_addr"], seen["scheme"]) == ("127.0.0.1", "http")
    assert seen["headers"]["HTTP_FORWARDED"] == "for=192.0.2.60;proto=https"


def test_star_trusts_every_hop(serve):
    """With `*` every hop is trusted, so the client is the leftmost address (with the
    default list it is the nearest untrusted one, 198.51.100.7)."""
    server = serve("guard_apps:echo", "--forwarded-allow-ips", "*", workers=1)
    seen = environ_of(server, XFF, "X-Forwarded-Proto: https")
    assert (seen["remote_addr"], seen["scheme"]) == ("203.0.113.9", "https")


def test_cidr_list_from_the_environment(serve):
    server = serve("guard_apps:echo", workers=1,
                   env={"FORWARDED_ALLOW_IPS": "127.0.0.0/8, 198.51.100.0/24"})
    seen = environ_of(server, XFF, "X-Forwarded-Proto: https")
    assert (seen["remote_addr"], seen["scheme"]) == ("203.0.113.9", "https")


def test_environment_can_distrust_the_local_peer(serve):
    server = serve("guard_apps:echo", workers=1, env={"FORWARDED_ALLOW_IPS": "10.0.0.1"})
    seen = environ_of(server, XFF, "X-Forwarded-Proto: https")
    assert (seen["remote_addr"], seen["scheme"]) == ("127.0.0.1", "http")
    assert seen["headers"]["HTTP_X_FORWARDED_FOR"] == "203.0.113.9, 198.51.100.7"


def test_flag_wins_over_the_environment(serve):
    server = serve("guard_apps:echo", "--forwarded-allow-ips", "127.0.0.1", workers=1,
                   env={"FORWARDED_ALLOW_IPS": "10.0.0.1"})
    seen = environ_of(server, XFF)
    assert seen["remote_addr"] == "198.51.100.7"


def test_unix_socket_peer_is_trusted(serve, tmp_path):
    path = tmp_path / "rwsgi.sock"
    server = serve("guard_apps:echo", "--forwarded-allow-ips", "10.0.0.1", workers=1,
                   bind=f"unix:{path}")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(str(path))
        result = exchange(0, request("GET", "/unix", XFF, "X-Forwarded-Proto: https"),
                          sock=s, until=1)
    finally:
        s.close()
    assert result.statuses == [200], result.raw[:300]
    seen = json.loads(result.responses[0].body)
    assert (seen["remote_addr"], seen["scheme"]) == ("198.51.100.7", "https")
