"""A bounded load generator: N keep-alive clients for T seconds, every answer checked.

    with Load(port, clients=8) as load:      # starts the clients
        ... act on the processes ...
    load.counts  # sent, answered, failed; load.failures lists what went wrong

Each client keeps one connection open and sends ``GET /echo?c=CLIENT&n=SEQUENCE``, then
waits for the answer: it must be 200 with a JSON body whose ``QUERY_STRING`` is that very
query (the right body, not merely a 200). A client whose connection breaks reconnects and
counts the request in flight as failed. Nothing runs past ``seconds`` (default 60) or the
``with`` block, whichever ends first.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from support import connect, read_responses


@dataclass
class Counts:
    sent: int = 0
    answered: int = 0
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"sent {self.sent}, answered {self.answered}, failed {self.failed}"


class Load:
    """Closed-loop keep-alive clients in threads; see the module docstring."""

    def __init__(self, port: int, clients: int = 8, seconds: float = 60.0,
                 path: str = "/echo", check: Any = None) -> None:
        self.port = port
        self.clients = clients
        self.seconds = seconds
        self.path = path
        self.check = check
        self.counts = Counts()
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.bodies: dict[str, int] = {}

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def start(self) -> None:
        deadline = time.monotonic() + self.seconds
        for client in range(self.clients):
            thread = threading.Thread(target=self._client, args=(client, deadline),
                                      daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> Counts:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        return self.counts

    def wait_for(self, answered: int, timeout: float = 30.0) -> None:
        """Block until at least ``answered`` requests were answered (all clients going)."""
        deadline = time.monotonic() + timeout
        while self.counts.answered < answered:
            if time.monotonic() > deadline:
                raise AssertionError(f"load stalled: {self.counts}")
            self.stop.wait(0.02)

    def _record(self, status: int | None, problem: str | None, body: bytes = b"") -> None:
        with self.lock:
            if problem is None:
                self.counts.answered += 1
            else:
                self.counts.failed += 1
                if len(self.failures) < 50:
                    self.failures.append(problem)
            if status is not None:
                self.counts.statuses[status] = self.counts.statuses.get(status, 0) + 1

    def _client(self, client: int, deadline: float) -> None:
        sock = None
        sequence = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            if sock is None:
                try:
                    sock = connect(self.port, timeout=15)
                except OSError as exc:
                    self._record(None, f"client {client}: cannot connect: {exc}")
                    self.stop.wait(0.05)
                    continue
            sequence += 1
            query = f"c={client}&n={sequence}"
            with self.lock:
                self.counts.sent += 1
            try:
                sock.sendall(f"GET {self.path}?{query} HTTP/1.1\r\nHost: load\r\n\r\n".encode())
                responses, closed = read_responses(sock, 1, timeout=15)
            except (OSError, AssertionError) as exc:
                self._record(None, f"client {client} #{sequence}: {exc!r}")
                sock.close()
                sock = None
                continue
            if not responses:
                self._record(None, f"client {client} #{sequence}: connection closed, no answer")
                sock.close()
                sock = None
                continue
            response = responses[0]
            problem = self._problem(response.status, response.body, query)
            self._record(response.status, problem and f"client {client} #{sequence}: {problem}")
            if closed:
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def _problem(self, status: int, body: bytes, query: str) -> str | None:
        if status != 200:
            return f"status {status}: {body[:200]!r}"
        if self.check is not None:
            return self.check(body, query)  # type: ignore[no-any-return]
        try:
            echoed = json.loads(body)["QUERY_STRING"]
        except (ValueError, KeyError):
            return f"not the echo body: {body[:200]!r}"
        if echoed != query:
            return f"the answer to another request: {echoed} for {query}"
        return None
