"""The front: the HTTP server (``server``), its parser (``parser``), the broker
(``dispatcher``) and ``FrontApp``, the front as a WSGI app for any gevent WSGI server.

Importing this package imports neither gevent nor zmq; ``FrontApp`` is loaded on first use.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "FrontApp":
        from wsgi_zmq.front.app import FrontApp
        return FrontApp
    raise AttributeError(name)
