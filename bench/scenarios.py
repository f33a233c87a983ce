"""Operations under load, for longer than the tests run them; prints the counts.

    /tmp/venv/bin/python bench/scenarios.py                  # every scenario, 20 s each
    /tmp/venv/bin/python bench/scenarios.py --seconds 60 --only deploy --clients 16

The scenarios are those of ``tests/support/scenarios.py`` (the tests run them for 3 s):
8 keep-alive clients (``--clients``) send requests without pause and check every answer
(status 200 and the right body) while the operation repeats: HUP reload, TTIN then TTOU,
recycling every 50 requests, a deploy (new pool, TERM the old), TERM of one of two pools,
and a worker stuck past ``--timeout 2`` (which alone must get 504). Real processes on
loopback, each stopped by its PID at the end; exit status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import Stack, scenarios  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="load time per scenario")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--only", action="append", default=[],
                        help="run only this scenario (repeatable): "
                             + ", ".join(f.__name__ for f in scenarios.ALL))
    args = parser.parse_args()
    chosen = [f for f in scenarios.ALL if not args.only or f.__name__ in args.only]
    rows = []
    failed = False
    for scenario in chosen:
        with tempfile.TemporaryDirectory(prefix="wsgi_zmq-bench-") as tmp:
            stack = Stack(Path(tmp))
            try:
                print(f"{scenario.__name__} ...", end=" ", flush=True)
                result = scenario(stack, args.seconds, args.clients)
            finally:
                stack.stop_all()
        counts = result.counts
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(counts.statuses.items()))
        extra = "; ".join(f"{k} {v}" for k, v in result.extra.items())
        print(f"{counts}" + (f"; {extra}" if extra else ""))
        rows.append((result.name, result.operations, counts.sent, counts.answered,
                     counts.failed, statuses))
        failed = failed or not result.ok
        for problem in result.failures[:5]:
            print(f"    {problem}")
    print()
    print(f"{'scenario':<36} {'ops':>5} {'sent':>8} {'answered':>9} {'failed':>7}  statuses")
    print("-" * 90)
    for name, ops, sent, answered, fails, statuses in rows:
        print(f"{name:<36} {ops:>5} {sent:>8} {answered:>9} {fails:>7}  {statuses}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
