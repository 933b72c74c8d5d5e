"""A module whose WSGI callable has the default name, `application`."""


def application(environ, start_response):
    body = b"default application callable"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def other(environ, start_response):
    body = b"the wrong callable"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
