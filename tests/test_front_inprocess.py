"""The front's socket options, checked on the server's own sockets: the front runs in this
process on gevent's loop (real sockets, nothing mocked)."""

from __future__ import annotations

import socket
import time

import gevent
import gevent.socket

from wsgi_zmq.config import Config
from wsgi_zmq.front.server import FrontServer


def test_accepted_connections_have_tcp_nodelay():
    """1. start a FrontServer in this process 2. connect to it 3. the server side of the
    connection has TCP_NODELAY set (without it a keep-alive response written in two sends
    waits for the client's delayed ACK, 40 ms on Linux)."""
    cfg = Config("front")
    cfg.set("bind", ["127.0.0.1:0"])
    cfg.set("backend", ["tcp://127.0.0.1:*"])
    server = FrontServer(cfg)
    server.start()
    client = gevent.socket.create_connection(("127.0.0.1", server.listeners[0].port))
    try:
        deadline = time.monotonic() + 10
        while not server.connections and time.monotonic() < deadline:
            gevent.sleep(0.005)  # poll interval: let the loop accept
        [conn] = server.connections
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        client.close()
        server.close()


def test_invariant_checks_pass_on_a_sound_front_and_catch_a_broken_one():
    """1. a FrontServer in this process 2. ``check()`` (what ``WSGI_ZMQ_CHECK=1`` runs after
    every loop iteration) passes 3. an exchange put in the queue without going through its
    transitions makes it fail: the checks are not vacuous."""
    import pytest

    from wsgi_zmq.front.dispatcher import Exchange

    cfg = Config("front")
    cfg.set("bind", ["127.0.0.1:0"])
    cfg.set("backend", ["tcp://127.0.0.1:*"])
    server = FrontServer(cfg)
    server.start()
    try:
        server.check()
        stray = Exchange(server.dispatcher.new_rid(), None)  # type: ignore[arg-type]
        server.dispatcher.queue[stray] = None  # NEW, never submitted
        with pytest.raises(AssertionError, match="in the queue"):
            server.check()
        del server.dispatcher.queue[stray]
        server.check()
    finally:
        server.close()
