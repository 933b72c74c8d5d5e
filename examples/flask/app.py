"""A Flask application.

    python3 -m venv .venv && .venv/bin/pip install -r examples/flask/requirements.txt
    VIRTUAL_ENV=$PWD/.venv ./target/release/rwsgi serve examples/flask/app:app
"""
import os

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/")
def index():
    return "Hello from Flask on rwsgi!\n"


@app.get("/info")
def info():
    return jsonify(pid=os.getpid(), path=request.path, args=request.args, server=request.environ.get("SERVER_SOFTWARE"))


@app.post("/echo")
def echo():
    return request.get_data(), 200, {"Content-Type": request.content_type or "application/octet-stream"}
