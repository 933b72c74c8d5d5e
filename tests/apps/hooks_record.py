"""Worker hooks for --hooks tests: each call appends a JSON line to the file named by
$HOOKS_LOG with the arguments' attributes the hook received."""

import json
import os
import sys
import time


def record(hook, **facts):
    with open(os.environ["HOOKS_LOG"], "a") as log:
        log.write(json.dumps({"hook": hook, "process": os.getpid(), **facts}) + "\n")


def _worker(worker):
    return {"pid": worker.pid, "ppid": worker.ppid, "age": worker.age, "alive": worker.alive,
            "nr": worker.nr, "booted": worker.booted, "log": type(worker.log).__name__}


def _server(server):
    return {"pid": server.pid, "num_workers": server.num_workers,
            "wsgi_app": server.cfg.wsgi_app, "app_uri": server.app.app_uri,
            "worker_class": server.cfg.worker_class_str, "threads": server.cfg.threads}


def _req(req):
    return {"method": req.method, "path": req.path, "query": req.query, "uri": req.uri,
            "version": list(req.version), "scheme": req.scheme,
            "headers": [list(h) for h in req.headers], "remote_addr": list(req.remote_addr)}


def post_fork(server, worker):
    record("post_fork", server=_server(server), worker=_worker(worker),
           app_imported="hooks_app" in sys.modules)


def post_worker_init(worker):
    record("post_worker_init", worker=_worker(worker), wsgi=callable(worker.wsgi))


def pre_request(worker, req):
    req.carried = "set in pre_request"
    worker.log.info("pre_request hook saw %s %s", req.method, req.path)
    record("pre_request", worker=_worker(worker), req=_req(req))


def post_request(worker, req, environ, resp):
    client_done = None
    if req.path == "/handshake":
        # The test creates this file once its response has arrived: post_request must
        # run after the response left, so it sees the file appear.
        marker = os.environ["HOOKS_LOG"] + ".client-done"
        deadline = time.monotonic() + 10
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        client_done = os.path.exists(marker)
    record("post_request", worker=_worker(worker), req=_req(req),
           carried=getattr(req, "carried", None), environ_path=environ["PATH_INFO"],
           resp={"status": resp.status, "status_code": resp.status_code,
                 "headers": [list(h) for h in resp.headers], "sent": resp.sent,
                 "response_length": resp.response_length},
           client_done=client_done)


def worker_exit(server, worker):
    record("worker_exit", server=_server(server), worker=_worker(worker))


def worker_abort(worker):
    record("worker_abort", worker=_worker(worker))
