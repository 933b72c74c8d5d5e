"""A chat room in FastAPI: the page (static/index.html) is served by rwsgi's front tier
(--static), the messages go through a WebSocket endpoint that broadcasts each one to
every connected client, and an HTTP endpoint lists the recent ones and posts one (for
scripts and for clients without WebSockets).

    pip install -r examples/fastapi_chat/requirements.txt
    rwsgi serve -k asgi --static /static=examples/fastapi_chat/static examples/fastapi_chat/app:app
    # then open http://127.0.0.1:8000/ in two browser windows

The WebSocket part is written against the ASGI WebSocket spec (www.rst); the HTTP part
works with any ASGI server.
"""

from collections import deque

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

app = FastAPI(title="rwsgi chat")


class Message(BaseModel):
    name: str = Field(min_length=1, max_length=40)
    text: str = Field(min_length=1, max_length=1000)


class Room:
    """The connected WebSockets of this worker process and its recent messages.

    Each worker process has its own room: run one worker (-w 1) for one room, or
    broadcast through a shared store (Redis pub/sub...) with several."""

    def __init__(self, keep: int = 50):
        self.sockets: set[WebSocket] = set()
        self.recent: deque[dict] = deque(maxlen=keep)

    async def join(self, socket: WebSocket) -> None:
        await socket.accept()
        self.sockets.add(socket)

    def leave(self, socket: WebSocket) -> None:
        self.sockets.discard(socket)

    async def broadcast(self, message: dict) -> None:
        self.recent.append(message)
        for socket in list(self.sockets):
            try:
                await socket.send_json(message)
            except (RuntimeError, OSError, WebSocketDisconnect):
                # Gone meanwhile (spec 2.4: send() after a disconnect raises OSError).
                self.leave(socket)


room = Room()


@app.get("/")
async def index() -> RedirectResponse:
    return RedirectResponse("/static/")


@app.get("/api/messages")
async def recent() -> dict:
    return {"messages": list(room.recent), "connected": len(room.sockets)}


@app.post("/api/messages", status_code=201)
async def post(message: Message) -> dict:
    await room.broadcast(message.model_dump())
    return {"delivered_to": len(room.sockets)}


@app.websocket("/ws")
async def chat(socket: WebSocket) -> None:
    await room.join(socket)
    try:
        while True:
            data = await socket.receive_json()
            try:
                message = Message.model_validate(data)
            except ValueError:
                await socket.send_json({"error": "want {name: 1-40 chars, text: 1-1000 chars}"})
                continue
            await room.broadcast(message.model_dump())
    except WebSocketDisconnect:
        pass
    finally:
        room.leave(socket)
