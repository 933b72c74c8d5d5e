"""An app that says which version of its code runs and in which worker, for the SIGHUP
and USR2 tests. The version comes from `reload_version.py`, which the tests rewrite
beside it (in a temporary directory given with --pythonpath)."""

import os
from wsgiref.validate import validator

import reload_version


def _app(environ, start_response):
    body = f"{reload_version.VERSION} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
