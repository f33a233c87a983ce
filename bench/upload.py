"""Uploads read whole: wall time and worker CPU of a PUT body, wsgi_zmq against gunicorn.

Run from anywhere, with the virtualenv's Python::

    .venv/bin/python bench/upload.py                           # 1, 10, 100 MiB, 5 rounds
    .venv/bin/python bench/upload.py --rounds 3 --sizes 1M,10M
    .venv/bin/python bench/upload.py --modes readline --line-length 0 --json out.json
    .venv/bin/python bench/upload.py --baseline HEAD~1   # and the same as of HEAD~1
    .venv/bin/python bench/upload.py --zmq-args '--chunk-size 262144'
    .venv/bin/python bench/upload.py --baseline HEAD --zmq-args '--window 32' --base-args ''

Both servers serve ``bench/upload_app.py:app`` on a loopback port, each started once for
all rounds, with one worker:

- ``wsgi_zmq``: ``python -m wsgi_zmq bench.upload_app:app --workers 1`` (all-in-one: a
  front and one handler worker under a master);
- ``gunicorn``: ``gunicorn -w 1`` (the sync worker).

Both get ``--timeout 120``. Modes (``--modes``), one path of the app each: ``read``
(``wsgi.input.read()``), ``read-length`` (one ``read(CONTENT_LENGTH)``), ``readline``
(``readline()`` until ``b""``) and ``flask`` (``request.get_data()`` in a Flask view). The
body is lines of ``--line-length`` bytes (0: no newline at all), sent with
``Content-Length`` on a new connection as fast as the client can, from one preallocated
buffer; the app's answer (bytes and newlines read) is checked.

Each round runs, for every size and mode, every server once, the order rotated by one each
round. One run: uploads of the size back to back, as many as make 16 MiB (16 of 1 MiB, 2 of
10 MiB, 1 of 100 MiB: one upload of 1 MiB takes a few milliseconds, and its time moves by as
much from one round to the next); the median of their wall times, from the first byte of a
request to the last of its answer, and the CPU seconds per upload (utime + stime from
``/proc/PID/stat``) of the worker, and of the wsgi_zmq front, read before and after the
run. The table shows medians over rounds and the
ratios wsgi_zmq / gunicorn; the target is a time ratio of at most 1.5 in every row. Exit
status 1 if a row misses it or a run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from compare import gunicorn_options
from memory import parse_size
from servers import (
    BOOTING_WORKER,
    LISTENING,
    Baseline,
    BenchError,
    Launcher,
    Server,
    cpu_seconds,
    exit_on_signals,
    start_wsgi_zmq,
    wait_http,
)

APP = "bench.upload_app:app"
SERVERS = ("wsgi_zmq", "gunicorn")
MODES = {"read": "/read", "read-length": "/read-length", "readline": "/readline",
         "flask": "/flask"}
TARGET = 1.5
MIB = 1 << 20
START_SECONDS = 30.0
#: a socket operation that makes no progress for this long fails the run
IO_TIMEOUT = 60.0
SEND_SIZE = 1 << 20
#: Bytes uploaded per run at least (``repeats``): 16 uploads of 1 MiB, 2 of 10 MiB, 1 of
#: 100 MiB.
RUN_BYTES = 16 << 20
WARMUP_SIZE = 1 << 16
SERVER_ARGS = ["--timeout", "120"]


@dataclass
class Target:
    """A running server: its URL and the PIDs whose CPU a run reads, by role."""

    name: str
    server: Server
    url: str
    pids: dict[str, int]


def start(launcher: Launcher, name: str, args: argparse.Namespace) -> Target:
    """Start one server with one worker; return once ``GET /`` answers 200. A name
    ``wsgi_zmq@REV`` runs from ``args.baseline_dir``, a worktree of that revision, with
    ``--base-args`` if given; every other wsgi_zmq gets ``--zmq-args``."""
    if name.startswith("wsgi_zmq"):
        base = "@" in name
        source = args.baseline_dir if base else None
        extra = args.base_args if base and args.base_args is not None else args.zmq_args
        server, url = start_wsgi_zmq(launcher, APP, 1, SERVER_ARGS + extra.split(),
                                     START_SECONDS, source=source, name=name)
        return Target(name, server, url, {"worker": server.roles["worker"][0],
                                          "front": server.roles["front"][0]})
    argv = [sys.executable, "-m", "gunicorn", "-w", "1", "-b", "127.0.0.1:0", *SERVER_ARGS,
            *gunicorn_options(), APP]
    server = launcher.start(name, argv)
    url = server.wait_for(LISTENING, START_SECONDS)[0].group(1)
    worker = int(server.wait_for(BOOTING_WORKER, START_SECONDS)[0].group(1))
    server.roles = {"master": [server.pid], "worker": [worker]}
    wait_http(url, server, START_SECONDS)
    return Target(name, server, url, {"worker": worker})


# -- the client ----------------------------------------------------------------------------

def make_body(size: int, line_length: int) -> bytes:
    """``size`` bytes of lines of ``line_length`` bytes (no newline if 0)."""
    if not line_length:
        return b"x" * size
    line = b"x" * (line_length - 1) + b"\n"
    whole, rest = divmod(size, line_length)
    return line * whole + b"x" * rest


def put(url: str, path: str, body: bytes, limit: float) -> tuple[float, dict[str, Any]]:
    """PUT ``body`` on a new connection; return the seconds until the whole answer is in
    and the answer. Raises BenchError past ``limit`` seconds or on anything but 200."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    head = (f"PUT {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
    view = memoryview(body)
    with socket.create_connection((parts.hostname, parts.port), timeout=IO_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        deadline = start + limit
        try:
            sock.sendall(head)
            for offset in range(0, len(body), SEND_SIZE):
                if time.perf_counter() > deadline:
                    raise BenchError(f"PUT {path}: {offset} of {len(body)} bytes sent after "
                                     f"{limit:.0f} s")
                sock.sendall(view[offset:offset + SEND_SIZE])
            data = b""
            while b"\r\n\r\n" not in data or len(data) < answer_end(data):
                if time.perf_counter() > deadline:
                    raise BenchError(f"PUT {path}: no whole answer after {limit:.0f} s")
                more = sock.recv(65536)
                if not more:
                    break
                data += more
                if len(data) > 1 << 16:
                    raise BenchError(f"PUT {path}: an answer of more than 64 KiB")
        except OSError as exc:
            raise BenchError(f"PUT {path}: {exc!r}") from None
        elapsed = time.perf_counter() - start
    head_text, _, payload = data.partition(b"\r\n\r\n")
    status = head_text.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise BenchError(f"PUT {path}: {data[:300]!r}")
    return elapsed, json.loads(payload)


def answer_end(data: bytes) -> int:
    """The length of a response whose head is in ``data`` (it has ``Content-Length``)."""
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return 1 << 62  # read to the close


def repeats(size: int) -> int:
    """How many uploads one run makes of ``size`` bytes: enough for ``RUN_BYTES``. A run
    of one small upload is a few milliseconds, and its time moves by as much from one
    round to the next; the median of several, back to back, does not."""
    return max(1, -(-RUN_BYTES // size))


def measure(target: Target, mode: str, body: bytes, lines: int) -> dict[str, Any]:
    """One run: ``repeats`` uploads, back to back; the median of their wall seconds, and
    the CPU seconds per upload of each process of ``target.pids``."""
    count = repeats(len(body))
    before = {role: cpu_seconds(pid) for role, pid in target.pids.items()}
    times = []
    for _ in range(count):
        elapsed, answer = put(target.url, MODES[mode], body, 60 + len(body) / MIB)
        if answer != {"length": len(body), "lines": lines}:
            raise BenchError(f"{target.name} {mode}: the app read {answer}, not "
                             f"{len(body)} bytes in {lines} lines")
        times.append(elapsed)
    after = {role: cpu_seconds(pid) for role, pid in target.pids.items()}
    elapsed = statistics.median(times)
    cpu = {}
    for role in target.pids:
        b, a = before[role], after[role]
        if b is None or a is None:
            raise BenchError(f"{target.name}: the {role} ({target.pids[role]}) is gone\n"
                             f"{target.server.tail()}")
        cpu[role] = (a - b) / count
    return {"seconds": elapsed, "cpu": cpu}


# -- the report ----------------------------------------------------------------------------

def summarize(runs: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per size and mode: medians over rounds per server, and the ratios."""
    rows = []
    for size in args.size_list:
        for mode in args.mode_list:
            row: dict[str, Any] = {"size": size, "mode": mode}
            for name in args.names:
                mine = [r for r in runs if (r["size"], r["mode"], r["server"]) ==
                        (size, mode, name) and "error" not in r]
                if not mine:
                    continue
                roles = mine[0]["cpu"]
                row[name] = {"seconds": statistics.median(r["seconds"] for r in mine),
                             "cpu": {role: statistics.median(r["cpu"][role] for r in mine)
                                     for role in roles},
                             "runs": len(mine)}
            if "wsgi_zmq" in row and "gunicorn" in row:
                z, g = row["wsgi_zmq"], row["gunicorn"]
                row["time_ratio"] = z["seconds"] / g["seconds"]
                row["cpu_ratio"] = (z["cpu"]["worker"] / g["cpu"]["worker"]
                                    if g["cpu"]["worker"] else None)
            base = row.get(f"wsgi_zmq@{args.baseline}") if args.baseline else None
            if "wsgi_zmq" in row and base is not None:
                row["base"] = base
                row["base_ratio"] = row["wsgi_zmq"]["seconds"] / base["seconds"]
            rows.append(row)
    return rows


def size_label(size: int) -> str:
    """1 MiB, 256 KiB, 1.5 MiB."""
    if size >= MIB:
        return f"{size / MIB:g} MiB"
    return f"{size / 1024:g} KiB"


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(f"Medians over {args.rounds} rounds; milliseconds of wall time (first byte of the "
          "request to the last of the answer) and of CPU per upload; ratio = wsgi_zmq / "
          f"gunicorn. Target: time ratio <= {TARGET}. Body: "
          + (f"lines of {args.line_length} bytes." if args.line_length else "no newlines."))
    header = (f"{'size':>8} {'mode':<12}| {'wsgi_zmq':>10}{'worker cpu':>11}{'front cpu':>10}"
              f" | {'gunicorn':>10}{'worker cpu':>11} | {'time x':>7}{'cpu x':>7} | target"
              + (f" | {'base':>8}{'x base':>7}" if args.baseline else ""))
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        z, g = row.get("wsgi_zmq"), row.get("gunicorn")
        cells = [f"{size_label(row['size']):>8} {row['mode']:<12}|"]
        cells.append(f" {fmt(z['seconds'] * 1e3):>10}{fmt(z['cpu']['worker'] * 1e3):>11}"
                     f"{fmt(z['cpu']['front'] * 1e3):>10} |" if z else f" {'-':>31} |")
        cells.append(f" {fmt(g['seconds'] * 1e3):>10}{fmt(g['cpu']['worker'] * 1e3):>11} |"
                     if g else f" {'-':>21} |")
        ratio = row.get("time_ratio")
        verdict = "-" if ratio is None else "ok" if ratio <= TARGET else "OVER"
        cells.append(f" {fmt(ratio):>7}{fmt(row.get('cpu_ratio')):>7} | {verdict}")
        if args.baseline:
            base = row.get("base")
            cells.append(f" | {fmt(base['seconds'] * 1e3) if base else '-':>8}"
                         f"{fmt(row.get('base_ratio')):>7}")
        print("".join(cells))


# -- main ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,10M,100M",
                        help="comma-separated body sizes, binary K/M/G (default 1M,10M,100M)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma-separated subset of " + ",".join(SERVERS))
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--line-length", type=int, default=1024,
                        help="bytes per line of the body, newline included; 0 for none "
                             "(default 1024)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run wsgi_zmq as of git revision REV (from a temporary "
                        "worktree), as server wsgi_zmq@REV; 'x base' = wsgi_zmq / it")
    parser.add_argument("--zmq-args", default="", metavar="ARGS",
                        help="more options for every wsgi_zmq server, one string, e.g. "
                        "'--chunk-size 262144'")
    parser.add_argument("--base-args", metavar="ARGS",
                        help="options for the --baseline server instead of --zmq-args: "
                        "'--baseline HEAD --zmq-args \"--window 32\" --base-args \"\"' "
                        "measures a setting against the default on one build")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = parser.parse_args(argv)
    try:
        args.size_list = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--sizes: {exc}")
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.names = [n.strip() for n in args.servers.split(",") if n.strip()]
    for option, chosen, known in (("--modes", args.mode_list, MODES),
                                  ("--servers", args.names, SERVERS)):
        unknown = [c for c in chosen if c not in known]
        if unknown or not chosen:
            parser.error(f"{option}: unknown {unknown}; choose from {', '.join(known)}")
    if not args.size_list or args.rounds < 1 or args.line_length < 0:
        parser.error("--sizes must name a size, --rounds be at least 1, --line-length >= 0")
    if args.baseline:
        args.names.append(f"wsgi_zmq@{args.baseline}")
    return args


def run(launcher: Launcher, args: argparse.Namespace, runs: list[dict[str, Any]]) -> int:
    """Start the servers, warm them, run the rounds; append every run to ``runs``."""
    targets = [start(launcher, name, args) for name in args.names]
    warm = make_body(WARMUP_SIZE, args.line_length)
    for target in targets:
        for mode in args.mode_list:
            measure(target, mode, warm, warm.count(b"\n"))
    bodies = {size: make_body(size, args.line_length) for size in args.size_list}
    status = 0
    for round_no in range(args.rounds):
        shift = round_no % len(targets)
        order = targets[shift:] + targets[:shift]
        for size, body in bodies.items():
            lines = body.count(b"\n")
            for mode in args.mode_list:
                line = [f"round {round_no + 1} {size_label(size):>8} {mode:<12}"]
                for target in order:
                    result: dict[str, Any] = {"server": target.name, "size": size,
                                              "mode": mode, "round": round_no + 1}
                    try:
                        result |= measure(target, mode, body, lines)
                        line.append(f"{target.name} {result['seconds'] * 1e3:.2f} ms "
                                    f"(worker {result['cpu']['worker'] * 1e3:.2f})")
                    except BenchError as exc:
                        result["error"] = str(exc)
                        line.append(f"{target.name} FAILED")
                        print(f"{target.name} {mode} {size}: {exc}", file=sys.stderr)
                        status = 1
                    runs.append(result)
                print("  ".join(line), flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    print(f"upload: sizes {args.sizes}, modes {','.join(args.mode_list)}, {args.rounds} "
          f"rounds; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    runs: list[dict[str, Any]] = []
    status = 0
    with contextlib.ExitStack() as stack:
        try:
            args.baseline_dir = (stack.enter_context(Baseline(args.baseline))
                                 if args.baseline else None)
            launcher = stack.enter_context(Launcher())
            status = run(launcher, args, runs)
        except BenchError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            status = 1
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the servers", file=sys.stderr)
            status = 130
    rows = summarize(runs, args)
    print_report(rows, args)
    if any(row.get("time_ratio", 0) > TARGET for row in rows):
        status = status or 1
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"config": vars(args),
                       "cpus": os.cpu_count(), "runs": runs, "rows": rows}, f, indent=2)
        print(f"\nraw results: {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
