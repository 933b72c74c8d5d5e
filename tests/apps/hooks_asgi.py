"""Worker hooks for the -k asgi tests: pre_request and post_request append a JSON line
to $HOOKS_LOG (asgi_extensions.declared_length records its own call in between)."""

import json
import os


def record(hook, **facts):
    with open(os.environ["HOOKS_LOG"], "a") as log:
        log.write(json.dumps({"hook": hook, **facts}) + "\n")


def _req(req, worker):
    return {"method": req.method, "path": req.path, "query": req.query, "nr": worker.nr}


def pre_request(worker, req):
    req.carried = "set in pre_request"
    record("pre_request", req=_req(req, worker))


def post_request(worker, req, environ, resp):
    record("post_request", req=_req(req, worker), carried=getattr(req, "carried", None),
           scope={"type": environ["type"], "path": environ["path"]},
           status_code=resp.status_code, sent=resp.sent)

