"""Ask a running front or handler pool through its control socket: ``python -m wsgi_zmq.ctl``.

The process must run with ``--control-socket PATH`` (``docs/ctl.md``)::

    python -m wsgi_zmq.ctl /run/app.ctl status            # tables: front, queues, workers
    python -m wsgi_zmq.ctl /run/app.ctl status --json     # the raw result, for scripts
    python -m wsgi_zmq.ctl /run/app.ctl drain web         # a pool, or a worker PID[@HOST]
    python -m wsgi_zmq.ctl /run/app.ctl resume            # everything drained
    python -m wsgi_zmq.ctl /run/app.ctl workers 8         # a pool's master, or all-in-one
    python -m wsgi_zmq.ctl /run/app.ctl reload
    python -m wsgi_zmq.ctl /run/app.ctl top --interval 2  # live rates, latency, busy share
    python -m wsgi_zmq.ctl /run/app.ctl help              # what this process answers

``SOCKET`` is a path or ``ipc://PATH``. Every command but ``top`` is sent as it is (the
process decides what it answers; ``help`` lists it); ``top`` asks ``status`` every interval
and redraws the screen with the figures of the last interval.

The pure parts are plain functions, tested on their own: ``rate``, ``busy_share``,
``bucket_deltas`` and ``quantile`` (the latency quantiles of ``top``, interpolated within a
bucket of the front's duration histogram), ``format_table`` (column widths from content),
``render_status`` and ``render_result`` (the text of a reply), ``top_frame`` (one screen).

Exit codes: 0 done; 1 the command failed (the process's message on stderr, one line
``ctl: MESSAGE``); 2 usage error; 3 the socket cannot be reached or sent no valid reply.

This module imports neither gevent nor zmq.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, NoReturn

from wsgi_zmq import __version__
from wsgi_zmq.cli import UsageParser, tool_exits
from wsgi_zmq.config import validate_control_socket
from wsgi_zmq.control import TIMEOUT, ControlError, Unreachable
from wsgi_zmq.control import call as ask

PROG: Final = "python -m wsgi_zmq.ctl"
#: Every line the command writes on stderr starts with this.
NAME: Final = "ctl"

EXIT_OK: Final = 0
#: The process answered that the command failed.
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
#: The socket could not be reached, or sent no valid reply in time.
EXIT_UNREACHABLE: Final = 3

#: What ``top`` writes before each frame on a terminal: cursor home, clear the screen.
CLEAR: Final = "\x1b[H\x1b[2J"
DEFAULT_INTERVAL: Final = 1.0


# -- figures ----------------------------------------------------------------------------------

def rate(before: float | None, after: float | None, seconds: float) -> float | None:
    """Per second, from two readings of a counter ``seconds`` apart; None without an earlier
    reading, over no time, or when the counter went down (the process restarted)."""
    if before is None or after is None or not seconds > 0 or after < before:
        return None
    return (after - before) / seconds


def busy_share(before: float | None, after: float | None, seconds: float,
               capacity: int | None) -> float | None:
    """The share of a worker's ``capacity`` held over an interval: the growth of its
    ``busy_seconds`` (the integral of slots held) over ``seconds * capacity``, in [0, 1]."""
    per_second = rate(before, after, seconds)
    if per_second is None or not capacity or capacity <= 0:
        return None
    return min(1.0, per_second / capacity)


def bucket_deltas(before: Sequence[int] | None, after: Sequence[int]) -> list[int] | None:
    """What each bucket of a histogram counted between two readings; None when there is no
    earlier reading, the bucket layout changed, or a count went down (a restart)."""
    if before is None or len(before) != len(after):
        return None
    deltas = [b - a for a, b in zip(before, after, strict=True)]
    return None if any(d < 0 for d in deltas) else deltas


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of observations counted in buckets; None if there are none.

    ``counts`` are per bucket, not cumulative, one more than ``bounds``: bucket ``i`` holds
    the values in (``bounds[i-1]``, ``bounds[i]``], the first from 0, the last those above
    every bound. The value is interpolated linearly within the bucket the quantile's rank
    falls in (as Prometheus' ``histogram_quantile`` does); ``math.inf`` when that is the
    last bucket, which has no upper bound (``format_latency`` shows it as ``>BOUND``).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q={q!r}: a quantile is between 0 and 1")
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{len(counts)} counts for {len(bounds)} bounds: expected one more")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n > 0 and below + n >= rank:
            if i == len(bounds):
                return math.inf
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * max(0.0, rank - below) / n
        below += n
    return math.inf  # not reached: the last non-empty bucket holds rank == total


# -- text -------------------------------------------------------------------------------------

def cell(value: object) -> str:
    """A table cell: ``-`` for None, yes/no for a bool, otherwise ``str``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
                 right: Container[int] = ()) -> list[str]:
    """Lines of a table: each column as wide as its widest cell (header included), two
    spaces apart; columns whose index is in ``right`` right-aligned; no trailing blanks."""
    table = [[cell(h) for h in headers]] + [[cell(v) for v in row] for row in rows]
    for row in table:
        if len(row) != len(headers):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(headers)} columns")
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return ["  ".join(text.rjust(widths[i]) if i in right else text.ljust(widths[i])
                      for i, text in enumerate(row)).rstrip()
            for row in table]


