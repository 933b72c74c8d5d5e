"""Apps for the shared-memory ring tests: big bodies both ways, and a worker that
scribbles on its rings as buggy native code could."""

import ctypes
import hashlib
import os
import threading
import time
from wsgiref.validate import validator


@validator
def echo(environ, start_response):
    """Answers the sha256 of the body, then ?n= bytes of a known pattern."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    n = int(environ.get("QUERY_STRING", "n=0").partition("=")[2] or 0)
    pattern = bytes(range(256)) * (n // 256 + 1)
    out = hashlib.sha256(body).hexdigest().encode() + b"\n" + pattern[:n]
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(out)))])
    return [out]


def scribble(environ, start_response):
    """Not validated (it breaks the server on purpose): /scribble overwrites the control
    fields of the worker's rings with garbage, then answers; /pid answers the pid."""
    if environ["PATH_INFO"] == "/scribble":
        with open("/proc/self/maps") as maps:
            line = next(l for l in maps if "rwsgi-ring" in l)
        start = int(line.split("-", 1)[0], 16)

        def keep_scribbling():
            # Every position and flag of both rings, over and over: whatever the worker
            # publishes is garbage again a moment later.
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                ctypes.memset(start + 64, 0xFF, 512)

        threading.Thread(target=keep_scribbling, daemon=True).start()
        time.sleep(0.2)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
