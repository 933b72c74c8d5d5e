"""The access log (--access-logfile, --access-log-format) and the request id: lines in
gunicorn's default format and in json parsed field by field, custom atoms, the request
id kept or made and seen by the app, the response and the log, USR1 after logrotate."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import rawhttp
from conftest import BINARY, children_of
from kit import eventually
from test_logs import settled_children

APP = "access_apps:app"

# gunicorn's default: %(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"
DEFAULT_LINE = re.compile(
    r'^(?P<h>\S+) (?P<l>\S+) (?P<u>\S+) \[(?P<t>[^\]]+)\] "(?P<r>[^"]*)" (?P<s>\d{3}) '
    r'(?P<b>\d+|-) "(?P<f>[^"]*)" "(?P<a>[^"]*)"$'
)
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def fetch(port: int, method: str, path: str, headers: dict | None = None,
          body: bytes | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def log_lines(path: Path, count: int, timeout: float = 10.0) -> list[str]:
    """The file's lines once it has at least `count` of them."""
    read = lambda: path.read_text().splitlines() if path.exists() else []  # noqa: E731
    try:
        return eventually(lambda: len(lines := read()) >= count and lines, timeout,
                          f"{count} lines in {path}")
    except AssertionError:
        raise AssertionError(f"{count} lines expected in {path}:\n{read()}") from None


def find(lines: list[str], needle: str) -> str:
    found = [line for line in lines if needle in line]
    assert len(found) == 1, (needle, lines)
    return found[0]


def test_default_format_field_by_field(serve, tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "file.txt").write_bytes(b"0123456789")
    log = tmp_path / "access.log"
    server = serve(APP, "--access-logfile", str(log), "--static", f"/static={static}",
                   "--max-body-size", "1k", workers=1)
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    status, _, body = fetch(server.port, "GET", "/app?x=1",
                            {"Referer": "http://example.com/from", "User-Agent": "tester/1.0"})
    assert (status, body) == (200, b"ok\n")
    assert fetch(server.port, "GET", "/static/file.txt")[0] == 200
    assert fetch(server.port, "GET", "/static/missing.txt")[0] == 404
    assert fetch(server.port, "POST", "/upload", body=b"x" * 2048)[0] == 413
    assert fetch(server.port, "HEAD", "/head")[0] == 200
    lines = log_lines(log, 5)
    assert len(lines) == 5, lines
    parsed = {}
    for line in lines:
        match = DEFAULT_LINE.match(line)
        assert match, line
        fields = match.groupdict()
        assert fields["h"] == "127.0.0.1"
        assert fields["l"] == "-" and fields["u"] == "-"
        at = datetime.datetime.strptime(fields["t"], "%d/%b/%Y:%H:%M:%S %z")
        assert before <= at <= datetime.datetime.now(datetime.timezone.utc), fields["t"]
        parsed[fields["r"]] = fields
    app = parsed["GET /app?x=1 HTTP/1.1"]
    assert (app["s"], app["b"]) == ("200", "3")
    assert app["f"] == "http://example.com/from"
    assert app["a"] == "tester/1.0"
    static_file = parsed["GET /static/file.txt HTTP/1.1"]
    assert (static_file["s"], static_file["b"], static_file["f"]) == ("200", "10", "-")
    assert static_file["a"].startswith("Python-urllib") or static_file["a"] == "-"
    missing = parsed["GET /static/missing.txt HTTP/1.1"]
    assert missing["s"] == "404" and int(missing["b"]) > 0
    too_large = parsed["POST /upload HTTP/1.1"]
    assert too_large["s"] == "413" and int(too_large["b"]) > 0
    head = parsed["HEAD /head HTTP/1.1"]
    assert (head["s"], head["b"]) == ("200", "-")  # no body bytes sent


