"""The gevent worker (-k gevent): many requests at once in one process, same protocol."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time

from support import connect, exchange, get, poll_until, read_responses, term_during_request
from wsgi_zmq.front.dispatcher import STALL_SECONDS


def test_one_gevent_worker_serves_requests_at_once(stack, tmp_path):
    """1. one gevent worker with --worker-connections 50 2. the front is told capacity 50
    3. 20 requests that each wait until all 20 have arrived, the second ten sent once the
    first ten have waited longer than the front's STALL_SECONDS (a gevent worker that
    finishes nothing for a while is not stalled: its requests do not wait in order)
    4. all get 200, which only a worker serving them at once can do."""
    front, _, port = stack.serve(handler_args=("-k", "gevent", "--worker-connections", "50"))
    assert re.search(r"connected, capacity 50", front.log())
    arrived = tmp_path / "arrived"  # one file per request that reached the app
    arrived.mkdir()
    results: list[int] = []

    def one() -> None:
        [response], _ = exchange(port, get(f"/barrier?n=20&dir={arrived}"), timeout=60)
        results.append(response.status)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(20)]
    for thread in threads[:10]:
        thread.start()

    def first_ten_waited() -> bool:
        files = list(arrived.iterdir())
        return len(files) == 10 and \
            time.time() - min(f.stat().st_mtime for f in files) > 5 * STALL_SECONDS

    poll_until(first_ten_waited, 30, message="the first ten to wait past STALL_SECONDS")
    for thread in threads[10:]:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [200] * 20


def test_gevent_worker_streams_both_ways(stack):
    """1. a gevent worker 2. a 3 MB chunked upload read as it arrives, and a 20 MB generated
    download, both through the flow control 3. every byte is right."""
    _, _, port = stack.serve(handler_args=("-k", "gevent"))
    payload = bytes(range(256)) * 12000
    with connect(port) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(payload), 50000):
            piece = payload[start:start + 50000]
            sock.sendall(b"%x\r\n%b\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        [response], _ = read_responses(sock, 1, timeout=30)
    assert json.loads(response.body) == {"length": len(payload),
                                         "sha256": hashlib.sha256(payload).hexdigest()}
    [response], _ = exchange(port, get("/big?size=20000000"), timeout=60)
    assert len(response.body) == 20000000


def test_gevent_worker_drains_on_term(stack, tmp_path):
    """1. a gevent worker runs a 1 s request 2. TERM the pool 3. the request still gets its
    200 and the pool exits 0."""
    _, handler, port = stack.serve(handler_args=("-k", "gevent"))
    assert term_during_request(handler, port, tmp_path).status == 200