def format_pairs(pairs: Iterable[tuple[str, object]]) -> list[str]:
    """``key  value`` lines, the values aligned."""
    items = [(key, cell(value)) for key, value in pairs]
    width = max((len(key) for key, _ in items), default=0)
    return [f"{key.ljust(width)}  {value}".rstrip() for key, value in items]


def format_seconds(seconds: object) -> str:
    """A duration for people: ``0.2s``, ``42s``, ``3m05s``, ``1h02m``, ``2d03h``."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or \
            not math.isfinite(seconds):
        return "-"
    value = max(0.0, float(seconds))
    if value < 10:
        return f"{value:.1f}s"
    if value < 60:
        return f"{int(value)}s"
    whole = int(value)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_latency(seconds: float | None, bounds: Sequence[float] = ()) -> str:
    """A quantile from ``quantile`` in milliseconds; ``>BOUND`` above the last bound."""
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return f">{format_latency(bounds[-1])}" if bounds else ">max"
    ms = seconds * 1000.0
    return f"{ms:.1f}ms" if ms < 100 else f"{ms:.0f}ms"


def format_rate(per_second: float | None) -> str:
    return "-" if per_second is None else f"{per_second:.1f}"


def format_share(share: float | None) -> str:
    """A share (0..1) as a percentage with one decimal, or ``-``."""
    return "-" if share is None else f"{share * 100:.1f}"


def _items(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _join(values: object) -> str:
    items = _items(values)
    return ", ".join(str(v) for v in items) if items else "-"


def lane_name(service: object, pool: object = None, version: object = None) -> str:
    if service:
        return f"job {service}"
    if pool and (pool != "default" or version):
        return f"http {pool}" + (f"/{version}" if version else "")
    return "http"


def _lanes(lanes: object) -> str:
    parts = []
    for lane in _items(lanes):
        lane = _dict(lane)
        workers = lane.get("workers", 0)
        name = lane_name(lane.get("service"), lane.get("pool"), lane.get("version"))
        parts.append(f"{name} {cell(lane.get('waiting', 0))} waiting "
                     f"({cell(workers)} worker{'' if workers == 1 else 's'})")
    return "; ".join(parts) or "-"


def _counts(counts: object) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(_dict(counts).items()))


def render_front(status: dict[str, Any]) -> list[str]:
    """The front's ``status``: a header block, then one table of workers grouped by pool."""
    pairs: list[tuple[str, object]] = [
        ("front", f"pid {cell(status.get('pid'))}, wsgi_zmq {cell(status.get('wsgi_zmq'))}, "
                  f"up {format_seconds(status.get('uptime'))}"),
        ("binds", _join(status.get("binds"))),
        ("backend", _join(status.get("backend"))),
    ]
    if _items(status.get("jobs")):
        pairs.append(("jobs", _join(status.get("jobs"))))
    if status.get("metrics"):
        pairs.append(("metrics", status["metrics"]))
    pairs += [("connections", status.get("connections")),
              ("in flight", status.get("in_flight")),
              ("draining", status.get("draining")),
              ("queue", _lanes(status.get("lanes")))]
    requests = status.get("requests")
    if isinstance(requests, dict):
        by_status = _counts(requests.get("by_status"))
        pairs.append(("requests", f"{cell(requests.get('total'))}"
                                  + (f" ({by_status})" if by_status else "")))
        if _dict(requests.get("front_answers")):
            pairs.append(("front answers", _counts(requests.get("front_answers"))))
    if _items(status.get("drained_pools")):
        pairs.append(("drained pools", _join(status.get("drained_pools"))))
    lines = format_pairs(pairs)
    versions = _items(status.get("versions"))
    if len(versions) > 1 or any(_dict(v).get("standby") or _dict(v).get("version")
                                for v in versions):
        lines.append("")
        lines += version_table(versions)
    lines.append("")
    lines += worker_table(_items(status.get("pools")))
    return lines


