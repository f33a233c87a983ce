"""The request path through real processes: a front, a handler pool, raw HTTP."""

from __future__ import annotations

from support import exchange


def test_hello_through_front_and_handler(stack):
    """1. start a front and a handler 2. GET / 3. the app's body comes back with 200."""
    _, _, port = stack.serve()
    [response], closed = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 200
    assert response.body == b"Hello, world!\n"
    assert response.header("Content-Length") == "14"
    assert response.header("Date")
    assert not closed


def test_app_factory_with_arguments(stack):
    """1. serve MODULE:factory("arg") as gunicorn resolves it 2. the app the factory built
    answers."""
    _, _, port = stack.serve(app='apps.echo:make_app("Hi")')
    [response], _ = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.body == b"Hi from a factory\n"


def test_environ_names_the_server_software(stack):
    """1. GET /echo 2. the environ's SERVER_SOFTWARE is wsgi_zmq/VERSION, as gunicorn names
    itself (apps read it: httpbin refuses chunked uploads from a server it does not know)."""
    import json

    from wsgi_zmq import __version__

    _, _, port = stack.serve()
    [response], _ = exchange(port, b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    assert json.loads(response.body)["SERVER_SOFTWARE"] == f"wsgi_zmq/{__version__}"
