"""The app the config-file tests serve and check: it says which worker answered."""
import os
from wsgiref.validate import validator


@validator
def app(environ, start_response):
    body = f"config app, worker {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
