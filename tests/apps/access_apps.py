"""An app for the access log tests: / answers "ok", /id echoes the request id the app
saw (HTTP_X_REQUEST_ID), /header sets an X-Test response header, /stream sends 1000
bytes every 10 ms for 10 s, /slow answers after a second."""

import time
from wsgiref.validate import validator


def _stream():
    for _ in range(1000):
        yield b"x" * 1000
        time.sleep(0.01)


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    headers = [("Content-Type", "text/plain")]
    if path == "/slow":
        time.sleep(1)
    if path == "/stream":
        start_response("200 OK", headers)
        return _stream()
    if path == "/id":
        body = environ.get("HTTP_X_REQUEST_ID", "<none>").encode("latin-1")
    elif path == "/header":
        body = b"with a header\n"
        headers.append(("X-Test", "tested-value"))
    else:
        body = b"ok\n"
    headers.append(("Content-Length", str(len(body))))
    start_response("200 OK", headers)
    return [body]


app = validator(_app)
