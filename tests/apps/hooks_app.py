"""The app of the --hooks tests: answers the worker's pid; /teapot answers 418.
Each call is recorded in $HOOKS_LOG (as hooks_record does) to order it among the hooks."""

import os
from wsgiref.validate import validator

from hooks_record import record


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    record("app", path=path)
    status = "418 I'm a teapot" if path == "/teapot" else "200 OK"
    body = str(os.getpid()).encode()
    start_response(status, [("Content-Type", "text/plain"), ("X-Hooked", "yes"),
                            ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
