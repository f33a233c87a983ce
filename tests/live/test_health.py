"""The front's own health check (``--health-path``), with real processes."""

from __future__ import annotations

import signal

from support import connect, exchange, get, poll_until, read_responses, send_async


def health(port: int, method: str = "GET") -> tuple[int, bytes]:
    request = f"{method} /healthz HTTP/1.1\r\nHost: test\r\n\r\n".encode()
    [response], _ = exchange(port, request, head=method == "HEAD")
    return response.status, response.body


def test_health_follows_the_workers_and_is_never_queued(stack, tmp_path):
    """1. a front with --health-path /healthz and no worker: 503 naming why 2. a pool
    connects: 200 3. the one worker is busy with a slow request and the queue (size 1)
    holds another: a third request gets 503, but the health check is 200 at once
    4. HEAD has no body 5. the pool stops: 503 again 6. the app never saw /healthz."""
    front, port, endpoint = stack.front("--health-path", "/healthz", "--queue-size", "1",
                                        "--log-level", "debug")
    status, body = health(port)
    assert status == 503 and b"no HTTP worker" in body
    pool = stack.handler("apps.echo:router", endpoint, "--workers", "1", "--capacity", "1")
    front.wait_for_log(r"Worker \d+@\S+ connected")
    poll_until(lambda: health(port)[0] == 200, 10)
    assert health(port) == (200, b"ok\n")
    mark = tmp_path / "running"
    results: list = []
    slow = send_async(port, get(f"/slow?seconds=3&mark={mark}"), results)
    poll_until(mark.exists, 10)  # the one worker is busy
    queued = send_async(port, get("/slow?seconds=0"), results)
    front.wait_for_log(r"Queued request \w+: 1 waiting")  # the queue is full
    [refused], _ = exchange(port, get("/slow?seconds=0"))
    assert refused.status == 503
    with connect(port) as sock:
        sock.sendall(get("/healthz"))
        [answer], _ = read_responses(sock, 1, timeout=2)  # not behind the slow request
    assert answer.status == 200 and slow.is_alive()  # answered while the queue is full
    status, body = health(port, "HEAD")
    assert status == 200 and body == b""
    slow.join(20)
    queued.join(20)
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(30) == 0
    poll_until(lambda: health(port)[0] == 503, 10)
    assert sorted(r[0] for r in results) == [200, 200]


def test_without_the_setting_the_path_is_the_apps(stack):
    front, _, port = stack.serve()
    [response], _ = exchange(port, get("/healthz"))
    assert (response.status, response.body) == (200, b"Hello, world!\n")  # the app answered
