"""Third-party WSGI applications as users run them: a git server (dulwich) serving the
bare repository at $RWSGI_TEST_REPO, and a Flask form."""

import os


def git():
    """dulwich's smart-HTTP git server (clone, fetch and push) for the repository."""
    from dulwich.repo import Repo
    from dulwich.server import DictBackend
    from dulwich.web import make_wsgi_chain

    return make_wsgi_chain(DictBackend({"/": Repo(os.environ["RWSGI_TEST_REPO"])}))


def flask_form():
    """A Flask app echoing a posted form, the way a login view reads one."""
    from flask import Flask, request

    app = Flask(__name__)

    @app.post("/login")
    def login():
        return {"username": request.form.get("username"),
                "token": request.form.get("csrf"),
                "length": request.content_length}

    return app
