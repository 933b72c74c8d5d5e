"""Apps for the process tests (test_process.py, test_cli.py, test_pyenv.py).

`app` answers by path:
  /pid           -> the worker's pid
  /sleep?s=N     -> says "/sleep under way in worker PID" on stdout (the server's log, for
                    a test to wait on), sleeps N seconds, then a long known body ending
                    in b"END"
  /crash?after=N -> says "/crash under way in worker PID", sleeps N seconds, then
                    os._exit(1) without answering
  /info          -> JSON facts about the worker's Python environment
"""
import json
import os
import sys
import time
from urllib.parse import parse_qs

SLEEP_BODY = b"x" * 200_000 + b"END"


def _arg(environ, name, default):
    values = parse_qs(environ.get("QUERY_STRING", "")).get(name)
    return float(values[0]) if values else default


def _send(start_response, body, ctype="text/plain"):
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def info():
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "cwd": os.getcwd(),
        "sys_path": sys.path,
        "argv": sys.argv,
        "argv_types": [type(a).__name__ for a in sys.argv],
        "executable": sys.executable,
        "version": sys.version,
        "prefix": sys.prefix,
        "base_prefix": sys.base_prefix,
    }


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/sleep":
        print(f"/sleep under way in worker {os.getpid()}", flush=True)
        time.sleep(_arg(environ, "s", 1.0))
        return _send(start_response, SLEEP_BODY)
    if path == "/crash":
        print(f"/crash under way in worker {os.getpid()}", flush=True)
        time.sleep(_arg(environ, "after", 0.0))
        os._exit(1)
    if path == "/info":
        return _send(start_response, json.dumps(info()).encode(), "application/json")
    return _send(start_response, str(os.getpid()).encode())


def create_app():
    """A factory called with no arguments."""
    def factory_app(environ, start_response):
        return _send(start_response, b"made by create_app()")
    return factory_app


def make_app(*args, **kwargs):
    """A factory called with literal arguments; the app reports what it received."""
    body = json.dumps({"args": list(args), "types": [type(a).__name__ for a in args],
                       "kwargs": kwargs}).encode()

    def factory_app(environ, start_response):
        return _send(start_response, body, "application/json")
    return factory_app
