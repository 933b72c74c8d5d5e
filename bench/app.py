"""The benchmark's apps: the same bytes from every server.

- `/` (and any other path): hello world, 14 bytes;
- `/64k`: a 64 KiB body;
- `/echo`: reads the whole request body and answers its length in decimal.
"""

HELLO = b"Hello, World!\n"
BODY_64K = b"x" * 65536


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/64k":
        body = BODY_64K
    elif path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        received = environ["wsgi.input"].read(length) if length > 0 else b""
        body = str(len(received)).encode()
    else:
        body = HELLO
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