def version_table(versions: list[Any]) -> list[str]:
    """The HTTP pools' versions: weight, standby, workers (the front's ``versions``)."""
    headers = ["POOL", "VERSION", "WEIGHT", "STATE", "WORKERS", "SERVING", "WAITING"]
    rows = []
    for version in versions:
        version = _dict(version)
        rows.append([version.get("pool"), version.get("version") or "-",
                     version.get("weight"), "standby" if version.get("standby") else "active",
                     version.get("workers"), version.get("serving"), version.get("waiting")])
    numbers = {"WEIGHT", "WORKERS", "SERVING", "WAITING"}
    return format_table(headers, rows, right={i for i, h in enumerate(headers) if h in numbers})


def worker_table(pools: list[Any]) -> list[str]:
    """The workers of the front's ``status`` ``pools``, one row each, grouped by pool."""
    jobs = any(_dict(pool).get("service") for pool in pools)
    headers = ["POOL", *(["SERVICE"] if jobs else []), "VERSION", "HOST", "MASTER", "PID",
               "STATE", "CAP", "INFLIGHT", "SERVED", "BUSY%", "HEARD", "RING", "PIPE"]
    rows = []
    for pool in pools:
        pool = _dict(pool)
        for worker in _items(pool.get("workers")):
            worker = _dict(worker)
            rows.append([pool.get("name"),
                         *([lane_name(pool.get("service"))] if jobs else []),
                         pool.get("version") or "-", worker.get("host", pool.get("host")),
                         pool.get("master"), worker.get("pid"), worker.get("state"),
                         worker.get("capacity"), worker.get("in_flight"), worker.get("served"),
                         format_share(_number(worker.get("busy_share"))),
                         format_seconds(worker.get("last_heard")),
                         worker.get("body_ring") or "-",
                         "yes" if worker.get("pipe") else "-"])
    if not rows:
        return ["no handler workers connected"]
    numbers = {"MASTER", "PID", "CAP", "INFLIGHT", "SERVED", "BUSY%", "HEARD", "RING", "PIPE"}
    return format_table(headers, rows, right={i for i, h in enumerate(headers) if h in numbers})


