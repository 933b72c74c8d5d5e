"""Records which process imported it: with --preload the master, otherwise each worker.

If PROC_IMPORT_LOG names a file, every import appends one line with the importing pid.
"""
import json
import os

IMPORT_PID = os.getpid()
_log = os.environ.get("PROC_IMPORT_LOG")
if _log:
    with open(_log, "a") as f:
        f.write(f"{IMPORT_PID}\n")


def app(environ, start_response):
    body = json.dumps({"import_pid": IMPORT_PID, "pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
