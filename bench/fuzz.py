"""Fuzz the front for a while: the live fuzzing of ``tests/live/test_fuzz.py``, for minutes.

Usage::

    .venv/bin/python bench/fuzz.py                   # 10 minutes
    .venv/bin/python bench/fuzz.py --minutes 1 --seed 7

Starts its own all-in-one server (``python -m wsgi_zmq apps.echo:router``, one worker, on a
free loopback port; the strategies, the client and every check come from
``tests/support/fuzz.py``), then sends generated cases until the time is up: valid,
mutated and corpus streams in turn, in rounds of Hypothesis's generation (no shrinking: a
failure is counted, the smallest case of each kind is kept and printed at the end). After
every case: a fresh ``GET /`` must get 200 within 1 s, the front must keep its pid and log
no traceback. A front that stopped serving (or was replaced) is counted, then the whole
server is started afresh so that the run goes on ("recoveries").

Prints once per ``--report-seconds`` (default 60): cases tried, front restarts (its pid
changed or it died), tracebacks in the log, failed health checks, other failed checks
(answers), and the front's RSS with its growth over the idle RSS (measured after a warm-up).
Exit status 1 if any of these is not 0 or the RSS grew by more than 8 MiB. The server is
stopped by PID at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE)]

from servers import exit_on_signals  # noqa: E402

from support.fuzz import (  # noqa: E402
    MEMORY_SLACK,
    PRIORITY,
    Case,
    FrontRestarted,
    FrontStoppedServing,
    FuzzServer,
    Problem,
    TracebackLogged,
    cases,
    check_case,
    failure,
    mutated_streams,
    rss,
    seed_streams,
    valid_streams,
)

STRATEGIES = {"valid": valid_streams(), "mutated": mutated_streams(), "corpus": seed_streams()}
ROUND = 50  # examples per round of Hypothesis generation
SERVER_KINDS = {FrontRestarted, TracebackLogged, FrontStoppedServing}
MiB = 1 << 20


class Fuzzer:
    """Runs cases until ``deadline`` and keeps the counts."""

    def __init__(self, server: FuzzServer, deadline: float, max_cases: int,
                 report_seconds: float) -> None:
        self.server = server
        self.deadline = deadline
        self.max_cases = max_cases
        self.report_seconds = report_seconds
        self.start = time.monotonic()
        self.next_report = self.start + report_seconds
        self.cases = 0
        self.answer_cases = 0  # cases with a failed check of their answers
        self.counts = {kind: 0 for kind in PRIORITY}
        self.smallest: dict[type, tuple[Case, list[Problem]]] = {}
        self.peak_growth = 0

    @property
    def done(self) -> bool:
        return time.monotonic() >= self.deadline or self.cases >= self.max_cases

    def run(self, case: Case) -> None:
        if self.done:
            return
        self.cases += 1
        _, problems = check_case(self.server, case)
        kinds = {kind for kind, _ in problems}
        self.answer_cases += bool(kinds - SERVER_KINDS)
        for kind in kinds:
            self.counts[kind] += 1
            known = self.smallest.get(kind)
            if known is None or len(case.data) < len(known[0].data):
                self.smallest[kind] = (case, problems)
        if time.monotonic() >= self.next_report:
            self.report()
            self.next_report += self.report_seconds

    def report(self) -> None:
        front = rss(self.server.front_pid) or 0
        growth = front - self.server.idle_rss
        self.peak_growth = max(self.peak_growth, growth)
        answers = self.answer_cases
        print(f"{(time.monotonic() - self.start) / 60:5.1f} {self.cases:7d} "
              f"{self.counts[FrontRestarted]:8d} {self.counts[TracebackLogged]:10d} "
              f"{self.counts[FrontStoppedServing]:6d} {answers:7d} "
              f"{self.server.starts - 1:10d} {front / MiB:8.1f} MiB {growth / MiB:+6.1f} MiB",
              flush=True)


HEADER = ("  min   cases restarts tracebacks health answers recoveries  front RSS  growth")


def fuzz(fuzzer: Fuzzer, seed_value: int | None) -> None:
    tests = []
    for strategy in STRATEGIES.values():
        @settings(max_examples=ROUND, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(cases(strategy))
        def test(case: Case) -> None:
            fuzzer.run(case)

        tests.append(test)
    rounds = 0
    while not fuzzer.done and rounds < fuzzer.max_cases:  # a round is at least one case
        test = tests[rounds % len(tests)]
        if seed_value is not None:  # a seed per round: the same run again, not one round
            test = seed(seed_value * 1_000_003 + rounds)(test)
        test()
        rounds += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--report-seconds", type=float, default=60.0)
    parser.add_argument("--max-cases", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=None,
                        help="Hypothesis seed (default: a new one each round)")
    args = parser.parse_args()
    exit_on_signals()
    logs = Path(tempfile.mkdtemp(prefix="wsgi_zmq-fuzz-"))
    server = FuzzServer(logs)
    try:
        server.start()
        print(f"front pid {server.front_pid} on port {server.port}, idle RSS "
              f"{server.idle_rss / MiB:.1f} MiB; logs in {logs}", flush=True)
        print(HEADER, flush=True)
        fuzzer = Fuzzer(server, time.monotonic() + args.minutes * 60, args.max_cases,
                        args.report_seconds)
        try:
            fuzz(fuzzer, args.seed)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        fuzzer.report()
    finally:
        previous = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            server.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    failed = sum(fuzzer.counts.values())
    print(f"\n{fuzzer.cases} cases in {(time.monotonic() - fuzzer.start) / 60:.1f} min; "
          f"{failed} failed checks; RSS growth at most {fuzzer.peak_growth / MiB:+.1f} MiB "
          f"(limit +{MEMORY_SLACK / MiB:.0f} MiB)")
    for kind in PRIORITY:
        if fuzzer.counts[kind]:
            case, problems = fuzzer.smallest[kind]
            print(f"\n{kind.__name__} x{fuzzer.counts[kind]} ({kind.kind}); smallest case:\n"
                  f"{str(failure(case, problems, None))[:3000]}")
    return 1 if failed or fuzzer.peak_growth > MEMORY_SLACK else 0


if __name__ == "__main__":
    sys.exit(main())
