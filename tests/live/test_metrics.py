"""The front's Prometheus metrics (``--metrics-bind``), scraped from a real front and
parsed with ``prometheus_client.parser`` after known traffic."""

from __future__ import annotations

import os
import signal
import urllib.request

import pytest

from support import exchange, get, logged_pids, poll_until

parser = pytest.importorskip("prometheus_client.parser")


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """``{sample name: {labels as sorted pairs: value}}`` of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return samples


def metrics_port(proc) -> int:
    return int(proc.wait_for_log(r"Metrics at: http://[\d.]+:(\d+)/metrics").group(1))


def test_counts_after_known_traffic(stack, tmp_path):
    """1. a front with --metrics-bind and a 1 s request timeout, one worker 2. 5 GETs, 2
    POSTs, a 400 refusal, one request that times out (504) 3. the scrape counts each
    exactly, the histogram is consistent (cumulative, +Inf = count = requests), bytes and
    gauges are sane 4. with the pool stopped, a request gets 503 and it is counted."""
    front, port, endpoint = stack.front("--metrics-bind", "127.0.0.1:0",
                                        "--request-timeout", "1", "--queue-timeout", "1")
    mport = metrics_port(front)
    pool = stack.handler("apps.echo:router", endpoint)
    front.wait_for_log(r"Worker \d+@\S+ connected")
    for _ in range(5):
        assert exchange(port, get("/"))[0][0].status == 200
    for _ in range(2):
        body = b"x" * 100
        request = (b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + body)
        assert exchange(port, request)[0][0].status == 200
    assert exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")[0][0].status == 400
    assert exchange(port, get("/slow?seconds=3"))[0][0].status == 504
    s = poll_until(lambda: (lambda m: m if m["wsgi_zmq_http_requests_total"].get(
        (("method", "GET"), ("status", "5xx"))) else None)(scrape(mport)), 10)
    requests = s["wsgi_zmq_http_requests_total"]
    assert requests[(("method", "GET"), ("status", "2xx"))] == 5
    assert requests[(("method", "POST"), ("status", "2xx"))] == 2
    assert requests[(("method", "other"), ("status", "4xx"))] == 1  # refused before a method
    assert requests[(("method", "GET"), ("status", "5xx"))] == 1
    answers = s["wsgi_zmq_front_answers_total"]
    assert answers[(("reason", "400"),)] == 1 and answers[(("reason", "504"),)] == 1
    buckets = sorted(((dict(k)["le"], v) for k, v in
                      s["wsgi_zmq_http_request_duration_seconds_bucket"].items()),
                     key=lambda kv: float(kv[0]))
    values = [v for _, v in buckets]
    assert values == sorted(values) and buckets[-1][0] == "+Inf"
    assert values[-1] == s["wsgi_zmq_http_request_duration_seconds_count"][()] == 9
    assert s["wsgi_zmq_received_bytes_total"][()] > 200
    assert s["wsgi_zmq_sent_bytes_total"][()] > 200
    assert s["wsgi_zmq_workers"][(("pool", "default"),)] == 1
    assert s["wsgi_zmq_worker_capacity"][(("pool", "default"),)] >= 1
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(30) == 0
    poll_until(lambda: scrape(mport)["wsgi_zmq_workers"][(("pool", "default"),)] == 0, 10)
    assert exchange(port, get("/"))[0][0].status == 503
    s = scrape(mport)
    assert s["wsgi_zmq_front_answers_total"][(("reason", "503"),)] == 1
    assert s["wsgi_zmq_http_requests_total"][(("method", "GET"), ("status", "5xx"))] == 2


def test_health_on_the_metrics_bind_and_nothing_else(stack):
    front, port, endpoint = stack.front("--metrics-bind", "127.0.0.1:0")
    mport = metrics_port(front)

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}{path}", timeout=10) as a:
                return a.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status("/healthz") == 503  # no worker yet
    stack.handler("apps.echo:router", endpoint)
    front.wait_for_log(r"Worker \d+@\S+ connected")
    poll_until(lambda: status("/healthz") == 200, 10)
    assert status("/other") == 404
    assert exchange(port, get("/metrics"))[0][0].body == b"Hello, world!\n"  # the app's


def test_pool_masters_report_their_workers_and_restarts(stack, tmp_path):
    """1. a front with --metrics-bind and a two-worker pool named web 2. its workers pass
    their master's figures on (STATS): pool_workers is 2, no restarts 3. SIGKILL one
    worker: the master replaces it and the front counts one crash restart for web
    4. the pool's metrics carry its name, not the lane's."""
    front, port, endpoint = stack.front("--metrics-bind", "127.0.0.1:0", "--route", "/=web")
    mport = metrics_port(front)
    pool = stack.handler("apps.echo:router", endpoint, "--workers", "2", "--pool", "web")
    front.wait_for_log(r"Worker \d+@\S+ connected", count=2)
    s = poll_until(lambda: (lambda m: m if m.get("wsgi_zmq_pool_workers") else None)(
        scrape(mport)), 10)
    assert s["wsgi_zmq_pool_workers"] == {(("pool", "web"),): 2}
    assert s["wsgi_zmq_workers"][(("pool", "web"),)] == 2
    assert s["wsgi_zmq_version_workers"][(("pool", "web"), ("version", ""))] == 2
    assert s["wsgi_zmq_version_weight"][(("pool", "web"), ("version", ""))] == 100
    assert s["wsgi_zmq_version_standby"][(("pool", "web"), ("version", ""))] == 0
    restarts = s["wsgi_zmq_pool_restarts_total"]
    assert restarts == {(("pool", "web"), ("reason", r)): 0
                        for r in ("timeout", "max_requests", "crash")}
    os.kill(logged_pids(pool)[0], signal.SIGKILL)
    front.wait_for_log(r"Worker \d+@\S+ connected", count=3)

    def crashed():
        m = scrape(mport)
        total = m.get("wsgi_zmq_pool_restarts_total", {})
        return m if total.get((("pool", "web"), ("reason", "crash"))) == 1 else None

    s = poll_until(crashed, 15, message="one crash restart counted")
    assert s["wsgi_zmq_pool_workers"] == {(("pool", "web"),): 2}
    assert exchange(port, get("/"))[0][0].status == 200
