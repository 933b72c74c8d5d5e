"""The development server, `rwsgi serve --reload`: a saved change restarts the workers
(not the front tier, not the master), a broken module shows its traceback as a 500 page
until it is fixed, and a burst of saves is one restart."""

from __future__ import annotations

import http.client
import re
import ssl
import subprocess
import time
from pathlib import Path

from conftest import BINARY, ROOT, Server, children_of
from kit import request
from test_signals import Load

ENV = {"PYTHONDONTWRITEBYTECODE": "1"}
CERTS = ROOT / "certs"

APP = """\
from wsgiref.validate import validator

import helper

VERSION = {version!r}


def _app(environ, start_response):
    body = f"{{VERSION}} {{helper.NAME}}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
"""


def write_app(directory: Path, version: str):
    (directory / "devapp.py").write_text(APP.format(version=version))


def project(tmp_path: Path, version: str = "v1") -> Path:
    write_app(tmp_path, version)
    (tmp_path / "helper.py").write_text("NAME = 'first'\n")
    return tmp_path


def dev_server(serve, directory: Path, *args: str, **kwargs) -> Server:
    return serve("devapp:app", "--reload", *args, cwd=directory, env=ENV, **kwargs)


def get(port: int, path: str = "/") -> tuple[int, str]:
    status, body = request(port, path, timeout=15)
    return status, body.decode(errors="replace")


def wait_for_answer(port: int, predicate, timeout: float = 10.0) -> tuple[float, str]:
    """Polls until an answer satisfies `predicate`; returns (seconds it took, answer)."""
    start = time.monotonic()
    while True:
        status, body = get(port)
        if predicate(status, body):
            return time.monotonic() - start, body
        assert time.monotonic() - start < timeout, (status, body)
        time.sleep(0.02)


def changes_seen(server: Server) -> int:
    return len(re.findall(r"Detected a change in", server.log))


def test_a_saved_change_is_served_within_two_seconds(serve, tmp_path):
    directory = project(tmp_path)
    server = dev_server(serve, directory, workers=None)
    assert get(server.port) == (200, "v1 first")
    server.wait_for_log(r"Watching \d+ directories")
    front = [line for line in server.log.splitlines() if "Booting front tier" in line]
    write_app(directory, "v2")
    took, body = wait_for_answer(server.port, lambda s, b: b.startswith("v2"))
    assert took < 2.0, took
    assert body == "v2 first"
    # A module the app imports counts too.
    (directory / "helper.py").write_text("NAME = 'second'\n")
    took, _ = wait_for_answer(server.port, lambda s, b: b == "v2 second")
    assert took < 2.0, took
    assert server.proc.poll() is None
    assert [line for line in server.log.splitlines() if "Booting front tier" in line] == front
    assert "Handling signal: term" not in server.log


def test_reload_means_one_worker_and_no_failed_request_across_saves(serve, tmp_path):
    directory = project(tmp_path)
    server = dev_server(serve, directory, workers=None)
    server.wait_for_log(r"Watching \d+ directories")
    assert get(server.port) == (200, "v1 first")
    assert server.log.count("Booting worker with pid") == 1  # one worker
    load = Load(server.port, threads=2)
    try:
        for version in ("v2", "v3", "v4"):
            write_app(directory, version)
            load.wait_for(lambda a, v=version: a.startswith(v))
            time.sleep(0.3)  # the scenario: the load goes on a while on each version
    finally:
        failures = load.stop()
    assert not failures, failures[:5]


def test_a_broken_module_shows_its_traceback_until_fixed(serve, tmp_path):
    directory = project(tmp_path)
    server = dev_server(serve, directory, workers=None)
    master = server.pid
    server.wait_for_log(r"Watching \d+ directories")
    (directory / "helper.py").write_text("NAME = (\n")  # a syntax error
    _, page = wait_for_answer(server.port, lambda s, b: s == 500)
    assert "<pre>" in page and "SyntaxError" in page and "helper.py" in page, page
    server.wait_for_log(r"SyntaxError")  # and in the terminal
    (directory / "helper.py").write_text("NAME = 'fixed'\n")
    wait_for_answer(server.port, lambda s, b: (s, b) == (200, "v1 fixed"))
    assert server.proc.poll() is None and server.pid == master


def test_an_app_that_does_not_import_at_start_waits_for_a_fix(serve, tmp_path):
    directory = project(tmp_path)
    (directory / "helper.py").write_text("raise RuntimeError('not yet')\n")
    server = dev_server(serve, directory, workers=None)
    status, page = get(server.port)
    assert status == 500 and "RuntimeError: not yet" in page, page
    (directory / "helper.py").write_text("NAME = 'ready'\n")
    wait_for_answer(server.port, lambda s, b: (s, b) == (200, "v1 ready"))
    assert server.proc.poll() is None


