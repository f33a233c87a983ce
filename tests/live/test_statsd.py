"""The front's statsd metrics (``--statsd-host``): a real front and handler pool send to a
UDP socket the test bound; the datagrams are read with a deadline after known traffic."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest

from support import connect, exchange, get, poll_until, read_responses
from wsgi_zmq.front.statsd import LOG_BURST, MAX_DATAGRAM


class Received:
    """The statsd lines that reach a UDP socket bound on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self.sizes: list[int] = []

    def read(self, timeout: float = 0.05) -> None:
        """Take the datagrams that arrive within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                self.sizes.append(len(data))
                self.lines += data.decode("ascii").split("\n")
                self.sock.settimeout(0)
        except (TimeoutError, BlockingIOError):
            pass

    def total(self, name: str) -> int:
        """The sum of the counter ``name`` over every line read."""
        return sum(int(line.split(":")[1].split("|")[0]) for line in self.lines
                   if line.split(":")[0] == name and "|c" in line)

    def samples(self, name: str) -> list[float]:
        return [float(line.split(":")[1].split("|")[0]) for line in self.lines
                if line.split(":")[0] == name and "|ms" in line]

    def gauges(self, name: str) -> list[int]:
        return [int(line.split(":")[1].split("|")[0]) for line in self.lines
                if line.split(":")[0] == name and "|g" in line]

    def until(self, predicate, timeout: float = 10.0, message: str = "statsd lines") -> None:
        def check() -> bool:
            self.read()
            return bool(predicate())
        poll_until(check, timeout, interval=0, message=message)


@pytest.fixture
def received() -> Iterator[Received]:
    got = Received()
    try:
        yield got
    finally:
        got.sock.close()


def test_counts_after_known_traffic(stack, received):
    """1. a front with --statsd-host on a port the test bound; a pool of 2 workers 2. 5
    GETs (200), one 404 from the app, one 400 refusal 3. the counters sum to what was
    sent, the duration samples are one per request, the workers gauge reaches 2 4. after
    the front stops (its last flush), the totals are exact and every datagram was under
    the size limit."""
    front, handler, port = stack.serve(front_args=("--statsd-host",
                                                   f"127.0.0.1:{received.port}"), workers=2)
    received.until(lambda: 2 in received.gauges("gunicorn.workers"),
                   message="gunicorn.workers 2")
    for _ in range(5):
        assert exchange(port, get("/"))[0][0].status == 200
    assert exchange(port, get("/status?code=404"))[0][0].status == 404
    assert exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")[0][0].status == 400
    received.until(lambda: received.total("gunicorn.requests") >= 7,
                   message="7 requests counted")
    front.stop()
    assert front.proc.returncode == 0
    received.read()  # the last flush is in the socket before the front exits
    assert received.total("gunicorn.requests") == 7
    assert received.total("gunicorn.request.status.200") == 5
    assert received.total("gunicorn.request.status.404") == 1
    assert received.total("gunicorn.request.status.400") == 1
    assert received.total("wsgi_zmq.front_answers.400") == 1
    durations = received.samples("gunicorn.request.duration")
    assert len(durations) == 7 and all(0 <= d < 10_000 for d in durations)
    assert received.gauges("wsgi_zmq.queue.depth")[-1] == 0
    assert all(size <= MAX_DATAGRAM for size in received.sizes)
    names = {line.split(":")[0] for line in received.lines}
    assert not {n for n in names if not n.startswith(("gunicorn.", "wsgi_zmq."))}
    assert re.search(r"Statsd: \d+ datagrams sent, 0 lost", front.log())


def test_prefix_and_tags(stack, received):
    """--statsd-prefix app.web --dogstatsd-tags env:test,team:x: every line is
    ``app.web.<name>:<value>|<type>|#env:test,team:x``, gunicorn's names among them."""
    front, handler, port = stack.serve(front_args=(
        "--statsd-host", f"127.0.0.1:{received.port}", "--statsd-prefix", "app.web",
        "--dogstatsd-tags", "env:test,team:x"))
    assert exchange(port, get("/"))[0][0].status == 200
    received.until(lambda: received.total("app.web.gunicorn.requests") == 1,
                   message="app.web.gunicorn.requests")
    for line in received.lines:
        assert re.fullmatch(r"app\.web\.[a-z_.0-9]+:[\d.]+\|(c|ms|g)\|#env:test,team:x", line), \
            line
    names = {line.split(":")[0] for line in received.lines}
    assert {"app.web.gunicorn.requests", "app.web.gunicorn.request.duration",
            "app.web.gunicorn.request.status.200", "app.web.gunicorn.workers",
            "app.web.wsgi_zmq.connections", "app.web.wsgi_zmq.queue.depth"} <= names


def test_nobody_listening(stack):
    """1. --statsd-host on a UDP port nobody has bound 2. the front serves every request
    (1000, pipelined in bursts so that the duration buffer is sent many times) 3. the
    sends that the kernel refused are counted and logged at most LOG_BURST lines; the
    front's last line says how many datagrams were lost."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    front, handler, port = stack.serve(front_args=("--statsd-host", f"127.0.0.1:{dead}"))
    for _ in range(5):
        with connect(port) as sock:
            sock.sendall(get("/") * 200)
            responses, _ = read_responses(sock, 200, timeout=30)
        assert [r.status for r in responses] == [200] * 200
    front.wait_for_log(r"Cannot send to statsd at 127\.0\.0\.1:\d+: .*refused")
    start = time.monotonic()
    assert exchange(port, get("/"))[0][0].status == 200
    assert time.monotonic() - start < 5
    front.stop()
    assert front.proc.returncode == 0
    lost = int(re.search(r"Statsd: \d+ datagrams sent, (\d+) lost", front.log()).group(1))
    assert lost > LOG_BURST
    assert 1 <= front.log().count("Cannot send to statsd") <= LOG_BURST
    assert "Traceback" not in front.log()


def test_all_in_one(stack, received):
    """``python -m wsgi_zmq APP --statsd-host``: the supervisor's front sends too."""
    proc, port = stack.all_in_one("apps.echo:router", "--statsd-host",
                                  f"127.0.0.1:{received.port}", workers=2)
    assert exchange(port, get("/"))[0][0].status == 200
    received.until(lambda: received.total("gunicorn.request.status.200") == 1
                   and 2 in received.gauges("gunicorn.workers"), message="the front's lines")
