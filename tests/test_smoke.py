import http.client


def test_hello(serve):
    server = serve("basic:hello")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read() == b"Hello, World!\n"
