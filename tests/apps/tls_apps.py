"""Apps for the TLS tests (tests/test_tls.py)."""
import json
from wsgiref.validate import validator


@validator
def environ(environ, start_response):
    """Echoes what the server told the app about the connection."""
    keys = ("wsgi.url_scheme", "HTTPS", "SERVER_PROTOCOL", "SERVER_PORT", "HTTP_HOST")
    body = json.dumps({key: environ.get(key) for key in keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def own_hsts(environ, start_response):
    """Sets its own Strict-Transport-Security, which the server must leave alone."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2"),
                              ("Strict-Transport-Security", "max-age=1; includeSubDomains")])
    return [b"ok"]
