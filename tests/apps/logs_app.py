"""An app for the error log tests: / answers, /boom raises, /errors writes a line to
wsgi.errors, /id answers the request id its environ holds, /crash kills its worker
without answering, /hang never answers."""

import os
import time
from wsgiref.validate import validator


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("boom for the error log")
    if path == "/errors":
        environ["wsgi.errors"].write("a line on wsgi.errors\n")
    if path == "/crash":
        os._exit(1)
    if path == "/hang":
        while True:
            time.sleep(3600)
    body = environ.get("HTTP_X_REQUEST_ID", "").encode() if path == "/id" else b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
