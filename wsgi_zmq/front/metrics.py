"""The front's Prometheus metrics (``metrics_bind``), counted cheaply, exposed on scrape.

Usage (in the front, with ``metrics_bind`` set)::

    metrics = FrontMetrics()                 # the counts the request path updates
    server.metrics = dispatcher.metrics = metrics
    exporter = MetricsServer(cfg, server, metrics)   # serves GET /metrics (and health)

The request path only adds to plain integers and lists (``FrontMetrics``): a request costs
a few attribute updates and one ``bisect`` per histogram, and nothing at all when
``metrics_bind`` is off. A scrape builds the metric families from those counts and from the
live state of the front (connections, queues, workers) in ``FrontCollector.collect``, and
``prometheus_client`` writes the text exposition format. ``METRICS`` lists every metric with
its type, labels and meaning; ``docs/metrics.md`` is generated from it
(``scripts/gen_metrics_doc.py``).

Labels are bounded: ``method`` is one of the standard methods or ``other``, ``status`` a
class (``2xx``), ``reason`` one of ``FRONT_REASONS`` (or of the restart reasons),
``pool`` a handler pool's name (``--pool``; a job pool's default is its service) or, in
``queue_depth``, the lane's (``default`` for HTTP, else the job service); never a path.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator
from typing import Any, Final, NamedTuple

from wsgi_zmq.protocol import DEFAULT_POOL, RESTART_REASONS

log = logging.getLogger("wsgi_zmq.error.front")

PREFIX: Final = "wsgi_zmq_"

#: Request duration buckets, in seconds.
DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                           5.0, 10.0, 30.0)
#: Queue wait buckets, in seconds.
WAIT_BUCKETS: Final = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)

_METHODS: Final = {m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE",
                                           b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE")}
#: Why the front answered a request itself.
FRONT_REASONS: Final = ("400", "408", "413", "431", "4xx", "502", "503", "504", "5xx")
#: The HTTP lane's label in ``queue_depth`` (it has no service name), and the pool of
#: workers that name none.
HTTP_POOL: Final = DEFAULT_POOL


class Metric(NamedTuple):
    """One metric as the docs list it."""

    name: str
    kind: str  # counter, gauge, histogram
    labels: tuple[str, ...]
    help: str


METRICS: Final = (
    Metric("http_requests_total", "counter", ("method", "status"),
           "HTTP requests answered, by method and status class, whoever answered them "
           "(health checks not counted)."),
    Metric("http_request_duration_seconds", "histogram", (),
           "Time from a request's head being read to the end of its answer."),
    Metric("http_requests_in_flight", "gauge", (),
           "Requests read and not yet fully answered."),
    Metric("front_answers_total", "counter", ("reason",),
           "Requests the front answered itself instead of a worker: the status (400, 408, "
           "413, 431, other 4xx; 502, 503, 504, other 5xx)."),
    Metric("redispatches_total", "counter", (),
           "Requests (and jobs) sent to another worker: handed back unstarted, or failed "
           "over from a worker that was lost or ejected."),
    Metric("received_bytes_total", "counter", (),
           "Bytes read from HTTP clients (request heads and bodies)."),
    Metric("sent_bytes_total", "counter", (),
           "Bytes written to HTTP clients."),
    Metric("body_ring_bytes_total", "counter", (),
           "Request body bytes that reached workers through their body rings (shared "
           "memory, ``body_ring``) instead of in messages."),
    Metric("connections", "gauge", (), "Client connections open."),
    Metric("queue_depth", "gauge", ("pool",),
           "Requests waiting in the front for a free worker: HTTP requests under "
           "default, jobs under their service."),
    Metric("queue_wait_seconds", "histogram", (),
           "How long dispatched requests waited in the queue (0 for those that did not)."),
    Metric("workers", "gauge", ("pool",), "Workers connected, by pool."),
    Metric("worker_capacity", "gauge", ("pool",),
           "Requests the pool's connected workers may hold at once (their READY capacity)."),
    Metric("worker_busy_ratio", "gauge", ("pool",),
           "Requests the pool's workers hold, as a share of their capacity."),
    Metric("version_workers", "gauge", ("pool", "version"),
           "HTTP workers connected, by pool and version (--pool-version; \"\" for none)."),
    Metric("version_weight", "gauge", ("pool", "version"),
           "The weight of each version of an HTTP pool: its share of the pool's requests "
           "against the other versions'."),
    Metric("version_standby", "gauge", ("pool", "version"),
           "1 for a version in standby (it gets only the requests that ask for it), else 0."),
    Metric("pool_workers", "gauge", ("pool",),
           "Worker processes the pool's masters run, as they last reported (STATS): "
           "workers still booting or not connected to this front count too."),
    Metric("pool_restarts_total", "counter", ("pool", "reason"),
           "Workers the pool's masters replaced without being asked, by reason: timeout "
           "(silent past --timeout), max_requests (recycled), crash (any other exit). "
           "Summed over the masters connected now."),
)


class Histogram:
    """Bucket counts and a sum, updated on the request path."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last, as Prometheus wants them."""
        out = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(bound), float(running)))
        out.append(("+Inf", float(self.count)))
        return out


