"""Jobs per second of a 100-byte echo, 64 clients: wsgi_zmq's job broker against others.

wsgi_zmq's front as a pure job broker against the ZeroMQ guide's load-balancing broker, and
majortomo's broker when it is installed.

Run from anywhere, with the virtualenv's Python::

    .venv/bin/python bench/jobs.py                                   # 3 rounds of 5 s each
    .venv/bin/python bench/jobs.py --servers minimal --rounds 1 --duration 2
    .venv/bin/python bench/jobs.py --workers 1 --json bench/results/jobs.json

The systems, each with ``--workers N`` worker processes (default 2) that run
``bench/job_echo.py:echo``:

- ``wsgi_zmq``: ``python -m wsgi_zmq.front --job-bind tcp://127.0.0.1:PJ --backend
  tcp://127.0.0.1:PB`` (no ``--bind``: no HTTP listener) and ``python -m wsgi_zmq.handler
  --job job_echo:echo --service echo -w N --connect tcp://127.0.0.1:PB``; ready once the
  front logged ``Jobs at:`` (the one pattern ``JOBS_AT`` below) and ``Worker PID@HOST
  connected`` for each PID the pool logged in ``Worker PID serving``. ``--capacity N`` is
  passed to the pool (default: the pool's own, which lets the front hand a worker several
  jobs before it answers one; ``--capacity 1`` is the minimal broker's one job per worker).
- ``minimal``: the guide's load-balancing broker (chapter 3, "lbbroker") in plain pyzmq, this
  script run as ``--role broker``: a ROUTER for the clients, a ROUTER for the workers, a
  queue of free workers; it always polls the workers' socket and the clients' socket only
  while a worker is free, and handles one message per socket per poll, as the guide does.
  No heartbeats, no service lookup, no parsing: a client's frames go to the worker as they
  came, and the worker's frames go back as they came. A worker is free again only once it
  has answered, so each worker has one job at a time and waits a broker round trip between
  two. Its workers (``--role worker``) are the guide's REQ workers: ``READY``, then for
  each request the same frames back with the command byte REQUEST turned into FINAL and the
  payload through ``echo``. So its clients send exactly the MDP/0.2 frames they send
  wsgi_zmq and get the same FINAL back: the client side of the wire is byte for byte the
  same, and what differs is the broker (the guide's plain form, a REQ client's
  ``["", body]``, would have measured a different client too).
- ``majortomo`` (only if ``import majortomo`` works: ``pip install majortomo six``):
  majortomo's ``Broker`` class on one ROUTER (``--role majortomo-broker``, its logger at
  WARNING: majortomo's own command line logs every job at INFO to stderr, and that would
  measure logging) and its ``Worker`` (``--role majortomo-worker``), heartbeats at their
  defaults. majortomo 0.2.0 does not frame the client side as RFC 18 does: a client sends
  ``["", "MDPC02", 0x02, service, body]`` (an empty delimiter first, and the *worker's*
  REQUEST code) and gets ``["", "MDPC02", 0x04, body]`` (the worker's FINAL code, no service
  frame), so its clients use that framing (``FRAMINGS["majortomo"]``).

MDP/0.2 is ZeroMQ RFC 18: a client's DEALER sends REQUEST ``["MDPC02", 0x01, service,
body...]`` and gets zero or more PARTIAL (0x02) then one FINAL (0x03), ``["MDPC02", 0x03,
service, body...]``; the worker's commands are READY 0x01, REQUEST 0x02, PARTIAL 0x03, FINAL
0x04, HEARTBEAT 0x05 and DISCONNECT 0x06.

The load: ``--clients`` DEALER sockets (default 64) spread over ``--load-procs`` processes
(default 2, this script as ``--role load``, one ``zmq.Poller`` each), each socket with
exactly one request in flight: send, wait for the reply, send the next. Every request
carries a 100-byte payload unique to its socket and sequence number; a reply that is not the
expected frames with that payload is an error, and so is a request left unanswered 2 s after
the end. A load process first sends one request on each socket and waits for every reply
(so the whole path works), says so, and waits for SIGUSR1; the parent sends it to every load
process at once, each warms up for ``--warmup`` s (default 1) and then measures for
``--duration`` s (default 5), sending at most ``--max-jobs`` requests in all. The parent
reads utime + stime from ``/proc/PID/stat`` of every process, load processes included, when
the warm-up ends and when the measurement ends.

Each round starts every system fresh, the order rotated by one each round (a slow spell of
the shared 2-core machine then hits every system), and stops every process by PID at the end
of its run (``servers.Launcher``). Reading the output: one line per run as it finishes, then
medians over rounds: jobs/s, p50 and p99 latency (send to reply, per request), CPU
microseconds per job of the ``broker`` process, the ``worker`` processes (their sum),
``total`` (every process of the system: wsgi_zmq's pool master too) and ``load`` (the load
processes: they share the 2 cores with the system); ``errors`` should be 0. Last, wsgi_zmq's
medians as ratios to each other system's, with the range of the per-round ratios: jobs/s
above 1, p99 and broker CPU per job below 1 favour wsgi_zmq. A run that fails (a process
exits or does not log its line in time) prints one line, what was awaited and the last line
the process logged, and the next run goes on; ``--verbose`` prints the log tail too, and
``--json`` keeps it. Exit status 1 if a run failed or had errors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from report import fmt, med, ratios, spread
from servers import (
    REPO,
    WORKER_CONNECTED,
    BenchError,
    Launcher,
    Server,
    cpu_seconds,
    exit_on_signals,
    free_port,
)

BENCH = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.abspath(__file__)
SERVERS = ("wsgi_zmq", "minimal", "majortomo")

#: wsgi_zmq's front, once it listens for job clients (``python -m wsgi_zmq.front --job-bind``)
JOBS_AT = re.compile(r"Jobs at: (tcp://\S+?)(?:,\S+)? \((\d+)\)")
#: the first of the two lines of wsgi_zmq's front that say it is ready
STARTED = re.compile(f"{JOBS_AT.pattern}|Backend at: ")
#: wsgi_zmq's handler worker, once it has connected to the front
WORKER_SERVING = re.compile(r"Worker (\d+) serving ")
#: this script's brokers (minimal and majortomo): clients' endpoint, workers' endpoint, PID
BROKER_AT = re.compile(r"Broker at: (tcp://\S+) (tcp://\S+) \((\d+)\)")
#: this script's brokers, for each worker that registered
BROKER_WORKER_READY = re.compile(r"Worker \S+ ready")
LOAD_READY = re.compile(r"Load (\d+) ready")
LOAD_RESULT = re.compile(r"^RESULT (\{.*\})$")

# MDP/0.2 (ZeroMQ RFC 18)
MDP_CLIENT = b"MDPC02"
MDPC_REQUEST = b"\x01"
MDPC_FINAL = b"\x03"
SERVICE = b"echo"
#: the guide's lbbroker: a worker's first message
LB_READY = b"READY"

PAYLOAD_SIZE = 100
START_SECONDS = 30.0
#: how long a load process waits for the first reply on each socket; less than the parent
#: waits for it to say so, so that its own account of what went wrong is what shows
FIRST_REPLY_SECONDS = 10.0
#: how long the load waits for the replies still in flight when the measurement ends
DRAIN_SECONDS = 2.0
#: the load processes get this long beyond warm-up + duration + drain to report
RESULT_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Framing:
    """The frames a client sends around a payload, and the frames it expects back."""

    request: tuple[bytes, ...]
    reply: tuple[bytes, ...]


FRAMINGS = {
    # RFC 18: REQUEST out, FINAL back; wsgi_zmq and the minimal broker
    "mdp": Framing((MDP_CLIENT, MDPC_REQUEST, SERVICE), (MDP_CLIENT, MDPC_FINAL, SERVICE)),
    # majortomo 0.2.0's own reading of MDP/0.2 (see the module docstring)
    "majortomo": Framing((b"", MDP_CLIENT, b"\x02", SERVICE), (b"", MDP_CLIENT, b"\x04")),
}


# -- the processes this script runs as (--role) ----------------------------------------------

def watch_parent(parent: int) -> None:
    """Exit as soon as the benchmark that started this process is gone, even killed with
    SIGKILL: a daemon thread that wakes once a second, so it costs the measured loop
    nothing."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def run_broker() -> int:
    """The guide's load-balancing broker (lbbroker), frames passed through unchanged.

    Clients (DEALER) send ``[frames...]``, which arrive as ``[client, frames...]``; a REQ
    worker gets ``[client, "", frames...]`` and answers ``[client, "", reply...]``, which
    goes back to the client as ``[reply...]``. Runs until killed.
    """
    import zmq

    ctx = zmq.Context()
    frontend = ctx.socket(zmq.ROUTER)
    backend = ctx.socket(zmq.ROUTER)
    for sock in (frontend, backend):
        sock.linger = 0
        sock.bind("tcp://127.0.0.1:*")
    print(f"Broker at: {frontend.last_endpoint.decode()} {backend.last_endpoint.decode()} "
          f"({os.getpid()})", flush=True)
    free: deque[bytes] = deque()
    both = zmq.Poller()
    both.register(backend, zmq.POLLIN)
    both.register(frontend, zmq.POLLIN)
    workers_only = zmq.Poller()
    workers_only.register(backend, zmq.POLLIN)
    while True:
        events = dict((both if free else workers_only).poll())
        if backend in events:
            message = backend.recv_multipart()  # [worker, "", client or READY, "", reply...]
            free.append(message[0])
            if message[2] == LB_READY:
                print(f"Worker {message[0].hex()} ready", flush=True)
            else:
                frontend.send_multipart([message[2], *message[4:]])
        if frontend in events:  # polled only while a worker was free
            message = frontend.recv_multipart()  # [client, frames...]
            backend.send_multipart([free.popleft(), b"", message[0], b"", *message[1:]])


