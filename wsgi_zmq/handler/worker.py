"""The handler worker: one core that speaks the protocol, over a runner and a layer.

Usage (the arbiter does this; construction is cheap and runs before the fork)::

    worker = build_worker(cfg, app=None, endpoints=["tcp://127.0.0.1:5556"], age=1,
                          ppid=os.getppid())
    worker.prepare()             # in the child: the gevent runner patches here
    worker.load("myapp:app")     # the WSGI app or the job function, unless preloaded
    worker.init_process()        # zmq context, sockets, signals: in the child only
    worker.run()                 # until TERM (drain) or INT/QUIT (stop now)

A worker is one ``Worker`` (this module) built from two parts, each chosen by a setting:

=========  ======================================  ============================================
part       ``worker_class`` / ``job``              what it decides
=========  ======================================  ============================================
runner     ``SyncRunner`` (``handler/sync.py``),   how requests run: one at a time in order
           ``GeventRunner`` (``handler/green.py``)  with batched replies, or a greenlet each
layer      ``WsgiLayer`` (``handler/wsgi.py``),    what a request is: a REQUEST run through a
           ``JobLayer`` (``handler/job.py``)        WSGI app, or a JOB run through a function
=========  ======================================  ============================================

``Runner`` and ``Layer`` below are the two interfaces, written down once. Everything else is
the core's, the same for all four combinations:

- one DEALER per front endpoint (``--connect``), with ZMTP heartbeats and a socket monitor:
  on every (re)connection it announces READY (capacity, body window, the runner's
  READY_CONCURRENT, the layer's flags and service); when a connection is lost, the requests
  that came on it are abandoned (their replies would go to a front that never asked);
- the records: ``handle_frame`` decodes a frame and routes each record (a new exchange to
  the runner, BODY/END/CREDIT/CANCEL to its ``Request``, HEARTBEAT probes answered, BYE);
  ``Request`` holds one exchange's state and its credit, and ends it with exactly one final
  record;
- TERM drains (``start_leaving``: REJECT what has not started, BYE, finish the rest within
  ``graceful_timeout``); INT/QUIT stop now; SIGABRT (the master found the worker stuck past
  ``timeout``) answers the running requests 504 and exits; USR1 reopens the logs;
- liveness (``notify``: the arbiter's ``WorkerTmp``, with the busy share and the queue depth
  the fronts announce, for the autoscaler), hooks, ``max_requests`` recycling, ``reload``.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import socket
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import zmq
from zmq.utils.monitor import parse_monitor_message

from wsgi_zmq import log as wlog
from wsgi_zmq import protocol
from wsgi_zmq.config import is_default_hook
from wsgi_zmq.errors import ConfigError, ProtocolError
from wsgi_zmq.protocol import (
    BODY,
    BODY_AT,
    CANCEL,
    CREDIT,
    END,
    HEARTBEAT,
    JOB,
    PIPED,
    REQUEST,
)
from wsgi_zmq.ring import SUPPORTED as RINGS_SUPPORTED
from wsgi_zmq.ring import WorkerPipe, WorkerRing, ring_slot_size, write_frame

if TYPE_CHECKING:
    from wsgi_zmq.handler.green import GeventRunner
    from wsgi_zmq.handler.job import JobLayer
    from wsgi_zmq.handler.sync import SyncRunner
    from wsgi_zmq.handler.wsgi import WsgiLayer

log = logging.getLogger("wsgi_zmq.error.worker")

_MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
_NOBLOCK = zmq.NOBLOCK
_zmq_Again = zmq.Again
_HEARTBEAT = protocol.encode_signal(HEARTBEAT)
_PIPED = protocol.encode_signal(PIPED)
#: How long a sync worker waits for its back pipe to take a frame before it drops it.
PIPE_WAIT: Final = 10.0
#: ``WSGI_ZMQ_CHECK=1``: a debugging worker that checks its invariants every turn
_CHECK: Final = bool(os.environ.get("WSGI_ZMQ_CHECK"))


class Front:
    """The worker's connection to one front's backend endpoint."""

    __slots__ = ("endpoint", "sock", "monitor", "outbox", "requests", "generation",
                 "connected", "released", "queued", "ring", "pipe")

    def __init__(self, endpoint: str, sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes]
                 ) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.monitor = monitor
        self.outbox: list[bytes] = []
        self.requests: dict[int, Request] = {}
        self.generation = 0
        self.connected = False
        self.released = False  # the front acknowledged our BYE: it sends nothing more
        self.queued = 0  # requests waiting in the front, from its last HEARTBEAT
        # the body ring offered on this connection (``body_ring``; made anew on each)
        self.ring: WorkerRing | None = None
        # the two frame pipes offered with it (PIPE): once the front sends PIPED, its
        # frames come through one, and ours go through the other
        self.pipe: WorkerPipe | None = None

    def close_ring(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None


#: A request's phases (``Request.phase``), and every change ``Request.move`` allows:
#:
#: ======= =========================================================================
#: QUEUED  accepted from its front, not started (the sync runner's ``worker.queue``)
#:         -> RUNNING (the app or the job function gets it: ``Worker.enter_app``),
#:         DONE (its final record without running: handed back with REJECT, refused
#:         with ERROR, or ended when its front was lost or it was cancelled)
#: RUNNING -> DONE (its final record: the response's end, END_ABORT, ERROR)
#: DONE    -> nothing: the front forgets the exchange with its final record
#: ======= =========================================================================
#:
#: Beside the phase, ``cancelled`` says the other side gave up (CANCEL, or the front was
#: lost) and ``granted`` that the app started reading a streamed body (HTTP): both may
#: become true in any phase before DONE. ``Worker.check`` asserts the invariants;
#: ``WSGI_ZMQ_CHECK=1`` makes a worker call it every turn of its loop.
QUEUED: Final = 0
RUNNING: Final = 1
DONE: Final = 2
PHASE_NAMES: Final = ("QUEUED", "RUNNING", "DONE")
PHASES: Final[tuple[frozenset[int], ...]] = (
    frozenset({RUNNING, DONE}),  # QUEUED
    frozenset({DONE}),           # RUNNING
    frozenset(),                 # DONE
)


class PhaseError(AssertionError):
    """A request was moved to a phase ``PHASES`` does not allow from its own."""


class Request(ABC):
    """The worker's side of one exchange: its phase, its credit, its final record.

    A layer subclasses it (``HttpRequest``, ``JobRequest``) with the records its kind of
    request sends and the two decisions that depend on the kind: ``can_hand_back`` and
    ``replayable``. Every method that posts records runs worker code (outboxes, sockets):
    it raises ``worker.quiet`` meanwhile, so the sync runner's SIGALRM handler keeps out.
    """

    __slots__ = ("worker", "front", "rid", "generation", "payload", "window", "credit",
                 "body", "body_done", "consumed", "granted", "cancelled", "phase", "event")

    def __init__(self, worker: Worker, front: Front, rid: int, payload: bytes) -> None:
        self.worker = worker
        self.front = front
        self.rid = rid
        self.generation = front.generation
        self.payload = payload
        self.window = 0  # data records we may send beyond the credit granted
        self.credit = 0
        # the body's pieces (HTTP): BODY payloads, and where BODY_AT pieces lie in the ring
        self.body: collections.deque[bytes | tuple[WorkerRing, int, int]] = \
            collections.deque()
        self.body_done = False
        self.consumed = 0
        self.granted = False  # the app started reading a streamed body (HTTP)
        self.cancelled = False
        self.phase = QUEUED
        self.event: Any = None  # the gevent runner's wake-up for the greenlet serving it

    @property
    def finished(self) -> bool:
        """Its final record is out (or its front was lost with it)."""
        return self.phase == DONE

    def move(self, phase: int) -> None:
        """Change phase, or raise ``PhaseError`` if ``PHASES`` does not allow it."""
        if phase not in PHASES[self.phase]:
            raise PhaseError(f"request {self.rid:x}: {PHASE_NAMES[self.phase]} -> "
                             f"{PHASE_NAMES[phase]} is not a change of phase")
        self.phase = phase

    @abstractmethod
    def can_hand_back(self) -> bool:
        """Could the front send this request elsewhere, now that it has not started?"""

    @abstractmethod
    def replayable(self) -> bool:
        """May it run twice? A runner that serves in order sends every reply it holds
        before it starts a request that may not (the front then knows, if this worker
        dies, that such a request never started while replies before it were unsent)."""

    def wake(self) -> None:
        """Something arrived for this request (body, credit, cancel)."""
        if self.event is not None:
            self.event.set()

    # -- output -------------------------------------------------------------------------

    def _post(self, record: bytes) -> bool:
        front = self.front
        if self.generation != front.generation:
            self.cancelled = True  # that front is gone; nobody waits for this reply
            return False
        front.outbox.append(record)
        return True

    def _final(self) -> None:
        self.move(DONE)
        self.front.requests.pop(self.rid, None)

    def finish_with(self, record: bytes) -> None:
        """Post the exchange's final record and forget the exchange."""
        worker = self.worker
        worker.quiet += 1
        try:
            self._post(record)
            self._final()
        finally:
            worker.quiet -= 1

    def end(self, flags: int, tail: bytes) -> None:
        """The final END record (``END_ABORT``: the response is incomplete, cut it)."""
        self.finish_with(protocol.encode_end(self.rid, flags, tail))

    def error(self, status: int, message: str) -> None:
        """The final ERROR record: the front answers the request with ``status``."""
        self.finish_with(protocol.encode_error(self.rid, status, message))

    def reject(self) -> None:
        """The final REJECT record: never started; the front dispatches it elsewhere."""
        self.finish_with(protocol.encode_signal(protocol.REJECT, self.rid))

    def send_under_credit(self, record: bytes, data: bytes = b"") -> bool:
        """Send one data record (a CHUNK, a partial JOB_REPLY) under the front's credit:
        once ``window`` of them are out beyond the CREDIT granted, flush and wait for
        more. ``data`` is a payload that follows ``record`` (then its head) in the frame,
        kept apart so a large payload is copied once. Returns False, sending nothing, if
        the request is cancelled (the client went away, or its front did)."""
        worker = self.worker
        worker.quiet += 1
        try:
            while self.credit <= 0 and not self.cancelled:
                worker.flush(self.front)
                worker.block(self)
            if self.cancelled:
                return False
            self.credit -= 1
            if self._post(record) and data:
                self.front.outbox.append(data)
            worker.flush(self.front)
            return True
        finally:
            worker.quiet -= 1


