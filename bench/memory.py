"""The memory figures of flow control: big bodies through wsgi_zmq, RSS of front and worker.

Run from anywhere, with the virtualenv's Python::

    /tmp/venv/bin/python bench/memory.py                          # 1 GiB, client at 10 MiB/s
    /tmp/venv/bin/python bench/memory.py --size 100M --rate 20M   # a quicker run
    /tmp/venv/bin/python bench/memory.py --scenarios upload-chunked --json out.json

Each scenario starts a fresh ``python -m wsgi_zmq bench.stream_app:app --workers 1`` (all
in one: a front and one handler worker under a master) on a loopback port, warms it with a
1 MiB download, upload and chunked upload, reads ``VmRSS`` (idle) and ``VmHWM`` (peak RSS so
far) of the front and the worker from ``/proc/PID/status``, moves one big body, and reads
``VmHWM`` again. The growth is the peak after minus the peak before; the project's target is
a growth of at most 8 MiB for each process, whatever the size of the body or the speed of
the client. A fresh server per scenario keeps one scenario's peak out of the next one's.

Scenarios (``--scenarios``, comma-separated; all by default):

- ``download-paced``: ``GET /download?size=SIZE`` read by a client pacing its reads at
  ``--rate`` (the slow client: the front must not buffer what the worker could send);
- ``upload-length``: ``POST /upload`` of SIZE bytes with ``Content-Length``, sent as fast
  as possible; the app reads it in 64 KiB pieces and answers its length and sha256, which
  are checked;
- ``upload-chunked``: the same with ``Transfer-Encoding: chunked`` (64 KiB chunks);
- ``download-fast``: the download read as fast as possible.

Sizes and rates take K, M, G suffixes, binary (``1G`` = 2^30 bytes; ``10M`` = 10 MiB/s).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from servers import BenchError, Launcher, exit_on_signals, read_memory, start_wsgi_zmq
from stream_app import blocks

APP = "bench.stream_app:app"
MIB = 1 << 20
TARGET_GROWTH = 8 * MIB
WARMUP_SIZE = MIB
START_SECONDS = 30.0
#: a socket operation that makes no progress for this long fails the scenario
IO_TIMEOUT = 60.0
RECV_SIZE = 65536
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
SCENARIOS = ("download-paced", "upload-length", "upload-chunked", "download-fast")
PROCESSES = ("front", "worker", "master")


def parse_size(text: str) -> int:
    """``1G``, ``100M``, ``64K``, ``12345`` (bytes); binary multiples."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 1G, 100M or 65536")
    value = int(float(match.group(1)) * UNITS[match.group(2).upper()])
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least one byte")
    return value


# -- the client ----------------------------------------------------------------------------

