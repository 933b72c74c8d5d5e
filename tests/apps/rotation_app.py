"""An app that names the worker serving it, for --max-requests tests."""

import os
from wsgiref.validate import validator


def _pid_app(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


app = validator(_pid_app)
