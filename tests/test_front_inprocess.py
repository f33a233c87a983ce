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
