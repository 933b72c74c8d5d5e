"""WebSockets of a Starlette and a FastAPI application for tests/test_websocket.py:
an echo, and a broadcast room whose members all get what one of them says; the
disconnect each endpoint sees is noted to $ASGI_MARKER."""

import os

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute


def note(line):
    path = os.environ.get("ASGI_MARKER")
    if path:
        with open(path, "a") as marker:
            marker.write(line + "\n")


members: set = set()


async def echo(websocket: WebSocket):
    await websocket.accept(subprotocol=(websocket.scope["subprotocols"] or [None])[0])
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message["code"])
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect as gone:
        note(f"echo disconnect {gone.code}")


async def room(websocket: WebSocket):
    await websocket.accept()
    members.add(websocket)
    try:
        while True:
            said = await websocket.receive_text()
            for member in list(members):
                await member.send_text(said)
    except WebSocketDisconnect as gone:
        note(f"room disconnect {gone.code}")
    finally:
        members.discard(websocket)


starlette_app = Starlette(routes=[WebSocketRoute("/echo", echo), WebSocketRoute("/room", room)])

fastapi_app = FastAPI()
fastapi_app.add_api_websocket_route("/echo", echo)
fastapi_app.add_api_websocket_route("/room", room)
