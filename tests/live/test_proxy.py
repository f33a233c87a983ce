"""PROXY protocol (HAProxy, stunnel) and trusted-proxy headers through a real front."""

from __future__ import annotations

import json
import socket
import struct

from support import exchange, get

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"




def test_proxy_protocol_v1_and_v2_give_the_client_address(stack):
    """1. a front with --proxy-protocol (auto) 2. a v1 header, then a v2 header, each before
    the request 3. REMOTE_ADDR and REMOTE_PORT are the client's from the header 4. a
    connection without the header gets 400 and is closed."""
    _, _, port = stack.serve(front_args=("--proxy-protocol",))
    v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 80\r\n"
    [response], _ = exchange(port, v1 + get("/echo"))
    env = json.loads(response.body)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.7", "40001")

    addresses = socket.inet_pton(socket.AF_INET6, "2001:db8::5") + \
        socket.inet_pton(socket.AF_INET6, "2001:db8::1") + struct.pack("!HH", 40002, 443)
    v2 = V2_SIGNATURE + bytes([0x21, 0x21]) + struct.pack("!H", len(addresses)) + addresses
    [response], _ = exchange(port, v2 + get("/echo"))
    env = json.loads(response.body)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::5", "40002")

    responses, closed = exchange(port, get("/echo"), count=2)
    assert [r.status for r in responses] == [400]
    assert closed


def test_proxy_protocol_only_from_allowed_peers(stack):
    """1. --proxy-protocol v1 --proxy-allow-from 10.0.0.1 2. our loopback client is not
    allowed, so it is served as plain HTTP, its own address in REMOTE_ADDR."""
    _, _, port = stack.serve(front_args=("--proxy-protocol", "v1",
                                         "--proxy-allow-from", "10.0.0.1"))
    [response], _ = exchange(port, get("/echo"))
    assert json.loads(response.body)["REMOTE_ADDR"] == "127.0.0.1"


def test_trusted_proxy_sets_the_scheme(stack):
    """1. the default forwarded_allow_ips trusts 127.0.0.1 2. X-Forwarded-Proto: https makes
    wsgi.url_scheme https 3. with --forwarded-allow-ips 10.0.0.1 the same header is
    ignored."""
    _, _, port = stack.serve()
    [response], _ = exchange(port, get("/echo", "X-Forwarded-Proto: https\r\n"))
    assert json.loads(response.body)["wsgi.url_scheme"] == "https"
    _, _, other = stack.serve(front_args=("--forwarded-allow-ips", "10.0.0.1"))
    [response], _ = exchange(other, get("/echo", "X-Forwarded-Proto: https\r\n"))
    assert json.loads(response.body)["wsgi.url_scheme"] == "http"
