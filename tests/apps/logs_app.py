"""An app for the error log tests: / answers, /boom raises, /errors writes a line to
wsgi.errors."""

from wsgiref.validate import validator


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("boom for the error log")
    if path == "/errors":
        environ["wsgi.errors"].write("a line on wsgi.errors\n")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]


app = validator(_app)
