#!/usr/bin/env python3
"""Write docs/metrics.md from ``wsgi_zmq.front.metrics.METRICS`` (``--check``: exit 1 if the
file is not what this would write)."""

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

TARGET = ROOT / "docs" / "metrics.md"


def render() -> str:
    out = ["# Metrics", "",
           "Generated from `wsgi_zmq/front/metrics.py` by `scripts/gen_metrics_doc.py`; do "
           "not edit.", "",
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
    return "\n".join(out)


def main() -> int:
    return write_or_check(TARGET, render(), "gen_metrics_doc.py", __doc__)


if __name__ == "__main__":
    sys.exit(main())