class Runner(Protocol):
    """How a worker's requests run. Built with the worker (``Runner(worker)``) before the
    fork, so its constructor only stores settings. ``SyncRunner`` serves requests one at a
    time in order; ``GeventRunner`` serves each in a greenlet of its own."""

    #: it serves its requests at once, not in order (READY_CONCURRENT)
    concurrent: bool
    #: how many unfinished requests a front may give this worker (READY's capacity)
    capacity: int

    def prepare(self) -> Any:
        """In the child, before the app is imported: ready the process for this way of
        running (gevent patches the standard library) and return the zmq module the
        worker's sockets come from (``zmq`` or ``zmq.green``)."""

    def init_process(self) -> None:
        """In the child, after the app is loaded: install the signal handlers (each records
        what the signal asks of ``worker.handle_term`` / ``handle_quit`` / ``handle_usr1``
        / ``handle_abort`` and wakes the loop) and build what ``run`` needs."""

    def run(self) -> None:
        """The main loop: read the fronts, serve, call ``worker.turn()`` every turn, and
        return when it says False (or on INT/QUIT). The core closes the sockets after."""

    def accept(self, req: Request) -> None:
        """A new exchange arrived (the core has registered it with its front): serve it,
        now or in turn. Called once per request record: keep it short."""

    def block(self, req: Request) -> None:
        """``req`` waits for records (its body or credit is late): run the rest of the
        worker until something arrives for it (``req.wake()``) or a heartbeat passes."""

    def flush(self, front: Front) -> None:
        """``front``'s outbox must go: now (sync) or at the end of this loop iteration with
        whatever else is due (gevent). Through ``worker.send``."""

    def flush_all(self) -> None:
        """Send every front's outbox now."""

    def watch_pipe(self, front: Front) -> None:
        """``front`` switched to its pipes (PIPED): call ``worker.read_pipe(front)``
        whenever its pipe is readable, then flush ``front``, as for its socket; a runner
        whose ``flush`` must not block gives the back pipe a ``FrameWriter``."""

    def unwatch_pipe(self, front: Front) -> None:
        """Stop watching ``front``'s pipe (the core closes it next)."""

    def check_pipe(self, front: Front) -> None:
        """Assert that ``front``'s pipe is watched exactly when it is on."""

    def busy(self) -> bool:
        """Are requests being served right now (the drain is not over while they are)?"""

    def busy_share(self, elapsed: float) -> float:
        """The share of the last ``elapsed`` seconds spent serving, for the autoscaler (and
        start a new count)."""

    def stuck(self) -> list[Request]:
        """The requests SIGABRT finds running in the app (answered 504)."""


