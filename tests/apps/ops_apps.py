"""Apps for the operations tests: who answered, and what its process environment holds."""

import json
import os
from wsgiref.validate import validator


def _whoami(environ, start_response):
    body = json.dumps({
        "pid": os.getpid(),
        "listen_fds": os.environ.get("LISTEN_FDS"),
        "notify_socket": os.environ.get("NOTIFY_SOCKET"),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


whoami = validator(_whoami)
