"""FrontApp, the front as a WSGI app, mounted in gevent.pywsgi and serving real handlers."""

from __future__ import annotations

import hashlib
import json
import sys

import requests

from support import TESTS, LiveProcess, backend_endpoint, listening_port


def test_frontapp_in_gevent_pywsgi_forwards_to_handlers(stack, tmp_path):
    """1. run FrontApp inside gevent.pywsgi.WSGIServer 2. connect a handler pool to its
    backend 3. GET, a POST with a 3 MB body streamed in, a 5 MB generated download and an
    app error all behave as through the native front."""
    server = LiveProcess([sys.executable, str(TESTS / "apps" / "frontapp_server.py"),
                          "tcp://127.0.0.1:*"], tmp_path / "frontapp.log")
    stack.procs.append(server)
    port = listening_port(server)
    endpoint = backend_endpoint(server)
    stack.handler("apps.echo:router", endpoint, "--workers", "2")
    server.wait_for_log(r"Worker \d+@\S+ connected", count=2)
    base = f"http://127.0.0.1:{port}"

    hello = requests.get(base + "/", timeout=10)
    assert hello.status_code == 200
    assert hello.text == "Hello, world!\n"

    env = requests.get(base + "/echo/x%20y?q=1", headers={"X-Test": "1"}, timeout=10).json()
    assert env["PATH_INFO"] == "/echo/x y"
    assert env["QUERY_STRING"] == "q=1"
    assert env["HTTP_X_TEST"] == "1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"

    payload = bytes(range(256)) * 12000
    uploaded = requests.post(base + "/upload", data=payload, timeout=30).json()
    assert uploaded == {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}

    def chunks():
        for start in range(0, len(payload), 100000):
            yield payload[start:start + 100000]

    chunked = requests.post(base + "/upload", data=chunks(), timeout=30).json()
    assert chunked["length"] == len(payload)

    download = requests.get(base + "/big?size=5000000", timeout=30)
    assert len(download.content) == 5000000
    assert download.content[:256] == bytes(range(256))

    assert requests.get(base + "/crash", timeout=10).status_code == 500
    status = json.loads(requests.get(base + "/echo", timeout=10).content)
    assert status["REQUEST_METHOD"] == "GET"
