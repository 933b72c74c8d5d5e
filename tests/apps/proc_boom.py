"""An app module that raises while it is imported.

The marker is assembled at run time, so the source line that the traceback quotes does
not contain it: it appears once per printed traceback, in the exception message only.
"""
MARKER = "PROC_BOOM_" + "MARKER_" + "5f9c2e"


def helper():
    raise RuntimeError(f"{MARKER}: this app cannot be imported")


helper()


def app(environ, start_response):  # never reached
    start_response("200 OK", [])
    return [b""]
