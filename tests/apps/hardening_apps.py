"""Apps for the hardening tests (issue 13): what the app saw, and responses a server must
frame right or refuse."""

import json
import os
from wsgiref.validate import validator


def write_then_list(environ, start_response):
    """PEP 3333's imperative write(), then a list: both reach the client, in order. Not
    validated: the validator hides the list behind an iterator of its own, and a list
    takes its own path in rwsgi (its length is known up front)."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"via-write;")
    return [b"via-iter"]


@validator
def seen(environ, start_response):
    """What the app was given: the length headers and host, and the body read by
    CONTENT_LENGTH, as a WSGI framework reads it."""
    length = environ.get("CONTENT_LENGTH", "")
    body = environ["wsgi.input"].read(int(length)) if length else b""
    facts = {
        "content_length": environ.get("CONTENT_LENGTH"),
        "transfer_encoding": environ.get("HTTP_TRANSFER_ENCODING"),
        "host": environ.get("HTTP_HOST"),
        "body": body.decode("latin-1"),
    }
    payload = json.dumps(facts).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(payload)))])
    return [payload]


def _status(environ):
    return environ.get("QUERY_STRING", "") or "204"


def bodyless(environ, start_response):
    """A 204 or 304 (?204, ?304, ?304-length) whose app still returns a body, as a list.
    Not validated: the validator refuses a body on them, and hides the list (see
    write_then_list)."""
    query = _status(environ)
    status = {"204": "204 No Content", "304": "304 Not Modified",
              "304-length": "304 Not Modified"}[query]
    headers = [("ETag", '"v1"')]
    if query == "304-length":
        # The length of the representation the 304 stands for (RFC 9110 §8.6).
        headers.append(("Content-Length", "1234"))
    start_response(status, headers)
    return [b"hello world"]


def many_headers(environ, start_response):
    """Not validated: a head past rwsgi's limits (?count=N headers, or ?big=BYTES in one);
    /ok answers normally (with the worker's pid)."""
    if environ["PATH_INFO"] == "/ok":
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    params = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    headers = [("Content-Type", "text/plain")]
    if "count" in params:
        headers += [(f"X-H{i}", "v") for i in range(int(params["count"]))]
    if "big" in params:
        headers.append(("X-Big", "a" * int(params["big"])))
    start_response("200 OK", headers)
    return [b"should not be sent"]
