"""Apps that report what rwsgi puts in `environ` (PEP 3333), as JSON.

Every app here runs behind wsgiref's validator, with its warnings turned into errors so
that a questionable environ fails the request (500) instead of passing quietly.
"""
import json
import warnings
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)

# Methods a stream object should offer (wsgi.input: PEP 3333 "Input and Error Streams").
_STREAM_ATTRS = ("read", "readline", "readlines", "__iter__", "write", "writelines", "flush")


def _describe(value):
    """A JSON-able picture of an environ value: str/bool as they are, others described."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, tuple):
        return {"type": "tuple", "items": list(value)}
    return {
        "type": type(value).__name__,
        "callable": callable(value),
        "attrs": sorted(a for a in _STREAM_ATTRS if hasattr(value, a)),
    }


def _raw_types(app):
    """Records the server's own objects before the validator replaces wsgi.input and
    wsgi.errors with its wrappers, so the report shows what rwsgi itself passed."""

    def recorder(environ, start_response):
        environ["rwsgi_test.raw"] = {
            key: _describe(value)
            for key, value in environ.items()
            if not isinstance(value, str)
        }
        environ["rwsgi_test.keys"] = sorted(environ)
        return app(environ, start_response)

    return recorder


def _dump(environ, start_response):
    report = {
        "environ": {
            key: _describe(value)
            for key, value in environ.items()
            if not key.startswith("rwsgi_test.")
        },
        "raw": environ["rwsgi_test.raw"],
        "keys": environ["rwsgi_test.keys"],
        "path_info_codepoints": [ord(c) for c in environ.get("PATH_INFO", "")],
    }
    body = json.dumps(report).encode("ascii")
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


dump = _raw_types(validator(_dump))


@validator
def errors(environ, start_response):
    """Writes a marker taken from the query string to wsgi.errors, three ways."""
    marker = environ.get("QUERY_STRING", "")
    stream = environ["wsgi.errors"]
    stream.write(f"errors-write-{marker}\n")
    stream.writelines([f"errors-line1-{marker}\n", f"errors-line2-{marker}\n"])
    stream.flush()
    body = b"logged"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
