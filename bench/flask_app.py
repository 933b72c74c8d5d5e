"""The benchmark's Flask hello world (Flask from bench/.venv): the same 14 bytes as app.py."""

from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello():
    return "Hello, World!\n"