def render_pool(status: dict[str, Any]) -> list[str]:
    """A handler pool master's ``status`` (or all-in-one's supervisor's): header, workers."""
    workers = _items(status.get("workers"))
    head = f"pid {cell(status.get('pid'))}"
    if status.get("name"):
        head = f"{status['name']}, {head}"
    if status.get("version"):
        head += f", version {status['version']}"
    pairs: list[tuple[str, object]] = [(str(status.get("kind") or "pool"), head)]
    if status.get("app"):
        pairs.append(("app", status["app"]))
    if _items(status.get("connect")):
        pairs.append(("connect", _join(status.get("connect"))))
    wanted = status.get("workers_wanted")
    pairs.append(("workers", (f"{wanted} wanted, " if wanted is not None else "")
                  + f"{len(workers)} running"))
    if isinstance(status.get("restarts"), dict):
        pairs.append(("restarts", _counts(status["restarts"]) or "none"))
    if "reloads" in status:
        pairs.append(("reloads", status.get("reloads")))
    if status.get("error"):
        pairs.append(("error", status["error"]))
    lines = format_pairs(pairs)
    if workers:
        rows = [[w.get("pid"), w.get("age"), w.get("booted"), format_seconds(w.get("started")),
                 format_seconds(w.get("last_beat"))]
                for w in map(_dict, workers)]
        lines.append("")
        lines += format_table(["PID", "AGE", "BOOTED", "STARTED", "LAST_BEAT"], rows,
                              right={0, 1, 3, 4})
    return lines


def render_status(status: object) -> list[str]:
    """The text of a ``status`` result: a front's (with all-in-one's supervisor after it), a
    pool master's, or compact JSON for a shape this does not know."""
    if not isinstance(status, dict):
        return [compact(status)]
    kind = status.get("kind")
    if kind == "front":
        lines = render_front(status)
        master = status.get("master")
        if isinstance(master, dict):
            lines.append("")
            if set(master) == {"error"}:
                lines.append(f"supervisor: {master['error']}")
            else:
                lines += render_pool({"kind": "supervisor", **master}
                                     if "kind" not in master else master)
        return lines
    if kind == "pool" or "workers_wanted" in status:
        return render_pool(status)
    return [compact(status)]


def render_help(entries: list[Any]) -> list[str]:
    rows = [[_dict(e).get("usage") or _dict(e).get("command"), _dict(e).get("help", "")]
            for e in entries]
    rows.append(["top [--interval S] [--count N]",
                 "(ctl itself) redraw status every interval: rates, latency, busy share"])
    return format_table(["COMMAND", "DESCRIPTION"], rows)


def _workers_done(verb: str, result: dict[str, Any], key: str) -> str:
    workers = [str(w) for w in _items(result.get(key))]
    target = result.get("target")
    text = f"{verb} {len(workers)} worker(s)" + (f" of {target}" if target else "")
    return text + (": " + ", ".join(workers) if workers else "")


def compact(result: object) -> str:
    return json.dumps(result, separators=(",", ":"), default=str)


def render_result(command: str, result: object) -> list[str]:
    """What ``command`` did, in a few lines; compact JSON for a result of unknown shape."""
    if command == "status":
        return render_status(result)
    if command == "help" and isinstance(result, list):
        return render_help(result)
    if isinstance(result, dict):
        if command == "drain" and isinstance(result.get("drained"), list):
            return [_workers_done("drained", result, "drained")]
        if command == "resume" and isinstance(result.get("resumed"), list):
            return [_workers_done("resumed", result, "resumed")]
        wanted = result.get("workers", result.get("workers_wanted"))
        if command == "workers" and isinstance(wanted, int):
            was = result.get("previous")
            return [f"workers: {wanted}" + (f" (was {was})" if isinstance(was, int) else "")]
        if command == "weight" and isinstance(result.get("weight"), int):
            return [f"pool {result.get('pool')} version {result.get('version') or '-'}: "
                    f"weight {result['weight']}"
                    + (" (in standby)" if result.get("standby") else "")]
        if command == "promote" and "promoted" in result:
            standby = ", ".join(v or "-" for v in _items(result.get("standby"))) or "none"
            return [f"pool {result.get('pool')}: version {result['promoted'] or '-'} takes "
                    f"the traffic; in standby: {standby}"]
        if command == "reload" and result.get("reloading") is True:
            workers = result.get("workers")
            return ["reloading" + (f" with {workers} worker(s)"
                                   if isinstance(workers, int) else "")]
    if result is None or result is True:
        return [f"{command}: done"]
    if isinstance(result, str):
        return [result]
    return [f"{command}: {compact(result)}"]