def test_a_burst_of_saves_is_one_restart(serve, tmp_path):
    directory = project(tmp_path)
    server = dev_server(serve, directory, workers=None)
    server.wait_for_log(r"Watching \d+ directories")
    for i in range(8):
        write_app(directory, f"burst{i}")
        time.sleep(0.01)  # the scenario: a burst of saves, 10 ms apart
    wait_for_answer(server.port, lambda s, b: b.startswith("burst7"))
    time.sleep(1.0)  # deliberate: a second restart, were there one, would come meanwhile
    assert changes_seen(server) == 1, server.log
    assert server.log.count("Reloading:") == 1, server.log


def test_ignored_trees_and_other_files_do_not_restart(serve, tmp_path):
    directory = project(tmp_path)
    for ignored in ("node_modules/pkg", ".git", "__pycache__", "venv"):
        (directory / ignored).mkdir(parents=True)
    (directory / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    server = dev_server(serve, directory, workers=None)
    server.wait_for_log(r"Watching \d+ directories")
    for ignored in ("node_modules/pkg", ".git", "__pycache__", "venv"):
        (directory / ignored / "x.py").write_text("X = 1\n")
    (directory / "notes.txt").write_text("not code\n")
    # A directory made after the start is watched (and then a change in it counts).
    (directory / "later").mkdir()
    time.sleep(0.5)  # deliberate: a restart, were there one, would come meanwhile
    assert changes_seen(server) == 0, server.log
    (directory / "later" / "mod.py").write_text("X = 2\n")
    server.wait_for_log(r"Detected a change in .*later/mod\.py")
    assert changes_seen(server) == 1


def test_reload_extra_file_globs(serve, tmp_path):
    directory = project(tmp_path)
    (directory / "templates").mkdir()
    (directory / "templates" / "page.html").write_text("<p>1</p>\n")
    server = dev_server(serve, directory, "--reload-extra-file", "templates/**/*.html",
                        workers=None)
    server.wait_for_log(r"Watching \d+ directories for changes to \*\.py and 1 more pattern")
    (directory / "templates" / "page.html").write_text("<p>2</p>\n")
    server.wait_for_log(r"Detected a change in .*page\.html")
    (directory / "templates" / "page.txt").write_text("no\n")
    time.sleep(0.5)  # deliberate: a restart, were there one, would come meanwhile
    assert changes_seen(server) == 1


def test_reload_with_tls_and_static(serve, tmp_path):
    directory = project(tmp_path)
    (directory / "static").mkdir()
    (directory / "static" / "a.txt").write_text("static file\n")
    server = dev_server(serve, directory, "--tls",
                        f"{CERTS / 'localhost.pem'}:{CERTS / 'localhost.key'}",
                        "--static", f"/static={directory / 'static'}", workers=None)
    server.wait_for_log(r"Watching \d+ directories")
    context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))

    def https_get(path: str) -> str:
        conn = http.client.HTTPSConnection("localhost", server.port, context=context,
                                           timeout=10)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    assert https_get("/static/a.txt") == "static file\n"
    assert https_get("/") == "v1 first"
    write_app(directory, "v2")
    deadline = time.monotonic() + 10
    while https_get("/") != "v2 first":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert https_get("/static/a.txt") == "static file\n"


def test_reload_flags_that_do_not_fit_are_named():
    preload = subprocess.run([str(BINARY), "serve", "--reload", "--preload", "x:app"],
                             capture_output=True, text=True, timeout=30)
    assert preload.returncode == 2 and "--reload" in preload.stderr, preload.stderr
    extra = subprocess.run([str(BINARY), "serve", "--reload-extra-file", "*.html", "x:app"],
                           capture_output=True, text=True, timeout=30)
    assert extra.returncode == 2 and "--reload-extra-file" in extra.stderr, extra.stderr
    bad_glob = subprocess.run([str(BINARY), "serve", "--reload", "--reload-extra-file", "a[",
                               "x:app"], capture_output=True, text=True, timeout=30)
    assert bad_glob.returncode == 2 and "--reload-extra-file" in bad_glob.stderr


def test_the_watcher_is_a_child_and_goes_with_the_master(serve, tmp_path):
    directory = project(tmp_path)
    server = dev_server(serve, directory, workers=None)
    server.wait_for_log(r"Watching \d+ directories")
    want = {"rwsgi-front", "rwsgi-worker", "rwsgi-reloader"}
    deadline = time.monotonic() + 10
    while True:  # a child is named once it has set its title
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in children_of(server.pid)}
        if names == want or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert names == want, names
    server.stop()
    assert server.proc.returncode == 0


def test_the_access_log_is_on_under_reload(serve, tmp_path):
    directory = project(tmp_path)
    server = dev_server(serve, directory, workers=None)
    assert get(server.port, "/?x=1") == (200, "v1 first")
    server.wait_for_log(r'"GET /\?x=1 HTTP/1.1" 200 8 ')
