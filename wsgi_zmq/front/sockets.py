"""Listening sockets for the front, without gevent: the all-in-one supervisor binds them
before it forks the front, so a restarted front keeps its ports and its backlog."""

from __future__ import annotations

import socket

from wsgi_zmq.errors import ConfigError


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """Bind and listen on ``host:port``; raise ``ConfigError`` with one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"Cannot listen at {host}:{port}: {exc.strerror}") from None
    return sock
