"""Plain ASGI 3 applications for tests/test_asgi_extensions.py: the extensions of the
HTTP spec (www.rst: http.response.pathsend, http.response.trailers) and the response
rules a server must enforce whatever the application sends."""

import asyncio
import hashlib
import json
import os
from urllib.parse import parse_qsl


def query(scope) -> dict:
    return dict(parse_qsl(scope["query_string"].decode()))


async def _lifespan(receive, send):
    while True:
        message = await receive()
        step = message["type"].rsplit(".", 1)[1]
        await send({"type": f"lifespan.{step}.complete"})
        if step == "shutdown":
            return


async def pathsend(scope, receive, send):
    """Sends the file ?path= with http.response.pathsend when the server offers it,
    with headers of its own (kept) and a Content-Length of its own (replaced); 501 with
    the offered extensions as JSON when it does not."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await receive()
    extensions = scope.get("extensions") or {}
    if "http.response.pathsend" not in extensions:
        body = json.dumps(sorted(extensions)).encode()
        await send({"type": "http.response.start", "status": 501, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-disposition", b'attachment; filename="f"'),
        (b"content-length", b"1"),
        (b"x-app", b"kept"),
    ]})
    await send({"type": "http.response.pathsend", "path": query(scope)["path"]})


async def trailers(scope, receive, send):
    """Streams ?n= chunks, then a checksum trailer when the server offers trailers; the
    offered extensions in a header."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await receive()
    extensions = scope.get("extensions") or {}
    offered = "http.response.trailers" in extensions
    await send({"type": "http.response.start", "status": 200, "trailers": offered,
                "headers": [(b"content-type", b"text/plain"),
                            (b"trailer", b"x-checksum"),
                            (b"x-extensions", ",".join(sorted(extensions)).encode())]})
    digest = hashlib.sha256()
    for i in range(int(query(scope).get("n", "3"))):
        chunk = f"chunk-{i}\n".encode()
        digest.update(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    if offered:
        await send({"type": "http.response.trailers", "more_trailers": False,
                    "headers": [(b"x-checksum", digest.hexdigest().encode())]})


async def declared_length(scope, receive, send):
    """Declares Content-Length: 10 and sends ?send= bytes (in two chunks); notes its
    call in $HOOKS_LOG when set (tests of --hooks)."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if "HOOKS_LOG" in os.environ:
        with open(os.environ["HOOKS_LOG"], "a") as log:
            log.write(json.dumps({"hook": "app"}) + "\n")
    await receive()
    size = int(query(scope)["send"])
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"10")]})
    await send({"type": "http.response.body", "body": b"a" * (size // 2), "more_body": True})
    await send({"type": "http.response.body", "body": b"b" * (size - size // 2)})


async def silent_startup(scope, receive, send):
    """Takes lifespan.startup and never answers it."""
    if scope["type"] == "lifespan":
        await receive()
        await asyncio.Event().wait()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"never"})


async def fails_after_start(scope, receive, send):
    """Starts the response, then fails before its first body message."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise RuntimeError("failed between start and body (fails_after_start)")
