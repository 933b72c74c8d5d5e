"""The ASGI benchmark's app (bench/asgi.sh): the same bytes from every server.

- http, any path: hello world, 14 bytes with Content-Length;
- websocket, any path: accepted, then every message sent back as it came (text as
  text, bytes as bytes) until the client closes.
"""

HELLO = b"Hello, World!\n"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"14")]


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": HELLO})
    elif kind == "websocket":
        message = await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return  # websocket.disconnect
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
