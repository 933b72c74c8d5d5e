"""A small Flask app, served from a virtualenv the test creates."""
import sys

import flask
from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/info")
def info():
    return jsonify(flask_file=flask.__file__, prefix=sys.prefix, executable=sys.executable,
                   sys_path=sys.path, version=sys.version, base_prefix=sys.base_prefix)


@app.route("/hello/<name>")
def hello(name):
    return jsonify(greeting=f"Hello, {name}!", n=len(name))