def run_worker(endpoint: str) -> int:
    """The guide's REQ worker for the minimal broker: ``READY``, then each request's frames
    back with REQUEST turned into FINAL and the body through ``echo``. Runs until killed."""
    import zmq
    from job_echo import echo

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    sock.connect(endpoint)
    sock.send(LB_READY)
    while True:
        client, empty, header, _command, service, *body = sock.recv_multipart()
        sock.send_multipart([client, empty, header, MDPC_FINAL, service, *map(echo, body)])


def run_majortomo_broker() -> int:
    """majortomo's Broker on a free loopback port, its logging at WARNING; it prints the
    lines this script waits for. Runs until killed."""
    import logging

    import zmq
    from majortomo.broker import Broker

    logging.basicConfig(level=logging.WARNING)

    class ReadyBroker(Broker):  # type: ignore[misc]
        def bind(self) -> None:
            super().bind()
            endpoint = self._socket.last_endpoint.decode()
            print(f"Broker at: {endpoint} {endpoint} ({os.getpid()})", flush=True)

        def _handle_worker_ready(self, worker_id: bytes, service: bytes) -> None:
            super()._handle_worker_ready(worker_id, service)
            print(f"Worker {worker_id.hex()} ready", flush=True)

    ReadyBroker(bind="tcp://127.0.0.1:*", zmq_context=zmq.Context()).run()
    return 1  # run() returns only if the broker was stopped, which nothing here does


