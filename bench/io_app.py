"""The I/O-bound benchmark's app: each request waits 10 ms, as on a database or an
outside API (time.sleep; under gevent, the monkey-patched sleep), then answers.

A GET says hello (wrk's load); a POST (bench/slow_client.py) first reads its whole body
from wsgi.input, as an upload handler would, and says how many bytes it read."""

import time


def app(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = b"read %d bytes\n" % len(environ["wsgi.input"].read(length))
    else:
        body = b"Hello, World!\n"
    time.sleep(0.010)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
