"""A streaming response: each line reaches the client as it is produced.

    rwsgi serve examples/streaming:app
    curl -N http://127.0.0.1:8000/?count=5
"""
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        count = max(0, min(int(query.get("count", ["10"])[0]), 100))
    except ValueError:
        count = 10
    # No Content-Length: rwsgi sends the body chunked (HTTP/1.1) or as DATA frames (HTTP/2).
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-cache")])

    def lines():
        for i in range(1, count + 1):
            yield f"tick {i} of {count} at {time.strftime('%H:%M:%S')}\n".encode()
            if i < count:
                time.sleep(0.5)

    return lines()