def run_majortomo_worker(endpoint: str) -> int:
    """majortomo's Worker for the ``echo`` service. Runs until killed."""
    import logging

    import zmq
    from job_echo import echo
    from majortomo.worker import Worker, WorkerRequestsIterator

    logging.basicConfig(level=logging.WARNING)
    requests = WorkerRequestsIterator(Worker(endpoint, SERVICE.decode(),
                                             zmq_context=zmq.Context()))
    for request in requests:
        requests.send_reply_final([echo(frame) for frame in request])
    return 1


def payload_of(client: int, seq: int) -> bytes:
    """A 100-byte payload unique to a client socket and its request number."""
    head = b"%05d:%012d:" % (client, seq)
    return head + b"x" * (PAYLOAD_SIZE - len(head))


def run_load(args: argparse.Namespace) -> int:
    """One load process: ``args.sockets`` DEALERs with one request in flight each.

    1. Connect every socket, send one request on each, wait for every reply
       (``FIRST_REPLY_SECONDS``), then print ``Load PID ready``.
    2. Wait for SIGUSR1 (``START_SECONDS``), warm up for ``args.warmup`` s, measure for
       ``args.duration`` s or until ``args.max_sends`` requests were sent.
    3. Wait ``DRAIN_SECONDS`` for the replies in flight, print ``RESULT {json}``: replies
       in the measured interval, its bounds on the monotonic clock (shared by every process
       of the machine), a histogram of their latencies in whole microseconds, errors.
    """
    import zmq

    framing = FRAMINGS[args.framing]
    request_head, reply_head = list(framing.request), list(framing.reply)
    ctx = zmq.Context()
    socks = []
    poller = zmq.Poller()
    for _ in range(args.sockets):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(args.connect)
        poller.register(sock, zmq.POLLIN)
        socks.append(sock)
    index = {sock: i for i, sock in enumerate(socks)}
    clients = [args.first_client + i for i in range(len(socks))]
    seq = [0] * len(socks)
    expected: list[bytes | None] = [None] * len(socks)
    sent_at = [0.0] * len(socks)
    sends = 0
    wrong: list[list[bytes]] = []  # the first wrong reply, with what was expected

    def send(i: int) -> None:
        nonlocal sends
        seq[i] += 1
        payload = payload_of(clients[i], seq[i])
        expected[i] = payload
        sent_at[i] = time.monotonic()
        socks[i].send_multipart([*request_head, payload])
        sends += 1

    def receive(sock: Any) -> tuple[int, bool]:
        """The socket's index, and whether its reply is the one expected."""
        i = index[sock]
        frames = sock.recv_multipart()
        good = frames[:-1] == reply_head and frames[-1] == expected[i]
        if not good:
            if not wrong:
                wrong.extend([frames, [*reply_head, expected[i] or b"(nothing)"]])
            if args.verbose_errors:
                print(f"Load {os.getpid()}: reply {frames!r}, expected "
                      f"{[*reply_head, expected[i]]!r}", flush=True)
        expected[i] = None
        return i, good

    def wait_replies(deadline: float) -> tuple[int, int]:
        """Wait for every reply in flight until ``deadline``: (good, bad) replies."""
        good = bad = 0
        while any(e is not None for e in expected):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for sock, _ in poller.poll(math.ceil(left * 1000)):
                _, ok = receive(sock)
                good, bad = good + ok, bad + (not ok)
        return good, bad

    for i in range(len(socks)):
        send(i)
    good, bad = wait_replies(time.monotonic() + FIRST_REPLY_SECONDS)
    missing = sum(e is not None for e in expected)
    if bad or missing:
        example = f"; the first: {wrong[0]!r}, not {wrong[1]!r}" if wrong else ""
        print(f"Load {os.getpid()}: the first requests got {bad} wrong replies and "
              f"{missing} no reply in {FIRST_REPLY_SECONDS:g} s{example}", flush=True)
        return 1
    print(f"Load {os.getpid()} ready: {len(socks)} sockets at {args.connect}", flush=True)
    if signal.sigtimedwait({signal.SIGUSR1}, START_SECONDS) is None:
        print(f"Load {os.getpid()}: no start signal in {START_SECONDS:g} s", flush=True)
        return 1

    start = time.monotonic() + args.warmup
    end = start + args.duration
    jobs = errors = 0
    latencies: Counter[int] = Counter()
    for i in range(len(socks)):
        send(i)
    now = time.monotonic()
    while now < end and sends < args.max_sends:
        boundary = start if now < start else end
        for sock, _ in poller.poll(max(1, math.ceil((boundary - now) * 1000))):
            i, ok = receive(sock)
            now = time.monotonic()
            if not ok:
                errors += 1
            elif start <= now < end:
                jobs += 1
                latencies[int((now - sent_at[i]) * 1e6)] += 1
            if now < end and sends < args.max_sends:
                send(i)
        now = time.monotonic()
    ended = min(now, end)
    good, bad = wait_replies(time.monotonic() + DRAIN_SECONDS)
    errors += bad
    lost = sum(e is not None for e in expected)
    result = {"pid": os.getpid(), "jobs": jobs, "start": start, "end": ended,
              "capped": sends >= args.max_sends, "errors": errors, "lost": lost,
              "latency_us": dict(latencies)}
    print("RESULT " + json.dumps(result, separators=(",", ":")), flush=True)
    return 0


