"""gunicorn's configuration carried over unchanged: its config file (Python), its
command-line spellings, GUNICORN_CMD_ARGS and its -b forms, observed on a real server."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import BINARY, ROOT, Server, alive, free_port
from kit import clean_env, rwsgi, wait_workers

ORIGIN = re.compile(r"^(?:# )?(\w+)\b.*?  # from: (.+)$", re.M)


def effective(*args: str, cwd=None, **env: str) -> tuple[dict, dict, str]:
    """`rwsgi config`: the values, where each came from, and what it warned."""
    done = rwsgi("config", *args, cwd=cwd, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    return tomllib.loads(done.stdout), dict(ORIGIN.findall(done.stdout)), done.stderr


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


CONF = """\
import os
bind = "127.0.0.1:{port}"
workers = 3
timeout = 1
accesslog = "-"
worker_tmp_dir = "/dev/shm"

def post_fork(server, worker):
    server.log.info("post_fork hook: worker %s", worker.pid)

def when_ready(server):
    server.log.info("never called")
"""


def test_a_gunicorn_conf_py_is_applied(tmp_path):
    port = free_port()
    (tmp_path / "gunicorn.conf.py").write_text(CONF.format(port=port))
    server = Server("timeout_app:app", "-c", "gunicorn.conf.py", workers=None, bind="",
                    port=port, cwd=tmp_path, wait=False)
    try:
        server.wait_ready()
        server.wait_for_log(r"post_fork hook: worker \d+", count=3)
        # bind: the port from the file answers; workers: three of them.
        status, _ = get(f"http://127.0.0.1:{port}/")
        assert status == 200
        wait_workers(server, 3)  # a child takes its title a moment after its fork
        # accesslog = "-": the access line on stdout.
        server.wait_for_log(r'"GET / HTTP/1.1" 200')
        # timeout = 1: a silent worker is aborted and its client gets 504.
        status, _ = get(f"http://127.0.0.1:{port}/sleep", timeout=15)
        assert status == 504
        log = server.log
        # One warning, with the file and line, for a setting rwsgi ignores.
        warnings = [line for line in log.splitlines() if "worker_tmp_dir" in line]
        assert len(warnings) == 1, log
        assert "[WARNING] gunicorn.conf.py:6: worker_tmp_dir is ignored: no heartbeat" in warnings[0]
        assert "gunicorn.conf.py:11: when_ready is ignored" in log
        assert "never called" not in log
    finally:
        server.stop()


def test_config_shows_where_each_value_of_the_file_came_from(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text(CONF.format(port=9999))
    # Found in the working directory without -c, as gunicorn finds it.
    values, origins, warned = effective("timeout_app:app", cwd=tmp_path)
    assert values["workers"] == 3 and values["bind"] == ["127.0.0.1:9999"]
    assert origins["workers"] == "file gunicorn.conf.py:3"
    assert origins["timeout"] == "file gunicorn.conf.py:4"
    assert origins["access_logfile"] == "file gunicorn.conf.py:5"
    assert origins["hooks"] == "file gunicorn.conf.py:8"
    assert "worker_tmp_dir is ignored" in warned


def test_python_module_form_and_wsgi_app(tmp_path):
    (tmp_path / "myconf.py").write_text("wsgi_app = 'basic:hello'\nworkers = 2\nkeepalive = 3\n")
    values, origins, _ = effective("-c", "python:myconf", cwd=tmp_path)
    assert values["app"] == "basic:hello"
    assert values["keep_alive"] == 3
    assert origins["workers"].endswith("myconf.py:2")


def test_rwsgi_toml_wins_over_gunicorn_conf_py_in_the_directory(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("workers = 3\n")
    (tmp_path / "rwsgi.toml").write_text("workers = 5\n")
    values, _, _ = effective(cwd=tmp_path)
    assert values["workers"] == 5


def test_a_failing_config_file_is_one_error(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("workers = 1 / 0\n")
    done = rwsgi("serve", "basic:hello", cwd=tmp_path)
    assert done.returncode == 2
    assert "ZeroDivisionError" in done.stderr
    assert done.stderr.strip().endswith(
        "rwsgi: error: gunicorn.conf.py: the gunicorn config file failed to run (its error is above)")


def test_a_bad_value_names_the_file_line(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("\nworkers = 'four'\n")
    done = rwsgi("check", "basic:hello", cwd=tmp_path)
    assert done.returncode == 2
    assert "gunicorn.conf.py:2: workers: invalid value \"four\"" in done.stderr


def test_gunicorn_cmd_args_below_rwsgi_variables(tmp_path):
    args = "-w 3 --timeout 7 --keep-alive 4 --worker-tmp-dir /dev/shm"
    values, origins, warned = effective("basic:hello", cwd=tmp_path, GUNICORN_CMD_ARGS=args,
                                        RWSGI_TIMEOUT="9")
    assert values["workers"] == 3 and origins["workers"] == "env GUNICORN_CMD_ARGS"
    assert values["keep_alive"] == 4
    assert values["timeout"] == 9 and origins["timeout"] == "env RWSGI_TIMEOUT"
    assert "GUNICORN_CMD_ARGS: --worker-tmp-dir is ignored" in warned
    # ...and over the config file, under the command line.
    (tmp_path / "gunicorn.conf.py").write_text("workers = 2\nbacklog = 10\n")
    values, _, _ = effective("-w", "4", "basic:hello", cwd=tmp_path, GUNICORN_CMD_ARGS="-w 3 --backlog 11")
    assert (values["workers"], values["backlog"]) == (4, 11)


def serves_by_environment(tmp_path, port: int, env: dict, workers: int):
    """With no --bind and no -w: the server the environment describes answers on `port`
    with `workers` workers."""
    server = Server("basic:hello", workers=None, bind="", port=port, cwd=tmp_path, env=env,
                    wait=False)
    try:
        server.wait_ready()
        assert get(f"http://127.0.0.1:{port}/")[0] == 200
        wait_workers(server, workers)
    finally:
        server.stop()


def test_gunicorn_cmd_args_serves(tmp_path):
    port = free_port()
    serves_by_environment(tmp_path, port, {"GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} -w 2"},
                          2)


@pytest.mark.parametrize("form", [":{port}", "tcp://127.0.0.1:{port}", "[::]:{port}",
                                  "unix:{sock}", "unix://{sock}"])
def test_bind_forms(serve, tmp_path, form):
    port = free_port()
    sock = tmp_path / "s.sock"
    server = serve("basic:hello", bind=form.format(port=port, sock=sock), port=None)
    if "unix" in form:
        out = subprocess.run(["curl", "-s", "--unix-socket", str(sock), "http://x/"],
                             capture_output=True, text=True, timeout=10)
        assert out.stdout == "Hello, World!\n"
    else:
        # Every interface: reachable on the loopback.
        host = "[::1]" if "::" in form else "127.0.0.1"
        assert get(f"http://{host}:{port}/")[0] == 200


def test_bind_host_alone_means_port_8000():
    # Either it listens there, or 8000 is taken: both name the address.
    server = Server("basic:hello", bind="0.0.0.0", port=None, wait=False)
    try:
        log = server.wait_for_log(r"0\.0\.0\.0:8000")
        assert "0.0.0.0:8000" in log
    finally:
        server.stop()


def test_bind_fd(serve):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fd = listener.fileno()
    server = serve("basic:hello", bind=f"fd://{fd}", port=port, pass_fds=[fd])
    listener.close()
    assert get(f"http://127.0.0.1:{port}/")[0] == 200


def test_repeated_flags_take_the_last():
    values, _, _ = effective("-w", "1", "-w", "2", "--timeout", "5", "--timeout", "7",
                             "--preload", "--preload", "basic:hello")
    assert (values["workers"], values["timeout"], values["preload"]) == (2, 7, True)
    # Repeatable ones still add up.
    values, _, _ = effective("-b", "127.0.0.1:1", "-b", "127.0.0.1:2", "basic:hello")
    assert values["bind"] == ["127.0.0.1:1", "127.0.0.1:2"]


def test_repeated_workers_serve_the_last(serve):
    server = serve("timeout_app:app", "-w", "3", workers=1)  # -w 1 -w 3
    wait_workers(server, 3)


def test_log_level_in_capitals(serve):
    server = serve("basic:hello", "--log-level", "DEBUG")
    server.wait_for_log(r"\[DEBUG\]")


def test_no_subcommand_means_serve(tmp_path):
    port = free_port()
    argv = [str(BINARY), "-w", "1", "-b", f"127.0.0.1:{port}", "basic:hello"]
    proc = subprocess.Popen(argv, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        while "Listening at" not in line:
            line = proc.stdout.readline()
            assert line, "rwsgi exited"
        assert get(f"http://127.0.0.1:{port}/")[0] == 200
    finally:
        proc.terminate()
        proc.wait(15)


def test_unknown_rwsgi_variable_is_warned_with_a_suggestion(serve):
    server = serve("basic:hello", env={"RWSGI_WROKERS": "3"})
    server.wait_for_log(r"\[WARNING\] RWSGI_WROKERS is not an rwsgi variable and is ignored: "
                        r"did you mean RWSGI_WORKERS\?")


def test_ignored_gunicorn_flag_is_one_warning(serve):
    server = serve("basic:hello", "--worker-tmp-dir", "/dev/shm", "--no-sendfile")
    log = server.wait_for_log("--no-sendfile is ignored")
    assert "[WARNING] --worker-tmp-dir is ignored: no heartbeat files are needed" in log


@pytest.mark.parametrize("flags, says", [
    (["--statsd-host", "localhost:8125"], "--statsd-host: rwsgi sends no StatsD metrics: use --metrics-bind"),
    (["--paste", "x.ini"], "--paste: rwsgi does not read PasteDeploy files"),
    (["--proxy-protocol"], "--proxy-protocol: rwsgi does not read the PROXY protocol"),
])
def test_refused_gunicorn_flag_says_why_and_what_instead(flags, says):
    done = rwsgi("serve", *flags, "basic:hello")
    assert done.returncode == 2
    assert done.stderr.strip() == f"rwsgi: error: {says}" or says in done.stderr, done.stderr


def test_check_config_and_print_config():
    done = rwsgi("--check-config", "basic:hello")
    assert done.returncode == 0, done.stderr
    assert "configuration OK" in done.stdout
    done = rwsgi("--check-config", "no_such_module:app")
    assert done.returncode == 4
    done = rwsgi("serve", "--print-config", "-w", "3", "basic:hello")
    assert done.returncode == 0
    assert re.search(r"^workers = 3 +# from: command line$", done.stdout, re.M)


def test_name_sets_the_process_titles(serve):
    server = serve("basic:hello", "-n", "shop")
    server.wait_for_log("Booting worker", count=2)
    title = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")[0]
    assert title == b"rwsgi: master [shop]"


ENV_APP = """\
import os
def app(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [(os.environ.get('SHOP_MODE', '-') + ' ' + os.environ.get('OTHER', '-')).encode()]
"""


def test_env_reaches_the_application(serve, tmp_path):
    (tmp_path / "env_app.py").write_text(ENV_APP)
    server = serve("env_app:app", "-e", "SHOP_MODE=blue", "--env", "OTHER=x=y",
                   env={"PYTHONPATH": str(tmp_path)})
    assert get(server.url + "/") == (200, "blue x=y")
    done = rwsgi("check", "-e", "NOEQUALS", "basic:hello")
    assert done.returncode == 2 and '--env: "NOEQUALS" is not KEY=VALUE' in done.stderr


def test_capture_output_sends_prints_to_the_error_log(tmp_path):
    log = tmp_path / "error.log"
    (tmp_path / "printing.py").write_text(
        "print('printed at import', flush=True)\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n")
    port = free_port()
    proc = subprocess.Popen([str(BINARY), "serve", "-w", "1", "-b", f"127.0.0.1:{port}",
                             "--error-logfile", str(log), "--capture-output", "printing:app"],
                            cwd=tmp_path, env=clean_env(PYTHONPATH=str(tmp_path)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while "printed at import" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            assert proc.poll() is None
            time.sleep(0.05)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert b"printed at import" not in out


def test_daemon_detaches_and_serves(tmp_path):
    port = free_port()
    pidfile, log = tmp_path / "rwsgi.pid", tmp_path / "error.log"
    done = subprocess.run([str(BINARY), "-D", "-p", str(pidfile), "--error-logfile", str(log),
                           "-w", "1", "-b", f"127.0.0.1:{port}", "basic:hello"],
                          env=clean_env(), capture_output=True, timeout=15)
    # The command returns at once, as gunicorn -D does; the daemon goes on.
    assert done.returncode == 0 and done.stdout == b"", done
    deadline = time.monotonic() + 15
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.05)
    daemon = int(pidfile.read_text())
    try:
        while "Listening at" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert get(f"http://127.0.0.1:{port}/")[0] == 200
        # A new session: no controlling terminal to get back.
        stat = Path(f"/proc/{daemon}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[3]) != os.getsid(0)  # session id differs from ours
    finally:
        os.kill(daemon, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not alive(daemon)


def readme_gunicorn_table() -> list[tuple[str, list[str], str]]:
    """The README's table of gunicorn settings: (name, flags, what rwsgi does)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("| gunicorn setting | flags | rwsgi |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, flags, status = [cell.strip() for cell in line.strip("|").split(" | ", 2)]
        rows.append((name.strip("`"), re.findall(r"`(-[^`]+)`", flags), status))
    return rows


def test_readme_table_lists_all_of_gunicorns_settings():
    rows = readme_gunicorn_table()
    assert len(rows) == 119 and len({name for name, _, _ in rows}) == 119
    assert sum(1 for _, flags, _ in rows if flags) == 94


@pytest.mark.parametrize("name, flags, status",
                         [row for row in readme_gunicorn_table()
                          if row[1] and row[2].startswith(("refused", "ignored"))])
def test_readme_table_says_what_the_binary_does(name, flags, status):
    """Each flag the table calls refused is refused with its sentence; each it calls
    ignored is accepted with one warning giving its reason."""
    why = status.split(": ", 1)[1]
    for flag in flags:
        # A switch takes no value; a flag that takes one is given "1".
        done = rwsgi("config", flag)
        if status.startswith("refused"):
            assert done.returncode == 2, done.stderr
            assert why in done.stderr.replace("\n", " "), done.stderr
            continue
        if done.returncode != 0:
            done = rwsgi("config", flag, "1")
        assert done.returncode == 0, done.stderr
        assert done.stderr.count(f"is ignored: {why}") == 1, done.stderr


def test_port_and_web_concurrency_are_the_defaults(tmp_path):
    """gunicorn's defaults from the environment (hosting platforms set them): PORT binds
    0.0.0.0:$PORT and WEB_CONCURRENCY sizes the workers, unless something else says."""
    port = free_port()
    defaults = {"PORT": str(port), "WEB_CONCURRENCY": "3"}
    values, _, _ = effective("basic:hello", cwd=tmp_path, **defaults)
    assert values["bind"] == [f"0.0.0.0:{port}"] and values["workers"] == 3
    values, _, _ = effective("-w", "2", "-b", "127.0.0.1:1", "basic:hello", cwd=tmp_path,
                             **defaults)
    assert values["bind"] == ["127.0.0.1:1"] and values["workers"] == 2
    serves_by_environment(tmp_path, port, defaults, 3)


@pytest.mark.parametrize("name,value", [("WEB_CONCURRENCY", "lots"), ("WEB_CONCURRENCY", "0"),
                                        ("PORT", "http")])
def test_a_bad_port_or_web_concurrency_is_refused(tmp_path, name, value):
    done = rwsgi("serve", "basic:hello", cwd=tmp_path, **{name: value})
    assert done.returncode != 0
    assert name in done.stderr and value in done.stderr, done.stderr
