"""An app whose worker can be made to grow, for --max-worker-memory tests.

  /grow -> keeps 60 MiB more in a module-level list (touched, so resident), then
           answers like any other path
  other -> the worker's pid
"""

import os
from wsgiref.validate import validator

KEPT = []


def _app(environ, start_response):
    if environ["PATH_INFO"] == "/grow":
        # b"x" * n writes every byte: the pages are resident, not merely reserved.
        KEPT.append(b"x" * (60 << 20))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
