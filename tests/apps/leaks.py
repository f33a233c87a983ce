"""Fixture app for tests/live/test_leaks.py: the echo router plus routes whose response
carries what must not leak, or a header the server would otherwise set."""

from apps.echo import read_all, router

COOKIE = "token=SECRET6"


def app(environ, start_response):
    """``/own-server``: the app sets its own ``Server`` (lower case, to test the match);
    ``/set-cookie``: a ``Set-Cookie`` of ``COOKIE`` (a secret the access log must hide;
    not taken from the request, whose line the access log shows); anything else:
    ``apps.echo``."""
    path = environ["PATH_INFO"]
    if path == "/own-server":
        read_all(environ)
        start_response("200 OK", [("Content-Type", "text/plain"), ("server", "AppServer/1")])
        return [b"own server\n"]
    if path == "/set-cookie":
        read_all(environ)
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Set-Cookie", f"{COOKIE}; HttpOnly")])
        return [b"cookie set\n"]
    return router(environ, start_response)