def run_role(args: argparse.Namespace) -> int:
    if args.role == "load":
        # blocked before any thread starts (ours, zmq's I/O threads), since a thread that
        # does not block SIGUSR1 would take the parent's start signal and die of it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    watch_parent(args.parent)
    if args.role == "broker":
        return run_broker()
    if args.role == "worker":
        return run_worker(args.connect)
    if args.role == "majortomo-broker":
        return run_majortomo_broker()
    if args.role == "majortomo-worker":
        return run_majortomo_worker(args.connect)
    return run_load(args)


# -- starting a system -------------------------------------------------------------------------

@dataclass
class System:
    """A running system: where its clients connect, how they frame, its processes."""

    name: str
    endpoint: str
    framing: str
    servers: list[Server]  # in the order they were started; stopped in reverse
    roles: dict[str, list[int]] = field(default_factory=dict)


def role_argv(role: str, *extra: str) -> list[str]:
    return [sys.executable, SCRIPT, "--role", role, "--parent", str(os.getpid()), *extra]


def start_wsgi_zmq(launcher: Launcher, args: argparse.Namespace, servers: list[Server]
                   ) -> System:
    """The front as a job broker (no HTTP listener) and a job pool of ``args.workers``."""
    jobs, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    front = launcher.start("wsgi_zmq-front", [sys.executable, "-m", "wsgi_zmq.front",
                                              "--job-bind", jobs, "--backend", backend])
    servers.append(front)
    # "Backend at:" is the front's last startup line and "Jobs at:" comes just before it
    # (front/server.py): once the one is there and the other is not, fail now, not in 30 s
    first = front.wait_for(STARTED, START_SECONDS)[0]
    match = first if first.group(1) else front.wait_for(JOBS_AT, 2.0)[0]
    endpoint, broker = match.group(1), int(match.group(2))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [BENCH, REPO, *filter(None, [os.environ.get("PYTHONPATH")])]))
    capacity = ["--capacity", str(args.capacity)] if args.capacity else []
    pool = launcher.start("wsgi_zmq-pool", [
        sys.executable, "-m", "wsgi_zmq.handler", "--job", "job_echo:echo", "--service",
        SERVICE.decode(), "-w", str(args.workers), "--connect", backend, *capacity], env=env)
    servers.append(pool)
    workers = [int(m.group(1)) for m in pool.wait_for(WORKER_SERVING, START_SECONDS,
                                                      args.workers)]
    connected = {int(m.group(1))
                 for m in front.wait_for(WORKER_CONNECTED, START_SECONDS, args.workers)}
    if connected != set(workers):
        raise BenchError(f"wsgi_zmq: workers {sorted(connected)} connected to the front, but "
                         f"the pool started {workers}\n{pool.tail()}")
    return System("wsgi_zmq", endpoint, "mdp", servers,
                  {"broker": [broker], "master": [pool.pid], "worker": workers})