def test_json_format_every_field(serve, tmp_path):
    log = tmp_path / "access.json"
    server = serve(APP, "--access-logfile", str(log), "--access-log-format", "json",
                   workers=1)
    status, headers, _ = fetch(server.port, "GET", "/app?q=%22x%22&y=2",
                               {"Referer": 'http://r/"quoted"', "User-Agent": "agent é"})
    assert status == 200
    assert fetch(server.port, "GET", "/plain", {"User-Agent": ""})[0] == 200
    first, second = [json.loads(line) for line in log_lines(log, 2)]
    assert set(first) == {"time", "remote_addr", "method", "path", "query", "protocol",
                          "status", "bytes", "duration_ms", "referer", "user_agent",
                          "request_id"}
    at = datetime.datetime.fromisoformat(first["time"])
    assert at.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.timezone.utc) - at).total_seconds()) < 30
    assert first["remote_addr"] == "127.0.0.1"
    assert first["method"] == "GET"
    assert first["path"] == "/app"
    assert first["query"] == "q=%22x%22&y=2"
    assert first["protocol"] == "HTTP/1.1"
    assert first["status"] == 200 and type(first["status"]) is int
    assert first["bytes"] == 3 and type(first["bytes"]) is int
    assert isinstance(first["duration_ms"], float) and 0 <= first["duration_ms"] < 10_000
    assert first["referer"] == 'http://r/"quoted"'
    # http.client sends the header as latin-1: not UTF-8, kept byte for byte.
    assert first["user_agent"] == "agent é"
    assert first["request_id"] == headers["x-request-id"]
    assert HEX32.match(first["request_id"])
    assert second["path"] == "/plain" and second["query"] == ""
    assert second["referer"] is None
    assert second["user_agent"] == ""


def test_custom_format_atoms(serve, tmp_path):
    log = tmp_path / "access.log"
    server = serve(APP, "--access-logfile", str(log), "--access-log-format",
                   "%(D)s|%(L)s|%(M)s|%(T)s|%({x-test}o)s|%({user-agent}i)s|%(p)s|%(m)s|%(U)s"
                   "|%(q)s|%(H)s|%(B)s|%(zz)s|%({x-request-id}i)s|100%%",
                   workers=1)
    status, headers, _ = fetch(server.port, "GET", "/header?a=b", {"User-Agent": "custom/2"})
    assert status == 200
    [line] = log_lines(log, 1)
    d, l_, m, t, x_test, agent, pid, method, path, query, proto, size, unknown, rid, pct = \
        line.split("|")
    assert int(d) >= 0
    assert re.fullmatch(r"\d+\.\d{6}", l_)
    assert abs(float(l_) * 1e6 - int(d)) <= 1
    assert int(m) == int(d) // 1000 and int(t) == int(d) // 1_000_000
    assert x_test == "tested-value"
    assert agent == "custom/2"
    assert re.fullmatch(r"<\d+>", pid) and int(pid[1:-1]) in children_of(server.pid)
    assert (method, path, query, proto) == ("GET", "/header", "a=b", "HTTP/1.1")
    assert size == str(len(b"with a header\n"))
    assert unknown == "-"
    assert rid == headers["x-request-id"]
    assert pct == "100%"


def test_request_id_kept_or_made(serve, tmp_path):
    log = tmp_path / "access.json"
    server = serve(APP, "--access-logfile", str(log), "--access-log-format", "json",
                   workers=1)
    # Kept when sent: the app, the response and the log all carry it.
    status, headers, body = fetch(server.port, "GET", "/id", {"X-Request-Id": "trace-42.a:b"})
    assert status == 200
    assert body == b"trace-42.a:b"
    assert headers["x-request-id"] == "trace-42.a:b"
    # Made when not: 128 bits of hex, unique, the same in the app and the response.
    seen = set()
    for _ in range(100):
        status, headers, body = fetch(server.port, "GET", "/id")
        assert status == 200
        assert HEX32.match(headers["x-request-id"]), headers
        assert body.decode() == headers["x-request-id"]
        seen.add(headers["x-request-id"])
    assert len(seen) == 100
    entries = [json.loads(line) for line in log_lines(log, 101)]
    assert entries[0]["request_id"] == "trace-42.a:b"
    assert {e["request_id"] for e in entries[1:]} == seen