# -- top --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One ``status`` result and when (``time.monotonic``) it was asked for."""

    at: float
    status: dict[str, Any]


def interval_seconds(before: Sample, after: Sample) -> float:
    """The time between two samples: by the front's own clock (its ``uptime``) when both
    carry one, which leaves out the round trips; by this process's otherwise."""
    up_before, up_after = _number(before.status.get("uptime")), _number(after.status.get("uptime"))
    if up_before is not None and up_after is not None and up_after > up_before:
        return up_after - up_before
    return after.at - before.at


def _workers_by_id(status: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
    found = {}
    for pool in map(_dict, _items(status.get("pools"))):
        for worker in map(_dict, _items(pool.get("workers"))):
            found[(pool.get("name"), worker.get("host"), worker.get("pid"))] = worker
    return found


def front_figures(before: Sample | None, after: Sample) -> dict[str, Any]:
    """What a ``top`` frame shows for the front, computed from two samples (``before`` None:
    the first frame, with figures since the front started and no rates).

    Keys: ``seconds`` (the interval, or None), ``requests_per_second`` (from
    ``requests.total``, or summed from the workers' ``served`` when the front keeps no
    metrics; ``rate_source`` says which), ``p50``/``p99`` (seconds, ``math.inf`` above the
    last bound, None without requests), ``bounds``, ``since_start`` (the quantiles are
    over all requests, not the interval), ``waiting``, ``connections``, ``in_flight``,
    ``workers`` (rows of dicts: pool, host, pid, state, in_flight, capacity,
    requests_per_second, busy, heard).
    """
    status = after.status
    if before is not None and before.status.get("pid") != status.get("pid"):
        before = None  # another process answers now: nothing to compare with
    seconds = interval_seconds(before, after) if before is not None else None
    old = before.status if before is not None else {}
    requests = _dict(status.get("requests"))
    old_requests = _dict(old.get("requests"))
    figures: dict[str, Any] = {
        "seconds": seconds, "requests_per_second": None, "rate_source": "requests",
        "p50": None, "p99": None, "bounds": [], "since_start": False,
        "waiting": sum(int(_number(_dict(lane).get("waiting")) or 0)
                       for lane in _items(status.get("lanes"))),
        "connections": status.get("connections"), "in_flight": status.get("in_flight"),
        "workers": [],
    }
    previous = _workers_by_id(old)
    served_rates: list[float] = []
    for pool in map(_dict, _items(status.get("pools"))):
        for worker in map(_dict, _items(pool.get("workers"))):
            key = (pool.get("name"), worker.get("host"), worker.get("pid"))
            prior = previous.get(key)
            capacity = worker.get("capacity")
            per_second = busy = None
            if prior is not None and seconds is not None:
                per_second = rate(_number(prior.get("served")), _number(worker.get("served")),
                                  seconds)
                busy = busy_share(_number(prior.get("busy_seconds")),
                                  _number(worker.get("busy_seconds")), seconds,
                                  capacity if isinstance(capacity, int) else None)
                if per_second is not None:
                    served_rates.append(per_second)
            else:
                busy = _number(worker.get("busy_share"))  # since it connected
            figures["workers"].append({
                "pool": pool.get("name"), "host": worker.get("host"), "pid": worker.get("pid"),
                "state": worker.get("state"), "in_flight": worker.get("in_flight"),
                "capacity": capacity, "requests_per_second": per_second, "busy": busy,
                "heard": worker.get("last_heard")})
    if requests:
        bounds = [float(b) for b in _items(requests.get("duration_bounds"))]
        counts = [int(c) for c in _items(requests.get("duration_counts"))]
        figures["bounds"] = bounds
        if seconds is not None:
            figures["requests_per_second"] = rate(_number(old_requests.get("total")),
                                                  _number(requests.get("total")), seconds)
            deltas = bucket_deltas(_items(old_requests.get("duration_counts")) or None, counts)
        else:
            deltas, figures["since_start"] = counts, True
        if deltas is not None and len(deltas) == len(bounds) + 1:
            figures["p50"] = quantile(bounds, deltas, 0.5)
            figures["p99"] = quantile(bounds, deltas, 0.99)
    elif seconds is not None and served_rates:
        figures["requests_per_second"] = sum(served_rates)
        figures["rate_source"] = "workers"
    return figures


def top_frame(before: Sample | None, after: Sample | None, path: str, interval: float,
              error: str | None = None, clock: str = "") -> list[str]:
    """The lines of one ``top`` screen: ``after`` the latest sample (None: the last call
    failed, and ``error`` says why), ``before`` the one to compute rates against."""
    title = f"wsgi_zmq top  {path}  every {interval:g}s" + (f"  {clock}" if clock else "")
    if after is None:
        return [title, "", f"error: {error or 'no status'} (trying again every {interval:g}s)"]
    status = after.status
    if status.get("kind") != "front":
        return [title, "", *render_status(status)]
    figures = front_figures(before, after)
    since = " (since start)" if figures["since_start"] else ""
    bounds = figures["bounds"]
    per_second = format_rate(figures["requests_per_second"])
    if figures["rate_source"] == "workers":
        per_second += " (served by workers)"
    lines = [
        f"{title}  front pid {cell(status.get('pid'))}  up {format_seconds(status.get('uptime'))}"
        + ("  DRAINING" if status.get("draining") else ""),
        f"requests/s {per_second}  p50{since} {format_latency(figures['p50'], bounds)}  "
        f"p99{since} {format_latency(figures['p99'], bounds)}  queue {figures['waiting']}  "
        f"connections {cell(figures['connections'])}  in flight {cell(figures['in_flight'])}",
    ]
    if not status.get("requests"):
        lines.append("(the front sent no request counts: no latency figures)")
    lines.append("")
    rows = [[w["pool"], w["host"], w["pid"], w["state"],
             f"{cell(w['in_flight'])}/{cell(w['capacity'])}",
             format_rate(w["requests_per_second"]), format_share(w["busy"]),
             format_seconds(w["heard"])]
            for w in figures["workers"]]
    if rows:
        lines += format_table(["POOL", "HOST", "PID", "STATE", "INFLIGHT/CAP", "REQ/S",
                               "BUSY%", "HEARD"], rows, right={2, 4, 5, 6, 7})
    else:
        lines.append("no handler workers connected")
    return lines


def run_top(path: str, interval: float, count: int | None, timeout: float,
            out: IO[str], err: IO[str],
            ask_status: Callable[[], Any] | None = None,
            clock: Callable[[], float] = time.monotonic,
            pause: Callable[[float], None] = time.sleep) -> int:
    """Redraw ``status`` every ``interval`` s (``count`` frames, or until Ctrl-C); the exit
    code. A failure of the first call ends it (3, or 1 if the process refused); later ones
    are shown in the frame while it keeps asking."""
    if ask_status is None:
        def ask_status() -> Any:
            return ask(path, "status", [], timeout)
    terminal = out.isatty()
    before: Sample | None = None
    frames = 0
    try:
        while True:
            started = clock()
            sample: Sample | None = None
            error = None
            try:
                status = ask_status()
            except ControlError as exc:
                if frames == 0:
                    print(f"{NAME}: {exc}", file=err)
                    return EXIT_UNREACHABLE if isinstance(exc, Unreachable) else EXIT_FAILED
                error = str(exc)
            else:
                if isinstance(status, dict):
                    sample = Sample(started, status)
                else:
                    error = f"status answered {compact(status)}"
            lines = top_frame(before, sample, path, interval, error,
                              time.strftime("%H:%M:%S"))
            out.write((CLEAR if terminal else ("\n" if frames else "")) + "\n".join(lines)
                      + "\n")
            out.flush()
            frames += 1
            if sample is not None:
                before = sample
            if count is not None and frames >= count:
                return EXIT_OK
            pause(max(0.0, started + interval - clock()))
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        return EXIT_OK


# -- the command line -------------------------------------------------------------------------

EPILOG = f"""\
COMMAND is sent to the process as it is, with its ARGS; "help" lists what it answers:
a front: status, drain POOL|PID[@HOST], resume [POOL|PID[@HOST]]; a handler pool's master:
status, workers N, reload; all-in-one: all of them. "top" is ctl's own: it asks for status
every --interval seconds and redraws the screen (--count N: stop after N frames).

Exit codes:
  {EXIT_OK}  done
  {EXIT_FAILED}  the command failed: the process's message on stderr
  {EXIT_USAGE}  bad usage
  {EXIT_UNREACHABLE}  the socket cannot be reached, or did not answer (in time, or validly)
Every failure is one line on stderr."""


class _Parser(UsageParser):
    status = EXIT_USAGE

    def line(self, message: str) -> str:
        return f"{NAME}: {message} (see {self.prog} --help)"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _frames(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return value


def build_parser() -> _Parser:
    """The parser of ``python -m wsgi_zmq.ctl``; a usage error exits ``EXIT_USAGE`` with one
    line on stderr."""
    script = os.path.basename(sys.argv[0])
    prog = script if script.startswith("wsgi-zmq") else PROG
    parser = _Parser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        usage="%(prog)s SOCKET COMMAND [ARGS ...] [--json] [--timeout SECONDS]\n"
              "       %(prog)s SOCKET top [--interval SECONDS] [--count N]",
        description="Send one command to the control socket of a running wsgi_zmq front or "
                    "handler pool (--control-socket) and print its answer.")
    # optional to argparse, required by main: a missing one is then named alone (argparse
    # would call ARGS required too)
    parser.add_argument("socket", metavar="SOCKET", nargs="?",
                        help="the control socket: a path, or ipc://PATH")
    parser.add_argument("command", metavar="COMMAND", nargs="?",
                        help="status, drain, resume, workers, reload, help, top, ...")
    parser.add_argument("args", metavar="ARGS", nargs="*", help="the command's arguments")
    parser.add_argument("--json", action="store_true",
                        help="print the raw result as JSON (not with top)")
    parser.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=TIMEOUT,
                        help=f"how long to wait for the answer (default: {TIMEOUT:g})")
    parser.add_argument("--interval", metavar="SECONDS", type=_seconds,
                        help=f"top: seconds between frames (default: {DEFAULT_INTERVAL:g})")
    parser.add_argument("--count", metavar="N", type=_frames,
                        help="top: stop after N frames (default: until Ctrl-C)")
    parser.add_argument("--version", action="version", version=f"wsgi_zmq {__version__}")
    return parser


