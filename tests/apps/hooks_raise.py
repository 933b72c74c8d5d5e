"""Worker hooks that fail: every request hook raises."""


def pre_request(worker, req):
    raise RuntimeError(f"pre_request exploded on {req.path}")


def post_request(worker, req, environ, resp):
    raise ValueError("post_request exploded too")
