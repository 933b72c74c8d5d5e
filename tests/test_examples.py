"""The deployment examples in examples/ name only flags rwsgi knows, with values it takes:
their command lines are run through `rwsgi config` (which parses and lists them without
serving)."""

from __future__ import annotations

import json
import re
import subprocess

import httpx
import pytest

from conftest import BINARY, ROOT
from kit import eventually

EXAMPLES = ROOT / "examples"


def flags_of_service(unit: str = "rwsgi.service") -> list[str]:
    text = (EXAMPLES / "systemd" / unit).read_text()
    command = re.search(r"^ExecStart=(.*?)(?<!\\)$", text, re.M | re.S).group(1)
    words = command.replace("\\\n", " ").split()
    assert words[:2] == ["/usr/local/bin/rwsgi", "serve"], words
    return words[2:-1]  # without the APP


def flags_of_deployment() -> list[str]:
    text = (EXAMPLES / "kubernetes" / "deployment.yaml").read_text()
    args = re.findall(r"^\s+- (--\S+)", text, re.M)
    assert "serve" in re.findall(r"^\s+- (serve)$", text, re.M)
    return args


def run_config(flags: list[str]) -> str:
    proc = subprocess.run([str(BINARY), "config", *flags], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, (flags, proc.stderr)
    return proc.stdout


def test_the_systemd_unit_uses_real_flags():
    flags = flags_of_service()
    assert "--health-path" in flags and "--error-logfile" in flags
    listing = run_config(flags)
    assert 'health_path = "/healthz"' in listing, listing
    assert "workers = 4" in listing, listing


def test_the_acme_systemd_unit_uses_real_flags_and_its_state_directory():
    text = (EXAMPLES / "systemd" / "rwsgi-acme.service").read_text()
    assert "StateDirectory=myapp" in text
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in text
    flags = flags_of_service("rwsgi-acme.service")
    assert "--acme-cache" not in flags
    listing = run_config(flags)
    assert 'acme = ["example.com", "www.example.com"]' in listing, listing
    assert 'redirect_http = ["0.0.0.0:80"]' in listing, listing


def test_the_kubernetes_deployment_uses_real_flags():
    flags = flags_of_deployment()
    assert "--health-path=/healthz" in flags
    listing = run_config(flags)
    assert 'bind = ["0.0.0.0:8000"]' in listing, listing
    assert "graceful_timeout = 30" in listing, listing


def test_the_fastapi_chat_example_serves_its_page_its_http_api_and_its_room(serve):
    """examples/fastapi_chat as its docstring runs it: the page from --static, the HTTP
    API and the WebSocket room from the app."""
    pytest.importorskip("fastapi")
    chat = EXAMPLES / "fastapi_chat"
    server = serve(f"{chat}/app:app", "-k", "asgi", "--static", f"/static={chat / 'static'}",
                   workers=1)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        root = client.get("/")
        assert (root.status_code, root.headers["location"]) == (307, "/static/")
        page = client.get("/static/")
        assert page.status_code == 200 and "new WebSocket(" in page.text
        assert page.headers["content-type"].startswith("text/html")
        assert client.get("/api/messages").json() == {"messages": [], "connected": 0}
        answer = client.post("/api/messages", json={"name": "ada", "text": "hello"})
        assert (answer.status_code, answer.json()) == (201, {"delivered_to": 0})
        assert client.get("/api/messages").json()["messages"] == [
            {"name": "ada", "text": "hello"}]
        assert client.post("/api/messages", json={"name": "", "text": "x"}).status_code == 422
        # The room over WebSockets: a message from one reaches both, and one posted
        # over HTTP reaches the sockets too.
        from websockets.sync.client import connect
        url = f"ws://127.0.0.1:{server.port}/ws"
        with connect(url, open_timeout=10) as ada, connect(url, open_timeout=10) as bob:
            eventually(lambda: client.get("/api/messages").json()["connected"] == 2,
                       what="both sockets in the room")
            ada.send(json.dumps({"name": "ada", "text": "hi bob"}))
            for socket in (ada, bob):
                assert json.loads(socket.recv(timeout=10)) == {"name": "ada", "text": "hi bob"}
            bob.send(json.dumps({"name": "", "text": "no name"}))
            assert "error" in json.loads(bob.recv(timeout=10))
            answer = client.post("/api/messages", json={"name": "eve", "text": "from http"})
            assert answer.json() == {"delivered_to": 2}
            for socket in (ada, bob):
                assert json.loads(socket.recv(timeout=10))["name"] == "eve"
        eventually(lambda: client.get("/api/messages").json()["connected"] == 0,
                   what="the room to empty once the sockets closed")
    # The command line of the docstring names real flags.
    docstring = (chat / "app.py").read_text()
    assert ("rwsgi serve -k asgi --static /static=examples/fastapi_chat/static "
            "examples/fastapi_chat/app:app") in docstring
