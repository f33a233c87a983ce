"""Soak: a front and a handler pool under a mixed load for minutes; failures and RSS growth.

Run from anywhere, with the virtualenv's Python::

    /tmp/venv/bin/python bench/soak.py                    # 10 minutes
    /tmp/venv/bin/python bench/soak.py --minutes 2        # a quick check
    /tmp/venv/bin/python bench/soak.py --minutes 60 --json bench/results/soak.json

Starts ``python -m wsgi_zmq.front --bind 127.0.0.1:0 --backend tcp://127.0.0.1:*`` and
``python -m wsgi_zmq.handler bench.soak_app:app --connect ENDPOINT --workers 2`` (the port
and the endpoint read from the front's startup lines), then runs a handful of paced client
threads for ``--minutes``, raw sockets on loopback, every answer checked:

- ``hello``: ``GET /`` on keep-alive connections, 200 and ``Hello, World!``;
- ``download``: ``GET /download?size=1MiB`` read fully, length and sha256 checked;
- ``upload`` / ``chunked``: ``POST`` and ``PUT /upload`` of 1 MiB with ``Content-Length``
  or chunked (64 KiB chunks); the app answers the length and sha256 it read, checked;
- ``slow``: the download read 64 KiB per 100 ms through a 64 KiB receive buffer;
- ``abort-up`` / ``abort-down``: an upload (Content-Length or chunked) closed after half its
  body, a download closed after half its body: no answer to check ("aborted by design"),
  though a download's response head is checked and an error before the half is a failure.

Once per ``--interval`` (60 s) it prints the requests done in that interval per kind, the
failures, the RSS (``VmRSS``) of the front, the handler master and each worker (the
master's children, read from ``/proc``, so recycled workers are followed) and the CPU share
of the client and the servers. At the end: totals, and per process the RSS after the first
interval and at the end with the growth. Exit status 1 if any request failed or a process
grew by more than 5 % ("RSS flat within 5 % after the first minute"), 130 on Ctrl-C.
Every process started here is stopped by PID (TERM, then KILL after a deadline), whatever
the exit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shlex
import socket
import statistics
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
from servers import (
    BOOTING_WORKER,
    LISTENING,
    REPO,
    WORKER_CONNECTED,
    BenchError,
    Launcher,
    Server,
    exit_on_signals,
    read_memory,
    read_stat,
    wait_http,
)

sys.path.insert(0, REPO)  # the app module, as the servers import it: bench.soak_app
from bench.soak_app import HELLO, pattern  # noqa: E402

APP = "bench.soak_app:app"
BACKEND = re.compile(r"Backend at: (\S+)")
MIB = 1 << 20
START_SECONDS = 30.0
#: a socket operation that makes no progress for this long is a failure
IO_TIMEOUT = 30.0
RECV_SIZE = 65536
CHUNK_SIZE = 65536
SLOW_PIECE = 65536
SLOW_PAUSE = 0.1
SLOW_RCVBUF = 65536
#: a keep-alive connection idle for longer is not reused (the front's default is 2 s)
REUSE_IDLE = 1.0
MAX_GROWTH = 0.05
#: RSS is read every RSS_EVERY seconds; a report shows the median of the last RSS_WINDOW
RSS_EVERY = 1.0
RSS_WINDOW = 10.0
UPLOAD_VARIANTS = 4
KINDS = ("hello", "download", "upload", "chunked", "slow", "abort-up", "abort-down")
ABORTED = ("abort-up", "abort-down")
LOG_LEVELS = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]")


class ProtocolError(Exception):
    """An answer that is not the one expected, or a connection that ended too early."""


# -- the HTTP client -----------------------------------------------------------------------

class Connection:
    """One client connection: raw socket, a receive buffer, HTTP/1.1 responses read by hand."""

    def __init__(self, address: tuple[str, int], rcvbuf: int | None = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(IO_TIMEOUT)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.buffer = bytearray()
        self.keep_alive = True
        self.requests = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, *parts: bytes | memoryview) -> None:
        self.requests += 1
        for part in parts:
            self.sock.sendall(part)

    def _fill(self, what: str) -> None:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ProtocolError(f"connection closed {what} (request {self.requests} on it)")
        self.buffer += data

    def _line(self, what: str) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > 4096:
                raise ProtocolError(f"a line of more than 4 KiB {what}")
            self._fill(what)
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 2]
        return line

    def read_head(self) -> tuple[int, dict[str, str]]:
        """The status and the fields (lower-case names) of the next response."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > 65536:
                raise ProtocolError("a response head of more than 64 KiB")
            self._fill(f"before the response head ({len(self.buffer)} bytes of it)")
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[:end + 4]
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not a status line: {status_line[:200]!r}")
        fields = {}
        for line in lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        self.keep_alive = (parts[0] == "HTTP/1.1"
                           and "close" not in fields.get("connection", "").lower())
        return int(parts[1]), fields

    def read_exact(self, size: int, consume: Callable[[bytes], None], what: str) -> None:
        got = 0
        if self.buffer:
            piece = bytes(self.buffer[:size])
            del self.buffer[:len(piece)]
            consume(piece)
            got = len(piece)
        while got < size:
            data = self.sock.recv(min(RECV_SIZE, size - got))
            if not data:
                raise ProtocolError(f"connection closed after {got} of {size} bytes of "
                                    f"{what}")
            consume(data)
            got += len(data)

    def read_body(self, fields: dict[str, str], consume: Callable[[bytes], None]) -> int:
        """Read the body of the response whose head was just read; return its length."""
        if "chunked" in fields.get("transfer-encoding", "").lower():
            total = 0
            while True:
                size = int(self._line("in a chunk size line").split(b";")[0], 16)
                if size == 0:
                    while self._line("in the trailer"):
                        pass
                    return total
                self.read_exact(size, consume, "a chunk")
                total += size
                if self._line("after a chunk"):
                    raise ProtocolError("a chunk longer than its size line said")
        if "content-length" not in fields:
            raise ProtocolError(f"a response with neither Content-Length nor chunked: "
                                f"{fields}")
        size = int(fields["content-length"])
        self.read_exact(size, consume, "the body")
        return size

    def read_small(self, fields: dict[str, str]) -> bytes:
        body = bytearray()

        def keep(data: bytes) -> None:
            if len(body) + len(data) > 65536:
                raise ProtocolError("an answer of more than 64 KiB where a short one was due")
            body.extend(data)

        self.read_body(fields, keep)
        return bytes(body)