def start_broker_and_workers(launcher: Launcher, args: argparse.Namespace, name: str,
                             servers: list[Server]) -> System:
    """This script's minimal broker or majortomo's, and ``args.workers`` worker processes."""
    prefix = "majortomo-" if name == "majortomo" else ""
    broker = launcher.start(f"{name}-broker", role_argv(prefix + "broker"))
    servers.append(broker)
    match = broker.wait_for(BROKER_AT, START_SECONDS)[0]
    clients, backend = match.group(1), match.group(2)
    workers = []
    for n in range(args.workers):
        worker = launcher.start(f"{name}-worker{n}",
                                role_argv(prefix + "worker", "--connect", backend))
        servers.append(worker)
        workers.append(worker.pid)
    broker.wait_for(BROKER_WORKER_READY, START_SECONDS, args.workers)
    return System(name, clients, "majortomo" if name == "majortomo" else "mdp", servers,
                  {"broker": [int(match.group(3))], "worker": workers})


def start_system(launcher: Launcher, name: str, args: argparse.Namespace,
                 servers: list[Server]) -> System:
    """Start one system and wait until every worker is registered with its broker. Every
    process started is appended to ``servers`` at once, so that a failure stops it too."""
    if name == "wsgi_zmq":
        return start_wsgi_zmq(launcher, args, servers)
    return start_broker_and_workers(launcher, args, name, servers)


