"""An app module that fails while it is imported, for `rwsgi check`."""
from wsgiref.validate import validator


def _load_settings():
    raise LookupError("CONFIG_BROKEN: the settings module is missing")


SETTINGS = _load_settings()


@validator
def app(environ, start_response):  # never reached
    start_response("200 OK", [])
    return [b""]
