"""An app that takes a while to import (as a big Django project does), for readiness
tests: $SLOW_BOOT seconds, then it answers with how many requests it has seen."""

import os
import time
from wsgiref.validate import validator

time.sleep(float(os.environ.get("SLOW_BOOT", "0")))
SEEN = []


def _app(environ, start_response):
    SEEN.append(environ["PATH_INFO"])
    body = " ".join(SEEN).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
