"""Plain ASGI 3 applications (no framework) for tests/test_asgi.py: each shows the
server's side of the spec (www.rst, lifespan.rst) without a framework in between."""

import asyncio
import json
import os


async def scope_echo(scope, receive, send):
    """Answers the http scope as JSON (bytes as latin-1 text), and the body it read."""
    if scope["type"] == "lifespan":
        message = await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    messages = 0
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        body += message["body"]
        messages += 1
        if not message["more_body"]:
            break
    view = {
        key: (value.decode("latin-1") if isinstance(value, bytes) else value)
        for key, value in scope.items()
        if key not in ("headers", "state")
    }
    view["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
    view["client"] = list(scope["client"]) if scope["client"] else None
    view["server"] = list(scope["server"]) if scope["server"] else None
    view["has_state"] = "state" in scope
    view["body_length"] = len(body)
    view["messages"] = messages
    payload = json.dumps(view).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [[b"content-type", b"application/json"],
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


async def no_lifespan(scope, receive, send):
    """Records a lifespan scope if one ever comes (it must not, under --lifespan off)."""
    if scope["type"] == "lifespan":
        with open(os.environ["ASGI_MARKER"], "a") as marker:
            marker.write("lifespan\n")
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served"})


async def sleepy(scope, receive, send):
    """Sleeps ?s= seconds (0.5 by default) on the event loop, then answers."""
    assert scope["type"] == "http"
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)
    await asyncio.sleep(float(query.get("s", "0.5")))
    await send({"type": "http.response.start", "status": 200,
                "headers": [[b"content-type", b"text/plain"]]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})


async def abandoned(scope, receive, send):
    """Sleeps while its client goes away, then sends: what send raised (or "sent") goes
    to $ASGI_MARKER; then waits for http.disconnect and notes it too."""
    if scope["type"] != "http":
        return
    await receive()
    await asyncio.sleep(1.0)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"too late"})
        outcome = "sent"
    except OSError as error:
        outcome = f"OSError {type(error).__name__}"
    except BaseException as error:
        outcome = f"other {type(error).__name__}"
    message = await receive()
    with open(os.environ["ASGI_MARKER"], "a") as marker:
        marker.write(f"{outcome} {message['type']}\n")


async def failing_startup(scope, receive, send):
    """Fails lifespan startup with a message of its own."""
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("the database is not there (failing_startup)")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"never"})


async def raises_on_lifespan(scope, receive, send):
    """Like Django's ASGIHandler: lifespan is refused with an exception."""
    if scope["type"] != "http":
        raise ValueError("this application can only handle http, not lifespan")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served without lifespan"})


async def lifespan_marks(scope, receive, send):
    """Notes lifespan startup and shutdown in $ASGI_MARKER; an http request sleeps ?s=
    seconds and answers the state startup set."""
    marker = os.environ["ASGI_MARKER"]
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            step = message["type"].rsplit(".", 1)[1]
            with open(marker, "a") as out:
                out.write(f"{step}\n")
            if step == "startup":
                scope["state"]["token"] = "set at startup"
            await send({"type": f"lifespan.{step}.complete"})
            if step == "shutdown":
                return
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)
    await asyncio.sleep(float(query.get("s", "0")))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["state"]["token"].encode()})


async def blocks_the_loop(scope, receive, send):
    """Blocks the event loop itself (a sync call in an async view) for 30 s."""
    if scope["type"] != "http":
        return
    import time
    time.sleep(30)


async def gives_up_waiting(scope, receive, send):
    """Waits for http.disconnect and gives up (the wait is cancelled), waits again in a
    task of its own while it answers, and writes what that second wait got. Its
    messages are a mapping that is not a dict, and its headers lists, not tuples."""
    if scope["type"] != "http":
        return
    await receive()  # the (empty) body
    try:
        await asyncio.wait_for(receive(), 0.05)  # nothing comes while the response is due
    except asyncio.TimeoutError:
        pass
    waiting = asyncio.ensure_future(receive())
    await asyncio.sleep(0)  # the second wait begins before the response is complete
    await send(Message(type="http.response.start", status=200,
                       headers=[[b"content-type", b"text/plain"]]))
    await send(Message(type="http.response.body", body=b"answered"))
    try:
        message = await asyncio.wait_for(waiting, 5)
        outcome = message["type"]
    except BaseException as error:  # the record says what went wrong
        outcome = type(error).__name__
    with open(os.environ["ASGI_MARKER"], "a") as marker:
        marker.write(outcome + "\n")


class Message:
    """A read-only mapping, as an application may send instead of a dict."""

    def __init__(self, **fields):
        self._fields = fields

    def __getitem__(self, key):
        return self._fields[key]

    def get(self, key, default=None):
        return self._fields.get(key, default)


async def fails_after_answering(scope, receive, send):
    """Sends a whole response, then raises."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"8")]})
    await send({"type": "http.response.body", "body": b"answered"})
    raise RuntimeError("failed after answering")
