"""The config file (rwsgi.toml, -c), RWSGI_* variables and their precedence under the
command line, seen through `rwsgi config`, `rwsgi check` and a real `rwsgi serve`."""

from __future__ import annotations

import os
import re
import tomllib
import urllib.request

import pytest

from conftest import ROOT, Server, alive, children_of, free_port
from kit import clean_env, rwsgi

ORIGIN = re.compile(r"^(?:# )?(\w+)\b.*?  # from: (.+)$", re.M)


def effective(*args: str, cwd, **env: str) -> tuple[dict, dict]:
    """`rwsgi config`: the values (parsed as TOML) and where each came from."""
    done = rwsgi("config", *args, cwd=cwd, **env)
    assert done.returncode == 0, done.stderr
    return tomllib.loads(done.stdout), dict(ORIGIN.findall(done.stdout))


def test_flag_over_env_over_file_over_default(tmp_path):
    (tmp_path / "rwsgi.toml").write_text("# workers for everyone\n\nworkers = 2\n")
    values, origins = effective("-w", "4", cwd=tmp_path, RWSGI_WORKERS="3")
    assert (values["workers"], origins["workers"]) == (4, "command line")
    values, origins = effective(cwd=tmp_path, RWSGI_WORKERS="3")
    assert (values["workers"], origins["workers"]) == (3, "env RWSGI_WORKERS")
    values, origins = effective(cwd=tmp_path)
    assert (values["workers"], origins["workers"]) == (2, "file rwsgi.toml:3")
    (tmp_path / "rwsgi.toml").unlink()
    values, origins = effective(cwd=tmp_path)
    cores = len(os.sched_getaffinity(0))
    assert (values["workers"], origins["workers"]) == (cores, "default")


@pytest.mark.parametrize("layer", ["file", "env", "flag"])
def test_each_layer_alone(tmp_path, layer):
    """A list, a switch, a number and a string set by one layer only."""
    flags, env = [], {}
    if layer == "file":
        (tmp_path / "rwsgi.toml").write_text(
            'bind = ["127.0.0.1:8001", "unix:/tmp/rwsgi-cfg.sock"]\npreload = true\n'
            'max_requests = 50\nmax_body_size = "2m"\n')
        where = lambda line: f"file rwsgi.toml:{line}"  # noqa: E731
    elif layer == "env":
        env = dict(RWSGI_BIND="127.0.0.1:8001,unix:/tmp/rwsgi-cfg.sock", RWSGI_PRELOAD="true",
                   RWSGI_MAX_REQUESTS="50", RWSGI_MAX_BODY_SIZE="2m")
        where = lambda line: None  # noqa: E731
    else:
        flags = ["-b", "127.0.0.1:8001", "--bind", "unix:/tmp/rwsgi-cfg.sock", "--preload",
                 "--max-requests", "50", "--max-body-size", "2m"]
        where = lambda line: "command line"  # noqa: E731
    values, origins = effective(*flags, cwd=tmp_path, **env)
    assert values["bind"] == ["127.0.0.1:8001", "unix:/tmp/rwsgi-cfg.sock"]
    assert values["preload"] is True
    assert values["max_requests"] == 50
    assert values["max_body_size"] == "2m"
    for line, key in enumerate(["bind", "preload", "max_requests", "max_body_size"], 1):
        assert origins[key] == (where(line) or f"env RWSGI_{key.upper()}")
    assert origins["compress"] == "default" and values["compress"] is False


def test_env_switch_off_beats_file_on(tmp_path):
    (tmp_path / "rwsgi.toml").write_text("preload = true\n")
    values, origins = effective(cwd=tmp_path, RWSGI_PRELOAD="0")
    assert (values["preload"], origins["preload"]) == (False, "env RWSGI_PRELOAD")


def test_variables_clap_already_read_still_work(tmp_path):
    (tmp_path / "rwsgi.toml").write_text('forwarded_allow_ips = "10.0.0.1"\nlog_level = "error"\n')
    values, origins = effective(cwd=tmp_path, FORWARDED_ALLOW_IPS="*", RWSGI_LOG_LEVEL="debug")
    assert (values["forwarded_allow_ips"], origins["forwarded_allow_ips"]) == (
        "*", "env FORWARDED_ALLOW_IPS")
    assert (values["log_level"], origins["log_level"]) == ("debug", "env RWSGI_LOG_LEVEL")
    values, _ = effective("--forwarded-allow-ips", "10.0.0.2", cwd=tmp_path,
                          FORWARDED_ALLOW_IPS="*")
    assert values["forwarded_allow_ips"] == "10.0.0.2"