# -- one run -------------------------------------------------------------------------------

def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as whole numbers allow."""
    return [total // parts + (k < total % parts) for k in range(parts)]


def sleep_until(deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(left)


def cpu_by_role(roles: dict[str, list[int]]) -> dict[str, float | None]:
    """CPU seconds so far of every role's processes together; None if one is gone."""
    cpu: dict[str, float | None] = {}
    for role, pids in roles.items():
        used = [cpu_seconds(pid) for pid in pids]
        cpu[role] = None if None in used else sum(u or 0.0 for u in used)
    return cpu


def percentile(latencies: Counter[int], fraction: float) -> float | None:
    """The latency (ms) that ``fraction`` of the replies did not exceed."""
    total = sum(latencies.values())
    if not total:
        return None
    rank, seen = math.ceil(fraction * total), 0
    for micros in sorted(latencies):
        seen += latencies[micros]
        if seen >= rank:
            return micros / 1000
    return max(latencies) / 1000


def measure(launcher: Launcher, system: System, args: argparse.Namespace,
            servers: list[Server]) -> dict[str, Any]:
    """Start the load processes, wait until they are ready, start them all at once, read
    the CPU of every process when the warm-up ends and when the measurement ends."""
    loads = []
    first = 0
    caps = split(args.max_jobs, args.load_procs)
    for k, sockets in enumerate(split(args.clients, args.load_procs)):
        loads.append(launcher.start(f"{system.name}-load{k}", role_argv(
            "load", "--connect", system.endpoint, "--framing", system.framing,
            "--sockets", str(sockets), "--first-client", str(first),
            "--warmup", str(args.warmup), "--duration", str(args.duration),
            "--max-sends", str(caps[k]), *(["--verbose-errors"] if args.verbose else []))))
        servers.append(loads[-1])
        first += sockets
    for load in loads:
        load.wait_for(LOAD_READY, START_SECONDS)
    roles = system.roles | {"load": [load.pid for load in loads]}
    signalled = time.monotonic()
    for load in loads:
        os.kill(load.pid, signal.SIGUSR1)
    sleep_until(signalled + args.warmup)
    before = cpu_by_role(roles)
    sleep_until(signalled + args.warmup + args.duration)
    after = cpu_by_role(roles)
    timeout = args.warmup + args.duration + DRAIN_SECONDS + RESULT_GRACE_SECONDS
    results = [json.loads(load.wait_for(LOAD_RESULT, timeout)[0].group(1)) for load in loads]

    jobs = sum(r["jobs"] for r in results)
    latencies: Counter[int] = Counter()
    for r in results:
        latencies.update({int(k): v for k, v in r["latency_us"].items()})
    cpu: dict[str, float | None] = {}
    for role in roles:
        start, end = before[role], after[role]
        cpu[role] = None if start is None or end is None else end - start
    server_cpu = [v for role, v in cpu.items() if role != "load"]
    cpu["total"] = None if None in server_cpu else sum(v or 0.0 for v in server_cpu)
    return {
        "jobs": jobs,
        "jobs_per_s": sum(r["jobs"] / (r["end"] - r["start"]) for r in results
                          if r["end"] > r["start"]),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "errors": sum(r["errors"] + r["lost"] for r in results),
        "capped": any(r["capped"] for r in results),
        "cpu_s": cpu,
        "cpu_us_per_job": {role: None if used is None or not jobs else used / jobs * 1e6
                           for role, used in cpu.items()},
        "pids": roles,
    }


def one_line(error: BenchError) -> str:
    """The first line of a failure and the last line its process logged."""
    lines = str(error).splitlines()
    last = next((line.strip() for line in reversed(lines[1:]) if line.strip()), "")
    return lines[0] + (f" -- last log line: {last}" if last else "")


