"""The I/O-bound benchmark's app: each request waits 10 ms, as on a database or an
outside API (time.sleep; under gevent, the monkey-patched sleep), then says hello."""

import time


def app(environ, start_response):
    time.sleep(0.010)
    body = b"Hello, World!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