def test_hostile_request_ids_are_replaced(serve):
    server = serve(APP, workers=1)
    for hostile in ["x" * 300, "a b", "tab\there", "caf\xe9"]:
        response = rawhttp.request(server.port, "GET", "/id", {"X-Request-Id": hostile})
        assert response.status == 200, hostile
        made = response.header("x-request-id")
        assert HEX32.match(made), (hostile, made)
        assert response.body.decode() == made
    # Two ids in one request are ambiguous: replaced as well.
    with rawhttp.Connection(server.port) as conn:
        conn.sock.sendall(b"GET /id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"X-Request-Id: one\r\nX-Request-Id: two\r\n\r\n")
        response = conn.read_response()
    assert HEX32.match(response.header("x-request-id"))
    assert response.body.decode() == response.header("x-request-id")


def test_access_log_to_stdout(serve):
    server = serve(APP, "--access-logfile", "-", workers=1)
    assert fetch(server.port, "GET", "/to-stdout", {"User-Agent": "stdout-test"})[0] == 200
    text = server.wait_for_log(r'"GET /to-stdout HTTP/1\.1" 200 3 "-" "stdout-test"')
    [line] = [line for line in text.splitlines() if "/to-stdout" in line]
    assert DEFAULT_LINE.match(line), line


def test_a_client_gone_mid_stream_is_logged_with_what_was_sent(serve, tmp_path):
    log = tmp_path / "access.log"
    server = serve(APP, "--access-logfile", str(log), workers=1)
    with rawhttp.Connection(server.port, timeout=5) as conn:
        conn.send("GET", "/stream")
        status, _ = conn.read_head()
        assert status == 200
        assert conn.read_chunk()  # some of the body came, then the client leaves
    [line] = log_lines(log, 1)
    fields = DEFAULT_LINE.match(line).groupdict()
    assert fields["r"] == "GET /stream HTTP/1.1" and fields["s"] == "200"
    # Something was sent, far from the whole megabyte.
    assert 1000 <= int(fields["b"]) < 1_000_000, line


def test_a_client_gone_before_the_answer_is_logged_499(serve, tmp_path):
    log = tmp_path / "access.log"
    server = serve(APP, "--access-logfile", str(log), workers=1)
    with rawhttp.Connection(server.port, timeout=5) as conn:
        conn.send("GET", "/slow")  # the app answers after a second
        time.sleep(0.3)  # the scenario: the client leaves before the answer
    [line] = log_lines(log, 1)
    fields = DEFAULT_LINE.match(line).groupdict()
    assert (fields["r"], fields["s"], fields["b"]) == ("GET /slow HTTP/1.1", "499", "-")


def test_no_access_log_by_default(serve):
    server = serve(APP, workers=1)
    assert fetch(server.port, "GET", "/unlogged")[0] == 200
    # A request after it, answered, and a flush interval later: still nothing.
    assert fetch(server.port, "GET", "/unlogged-too")[0] == 200
    time.sleep(0.3)  # deliberate: past the flush interval, a line would be out
    assert "/unlogged" not in server.log


def test_usr1_after_moving_the_file_writes_a_new_one(serve, tmp_path):
    log = tmp_path / "access.log"
    server = serve(APP, "--access-logfile", str(log), workers=1)
    children = sorted(settled_children(server, 2))  # the front tier and the worker
    assert fetch(server.port, "GET", "/before")[0] == 200
    log_lines(log, 1)
    rotated = tmp_path / "access.log.1"
    log.rename(rotated)
    server.signal(signal.SIGUSR1)
    server.wait_for_log(r"Handling signal: usr1")
    # The front tier opens the file again by name, creating it.
    eventually(log.exists, 10, "a new access log after USR1")
    for _ in range(3):
        assert fetch(server.port, "GET", "/after")[0] == 200
    lines = log_lines(log, 3)
    assert len(lines) == 3 and all('"GET /after HTTP/1.1" 200' in line for line in lines)
    old = rotated.read_text().splitlines()
    assert len(old) == 1 and "/before" in old[0]
    # Nobody died of the signal.
    assert sorted(children_of(server.pid)) == children


def test_lines_written_at_a_graceful_stop(tmp_path):
    """The last lines are flushed when the front tier exits, not lost in its buffer."""
    log = tmp_path / "access.log"
    from conftest import Server
    server = Server(APP, "--access-logfile", str(log), workers=1)
    try:
        for _ in range(5):
            assert fetch(server.port, "GET", "/last")[0] == 200
    finally:
        server.stop()
    assert log.read_text().count('"GET /last HTTP/1.1" 200') == 5


def test_a_malformed_format_is_a_startup_error(tmp_path):
    for bad in ["%(h", "%(h)d", "50% done"]:
        result = subprocess.run(
            [str(BINARY), "serve", "--access-logfile", str(tmp_path / "a.log"),
             "--access-log-format", bad, APP],
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent / "apps")})
        assert result.returncode != 0, bad
        assert "--access-log-format" in result.stderr, result.stderr
