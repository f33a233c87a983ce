"""The front's statsd metrics (``statsd_host``): gunicorn's names, batched datagrams.

Usage (in the front, with ``statsd_host`` set)::

    metrics = FrontMetrics()
    metrics.statsd = client = StatsdClient(cfg, server, metrics)  # resolves statsd_host
    client.start()      # the flush timer, on the front's loop
    ...                 # each metrics.answered(method, status, seconds) calls
                        # client.answered(status, seconds)
    client.close()      # a last flush, then the socket is closed

What is sent is ``METRICS`` (``docs/metrics.md`` is generated from it): gunicorn's names
where the meaning is the same (``gunicorn.requests``, ``gunicorn.request.duration``,
``gunicorn.request.status.<code>``, ``gunicorn.workers``), so a dashboard made for gunicorn
works unchanged, and the front's own under ``wsgi_zmq.``. ``statsd_prefix`` goes before
every name, ``dogstatsd_tags`` after every line (``|#env:prod``), as gunicorn does.

Cost on the request path: ``answered`` adds to one dict entry and appends the duration
to a list; nothing is formatted or sent there, except once per ``batch`` requests, when
the buffered durations are formatted and sent (a few datagrams: a burst of ``send`` calls
on a non-blocking socket, amortised over the ``batch`` requests). Everything else happens
in ``flush``, on a timer every ``FLUSH_SECONDS``:

- **Durations are sent one sample per request** (``gunicorn.request.duration:1.234|ms``),
  not aggregated nor sampled: the statsd server computes the percentiles from the samples,
  and a sample rate (``|@0.1``) would drop at random the rare slow requests a p99 is made
  of, to save less than a microsecond a request (``bench/compare.py``, ``+statsd``).
  One line is about 40 bytes, so a datagram carries some 30 of them: at 10,000 requests
  a second that is about 300 datagrams a second, the only per-request volume.
- **Counters are summed between flushes**: ``gunicorn.requests:37|c`` once, not 37
  ``:1|c`` lines; a statsd server sums what it receives within its own interval anyway.
  The front's answers and redispatches are read from ``FrontMetrics`` (the counts the
  Prometheus metrics use) as the difference since the last flush: no extra work per
  request. A counter that did not move is not sent (statsd reads an absent counter as 0).
- **Gauges are read from the live state** (``dispatcher.http``, ``server.connections``)
  at a flush, and sent when they changed, and at least every ``GAUGE_REFRESH_SECONDS``
  (under any statsd server's flush interval, 10 s by default for statsd and DogStatsD,
  so every interval has a value): an idle front sends nothing else.
- **Datagrams** hold as many lines as fit in ``MAX_DATAGRAM`` bytes, ``\\n`` between
  lines (statsd's and DogStatsD's multi-metric packets), below the 1472-byte UDP payload
  of a 1500-byte Ethernet MTU, so nothing is fragmented.

``FLUSH_SECONDS`` is 0.5 s: a twentieth of a statsd interval, so a request is nearly
always counted in the interval it ended in, and an idle front wakes twice a second for
a flush that usually has nothing to send. Under load the interval does not matter: the
duration buffer fills and is sent long before the timer fires.

Sending never raises into the front. The socket is non-blocking and ``statsd_host`` is
resolved once, at start (a name that does not resolve is logged; nothing is sent then).
A UDP socket is connected, so the kernel reports a statsd that is not listening
(``ECONNREFUSED`` on the next send after the ICMP answer); a Unix datagram socket is sent
to by path, so a statsd agent started after the front is reached. A failed send (refused,
``EAGAIN`` when the socket buffer is full, a missing socket file) loses that datagram: it
is counted in ``lost`` and logged at most ``LOG_BURST`` times a minute (``LogLimiter``).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from wsgi_zmq.config import parse_statsd_host
from wsgi_zmq.log import LogLimiter

log = logging.getLogger("wsgi_zmq.error.front")

#: Seconds between flushes (see the module docstring).
FLUSH_SECONDS: Final = 0.5
#: An unchanged gauge is sent again after this many seconds.
GAUGE_REFRESH_SECONDS: Final = 5.0
#: The largest datagram sent, in bytes (a single longer line goes alone).
MAX_DATAGRAM: Final = 1400
#: Duration samples buffered before they are sent without waiting for the timer: about
#: this many bytes of lines (a few datagrams).
BUFFER_BYTES: Final = 4 * MAX_DATAGRAM
#: Send failures logged per minute, at most (then one line says how many were left out).
LOG_BURST: Final = 3

REQUESTS: Final = "gunicorn.requests"
DURATION: Final = "gunicorn.request.duration"
STATUS: Final = "gunicorn.request.status."
WORKERS: Final = "gunicorn.workers"
CONNECTIONS: Final = "wsgi_zmq.connections"
QUEUE_DEPTH: Final = "wsgi_zmq.queue.depth"
FRONT_ANSWERS: Final = "wsgi_zmq.front_answers."
REDISPATCHES: Final = "wsgi_zmq.redispatches"


class StatsdMetric(NamedTuple):
    """One statsd metric as the docs list it."""

    name: str
    kind: str  # counter, timer, gauge
    type: str  # the statsd type: c, ms, g
    help: str


METRICS: Final = (
    StatsdMetric(REQUESTS, "counter", "c",
                 "HTTP requests answered, whoever answered them (health checks not "
                 "counted), as in gunicorn."),
    StatsdMetric(DURATION, "timer", "ms",
                 "One sample per request counted in gunicorn.requests: milliseconds from "
                 "its head being read to the end of its answer (0 for a request refused "
                 "before its head was complete)."),
    StatsdMetric(STATUS + "<code>", "counter", "c",
                 "The same requests by status code (gunicorn.request.status.200, ...), "
                 "the front's own answers included."),
    StatsdMetric(WORKERS, "gauge", "g",
                 "HTTP workers connected to this front (gunicorn: its worker processes). "
                 "Job pools' workers are not counted."),
    StatsdMetric(CONNECTIONS, "gauge", "g", "Client connections open."),
    StatsdMetric(QUEUE_DEPTH, "gauge", "g",
                 "HTTP requests waiting in the front for a free worker."),
    StatsdMetric(FRONT_ANSWERS + "<reason>", "counter", "c",
                 "Requests the front answered itself instead of a worker, by status "
                 "(400, 408, 413, 431, 4xx; 502, 503, 504, 5xx), as front_answers_total."),
    StatsdMetric(REDISPATCHES, "counter", "c",
                 "Requests (and jobs) sent to another worker: handed back unstarted, or "
                 "failed over from a worker that was lost or ejected."),
)

#: gunicorn's statsd metrics that the front does not send, and why.
NOT_SENT: Final = (
    ("gunicorn.log.critical, gunicorn.log.error, gunicorn.log.warning, "
     "gunicorn.log.exception",
     "gunicorn counts the log lines of its master and of every worker, so a failing app "
     "shows there (\"Error handling request\"). Here the app runs in handler processes, "
     "which send no statsd: the front alone would count only its own lines, and a "
     "dashboard of gunicorn.log.exception would show 0 while the app fails. The requests "
     "that failed are in gunicorn.request.status.500 and wsgi_zmq.front_answers.5xx "
     "(502, 503, 504)."),
    ("gunicorn.backlog",
     "the kernel's accept queue (gunicorn's enable_backlog_metric): the front accepts on "
     "its loop as connections come, so the wait that matters is the queue for a worker, "
     "wsgi_zmq.queue.depth."),
)


def statsd_prefix(text: str) -> str:
    """``statsd_prefix`` as it goes before every name: with one trailing dot, or empty."""
    text = text.strip().rstrip(".")
    return text + "." if text else ""


def pack(lines: list[str], limit: int = MAX_DATAGRAM) -> list[bytes]:
    """The statsd ``lines`` (ASCII) joined with ``\\n`` into datagrams of at most ``limit``
    bytes each, in order; a line longer than ``limit`` goes in a datagram of its own."""
    datagrams: list[bytes] = []
    batch: list[str] = []
    size = -1  # no separator before the first line
    for line in lines:
        if batch and size + 1 + len(line) > limit:
            datagrams.append("\n".join(batch).encode("ascii"))
            batch = []
            size = -1
        batch.append(line)
        size += 1 + len(line)
    if batch:
        datagrams.append("\n".join(batch).encode("ascii"))
    return datagrams


class Sender:
    """The socket to the statsd server: non-blocking, and never raising."""

    def __init__(self, host: str) -> None:
        self.target = host
        self.sock: socket.socket | None = None
        self.address: Any = None  # for sendto; None once connected
        self.sent = 0  # datagrams
        self.lost = 0  # datagrams that could not be sent
        self.failures = LogLimiter(log, "statsd send failures", burst=LOG_BURST)
        where = parse_statsd_host(host)
        if isinstance(where, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self.sock, self.address = sock, where
            return
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                where[0], where[1], type=socket.SOCK_DGRAM)[0]
        except OSError as exc:
            log.warning("statsd_host %s does not resolve (%s): no statsd metrics", host, exc)
            return
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            sock.connect(address)  # UDP: no packet; later sends report a refusal
        except OSError:
            self.address = address  # no route now, perhaps later: send to it each time
        self.sock = sock

    def send(self, datagrams: list[bytes]) -> None:
        sock = self.sock
        if sock is None:
            self.lost += len(datagrams)
            return
        for i, data in enumerate(datagrams):
            try:
                if self.address is None:
                    sock.send(data)
                else:
                    sock.sendto(data, self.address)
                self.sent += 1
            except OSError as exc:
                # a full socket buffer stays full for the rest of this burst
                failed = len(datagrams) - i if isinstance(exc, BlockingIOError) else 1
                self.lost += failed
                self.failures.warning("Cannot send to statsd at %s: %s (%d datagrams lost)",
                                      self.target, exc, self.lost)
                if failed > 1:
                    return

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class StatsdClient:
    """Buffers what the front counts and sends it to ``statsd_host``; see the module
    docstring. ``server`` gives the live state (``connections``, ``dispatcher.http``),
    ``metrics`` the counts shared with the Prometheus metrics."""

    def __init__(self, cfg: Any, server: Any, metrics: Any,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self.metrics = metrics
        self.clock = clock
        self.prefix = prefix = statsd_prefix(cfg.statsd_prefix)
        self.tags = tags = f"|#{cfg.dogstatsd_tags}" if cfg.dogstatsd_tags else ""
        self.sender = Sender(cfg.statsd_host)
        self.statuses: dict[int, int] = {}  # status code -> requests since the last flush
        self.durations: list[float] = []  # seconds, not yet sent
        self._head = f"{prefix}{DURATION}:"
        self._tail = f"|ms{tags}"
        # "12.345" and "\n": the value of a typical line and its separator
        self.batch = max(1, BUFFER_BYTES // (len(self._head) + len(self._tail) + 8))
        self._answers: dict[str, int] = dict(metrics.front_answers)
        self._redispatches: int = metrics.redispatches
        self._gauges: tuple[int, ...] | None = None
        self._gauged = 0.0
        self._timer: Any = None

    def start(self) -> None:
        self._timer = self.server.loop.timer(FLUSH_SECONDS, FLUSH_SECONDS)
        self._timer.start(self.flush)
        log.info("Statsd to: %s", self.sender.target)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self.flush()
        self.sender.close()
        log.info("Statsd: %d datagrams sent, %d lost", self.sender.sent, self.sender.lost)

    # -- the request path ---------------------------------------------------------------

    def answered(self, status: int, seconds: float) -> None:
        """One request was answered with ``status`` in ``seconds``."""
        statuses = self.statuses
        statuses[status] = statuses.get(status, 0) + 1
        durations = self.durations
        durations.append(seconds)
        if len(durations) >= self.batch:
            self.send_durations()

    def send_durations(self) -> None:
        """Send the buffered duration samples now."""
        try:
            self.sender.send(pack(self._duration_lines()))
        except Exception as exc:  # a bug here must not break the request that got here
            self.sender.failures.warning("statsd: cannot send the durations: %r", exc)

    def _duration_lines(self) -> list[str]:
        head, tail = self._head, self._tail
        lines = [f"{head}{seconds * 1000.0:.3f}{tail}" for seconds in self.durations]
        self.durations = []
        return lines

    # -- the timer ----------------------------------------------------------------------

    def flush(self) -> None:
        """Send the durations, the counters that moved and the gauges (see the module
        docstring). Never raises."""
        try:
            self.sender.send(pack(self.lines()))
            self.sender.failures.flush()
        except Exception as exc:  # a bug here must not stop the front's loop
            self.sender.failures.warning("statsd: the flush failed: %r", exc)

    def lines(self) -> list[str]:
        """Every line due now; the counters start again from 0."""
        p, t = self.prefix, self.tags
        lines = self._duration_lines()
        statuses, self.statuses = self.statuses, {}
        if statuses:
            lines.append(f"{p}{REQUESTS}:{sum(statuses.values())}|c{t}")
            lines += [f"{p}{STATUS}{code}:{n}|c{t}" for code, n in sorted(statuses.items())]
        metrics = self.metrics
        answers = metrics.front_answers
        last = self._answers
        for reason, n in answers.items():
            if n > last.get(reason, 0):
                lines.append(f"{p}{FRONT_ANSWERS}{reason}:{n - last.get(reason, 0)}|c{t}")
        self._answers = dict(answers)
        if metrics.redispatches > self._redispatches:
            lines.append(f"{p}{REDISPATCHES}:{metrics.redispatches - self._redispatches}|c{t}")
        self._redispatches = metrics.redispatches
        server = self.server
        http = server.dispatcher.http
        gauges = (http.members, len(server.connections), len(http.queue))
        now = self.clock()
        if gauges != self._gauges or now - self._gauged >= GAUGE_REFRESH_SECONDS:
            self._gauges, self._gauged = gauges, now
            for name, value in zip((WORKERS, CONNECTIONS, QUEUE_DEPTH), gauges, strict=True):
                lines.append(f"{p}{name}:{value}|g{t}")
        return lines
