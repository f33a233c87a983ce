"""Listening sockets for the front, without gevent: the all-in-one supervisor binds them
before it forks the front, so a restarted front keeps its ports and its backlog; and the
one rule for binding the front's ZeroMQ endpoints."""

from __future__ import annotations

import os
import socket
from typing import Any

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


def bind_zmq(sock: Any, endpoint: str, umask: int | None) -> None:
    """Bind a ZeroMQ socket to ``endpoint``. An ``ipc://`` socket file is created
    owner-only (0600), or under the ``umask`` setting when one is given."""
    if not endpoint.startswith("ipc://") or umask is not None:
        sock.bind(endpoint)
        return
    old = os.umask(0o177)
    try:
        sock.bind(endpoint)
    finally:
        os.umask(old)
