"""An app module that cannot be imported: it raises while the module body runs."""


def _broken():
    raise RuntimeError("raises_at_import is broken on purpose")


_broken()


def app(environ, start_response):  # never reached
    start_response("200 OK", [])
    return [b""]
