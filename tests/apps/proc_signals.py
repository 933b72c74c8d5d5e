"""Installs a signal handler at import time and reports the worker's signal state."""
import json
import os
import signal
import subprocess
import threading

USR1_SEEN = []


def _on_usr1(signum, frame):
    USR1_SEEN.append(signum)


try:
    signal.signal(signal.SIGUSR1, _on_usr1)
    IMPORT_SIGNAL_ERROR = None
except Exception as exc:  # reported, so the test shows what failed
    IMPORT_SIGNAL_ERROR = repr(exc)
IMPORT_IN_MAIN_THREAD = threading.current_thread() is threading.main_thread()


def _status_masks(text):
    fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    return {k: int(fields[k].strip(), 16) for k in ("SigBlk", "SigIgn")}


def app(environ, start_response):
    child = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True,
                           timeout=10)
    body = json.dumps({
        "import_signal_error": IMPORT_SIGNAL_ERROR,
        "import_in_main_thread": IMPORT_IN_MAIN_THREAD,
        "usr1_handler_kept": signal.getsignal(signal.SIGUSR1) is _on_usr1,
        "sigint": repr(signal.getsignal(signal.SIGINT)),
        "sigterm": repr(signal.getsignal(signal.SIGTERM)),
        "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
        "sigterm_ignored": signal.getsignal(signal.SIGTERM) == signal.SIG_IGN,
        "child": _status_masks(child.stdout),
        "self_thread": _status_masks(open(f"/proc/self/task/{threading.get_native_id()}/status").read()),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
