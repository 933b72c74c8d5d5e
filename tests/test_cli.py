"""The command line: --version/--help, flag mistakes, failed binds, and the APP forms."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

from conftest import APPS, BINARY, alive, children_of, free_port
from kit import get, run


def run_watching_children(*args: str, timeout: float = 15.0, cwd=None):
    """Runs rwsgi, polling its children while it runs.

    Returns (exit code, output, seconds it ran, every child pid seen)."""
    env = dict(os.environ, PYTHONPATH=str(APPS), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    proc = subprocess.Popen([str(BINARY), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", env=env,
                            cwd=cwd)
    seen: set[int] = set()
    try:
        while proc.poll() is None and time.monotonic() - started < timeout:
            seen.update(children_of(proc.pid))
            time.sleep(0.005)
        elapsed = time.monotonic() - started
        assert proc.poll() is not None, f"rwsgi {args} still running after {timeout}s"
        out = proc.stdout.read()
        return proc.returncode, out, elapsed, seen
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        proc.stdout.close()


# -- --version, --help, flag mistakes -----------------------------------------------


def test_version():
    code, out = run("--version")
    assert code == 0, out
    # The Python in use too (tests/test_install.py checks which).
    assert re.fullmatch(r"rwsgi \d+\.\d+\.\d+\S* on Python 3\.\d+\.\d+ \(/\S+\)\n", out), out


def test_help():
    code, out = run("--help")
    assert code == 0, out
    assert "rwsgi" in out
    assert re.search(r"^\s+serve\b", out, re.M), out


def test_serve_help_lists_the_flags():
    code, out = run("serve", "--help")
    assert code == 0, out
    for flag in ("--bind", "--workers", "--chdir", "--pythonpath", "--preload",
                 "--graceful-timeout"):
        assert flag in out, flag


def test_unknown_flag_is_named():
    code, out = run("serve", "--frobnicate-hard", "basic:hello")
    assert code != 0
    assert "--frobnicate-hard" in out, out


def test_zero_workers_is_refused():
    code, out = run("serve", "-b", f"127.0.0.1:{free_port()}", "-w", "0", "basic:hello")
    assert code != 0, out
    assert re.search(r"--workers|-w\b", out), out
    assert "Listening at" not in out


def test_non_numeric_workers_is_refused():
    code, out = run("serve", "-b", f"127.0.0.1:{free_port()}", "-w", "abc", "basic:hello")
    assert code != 0, out
    assert re.search(r"--workers|-w\b", out), out
    assert "abc" in out, out


def test_bad_bind_string_is_named():
    code, out = run("serve", "-b", "nonsense:port", "-w", "1", "basic:hello")
    assert code != 0, out
    assert "nonsense:port" in out, out
    assert "Listening at" not in out


def test_missing_chdir_is_named():
    missing = "/nonexistent/rwsgi-test-dir"
    code, out = run("serve", "-b", f"127.0.0.1:{free_port()}", "-w", "1", "--chdir", missing,
                    "basic:hello")
    assert code != 0, out
    assert missing in out, out
    assert "Listening at" not in out


def test_bind_in_use_fails_with_one_line_and_no_children():
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        code, out, elapsed, seen = run_watching_children(
            "serve", "-b", f"127.0.0.1:{port}", "-w", "2", "basic:hello", timeout=15)
    finally:
        holder.close()
    assert code == 1, out
    assert elapsed < 10, f"took {elapsed:.1f}s to give up"
    naming = [line for line in out.splitlines() if f"127.0.0.1:{port}" in line]
    assert len(naming) == 1, out
    assert re.search(r"bind", naming[0], re.I), naming[0]
    assert "Listening at" not in out
    # No child was left behind (none should even have been forked before the bind): a
    # child forked by mistake would still be alive a moment after the master's exit.
    time.sleep(0.2)
    assert not [p for p in seen if alive(p)], (seen, out)


# -- APP forms ------------------------------------------------------------------------


def test_module_colon_callable(serve):
    server = serve("proc_default:other", workers=1)
    assert get(server.port) == (200, b"the wrong callable")


def test_module_alone_means_application(serve):
    server = serve("proc_default", workers=1)
    assert get(server.port) == (200, b"default application callable")


def test_dir_path_form_from_another_cwd(serve, tmp_path):
    target = APPS / "proc_pkg" / "proc_dirapp"
    server = serve(f"{target}:app", workers=1, cwd=tmp_path)
    status, body = get(server.port)
    assert status == 200
    data = json.loads(body)
    assert data["file"] == str(APPS / "proc_pkg" / "proc_dirapp.py")
    assert str(APPS / "proc_pkg") in data["sys_path"]
    assert os.path.realpath(data["cwd"]) == os.path.realpath(tmp_path)


def test_relative_dir_path_form(serve):
    # Relative to the cwd: tests/ holds apps/proc_pkg/proc_dirapp.py.
    server = serve("apps/proc_pkg/proc_dirapp:app", workers=1, cwd=APPS.parent)
    status, body = get(server.port)
    assert status == 200
    assert json.loads(body)["file"] == str(APPS / "proc_pkg" / "proc_dirapp.py")


def test_factory_without_arguments(serve):
    server = serve("proc_apps:create_app()", workers=1)
    assert get(server.port) == (200, b"made by create_app()")


def test_factory_with_literal_arguments(serve):
    server = serve("proc_apps:make_app('x', 2)", workers=1)
    status, body = get(server.port)
    assert status == 200
    assert json.loads(body) == {"args": ["x", 2], "types": ["str", "int"], "kwargs": {}}


def test_factory_with_keyword_argument(serve):
    # gunicorn accepts keyword literals too: `module:factory(name='y')`.
    server = serve("proc_apps:make_app(name='y')", workers=1)
    try:
        status, body = get(server.port)
    except OSError as exc:
        raise AssertionError(f"no answer ({exc!r}):\n{server.log}") from exc
    assert status == 200
    assert json.loads(body) == {"args": [], "types": [], "kwargs": {"name": "y"}}


def test_missing_callable_is_named():
    # Several runs: every worker fails the same way, and whichever tells must not be lost
    # (the master stopping the other workers must not cut the report short).
    for workers in (3, 2, 2, 2, 2):
        code, out = run("serve", "-b", f"127.0.0.1:{free_port()}", "-w", str(workers),
                        "proc_apps:no_such_app", timeout=15)
        assert code == 4, out
        assert "no_such_app" in out, out
        assert "proc_apps" in out, out
        # Told once, not by every worker (the message may quote the APP once more).
        assert len([l for l in out.splitlines() if "no_such_app" in l]) <= 2, out


def test_missing_module_is_named():
    for _ in range(5):
        code, out = run("serve", "-b", f"127.0.0.1:{free_port()}", "-w", "2",
                        "proc_no_such_module:app", timeout=15)
        assert code != 0, out
        assert re.search(r"No module named .proc_no_such_module", out), out


MARKER = "PROC_BOOM_MARKER_5f9c2e"  # built at run time by proc_boom.py


def test_import_error_traceback_once_and_exit_4():
    # Several runs, as the report must neither repeat per worker nor be lost to a race
    # (the master stopping the other workers must not cut the report short).
    for workers in (3, 3, 2, 2, 2):
        code, out, elapsed, _ = run_watching_children(
            "serve", "-b", f"127.0.0.1:{free_port()}", "-w", str(workers), "proc_boom:app",
            timeout=20)
        assert code == 4, out
        assert elapsed < 8, f"took {elapsed:.1f}s"
        assert out.count(MARKER) == 1, out
        assert "Traceback" in out, out
        assert "proc_boom.py" in out, out
        # Each worker booted once: no restart loop.
        assert len(re.findall(r"Booting worker with pid", out)) <= workers, out


def test_import_error_with_preload_traceback_once():
    code, out, elapsed, seen = run_watching_children(
        "serve", "-b", f"127.0.0.1:{free_port()}", "-w", "3", "--preload", "proc_boom:app",
        timeout=20)
    assert code != 0, out
    assert elapsed < 8, f"took {elapsed:.1f}s"
    assert out.count(MARKER) == 1, out
    assert not seen, f"forked children although the preload failed: {seen}\n{out}"


def front_threads(pid: int) -> int:
    """How many front-tier threads (one runtime each) process `pid` runs: the main
    thread, `rwsgi-front`, and `rwsgi-front-N` for the others."""
    tasks = Path(f"/proc/{pid}/task")
    return sum((task / "comm").read_text().strip().startswith("rwsgi-front")
               for task in tasks.iterdir())


def test_front_threads_sets_the_front_tier_runtime(serve):
    server = serve("basic:hello", "--front-threads", "3", workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200
    conn.close()
    counts = [front_threads(pid) for pid in children_of(server.pid)]
    # One child is the front tier; the worker runs none.
    assert sorted(counts) == [0, 3], counts


def test_zero_front_threads_is_refused():
    code, out = run("serve", "-b", f"127.0.0.1:{free_port()}", "--front-threads", "0",
                    "basic:hello")
    assert code != 0, out
    assert "--front-threads" in out, out
    assert "Listening at" not in out
