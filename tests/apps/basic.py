"""Small apps the tests serve; each wrapped in wsgiref's validator where it can be."""
import json
from wsgiref.validate import validator


@validator
def hello(environ, start_response):
    body = b"Hello, World!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
