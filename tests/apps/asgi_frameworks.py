"""A Starlette and a FastAPI application for tests/test_asgi.py: JSON, forms, uploads,
streaming, server-sent events, background tasks, lifespan state and a failing
endpoint."""

import asyncio
import contextlib
import os

from fastapi import FastAPI, File, Form, UploadFile
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"started_by": f"lifespan-{os.getpid()}"}


async def echo_json(request: Request):
    return JSONResponse({"got": await request.json(), "method": request.method,
                         "http_version": request.scope["http_version"]})


async def form(request: Request):
    async with request.form() as data:
        upload = data.get("upload")
        return JSONResponse({
            "name": data.get("name"),
            "file": upload.filename if upload else None,
            "size": len(await upload.read()) if upload else 0,
        })


async def stream(request: Request):
    async def chunks():
        for i in range(5):
            yield f"chunk-{i}\n".encode()
            await asyncio.sleep(0.05)
    return StreamingResponse(chunks(), media_type="text/plain")


async def events(request: Request):
    """Server-sent events: the first event, then the second only once the file named
    by `?go=` exists (the client makes it after it has read the first)."""
    go = request.query_params["go"]

    async def stream():
        yield b"event: greeting\ndata: one\n\n"
        while not os.path.exists(go):
            await asyncio.sleep(0.02)
        yield b"data: two\n\n"
    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def write_marker(path: str, text: str):
    with open(path, "w") as marker:
        marker.write(text)


async def background(request: Request):
    task = BackgroundTask(write_marker, request.query_params["marker"], "background ran")
    return PlainTextResponse("answered", background=task)


async def state(request: Request):
    return PlainTextResponse(request.state.started_by)


async def boom(request: Request):
    raise RuntimeError("boom from the starlette endpoint")


starlette_app = Starlette(lifespan=lifespan, routes=[
    Route("/json", echo_json, methods=["POST"]),
    Route("/form", form, methods=["POST"]),
    Route("/stream", stream),
    Route("/events", events),
    Route("/background", background),
    Route("/state", state),
    Route("/boom", boom),
])


fastapi_app = FastAPI(lifespan=lifespan)


@fastapi_app.post("/json")
async def fastapi_json(payload: dict):
    return {"got": payload}


@fastapi_app.post("/upload")
async def fastapi_upload(name: str = Form(...), upload: UploadFile = File(...)):
    data = await upload.read()
    return {"name": name, "file": upload.filename, "size": len(data)}


@fastapi_app.get("/stream")
async def fastapi_stream():
    async def chunks():
        for i in range(5):
            yield f"chunk-{i}\n".encode()
            await asyncio.sleep(0.05)
    return StreamingResponse(chunks(), media_type="text/plain")


@fastapi_app.get("/state")
async def fastapi_state(request: Request):
    return {"started_by": request.state.started_by}


@fastapi_app.get("/boom")
async def fastapi_boom():
    raise RuntimeError("boom from the fastapi endpoint")
