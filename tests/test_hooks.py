"""--hooks MODULE: gunicorn's worker-side server hooks, called in each worker at the
right moments with gunicorn-like arguments; a failing hook fails nothing else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import APPS, BINARY
from kit import eventually, get, wait_workers


def read_calls(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def wait_calls(log: Path, hook: str, count: int = 1, timeout: float = 10) -> list[dict]:
    def calls():
        made = [c for c in read_calls(log) if c["hook"] == hook]
        return len(made) >= count and made

    try:
        return eventually(calls, timeout, f"{hook} called {count}x")
    except AssertionError:
        raise AssertionError(f"{hook} not called {count}x: {read_calls(log)}") from None


def test_each_hook_is_called_at_its_moment_with_gunicorn_like_arguments(serve, tmp_path):
    log = tmp_path / "hooks.jsonl"
    server = serve("hooks_app:app", "--hooks", "hooks_record", workers=2,
                   env={"HOOKS_LOG": str(log)})
    workers = sorted(wait_workers(server, 2))
    forks = wait_calls(log, "post_fork", 2)
    inits = wait_calls(log, "post_worker_init", 2)
    for fork in forks:
        assert fork["worker"]["pid"] == fork["process"]
        assert fork["worker"]["ppid"] == server.pid
        assert fork["server"] == {"pid": server.pid, "num_workers": 2,
                                  "wsgi_app": "hooks_app:app", "app_uri": "hooks_app:app",
                                  "worker_class": "sync", "threads": 1}
        assert fork["worker"]["alive"] is True
        assert fork["worker"]["booted"] is False
        assert fork["worker"]["log"] == "Logger"
        assert fork["app_imported"] is False, "post_fork ran after the app was imported"
    assert sorted(f["process"] for f in forks) == workers
    assert len({f["worker"]["age"] for f in forks}) == 2
    for init in inits:
        assert init["worker"]["booted"] is False and init["wsgi"] is True  # as gunicorn

    status, body = get(server.port, "/teapot?x=1&y=2")
    assert status == 418
    pid = int(body)
    posts = wait_calls(log, "post_request")
    calls = read_calls(log)
    pre = next(c for c in calls if c["hook"] == "pre_request")
    order = [c["hook"] for c in calls if c["process"] == pid and c["hook"] != "post_worker_init"]
    assert order[-3:] == ["pre_request", "app", "post_request"], order
    assert pre["process"] == pre["worker"]["pid"] == pid
    assert pre["worker"]["nr"] == 0
    assert pre["req"]["method"] == "GET"
    assert pre["req"]["path"] == "/teapot"
    assert pre["req"]["query"] == "x=1&y=2"
    assert pre["req"]["uri"] == "/teapot?x=1&y=2"
    assert pre["req"]["version"] == [1, 1]
    assert pre["req"]["scheme"] == "http"
    assert ["HOST", f"127.0.0.1:{server.port}"] in pre["req"]["headers"]
    assert pre["req"]["remote_addr"][0] == "127.0.0.1"
    post = posts[0]
    assert post["worker"]["pid"] == pid and post["worker"]["nr"] == 1
    assert post["req"] == pre["req"]
    assert post["carried"] == "set in pre_request"
    assert post["environ_path"] == "/teapot"
    resp = post["resp"]
    assert resp["status"] == "418 I'm a teapot" and resp["status_code"] == 418
    assert ["X-Hooked", "yes"] in resp["headers"]
    assert resp["sent"] == resp["response_length"] == len(body)
    assert "pre_request hook saw GET /teapot" in server.wait_for_log("pre_request hook saw")

    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0, server.log[-3000:]
    exits = wait_calls(log, "worker_exit", 2)
    assert sorted(e["process"] for e in exits) == workers
    for exit_ in exits:
        assert exit_["worker"]["pid"] == exit_["process"]
        assert exit_["worker"]["alive"] is False
        assert exit_["worker"]["booted"] is True
        assert exit_["worker"]["nr"] == (1 if exit_["process"] == pid else 0)
        assert exit_["server"]["pid"] == server.pid
    assert not [c for c in read_calls(log) if c["hook"] == "worker_abort"]


def test_post_request_runs_after_the_response_has_left(serve, tmp_path):
    log = tmp_path / "hooks.jsonl"
    server = serve("hooks_app:app", "--hooks", "hooks_record", workers=1,
                   env={"HOOKS_LOG": str(log)})
    started = time.monotonic()
    status, _ = get(server.port, "/handshake", timeout=8)
    assert status == 200
    assert time.monotonic() - started < 8
    Path(str(log) + ".client-done").touch()
    (post,) = wait_calls(log, "post_request")
    assert post["client_done"] is True
    assert post["resp"]["status"] == "200 OK" and post["resp"]["status_code"] == 200


def test_a_failing_hook_is_logged_and_the_request_still_succeeds(serve):
    server = serve("hooks_app:app", "--hooks", "hooks_raise", workers=1,
                   env={"HOOKS_LOG": os.devnull})
    (worker,) = wait_workers(server, 1)
    for _ in range(3):
        status, body = get(server.port, "/anything")
        assert status == 200 and int(body) == worker
    text = server.wait_for_log(r"RuntimeError: pre_request exploded on /anything", count=3)
    assert "Exception in pre_request hook" in text
    assert "Traceback (most recent call last)" in text
    assert "ValueError: post_request exploded too" in text
    assert wait_workers(server, 1) == [worker]


def test_a_missing_hooks_module_stops_the_server_naming_the_flag(serve):
    server = serve("hooks_app:app", "--hooks", "no_such_hooks_module", workers=2, wait=False)
    code = server.wait(20)
    assert code != 0
    assert code == 3, server.log
    assert server.log.count("--hooks: cannot load the hooks module") == 1, server.log
    assert "No module named 'no_such_hooks_module'" in server.log


def test_a_missing_hooks_file_is_refused_before_starting():
    proc = subprocess.run([str(BINARY), "serve", "-b", "127.0.0.1:0", "--hooks",
                           "/no/such/dir/hooks.py", "hooks_app:app"],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2
    assert "--hooks" in proc.stderr and "no such file" in proc.stderr, proc.stderr


GUNICORN_CONF = '''
import json, os
bind = "0.0.0.0:9999"   # a gunicorn setting: ignored by rwsgi
workers = 7

def post_request(worker, req):  # gunicorn also accepts 2 arguments
    with open(os.environ["HOOKS_LOG"], "a") as log:
        log.write(json.dumps({"hook": "post_request", "process": os.getpid(),
                              "pid": worker.pid, "path": req.path}) + "\\n")
'''


def test_hooks_from_a_gunicorn_config_file_path(serve, tmp_path):
    log = tmp_path / "hooks.jsonl"
    conf = tmp_path / "conf" / "gunicorn.conf.py"
    conf.parent.mkdir()
    conf.write_text(GUNICORN_CONF)
    # Relative to where rwsgi starts, not to --chdir.
    server = serve("hooks_app:app", "--hooks", "conf/gunicorn.conf.py", "--chdir", str(APPS),
                   workers=1, cwd=tmp_path, env={"HOOKS_LOG": str(log)})
    status, body = get(server.port, "/from-file")
    assert status == 200
    (post,) = wait_calls(log, "post_request")
    assert post["pid"] == post["process"] == int(body)
    assert post["path"] == "/from-file"


def test_hooks_with_preload_run_in_the_workers(serve, tmp_path):
    log = tmp_path / "hooks.jsonl"
    server = serve("hooks_app:app", "--hooks", "hooks_record", "--preload", workers=2,
                   env={"HOOKS_LOG": str(log)})
    workers = sorted(wait_workers(server, 2))
    forks = wait_calls(log, "post_fork", 2)
    assert sorted(f["process"] for f in forks) == workers
    assert all(f["app_imported"] for f in forks)  # imported by the master, as gunicorn
    assert get(server.port, "/")[0] == 200
    wait_calls(log, "post_request")


def test_worker_abort_is_called_when_the_timeout_aborts_a_worker(serve, tmp_path):
    log = tmp_path / "hooks.jsonl"
    server = serve("timeout_app:app", "--hooks", "hooks_record", "--timeout", "1", workers=1,
                   env={"HOOKS_LOG": str(log)})
    (worker,) = wait_workers(server, 1)
    status, _ = get(server.port, "/sleep", timeout=15)
    assert status == 504
    (abort,) = wait_calls(log, "worker_abort")
    assert abort["process"] == worker
    assert abort["worker"]["pid"] == worker and abort["worker"]["alive"] is False
    # It ran before the worker went: no worker_exit for an aborted worker.
    assert not [c for c in read_calls(log) if c["hook"] == "worker_exit"]


def test_hooks_of_concurrent_requests_in_a_gthread_worker_keep_to_their_own(serve, tmp_path):
    from test_threads import at_once

    log = tmp_path / "hooks.jsonl"
    server = serve("hooks_app:app", "--hooks", "hooks_record", "--threads", "4", workers=1,
                   env={"HOOKS_LOG": str(log)})
    (fork,) = wait_calls(log, "post_fork")
    assert (fork["server"]["worker_class"], fork["server"]["threads"]) == ("gthread", 4)
    results = at_once(12, lambda i: get(server.port, f"/t/{i}"))
    assert all(status == 200 for status, _ in results), results
    posts = wait_calls(log, "post_request", 12)
    assert sorted(p["req"]["path"] for p in posts) == sorted(f"/t/{i}" for i in range(12))
    for post in posts:
        # Each request's hook arguments are its own, though they ran side by side.
        assert post["environ_path"] == post["req"]["path"]
        assert post["carried"] == "set in pre_request"
        assert post["resp"]["status_code"] == 200