class FrontMetrics:
    """The counts the front's request path keeps while ``metrics_bind`` is set."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}  # (method, status // 100)
        self.duration = Histogram(DURATION_BUCKETS)
        self.front_answers: dict[str, int] = dict.fromkeys(FRONT_REASONS, 0)
        self.redispatches = 0
        self.received = 0
        self.sent = 0
        self.queue_wait = Histogram(WAIT_BUCKETS)
        self.unqueued = 0  # dispatched at once: queue_wait's first bucket, added on scrape
        self.statsd: Any = None  # a StatsdClient (statsd_host): told of each answer too

    def answered(self, method: bytes, status: int, seconds: float) -> None:
        """One request's answer is complete, with ``status`` (200)."""
        key = (_METHODS.get(method, "other"), status // 100)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        self.duration.observe(seconds)
        if self.statsd is not None:
            self.statsd.answered(status, seconds)

    def front_answer(self, status: int) -> None:
        """The front answered a request itself with ``status``."""
        reason = str(status)
        if reason not in self.front_answers:
            reason = "4xx" if status < 500 else "5xx"
        self.front_answers[reason] += 1


class FrontCollector:
    """A ``prometheus_client`` collector: the families of ``METRICS`` at scrape time."""

    def __init__(self, server: Any, metrics: FrontMetrics) -> None:
        self.server = server
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # built at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self.metrics
        server = self.server
        dispatcher = server.dispatcher
        helps = {metric.name: metric.help for metric in METRICS}

        def counter(name: str, labels: tuple[str, ...] = ()) -> Any:
            # prometheus_client adds the _total suffix itself
            return CounterMetricFamily(PREFIX + name.removesuffix("_total"), helps[name],
                                       labels=list(labels))

        def gauge(name: str, labels: tuple[str, ...] = ()) -> Any:
            return GaugeMetricFamily(PREFIX + name, helps[name], labels=list(labels))

        family = counter("http_requests_total", ("method", "status"))
        for (method, status_class), n in sorted(m.requests.items()):
            family.add_metric([method, f"{status_class}xx"], n)
        yield family
        yield HistogramMetricFamily(PREFIX + "http_request_duration_seconds",
                                    helps["http_request_duration_seconds"],
                                    buckets=m.duration.buckets(), sum_value=m.duration.total)
        in_flight = gauge("http_requests_in_flight")
        in_flight.add_metric([], sum(conn.current is not None for conn in server.connections))
        yield in_flight
        family = counter("front_answers_total", ("reason",))
        for reason, n in m.front_answers.items():
            family.add_metric([reason], n)
        yield family
        for name, value in (("redispatches_total", m.redispatches),
                            ("received_bytes_total", m.received),
                            ("sent_bytes_total", m.sent),
                            ("body_ring_bytes_total", dispatcher.ring_bytes)):
            family = counter(name)
            family.add_metric([], value)
            yield family
        connections = gauge("connections")
        connections.add_metric([], len(server.connections))
        yield connections
        depth = gauge("queue_depth", ("pool",))
        workers = gauge("workers", ("pool",))
        capacity = gauge("worker_capacity", ("pool",))
        busy = gauge("worker_busy_ratio", ("pool",))
        held: dict[str, int] = {}
        room: dict[str, int] = {}
        count: dict[str, int] = {}
        for peer in dispatcher.peers.values():
            pool = peer.pool
            count[pool] = count.get(pool, 0) + 1
            room[pool] = room.get(pool, 0) + peer.capacity
            held[pool] = held.get(pool, 0) + len(peer.slots)
        for service, lane in sorted(dispatcher.lanes.items()):
            depth.add_metric([service or HTTP_POOL], len(lane.queue))
        for pool in sorted(count.keys() | {HTTP_POOL}):
            workers.add_metric([pool], count.get(pool, 0))
            capacity.add_metric([pool], room.get(pool, 0))
            busy.add_metric([pool], held.get(pool, 0) / room[pool] if room.get(pool) else 0.0)
        yield depth
        waits = m.queue_wait.buckets()
        waits = [(le, count + m.unqueued) for le, count in waits]
        yield HistogramMetricFamily(PREFIX + "queue_wait_seconds", helps["queue_wait_seconds"],
                                    buckets=waits, sum_value=m.queue_wait.total)
        yield workers
        yield capacity
        yield busy
        by_version = gauge("version_workers", ("pool", "version"))
        weights = gauge("version_weight", ("pool", "version"))
        standby = gauge("version_standby", ("pool", "version"))
        for pool, known in sorted(dispatcher.versions.items()):
            for name, version in sorted(known.items()):
                lane = dispatcher.lanes.get(version.key)
                by_version.add_metric([pool, name], lane.members if lane is not None else 0)
                weights.add_metric([pool, name], version.weight)
                standby.add_metric([pool, name], 1 if version.standby else 0)
        yield by_version
        yield weights
        yield standby
        running = gauge("pool_workers", ("pool",))
        restarts = counter("pool_restarts_total", ("pool", "reason"))
        ran: dict[str, int] = {}
        replaced: dict[tuple[str, str], int] = {}
        for pool, stats in dispatcher.pool_stats.values():
            ran[pool] = ran.get(pool, 0) + stats.workers
            for reason, n in stats.restarts.items():
                replaced[(pool, reason)] = replaced.get((pool, reason), 0) + n
        for pool, n in sorted(ran.items()):
            running.add_metric([pool], n)
            for reason in RESTART_REASONS:
                restarts.add_metric([pool, reason], replaced.get((pool, reason), 0))
        yield running
        yield restarts


class MetricsServer:
    """The ``metrics_bind`` listener: ``GET /metrics`` (Prometheus' text format) and the
    health check (``health_path``, or ``/healthz`` when that is unset), on the front's loop.
    Anything else is 404."""

    def __init__(self, cfg: Any, server: Any, metrics: FrontMetrics, listener: Any) -> None:
        from gevent.pywsgi import WSGIServer
        from prometheus_client import CollectorRegistry

        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FrontCollector(server, metrics))
        self.health_path = cfg.health_path or "/healthz"
        from gevent import socket as gsocket

        # gevent's server needs a gevent socket: the same descriptor, cooperative
        self.wsgi = WSGIServer(gsocket.socket(fileno=listener.detach()), self.app, log=None,
                               error_log=_ErrorLog())
        self.url = ""

    def start(self) -> None:
        self.wsgi.start()
        host, port = self.wsgi.address[:2]
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self.wsgi.stop(timeout=1)

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"),
                                                      ("Content-Length", "0")])
            return []
        if path == "/metrics":
            body = generate_latest(self.registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path == self.health_path:
            status, detail = self.server.health()
            body = (detail + "\n").encode()
            start_response("200 OK" if status == 200 else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8"),
                            ("Cache-Control", "no-store"),
                            ("Content-Length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Length", "0")])
        return []


class _ErrorLog:
    """gevent.pywsgi's error log, into ours."""

    def write(self, data: str) -> None:
        if data.strip():
            log.warning("Metrics listener: %s", data.strip())

    def flush(self) -> None:
        pass
