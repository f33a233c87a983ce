"""The front's statsd client (``wsgi_zmq.front.statsd``) without a front: the settings'
validators, the line format (prefix, tags), batching into datagrams under the size limit,
and sending to real sockets bound here (UDP on 127.0.0.1, Unix datagram in tmp_path)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from support.recording import Clock, Lines
from wsgi_zmq.config import REGISTRY, Config, parse_statsd_host
from wsgi_zmq.errors import ConfigError
from wsgi_zmq.front import statsd
from wsgi_zmq.front.metrics import FrontMetrics
from wsgi_zmq.front.statsd import MAX_DATAGRAM, StatsdClient, pack, statsd_prefix


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The messages the front's error logger gets during the test."""
    logger = logging.getLogger("wsgi_zmq.error.front")
    handler = Lines()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


def config(host: str, prefix: str = "", tags: str = "") -> Config:
    cfg = Config("front")
    cfg.set("statsd_host", host)
    cfg.set("statsd_prefix", prefix)
    cfg.set("dogstatsd_tags", tags)
    return cfg


def fake_server(workers: int = 2, connections: int = 3, queued: int = 1) -> Any:
    """What the client reads of a FrontServer: connections and the HTTP lane."""
    http = SimpleNamespace(members=workers, queue=dict.fromkeys(range(queued)))
    return SimpleNamespace(connections=set(range(connections)),
                           dispatcher=SimpleNamespace(http=http))


_made: list[StatsdClient] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    """The sockets of the clients a test made are closed after it."""
    yield
    while _made:
        _made.pop().sender.close()


def client(host: str = "127.0.0.1:9", prefix: str = "", tags: str = "", **state: int
           ) -> tuple[StatsdClient, FrontMetrics, Clock]:
    metrics = FrontMetrics()
    clock = Clock()
    made = StatsdClient(config(host, prefix, tags), fake_server(**state), metrics, clock)
    _made.append(made)
    metrics.statsd = made
    return made, metrics, clock