class Layer(Protocol):
    """What a request is and how it is served: an HTTP request through a WSGI app
    (``WsgiLayer``), or a job through a function (``JobLayer``). Built with the worker
    (``Layer(worker)``) before the fork."""

    #: the record kind that opens an exchange: REQUEST or JOB
    request_kind: int
    #: the ``Request`` subclass of this layer's exchanges
    request_class: type[Request]

    @staticmethod
    def load(uri: str) -> Any:
        """Import ``MODULE:CALLABLE`` and return what ``worker.app`` holds; raise
        ``AppImportError`` with one line that names the problem. (A static method: the
        arbiter calls it on the class for ``preload_app``.)"""

    def setup(self) -> None:
        """In the child, once ``worker.app`` is loaded: what ``handle`` needs."""

    def ready(self) -> tuple[int, str]:
        """The READY flags of this layer and the service name (``""`` for none)."""

    def handle(self, req: Request) -> None:
        """Serve one exchange that was not cancelled before it started: decode it, run the
        app (between ``worker.enter_app`` and ``worker.leave_app``), count it in
        ``worker.served``, run the request hooks, write the access line. Ends it with
        exactly one final record, whatever the app does, and raises nothing the app
        raised."""


def layer_class(cfg: Any) -> type[WsgiLayer | JobLayer]:
    """The layer for ``cfg``: ``JobLayer`` with ``job`` set, else ``WsgiLayer``."""
    if cfg.job:
        from wsgi_zmq.handler.job import JobLayer

        return JobLayer
    from wsgi_zmq.handler.wsgi import WsgiLayer

    return WsgiLayer


def runner_class(cfg: Any) -> type[SyncRunner | GeventRunner]:
    """The runner for ``cfg.worker_class``."""
    if cfg.worker_class == "gevent":
        from wsgi_zmq.handler.green import GeventRunner

        return GeventRunner
    from wsgi_zmq.handler.sync import SyncRunner

    return SyncRunner


