"""Fixtures: live process factories (front, handler pool, all-in-one) on loopback ports.

Every process a test starts is registered here and stopped by its PID at teardown, whatever
the test did. Ports are never guessed: processes bind port 0 / ``tcp://127.0.0.1:*`` and the
tests read the real addresses from their startup log lines.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import LiveProcess, backend_endpoint, listening_port


class Stack:
    """Start real wsgi_zmq processes for one test and stop them all at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[LiveProcess] = []
        self.count = 0

    def start(self, module_args: list[str], name: str, **kwargs: Any) -> LiveProcess:
        self.count += 1
        proc = LiveProcess.python(module_args, self.tmp_path / f"{self.count}-{name}.log",
                                  **kwargs)
        self.procs.append(proc)
        return proc

    def front(self, *args: str, **kwargs: Any) -> tuple[LiveProcess, int, str]:
        """A front on free ports: (process, HTTP port, backend endpoint)."""
        proc = self.start(["wsgi_zmq.front", "--bind", "127.0.0.1:0",
                           "--backend", "tcp://127.0.0.1:*", *args], "front", **kwargs)
        return proc, listening_port(proc), backend_endpoint(proc)

    def handler(self, app: str, endpoint: str, *args: str, **kwargs: Any) -> LiveProcess:
        return self.start(["wsgi_zmq.handler", app, "--connect", endpoint, *args], "handler",
                          **kwargs)

    def serve(self, app: str = "apps.echo:router", front_args: tuple[str, ...] = (),
              handler_args: tuple[str, ...] = (), workers: int = 1
              ) -> tuple[LiveProcess, LiveProcess, int]:
        """A front and a handler pool, ready: (front, handler, HTTP port)."""
        front, port, endpoint = self.front(*front_args)
        handler = self.handler(app, endpoint, "--workers", str(workers), *handler_args)
        front.wait_for_log(r"Worker \d+@\S+ connected", count=workers)
        return front, handler, port

    def all_in_one(self, app: str = "apps.echo:router", *args: str, workers: int = 1,
                   **kwargs: Any) -> tuple[LiveProcess, int]:
        proc = self.start(["wsgi_zmq", app, "--bind", "127.0.0.1:0",
                           "--backend", "tcp://127.0.0.1:*", "--workers", str(workers),
                           *args], "all", **kwargs)
        port = listening_port(proc)
        proc.wait_for_log(r"Worker \d+@\S+ connected", count=workers)
        return proc, port

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(signal.SIGTERM)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    live = Stack(tmp_path)
    try:
        yield live
    finally:
        live.stop_all()
