"""The Python environment a worker gives the application.

--chdir, --pythonpath, PYTHONPATH, --preload, sys.argv, sys.executable, signal state,
and a Flask app imported from a virtualenv (VIRTUAL_ENV) that the session creates.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import APPS
from kit import fetch, get_json

INFO_APP = textwrap.dedent('''
    import json, os, sys

    def app(environ, start_response):
        body = json.dumps({"cwd": os.getcwd(), "file": os.path.abspath(__file__),
                           "sys_path": sys.path, **EXTRA}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
''')


def write_app(directory: Path, module: str, extra: str = "EXTRA = {}\n") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{module}.py"
    path.write_text(extra + INFO_APP)
    return path


def real(path) -> str:
    return os.path.realpath(path)


# -- --chdir, --pythonpath, PYTHONPATH -------------------------------------------------


def test_chdir_finds_the_app_and_sets_cwd(serve, tmp_path):
    appdir = tmp_path / "site"
    write_app(appdir, "proc_chdir_app")
    # Started from elsewhere: the module is only found relative to --chdir.
    server = serve("proc_chdir_app:app", "--chdir", str(appdir), workers=1, cwd=APPS.parent)
    data = get_json(server.port)
    assert real(data["cwd"]) == real(appdir)
    assert real(data["file"]) == real(appdir / "proc_chdir_app.py")


def test_chdir_with_relative_dir_form(serve, tmp_path):
    appdir = tmp_path / "site"
    write_app(appdir / "sub", "proc_chdir_sub")
    server = serve("sub/proc_chdir_sub:app", "--chdir", str(appdir), workers=1,
                   cwd=APPS.parent)
    data = get_json(server.port)
    assert real(data["cwd"]) == real(appdir)
    assert real(data["file"]) == real(appdir / "sub" / "proc_chdir_sub.py")


def test_pythonpath_puts_both_dirs_on_sys_path(serve, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_app(a, "proc_ppa", "import proc_ppb\nEXTRA = {'b_file': proc_ppb.__file__}\n")
    b.mkdir()
    (b / "proc_ppb.py").write_text("VALUE = 'from b'\n")
    server = serve("proc_ppa:app", "--pythonpath", f"{a},{b}", workers=1, cwd=tmp_path.parent)
    data = get_json(server.port)
    paths = [real(p) for p in data["sys_path"]]
    assert real(a) in paths and real(b) in paths, paths
    assert real(data["b_file"]) == real(b / "proc_ppb.py")
    # Put before the installed packages, so they can shadow them (as gunicorn does).
    site = [i for i, p in enumerate(data["sys_path"]) if "site-packages" in p]
    assert site, data["sys_path"]
    assert paths.index(real(a)) < site[0] and paths.index(real(b)) < site[0], data["sys_path"]


def test_pythonpath_environment_variable(serve, tmp_path):
    extra = tmp_path / "from_env"
    write_app(extra, "proc_envpath_app")
    server = serve("proc_envpath_app:app", workers=1, cwd=tmp_path,
                   env={"PYTHONPATH": f"{APPS}{os.pathsep}{extra}"})
    data = get_json(server.port)
    paths = [real(p) for p in data["sys_path"]]
    assert real(extra) in paths and real(APPS) in paths
    assert real(data["file"]) == real(extra / "proc_envpath_app.py")


# -- --preload -----------------------------------------------------------------------


def _import_pids(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_preload_imports_once_in_the_master(serve, tmp_path):
    log = tmp_path / "imports"
    server = serve("proc_preload:app", "--preload", workers=2,
                   env={"PROC_IMPORT_LOG": str(log)})
    answers = [get_json(server.port) for _ in range(6)]
    for answer in answers:
        assert answer["import_pid"] == server.pid, answer
        assert answer["pid"] != server.pid
    # No wait: the fixture waited for the Ready line, so every worker has booted (one
    # that imported the app again would have done so before saying it was ready).
    assert _import_pids(log) == [server.pid]


def test_without_preload_each_worker_imports(serve, tmp_path):
    log = tmp_path / "imports"
    server = serve("proc_preload:app", workers=2, env={"PROC_IMPORT_LOG": str(log)})
    answers = [get_json(server.port) for _ in range(6)]
    for answer in answers:
        assert answer["import_pid"] == answer["pid"], answer
        assert answer["pid"] != server.pid
    pids = _import_pids(log)  # both workers booted: the fixture waited for Ready
    assert len(pids) == 2 and server.pid not in pids, pids
    assert {a["pid"] for a in answers} <= set(pids)


# -- sys.argv, sys.executable, the interpreter ---------------------------------------


def test_sys_argv_is_a_sane_list_of_str(serve):
    server = serve("proc_apps:app", workers=1)
    data = get_json(server.port, "/info")
    argv = data["argv"]
    assert isinstance(argv, list) and argv, argv
    assert set(data["argv_types"]) == {"str"}
    assert argv[0], argv


def test_sys_executable_is_a_real_python(serve):
    server = serve("proc_apps:app", workers=1)
    data = get_json(server.port, "/info")
    exe = data["executable"]
    assert exe and os.path.isabs(exe), exe
    assert os.path.isfile(exe) and os.access(exe, os.X_OK), exe
    assert os.path.basename(exe).startswith("python"), exe
    # It really is the interpreter the app runs in: same version, same prefix.
    out = subprocess.run([exe, "-c", "import sys; print(sys.version); print(sys.prefix)"],
                         capture_output=True, text=True, timeout=30).stdout.splitlines()
    assert out == [data["version"], data["prefix"]]


def test_embedded_python_is_the_python3_on_path(serve):
    # DESIGN.md: the binary must load the libpython of the Python it was built for, not
    # another build of the same version, so that the user's installed packages are seen.
    server = serve("proc_apps:app", workers=1)
    data = get_json(server.port, "/info")
    python3 = shutil.which("python3")
    assert python3
    out = subprocess.run([python3, "-c", "import sys; print(sys.version); print(sys.prefix)"],
                         capture_output=True, text=True, timeout=30).stdout.splitlines()
    assert out == [data["version"], data["prefix"]]


# -- signals -------------------------------------------------------------------------


def test_signal_state_seen_by_the_app(serve):
    """What is sensible, and checked here:

    - the app module is imported in the main thread, so `signal.signal()` at import time
      works (Python only allows it there), and the handler it installs for a signal the
      server does not use (SIGUSR1) is still in place when requests are served;
    - the worker does not leave SIGINT or SIGTERM ignored from Python's point of view;
    - a program the app starts (subprocess) inherits no blocked signals and does not
      ignore TERM/INT/QUIT/HUP, so it can be stopped normally (a blocked mask or SIG_IGN
      survives exec and would make the app's children unkillable by these signals).
    """
    server = serve("proc_signals:app", workers=1)
    data = get_json(server.port)
    assert data["import_signal_error"] is None, data
    assert data["import_in_main_thread"] is True
    assert data["usr1_handler_kept"] is True
    assert not data["sigint_ignored"], data["sigint"]
    assert not data["sigterm_ignored"], data["sigterm"]
    watched = [signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM]
    bits = sum(1 << (s - 1) for s in watched)
    assert data["child"]["SigBlk"] == 0, hex(data["child"]["SigBlk"])
    assert data["child"]["SigIgn"] & bits == 0, hex(data["child"]["SigIgn"])


def test_server_still_stops_gracefully_after_app_installs_handlers(serve):
    server = serve("proc_signals:app", workers=2)
    get_json(server.port)
    server.signal(signal.SIGTERM)
    assert server.wait(10) == 0, server.log


# -- a virtualenv with Flask ---------------------------------------------------------


@pytest.fixture(scope="session")
def flask_venv(tmp_path_factory) -> Path:
    """A fresh virtualenv (no system site-packages) with Flask installed by pip."""
    venv = tmp_path_factory.mktemp("proc-venv") / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                          text=True, timeout=180)
    assert made.returncode == 0, made.stderr
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", "flask"],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return venv


def _venv_env(venv: Path) -> dict:
    # As `source venv/bin/activate` would; PYTHONPATH only has tests/apps (no Flask there).
    assert not list(APPS.glob("flask*")), "tests/apps must not provide flask"
    return {"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(APPS)}


def test_flask_imported_from_the_virtualenv(serve, flask_venv):
    server = serve("proc_flask:app", workers=2, env=_venv_env(flask_venv))
    status, headers, body = fetch(server.port, "/info")
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    venv = real(flask_venv)
    assert real(data["flask_file"]).startswith(venv + os.sep), data["flask_file"]
    assert real(data["prefix"]) == venv, data["prefix"]
    assert data["executable"].startswith(str(flask_venv / "bin") + os.sep), data["executable"]


def test_flask_routes(serve, flask_venv):
    server = serve("proc_flask:app", workers=1, env=_venv_env(flask_venv))
    status, headers, body = fetch(server.port, "/hello/World")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"greeting": "Hello, World!", "n": 5}

    status, headers, body = fetch(server.port, "/no/such/route")
    assert status == 404
    assert headers["content-type"].startswith("text/html")
    assert b"Not Found" in body
    assert int(headers["content-length"]) == len(body)
