"""Third-party applications driven by the clients users run against them (issue 13
item 2): a git push through dulwich's git server, and a Flask form, both sent with a
chunked body. Each lost its body before rwsgi passed a buffered body's length."""

from __future__ import annotations

import os
import subprocess
import http.client
import json

TIMEOUT = 60


def run(*args: str, cwd, env=None) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_git_push_of_a_chunked_pack_through_dulwich(serve, tmp_path):
    """git sends a pack bigger than http.postBuffer chunked; dulwich must receive it
    whole (it read a stale Transfer-Encoding and decoded the chunking again: 500)."""
    from dulwich.repo import Repo

    Repo.init_bare(str(tmp_path / "server.git"), mkdir=True)
    server = serve("thirdparty_apps:git()", workers=1,
                   env={"RWSGI_TEST_REPO": str(tmp_path / "server.git")})
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
           "HOME": str(tmp_path), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.test",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t.test"}
    run("git", "clone", "-q", f"{server.url}/", "work", cwd=tmp_path, env=env)
    work = tmp_path / "work"
    (work / "blob.bin").write_bytes(os.urandom(2_000_000))  # incompressible: a big pack
    run("git", "add", "blob.bin", cwd=work, env=env)
    run("git", "commit", "-qm", "a big file", cwd=work, env=env)
    head = run("git", "rev-parse", "HEAD", cwd=work, env=env).strip()
    out = run("git", "-c", "http.postBuffer=65536", "push", "origin", "HEAD:refs/heads/main",
              cwd=work, env=env)
    assert "main" in out
    # What the server stored is the commit, and a fresh clone has the file intact.
    assert Repo(str(tmp_path / "server.git")).refs[b"refs/heads/main"].decode() == head
    run("git", "clone", "-q", "-b", "main", f"{server.url}/", "again", cwd=tmp_path, env=env)
    assert (tmp_path / "again" / "blob.bin").read_bytes() == (work / "blob.bin").read_bytes()
    assert "Traceback" not in server.log


def test_flask_form_posted_chunked(serve):
    """A login form posted chunked: Flask (Werkzeug) reads the form by CONTENT_LENGTH;
    without it the form read empty (Django's CSRF check failed on the same)."""
    server = serve("thirdparty_apps:flask_form()", workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("POST", "/login", body=iter([b"username=admin&", b"csrf=t0ken"]),
                 encode_chunked=True,
                 headers={"Content-Type": "application/x-www-form-urlencoded",
                          "Transfer-Encoding": "chunked"})
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read()) == {"username": "admin", "token": "t0ken",
                                           "length": len("username=admin&csrf=t0ken")}
    conn.close()