def build_worker(cfg: Any, app: Any, endpoints: list[str], age: int = 0, ppid: int = 0
                 ) -> Worker:
    """The worker ``cfg`` asks for (``worker_class``, ``job``), with ``app`` preloaded or
    None. Cheap: no context, socket or signal handler until ``init_process()``."""
    return Worker(cfg, app, endpoints, runner_class(cfg), layer_class(cfg), age, ppid)


class Worker:
    """The core of a worker process; see the module docstring.

    Hooks written for gunicorn find ``cfg``, ``app`` (also ``wsgi``), ``pid``, ``ppid``,
    ``age``, ``alive``, ``log``, ``tmp``, ``served`` and ``max_requests`` here.
    """

    # The runner's methods, bound here once: the records call them, so no extra hop.
    accept: Callable[[Request], None]
    block: Callable[[Request], None]
    flush: Callable[[Front], None]
    flush_all: Callable[[], None]

    def __init__(self, cfg: Any, app: Any, endpoints: list[str],
                 runner: Callable[[Worker], Runner], layer: Callable[[Worker], Layer],
                 age: int = 0, ppid: int = 0) -> None:
        self.cfg = cfg
        self.app = app
        self.endpoints = endpoints
        self.age = age
        self.ppid = ppid
        self.pid = 0
        self.alive = True
        self.leaving = False
        self.leave_deadline = 0.0
        self.fronts: list[Front] = []
        #: requests accepted and not started, in order (the sync runner serves from it; the
        #: gevent runner starts each at once): what a drain or an abort hands back
        self.queue: collections.deque[Request] = collections.deque()
        self.context: zmq.Context[Any] | None = None
        self.zmq_module: Any = None
        self.host = socket.gethostname()
        self.log = log  # for hooks written for gunicorn: worker.log.info(...)
        self.tmp: Any = None  # the arbiter's liveness file (``notify()``), see ``timeout``
        # the master's figures (a JSON file it rewrites), passed on to the fronts as STATS
        self.pool_stats_path: str | None = None
        self.pool_stats = b""
        self.pool_stats_mtime = 0
        # wake at least once a second, and twice per ``timeout``, to tell the master
        self.idle_wait = min(cfg.heartbeat, 1.0, cfg.timeout / 2 if cfg.timeout else 1.0)
        self.notified = 0.0
        self.reopen_logs = False
        self.watcher: ModuleWatcher | None = None
        self.access: wlog.AccessLog | None = None
        self.pre_request: Any = None
        self.post_request: Any = None
        self.served = 0
        self.max_requests = 0
        self.recycle_at = sys.maxsize  # ``served`` at which the worker recycles
        if cfg.max_requests:
            self.max_requests = cfg.max_requests + random.randint(0, cfg.max_requests_jitter)
            self.recycle_at = self.max_requests
        # While the app runs a request (``enter_app``/``leave_app``); the sync runner's
        # SIGALRM handler acts only then, never in the middle of worker code.
        self.quiet = 1  # worker code frames running; 0 only while the app runs
        self.current: Request | None = None  # the request the app is running
        self.running_since = 0.0  # when it started
        self.layer = layer(self)
        self.request_kind = self.layer.request_kind
        self.request_class = self.layer.request_class
        self.runner = runner(self)
        self.capacity = self.runner.capacity
        self.accept = self.runner.accept
        self.block = self.runner.block
        self.flush = self.runner.flush
        self.flush_all = self.runner.flush_all

    # -- process setup ------------------------------------------------------------------

    def prepare(self) -> None:
        """In the child, before the app is imported: let the runner ready the process."""
        self.zmq_module = self.runner.prepare()

    def load(self, uri: str) -> None:
        """Import the app (or job function) ``uri`` unless it was preloaded; raises
        ``AppImportError``."""
        if self.app is None:
            self.app = self.layer.load(uri)

    def init_process(self) -> None:
        """Create the zmq context, sockets and signal handlers: in the child, after fork."""
        self.pid = os.getpid()
        if self.zmq_module is None:
            self.prepare()
        self.runner.init_process()
        cfg = self.cfg
        self.pre_request = None if is_default_hook(cfg.pre_request) else cfg.pre_request
        self.post_request = None if is_default_hook(cfg.post_request) else cfg.post_request
        access = wlog.AccessLog(cfg, f"{self.pid}@{self.host}")
        self.access = access if access.enabled else None
        if cfg.reload:
            self.watcher = ModuleWatcher()
        self.layer.setup()
        self.context = self.zmq_module.Context()
        interval = max(1, int(cfg.heartbeat * 1000))
        curve = curve_keys(cfg)
        for endpoint in self.endpoints:
            sock = self.context.socket(zmq.DEALER)
            if curve is not None:
                sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100000)
            sock.setsockopt(zmq.RCVHWM, 100000)
            sock.setsockopt(zmq.HEARTBEAT_IVL, interval)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * interval)
            sock.setsockopt(zmq.HEARTBEAT_TTL, 3 * interval)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            sock.connect(endpoint)
            self.fronts.append(Front(endpoint, sock, monitor))
        log.info("Worker %d serving %s", self.pid, ",".join(self.endpoints))
        self.notify()
        self.call_hook("post_worker_init", self)

    @property
    def wsgi(self) -> Any:
        """The app, under the name gunicorn's worker gives it."""
        return self.app

    def call_hook(self, name: str, *args: Any) -> None:
        """Run a server hook from the config; an exception in it is logged, not raised."""
        try:
            getattr(self.cfg, name)(*args)
        except Exception:
            log.exception("Exception in the %s hook", name)

    def notify(self) -> None:
        """Tell the arbiter this worker is alive (at most twice a second), with its busy
        share since the last report and the queue depth its fronts announced."""
        now = time.monotonic()
        if self.tmp is not None and now - self.notified > 0.5:
            elapsed = now - self.notified if self.notified else 0.0
            busy = min(1.0, self.runner.busy_share(elapsed)) if elapsed else 0.0
            self.notified = now
            self.tmp.notify()
            self.tmp.report(busy, sum(front.queued for front in self.fronts))

    # -- what the signals ask (the runner's handlers call these) -------------------------

    def handle_term(self) -> None:
        """TERM: take nothing new, finish what is held, exit (``turn`` acts)."""
        self.alive = False

    def handle_quit(self) -> None:
        """INT/QUIT: stop now (the runner leaves its loop at once)."""
        self.alive = False
        self.call_hook("worker_int", self)

    def handle_usr1(self) -> None:
        """USR1: reopen the log files (``housekeeping`` acts)."""
        self.reopen_logs = True

    def handle_abort(self) -> None:
        """SIGABRT: the arbiter found this worker stuck past ``timeout``. Answer the running
        requests 504 (when the app, not worker code, was running), hand back the queued
        ones, say BYE, run ``worker_abort``. The runner then exits the process."""
        self.alive = False
        stuck = self.runner.stuck()
        if stuck:
            for current in stuck:
                current.error(504, "the worker timed out and was aborted")
            for front in self.fronts:  # send this worker nothing more
                if front.connected:
                    front.outbox.append(protocol.encode_signal(protocol.BYE))
            for req in self.queue:
                if not req.finished and req.generation == req.front.generation and \
                        req.can_hand_back():
                    req.reject()
            self.flush_all()
            self.leaving = True  # linger: let the ERROR and REJECTs leave
        self.call_hook("worker_abort", self)

    # -- the loop's turn ----------------------------------------------------------------

    def turn(self) -> bool:
        """Once per turn of the runner's loop: start draining after TERM, see whether the
        drain is over, and do the housekeeping. False when the loop must end."""
        if _CHECK:
            self.check()
        if not self.alive and not self.leaving:
            self.start_leaving()
        if self.leaving and self.has_left():
            return False
        return self.housekeeping()

    def check(self) -> None:
        """Assert the invariants of the worker's requests (``PHASES``); raise
        ``AssertionError``. ``WSGI_ZMQ_CHECK=1`` calls it every turn of the loop."""
        for front in self.fronts:
            if front.ring is not None:
                assert front.connected, f"a body ring kept for lost {front.endpoint}"
            if front.pipe is not None:
                assert front.connected, f"a pipe kept for lost {front.endpoint}"
                assert front.pipe.fd >= 0, f"the closed pipe of {front.endpoint} kept"
                assert front.pipe.on or not front.pipe.sending, \
                    f"sending through the pipe of {front.endpoint} before its PIPED"
                self.runner.check_pipe(front)
            for rid, req in front.requests.items():
                assert req.rid == rid and req.front is front, f"{req!r} filed under {rid:x}"
                assert req.phase != DONE, f"request {rid:x} is DONE but still registered"
                assert req.generation == front.generation, \
                    f"request {rid:x} of an earlier connection is still registered"
                assert req.credit >= 0, f"request {rid:x} has credit {req.credit}"
        for req in self.queue:
            assert req.phase == QUEUED, \
                f"request {req.rid:x} waits in the queue but is {PHASE_NAMES[req.phase]}"
        current = self.current
        if current is not None:
            assert current.phase != QUEUED, f"the app runs request {current.rid:x}, QUEUED"

    def housekeeping(self) -> bool:
        """Tell the master we live, reopen logs, watch for code changes and for a vanished
        parent. Returns False when the worker must stop now."""
        self.notify()
        if self.reopen_logs:
            self.reopen_logs = False
            wlog.reopen(self.cfg)
        if self.watcher is not None and self.alive and self.watcher.changed():
            log.info("Worker %d reloading: %s changed", self.pid, self.watcher.changed_file)
            self.alive = False
        if self.ppid and os.getppid() != self.ppid:
            log.info("Parent changed; worker %d exits", self.pid)
            return False
        self.share_pool_stats()
        return True

    def share_pool_stats(self) -> None:
        """Send the master's figures to every front when its file changed."""
        path = self.pool_stats_path
        if not path:
            return
        try:
            mtime = os.stat(path).st_mtime_ns
            if mtime == self.pool_stats_mtime:
                return
            with open(path, "rb") as f:
                data = f.read(protocol.MAX_STATS + 1)
        except OSError:
            return
        self.pool_stats_mtime = mtime
        if len(data) > protocol.MAX_STATS or data == self.pool_stats:
            return
        self.pool_stats = data
        for front in self.fronts:
            if front.connected:
                self.send(front, [protocol.encode_stats(data)])

    def recycle(self) -> None:
        """Stop taking work once ``served`` reached ``recycle_at`` (``max_requests``); the
        arbiter forks a fresh worker when this one has drained."""
        if self.alive:
            log.info("Worker %d served %d requests (max_requests): recycling", self.pid,
                     self.served)
            self.alive = False
            if self.tmp is not None:
                self.tmp.set_recycled()  # the master counts it as a max_requests restart

    def start_leaving(self) -> None:
        """Hand back the queued requests that can be replayed, and say BYE to each front.

        A front answers BYE with BYE and sends nothing more; requests it sent before that
        are served here. ``graceful_timeout`` bounds the whole drain.
        """
        self.leaving = True
        self.leave_deadline = time.monotonic() + self.cfg.graceful_timeout
        kept = []
        for req in self.queue:
            if req.generation != req.front.generation or req.finished:
                continue
            if req.can_hand_back():
                req.reject()
            else:
                kept.append(req)
        self.queue.clear()
        self.queue.extend(kept)
        for front in self.fronts:
            if front.connected:
                front.outbox.append(protocol.encode_signal(protocol.BYE))
            else:
                front.released = True
        self.flush_all()
        log.info("Worker %d draining", self.pid)

    def has_left(self) -> bool:
        """True once nothing is queued or running and every front has released us (or
        time is up)."""
        if time.monotonic() > self.leave_deadline:
            log.warning("Worker %d: graceful timeout reached while draining", self.pid)
            return True
        return not self.queue and not self.runner.busy() and \
            all(f.released or not f.connected for f in self.fronts)

    def enter_app(self, req: Request, now: float) -> None:
        """The app starts running ``req``: from here the SIGALRM handler may act."""
        req.move(RUNNING)
        self.running_since = now
        self.current = req
        self.quiet = 0

    def leave_app(self, req: Request) -> None:
        """The app is done with ``req``."""
        self.quiet = 1
        self.current = None

    def in_app(self, req: Request, hook_request: Callable[[], Any],
               run: Callable[[], Any]) -> tuple[Any, Any, float]:
        """The part of serving that is the same for every layer: count the request, call
        ``pre_request`` (with ``hook_request()``), call ``run`` between ``enter_app`` and
        ``leave_app``, and cut the exchange (END_ABORT) if ``run`` left it open. Returns
        ``run``'s result, the hook request made (or None) and when the app started."""
        self.served += 1
        hook_req = None
        if self.pre_request is not None:
            hook_req = hook_request()
            try:
                self.pre_request(self, hook_req)
            except Exception:
                log.exception("Exception in the pre_request hook")
        started = time.monotonic()
        self.enter_app(req, started)
        try:
            result = run()
        finally:
            self.leave_app(req)
        if not req.finished:
            req.end(protocol.END_ABORT, b"")
        return result, hook_req, started

    # -- input --------------------------------------------------------------------------

    def handle_frame(self, front: Front, data: bytes) -> None:
        """Act on every record of one frame from ``front`` (a malformed frame is dropped
        whole, with a warning)."""
        try:
            records = protocol.split_frame(data)
        except ProtocolError as exc:
            log.warning("Dropped a malformed message from %s: %s", front.endpoint, exc)
            return
        requests = front.requests
        opens = self.request_kind
        for kind, rid, payload in records:
            if kind == opens:
                if not payload or rid in requests:
                    log.warning("Dropped a bad %s %x from %s", protocol.KIND_NAMES[kind], rid,
                                front.endpoint)
                    continue
                req = self.request_class(self, front, rid, payload)
                requests[rid] = req
                self.accept(req)
                continue
            if kind == HEARTBEAT:
                front.queued = protocol.decode_heartbeat(payload)
                # a probe (the front ejected us and asks whether we serve again) is echoed;
                # a plain one answered, so the front knows when it last heard from us
                front.outbox.append(protocol.encode_probe(rid) if rid else _HEARTBEAT)
                self.flush(front)
                continue
            if kind == PIPED:
                # the last frame through the socket: the front's next ones are in the pipe
                self.switch_to_pipes(front)
                continue
            if kind == protocol.BYE:
                front.released = True
                if not self.leaving:
                    self.released_by(front)
                continue
            req = requests.get(rid)  # type: ignore[assignment]
            if req is None:
                if kind == REQUEST or kind == JOB:
                    self.refuse(front, kind, rid)
                continue  # for a request already finished; harmless
            if kind == BODY:
                req.body.append(payload)
            elif kind == BODY_AT:
                # the piece stays in its slot until the app takes it (``read_body``), which
                # copies it out before granting the credit that lets the front reuse it
                where = front.ring.locate(payload) if front.ring is not None else None
                if where is None:
                    log.warning("Dropped a BODY_AT from %s that names no slot of this "
                                "connection's ring; the request is cut", front.endpoint)
                    req.cancelled = True
                else:
                    req.body.append(where)
            elif kind == END:
                req.body_done = True
            elif kind == CREDIT:
                try:
                    req.credit += protocol.decode_credit(payload)
                except Exception:
                    log.warning("Dropped a malformed CREDIT from %s", front.endpoint)
            elif kind == CANCEL:
                req.cancelled = True
            else:
                log.warning("Dropped %s from %s: not a front's record",
                            protocol.KIND_NAMES[kind], front.endpoint)
                continue
            if req.event is not None:
                req.event.set()

    def refuse(self, front: Front, kind: int, rid: int) -> None:
        """A REQUEST for a job worker, or a JOB for an HTTP one: the front's mistake. End
        the exchange at once (502), so the front does not wait for it."""
        served = "jobs" if self.request_kind == JOB else "HTTP requests"
        log.warning("Refused a %s from %s: this worker serves %s", protocol.KIND_NAMES[kind],
                    front.endpoint, served)
        front.outbox.append(protocol.encode_error(rid, 502, f"this worker serves {served}"))
        self.flush(front)

    def released_by(self, front: Front) -> None:
        """The front sent BYE though this worker is not leaving: it sends us nothing more
        (our key was taken out of its ``curve_allow``). Connect again: a front that admits
        us again serves us; one that does not refuses the handshake, and we keep trying."""
        log.warning("The front at %s let this worker go (its key may have been revoked); "
                    "connecting again", front.endpoint)
        front.sock.disconnect(front.endpoint)
        front.sock.connect(front.endpoint)
        front.released = False

    def on_monitor_event(self, front: Front, message: list[bytes]) -> None:
        """A connection to ``front`` was made (send READY) or lost (abandon its requests)."""
        event = parse_monitor_message(message)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            front.connected = True
            if self.tmp is not None and all(f.connected for f in self.fronts):
                self.tmp.set_ready()  # a HUP retires the old workers once all are
            if not self.leaving:
                flags, service = self.layer.ready()
                if self.runner.concurrent:
                    flags |= protocol.READY_CONCURRENT
                if self.cfg.standby and not service:
                    flags |= protocol.READY_STANDBY
                self.send(front, [protocol.encode_ready(
                    self.capacity, self.cfg.window, self.pid, self.host, flags, service,
                    self.pool_name(service), self.cfg.pool_version, self.ppid,
                    self.cfg.weight)])
                if self.pool_stats:
                    # a frame of its own: a front that does not know STATS drops only it
                    self.send(front, [protocol.encode_stats(self.pool_stats)])
                if not service:
                    self.offer_ring(front)
            log.debug("Worker %d connected to %s", self.pid, front.endpoint)
        elif event == zmq.EVENT_DISCONNECTED:
            self.lose_connection(front)

    def lose_connection(self, front: Front) -> None:
        """The connection to ``front`` is gone: abandon its requests, close its ring and
        pipe; ZeroMQ reconnects."""
        front.connected = False
        front.generation += 1
        front.close_ring()  # its pieces were copied out as they came
        self.close_pipe(front)
        abandoned = list(front.requests.values())
        front.requests.clear()
        front.outbox.clear()
        for req in abandoned:
            req.cancelled = True
            req.wake()
        if abandoned:
            log.warning("Lost %s; abandoned %d request(s)", front.endpoint, len(abandoned))
        else:
            log.info("Lost %s; reconnecting", front.endpoint)

    def offer_ring(self, front: Front) -> None:
        """Offer ``front`` a new body ring (``wsgi_zmq/ring.py``), in a frame of its own: a
        front that does not know RING drops only it, one on another host ignores it."""
        front.close_ring()
        groups = min(self.cfg.body_ring, self.capacity)
        if not groups or not RINGS_SUPPORTED:
            return
        try:
            front.ring = WorkerRing(groups, self.cfg.window, ring_slot_size(self.cfg.chunk_size))
        except (OSError, ValueError) as exc:
            log.warning("No body ring for %s (%s): request bodies come in messages",
                        front.endpoint, exc)
            return
        self.send(front, [front.ring.offer(self.pid)])
        # and the two frame pipes, in a frame of their own too
        self.close_pipe(front)
        if not self.cfg.frame_pipes:
            return
        try:
            front.pipe = WorkerPipe()
        except OSError as exc:
            log.warning("No pipe for %s (%s): its frames come through the socket",
                        front.endpoint, exc)
            return
        self.send(front, [front.pipe.offer(self.pid)])

    def switch_to_pipes(self, front: Front) -> None:
        """The front's PIPED: read its frames from the pipe from now on, and switch our
        side too: what the outbox holds and our PIPED go through the socket, the last
        frame there; every later one goes through the back pipe."""
        pipe = front.pipe
        if pipe is None or pipe.on:
            log.warning("Dropped a PIPED from %s: %s", front.endpoint,
                        "no pipe was offered" if pipe is None else "a second one")
            return
        pipe.on = True
        self.runner.watch_pipe(front)
        records, front.outbox = front.outbox, []
        records.append(_PIPED)
        self.send(front, records)
        pipe.sending = True

    def read_pipe(self, front: Front) -> None:
        """Act on every whole frame waiting in ``front``'s pipe (the runner calls it when
        the pipe is readable). The end of the pipe means the front forgot this worker:
        connect again (unless leaving); so does a broken stream."""
        pipe = front.pipe
        if pipe is None:
            return
        try:
            frames, ended = pipe.frames()
        except ProtocolError as exc:
            frames, ended = [], True
            log.warning("Dropped the pipe from %s: %s", front.endpoint, exc)
        for data in frames:
            self.handle_frame(front, data)
            if front.pipe is not pipe:
                return  # lost while handling
        if ended:
            self.close_pipe(front)
            if front.connected:
                self.forgotten_by(front)

    def forgotten_by(self, front: Front) -> None:
        """``front`` closed our pipe: it forgot this worker (it stops, or it dropped us).
        It answers nothing more on this connection, so it counts as lost; unless this
        worker is leaving, connect again, to be a new worker to it."""
        log.info("The front at %s closed our pipe", front.endpoint)
        self.lose_connection(front)
        if not self.leaving:
            front.sock.disconnect(front.endpoint)
            front.sock.connect(front.endpoint)

    def close_pipe(self, front: Front, linger: float = 0.0) -> None:
        if front.pipe is not None:
            if front.pipe.on:
                self.runner.unwatch_pipe(front)
            front.pipe.close(linger)
            front.pipe = None

    # -- output -------------------------------------------------------------------------

    def pool_name(self, service: str) -> str:
        """The pool this worker announces: ``pool``, or a job pool's service when ``pool``
        was left at its default."""
        if service and self.cfg.pool == protocol.DEFAULT_POOL:
            return service
        return str(self.cfg.pool)

    def send(self, front: Front, records: list[bytes]) -> None:
        """Send ``records`` to ``front`` now, as one frame: through the back pipe once we
        switched to it (the gevent runner's ``FrameWriter`` keeps what the pipe cannot take
        yet; the sync runner waits for it to drain, up to ``PIPE_WAIT``), else through the
        socket. Dropped, with a warning, if the front is not reading (the socket's
        high-water mark is full, or the pipe did not drain) or its pipe is closed (it
        forgot us: its end of our other pipe says so too, and ``read_pipe`` acts on it)."""
        pipe = front.pipe
        if pipe is not None and pipe.sending:
            frame = protocol.frame(records)
            if pipe.writer is not None:
                sent = pipe.writer.send(frame)
            else:
                sent = write_frame(pipe.back, frame, PIPE_WAIT)
            if not sent:
                log.warning("The front at %s is not reading its pipe; dropped %d "
                            "record(s)", front.endpoint, len(records))
            return
        try:
            front.sock.send(protocol.frame(records), _NOBLOCK)
        except _zmq_Again:
            log.warning("The front at %s is not reading; dropped %d record(s)",
                        front.endpoint, len(records))

    def close(self) -> None:
        """Close the sockets and the context (lingering 1 s after a drain, so the last
        replies and the BYE leave)."""
        if self.context is None:
            return
        linger = 1000 if self.leaving else 0
        for front in self.fronts:
            front.monitor.close(linger=0)
            front.sock.close(linger=linger)
            front.close_ring()
            self.close_pipe(front, linger / 1000)
        self.context.term()
        self.context = None

    def run(self) -> None:
        """Serve until told to stop (the runner's loop); a TERM drains first."""
        try:
            self.runner.run()
        finally:
            self.close()