class Deadline:
    """The time a scenario may take; ``check()`` raises BenchError past it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self, doing: str) -> None:
        if time.monotonic() > self.end:
            raise BenchError(f"{doing}: not done within {self.seconds:.0f} s")


def connect(url: str) -> socket.socket:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=IO_TIMEOUT)


def request_head(url: str, method: str, target: str, fields: dict[str, str]) -> bytes:
    netloc = urllib.parse.urlsplit(url).netloc
    lines = [f"{method} {target} HTTP/1.1", f"Host: {netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read a response head: the status, the fields (lower-case names) and the body bytes
    that came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(RECV_SIZE)
        if not more:
            raise BenchError(f"the server closed the connection before its response head "
                             f"({data[:200]!r})")
        data += more
        if len(data) > 1 << 16:
            raise BenchError("a response head of more than 64 KiB")
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), fields, rest


def download(url: str, size: int, rate: float | None, deadline: Deadline) -> dict[str, Any]:
    """``GET /download?size=SIZE``, read at ``rate`` bytes/s (None: as fast as possible).
    Raises BenchError unless exactly ``size`` body bytes arrive with status 200."""
    with connect(url) as sock:
        sock.sendall(request_head(url, "GET", f"/download?size={size}", {}))
        status, fields, rest = read_head(sock)
        if status != 200 or fields.get("content-length") != str(size):
            raise BenchError(f"GET /download: status {status}, Content-Length "
                             f"{fields.get('content-length')!r}, not 200 and {size}")
        received = len(rest)
        view = memoryview(bytearray(RECV_SIZE))
        start = time.monotonic()
        while received < size:
            deadline.check(f"download at {received} of {size} bytes")
            count = sock.recv_into(view, min(RECV_SIZE, size - received))
            if not count:
                raise BenchError(f"download: connection closed at {received} of {size} bytes")
            received += count
            if rate:
                delay = start + received / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        if sock.recv(1):
            raise BenchError("download: more bytes than Content-Length")
    return {"bytes": received}


def upload(url: str, size: int, chunked: bool, digest: str,
           deadline: Deadline) -> dict[str, Any]:
    """``POST /upload`` of ``size`` bytes as fast as possible, with ``Content-Length`` or
    chunked; raises BenchError unless the app answers the right length and sha256."""
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(size)}
    with connect(url) as sock:
        sent = 0
        try:
            sock.sendall(request_head(url, "POST", "/upload",
                                      {"Content-Type": "application/octet-stream", **framing}))
            for block in blocks(size):
                deadline.check(f"upload at {sent} of {size} bytes")
                sock.sendall(b"%x\r\n%b\r\n" % (len(block), block) if chunked else block)
                sent += len(block)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError as exc:
            raise BenchError(f"upload: {exc!r} after {sent} of {size} bytes") from None
        status, fields, body = read_head(sock)
        length = int(fields.get("content-length", "-1"))
        while len(body) < length:
            more = sock.recv(RECV_SIZE)
            if not more:
                break
            body += more
    if status != 200:
        raise BenchError(f"POST /upload: status {status}: {body[:200]!r}")
    answer = json.loads(body)
    if answer != {"length": size, "sha256": digest}:
        raise BenchError(f"POST /upload: the app read {answer}, not {size} bytes of sha256 "
                         f"{digest}")
    return {"bytes": size}


def sha256_of(size: int) -> str:
    digest = hashlib.sha256()
    for block in blocks(size):
        digest.update(block)
    return digest.hexdigest()


# -- the scenarios -------------------------------------------------------------------------

def describe(name: str, args: argparse.Namespace) -> str:
    if name == "download-paced":
        return f"download {mib(args.size)} MiB, client reads at {mib(args.rate)} MiB/s"
    if name == "download-fast":
        return f"download {mib(args.size)} MiB as fast as possible"
    how = "chunked" if name == "upload-chunked" else "Content-Length"
    return f"upload {mib(args.size)} MiB, {how}, as fast as possible"


def scenario_plan(name: str, args: argparse.Namespace) -> tuple[Callable[..., Any], float]:
    """The client call (taking the URL and a Deadline) and its time limit in seconds."""
    size = args.size
    auto = 60 + size / (2 * MIB)  # at least 2 MiB/s, plus a minute
    if name == "download-paced":
        return (lambda url, dl: download(url, size, args.rate, dl),
                args.timeout or 60 + 2 * size / args.rate)
    if name == "download-fast":
        return lambda url, dl: download(url, size, None, dl), args.timeout or auto
    chunked = name == "upload-chunked"
    digest = sha256_of(size)  # before the clock starts
    return lambda url, dl: upload(url, size, chunked, digest, dl), args.timeout or auto


def warm_up(url: str) -> None:
    """One small download and upload of each kind, so that the idle figures include what
    the first request of each kind allocates for good."""
    deadline = Deadline(START_SECONDS)
    digest = sha256_of(WARMUP_SIZE)
    download(url, WARMUP_SIZE, None, deadline)
    upload(url, WARMUP_SIZE, False, digest, deadline)
    upload(url, WARMUP_SIZE, True, digest, deadline)


def run_scenario(launcher: Launcher, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start a fresh server, warm it, measure one scenario, stop the server."""
    description = describe(name, args)
    client, limit = scenario_plan(name, args)
    result: dict[str, Any] = {"scenario": name, "description": description,
                              "size": args.size, "time_limit_s": limit}
    print(f"{description} ...", end=" ", flush=True)
    server, url = start_wsgi_zmq(launcher, APP, 1, None, START_SECONDS, "/download?size=0")
    try:
        pids = {role: server.roles[role][0] for role in PROCESSES}
        warm_up(url)
        before = {role: read_memory(pid) for role, pid in pids.items()}
        log_start = len(server.lines)
        start = time.monotonic()
        result |= client(url, Deadline(limit))
        elapsed = time.monotonic() - start
        after = {role: read_memory(pid) for role, pid in pids.items()}
        result["elapsed_s"] = elapsed
        result["mib_per_s"] = args.size / MIB / elapsed
        result["pids"] = pids
        result["memory"] = {}
        for role in PROCESSES:
            b, a = before[role], after[role]
            if b is None or a is None:
                raise BenchError(f"the {role} ({pids[role]}) is gone\n{server.tail()}")
            result["memory"][role] = {
                "idle_rss": b["VmRSS"], "hwm_before": b["VmHWM"], "hwm_after": a["VmHWM"],
                "rss_after": a["VmRSS"], "growth": a["VmHWM"] - b["VmHWM"]}
        result["log"] = [line for line in server.lines[log_start:]
                         if "[WARNING]" in line or "[ERROR]" in line]
    finally:
        launcher.stop(server)
    growth = {role: result["memory"][role]["growth"] for role in ("front", "worker")}
    result["within_target"] = all(g <= TARGET_GROWTH for g in growth.values())
    print(f"{result['elapsed_s']:.2f} s, growth front {growth['front'] / MIB:+.1f} MiB, "
          f"worker {growth['worker'] / MIB:+.1f} MiB", flush=True)
    return result