def test_tables_of_static_internal_and_tls(tmp_path):
    # No app: `rwsgi config` then lists without resolving (the files do not exist).
    (tmp_path / "rwsgi.toml").write_text(
        '[[static]]\nprefix = "/assets"\ndir = "public"\n'
        '[[static]]\nprefix = "/media"\ndir = "/srv/media"\n'
        '[[internal]]\nprefix = "/protected"\ndir = "private"\n'
        '[[tls]]\ncert = "site.pem"\nkey = "site.key"\n'
        '[[tls]]\ncert = "other.pem"\n')
    values, origins = effective(cwd=tmp_path)
    assert values["static"] == ["/assets=public", "/media=/srv/media"]
    assert values["internal"] == ["/protected=private"]
    assert values["tls"] == ["site.pem:site.key", "other.pem"]
    assert origins["tls"] == "file rwsgi.toml:10"
    done = rwsgi("config", "config_app:app", cwd=tmp_path)
    assert done.returncode == 2
    assert "rwsgi.toml:10: tls: site.pem: cannot read it" in done.stderr


def test_config_output_is_a_config_file(tmp_path):
    """What `rwsgi config` prints, saved as rwsgi.toml, gives the same configuration."""
    first = rwsgi("config", "-w", "3", "--keep-alive", "2.5", "--umask", "0o027",
                  "--pythonpath", "a,b", "config_app:app", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "rwsgi.toml").write_text(first.stdout)
    again = rwsgi("config", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert tomllib.loads(again.stdout) == tomllib.loads(first.stdout)
    assert tomllib.loads(again.stdout)["pythonpath"] == ["a", "b"]


def test_explicit_config_file_replaces_the_default_one(tmp_path):
    (tmp_path / "rwsgi.toml").write_text("workers = 2\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "prod.toml").write_text("max_queue = 7\n")
    values, origins = effective("-c", "conf/prod.toml", cwd=tmp_path)
    assert origins["workers"] == "default"
    assert (values["max_queue"], origins["max_queue"]) == (7, "file conf/prod.toml:1")
    values, _ = effective(cwd=tmp_path, RWSGI_CONFIG="conf/prod.toml")
    assert values["max_queue"] == 7


def test_missing_explicit_config_file(tmp_path):
    done = rwsgi("serve", "-c", "missing.toml", "config_app:app", cwd=tmp_path)
    assert done.returncode == 2
    assert "missing.toml" in done.stderr and "no such config file" in done.stderr


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    (tmp_path / "rwsgi.toml").write_text('app = "config_app:app"\nwokers = 3\n')
    done = rwsgi("serve", cwd=tmp_path)
    assert done.returncode == 2
    assert "rwsgi.toml:2: unknown key `wokers`, did you mean `workers`?" in done.stderr
    assert "Listening" not in done.stderr + done.stdout


def test_unknown_field_of_a_table(tmp_path):
    (tmp_path / "rwsgi.toml").write_text('[[static]]\nprefix = "/s"\ndri = "."\n')
    done = rwsgi("config", cwd=tmp_path)
    assert done.returncode == 2
    assert "rwsgi.toml:3: static: unknown field `dri`, did you mean `dir`?" in done.stderr


@pytest.mark.parametrize("text, message", [
    ('workers = "four"', 'rwsgi.toml:1: workers: invalid value "four"'),
    ("preload = 1", "rwsgi.toml:1: preload: expected true or false, found an integer"),
    ("workers = [1, 2]", "rwsgi.toml:1: workers: expected one value, found an array"),
    ('log_level = "loud"', 'rwsgi.toml:1: log_level: invalid value "loud": expected one of'),
    ("workers = ", "rwsgi.toml:1: "),
])
def test_mistyped_values_are_named(tmp_path, text, message):
    (tmp_path / "rwsgi.toml").write_text(text + "\n")
    done = rwsgi("check", "config_app:app", cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr


def test_invalid_value_names_where_it_was_set(tmp_path):
    (tmp_path / "rwsgi.toml").write_text('app = "config_app:app"\nworkers = 0\n')
    done = rwsgi("serve", cwd=tmp_path)
    assert done.returncode == 2
    assert "rwsgi.toml:2: workers: must be at least 1" in done.stderr
    done = rwsgi("serve", "config_app:app", cwd=tmp_path.parent, RWSGI_WORKERS="0")
    assert done.returncode == 2
    assert "RWSGI_WORKERS (--workers): must be at least 1" in done.stderr
    done = rwsgi("serve", "-w", "0", "config_app:app", cwd=tmp_path.parent)
    assert "--workers: must be at least 1" in done.stderr


@pytest.mark.parametrize("var, value, message", [
    ("RWSGI_WORKERS", "four", 'RWSGI_WORKERS (--workers): invalid value "four"'),
    ("RWSGI_PRELOAD", "maybe", 'RWSGI_PRELOAD (--preload): "maybe" is not a boolean'),
    ("RWSGI_KEEP_ALIVE", "soon", 'RWSGI_KEEP_ALIVE (--keep-alive): invalid value "soon"'),
])
def test_bad_environment_variable_is_named(tmp_path, var, value, message):
    done = rwsgi("serve", "config_app:app", cwd=tmp_path, **{var: value})
    assert done.returncode == 2
    assert message in done.stderr, done.stderr


def test_serve_needs_an_app_somewhere(tmp_path):
    done = rwsgi("serve", cwd=tmp_path)
    assert done.returncode == 2
    assert "APP" in done.stderr and "rwsgi.toml" in done.stderr


def test_check_a_good_app(tmp_path):
    port = free_port()
    (tmp_path / "rwsgi.toml").write_text(f'bind = "127.0.0.1:{port}"\n')
    done = rwsgi("check", "config_app:app", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "config_app:app" in done.stdout
    assert "Listening" not in done.stderr


def test_check_a_broken_app(tmp_path):
    done = rwsgi("check", "config_broken:app", cwd=tmp_path)
    assert done.returncode == 4
    assert "Traceback" in done.stderr
    assert "_load_settings" in done.stderr
    assert "LookupError: CONFIG_BROKEN: the settings module is missing" in done.stderr


def test_check_a_missing_module(tmp_path):
    (tmp_path / "rwsgi.toml").write_text('app = "no_such_module_here:app"\n')
    done = rwsgi("check", cwd=tmp_path)
    assert done.returncode == 4
    assert "No module named 'no_such_module_here'" in done.stderr


def test_serve_from_rwsgi_toml_in_the_working_directory(tmp_path):
    port = free_port()
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "hello.txt").write_text("static hello\n")
    (tmp_path / "rwsgi.toml").write_text(
        f'app = "config_app:app"\n'
        f'bind = ["127.0.0.1:{port}"]\n'
        f'workers = 2\n'
        f'[[static]]\nprefix = "/files"\ndir = "public"\n')
    server = Server(None, workers=None, bind="", port=port, cwd=tmp_path, env=clean_env())
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/files/hello.txt", timeout=10) as r:
            assert r.read() == b"static hello\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.read().startswith(b"config app, worker ")
        booted = {int(p) for p in re.findall(r"Booting worker with pid: (\d+)", server.log)}
        assert len([p for p in children_of(server.pid) if p in booted and alive(p)]) == 2
    finally:
        server.stop()


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configuration"):]
    return section[section.index("```toml\n") + 8:section.index("```\n", section.index("```toml"))]


def test_readme_example_lists_every_setting(tmp_path):
    """The README's example rwsgi.toml names every key `rwsgi config` knows (a new flag
    needs its line there), and every line of it, uncommented, is a valid setting."""
    example = readme_example()
    _, origins = effective(cwd=tmp_path)
    written = set(re.findall(r"^(?:# )?(?:\[\[)?(\w+)(?: =|\]\])", example, re.M))
    assert set(origins) - written == set(), "keys missing from README's example rwsgi.toml"
    (tmp_path / "rwsgi.toml").write_text(example)
    done = rwsgi("config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert tomllib.loads(done.stdout)["app"] == "myapp:app"
    # Uncommented, without the app (whose paths do not exist here): the forms are right.
    everything = re.sub(r"^# (?=\[\[|\w+ = )", "", example, flags=re.M)
    (tmp_path / "rwsgi.toml").write_text(everything.replace('app = "myapp:app"', ""))
    done = rwsgi("config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    values = tomllib.loads(done.stdout)
    assert values["static"] == ["/assets=static"] and values["tls"] == ["certs/site.pem:certs/site.key"]


def test_config_shows_the_values_decided_at_run_time(tmp_path):
    """`rwsgi config` prints what will be used, defaults computed at start included,
    never "not set" (issue 15)."""
    done = rwsgi("config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "not set" not in done.stdout
    values = tomllib.loads(done.stdout)
    assert values["workers"] == len(os.sched_getaffinity(0))
    assert values["bind"] == ["127.0.0.1:8000"]
    assert (values["timeout"], values["worker_class"], values["threads"]) == (30, "sync", 1)
    assert values["log_level"] == "info" and values["front_threads"] >= 1
    assert re.search(r"^# chdir: the working directory +# from: default$", done.stdout, re.M)
    values, _ = effective("--reload", "--threads", "4", cwd=tmp_path)
    assert (values["workers"], values["timeout"], values["worker_class"]) == (1, 0, "gthread")
