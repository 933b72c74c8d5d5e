"""Installing rwsgi: the wheel in a virtualenv, and the standalone binary beside one.

The wheel (`pip install .` from this checkout, built by maturin) is installed into a
fresh venv of each of the machine's two Pythons — the `python3` on PATH (pyenv's) and
Debian's `/usr/bin/python3` — and serves a Flask app installed in that venv, with no
venv activated: the `rwsgi` in the venv's bin/ runs with that venv's interpreter. The
standalone binary (`cargo build --release`, built against the `python3` on PATH) refuses
a venv of the other Python in one line, and `--version` names the Python in use.

Building the wheel is a release build: both builds share one CARGO_TARGET_DIR
(target/wheel, apart from target/release so that the standalone binary the other tests
run is never replaced), so that only what depends on the Python is rebuilt.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import APPS, BINARY, ROOT
from kit import get_json

SYSTEM_PYTHON = "/usr/bin/python3"
BASE_EXECUTABLE = ("import os, sys; print(os.path.realpath(getattr(sys, '_base_executable', "
                   "sys.executable))); print(sys.version.split()[0])")
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
# A release build on two shared cores, and pip fetching maturin and Flask.
INSTALL_TIMEOUT = 1800


def identity(python: str) -> tuple[str, str]:
    """(the real executable behind `python`, its version) — a venv's resolved to its base."""
    out = subprocess.run([python, "-c", BASE_EXECUTABLE], capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    return out[0], out[1]


def path_python() -> str:
    """The Python the standalone binary embeds: the `python3` on PATH (see test_pyenv)."""
    found = subprocess.run(["sh", "-c", "command -v python3"], capture_output=True, text=True)
    return identity(found.stdout.strip())[0]


@pytest.fixture(scope="session")
def two_pythons() -> dict[str, str]:
    """The two CPython builds this machine has; both are needed to prove anything here."""
    pythons = {"path": path_python()}
    if os.path.exists(SYSTEM_PYTHON):
        pythons["system"] = identity(SYSTEM_PYTHON)[0]
    if pythons.get("system") in (None, pythons["path"]):
        reason = (f"needs two different Pythons: the python3 on PATH ({pythons['path']}) "
                  f"and {SYSTEM_PYTHON} (Debian's)")
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI is set, and CI's machine has both")
        pytest.skip(reason)
    return pythons


def clean_env(venv: Path | None = None) -> dict:
    """The environment without any activated venv (the test command activates its own)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def make_venv(python: str, venv: Path) -> Path:
    made = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True,
                          timeout=180)
    assert made.returncode == 0, made.stdout + made.stderr
    return venv


def pip_install(venv: Path, *what: str):
    """`pip install WHAT` with the venv's own pip, as a user in that venv would."""
    env = clean_env(venv)
    env["CARGO_TARGET_DIR"] = str(ROOT / "target" / "wheel")
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", *what],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env,
                          cwd=ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]


@pytest.fixture(scope="session")
def wheel_venvs(two_pythons, tmp_path_factory) -> dict[str, Path]:
    """A fresh venv of each Python with Flask and the wheel built from this checkout
    (`pip install .`), built once per test session."""
    venvs = {}
    for name, python in two_pythons.items():
        venv = make_venv(python, tmp_path_factory.mktemp(f"wheel-{name}") / "venv")
        pip_install(venv, str(ROOT), "flask")
        venvs[name] = venv
    return venvs


@pytest.mark.parametrize("which", ["path", "system"])
def test_the_wheel_serves_flask_with_its_venvs_python(serve, wheel_venvs, two_pythons, which):
    venv = wheel_venvs[which]
    rwsgi = venv / "bin" / "rwsgi"
    assert rwsgi.is_file() and os.access(rwsgi, os.X_OK), sorted(os.listdir(venv / "bin"))
    # Not activated: the venv's rwsgi finds its venv by itself, as a console script does.
    env = {**clean_env(), "VIRTUAL_ENV": "", "PYTHONPATH": str(APPS)}
    server = serve("proc_flask:app", workers=1, binary=rwsgi, env=env, cwd=APPS)
    data = get_json(server.port, "/info")
    base, version = identity(str(venv / "bin" / "python"))
    assert base == two_pythons[which]
    assert data["version"].split()[0] == version, data["version"]
    assert os.path.realpath(data["prefix"]) == os.path.realpath(venv), data
    assert os.path.realpath(data["flask_file"]).startswith(os.path.realpath(venv) + os.sep)
    assert data["executable"].startswith(str(venv / "bin") + os.sep), data["executable"]
    assert f"on Python {version} ({venv / 'bin'}" in server.log.splitlines()[0], server.log
    assert get_json(server.port, "/hello/wheel") == {"greeting": "Hello, wheel!", "n": 5}