def receive_all(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock`` (sent before this call: loopback delivers a
    datagram before ``send`` returns)."""
    datagrams = []
    sock.setblocking(False)
    try:
        while True:
            datagrams.append(sock.recv(65536))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5)
    return datagrams


# -- settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, parsed", [
    ("127.0.0.1:8125", ("127.0.0.1", 8125)),
    ("localhost", ("localhost", 8125)),
    ("statsd.example:9125", ("statsd.example", 9125)),
    ("[::1]:8125", ("::1", 8125)),
    ("[::1]", ("::1", 8125)),
    ("unix:/run/statsd.sock", "/run/statsd.sock"),
    ("unix:///run/statsd.sock", "/run/statsd.sock"),
    ("unix:8125", ("unix", 8125)),  # gunicorn reads it as the host "unix"
])
def test_statsd_host_forms(text: str, parsed: Any) -> None:
    assert parse_statsd_host(text) == parsed
    assert REGISTRY["statsd_host"].validate(text) == text


@pytest.mark.parametrize("text", ["host:port", "host:0", "host:70000", "a:b:c", "unix:",
                                  "http://host:1", 8125])
def test_bad_statsd_hosts_are_refused(text: Any) -> None:
    with pytest.raises(ConfigError, match="statsd_host"):
        REGISTRY["statsd_host"].validate(text)


def test_prefix_and_tags_validation() -> None:
    assert REGISTRY["statsd_prefix"].validate("app.web.") == "app.web."
    assert REGISTRY["dogstatsd_tags"].validate(" env:test , team:x") == "env:test,team:x"
    assert REGISTRY["dogstatsd_tags"].validate("") == ""
    assert REGISTRY["dogstatsd_tags"].validate("canary") == "canary"
    for bad in ("a b", "a:b", "a|b", "é"):
        with pytest.raises(ConfigError, match="statsd_prefix"):
            REGISTRY["statsd_prefix"].validate(bad)
    for bad in ("env:a|b", "env:#x", "a,,b", "env:x y", "é:1"):
        with pytest.raises(ConfigError, match="dogstatsd_tags"):
            REGISTRY["dogstatsd_tags"].validate(bad)


def test_only_the_front_takes_them() -> None:
    for name in ("statsd_host", "statsd_prefix", "dogstatsd_tags"):
        assert Config("front").accepts(name) and Config("all").accepts(name)
        assert not Config("handler").accepts(name)
    assert Config("front").statsd_host is None


# -- the line format ----------------------------------------------------------------------------

@pytest.mark.parametrize("given, prefix", [("", ""), ("app", "app."), ("app.web", "app.web."),
                                           ("app.web.", "app.web."), ("a", "a."),
                                           ("app..", "app.")])
def test_prefix_gets_one_trailing_dot(given: str, prefix: str) -> None:
    assert statsd_prefix(given) == prefix


def test_lines_without_prefix_or_tags() -> None:
    """Durations one line each; counters summed; front answers as the difference since the
    last flush; gauges from the live state."""
    made, metrics, _ = client()
    for status, seconds in ((200, 0.0015), (200, 0.25), (404, 0.001)):
        metrics.answered(b"GET", status, seconds)
    metrics.front_answer(400)
    metrics.answered(b"", 400, 0.0)
    assert made.lines() == [
        "gunicorn.request.duration:1.500|ms",
        "gunicorn.request.duration:250.000|ms",
        "gunicorn.request.duration:1.000|ms",
        "gunicorn.request.duration:0.000|ms",
        "gunicorn.requests:4|c",
        "gunicorn.request.status.200:2|c",
        "gunicorn.request.status.400:1|c",
        "gunicorn.request.status.404:1|c",
        "wsgi_zmq.front_answers.400:1|c",
        "gunicorn.workers:2|g",
        "wsgi_zmq.connections:3|g",
        "wsgi_zmq.queue.depth:1|g",
    ]
    assert metrics.requests == {("GET", 2): 2, ("GET", 4): 1, ("other", 4): 1}  # unchanged


def test_lines_with_prefix_and_tags() -> None:
    made, metrics, _ = client(prefix="app.web", tags="env:test,team:x")
    metrics.answered(b"POST", 201, 0.002)
    metrics.redispatches += 2
    assert made.lines() == [
        "app.web.gunicorn.request.duration:2.000|ms|#env:test,team:x",
        "app.web.gunicorn.requests:1|c|#env:test,team:x",
        "app.web.gunicorn.request.status.201:1|c|#env:test,team:x",
        "app.web.wsgi_zmq.redispatches:2|c|#env:test,team:x",
        "app.web.gunicorn.workers:2|g|#env:test,team:x",
        "app.web.wsgi_zmq.connections:3|g|#env:test,team:x",
        "app.web.wsgi_zmq.queue.depth:1|g|#env:test,team:x",
    ]


def test_quiet_flushes_send_unchanged_gauges_only_now_and_then() -> None:
    made, metrics, clock = client()
    assert len(made.lines()) == 3  # the gauges, first time
    clock.now += 1.0
    assert made.lines() == []  # nothing moved
    made.server.connections.add("new")
    assert made.lines() == ["gunicorn.workers:2|g", "wsgi_zmq.connections:4|g",
                            "wsgi_zmq.queue.depth:1|g"]
    clock.now += statsd.GAUGE_REFRESH_SECONDS
    assert len(made.lines()) == 3  # refreshed though unchanged
    metrics.front_answer(503)
    metrics.front_answer(599)
    assert made.lines() == ["wsgi_zmq.front_answers.503:1|c", "wsgi_zmq.front_answers.5xx:1|c"]


# -- batching ---------------------------------------------------------------------------------

def test_pack_fills_datagrams_up_to_the_limit_in_order() -> None:
    lines = [f"gunicorn.request.duration:{i}.{i:03d}|ms|#env:test" for i in range(500)]
    datagrams = pack(lines)
    assert all(len(d) <= MAX_DATAGRAM for d in datagrams)
    assert b"\n".join(datagrams).decode().split("\n") == lines
    # full: the next line would not have fitted
    for datagram, following in zip(datagrams, datagrams[1:], strict=False):
        assert len(datagram) + 1 + len(following.split(b"\n")[0]) > MAX_DATAGRAM
    assert pack([]) == []
    assert pack(["a" * 2000, "b:1|c", "c:1|c"]) == [b"a" * 2000, b"b:1|c\nc:1|c"]
    assert pack(["x" * 10, "y" * 10], limit=21) == [b"x" * 10 + b"\n" + b"y" * 10]
    assert pack(["x" * 10, "y" * 10], limit=20) == [b"x" * 10, b"y" * 10]


def test_a_full_buffer_is_sent_in_datagrams_under_the_limit(receiver: socket.socket) -> None:
    """Enough requests to fill the duration buffer several times: sent from the request
    path without the timer, in datagrams under the limit; the flush sends the rest, and
    every sample arrives once."""
    port = receiver.getsockname()[1]
    made, metrics, _ = client(f"127.0.0.1:{port}", prefix="app.web.", tags="env:test")
    count = made.batch * 3 + 7
    for i in range(count):
        metrics.answered(b"GET", 200, i / 1e6)
    early = receive_all(receiver)
    assert early, "a full buffer is sent at once"
    made.flush()
    datagrams = early + receive_all(receiver)
    assert all(len(d) <= MAX_DATAGRAM for d in datagrams)
    assert len(early) >= 3 and len(datagrams) > len(early)
    lines = [line for d in datagrams for line in d.decode().split("\n")]
    durations = [line for line in lines if ".gunicorn.request.duration:" in line]
    assert len(durations) == count
    assert all(line.startswith("app.web.") and line.endswith("|#env:test") for line in lines)
    assert f"app.web.gunicorn.requests:{count}|c|#env:test" in lines
    assert made.sender.sent == len(datagrams) and made.sender.lost == 0


def test_datagrams_are_not_one_per_line(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    made, metrics, _ = client(f"127.0.0.1:{port}")
    for _ in range(20):
        metrics.answered(b"GET", 200, 0.001)
    made.flush()
    [datagram] = receive_all(receiver)
    assert datagram.count(b"\n") == 20 + 2 + 3 - 1  # durations, counters, gauges


# -- failures ---------------------------------------------------------------------------------

def test_nobody_listening_loses_datagrams_quietly(logged: list[str]) -> None:
    """A connected UDP socket to a closed port: every other send is refused (the ICMP of
    the one before); none raises, each loss is counted, a few lines are logged."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    made, metrics, clock = client(f"127.0.0.1:{port}")
    for _ in range(40):
        metrics.answered(b"GET", 200, 0.001)
        clock.now += 1.0
        made.flush()
    assert made.sender.lost >= 10
    failures = [line for line in logged if "Cannot send to statsd" in line]
    assert 1 <= len(failures) <= statsd.LOG_BURST
    assert "Connection refused" in failures[0]


def test_unix_datagram_socket(tmp_path: Path, logged: list[str]) -> None:
    """``unix:PATH``: sent to by path, so a receiver bound later is reached; a missing
    socket file and a full receive queue (EAGAIN) lose datagrams without raising."""
    path = tmp_path / "statsd.sock"
    made, metrics, clock = client(f"unix:{path}")
    metrics.answered(b"GET", 200, 0.001)
    made.flush()
    assert made.sender.lost == 1  # nobody there yet
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        metrics.answered(b"GET", 204, 0.001)
        made.flush()
        [datagram] = receive_all(sock)
        assert b"gunicorn.request.status.204:1|c" in datagram
        sent = made.sender.sent
        for _ in range(5000):  # never read: the queue fills, then sends fail with EAGAIN
            metrics.answered(b"GET", 200, 0.001)
            if made.sender.lost > 1:
                break
        assert made.sender.lost > 1 and made.sender.sent > sent
    assert len([line for line in logged if "Cannot send" in line]) <= statsd.LOG_BURST


def test_close_flushes_and_says_what_was_lost(receiver: socket.socket,
                                              logged: list[str]) -> None:
    port = receiver.getsockname()[1]
    made, metrics, _ = client(f"127.0.0.1:{port}")
    metrics.answered(b"GET", 200, 0.001)
    made.close()
    [datagram] = receive_all(receiver)
    assert datagram.startswith(b"gunicorn.request.duration:1.000|ms\n")
    assert "Statsd: 1 datagrams sent, 0 lost" in logged
    made.answered(200, 0.001)  # after close: counted, never sent, never raises
    made.flush()