class Paced:
    """A body consumer that hashes and sleeps ``pause`` after every ``piece`` bytes."""

    def __init__(self, digest: Any, piece: int, pause: float) -> None:
        self.digest = digest
        self.piece = piece
        self.pause = pause
        self.count = 0

    def __call__(self, data: bytes) -> None:
        self.digest.update(data)
        before = self.count // self.piece
        self.count += len(data)
        crossed = self.count // self.piece - before
        if crossed:
            time.sleep(self.pause * crossed)


# -- the load ------------------------------------------------------------------------------

@dataclass
class Totals:
    done: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def copy(self) -> Totals:
        return Totals(dict(self.done), dict(self.failed))


class Soak:
    """The shared state of the client threads: targets, expected digests, counts."""

    def __init__(self, args: argparse.Namespace, address: tuple[str, int]) -> None:
        self.args = args
        self.address = address
        self.host = f"{address[0]}:{address[1]}"
        self.size = args.size
        digest = hashlib.sha256()
        for piece in pattern(self.size):
            digest.update(piece)
        self.download_sha256 = digest.hexdigest()
        # a few different upload bodies, each framed both ways, built once
        self.bodies = []
        for variant in range(UPLOAD_VARIANTS):
            body = random.Random(variant).randbytes(self.size)
            chunked = b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + CHUNK_SIZE]),
                                                  body[i:i + CHUNK_SIZE])
                               for i in range(0, len(body), CHUNK_SIZE)) + b"0\r\n\r\n"
            self.bodies.append((body, chunked, hashlib.sha256(body).hexdigest()))
        self.lock = threading.Lock()
        self.totals = Totals()
        self.failures: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.started = self.stopped = time.monotonic()

    def count(self, kind: str) -> None:
        with self.lock:
            self.totals.done[kind] += 1

    def fail(self, kind: str, problem: str) -> None:
        with self.lock:
            self.totals.failed[kind] += 1
            if len(self.failures) < 200:
                self.failures.append({"t": round(time.monotonic() - self.started, 3),
                                      "kind": kind, "problem": problem})

    def snapshot(self) -> Totals:
        with self.lock:
            return self.totals.copy()

    def start(self, seconds: float) -> None:
        """Start every client thread; each stops by itself ``seconds`` (plus 2) from now
        or after its count, whichever comes first, or when ``stop`` is set."""
        pace = self.args.pace
        plan: list[tuple[str, float, list[tuple[str, Callable[[Client], None]]]]] = [
            ("hello", 0.005, [("hello", Client.hello)]) for _ in range(self.args.hello_clients)]
        plan += [
            ("download", 0.1, [("download", Client.download)]),
            ("upload", 0.1, [("upload", Client.upload_post), ("chunked", Client.chunked_put),
                             ("upload", Client.upload_put), ("chunked", Client.chunked_post)]),
            ("slow", 0.5, [("slow", Client.slow)]),
            ("abort", 0.25, [("abort-up", Client.abort_upload),
                            ("abort-down", Client.abort_download),
                            ("abort-up", Client.abort_chunked),
                            ("abort-down", Client.abort_download)]),
        ]
        self.started = time.monotonic()
        deadline = self.started + seconds + 2.0
        for number, (name, interval, actions) in enumerate(plan):
            interval /= pace
            cap = int(seconds / interval) + 1
            client = Client(self, number, actions, interval, cap, deadline)
            thread = threading.Thread(target=client.run, name=f"{name}-{number}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def finish(self, timeout: float) -> list[str]:
        """Stop the clients; return the names of threads still running after ``timeout``."""
        self.stop.set()
        self.stopped = time.monotonic()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]