def describe(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"FAILED: {run['error_line']}"
    per = run["cpu_us_per_job"]
    cpu = ", ".join(f"{role} {fmt(per.get(role), 1)}" for role in ("broker", "worker", "load"))
    return (f"{run['jobs_per_s']:9.0f} jobs/s  p50 {run['p50_ms']:7.2f} ms  "
            f"p99 {run['p99_ms']:7.2f} ms  CPU us/job: {cpu}"
            + (f"  ERRORS {run['errors']}" if run["errors"] else "")
            + ("  (request cap reached)" if run["capped"] else ""))


# -- the report ----------------------------------------------------------------------------





#: what wsgi_zmq is compared on: (key in the summary, its value in a run, label)
RATIOS = (
    ("jobs_per_s", lambda r: r["jobs_per_s"], "jobs/s"),
    ("p99_ms", lambda r: r["p99_ms"], "p99"),
    ("broker_us", lambda r: r["cpu_us_per_job"].get("broker"), "broker us/job"),
)


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Medians per system, and wsgi_zmq's ratios to each other system."""
    summary: dict[str, Any] = {"servers": {}, "ratios": {}}
    for name in names:
        ok = [r for r in runs if r["server"] == name and "error" not in r]
        roles = sorted({role for r in ok for role in r["cpu_us_per_job"]})
        summary["servers"][name] = {
            "runs": len(ok),
            "failed": sum(1 for r in runs if r["server"] == name and "error" in r),
            "jobs_per_s": med([r["jobs_per_s"] for r in ok]),
            "p50_ms": med([r["p50_ms"] for r in ok]),
            "p99_ms": med([r["p99_ms"] for r in ok]),
            "cpu_us_per_job": {
                role: med([r["cpu_us_per_job"].get(role) for r in ok]) for role in roles},
            "errors": sum(r["errors"] for r in ok),
        }
        summary["servers"][name]["broker_us"] = (
            summary["servers"][name]["cpu_us_per_job"].get("broker"))
    ours = summary["servers"].get("wsgi_zmq")
    if not ours or ours["jobs_per_s"] is None:
        return summary
    for name in names:
        theirs = summary["servers"][name]
        if name == "wsgi_zmq" or theirs["jobs_per_s"] is None:
            continue
        summary["ratios"][name] = ratios(runs, ours, theirs, name,
                                         [(key, key, value) for key, value, _ in RATIOS])
    return summary


def print_report(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(f"Medians over {args.rounds} round(s) of {args.clients} clients (one request in "
          f"flight each, {PAYLOAD_SIZE}-byte echo) in {args.load_procs} load process(es), "
          f"{args.workers} worker(s), {args.warmup:g} s warm-up then {args.duration:g} s; "
          "order rotated every round; every system started fresh for every run.")
    print("CPU is microseconds per job (utime+stime / jobs) of the broker, the workers (sum), "
          "every process of the system (total) and the load generator (load).")
    header = (f"{'system':<16}{'jobs/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'broker':>9}"
              f"{'worker':>9}{'total':>9}{'load':>9}{'errors':>8}{'runs':>6}")
    print()
    print(header)
    print("-" * len(header))
    for name, s in summary["servers"].items():
        per = s["cpu_us_per_job"]
        label = f"{name} (c{args.capacity})" if name == "wsgi_zmq" and args.capacity else name
        print(f"{label:<16}{fmt(s['jobs_per_s']):>9}{fmt(s['p50_ms'], 2):>9}"
              f"{fmt(s['p99_ms'], 2):>9}{fmt(per.get('broker'), 1):>9}"
              f"{fmt(per.get('worker'), 1):>9}{fmt(per.get('total'), 1):>9}"
              f"{fmt(per.get('load'), 1):>9}{s['errors']:>8}{s['runs']:>6}"
              + (f"  ({s['failed']} failed)" if s["failed"] else ""))
    if summary["ratios"]:
        print()
        print("wsgi_zmq / other: ratio of the medians (range of the per-round ratios); jobs/s "
              "above 1, p99 and broker us/job below 1 favour wsgi_zmq")
        print(f"{'other':<16}" + "".join(f"{label + ' ratio':>24}" for _, _, label in RATIOS))
        for name, ratio in summary["ratios"].items():
            print(f"{name:<16}" + "".join(
                f"{spread(ratio[key], ratio[key + '_by_round']) if key in ratio else '-':>24}"
                for key, _, _ in RATIOS))






# -- main ----------------------------------------------------------------------------------

def majortomo_missing() -> str | None:
    """Why majortomo cannot run here, or None if ``import majortomo`` works."""
    result = subprocess.run([sys.executable, "-c", "import majortomo.broker, majortomo.worker"],
                            capture_output=True, text=True, timeout=60, check=False)
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of each measured run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before each measured run (default 1)")
    parser.add_argument("--clients", type=int, default=64,
                        help="client sockets, one request in flight each (default 64)")
    parser.add_argument("--load-procs", type=int, default=2,
                        help="load processes the clients are spread over (default 2)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes of every system (default 2)")
    parser.add_argument("--capacity", type=int, default=None,
                        help="wsgi_zmq's pool --capacity (default: the pool's own)")
    parser.add_argument("--max-jobs", type=int, default=5_000_000,
                        help="requests one run may send at most, warm-up included "
                        "(default 5000000)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated subset of {','.join(SERVERS)} (default: all; "
                        "majortomo only if it is importable)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    parser.add_argument("--verbose", action="store_true",
                        help="print the log tail of a failed run, and every wrong reply")
    internal = parser.add_argument_group("internal: the processes this script starts")
    internal.add_argument("--role", choices=("broker", "worker", "majortomo-broker",
                                             "majortomo-worker", "load"), help=argparse.SUPPRESS)
    internal.add_argument("--parent", type=int, default=os.getppid(), help=argparse.SUPPRESS)
    internal.add_argument("--connect", help=argparse.SUPPRESS)
    internal.add_argument("--framing", choices=sorted(FRAMINGS), default="mdp",
                          help=argparse.SUPPRESS)
    internal.add_argument("--sockets", type=int, default=1, help=argparse.SUPPRESS)
    internal.add_argument("--first-client", type=int, default=0, help=argparse.SUPPRESS)
    internal.add_argument("--max-sends", type=int, default=1, help=argparse.SUPPRESS)
    internal.add_argument("--verbose-errors", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        return args
    for name in ("rounds", "clients", "load_procs", "workers", "max_jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be above 0 and --warmup at least 0")
    if args.capacity is not None and args.capacity < 1:
        parser.error("--capacity must be at least 1")
    if args.load_procs > args.clients:
        parser.error("--load-procs must not exceed --clients")
    args.names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in args.names if n not in SERVERS]
    if unknown or not args.names:
        parser.error(f"--servers: unknown {unknown}; choose from {', '.join(SERVERS)}")
    if "majortomo" in args.names and (why := majortomo_missing()):
        print(f"majortomo left out: {why} (pip install majortomo six)", file=sys.stderr)
        args.names.remove("majortomo")
        if not args.names:
            parser.error("--servers: nothing left to run")
    return args


def run_rounds(args: argparse.Namespace, runs: list[dict[str, Any]]) -> int:
    """Every round of every system; appends to ``runs``; returns the exit status."""
    status = 0
    with Launcher() as launcher:
        try:
            for rnd in range(args.rounds):
                shift = rnd % len(args.names)
                for name in args.names[shift:] + args.names[:shift]:
                    run: dict[str, Any] = {"server": name, "round": rnd + 1,
                                           "loadavg": os.getloadavg()[0], "time": time.time()}
                    servers: list[Server] = []
                    try:
                        system = start_system(launcher, name, args, servers)
                        run |= measure(launcher, system, args, servers)
                        if run["errors"]:
                            status = 1
                    except BenchError as exc:
                        run["error"] = str(exc)
                        run["error_line"] = one_line(exc)
                        status = 1
                    finally:
                        for server in reversed(servers):
                            launcher.stop(server)
                    runs.append(run)
                    print(f"round {rnd + 1}/{args.rounds}  {name:<10} {describe(run)}",
                          flush=True)
                    if "error" in run and args.verbose:
                        print(run["error"], file=sys.stderr)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the servers", file=sys.stderr)
            status = 130
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return run_role(args)
    exit_on_signals()
    print(f"jobs: {', '.join(args.names)}; {args.rounds} round(s); {args.workers} worker(s); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    runs: list[dict[str, Any]] = []
    status = run_rounds(args, runs)
    summary = summarize(runs, args.names)
    print_report(summary, args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "cpus": os.cpu_count(), "runs": runs,
                       "summary": summary}, f, indent=2)
        print(f"\nraw results: {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
