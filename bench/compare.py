"""Hello world under wrk: wsgi_zmq against gunicorn (sync and gevent), and uWSGI if present.

Run from anywhere, with the virtualenv's Python::

    /tmp/venv/bin/python bench/compare.py                     # 5 rounds of 5 s per server
    /tmp/venv/bin/python bench/compare.py --rounds 1 --duration 2 --servers wsgi_zmq
    /tmp/venv/bin/python bench/compare.py --capacity 1 --json bench/results/c1.json

Every server serves ``bench/hello.py:app`` on a loopback port:

- ``wsgi_zmq``: ``python -m wsgi_zmq bench.hello:app --workers 1`` (all-in-one: a front and
  one handler worker under a master), ``--capacity`` passed through when given;
- ``gunicorn-sync``: ``gunicorn -w 2``; ``gunicorn-gevent``: ``gunicorn -k gevent -w 2``;
- ``uwsgi``: ``uwsgi --master --processes 2 --http-socket``, only if a ``uwsgi`` binary is
  installed (left out silently otherwise).

Rounds are interleaved: each round runs every server once, the order rotated by one each
round, so that a slow spell of the shared machine hits every server. By default every
server is started fresh for each run and stopped after it (``--start-once`` starts each one
once for all rounds). Each run: wait for readiness (log lines, then ``GET /`` answering 200),
a short warm-up wrk run that is not recorded, then ``wrk -tT -cC -dDs --latency`` with the
CPU time (utime + stime from ``/proc/PID/stat``) of every server process read before and
after it. CPU per request is CPU seconds / requests wrk completed, per process role: for
wsgi_zmq the front and the handler worker separately (the master is idle, but is counted
in the total), for gunicorn and uWSGI the sum of the workers.

The table shows medians over rounds, then wsgi_zmq's median req/s and p99 as ratios to each
other server's. The machine is shared and has 2 cores, with wrk on them too: read the
ratios and medians, not one absolute number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from report import RatioSpec, fmt, med, ratios, spread
from servers import (
    BOOTING_WORKER,
    LISTENING,
    REPO,
    Baseline,
    BenchError,
    Launcher,
    Server,
    cpu_seconds,
    exit_on_signals,
    free_port,
    start_wsgi_zmq,
    wait_http,
)

APP = "bench.hello:app"
BODY = b"Hello, World!"
SERVERS = ("wsgi_zmq", "wsgi_zmq+curve", "wsgi_zmq+https", "wsgi_zmq+metrics", "wsgi_zmq+statsd",
           "wsgi_zmq+routes",
           "gunicorn-sync", "gunicorn-gevent", "uwsgi")
#: run only when named in --servers: variants of wsgi_zmq for the cost of a feature
OPTIONAL = ("wsgi_zmq+curve", "wsgi_zmq+https", "wsgi_zmq+metrics", "wsgi_zmq+statsd",
            "wsgi_zmq+routes")
START_SECONDS = 30.0
#: wrk gets this long beyond its duration before it is killed
WRK_GRACE_SECONDS = 30.0

UWSGI_WORKER = re.compile(r"spawned uWSGI worker \d+ \(pid: (\d+)")
# wrk 4.x output: "  50%  812.00us", "  12345 requests in 5.00s, 1.23MB read", ...
WRK_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$",
                            re.MULTILINE)
WRK_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),")
WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass
class Target:
    """A running server: where it listens and the PIDs of its processes by role."""

    name: str
    server: Server
    url: str
    roles: dict[str, list[int]] = field(default_factory=dict)


# -- servers -------------------------------------------------------------------------------

def uwsgi_binary() -> str | None:
    """The uwsgi binary next to this Python, or on PATH; None if there is none."""
    beside = os.path.join(os.path.dirname(sys.executable), "uwsgi")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("uwsgi")


def gunicorn_options() -> list[str]:
    """``--no-control-socket`` where gunicorn has it (24+), so that runs share no socket
    file and leave none behind."""
    result = subprocess.run([sys.executable, "-m", "gunicorn", "--help"], capture_output=True,
                            text=True, timeout=60, check=False)
    return ["--no-control-socket"] if "--no-control-socket" in result.stdout else []


def curve_options(args: argparse.Namespace) -> list[str]:
    """CURVE on the backend: a key pair made once per run with ``wsgi_zmq.keys`` (the
    all-in-one front admits its own workers, so the allowlist is empty)."""
    if args.curve_dir is None:
        args.curve_dir = tempfile.mkdtemp(prefix="wsgi_zmq-bench-keys-")
        os.mkdir(os.path.join(args.curve_dir, "allow"))
        subprocess.run([sys.executable, "-m", "wsgi_zmq.keys", "generate", "front", "--dir",
                        args.curve_dir], check=True, capture_output=True, timeout=60)
    return ["--curve-secret-key", os.path.join(args.curve_dir, "front.key_secret"),
            "--curve-allow", os.path.join(args.curve_dir, "allow")]


def https_options(args: argparse.Namespace) -> list[str]:
    """An HTTPS bind with a self-signed certificate made once per run with ``openssl``."""
    if args.tls_dir is None:
        if not shutil.which("openssl"):
            raise BenchError("wsgi_zmq+https needs the openssl command to make a certificate")
        args.tls_dir = tempfile.mkdtemp(prefix="wsgi_zmq-bench-tls-")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "1", "-subj", "/CN=127.0.0.1", "-keyout",
                        os.path.join(args.tls_dir, "key.pem"), "-out",
                        os.path.join(args.tls_dir, "cert.pem")],
                       check=True, capture_output=True, timeout=60)
    return ["--bind", "https://127.0.0.1:0",
            "--certfile", os.path.join(args.tls_dir, "cert.pem"),
            "--keyfile", os.path.join(args.tls_dir, "key.pem")]


#: the UDP socket wsgi_zmq+statsd sends to (see ``statsd_sink``), closed at the end
_statsd_sinks: list[socket.socket] = []


def statsd_sink(args: argparse.Namespace) -> int:
    """The port of a UDP socket bound once per run and never read: the statsd datagrams
    arrive (no ICMP refusal), the kernel drops them when its buffer is full, as a busy
    statsd would."""
    if args.statsd_port is None:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        _statsd_sinks.append(sink)
        args.statsd_port = int(sink.getsockname()[1])
    return int(args.statsd_port)


def start(launcher: Launcher, name: str, args: argparse.Namespace) -> Target:
    """Start one server and wait until it is ready: every process booted, ``GET /`` is 200."""
    if name == "wsgi_zmq" or name.startswith(("wsgi_zmq@", "wsgi_zmq+")):
        extra = ["--capacity", str(args.capacity)] if args.capacity else []
        if name == "wsgi_zmq+curve":
            extra += curve_options(args)
        elif name == "wsgi_zmq+https":
            extra += https_options(args)
        elif name == "wsgi_zmq+metrics":
            extra += ["--metrics-bind", "127.0.0.1:0"]
        elif name == "wsgi_zmq+statsd":
            extra += ["--statsd-host", f"127.0.0.1:{statsd_sink(args)}"]
        elif name == "wsgi_zmq+routes":
            # every request routed: two routes it does not match, a versioned pool
            extra += ["--route", "/api=api:strip", "--route", "*.example.com/=web",
                      "--pool-version", "v1", "--sticky-cookie", "wv"]
        source = args.baseline_dir if name.startswith("wsgi_zmq@") else None
        server, url = start_wsgi_zmq(launcher, APP, args.zmq_workers, extra, START_SECONDS,
                                     source=source, name=name)
        target = Target(name, server, url, server.roles)
    elif name.startswith("gunicorn"):
        worker_class = ["-k", "gevent"] if name == "gunicorn-gevent" else []
        argv = [sys.executable, "-m", "gunicorn", *worker_class, "-w", "2",
                "-b", "127.0.0.1:0", *args.gunicorn_options, APP]
        server = launcher.start(name, argv)
        url = server.wait_for(LISTENING, START_SECONDS)[0].group(1)
        workers = [int(m.group(1)) for m in server.wait_for(BOOTING_WORKER, START_SECONDS, 2)]
        server.roles = {"master": [server.pid], "worker": workers}
        target = Target(name, server, url, server.roles)
    elif name == "uwsgi":
        binary = uwsgi_binary()
        assert binary is not None
        address = f"127.0.0.1:{free_port()}"
        argv = [binary, "--master", "--processes", "2", "--http-socket", address,
                "--module", APP, "--chdir", REPO, "--disable-logging", "--die-on-term",
                "--need-app"]
        server = launcher.start(name, argv)
        workers = [int(m.group(1)) for m in server.wait_for(UWSGI_WORKER, START_SECONDS, 2)]
        server.roles = {"master": [server.pid], "worker": workers}
        target = Target(name, server, f"http://{address}", server.roles)
    else:
        raise ValueError(name)
    body = wait_http(target.url, target.server, START_SECONDS)
    if body != BODY:
        raise BenchError(f"{name}: GET / answered {body!r}, not {BODY!r}")
    return target


# -- wrk -----------------------------------------------------------------------------------

def run_wrk(url: str, threads: int, connections: int, duration: int) -> dict[str, Any]:
    """Run wrk once and parse its output (latencies in ms). Raises BenchError."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
            url.rstrip("/") + "/"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=duration + WRK_GRACE_SECONDS)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    # the only child this process reaps during the run is wrk
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}: {err.strip() or out.strip()}")
    return parse_wrk(out) | {
        "wrk_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}


def parse_wrk(out: str) -> dict[str, Any]:
    """req/s, requests, duration, p50/p75/p90/p99 (ms) and errors from wrk's output."""
    requests = WRK_REQUESTS.search(out)
    rate = WRK_RATE.search(out)
    percentiles = {f"p{p}_ms": float(v) * TO_MS[u] for p, v, u in WRK_PERCENTILE.findall(out)}
    if not (requests and rate and "p50_ms" in percentiles and "p99_ms" in percentiles):
        raise BenchError(f"cannot parse wrk's output:\n{out}")
    socket_errors = WRK_SOCKET_ERRORS.search(out)
    non_2xx = WRK_NON_2XX.search(out)
    return {
        "rps": float(rate.group(1)),
        "requests": int(requests.group(1)),
        "duration_s": float(requests.group(2)) * TO_MS[requests.group(3)] / 1e3,
        **percentiles,
        "socket_errors": sum(map(int, socket_errors.groups())) if socket_errors else 0,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


# -- one run -------------------------------------------------------------------------------

def measure(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then one recorded wrk run with the CPU of every server process around it."""
    if args.warmup:
        run_wrk(target.url, args.threads, args.connections, args.warmup)
    pids = {pid: role for role, role_pids in target.roles.items() for pid in role_pids}
    before = {pid: cpu_seconds(pid) for pid in pids}
    result = run_wrk(target.url, args.threads, args.connections, args.duration)
    after = {pid: cpu_seconds(pid) for pid in pids}
    cpu: dict[str, float | None] = {}
    for pid, role in pids.items():
        start, end = before[pid], after[pid]
        so_far = cpu.get(role, 0.0)
        if start is None or end is None:
            cpu[role] = None  # a process of this role vanished during the run: unknown
        elif so_far is not None:
            cpu[role] = so_far + end - start
    cpu["total"] = None if None in cpu.values() else sum(v or 0.0 for v in cpu.values())
    cpu["wrk"] = result.pop("wrk_cpu_s")
    requests = result["requests"]
    result["cpu_s"] = cpu
    result["cpu_us_per_request"] = {
        role: None if used is None or not requests else used / requests * 1e6
        for role, used in cpu.items()}
    result["pids"] = target.roles
    return result


def describe(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"FAILED: {run['error'].splitlines()[0]}"
    per = run["cpu_us_per_request"]
    cpu = ", ".join(f"{role} {fmt(per.get(role), 1)}" for role in ("front", "worker", "total")
                    if role in per)
    errors = run["socket_errors"] + run["non_2xx"]
    return (f"{run['rps']:9.0f} req/s  p50 {run['p50_ms']:7.2f} ms  p99 {run['p99_ms']:7.2f} ms"
            f"  CPU us/req: {cpu}" + (f"  ERRORS {errors}" if errors else ""))


# -- the report ----------------------------------------------------------------------------





#: what wsgi_zmq is compared on (``report.RatioSpec``)
RATIOS: tuple[RatioSpec, ...] = (
    ("rps", "rps", lambda r: r["rps"]),
    ("p99", "p99_ms", lambda r: r["p99_ms"]),
)


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Medians per server, and wsgi_zmq's ratios to each other server."""
    summary: dict[str, Any] = {"servers": {}, "ratios": {}}
    for name in names:
        ok = [r for r in runs if r["server"] == name and "error" not in r]
        roles = sorted({role for r in ok for role in r["cpu_us_per_request"]})
        summary["servers"][name] = {
            "runs": len(ok),
            "failed": sum(1 for r in runs if r["server"] == name and "error" in r),
            "rps": med([r["rps"] for r in ok]),
            "p50_ms": med([r["p50_ms"] for r in ok]),
            "p99_ms": med([r["p99_ms"] for r in ok]),
            "cpu_us_per_request": {
                role: med([r["cpu_us_per_request"].get(role) for r in ok]) for role in roles},
            "errors": sum(r["socket_errors"] + r["non_2xx"] for r in ok),
        }
    ours = summary["servers"].get("wsgi_zmq")
    if not ours or ours["rps"] is None:
        return summary
    for name in names:
        theirs = summary["servers"][name]
        if name == "wsgi_zmq" or theirs["rps"] is None:
            continue
        summary["ratios"][name] = ratios(runs, ours, theirs, name, RATIOS)
    return summary


def print_report(summary: dict[str, Any], args: argparse.Namespace, mode: str) -> None:
    print()
    print(f"Medians over {args.rounds} round(s) of wrk -t{args.threads} -c{args.connections} "
          f"-d{args.duration}s --latency, order rotated every round; {mode}.")
    print("CPU is microseconds per request for each process role (utime+stime / requests); "
          "total counts every server process, master included; wrk is the load generator.")
    header = (f"{'server':<17}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'front':>9}{'worker':>9}"
              f"{'total':>9}{'wrk':>8}{'errors':>8}{'runs':>6}")
    print()
    print(header)
    print("-" * len(header))
    for name, s in summary["servers"].items():
        per = s["cpu_us_per_request"]
        label = name
        if name == "wsgi_zmq":
            label += f" ({args.zmq_workers}w" + (f",c{args.capacity})" if args.capacity else ")")
        print(f"{label:<17}{fmt(s['rps']):>9}{fmt(s['p50_ms'], 2):>9}{fmt(s['p99_ms'], 2):>9}"
              f"{fmt(per.get('front'), 1):>9}{fmt(per.get('worker'), 1):>9}"
              f"{fmt(per.get('total'), 1):>9}{fmt(per.get('wrk'), 1):>8}{s['errors']:>8}"
              f"{s['runs']:>6}" + (f"  ({s['failed']} failed)" if s["failed"] else ""))
    if summary["ratios"]:
        print()
        print("wsgi_zmq / other: ratio of the medians (range of the per-round ratios); "
              "req/s above 1 and p99 below 1 favour wsgi_zmq")
        print(f"{'other':<17}{'req/s ratio':>26}{'p99 ratio':>26}")
        for name, ratio in summary["ratios"].items():
            print(f"{name:<17}{spread(ratio['rps'], ratio['rps_by_round']):>26}"
                  f"{spread(ratio['p99'], ratio['p99_by_round']):>26}")






# -- main ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--duration", type=int, default=5,
                        help="seconds of each recorded wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="seconds of unrecorded wrk before each run; 0: none (default 1)")
    parser.add_argument("--servers", default=None,
                        help="comma-separated subset of " + ",".join(SERVERS)
                        + " (default: all; uwsgi only if installed)")
    parser.add_argument("--capacity", type=int, default=None,
                        help="wsgi_zmq --capacity (default: wsgi_zmq's own)")
    parser.add_argument("--zmq-workers", type=int, default=1,
                        help="wsgi_zmq handler workers (default 1)")
    parser.add_argument("--start-once", action="store_true",
                        help="start each server once for all rounds, not fresh for each run")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run wsgi_zmq as of git revision REV (from a temporary "
                        "worktree), as server wsgi_zmq@REV: the cost of a change, one run")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = parser.parse_args(argv)
    for name in ("rounds", "duration", "connections", "threads", "zmq_workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or (args.capacity is not None and args.capacity < 1):
        parser.error("--warmup must be at least 0 and --capacity at least 1")
    args.curve_dir = None
    args.tls_dir = None
    args.statsd_port = None
    if args.servers is None:
        args.names = [n for n in SERVERS
                      if n not in OPTIONAL and (n != "uwsgi" or uwsgi_binary())]
    else:
        args.names = [n.strip() for n in args.servers.split(",") if n.strip()]
        unknown = [n for n in args.names if n not in SERVERS]
        if unknown or not args.names:
            parser.error(f"--servers: unknown {unknown}; choose from {', '.join(SERVERS)}")
        if "uwsgi" in args.names and not uwsgi_binary():
            parser.error("--servers uwsgi: no uwsgi binary is installed")
    if not shutil.which("wrk"):
        parser.error("wrk is not on PATH")
    args.baseline_dir = None
    if args.baseline:
        args.names.insert(1 if "wsgi_zmq" in args.names else 0, f"wsgi_zmq@{args.baseline}")
    return args


def run_rounds(args: argparse.Namespace, mode: str, runs: list[dict[str, Any]]) -> int:
    """Every round of every server; appends to ``runs``; returns the exit status."""
    status = 0
    with Launcher() as launcher:
        started: dict[str, Target] = {}
        try:
            if args.start_once:
                for name in args.names:
                    started[name] = start(launcher, name, args)
            for rnd in range(args.rounds):
                shift = rnd % len(args.names)
                for name in args.names[shift:] + args.names[:shift]:
                    run: dict[str, Any] = {"server": name, "round": rnd + 1,
                                           "loadavg": os.getloadavg()[0], "time": time.time()}
                    target = started.get(name)
                    try:
                        if target is None:
                            target = start(launcher, name, args)
                        run |= measure(target, args)
                    except BenchError as exc:
                        run["error"] = str(exc)
                        status = 1
                    finally:
                        if target is not None and not args.start_once:
                            launcher.stop(target.server)
                    runs.append(run)
                    print(f"round {rnd + 1}/{args.rounds}  {name:<16} {describe(run)}",
                          flush=True)
                    if "error" in run:
                        print(run["error"], file=sys.stderr)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the servers", file=sys.stderr)
            status = 130
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    args.gunicorn_options = gunicorn_options() if any(
        n.startswith("gunicorn") for n in args.names) else []
    mode = ("each server started once for all rounds" if args.start_once
            else "each server started fresh for every run")
    print(f"compare: {', '.join(args.names)}; {args.rounds} round(s); {mode}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: args.curve_dir and shutil.rmtree(args.curve_dir, True))
        stack.callback(lambda: args.tls_dir and shutil.rmtree(args.tls_dir, True))
        stack.callback(lambda: [sink.close() for sink in _statsd_sinks])
        if args.baseline:
            try:
                args.baseline_dir = stack.enter_context(Baseline(args.baseline))
            except BenchError as exc:
                print(exc, file=sys.stderr)
                return 1
        status = run_rounds(args, mode, runs)
    summary = summarize(runs, args.names)
    print_report(summary, args, mode)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        config = {k: v for k, v in vars(args).items() if k != "gunicorn_options"}
        with open(args.json, "w") as f:
            json.dump({"config": config, "mode": mode, "cpus": os.cpu_count(),
                       "runs": runs, "summary": summary}, f, indent=2)
        print(f"\nraw results: {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
