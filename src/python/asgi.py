"""rwsgi's ASGI 3 glue (asgiref specs: asgi.rst 3.0, www.rst HTTP 2.5, lifespan.rst 2.0).

Run by the worker (src/python/asgi.rs), never imported by applications. It holds only
what is about coroutines: the event loop, one task per request, lifespan, and the
waiting of a WebSocket's messages. The scope and every frame of the channel are Rust's
(the `stream` and `socket` objects and the `poll` callable given to `serve`), and so
are an http scope's `receive` and `send`: they never suspend but for the last
`receive()`, which waits for `http.disconnect`, so that a request runs no Python of the
glue's but its task.
"""

import asyncio
from asyncio import Task

# Set by asgi.rs: log(level, message) writes to rwsgi's error log.
log = None


class ClientDisconnected(OSError):
    """send() after the response completed or the client went away (HTTP spec 2.4)."""


class LifespanFailed(Exception):
    """The application answered lifespan.startup.failed (or failed under --lifespan on)."""


def new_loop(kind):
    """An event loop of `kind` (--asgi-loop), and the name of what it is."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


class Lifespan:
    """The lifespan scope of one worker process: startup before it serves, shutdown
    after (lifespan.rst). The app's task lives from startup to shutdown."""

    def __init__(self, app, mode):
        self.app = app
        self.mode = mode
        self.state = {}
        self.supported = False
        self.task = None
        self.inbox = asyncio.Queue()
        self.answers = asyncio.Queue()

    async def _run(self):
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        await self.app(scope, self.inbox.get, self.answers.put)

    async def _answer(self, message_type):
        """The app's answer to `message_type`; the task's end (result or error) if it
        ends first."""
        await self.inbox.put({"type": message_type})
        answer = asyncio.ensure_future(self.answers.get())
        await asyncio.wait({answer, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if answer.done():
            return answer.result()
        answer.cancel()
        return None

    async def startup(self, timeout):
        """True when the app completed startup; False when it does not speak lifespan
        (auto). Raises what makes the worker fail to boot, an answer not come within
        `timeout` seconds (--timeout; None: no bound) included."""
        self.task = asyncio.ensure_future(self._run())
        try:
            answer = await asyncio.wait_for(self._answer("lifespan.startup"), timeout)
        except asyncio.TimeoutError:
            self.task.cancel()
            raise LifespanFailed(
                f"lifespan.startup not answered within {timeout:g} s (--timeout)"
            ) from None
        kind = answer and answer.get("type")
        if kind == "lifespan.startup.complete":
            self.supported = True
            return True
        if kind == "lifespan.startup.failed":
            raise LifespanFailed(answer.get("message") or "lifespan.startup.failed")
        error = self.task.exception() if self.task.done() else None
        if self.mode == "on":
            if error is not None:
                raise error
            raise LifespanFailed(
                f"the application answered lifespan.startup with {answer!r}"
                if answer
                else "the application returned without answering lifespan.startup"
            )
        why = f"{type(error).__name__}: {error}" if error is not None else "no answer"
        log("info", f"ASGI 'lifespan' protocol appears unsupported ({why}); serving without it")
        return False

    async def shutdown(self, timeout):
        """Sends lifespan.shutdown and waits for the answer, at most `timeout` s."""
        if not self.supported or self.task.done():
            return
        try:
            answer = await asyncio.wait_for(self._answer("lifespan.shutdown"), timeout)
        except asyncio.TimeoutError:
            log("warning", f"ASGI lifespan.shutdown not answered within {timeout} s")
            return
        if answer and answer.get("type") == "lifespan.shutdown.failed":
            log("error", f"ASGI lifespan.shutdown.failed: {answer.get('message', '')}")
        elif self.task.done() and self.task.exception() is not None:
            error = self.task.exception()
            log("error", f"ASGI lifespan shutdown raised {type(error).__name__}: {error}")


class WebSocket:
    """One websocket scope: its receive and send (www.rst 2.5). The socket (Rust) holds
    the messages, the credit and every frame; here is only the waiting."""

    __slots__ = ("socket", "wake", "connected", "accepted", "responding", "closed")

    def __init__(self, socket):
        self.socket = socket
        # Set by serve() when something arrived for this WebSocket (a message, a close,
        # credit).
        self.wake = asyncio.Event()
        self.connected = False
        self.accepted = False
        self.responding = False
        # The application closed, or denied: nothing more may be sent.
        self.closed = False

    async def receive(self):
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        while True:
            self.wake.clear()
            item = self.socket.next()
            if item is None:
                await self.wake.wait()
                continue
            first, second = item
            if first is True:
                return {"type": "websocket.receive", "text": second, "bytes": None}
            if first is False:
                return {"type": "websocket.receive", "bytes": second, "text": None}
            # The WebSocket is over, whoever closed it: the same answer every time.
            return {"type": "websocket.disconnect", "code": first, "reason": second}

    async def send(self, message):
        kind = message["type"]
        if self.closed or self.socket.gone():
            raise ClientDisconnected(f"{kind}: the WebSocket is closed")
        try:
            await self._send(kind, message)
        except ConnectionError as err:
            raise ClientDisconnected(str(err)) from None

    async def _send(self, kind, message):
        socket = self.socket
        if kind == "websocket.send":
            text = message.get("text")
            data = message.get("bytes")
            if text is not None:
                payload, is_text = text.encode(), True
            elif data is not None:
                payload, is_text = bytes(data), False
            else:
                raise ValueError("websocket.send needs bytes or text")
            offset = socket.send(payload, is_text, 0)
            while offset < len(payload):
                # No credit: the client is slower than the application. Wait for the
                # front tier's grant (serve() wakes us), never blocking the loop.
                self.wake.clear()
                if not socket.can_send():
                    await self.wake.wait()
                offset = socket.send(payload, is_text, offset)
        elif kind == "websocket.accept":
            socket.accept(message.get("subprotocol"), message.get("headers") or ())
            self.accepted = True
        elif kind == "websocket.close":
            if self.responding:
                raise RuntimeError("websocket.close during a websocket.http.response")
            socket.close(message.get("code", 1000), message.get("reason") or "")
            self.closed = True
        elif kind == "websocket.http.response.start":
            socket.start(message["status"], message.get("headers") or ())
            self.responding = True
        elif kind == "websocket.http.response.body":
            more = bool(message.get("more_body", False))
            socket.body(message.get("body", b""), more)
            self.closed = not more
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on a websocket scope")


async def handle_socket(app, socket, state, sockets):
    ws = WebSocket(socket)
    sockets[socket.id] = ws
    try:
        await app(socket.scope(state), ws.receive, ws.send)
    except BaseException as error:  # the app's failure, whatever it is
        if not isinstance(error, ClientDisconnected):
            # Before the accept a 500; after it, close 1011 (the traceback is logged).
            socket.fail(error)
        if not isinstance(error, Exception):
            raise
    else:
        if not ws.accepted and not ws.responding:
            # www.rst: an application that returns without accepting denies (403).
            socket.deny()
    finally:
        del sockets[socket.id]
        socket.finish()


async def handle(app, stream, state, waiting):
    """One http scope's task. Its receive and send are the stream's own (Rust): they
    never suspend but for the last receive(), which waits for http.disconnect."""
    try:
        await app(stream.scope(state), stream.receive, stream.send)
    except BaseException as error:  # the app's failure, whatever it is
        stream.close(error)
        if not isinstance(error, Exception):
            raise
    else:
        stream.close(None)
    finally:
        del waiting[stream]


async def serve(app, fd, poll, state, stop_check, flush):
    """Serves the channel until it closes (retired, stopped, or the front tier gone),
    then waits for the requests in flight. `flush` writes what the responses queued
    (the streams ask the loop to call it once per turn)."""
    loop = asyncio.get_running_loop()
    # The WebSockets' tasks; the requests in flight, by stream, each holding its task
    # (the loop holds tasks weakly).
    tasks = set()
    waiting = {}
    closed = loop.create_future()

    sockets = {}

    def readable():
        if closed.done():
            return
        streams, new_sockets, touched, aborted, open_ = poll()
        # The Task itself when the loop makes plain ones: named, it skips formatting a
        # name of its own (and uvloop's wrapper); an application's task factory (set in
        # its lifespan) is honoured.
        plain = loop.get_task_factory() is None
        for stream in streams:
            coroutine = handle(app, stream, state, waiting)
            waiting[stream] = (
                Task(coroutine, loop=loop, name="http") if plain else loop.create_task(coroutine)
            )
        for socket in new_sockets:
            task = loop.create_task(handle_socket(app, socket, state, sockets))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for id_ in touched:
            ws = sockets.get(id_)
            if ws is not None:
                ws.wake.set()
        # A client gone is noted by poll (the front tier's Abort): its request's last
        # receive() answers http.disconnect now.
        if aborted:
            for stream in list(waiting):
                stream.wake_if_gone()
        if not open_:
            loop.remove_reader(fd)
            closed.set_result(None)

    def tick():
        # A stop (SIGTERM, seen by Rust) is looked at by poll even when nothing arrives.
        readable()
        if not closed.done():
            loop.call_later(stop_check, tick)

    loop.add_reader(fd, readable)
    loop.call_later(stop_check, tick)
    readable()
    await closed
    while tasks or waiting:
        await asyncio.wait(set(tasks) | set(waiting.values()))
    flush()