def test_the_wheels_version_names_its_venvs_python(wheel_venvs):
    venv = wheel_venvs["system"]
    out = subprocess.run([str(venv / "bin" / "rwsgi"), "--version"], capture_output=True,
                         text=True, timeout=30, env=clean_env())
    assert out.returncode == 0, out.stderr
    _, version = identity(SYSTEM_PYTHON)
    assert out.stdout.strip() == f"rwsgi {VERSION} on Python {version} ({venv / 'bin' / 'python3'})"


def test_standalone_version_names_the_embedded_python(two_pythons):
    out = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True,
                         timeout=30, env=clean_env())
    assert out.returncode == 0, out.stderr
    base, version = identity(two_pythons["path"])
    assert out.stdout.strip() == f"rwsgi {VERSION} on Python {version} ({base})", out.stdout


def test_standalone_refuses_a_venv_of_another_python(serve, two_pythons, tmp_path):
    """The standalone binary embeds the python3 on PATH; a venv of Debian's Python would
    load the other standard library (or drop the venv's packages): one line, exit 2."""
    other = make_venv(SYSTEM_PYTHON, tmp_path / "other")
    server = serve("basic:hello", workers=1, cwd=APPS, env=clean_env(other), wait=False)
    assert server.wait(30) == 2, server.log
    lines = server.log.splitlines()
    assert len(lines) == 1, server.log
    embedded, embedded_version = identity(two_pythons["path"])
    theirs, their_version = identity(SYSTEM_PYTHON)
    line = lines[0]
    assert line.startswith(f"rwsgi: error: the virtualenv {other} was made by "
                           f"Python {their_version} ({theirs})"), line
    assert f"embeds Python {embedded_version} ({embedded})" in line, line
    assert "pip install rwsgi" in line and f"PYO3_PYTHON={theirs} cargo build" in line, line
    # `rwsgi check` refuses it the same way, before importing anything.
    check = subprocess.run([str(BINARY), "check", "basic:hello"], capture_output=True,
                           text=True, timeout=30, cwd=APPS, env=clean_env(other))
    assert check.returncode == 2 and check.stderr == line + "\n", check.stderr


def test_standalone_serves_a_venv_of_its_own_python(serve, two_pythons, tmp_path):
    """The same check lets a venv of the embedded Python through (by VIRTUAL_ENV)."""
    venv = make_venv(two_pythons["path"], tmp_path / "own")
    server = serve("proc_apps:app", workers=1, env={"VIRTUAL_ENV": str(venv)})
    data = get_json(server.port, "/info")
    assert os.path.realpath(data["prefix"]) == os.path.realpath(venv), data
    assert f"({venv / 'bin' / 'python3'})" in server.log.splitlines()[0], server.log


def test_an_idle_venv_beside_the_app_gets_one_hint(serve, two_pythons, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "idle_app.py").write_text((APPS / "basic.py").read_text())
    venv = make_venv(two_pythons["path"], site / ".venv")
    server = serve("idle_app:hello", workers=1, cwd=site, env={"VIRTUAL_ENV": ""})
    hints = [line for line in server.log.splitlines() if "virtualenv" in line]
    assert len(hints) == 1, server.log
    assert "[WARNING] ./.venv holds a virtualenv that is not active" in hints[0], hints
    assert "source ./.venv/bin/activate" in hints[0], hints
    # Activated, it is the venv in use: nothing to say.
    active = serve("idle_app:hello", workers=1, cwd=site, env={"VIRTUAL_ENV": str(venv)})
    assert "virtualenv" not in active.log, active.log
