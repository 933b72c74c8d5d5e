"""Django's ASGI handler (django.core.asgi) served with -k asgi and without -k (its
`application` is recognised as an ASGI callable): an async view, a sync view, a form
posted with its CSRF token; Django refuses lifespan, which --lifespan auto takes
quietly (issue 17)."""

from __future__ import annotations

import re

import httpx
import pytest

pytest.importorskip("django")


@pytest.mark.parametrize("flags", [["-k", "asgi"], []], ids=["k-asgi", "recognised"])
def test_django_asgi_views_and_a_csrf_protected_form(serve, flags):
    server = serve("django_asgi:application", *flags, workers=1)
    with httpx.Client(base_url=server.url, timeout=15) as client:
        answer = client.get("/async/", params={"q": "é"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["view"] == "async" and answer.json()["query"] == "é"
        assert answer.json()["path"] == "/async/" and answer.json()["scheme"] == "http"

        answer = client.get("/sync/")
        assert answer.json() == {"view": "sync", "loop_thread": False}

        page = client.get("/form/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        assert "csrftoken" in client.cookies
        answer = client.post("/form/", data={"csrfmiddlewaretoken": token, "name": "<ada>"})
        assert (answer.status_code, answer.text) == (200, "hello &lt;ada&gt;")
        # Without the token: Django's CSRF check refuses it.
        client.cookies.clear()
        assert client.post("/form/", data={"name": "x"}).status_code == 403

    if not flags:
        assert "The application is an ASGI callable" in server.log


def test_django_streams_takes_a_large_body_and_sees_its_mount_point(serve):
    server = serve("django_asgi:application", "-k", "asgi", workers=1,
                   env={"SCRIPT_NAME": "/mnt"})
    with httpx.Client(base_url=server.url, timeout=15) as client:
        with client.stream("GET", "/mnt/stream/") as streamed:
            assert list(streamed.iter_lines()) == ["part-0", "part-1", "part-2"]
        body = bytes(range(256)) * 1200  # several http.request messages
        answer = client.post("/mnt/upload/", content=body)
        assert answer.json() == {"size": len(body), "script_name": "/mnt",
                                 "path_info": "/upload/", "path": "/mnt/upload/"}


def test_django_refuses_lifespan_quietly(serve):
    server = serve("django_asgi:application", "-k", "asgi", workers=2)
    assert httpx.get(f"{server.url}/async/").status_code == 200
    log = server.wait_for_log("lifespan' protocol appears unsupported", count=2)
    lines = [line for line in log.splitlines() if "lifespan" in line.lower()]
    assert len(lines) == 2 and all("[INFO]" in line for line in lines), lines
    assert "Traceback" not in log and "[ERROR]" not in log, log