class Client:
    """One client thread: its actions in turn, at most one per ``interval``, on its own
    keep-alive connection (the aborting actions use a fresh connection each)."""

    def __init__(self, soak: Soak, number: int,
                 actions: list[tuple[str, Callable[[Client], None]]],
                 interval: float, cap: int, deadline: float) -> None:
        self.soak = soak
        self.number = number
        self.actions = actions
        self.interval = interval
        self.cap = cap
        self.deadline = deadline
        self.conn: Connection | None = None
        self.idle_since = 0.0
        self.sequence = 0

    def run(self) -> None:
        soak = self.soak
        next_at = time.monotonic()
        try:
            while self.sequence < self.cap and not soak.stop.is_set():
                now = time.monotonic()
                if now >= self.deadline:
                    break
                if now < next_at:
                    soak.stop.wait(min(next_at, self.deadline) - now)
                    continue
                next_at = max(next_at + self.interval, now)
                kind, action = self.actions[self.sequence % len(self.actions)]
                self.sequence += 1
                try:
                    action(self)
                except (OSError, ProtocolError, ValueError) as exc:
                    self.drop()
                    soak.fail(kind, f"{kind} #{self.sequence} (client {self.number}): {exc!r}")
                else:
                    soak.count(kind)
        except Exception:  # a bug of this script: make it loud, not a silent thread
            soak.fail(self.actions[0][0],
                      f"client {self.number} crashed:\n{traceback.format_exc()}")
        finally:
            self.drop()

    def variant(self) -> int:
        """Which upload body: each action of the cycle goes through all of them in turn."""
        return (self.sequence // len(self.actions)) % UPLOAD_VARIANTS

    # -- connections

    def connection(self, rcvbuf: int | None = None) -> Connection:
        """The keep-alive connection, or a new one if it was idle for long enough that the
        front may be closing it (``--keep-alive``, 2 s by default): no request races that."""
        if self.conn is not None and time.monotonic() - self.idle_since > REUSE_IDLE:
            self.drop()
        if self.conn is None:
            self.conn = Connection(self.soak.address, rcvbuf)
        return self.conn

    def done_with(self, conn: Connection) -> None:
        self.idle_since = time.monotonic()
        if not conn.keep_alive or conn.buffer:
            self.drop()

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def head(self, method: str, target: str, fields: str = "") -> bytes:
        return f"{method} {target} HTTP/1.1\r\nHost: {self.soak.host}\r\n{fields}\r\n".encode()

    # -- the actions: each returns normally or raises OSError, ProtocolError or ValueError

    def hello(self) -> None:
        conn = self.connection()
        conn.send(self.head("GET", "/"))
        status, fields = conn.read_head()
        body = conn.read_small(fields)
        if status != 200 or body != HELLO:
            raise ProtocolError(f"GET /: status {status}, body {body[:200]!r}")
        self.done_with(conn)

    def _download(self, consume: Paced | None = None, rcvbuf: int | None = None) -> None:
        soak = self.soak
        conn = self.connection(rcvbuf)
        conn.send(self.head("GET", f"/download?size={soak.size}"))
        status, fields = conn.read_head()
        if status != 200:
            raise ProtocolError(f"GET /download: status {status}, "
                                f"{conn.read_small(fields)[:200]!r}")
        digest = hashlib.sha256()
        length = conn.read_body(fields, consume or digest.update)
        if consume is not None:
            digest = consume.digest
        if length != soak.size or digest.hexdigest() != soak.download_sha256:
            raise ProtocolError(f"GET /download: {length} bytes of sha256 "
                                f"{digest.hexdigest()}, not {soak.size} of "
                                f"{soak.download_sha256}")
        self.done_with(conn)

    def download(self) -> None:
        self._download()

    def slow(self) -> None:
        self._download(Paced(hashlib.sha256(), SLOW_PIECE, SLOW_PAUSE), SLOW_RCVBUF)

    def _upload(self, method: str, chunked: bool) -> None:
        body, framed, digest = self.soak.bodies[self.variant()]
        framing = ("Transfer-Encoding: chunked\r\n" if chunked
                   else f"Content-Length: {len(body)}\r\n")
        conn = self.connection()
        conn.send(self.head(method, "/upload",
                            f"Content-Type: application/octet-stream\r\n{framing}"),
                  framed if chunked else body)
        status, fields = conn.read_head()
        answer = conn.read_small(fields)
        if status != 200:
            raise ProtocolError(f"{method} /upload: status {status}, {answer[:200]!r}")
        read = json.loads(answer)
        if read != {"length": len(body), "sha256": digest}:
            raise ProtocolError(f"{method} /upload: the app read {read}, not "
                                f"{len(body)} bytes of sha256 {digest}")
        self.done_with(conn)

    def upload_post(self) -> None:
        self._upload("POST", False)

    def upload_put(self) -> None:
        self._upload("PUT", False)

    def chunked_post(self) -> None:
        self._upload("POST", True)

    def chunked_put(self) -> None:
        self._upload("PUT", True)

    def _abort_upload(self, chunked: bool) -> None:
        body, framed, _ = self.soak.bodies[self.variant()]
        framing = ("Transfer-Encoding: chunked\r\n" if chunked
                   else f"Content-Length: {len(body)}\r\n")
        payload = framed if chunked else body
        conn = Connection(self.soak.address)
        try:
            conn.send(self.head("POST", "/upload",
                                f"Content-Type: application/octet-stream\r\n{framing}"),
                      memoryview(payload)[:len(payload) // 2])
        finally:
            conn.close()  # halfway through the body: by design

    def abort_upload(self) -> None:
        self._abort_upload(False)

    def abort_chunked(self) -> None:
        self._abort_upload(True)

    def abort_download(self) -> None:
        soak = self.soak
        conn = Connection(soak.address)
        try:
            conn.send(self.head("GET", f"/download?size={soak.size}"))
            status, fields = conn.read_head()
            if status != 200 or fields.get("content-length") != str(soak.size):
                raise ProtocolError(f"GET /download: status {status}, Content-Length "
                                    f"{fields.get('content-length')!r}")
            conn.read_exact(soak.size // 2, lambda data: None, "the first half of the body")
        finally:
            conn.close()  # the second half unread: the close resets the connection


# -- the servers ---------------------------------------------------------------------------

@dataclass
class Stack:
    front: Server
    handler: Server
    url: str
    endpoint: str
    address: tuple[str, int]
    log_start: dict[str, int]


def start_servers(launcher: Launcher, args: argparse.Namespace) -> Stack:
    front = launcher.start("front", [sys.executable, "-m", "wsgi_zmq.front",
                                     "--bind", "127.0.0.1:0",
                                     "--backend", "tcp://127.0.0.1:*",
                                     *shlex.split(args.front_args)])
    front.roles = {"front": [front.pid]}
    url = front.wait_for(LISTENING, START_SECONDS)[0].group(1)
    endpoint = front.wait_for(BACKEND, START_SECONDS)[0].group(1)
    parts = urllib.parse.urlsplit(url)
    if parts.hostname != "127.0.0.1" or not parts.port or not endpoint.startswith(
            "tcp://127.0.0.1:"):
        raise BenchError(f"front: listening at {url}, backend {endpoint}: not loopback")
    handler = launcher.start("handler", [sys.executable, "-m", "wsgi_zmq.handler", APP,
                                         "--connect", endpoint,
                                         "--workers", str(args.workers),
                                         *shlex.split(args.handler_args)])
    workers = [int(m.group(1))
               for m in handler.wait_for(BOOTING_WORKER, START_SECONDS, args.workers)]
    handler.roles = {"master": [handler.pid], "worker": workers}
    connected = {int(m.group(1))
                 for m in front.wait_for(WORKER_CONNECTED, START_SECONDS, args.workers)}
    if connected != set(workers):
        raise BenchError(f"workers {sorted(connected)} connected, the master booted "
                         f"{workers}\n{front.tail()}")
    wait_http(url, front, START_SECONDS, "/")
    return Stack(front, handler, url, endpoint, ("127.0.0.1", parts.port),
                 {"front": len(front.lines), "handler": len(handler.lines)})


# -- the samples ---------------------------------------------------------------------------

def processes(stack: Stack) -> list[tuple[str, int]]:
    """(role, PID) of the front, the handler master and its children (the workers)."""
    found = [("front", stack.front.pid), ("master", stack.handler.pid)]
    try:
        children = psutil.Process(stack.handler.pid).children()
    except psutil.NoSuchProcess:
        children = []
    found += [("worker", child.pid) for child in sorted(children, key=lambda c: c.pid)]
    return found


def read_rss(stack: Stack, reads: dict[tuple[int, int], list[tuple[float, int]]],
             at: float) -> None:
    """Append the VmRSS of every server process, now, to its list of reads."""
    for _role, pid in processes(stack):
        memory, stat = read_memory(pid), read_stat(pid)
        if memory is not None and stat is not None and "VmRSS" in memory:
            reads.setdefault((pid, stat.starttime), []).append((at, memory["VmRSS"]))


def take_sample(stack: Stack, soak: Soak, at: float,
                reads: dict[tuple[int, int], list[tuple[float, int]]]) -> dict[str, Any]:
    """The counts so far, and per server process its CPU time and its RSS: the median of
    the reads of the last ``RSS_WINDOW`` seconds (bodies in flight make one read jitter)."""
    read_rss(stack, reads, at)
    procs = []
    for role, pid in processes(stack):
        stat = read_stat(pid)
        if stat is None or (pid, stat.starttime) not in reads:
            continue  # gone meanwhile (or a zombie)
        recent = [rss for t, rss in reads[(pid, stat.starttime)] if t > at - RSS_WINDOW]
        procs.append({"role": role, "pid": pid, "starttime": stat.starttime,
                      "rss": int(statistics.median(recent)), "rss_reads": len(recent),
                      "rss_min": min(recent), "rss_max": max(recent), "cpu_s": stat.cpu})
    times = os.times()
    return {"t": at, "totals": soak.snapshot(), "procs": procs,
            "client_cpu_s": times.user + times.system}


def clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def mib(value: float) -> str:
    return f"{value / MIB:.1f}"


def sample_line(sample: dict[str, Any], previous: dict[str, Any]) -> str:
    done, before = sample["totals"], previous["totals"]
    counts = "".join(f"{done.done[k] - before.done[k]:>{max(len(k), 5) + 1}}" for k in KINDS)
    failed = sum(done.failed.values()) - sum(before.failed.values())
    rss = []
    for proc in sample["procs"]:
        label = proc["role"] if proc["role"] != "worker" else f"w{proc['pid']}"
        rss.append(f"{label} {mib(proc['rss'])}")
    wall = sample["t"] - previous["t"]
    cpu_before = {(p["pid"], p["starttime"]): p["cpu_s"] for p in previous["procs"]}

    def share(roles: tuple[str, ...]) -> float:
        used = sum(p["cpu_s"] - cpu_before.get((p["pid"], p["starttime"]), 0.0)
                   for p in sample["procs"] if p["role"] in roles)
        return 100 * used / wall if wall > 0 else 0.0

    client = 100 * (sample["client_cpu_s"] - previous["client_cpu_s"]) / wall if wall else 0
    return (f"{clock(sample['t']):>5}{counts}{failed:>6} | {', '.join(rss)} | "
            f"CPU% client {client:.0f} front {share(('front',)):.0f} "
            f"handler {share(('worker', 'master')):.0f}")


def header_line() -> str:
    counts = "".join(f"{k:>{max(len(k), 5) + 1}}" for k in KINDS)
    return f"{'time':>5}{counts}{'fail':>6} | RSS MiB (w = worker PID) | CPU% of one core"


def growth(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per process of the first sample: its RSS then and in the last sample."""
    first, last = samples[0], samples[-1]
    end = {(p["pid"], p["starttime"]): p for p in last["procs"]}
    rows = []
    for proc in first["procs"]:
        row = {"role": proc["role"], "pid": proc["pid"], "first": proc["rss"]}
        later = end.get((proc["pid"], proc["starttime"]))
        if later is None:
            row |= {"last": None, "growth": None}
        else:
            row |= {"last": later["rss"], "growth": later["rss"] / proc["rss"] - 1}
        rows.append(row)
    known = {(p["pid"], p["starttime"]) for p in first["procs"]}
    for key, proc in end.items():
        if key not in known:  # a worker that replaced one
            rows.append({"role": proc["role"], "pid": proc["pid"], "first": None,
                         "last": proc["rss"], "growth": None})
    return rows


def server_log(stack: Stack) -> list[str]:
    """The warnings and errors the servers logged since they were ready."""
    lines = []
    for name, server in (("front", stack.front), ("handler", stack.handler)):
        lines += [f"{name}: {line}" for line in server.lines[stack.log_start[name]:]
                  if LOG_LEVELS.search(line)]
    return lines


# -- the run -------------------------------------------------------------------------------

def run(stack: Stack, soak: Soak, args: argparse.Namespace,
        samples: list[dict[str, Any]]) -> None:
    """Run the load for ``--minutes``, appending one sample per ``--interval``."""
    seconds = args.minutes * 60
    marks = [min(k * args.interval, seconds)
             for k in range(1, math.ceil(seconds / args.interval - 1e-9) + 1)]
    print(header_line(), flush=True)
    reads: dict[tuple[int, int], list[tuple[float, int]]] = {}
    samples.append(take_sample(stack, soak, 0.0, reads))
    soak.start(seconds)
    for mark in marks:
        while (left := soak.started + mark - time.monotonic()) > 0:
            for server in (stack.front, stack.handler):
                if server.proc.poll() is not None:
                    raise BenchError(f"the {server.name} exited with "
                                     f"{server.proc.returncode}\n{server.tail()}")
            soak.stop.wait(min(left, RSS_EVERY))
            if left > RSS_EVERY:
                read_rss(stack, reads, time.monotonic() - soak.started)
        samples.append(take_sample(stack, soak, mark, reads))
        print(sample_line(samples[-1], samples[-2]), flush=True)


def report(result: dict[str, Any]) -> None:
    totals: Totals = result["totals"]
    print()
    print("total: " + ", ".join(f"{k} {totals.done[k]}" for k in KINDS)
          + f" ({sum(totals.done[k] for k in ABORTED)} of them aborted by design)")
    failed = sum(totals.failed.values())
    by_kind = ", ".join(f"{k} {n}" for k, n in totals.failed.items() if n)
    print(f"failures: {failed}" + (f" ({by_kind})" if by_kind else ""))
    for failure in result["failures"][:10]:
        print(f"    {failure['t']:8.1f} s  {failure['problem']}")
    if result["stuck_threads"]:
        print(f"client threads that did not stop: {', '.join(result['stuck_threads'])}")
    rows = result["growth"]
    if rows:
        print()
        print(f"RSS in MiB after the first {clock(result['baseline_t'])} and at "
              f"{clock(result['end_t'])}; growth must stay within {MAX_GROWTH:.0%}")
        print(f"{'process':<16}{'first':>8}{'end':>8}{'growth':>9}")
        for row in rows:
            name = f"{row['role']} {row['pid']}"
            first = mib(row["first"]) if row["first"] is not None else "-"
            last = mib(row["last"]) if row["last"] is not None else "gone"
            grew = (f"{row['growth']:+.1%}" if row["growth"] is not None
                    else "new" if row["first"] is None else "-")
            flag = "  OVER" if row["growth"] is not None and row["growth"] > MAX_GROWTH else ""
            print(f"{name:<16}{first:>8}{last:>8}{grew:>9}{flag}")
    log = result["server_log"]
    if log:
        print()
        print(f"the servers logged {len(log)} warnings or errors; the first ones:")
        for line in log[:10]:
            print(f"    {line}")
    print()
    if result["error"]:
        print(f"the run stopped on an error: {result['error'].splitlines()[0]}")
    if result["interrupted"]:
        print(f"interrupted at {clock(result['stopped_t'])}: partial figures")
    print(f"failures == 0: {'ok' if failed == 0 else 'FAILED'}; RSS flat within "
          f"{MAX_GROWTH:.0%} after the first minute: "
          f"{'ok' if result['flat'] else 'FAILED'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="how long the load runs (default 10)")
    parser.add_argument("--interval", type=float, default=60.0,
                        help="seconds between report lines; the first is the RSS baseline "
                             "(default 60)")
    parser.add_argument("--size", type=int, default=MIB,
                        help="bytes per download and upload (default 1 MiB)")
    parser.add_argument("--pace", type=float, default=1.0,
                        help="multiply every client's request rate by this (default 1)")
    parser.add_argument("--hello-clients", type=int, default=2,
                        help="keep-alive hello-world client threads (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="handler workers (default 2)")
    parser.add_argument("--front-args", default="", metavar="ARGS",
                        help="more arguments for the front (one string, shell-split)")
    parser.add_argument("--handler-args", default="", metavar="ARGS",
                        help="more arguments for the handler pool, e.g. '--body-ring 0'")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.interval <= 0 or args.pace <= 0:
        parser.error("--minutes, --interval and --pace must be positive")
    if args.size < 2 or args.workers < 1 or args.hello_clients < 0:
        parser.error("--size must be at least 2, --workers at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    print(f"soak: {args.minutes:g} min, {args.workers} workers, bodies of {args.size} bytes, "
          f"pace x{args.pace:g}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    samples: list[dict[str, Any]] = []
    status = 0
    error = None
    soak = None
    stack = None
    with Launcher() as launcher:
        try:
            try:
                stack = start_servers(launcher, args)
                print(f"front {stack.front.pid} at {stack.url}, backend {stack.endpoint}; "
                      f"handler master {stack.handler.pid}, workers "
                      f"{stack.handler.roles['worker']}", flush=True)
                soak = Soak(args, stack.address)
                run(stack, soak, args, samples)
            except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, or TERM or HUP
                print("\ninterrupted: stopping the clients and the servers", file=sys.stderr)
                status = int(exc.code) if isinstance(exc, SystemExit) and exc.code else 130
            except (BenchError, OSError) as exc:
                error = str(exc)
                print(f"\nerror: {exc}", file=sys.stderr)
                status = 1
            finally:
                stuck = soak.finish(IO_TIMEOUT + 10) if soak is not None else []
            if soak is None or stack is None:
                return status or 1
            log = server_log(stack)
        finally:
            if stack is not None:
                print("stopping the servers ...", flush=True)
    totals = soak.snapshot()
    failed = sum(totals.failed.values()) + len(stuck)
    rows = growth(samples[1:]) if len(samples) > 1 else []
    flat = bool(rows) and all(r["growth"] is None or r["growth"] <= MAX_GROWTH for r in rows)
    result = {"totals": totals, "failures": soak.failures, "stuck_threads": stuck,
              "interrupted": status >= 128,
              "stopped_t": round(soak.stopped - soak.started, 3),
              "growth": rows, "flat": flat, "server_log": log, "error": error,
              "baseline_t": samples[1]["t"] if len(samples) > 1 else 0.0,
              "end_t": samples[-1]["t"] if samples else 0.0}
    report(result)
    if failed or not flat:
        status = status or 1
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        for sample in samples:
            sample["totals"] = vars(sample["totals"])
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "cpus": os.cpu_count(), "pids": {
                "front": stack.front.pid, "master": stack.handler.pid},
                "samples": samples, **result, "totals": vars(totals),
                "status": status}, f, indent=2)
        print(f"raw figures: {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
