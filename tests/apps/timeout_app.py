"""Apps that hang in different ways, for --timeout tests; wrapped in wsgiref's validator."""

import os
import signal
import time
from wsgiref.validate import validator


def sleep_forever():
    while True:
        time.sleep(3600)


def spin_forever():
    # Pure Python, no system call: only the interpreter's own signal check can stop it.
    n = 0
    while True:
        n += 1


def sleep_with_sigabrt_blocked():
    # As a C extension stuck with the signal blocked: neither faulthandler nor the
    # Python handler can run, so only SIGKILL ends it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGABRT})
    sleep_forever()


def trickle(chunks, pause):
    for i in range(chunks):
        yield b"chunk %d\n" % i
        time.sleep(pause)


def stall_after_first_chunk():
    yield b"first\n"
    sleep_forever()


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    query = environ.get("QUERY_STRING", "")
    if path == "/sleep":
        sleep_forever()
    elif path == "/spin":
        spin_forever()
    elif path == "/blocked":
        sleep_with_sigabrt_blocked()
    elif path == "/nap":
        time.sleep(float(query or "1"))
    elif path == "/trickle":
        chunks, pause = (query or "8,0.5").split(",")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return trickle(int(chunks), float(pause))
    elif path == "/stall":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return stall_after_first_chunk()
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
