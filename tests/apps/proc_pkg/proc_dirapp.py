"""Served as `.../proc_pkg/proc_dirapp:app`: only importable once its directory is on sys.path."""
import json
import os
import sys


def app(environ, start_response):
    body = json.dumps({"file": os.path.abspath(__file__), "sys_path": sys.path,
                       "cwd": os.getcwd()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
