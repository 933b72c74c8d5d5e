"""Plain ASGI WebSocket applications for tests/test_websocket.py: the websocket scope
and its messages seen with nothing between the app and rwsgi (RFC 6455 and asgiref
www.rst 2.5)."""

import asyncio
import json
import os


def note(line):
    """Appends a line to $ASGI_MARKER: what the application saw, for the test to read."""
    path = os.environ.get("ASGI_MARKER")
    if path:
        with open(path, "a") as marker:
            marker.write(line + "\n")


async def echo(scope, receive, send):
    """Echoes every message. Text commands: "scope" answers the scope as JSON;
    "close CODE" closes with that code; "big N" sends N bytes; "fail" raises. Every
    websocket.disconnect it receives is noted, and so is the outcome of a send() after
    it."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"plain"})
        return
    if scope["type"] != "websocket":
        return
    assert (await receive())["type"] == "websocket.connect"
    path = scope["path"]
    if path == "/deny":
        await send({"type": "websocket.close"})
        return
    if path == "/respond":
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"x-why", b"no")]})
        await send({"type": "websocket.http.response.body", "body": b"not you"})
        return
    if path == "/fail-before":
        raise RuntimeError("failing before the accept (asgi_ws)")
    subprotocols = scope.get("subprotocols") or []
    await send({"type": "websocket.accept",
                "subprotocol": subprotocols[0] if subprotocols else None,
                "headers": [(b"x-accepted", b"yes")]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            note(f"disconnect {message['code']} {message.get('reason', '')!r}")
            try:
                await send({"type": "websocket.send", "text": "too late"})
                note("sent")
            except OSError as error:
                note(f"OSError {type(error).__name__}")
            # A second receive() answers the same disconnect; it is no second event.
            again = await asyncio.wait_for(receive(), 1)
            note(f"again {again['type']}")
            return
        text = message.get("text")
        if text is None:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
        elif text == "scope":
            shown = {k: v for k, v in scope.items() if k not in ("state",)}
            shown["headers"] = [[n.decode(), v.decode()] for n, v in scope["headers"]]
            shown["raw_path"] = scope["raw_path"].decode()
            shown["query_string"] = scope["query_string"].decode()
            await send({"type": "websocket.send", "text": json.dumps(shown)})
        elif text.startswith("close "):
            await send({"type": "websocket.close", "code": int(text.split()[1]),
                        "reason": "asked to"})
        elif text.startswith("big "):
            await send({"type": "websocket.send", "bytes": b"b" * int(text.split()[1])})
        elif text == "fail":
            raise RuntimeError("failing after the accept (asgi_ws)")
        else:
            await send({"type": "websocket.send", "text": text})


async def flood(scope, receive, send):
    """Sends $FLOOD_MIB messages of 1 MiB to a client that may not read them; notes
    how many of them send() took before it is disconnected. An HTTP request is answered
    meanwhile (the event loop is not blocked by the waiting send)."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the loop is free"})
        return
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    chunk = b"f" * (1 << 20)
    sent = 0
    try:
        for sent in range(1, int(os.environ.get("FLOOD_MIB", "200")) + 1):
            await send({"type": "websocket.send", "bytes": chunk})
            note(f"sent {sent}")
    except OSError:
        note(f"stopped {sent}")
        return
    note(f"all {sent}")


async def sink(scope, receive, send):
    """Accepts and never receives until told by its peer's close; notes the
    disconnect."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    note("accepted")
    await asyncio.sleep(float(os.environ.get("SINK_SLEEP", "3600")))
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            note(f"disconnect {message['code']}")
            return