def curve_keys(cfg: Any) -> tuple[bytes, bytes, bytes] | None:
    """(public, secret, the front's public) for the DEALERs, or None without CURVE. In
    all-in-one mode the workers use the front's own key pair unless ``curve_server_key``
    names another front."""
    if cfg.curve_secret_key is None:
        return None
    import zmq.auth

    public, secret = zmq.auth.load_certificate(cfg.curve_secret_key)
    if secret is None:
        raise ConfigError(f"curve_secret_key={cfg.curve_secret_key} holds no secret key")
    server = public
    if cfg.accepts("curve_server_key") and cfg.curve_server_key is not None:
        server = zmq.auth.load_certificate(cfg.curve_server_key)[0]
    return public, secret, server


class ModuleWatcher:
    """For ``reload``: the modification times of the Python files this process imported."""

    def __init__(self) -> None:
        self.mtimes = self._scan()
        self.checked = time.monotonic()
        self.changed_file = ""

    @staticmethod
    def _scan() -> dict[str, float]:
        mtimes = {}
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if path and path.endswith(".py"):
                try:
                    mtimes[path] = os.stat(path).st_mtime
                except OSError:
                    continue
        return mtimes

    def changed(self) -> bool:
        """True if a known file changed; looks at most once a second."""
        now = time.monotonic()
        if now - self.checked < 1.0:
            return False
        self.checked = now
        for path, mtime in self.mtimes.items():
            try:
                if os.stat(path).st_mtime != mtime:
                    self.changed_file = path
                    return True
            except OSError:
                self.changed_file = path
                return True
        return False

