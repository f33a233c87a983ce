#!/usr/bin/env python3
"""Write docs/metrics.md from ``wsgi_zmq.front.metrics.METRICS`` and
``wsgi_zmq.front.statsd.METRICS`` (``--check``: exit 1 if the file is not what this would
write)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from docgen import write_or_check  # noqa: E402  (scripts/ is on the path of a script)

from wsgi_zmq.front.metrics import (  # noqa: E402
    DURATION_BUCKETS,
    FRONT_REASONS,
    HTTP_POOL,
    METRICS,
    PREFIX,
    WAIT_BUCKETS,
)
from wsgi_zmq.front.statsd import (  # noqa: E402
    FLUSH_SECONDS,
    GAUGE_REFRESH_SECONDS,
    MAX_DATAGRAM,
)
from wsgi_zmq.front.statsd import METRICS as STATSD_METRICS  # noqa: E402
from wsgi_zmq.front.statsd import NOT_SENT as STATSD_NOT_SENT  # noqa: E402

TARGET = ROOT / "docs" / "metrics.md"


def render() -> str:
    out = ["# Metrics", "",
           "Generated from `wsgi_zmq/front/metrics.py` and `wsgi_zmq/front/statsd.py` by "
           "`scripts/gen_metrics_doc.py`; do not edit.", "",
           "With `--metrics-bind HOST:PORT` the front serves these at `GET /metrics` in "
           "Prometheus' text format (written by `prometheus-client`), on a listener of its "
           "own that also answers the health check (`health_path`, or `/healthz`). The "
           "request path only adds to counters; each scrape reads them and the front's live "
           "state.", "",
           "Labels are bounded: `method` is a standard method or `other` (a request refused "
           "before its method was read), `status` a class such as `2xx`, `reason` one of "
           + ", ".join(f"`{r}`" for r in FRONT_REASONS) + f", `pool` `{HTTP_POOL}` for the "
           "HTTP workers or the name of a job service. No label holds a path.", "",
           "| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for metric in METRICS:
        labels = ", ".join(f"`{label}`" for label in metric.labels) or "-"
        out.append(f"| `{PREFIX}{metric.name}` | {metric.kind} | {labels} | {metric.help} |")
    out += ["", "Histogram buckets, in seconds: request duration "
            + ", ".join(f"{b:g}" for b in DURATION_BUCKETS) + "; queue wait "
            + ", ".join(f"{b:g}" for b in WAIT_BUCKETS) + ".", ""]
    out += render_statsd()
    return "\n".join(out)


def render_statsd() -> list[str]:
    out = ["## statsd", "",
           "With `--statsd-host HOST:PORT` (UDP; `unix:PATH` for a Unix datagram socket) the "
           "front sends these to a statsd server, under gunicorn's names where the meaning "
           "is the same, so a dashboard made for gunicorn's statsd metrics works unchanged; "
           "the front's own names start with `wsgi_zmq.`. `--statsd-prefix` goes before "
           "every name (`app.web` gives `app.web.gunicorn.requests`; a trailing dot is "
           "added) and `--dogstatsd-tags` after every line (`env:prod,team:x` gives "
           "`...|c|#env:prod,team:x`), as in gunicorn. The counts are the same as those "
           "of the Prometheus metrics above; both can be on at once.", "",
           "| metric | type | statsd type | meaning |", "| --- | --- | --- | --- |"]
    for metric in STATSD_METRICS:
        out.append(f"| `{metric.name}` | {metric.kind} | `{metric.type}` | {metric.help} |")
    out += ["",
            "How it is sent: lines are batched, several to a datagram (`\\n` between them) "
            f"of at most {MAX_DATAGRAM} bytes, every {FLUSH_SECONDS:g} s, and sooner when "
            "the buffered duration samples fill a few datagrams. Each request's duration "
            "is its own sample (no sample rate: the statsd server computes percentiles "
            "from them); counters are summed between flushes and left out when they did not "
            "move; gauges are sent when they change and at least every "
            f"{GAUGE_REFRESH_SECONDS:g} s. A datagram that cannot be sent (nothing "
            "listening, a full socket buffer) is lost without slowing the front, and the "
            "failure is logged a few times a minute at most. The handler processes send "
            "no statsd metrics.", "",
            "gunicorn's statsd metrics that are not sent:", ""]
    out += [f"- `{names}`: {why}" for names, why in STATSD_NOT_SENT]
    out.append("")
    return out


def main() -> int:
    return write_or_check(TARGET, render(), "gen_metrics_doc.py", __doc__)


if __name__ == "__main__":
    sys.exit(main())
