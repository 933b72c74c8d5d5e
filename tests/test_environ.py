"""The WSGI environ (PEP 3333 "environ Variables"), as seen from inside an application.

The app (apps/wsgi_environ.py) sits behind wsgiref's validator with its warnings made
errors, so any environ the validator objects to answers 500 and fails these tests.
"""
import http.client
import json
import socket
import uuid

from conftest import APPS
from kit import rwsgi
from rawhttp import read_until_closed

TIMEOUT = 5


def get_environ(port, path="/", method="GET", headers=(), body=None):
    """One request on a fresh connection: (environ report, client's local port)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        local_port = conn.sock.getsockname()[1]
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
        return json.loads(data), local_port
    finally:
        conn.close()


def test_cgi_variables_of_a_get(serve):
    server = serve("wsgi_environ:dump")
    report, local_port = get_environ(server.port, "/some/path?a=1&b=two")
    env = report["environ"]
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/some/path"
    assert env["QUERY_STRING"] == "a=1&b=two"
    assert env["RAW_URI"] == "/some/path?a=1&b=two"
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(server.port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(local_port)
    assert env["HTTP_HOST"] == f"127.0.0.1:{server.port}"
    # A GET without a body: CONTENT_TYPE/CONTENT_LENGTH may be empty or absent (PEP 3333).
    assert not env.get("CONTENT_TYPE")
    assert not env.get("CONTENT_LENGTH")
    # Every CGI variable is a native str (the validator also checks this).
    for key, value in env.items():
        if "." not in key:
            assert isinstance(value, str), (key, value)


def test_wsgi_variables(serve):
    server = serve("wsgi_environ:dump")
    report, _ = get_environ(server.port, "/")
    env, raw = report["environ"], report["raw"]
    assert raw["wsgi.version"] == {"type": "tuple", "items": [1, 0]}
    assert env["wsgi.url_scheme"] == "http"
    assert raw["wsgi.multithread"] is False
    assert raw["wsgi.multiprocess"] is True
    assert raw["wsgi.run_once"] is False
    assert raw["wsgi.input_terminated"] is True
    # The server's own stream objects (recorded before the validator wraps them).
    assert {"read", "readline", "readlines", "__iter__"} <= set(raw["wsgi.input"]["attrs"])
    assert {"write", "writelines", "flush"} <= set(raw["wsgi.errors"]["attrs"])
    assert raw["wsgi.file_wrapper"]["callable"] is True
    required = {"REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME",
                "SERVER_PORT", "SERVER_PROTOCOL", "wsgi.version", "wsgi.url_scheme",
                "wsgi.input", "wsgi.errors", "wsgi.multithread", "wsgi.multiprocess",
                "wsgi.run_once"}
    assert required <= set(report["keys"])


def test_path_info_is_percent_decoded_as_latin1(serve):
    server = serve("wsgi_environ:dump")
    report, _ = get_environ(server.port, "/caf%C3%A9/a%20b/x%2Fy?q=%C3%A9&r=a+b")
    env = report["environ"]
    # The UTF-8 bytes of 'é' (C3 A9), each carried as one Latin-1 character.
    assert env["PATH_INFO"] == "/caf\u00c3\u00a9/a b/x/y"
    assert report["path_info_codepoints"][4:6] == [0xC3, 0xA9]
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/a b/x/y"
    # QUERY_STRING and RAW_URI stay as sent.
    assert env["QUERY_STRING"] == "q=%C3%A9&r=a+b"
    assert env["RAW_URI"] == "/caf%C3%A9/a%20b/x%2Fy?q=%C3%A9&r=a+b"


def test_request_methods(serve):
    server = serve("wsgi_environ:dump")
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        report, _ = get_environ(server.port, "/m", method=method, body=b"")
        assert report["environ"]["REQUEST_METHOD"] == method


def test_script_name_from_the_environment(serve):
    server = serve("wsgi_environ:dump", env={"SCRIPT_NAME": "/mount"})
    env = get_environ(server.port, "/mount/sub/page?x=1")[0]["environ"]
    assert env["SCRIPT_NAME"] == "/mount"
    assert env["PATH_INFO"] == "/sub/page"
    assert env["RAW_URI"] == "/mount/sub/page?x=1"
    assert env["QUERY_STRING"] == "x=1"
    env = get_environ(server.port, "/mount")[0]["environ"]
    assert env["SCRIPT_NAME"] == "/mount"
    assert env["PATH_INFO"] == ""


def test_root_path_flag_is_the_script_name_and_wins_over_the_variable(serve):
    server = serve("wsgi_environ:dump", "--root-path", "/app/", env={"SCRIPT_NAME": "/other"})
    env = get_environ(server.port, "/app/sub?x=1")[0]["environ"]
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/sub")
    # A path outside the mount point is passed whole, as with SCRIPT_NAME.
    env = get_environ(server.port, "/apple")[0]["environ"]
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/apple")


def test_a_root_path_that_is_not_a_path_is_refused_by_name():
    done = rwsgi("serve", "--root-path", "app", "-b", "127.0.0.1:0", "wsgi_environ:dump",
                 cwd=APPS)
    assert done.returncode != 0
    assert "--root-path" in done.stderr and "must start with /" in done.stderr, done.stderr


def test_content_type_and_length(serve):
    server = serve("wsgi_environ:dump")
    report, _ = get_environ(server.port, "/form", method="POST",
                            headers=[("Content-Type", "application/x-www-form-urlencoded")],
                            body=b"a=1&b=2")
    env = report["environ"]
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["CONTENT_LENGTH"] == "7"
    assert "HTTP_CONTENT_TYPE" not in report["keys"]
    assert "HTTP_CONTENT_LENGTH" not in report["keys"]


def test_http_headers(serve):
    server = serve("wsgi_environ:dump")
    report, _ = get_environ(server.port, "/h", headers=[
        ("X-Custom", "plain"),
        ("X-Repeat", "one"),
        ("X-Repeat", "two"),
        ("X-Dash-Name", "dashes become underscores"),
        ("User-Agent", "rwsgi-tests"),
        ("X-Latin", "caf\u00e9"),  # sent as the single byte E9 (http.client uses Latin-1)
    ])
    env = report["environ"]
    assert env["HTTP_X_CUSTOM"] == "plain"
    assert env["HTTP_X_REPEAT"] == "one,two"
    assert env["HTTP_X_DASH_NAME"] == "dashes become underscores"
    assert env["HTTP_USER_AGENT"] == "rwsgi-tests"
    assert env["HTTP_X_LATIN"] == "caf\u00e9"


def test_header_names_with_underscores_are_dropped(serve):
    server = serve("wsgi_environ:dump")
    # Alone: no trace of it in the environ.
    report, _ = get_environ(server.port, "/u", headers=[("X_Under", "evil")])
    assert "HTTP_X_UNDER" not in report["keys"]
    assert "evil" not in json.dumps(report["environ"])
    # Next to the real header: it cannot pose as (or join) the dashed one.
    report, _ = get_environ(server.port, "/u", headers=[("X-Under", "good"),
                                                        ("X_Under", "evil")])
    assert report["environ"]["HTTP_X_UNDER"] == "good"


def test_server_protocol_http10(serve):
    server = serve("wsgi_environ:dump")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /old?v=10 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        data = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
    env = json.loads(body)["environ"]
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert env["PATH_INFO"] == "/old"
    assert env["QUERY_STRING"] == "v=10"


def test_wsgi_errors_goes_to_the_log(serve):
    server = serve("wsgi_environ:errors")
    marker = uuid.uuid4().hex
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("GET", f"/?{marker}")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"logged")
    conn.close()
    log = server.wait_for_log(f"errors-line2-{marker}")
    assert f"errors-write-{marker}" in log
    assert f"errors-line1-{marker}" in log
