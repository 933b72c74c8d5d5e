"""Slow clients for bench/io.sh, as mobile or remote clients behave: each of CLIENTS
loops, for DURATION seconds, over one request per connection: connect, send a POST
whose BODY-byte body is trickled in PIECES pieces over SEND seconds, then read the
response in small pieces with a pause of READ_PAUSE seconds before each.

It talks only to 127.0.0.1, stops itself when DURATION is over (a request still under
way then is abandoned, counted neither way), and prints one line:
    completed=N errors=E median=S
where S is the median time in seconds of a completed request, from connecting to the
answer's end (at best SEND plus the app's 10 ms plus the read pauses).
Only the standard library: the benchmark's venv needs nothing more.

Usage: python3 slow_client.py PORT CLIENTS DURATION BODY SEND PIECES READ_PAUSE
"""

import asyncio
import statistics
import sys
import time

HOST = "127.0.0.1"
READ_SIZE = 64  # bytes per slow read
REQUEST_TIMEOUT = 30.0  # a request not answered by then is an error


class Counts:
    def __init__(self):
        self.completed = 0
        self.seconds = []
        self.errors = 0
        self.first_error = None

    def error(self, what):
        self.errors += 1
        if self.first_error is None:
            self.first_error = what


async def one_request(port, body, send, pieces, read_pause):
    """One POST on its own connection; raises on any failure."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        head = (
            f"POST /upload HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        writer.write(head)
        await writer.drain()
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            await asyncio.sleep(send / pieces)
            writer.write(body[start : start + step])
            await writer.drain()
        response = bytearray()
        while True:
            await asyncio.sleep(read_pause)
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                break
            response += chunk
        status = bytes(response[:12])
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"answer {status!r}")
        head_end = response.find(b"\r\n\r\n")
        if bytes(response[head_end + 4 :]) != b"read %d bytes\n" % len(body):
            raise RuntimeError(f"body {bytes(response[head_end + 4 :])[:40]!r}")
    finally:
        writer.close()


async def client(port, deadline, counts, *args):
    while time.monotonic() < deadline:
        began = time.monotonic()
        try:
            await asyncio.wait_for(one_request(port, *args), REQUEST_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except (OSError, RuntimeError, asyncio.TimeoutError) as err:
            if time.monotonic() < deadline:
                counts.error(f"{type(err).__name__}: {err}")
                await asyncio.sleep(0.1)  # a refusing server is not hammered
            continue
        if time.monotonic() < deadline:
            counts.completed += 1
            counts.seconds.append(time.monotonic() - began)


async def main(port, clients, duration, body_size, send, pieces, read_pause):
    counts = Counts()
    body = b"x" * body_size
    deadline = time.monotonic() + duration
    tasks = [
        asyncio.create_task(client(port, deadline, counts, body, send, pieces, read_pause))
        for _ in range(clients)
    ]
    # Requests still under way at the deadline are abandoned.
    await asyncio.wait(tasks, timeout=duration)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    median = statistics.median(counts.seconds) if counts.seconds else 0.0
    print(f"completed={counts.completed} errors={counts.errors} median={median:.2f}")
    if counts.first_error:
        print(f"first error: {counts.first_error}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 8:
        sys.exit(__doc__)
    port, clients, pieces = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[6])
    duration, send, read_pause = float(sys.argv[3]), float(sys.argv[5]), float(sys.argv[7])
    body_size = int(sys.argv[4])
    if min(port, clients, pieces, body_size) < 1 or duration <= 0 or send < 0 or read_pause < 0:
        sys.exit("PORT, CLIENTS, PIECES and BODY must be positive, DURATION > 0, SEND and READ_PAUSE >= 0")
    asyncio.run(main(port, clients, duration, body_size, send, pieces, read_pause))
