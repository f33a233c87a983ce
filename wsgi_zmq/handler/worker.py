"""A handler worker process: connects to every front, takes requests by credit, runs the app.

Usage (the arbiter does this after the fork)::

    worker = SyncWorker(cfg, app, age=1, ppid=os.getppid())
    worker.init_process()        # zmq context, sockets, signals: in the child only
    worker.run()                 # until TERM (drain) or INT/QUIT (stop now)

The sync worker serves one request at a time. It has one DEALER per front endpoint
(``--connect``), and on every (re)connection announces READY with ``capacity`` and its
body ``window``; a socket monitor tells it when a connection is made or lost, so a front
that restarts gets a READY again, and the requests of a lost front are abandoned (their
replies would go to a front that never asked).

Replies are batched: records produced while the worker drains its queue leave as one frame
per front, flushed when the queue is empty, after half ``capacity`` replies, or after
``_BATCH_SECONDS`` of app time, so a slow request does not hold back the replies of the fast
ones before it. Before the worker blocks (waiting for body or credit), it flushes.

A worker that holds several requests runs them in order, so one slow request would delay
those queued behind it. When a request has run ``STEAL_SECONDS`` with others waiting, the
worker hands the waiting ones back to their front (REJECT; the front dispatches them to a
free worker). A sync worker is inside the app then, so a ``SIGALRM`` interval timer, armed
only while requests wait, lets it act; the handler touches sockets only when the app, not
the worker's own code, was running (``quiet == 0``). If the app installed its own
``SIGALRM`` handler, the worker leaves it alone and does not hand requests back.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import random
import signal
import socket
import sys
import time
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from wsgi_zmq import __version__, protocol
from wsgi_zmq import log as wlog
from wsgi_zmq.config import is_default_hook
from wsgi_zmq.errors import ClientDisconnected, ConfigError, ProtocolError
from wsgi_zmq.handler.environ import build_environ
from wsgi_zmq.handler.wsgi import BodyInput, FileWrapper, serve_request
from wsgi_zmq.protocol import (
    BODY,
    CANCEL,
    CHUNK,
    CREDIT,
    END,
    END_ABORT,
    HEARTBEAT,
    REQ_BODY_COMPLETE,
    REQ_EXPECT,
    REQ_REPLAYABLE,
    REQUEST,
)

log = logging.getLogger("wsgi_zmq.error.worker")

_BATCH_REQUESTS = 64
_BATCH_SECONDS = 0.002
#: A request that has run this long hands the requests queued behind it back to the front.
STEAL_SECONDS = 0.04
_STEAL_TICK = 0.02
_MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
_NOBLOCK = zmq.NOBLOCK
_zmq_Again = zmq.Again


class Front:
    """The worker's connection to one front's backend endpoint."""

    __slots__ = ("endpoint", "sock", "monitor", "outbox", "requests", "generation",
                 "connected", "released", "queued")

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


class Request:
    """The worker's side of one exchange; the ``channel`` of ``serve_request``."""

    __slots__ = ("worker", "front", "rid", "generation", "payload", "window", "credit",
                 "body", "body_done", "consumed", "granted", "cancelled", "finished", "event")

    def __init__(self, worker: SyncWorker, front: Front, rid: int, payload: bytes) -> None:
        self.worker = worker
        self.front = front
        self.rid = rid
        self.generation = front.generation
        self.payload = payload
        self.window = 0
        self.credit = 0
        self.body: collections.deque[bytes] = collections.deque()
        self.body_done = False
        self.consumed = 0
        self.granted = False
        self.cancelled = False
        self.finished = False
        self.event: Any = None  # the gevent worker's wake-up for the greenlet serving it

    def can_hand_back(self) -> bool:
        """Could the front send this request elsewhere? Yes while the app has not started
        it and all the front sent is the REQUEST record: its whole body was inside, or the
        front waits for our CREDIT (REQ_EXPECT) before it sends the rest."""
        return not self.granted and bool(self.payload[0] & (REQ_BODY_COMPLETE | REQ_EXPECT))

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
        self.finished = True
        self.front.requests.pop(self.rid, None)

    # Each channel method runs worker code (outboxes, sockets): ``quiet`` tells the SIGALRM
    # handler to keep out meanwhile.

    def respond(self, flags: int, head: bytes, body: bytes, final: bool) -> None:
        worker = self.worker
        worker.quiet += 1
        try:
            self._post(protocol.encode_response(self.rid, flags, head, body))
            if final:
                self._final()
            else:
                self.credit = self.window
                worker.flush(self.front)  # PEP 3333: a block is never delayed
        finally:
            worker.quiet -= 1

    def send_chunk(self, data: bytes) -> bool:
        worker = self.worker
        worker.quiet += 1
        try:
            while self.credit <= 0 and not self.cancelled:
                worker.flush(self.front)
                worker.block(self)
            if self.cancelled:
                return False
            self.credit -= 1
            if self._post(protocol.data_head(CHUNK, self.rid, len(data))):
                self.front.outbox.append(data)
            worker.flush(self.front)
            return True
        finally:
            worker.quiet -= 1

    def end(self, flags: int, tail: bytes) -> None:
        worker = self.worker
        worker.quiet += 1
        try:
            self._post(protocol.encode_end(self.rid, flags, tail))
            self._final()
        finally:
            worker.quiet -= 1

    # -- input --------------------------------------------------------------------------

    def read_body(self) -> bytes:
        worker = self.worker
        worker.quiet += 1
        try:
            if not self.granted:
                self.granted = True
                if self.payload and self.payload[0] & REQ_EXPECT:
                    self._post(protocol.encode_credit(self.rid, worker.cfg.window))
            while not self.body:
                if self.body_done:
                    return b""
                if self.cancelled:
                    raise ClientDisconnected("the client went away before sending the whole "
                                             "body")
                self._grant()
                worker.flush(self.front)
                worker.block(self)
            self.consumed += 1
            if self.consumed >= max(1, worker.cfg.window // 2):
                self._grant()
                worker.flush(self.front)  # at once: the front reads the client only on credit
            return self.body.popleft()
        finally:
            worker.quiet -= 1

    def _grant(self) -> None:
        if self.consumed > 0:
            self._post(protocol.encode_credit(self.rid, self.consumed))
            self.consumed = 0


class SyncWorker:
    """Serves one request at a time; see the module docstring.

    ``GeventWorker`` (``wsgi_zmq.handler.green``) is a subclass: it overrides the socket
    module, the capacity, how a request is accepted and how a request's greenlet waits.
    """

    #: the zmq module sockets come from (``zmq.green`` in the gevent worker)
    zmq_module: Any = zmq
    kind = "sync"
    concurrent = False  # serves its requests in order: the front limits what waits

    def __init__(self, cfg: Any, app: Any, endpoints: list[str], age: int = 0,
                 ppid: int = 0) -> None:
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
        self.by_socket: dict[Any, Front] = {}
        self.by_monitor: dict[Any, Front] = {}
        self.queue: collections.deque[Request] = collections.deque()
        self.context: zmq.Context[Any] | None = None
        self.poller = zmq.Poller()
        self.base_environ: dict[str, Any] = {}
        self.host = socket.gethostname()
        self.log = log  # for hooks written for gunicorn: worker.log.info(...)
        self.tmp: Any = None  # the arbiter's liveness file (``notify()``), see ``timeout``
        # wake at least once a second, and twice per ``timeout``, to tell the master
        self.idle_wait = min(cfg.heartbeat, 1.0, cfg.timeout / 2 if cfg.timeout else 1.0)
        self.notified = 0.0
        self.busy_time = 0.0  # seconds spent serving since the last report
        self.busy_since = 0.0  # when the current serve_queue began counting, 0 when idle
        self.reopen_logs = False
        self.watcher: ModuleWatcher | None = None
        self.access: wlog.AccessLog | None = None
        self.pre_request: Any = None
        self.post_request: Any = None
        self.served = 0
        self.max_requests = 0
        if cfg.max_requests:
            self.max_requests = cfg.max_requests + random.randint(0, cfg.max_requests_jitter)
        self.quiet = 1  # worker code frames running; 0 only while the app runs
        self.current: Request | None = None  # the request the app is running
        self.running_since = 0.0  # when the request being served started
        self.steal = False  # hand back queued requests behind a slow one (SIGALRM is ours)
        self.timer_armed = False
        self.capacity: int = cfg.capacity
        # flush replies every half capacity: the front refills one half while this worker
        # serves the other, so the worker never waits a round trip for work
        self.batch = max(1, min(_BATCH_REQUESTS, self.capacity // 2))

    # -- process setup ------------------------------------------------------------------

    def init_process(self) -> None:
        """Create the zmq context, sockets and signal handlers: in the child, after fork."""
        self.pid = os.getpid()
        signal.signal(signal.SIGTERM, self.handle_term)
        signal.signal(signal.SIGINT, self.handle_quit)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        signal.signal(signal.SIGABRT, self.handle_abort)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        cfg = self.cfg
        self.pre_request = None if is_default_hook(cfg.pre_request) else cfg.pre_request
        self.post_request = None if is_default_hook(cfg.post_request) else cfg.post_request
        access = wlog.AccessLog(cfg, f"{self.pid}@{self.host}")
        self.access = access if access.enabled else None
        if cfg.reload:
            self.watcher = ModuleWatcher()
        if self.kind == "sync" and self.capacity > 1 and \
                signal.getsignal(signal.SIGALRM) == signal.SIG_DFL:
            signal.signal(signal.SIGALRM, self.handle_alarm)
            signal.siginterrupt(signal.SIGALRM, False)  # restart system calls the app makes
            self.steal = True
        self.base_environ = {
            "wsgi.version": (1, 0),
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.errors": sys.stderr,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
            "SCRIPT_NAME": "",
            "SERVER_SOFTWARE": f"wsgi_zmq/{__version__}",
        }
        self.context = self.zmq_module.Context()
        interval = max(1, int(self.cfg.heartbeat * 1000))
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
            front = Front(endpoint, sock, monitor)
            self.fronts.append(front)
            self.by_socket[sock] = front
            self.by_monitor[monitor] = front
            self.poller.register(sock, zmq.POLLIN)
            self.poller.register(monitor, zmq.POLLIN)
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
            busy = min(1.0, self.busy_share(elapsed)) if elapsed else 0.0
            self.notified = now
            self.tmp.notify()
            self.tmp.report(busy, sum(front.queued for front in self.fronts))

    def busy_share(self, elapsed: float) -> float:
        """The share of ``elapsed`` spent serving requests (and start a new count)."""
        busy, self.busy_time = self.busy_time, 0.0
        if self.busy_since:  # serving now: count the time so far, and restart the count
            now = time.monotonic()
            busy += now - self.busy_since
            self.busy_since = now
        return busy / elapsed

    def handle_term(self, signum: int, frame: Any) -> None:
        """TERM: take nothing new, finish what is held, exit (the main loop acts)."""
        self.alive = False

    def handle_usr1(self, signum: int, frame: Any) -> None:
        """USR1: reopen the log files (the main loop acts)."""
        self.reopen_logs = True

    def handle_abort(self, signum: int, frame: Any) -> None:
        """SIGABRT: the arbiter found this worker stuck past ``timeout``. Answer the running
        request 504 (when the app, not worker code, was running), hand back the queued ones,
        run ``worker_abort`` and exit."""
        self.alive = False
        stuck = self.stuck_requests()
        if stuck:
            for current in stuck:
                current._post(protocol.encode_error(current.rid, 504,
                                                    "the worker timed out and was aborted"))
                current._final()
            for front in self.fronts:  # send this worker nothing more
                if front.connected:
                    front.outbox.append(protocol.encode_signal(protocol.BYE))
            for req in self.queue:
                if not req.finished and req.generation == req.front.generation and \
                        req.can_hand_back():
                    req._post(protocol.encode_signal(protocol.REJECT, req.rid))
                    req._final()
            self.flush_all()
            self.leaving = True  # linger: let the ERROR and REJECTs leave
        self.call_hook("worker_abort", self)
        raise SystemExit(1)

    def handle_alarm(self, signum: int, frame: Any) -> None:
        """SIGALRM, while requests wait behind the running one: hand them back if it is
        slow. Acts only when the app was running, never in the middle of worker code."""
        if self.quiet == 0:
            self.return_queued()

    def return_queued(self) -> None:
        """If the running request has run ``STEAL_SECONDS``, take in what the fronts sent
        meanwhile and REJECT the queued requests that can go elsewhere (the front dispatches
        them to a free worker); keep the others."""
        if time.monotonic() - self.running_since < STEAL_SECONDS:
            return
        current = self.current
        if current is None or not current.granted or current.body_done:
            # a request that streams its body waits on the sockets (wait_within) whenever
            # it runs out of body, and drains them then; draining them from the signal
            # handler as well stalled such uploads (100 MB PUTs: 0.2 to 3 s, against a
            # steady 0.3 s without)
            for front in self.fronts:
                self._drain(front)
        queue = self.queue
        if not queue:
            return
        kept = []
        handed = 0
        for req in queue:
            if req.finished or req.generation != req.front.generation:
                continue
            if req.cancelled:
                req.end(END_ABORT, b"")
            elif req.can_hand_back():
                req._post(protocol.encode_signal(protocol.REJECT, req.rid))
                req._final()
                handed += 1
            else:
                kept.append(req)
        queue.clear()
        queue.extend(kept)
        self.flush_all()
        if handed:
            log.info("Worker %d handed %d queued request(s) back: the running one has taken "
                     "%.0f ms", self.pid, handed, (time.monotonic() - self.running_since) * 1e3)

    def _arm(self, on: bool) -> None:
        if on != self.timer_armed:
            self.timer_armed = on
            signal.setitimer(signal.ITIMER_REAL, _STEAL_TICK if on else 0, _STEAL_TICK)

    def handle_quit(self, signum: int, frame: Any) -> None:
        """INT/QUIT: stop now."""
        self.alive = False
        self.call_hook("worker_int", self)
        raise SystemExit(0)

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        """Serve until told to stop; a TERM drains first (see ``start_leaving``)."""
        try:
            while True:
                if not self.alive and not self.leaving:
                    self.start_leaving()
                if self.leaving and self.has_left():
                    break
                if not self.queue:
                    self.wait()
                if self.queue:
                    self.serve_queue()
                if not self.housekeeping():
                    break
        finally:
            self.close()

    def start_leaving(self) -> None:
        """Hand back the queued requests that can be replayed, and say BYE to each front.

        A front answers BYE with BYE and sends nothing more; requests it sent before that
        are served here. ``graceful_timeout`` bounds the whole drain.
        """
        self.leaving = True
        self.leave_deadline = time.monotonic() + self.cfg.graceful_timeout
        kept: collections.deque[Request] = collections.deque()
        for req in self.queue:
            if req.generation != req.front.generation or req.finished:
                continue
            if req.can_hand_back():
                req._post(protocol.encode_signal(protocol.REJECT, req.rid))
                req._final()
            else:
                kept.append(req)
        self.queue = kept
        for front in self.fronts:
            if front.connected:
                front.outbox.append(protocol.encode_signal(protocol.BYE))
            else:
                front.released = True
        self.flush_all()
        log.info("Worker %d draining", self.pid)

    def has_left(self) -> bool:
        """True once the queue is empty and every front has released us (or time is up)."""
        if time.monotonic() > self.leave_deadline:
            log.warning("Worker %d: graceful timeout reached while draining", self.pid)
            return True
        return not self.queue and not self.busy() and \
            all(f.released or not f.connected for f in self.fronts)

    def busy(self) -> bool:
        """Requests still running (the gevent worker's greenlets; none for sync here)."""
        return False

    def prepare(self) -> None:
        """In the child, before the app is imported (the gevent worker patches here)."""

    def stuck_requests(self) -> list[Request]:
        """The requests a SIGABRT finds running in the app."""
        current = self.current
        if self.quiet == 0 and current is not None and not current.finished:
            return [current]
        return []

    def housekeeping(self) -> bool:
        """Once per loop turn: tell the master we live, reopen logs, watch for code
        changes and for a vanished parent. Returns False when the worker must stop now."""
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
        return True

    def enter_app(self, req: Request, now: float) -> None:
        """The app starts running ``req``: from here the SIGALRM handler may act."""
        self.running_since = now
        self.current = req
        self.quiet = 0

    def leave_app(self, req: Request) -> None:
        self.quiet = 1
        self.current = None

    def block(self, req: Request) -> None:
        """Wait until something arrives for ``req`` (its body or credit is late)."""
        self.wait_within()

    def accept(self, req: Request) -> None:
        """A REQUEST arrived: queue it (served in order by ``serve_queue``)."""
        self.queue.append(req)

    def wait_within(self) -> None:
        """Wait for records while a request runs (its body or credit is late): the queued
        requests behind it go back to the front if it has run long."""
        if self.steal:
            self.return_queued()
        self.wait()

    def wait(self, timeout: float | None = None) -> None:
        """Block until a socket has something (or ``timeout``, default the heartbeat)."""
        self.notify()  # waiting for work, body or credit is not being stuck
        ms = int((self.idle_wait if timeout is None else timeout) * 1000)
        events = self.poller.poll(ms)
        self.notify()  # so the master counts a request's time from when it starts
        for sock, _ in events:
            front = self.by_socket.get(sock)
            if front is not None:
                self._drain(front)
            else:
                self._on_monitor(self.by_monitor[sock])

    def _drain(self, front: Front) -> None:
        recv = front.sock.recv
        while True:
            try:
                data = recv(_NOBLOCK)
            except _zmq_Again:
                return
            self._handle(front, data)

    def _handle(self, front: Front, data: bytes) -> None:
        try:
            records = protocol.split_frame(data)
        except ProtocolError as exc:
            log.warning("Dropped a malformed message from %s: %s", front.endpoint, exc)
            return
        requests = front.requests
        for kind, rid, payload in records:
            if kind == REQUEST:
                if not payload or rid in requests:
                    log.warning("Dropped a bad REQUEST %x from %s", rid, front.endpoint)
                    continue
                req = Request(self, front, rid, payload)
                requests[rid] = req
                self.accept(req)
                continue
            if kind == HEARTBEAT:
                front.queued = protocol.decode_heartbeat(payload)
                if rid:  # a probe: the front ejected us and asks whether we serve again
                    front.outbox.append(protocol.encode_probe(rid))
                    self.flush(front)
                continue
            if kind == protocol.BYE:
                front.released = True
                if not self.leaving:
                    self.released_by(front)
                continue
            req = requests.get(rid)  # type: ignore[assignment]
            if req is None:
                continue  # for a request already finished; harmless
            if kind == BODY:
                req.body.append(payload)
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

    def released_by(self, front: Front) -> None:
        """The front sent BYE though this worker is not leaving: it sends us nothing more
        (our key was taken out of its ``curve_allow``). Connect again: a front that admits
        us again serves us; one that does not refuses the handshake, and we keep trying."""
        log.warning("The front at %s let this worker go (its key may have been revoked); "
                    "connecting again", front.endpoint)
        front.sock.disconnect(front.endpoint)
        front.sock.connect(front.endpoint)
        front.released = False

    def _on_monitor(self, front: Front) -> None:
        while True:
            try:
                message = front.monitor.recv_multipart(_NOBLOCK)
            except _zmq_Again:
                return
            self.on_monitor_event(front, message)

    def on_monitor_event(self, front: Front, message: list[bytes]) -> None:
        """A connection to ``front`` was made (send READY) or lost (abandon its requests)."""
        event = parse_monitor_message(message)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            front.connected = True
            if self.tmp is not None and all(f.connected for f in self.fronts):
                self.tmp.set_ready()  # a HUP retires the old workers once all are
            if not self.leaving:
                self._send(front, [protocol.encode_ready(
                    self.capacity, self.cfg.window, self.pid, self.host,
                    protocol.READY_CONCURRENT if self.concurrent else 0)])
            log.debug("Worker %d connected to %s", self.pid, front.endpoint)
        elif event == zmq.EVENT_DISCONNECTED:
            front.connected = False
            front.generation += 1
            abandoned = list(front.requests.values())
            front.requests.clear()
            front.outbox.clear()
            for req in abandoned:
                req.cancelled = True
                req.wake()
            if abandoned:
                log.warning("Lost %s; abandoned %d request(s)", front.endpoint,
                            len(abandoned))
            else:
                log.info("Lost %s; reconnecting", front.endpoint)

    def serve_queue(self) -> None:
        """Serve the queued requests in order, flushing replies in batches."""
        started = self.busy_since = time.monotonic()
        count = 0
        queue = self.queue
        if self.steal:
            self._arm(True)  # requests may arrive behind this one while the app runs
        while queue:
            req = queue.popleft()
            if req.generation != req.front.generation:
                continue
            if req.cancelled:
                req.end(END_ABORT, b"")
            else:
                if not req.payload[0] & REQ_REPLAYABLE:
                    # the front may send a request elsewhere after our death only if it
                    # can tell that we never started it: nothing that must not run twice
                    # starts while replies to the requests before it wait in an outbox
                    self.flush_all()
                self.handle(req)
            count += 1
            if count >= self.batch or time.monotonic() - started > _BATCH_SECONDS:
                self.flush_all()
                self.notify()
                started = time.monotonic()
                count = 0
            if self.max_requests and self.served >= self.max_requests and self.alive:
                log.info("Worker %d served %d requests (max_requests): recycling", self.pid,
                         self.served)
                self.alive = False
            if not self.alive and not self.leaving:
                break  # start_leaving hands the rest of the queue back
        if self.timer_armed:
            self._arm(False)
        self.flush_all()
        self.busy_time += time.monotonic() - self.busy_since
        self.busy_since = 0.0

    def handle(self, req: Request) -> None:
        """Run the app for one request."""
        try:
            head = protocol.decode_request(req.payload)
        except (ProtocolError, ValueError, IndexError) as exc:
            log.warning("Dropped a malformed REQUEST from %s: %s", req.front.endpoint, exc)
            req._post(protocol.encode_error(req.rid, 502, "malformed request record"))
            req._final()
            return
        environ = build_environ(head, self.base_environ)
        req.window = head.window
        if head.flags & REQ_BODY_COMPLETE:
            environ["wsgi.input"] = io.BytesIO(head.body)
            req.body_done = True
        else:
            if head.body:
                req.body.appendleft(head.body)
                req.consumed = -1  # the piece inside REQUEST took no credit: grant none
            environ["wsgi.input"] = BodyInput(req)
        self.served += 1
        hook_req = None
        if self.pre_request is not None:
            hook_req = HookRequest(head)
            try:
                self.pre_request(self, hook_req)
            except Exception:
                log.exception("Exception in the pre_request hook")
        started = time.monotonic()
        self.enter_app(req, started)
        try:
            resp = serve_request(self.app, environ, head, req, self.cfg.chunk_size,
                                 self.cfg.server_header)
        finally:
            self.leave_app(req)
        if not req.finished:
            req.end(END_ABORT, b"")
        if self.post_request is not None:
            try:
                self.post_request(self, hook_req or HookRequest(head), environ, resp)
            except Exception:
                log.exception("Exception in the post_request hook")
        if self.access is not None:
            duration = time.monotonic() - started
            self.access.write(environ, resp.status or "-", resp.headers, resp.sent,
                              time.time() - duration, duration, head.queue_us / 1000)

    # -- output -------------------------------------------------------------------------

    def flush(self, front: Front) -> None:
        """Send ``front``'s pending records as one frame."""
        if front.outbox:
            records = front.outbox
            front.outbox = []
            self._send(front, records)

    def flush_all(self) -> None:
        for front in self.fronts:
            if front.outbox:
                self.flush(front)

    def _send(self, front: Front, records: list[bytes]) -> None:
        try:
            front.sock.send(protocol.frame(records), _NOBLOCK)
        except _zmq_Again:
            log.warning("The front at %s is not reading; dropped %d record(s)",
                        front.endpoint, len(records))

    def close(self) -> None:
        if self.context is None:
            return
        linger = 1000 if self.leaving else 0  # let the last replies and BYE go out
        for front in self.fronts:
            front.monitor.close(linger=0)
            front.sock.close(linger=linger)
        self.context.term()
        self.context = None


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


class HookRequest:
    """The request as ``pre_request`` and ``post_request`` hooks see it, with the attributes
    of gunicorn's request that such hooks use."""

    __slots__ = ("method", "uri", "path", "query", "version", "headers")

    def __init__(self, head: protocol.RequestHead) -> None:
        self.method = head.method
        self.uri = head.target
        path, _, self.query = head.target.partition("?")
        self.path = path
        self.version = head.version
        names = head.headers[0::2]
        self.headers = [(name.upper(), value) for name, value in zip(names, head.headers[1::2],
                                                                    strict=True)]


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
