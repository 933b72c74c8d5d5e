"""An app whose import each worker announces on its standard output (the server's log),
so a test can see that the master's `Ready` line comes after every worker booted;
$SLOW_BOOT seconds of importing first, as a big project takes. `/hold` says so in the
log, then holds its worker for 30 seconds (a request a graceful stop waits for)."""

import os
import time
from wsgiref.validate import validator

time.sleep(float(os.environ.get("SLOW_BOOT", "0")))
print(f"Imported in worker {os.getpid()}", flush=True)


def _app(environ, start_response):
    if environ["PATH_INFO"] == "/hold":
        print(f"Holding a request in worker {os.getpid()}", flush=True)
        time.sleep(30)
    body = b"booted\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