def _fail(code: int, message: object) -> NoReturn:
    print(f"{NAME}: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    """``python -m wsgi_zmq.ctl``: run the command in ``argv`` (default ``sys.argv[1:]``),
    print its answer, exit with one of the codes of ``--help``."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.command is None:
        parser.error("give the control SOCKET and a COMMAND (help lists them)")
    try:
        path = validate_control_socket(args.socket)
    except ValueError as exc:
        parser.error(f"SOCKET {args.socket!r}: {exc}")
    if path is None:
        parser.error("SOCKET: give the control socket's path")
    top = args.command == "top"
    if not top and (args.interval is not None or args.count is not None):
        parser.error("--interval and --count are options of top")
    if top and args.args:
        parser.error(f"top takes no arguments (got {' '.join(args.args)})")
    if top and args.json:
        parser.error("--json does not apply to top (use status --json)")
    with tool_exits(EXIT_FAILED):
        if top:
            sys.exit(run_top(path, args.interval or DEFAULT_INTERVAL, args.count, args.timeout,
                             sys.stdout, sys.stderr))
        try:
            result = ask(path, args.command, args.args, args.timeout)
        except Unreachable as exc:
            _fail(EXIT_UNREACHABLE, exc)
        except ControlError as exc:
            _fail(EXIT_FAILED, exc)
        if args.json:
            print(json.dumps(result, indent=2, default=str))
        else:
            print("\n".join(render_result(args.command, result)))
        sys.stdout.flush()
    sys.exit(EXIT_OK)
