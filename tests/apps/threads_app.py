"""Apps for the gthread and gevent workers (tests/test_threads.py)."""

import os
import threading
import time
from wsgiref.validate import validator


def _sleepy(environ, start_response):
    """Waits as an app waiting on a database would: 50 ms, or ?ms=N."""
    query = environ.get("QUERY_STRING", "")
    ms = int(query[3:]) if query.startswith("ms=") else 50
    started = os.environ.get("SLEEPY_STARTED")
    if started:  # a line per request begun, for a test waiting until all are in flight
        with open(started, "a") as log:
            log.write("+\n")
    time.sleep(ms / 1000)
    body = f"{os.getpid()} {threading.get_ident()} {environ['wsgi.multithread']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


sleepy = validator(_sleepy)

_lock = threading.Lock()
_counter = {"n": 0}


def _counter_app(environ, start_response):
    """Shared state under a lock: each request gets a distinct number."""
    with _lock:
        _counter["n"] += 1
        n = _counter["n"]
    time.sleep(0.001)
    body = f"n={n};" * 200
    body = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


counter = validator(_counter_app)


def _echo(environ, start_response):
    """Echoes its own body and a few environ entries, after a pause that lets other
    requests of the same worker run in between."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    first = environ["wsgi.input"].read(length // 2)
    time.sleep(0.02)
    rest = environ["wsgi.input"].read(length - len(first))
    tag = environ.get("HTTP_X_TAG", "")
    body = f"{tag}|{environ['PATH_INFO']}|{environ['QUERY_STRING']}|".encode() + first + rest
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


echo = validator(_echo)


def _hang(environ, start_response):
    """/hang waits much longer than any --timeout of the tests; anything else 200 ms,
    or ?ms=N."""
    query = environ.get("QUERY_STRING", "")
    ms = int(query[3:]) if query.startswith("ms=") else 200
    time.sleep(60 if environ["PATH_INFO"] == "/hang" else ms / 1000)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


hang = validator(_hang)