# -- the report ----------------------------------------------------------------------------

def mib(value: float) -> str:
    return f"{value / MIB:g}"


def print_report(results: list[dict[str, Any]]) -> None:
    print()
    print("RSS in MiB: idle = VmRSS after the warm-up, peak = VmHWM after the scenario, "
          "growth = peak - VmHWM before it.")
    print(f"Target: growth of at most {TARGET_GROWTH // MIB} MiB for the front and for the "
          "worker. Each scenario had a fresh server (wsgi_zmq all-in-one, 1 worker).")
    width = max([len("scenario")] + [len(r["description"]) for r in results]) + 2
    header = (f"{'scenario':<{width}}{'time s':>8}{'MiB/s':>8} |{'front idle':>11}{'peak':>7}"
              f"{'growth':>8} |{'worker idle':>12}{'peak':>7}{'growth':>8} | target")
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        if "error" in r:
            print(f"{r['description']:<{width}}FAILED: {r['error'].splitlines()[0]}")
            continue
        cells = []
        for role in ("front", "worker"):
            m = r["memory"][role]
            cells.append(f"{m['idle_rss'] / MIB:>{11 if role == 'front' else 12}.1f}"
                         f"{m['hwm_after'] / MIB:>7.1f}{m['growth'] / MIB:>+8.1f}")
        over = [role for role in ("front", "worker")
                if r["memory"][role]["growth"] > TARGET_GROWTH]
        verdict = "ok" if not over else "OVER: " + ", ".join(over)
        print(f"{r['description']:<{width}}{r['elapsed_s']:>8.2f}{r['mib_per_s']:>8.1f} |"
              f"{cells[0]} |{cells[1]} | {verdict}")
        for line in r["log"][:5]:
            print(f"    log: {line}")


# -- main ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"),
                        help="bytes per body, e.g. 1G, 100M (default 1G)")
    parser.add_argument("--rate", type=parse_size, default=parse_size("10M"),
                        help="bytes per second the paced client reads, e.g. 10M (default 10M)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated subset of " + ",".join(SCENARIOS))
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds one scenario may take (default: from size and rate)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in args.names if n not in SCENARIOS]
    if unknown or not args.names:
        parser.error(f"--scenarios: unknown {unknown}; choose from {', '.join(SCENARIOS)}")
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    print(f"memory: {mib(args.size)} MiB per body, paced client at {mib(args.rate)} MiB/s; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    results: list[dict[str, Any]] = []
    status = 0
    with Launcher() as launcher:
        try:
            for name in args.names:
                try:
                    results.append(run_scenario(launcher, name, args))
                except (BenchError, OSError, ValueError) as exc:
                    print("FAILED", flush=True)
                    print(f"{name}: {exc}", file=sys.stderr)
                    results.append({"scenario": name, "description": describe(name, args),
                                    "error": str(exc)})
                    status = 1
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the server", file=sys.stderr)
            status = 130
    print_report(results)
    if any(not r.get("within_target", True) for r in results):
        status = status or 1
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "cpus": os.cpu_count(), "results": results},
                      f, indent=2)
        print(f"\nraw results: {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
