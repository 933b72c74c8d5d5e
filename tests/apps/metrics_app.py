"""An app for the metrics tests: / answers 200, /missing 404, /fail 500."""

from wsgiref.validate import validator

STATUS = {"/missing": "404 Not Found", "/fail": "500 Internal Server Error"}


def _app(environ, start_response):
    status = STATUS.get(environ["PATH_INFO"], "200 OK")
    body = status.encode()
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
