"""SIGKILL of busy workers under a mixed GET and POST load: every request is answered, and
502 only where the rules of ``MAX_ATTEMPTS`` in ``wsgi_zmq/front/dispatcher.py`` allow it."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter

import pytest

from support import connect, logged_pids, pid_alive, poll_until, read_responses


class MixedLoad:
    """Clients in threads, each on its own keep-alive connection, alternating GET and POST
    of ``/slow`` (the app reads the body, then sleeps ``seconds``). Every answer is kept as
    (method, status); a request that got no answer at all counts as status 0."""

    def __init__(self, port: int, clients: int, seconds: float) -> None:
        self.port = port
        self.results: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i, seconds), daemon=True)
                        for i in range(clients)]

    def __enter__(self) -> MixedLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def _client(self, client: int, seconds: float) -> None:
        n = 0
        sock = None
        deadline = time.monotonic() + 120  # bound: the test stops the load much earlier
        while not self.stop.is_set() and time.monotonic() < deadline:
            method = "POST" if (n + client) % 2 else "GET"
            n += 1
            body = f"c={client}&n={n}"
            request = (f"{method} /slow?seconds={seconds} HTTP/1.1\r\nHost: t\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
            status = 0
            try:
                if sock is None:
                    sock = connect(self.port)
                sock.sendall(request)
                responses, closed = read_responses(sock, 1, timeout=30)
                if responses:
                    status = responses[0].status
                if closed or not responses or status != 200:
                    sock.close()
                    sock = None
            except (OSError, AssertionError):
                if sock is not None:
                    sock.close()
                sock = None
            with self.lock:
                self.results.append((method, status))
        if sock is not None:
            sock.close()


@pytest.mark.parametrize("kills", [3])
def test_sigkill_of_busy_workers_under_get_and_post_load(stack, kills):
    """1. a front and a pool of 2 sync workers (capacity 32: each holds several requests
    and runs them in order) 2. 8 clients send GET and POST /slow (50 ms) 3. SIGKILL a busy
    worker, wait for its replacement to connect; three times 4. every request is answered
    (no hang, no status 0) 5. the requests waiting behind the running one never ran and go
    again whatever their method, without counting as an attempt; a running GET is replayed
    6. a 502 only for a POST that was running on a killed worker (at most one per kill), or
    for a GET that was running on two killed workers (a replay that met the next kill; the
    front says which in its log) 7. the pool is back to 2 workers and serves."""
    front, handler, port = stack.serve(workers=2)
    with MixedLoad(port, clients=8, seconds=0.05) as load:
        poll_until(lambda: load.count() >= 40, 30, message="the load to run")
        for kill in range(kills):
            alive = [pid for pid in logged_pids(handler) if pid_alive(pid)]
            victim = alive[0]
            before = load.count()
            os.kill(victim, signal.SIGKILL)
            front.wait_for_log(r"Worker \d+@\S+ lost", count=kill + 1)
            front.wait_for_log(r"Worker \d+@\S+ connected", count=3 + kill)
            poll_until(lambda before=before: load.count() >= before + 40, 30,
                       message="requests after the kill")
    statuses = Counter(load.results)
    print(f"after {kills} kills: {dict(statuses)}")
    assert statuses[("GET", 0)] == statuses[("POST", 0)] == 0, statuses
    assert set(statuses) <= {("GET", 200), ("GET", 502), ("POST", 200), ("POST", 502)}, statuses
    # each 502 says which rule gave it: a POST running on a killed worker (one per kill at
    # most), or a GET running on two killed workers (a replay that met the next kill)
    reasons = re.findall(r"502 for (GET|POST) \S+: The request failed: its worker was lost; "
                         r"(.*)", front.log())
    assert len(reasons) == statuses[("GET", 502)] + statuses[("POST", 502)], reasons
    running = [m for m, why in reasons if why == "it may have been running, and is not "
               "idempotent"]
    twice = [m for m, why in reasons if why == "it may have been running on 2 workers that died"]
    assert running == ["POST"] * len(running) and len(running) <= kills, reasons
    assert twice == ["GET"] * len(twice) and len(twice) <= kills - 1, reasons
    assert len(running) + len(twice) == len(reasons), reasons
    assert len([pid for pid in logged_pids(handler) if pid_alive(pid)]) == 2
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        [response], _ = read_responses(sock, 1)
        assert response.status == 200
