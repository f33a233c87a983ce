"""The arithmetic and formatting of the benchmarks' reports, shared by ``compare.py`` and
``jobs.py`` (run them as scripts, so this module is importable as ``report``).

A run is a dict with its ``server`` (or system) name, its ``round`` and its figures, or an
``error``. Reports give medians over rounds, and wsgi_zmq's ratio to each other server:
the ratio of the medians, with the range of the per-round ratios (both measured in the same
round, so the machine's drift cancels out).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

#: (ratio key, key of the summary's figure, the figure in one run)
RatioSpec = tuple[str, str, Callable[[dict[str, Any]], Any]]


def med(values: list[float | None]) -> float | None:
    """The median of the values that are not None, or None."""
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def spread(value: float, by_round: list[float]) -> str:
    """``ratio of the medians (lowest-highest per-round ratio)``."""
    if len(by_round) < 2:
        return ratio(value)
    return f"{ratio(value)} ({ratio(min(by_round))}-{ratio(max(by_round))})"


def ratios(runs: list[dict[str, Any]], ours: dict[str, Any], theirs: dict[str, Any],
           name: str, specs: Iterable[RatioSpec], key: str = "server") -> dict[str, Any]:
    """wsgi_zmq's ratios to ``name``: for each spec, ``ours / theirs`` of the summaries'
    medians, and under ``KEY_by_round`` the ratios of the runs of each round both finished."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        if run[key] in ("wsgi_zmq", name) and "error" not in run:
            by_round.setdefault(run["round"], {})[run[key]] = run
    pairs = [(rr["wsgi_zmq"], rr[name]) for rr in by_round.values() if len(rr) == 2]
    out: dict[str, Any] = {}
    for ratio_key, field, value in specs:
        if ours.get(field) and theirs.get(field):
            out[ratio_key] = ours[field] / theirs[field]
            out[ratio_key + "_by_round"] = [value(a) / value(b) for a, b in pairs
                                            if value(a) is not None and value(b)]
    return out
