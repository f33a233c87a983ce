"""The broker: one ROUTER socket that hands requests to handler workers by credit.

Usage (inside a gevent process, after any fork)::

    dispatcher = Dispatcher(cfg)           # binds cfg.backend, watches the zmq FD
    ex = Exchange(dispatcher.new_rid(), sink)
    ex.record = protocol.encode_request(ex.rid, ...)
    dispatcher.submit(ex)                  # sink.on_response / on_chunk / on_end /
                                           # on_failure / on_body_credit follow

The life of an exchange, and every rule about it, is in the table ``TRANSITIONS``: an
exchange is NEW (built by its sink), QUEUED (waiting for a free worker), SENT (a worker holds
it and has not started the response), STARTED (the response head reached the sink) or DONE.
Every change of state goes through ``Exchange.move``, which refuses a change the table does
not allow, so a bug raises at once instead of corrupting a count. Counts are derived: the
queue depth is ``len(queue)``, a worker's requests in flight are ``len(peer.slots)``.
``Dispatcher.check()`` asserts every invariant; the tests call it after every step.

What it guarantees:

- **Every submitted exchange ends exactly once.** Its sink gets exactly one final call
  (``on_response`` with ``RESP_END``, ``on_end`` or ``on_failure``) unless the sink cancelled
  it first, and the unit of worker capacity it took is returned exactly once: when the worker
  sends its final record, or when the worker is lost. An exchange the sink gives up while a
  worker holds it leaves a *ghost* in the worker's slot: the worker is told to CANCEL, and the
  slot is free again when the worker acknowledges with its final record.
- **Lanes.** A job (a JOB record) goes to the workers of its service; an HTTP request to
  the workers of one version of one pool (``http_key``), which its sink picks with
  ``route`` (by the front's routes, the versions' weights and standby, and the version the
  request asks for). Each ``Lane`` has its own lines of workers and its own queue, so a
  flood for one service does not take the queue of another. A lane counts its workers
  that take work (``serving``); when none is left, its waiting HTTP requests move to the
  lane ``route`` picks now (``_rebalance``).
- **Dispatch by credit.** A worker announces its capacity (READY); it holds at most that many
  slots. An idle worker is preferred, least recently used first; then a worker with free
  capacity that is not stalled. With no capacity anywhere a request waits in a FIFO queue of
  ``queue_size``; past that it is answered 503 at once, and after ``queue_timeout`` in the
  queue it is answered 503 too (the service is overloaded: ``Retry-After``).
- **Batching.** Records for one worker produced in one loop iteration leave as one frame,
  flushed by a loop callback at the end of the iteration: a lone request waits for nothing,
  a burst costs one ``send``. Replies are drained until the socket is empty.
- **Nothing hangs.** A dispatched request without progress for ``request_timeout`` gets 504
  and its worker is told to CANCEL. A worker that disconnects (seen through a socket monitor
  and ZMTP heartbeats, confirmed by ``ROUTER_MANDATORY``) fails over, see ``_fail_over``.
- **Outliers are ejected.** A worker whose last ``eject_after`` requests in a row timed out,
  failed with an ERROR of 500 or more, or broke the protocol gets nothing new; it is probed
  (a HEARTBEAT carrying an id it must echo) once its ejection time is over, and returns to
  dispatch when it answers. Each ejection lasts longer than the one before.
- **Hostile input is dropped.** A frame that fails to decode is counted and dropped, and
  logged at most a few lines a minute (``LogLimiter``); it never stops the front.

The ZeroMQ FD is edge-triggered: it signals that the socket's state changed, not that a
message waits. So the receive callback drains until ``Again``, and every flush checks
``EVENTS`` once, because a send may consume the edge that announced incoming messages.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import socket
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

import gevent
import zmq
from zmq.utils.monitor import parse_monitor_message

from wsgi_zmq import protocol
from wsgi_zmq.errors import BadGateway, GatewayTimeout, HTTPError, ProtocolError, ServiceUnavailable
from wsgi_zmq.front.auth import Guard
from wsgi_zmq.front.sockets import bind_zmq
from wsgi_zmq.log import LogLimiter
from wsgi_zmq.protocol import (
    BYE,
    CHUNK,
    CREDIT,
    DEFAULT_POOL,
    END,
    ERROR,
    HEARTBEAT,
    JOB_FINAL,
    JOB_REPLY,
    PIPE,
    PIPED,
    READY,
    REJECT,
    RESP_END,
    RESPONSE,
    RING,
    STATS,
)
from wsgi_zmq.ring import READ_BUDGET, BodyRing, PeerPipe, RingRefused, open_pipes, open_ring

log = logging.getLogger("wsgi_zmq.error.dispatcher")

#: How many workers may die while possibly running one request before it is answered 502
#: instead of dispatched again. A request "possibly running" is one a worker that serves
#: in order held as its oldest, or any request a worker that serves at once held (the
#: rule is ``_fail_over``'s); requests that waited behind the running one in a worker that
#: serves in order never ran, and go back to the queue whatever their method, without
#: counting. Two is enough to survive a crash or a restart, and too few for one request
#: that kills every worker it touches to take down the pool. Only idempotent requests
#: whose body was whole are replayed: a POST that may have run gets 502.
MAX_ATTEMPTS: Final = 2
#: How many times in all a request may lose its worker before it gets 502, whatever the
#: reason: bounds a request that kills workers while it waits behind replies that never
#: left them (their loss cannot show it ran).
MAX_LOSSES: Final = 4

#: Frames drained per turn of the loop; the rest wait for the next turn, after the loop has
#: polled the client sockets. (A loop callback would not do: gevent runs up to 50 callbacks
#: before it looks at the clock, so a flood of frames from one peer held every client
#: back for 50 ms at a time.)
_RECV_BATCH = 64
#: Messages that are waste (``_handle``) end the turn after this many: a peer flooding
#: garbage costs each turn at most that much, and what it sends faster waits in libzmq,
#: whose queue limit (RCVHWM) then stops reading from its connection.
_WASTE_PER_TURN = 8

#: A busy worker that has finished no request for this long is stalled: it gets nothing new
#: until it finishes one. A sync worker runs its requests in order, so a request sent to a
#: worker stuck in a slow one would wait behind it while other workers may be free.
STALL_SECONDS = 0.02

#: The first ejection of a worker lasts this many heartbeats; each further one once more,
#: up to ``_EJECT_MAX_BEATS``. Once it is over, the worker is probed every heartbeat.
_EJECT_BEATS: Final = 5
_EJECT_MAX_BEATS: Final = 60

#: The HTTP workers' lane; a job service's lane is named by the service.
HTTP: Final = ""
#: Most lanes of job services that no worker serves (yet): requests for them wait until a
#: worker comes or their queue timeout passes. Beyond it a request for a service no worker
#: serves is refused at once, so clients cannot fill the front with made-up service names.
MAX_EMPTY_LANES: Final = 256
#: How many versions of HTTP pools the front remembers (their weight and standby).
MAX_VERSIONS: Final = 1024

# -- exchange states -------------------------------------------------------------------

NEW: Final = 0
QUEUED: Final = 1
SENT: Final = 2
STARTED: Final = 3
DONE: Final = 4
STATE_NAMES: Final = ("NEW", "QUEUED", "SENT", "STARTED", "DONE")

#: Every change of state an exchange may make, and the events that make it:
#:
#: ====== =========================================================================
#: NEW    -> SENT (submit, a worker is free), QUEUED (submit, none is free),
#:           DONE (submit into a full queue: 503; or the sink gives up before submitting)
#: QUEUED -> SENT (a worker frees up), DONE (cancel; queue timeout: 503; shutdown)
#: SENT   -> STARTED (the response head, or a job's partial reply), QUEUED (REJECT, or its
#:           worker was lost and it may be sent again), DONE (the whole response or the
#:           final job reply, END, ERROR, cancel, request timeout: 504, worker lost: 502,
#:           malformed reply: 502, shutdown)
#: STARTED-> DONE (END, ERROR, cancel, worker lost, malformed reply, shutdown)
#: DONE   -> nothing: later records for it are acknowledged by the ghost or dropped
#: ====== =========================================================================
TRANSITIONS: Final[tuple[frozenset[int], ...]] = (
    frozenset({SENT, QUEUED, DONE}),    # NEW
    frozenset({SENT, DONE}),            # QUEUED
    frozenset({STARTED, QUEUED, DONE}),  # SENT
    frozenset({DONE}),                  # STARTED
    frozenset(),                        # DONE
)

_UNLISTED, _IDLE, _READY = 0, 1, 2

_zmq_Again = zmq.Again
_NOBLOCK = zmq.NOBLOCK
_SNDMORE = zmq.SNDMORE
_POLLIN = zmq.POLLIN
_EVENTS = zmq.EVENTS
_split_frame = protocol.split_frame
_VERSION_BYTE = protocol.VERSION_BYTE
_FINAL_KINDS: Final = frozenset({END, ERROR, REJECT})


def _body_window(peer: Peer) -> int:
    """The most BODY records a request may have outstanding at ``peer``: its window, and
    no more than the window its body ring's groups were cut for (a READY may restate a
    larger one; a slot is used again a group's length of pieces later)."""
    ring = peer.ring
    return peer.window if ring is None else min(peer.window, ring.window)


def _timed(ex: Exchange) -> bool:
    """Does ``request_timeout`` bound ``ex`` now? Until its response starts; a job also
    between its partial replies (an HTTP response that started streams to its client)."""
    return ex.state == SENT or (ex.state == STARTED and ex.job)


def _is_final(kind: int, payload: bytes) -> bool:
    """Does this worker record end its exchange?"""
    if kind in _FINAL_KINDS:
        return True
    if kind == RESPONSE:
        return bool(payload[0] & RESP_END)
    return kind == JOB_REPLY and bool(payload[0] & JOB_FINAL)

_HANDSHAKE_FAILED: Final = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                            | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_HANDSHAKE_FAILURES: Final[dict[int, str]] = {
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "its handshake broke the protocol (no CURVE, or it "
                                         "does not know the front's public key)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "its key was refused",
}


class StateError(AssertionError):
    """An exchange was asked to make a change ``TRANSITIONS`` does not allow."""


def _debug() -> bool:
    return log.isEnabledFor(logging.DEBUG)


class Sink(Protocol):
    """The side that owns a request (an HTTP connection, or ``FrontApp``)."""

    def on_response(self, ex: Exchange, flags: int, payload: bytes) -> None: ...

    def on_chunk(self, ex: Exchange, data: bytes) -> None: ...

    def on_end(self, ex: Exchange, flags: int, tail: bytes) -> None: ...

    def on_failure(self, ex: Exchange, error: HTTPError) -> None: ...

    def on_body_credit(self, ex: Exchange, count: int) -> None:
        """The worker granted ``count`` more BODY records; ``count`` 0: a worker took
        ``ex`` anew and has granted nothing yet (its credit is back to 0)."""


class JobSink(Sink, Protocol):
    """The sink of job exchanges (the job endpoint): it also takes the job's replies."""

    def on_job_reply(self, ex: Exchange, flags: int, frames: list[bytes]) -> None: ...


class WorkerError(HTTPError):
    """A status a worker asked the front to answer with (an ERROR record)."""

    close = False

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status  # type: ignore[misc]
        self.reason = _REASONS.get(status, "Error")  # type: ignore[misc]


_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout", 400: "Bad Request", 413: "Content Too Large"}


class Exchange:
    """One request/response exchange as the dispatcher sees it.

    The sink sets ``record`` (the encoded REQUEST), ``replayable`` (idempotent, body whole)
    and ``body_complete`` before ``submit``. A request whose body is not complete must be
    encoded with ``REQ_EXPECT``: its worker sends CREDIT when the app starts reading, so a
    request that has not started has received nothing but its REQUEST record and can be
    sent to another worker. The dispatcher sets ``worker`` while a worker holds it and keeps
    ``body_credit`` (BODY records the worker will take).

    A sink that keeps a copy of every piece it sends before the worker's first CREDIT, and
    sends them again after a REJECT or a worker's loss, sets ``presend``: given to a worker
    with a body ring and a free group in it, such an exchange gets credit for the first
    pieces at once (``early``), so its body flows while the worker starts the app; the
    worker's first CREDIT then counts the pieces already sent.
    """

    __slots__ = ("rid", "sink", "record", "state", "worker", "replayable", "body_complete",
                 "attempts", "losses", "body_sent", "deadline", "wait_deadline",
                 "body_credit", "queued_at", "service", "job", "presend", "early")

    def __init__(self, rid: int, sink: Sink, service: str = HTTP) -> None:
        self.rid = rid
        self.sink = sink
        # the lane: a job service (a JOB record), or for an HTTP request the key of a pool
        # version (``http_key``; HTTP, "", is the pool ``default`` without a version),
        # which the sink sets from ``Dispatcher.route`` before ``submit``
        self.service = service
        self.job = bool(service)
        self.record = b""
        self.state = NEW
        self.worker: Peer | None = None
        self.replayable = False
        self.body_complete = True
        self.attempts = 0  # workers that died while possibly running it
        self.losses = 0  # workers that died while holding it
        self.body_sent = 0  # BODY records sent to the worker holding it
        self.deadline = 0.0  # QUEUED: its queue timeout; SENT: its request timeout
        # until a worker starts it: a request workers keep handing back (REJECT) still
        # waits for one, and gets 503 once queue_timeout has passed since it first did
        self.wait_deadline = 0.0
        self.body_credit = 0
        self.queued_at = 0.0
        self.presend = False
        self.early = False  # the credit it has is the front's, before the worker's first

    def move(self, state: int) -> None:
        """Change state, or raise ``StateError`` if ``TRANSITIONS`` does not allow it."""
        if state not in TRANSITIONS[self.state]:
            raise StateError(f"exchange {self.rid:x}: {STATE_NAMES[self.state]} -> "
                             f"{STATE_NAMES[state]} is not a transition")
        self.state = state

    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def started(self) -> bool:
        """The response head reached the sink (so a failure can only cut it)."""
        return self.state == STARTED

    def __repr__(self) -> str:
        return f"<exchange {self.rid:x} {STATE_NAMES[self.state]}>"


class Ghost:
    """A worker's slot for an exchange its sink gave up: holds the unit of capacity until
    the worker's final record (or the worker's loss) returns it."""

    __slots__ = ("rid",)

    def __init__(self, rid: int) -> None:
        self.rid = rid


class Peer:
    """One connected handler worker, as the front sees it.

    ``slots`` maps the rid of every exchange it holds (or the ghost of one) to it, in the
    order they were sent: its requests in flight are ``len(slots)``.
    """

    __slots__ = ("ident", "capacity", "window", "pid", "host", "outbox", "slots", "leaving",
                 "gone", "line", "progress", "concurrent", "failures", "ejections",
                 "ejected_until", "probe_rid", "probed_at", "lane", "idempotent", "link",
                 "pool", "version", "master", "drained", "served", "busy", "changed",
                 "heard", "since", "ring", "pipe")

    def __init__(self, ident: bytes, capacity: int, window: int, pid: int, host: str,
                 lane: Lane) -> None:
        self.ident = ident
        self.lane = lane
        self.idempotent = False  # a job pool whose jobs may all run twice
        # a worker that speaks another protocol on another socket (an MDP worker on the job
        # endpoint): its records go to ``link.deliver(peer, records)``, not to our ROUTER
        self.link: Link | None = None
        self.capacity = capacity
        self.window = window
        self.pid = pid
        self.host = host
        self.outbox: list[bytes] = []
        self.slots: dict[int, Exchange | Ghost] = {}
        self.leaving = False  # said BYE: gets nothing new, forgotten once its slots are free
        self.gone = False  # lost or forgotten: its ident is no longer in ``peers``
        self.line = _UNLISTED  # which deque holds it: _IDLE, _READY or none
        self.concurrent = False  # serves its requests at once: never stalled
        self.progress = 0.0  # when it last finished a request, or became busy
        self.failures = 0  # consecutive timeouts, 5xx ERRORs and malformed replies
        self.ejections = 0
        self.ejected_until = 0.0  # nonzero while ejected: when probing may start
        self.probe_rid = 0
        self.probed_at = 0.0
        # what the control socket shows: the pool it belongs to (name, version, its master's
        # pid), whether an operator drained it, requests it finished, the integral of its
        # slots held over time (``busy`` seconds, up to ``changed``), when its last frame
        # came, and when it connected
        self.pool = protocol.DEFAULT_POOL
        self.version = ""
        self.master = 0
        self.drained = False  # ``ctl drain``: gets nothing new until ``ctl resume``
        self.served = 0
        self.busy = 0.0
        self.changed = 0.0
        self.heard = 0.0
        self.since = 0.0
        # the body ring it shares (a worker on this host, RING): its requests' bodies go
        # into it, BODY_AT records tell where
        self.ring: BodyRing | None = None
        # the pipes instead of the ROUTER (PIPE): it reads our frames from one once PIPED
        # went, we read its frames from the other once its PIPED came
        self.pipe: PeerPipe | None = None

    @property
    def inflight(self) -> int:
        return len(self.slots)

    @property
    def ejected(self) -> bool:
        return self.ejected_until != 0.0

    @property
    def eligible(self) -> bool:
        """May it be given new requests (capacity aside)?"""
        return not (self.leaving or self.gone or self.ejected_until or self.drained)

    def __repr__(self) -> str:
        return f"<worker {self.pid}@{self.host} {len(self.slots)}/{self.capacity}>"


class Link(Protocol):
    """Where the records for a foreign worker go (``Dispatcher.attach``)."""

    def deliver(self, peer: Peer, records: list[bytes]) -> bool:
        """Translate and send ``records``; False if the worker is gone (it is dropped)."""
        ...


def http_key(pool: str, version: str) -> str:
    """The lane key of an HTTP pool version: HTTP ("") for the pool ``default`` without a
    version (the common case keeps the lane it always had), else NUL, pool, NUL, version
    (no job service has a NUL in its name)."""
    if pool == DEFAULT_POOL and not version:
        return HTTP
    return f"\0{pool}\0{version}"


class Lane:
    """The workers of one service and the requests that wait for them: the HTTP workers
    of one version of one pool, or the job pool(s) of one job service. Dispatch never
    crosses lanes (a request whose lane lost its last worker is routed again).

    ``idle`` and ``ready`` are the lines of its workers (least recently used first),
    ``queue`` its waiting requests; ``members`` counts its connected workers.
    """

    __slots__ = ("service", "idle", "ready", "queue", "members", "job", "pool", "version",
                 "serving")

    def __init__(self, service: str, pool: str = DEFAULT_POOL, version: str = "") -> None:
        self.service = service  # the key in ``Dispatcher.lanes``
        self.job = bool(service) and service[0] != "\0"
        self.pool = service if self.job else pool
        self.version = version
        self.idle: collections.deque[Peer] = collections.deque()
        self.ready: collections.deque[Peer] = collections.deque()
        # insertion-ordered, O(1) removal of any entry (a client that gives up), and
        # move_to_end(last=False) puts a request sent back by a worker first in line
        self.queue: collections.OrderedDict[Exchange, None] = collections.OrderedDict()
        self.members = 0
        self.serving = 0  # members that take work (eligible): kept by ``_changed``

    @property
    def label(self) -> str:
        if self.job:
            return f"service {self.service!r}"
        return f"pool {self.pool}" + (f" version {self.version}" if self.version else "")

    def __repr__(self) -> str:
        return f"<lane {self.label}: {self.members} workers, {len(self.queue)} waiting>"


class Version:
    """What the front knows of one version of an HTTP pool: its weight and whether it is
    in standby, set by its first worker's READY and then by operators (``ctl weight``,
    ``ctl promote``); and its smooth weighted round robin count (``Dispatcher.route``)."""

    __slots__ = ("pool", "name", "weight", "standby", "current", "key")

    def __init__(self, pool: str, name: str, weight: int, standby: bool) -> None:
        self.pool = pool
        self.name = name
        self.weight = weight
        self.standby = standby
        self.current = 0
        self.key = http_key(pool, name)

    def __repr__(self) -> str:
        state = " standby" if self.standby else ""
        return f"<version {self.pool}/{self.name or '-'} weight {self.weight}{state}>"


class Dispatcher:
    """The broker; see the module docstring. Create it in the process that uses it.

    ``clock`` (seconds, monotonic) defaults to the loop's time; tests pass their own to
    drive timeouts.
    """

    def __init__(self, cfg: Any, loop: Any = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.cfg = cfg
        self.loop = loop if loop is not None else gevent.get_hub().loop
        self.clock: Callable[[], float] = clock if clock is not None else self.loop.now
        self.queue_size: int = cfg.queue_size
        self.max_queue_bytes: int = cfg.max_queue_bytes
        # the bytes of the records of every queued exchange, all lanes (``check`` derives
        # it again); a submit that would pass ``max_queue_bytes`` is refused at once
        self.queued_bytes = 0
        self.request_timeout: float = cfg.request_timeout
        self.queue_timeout: float = cfg.queue_timeout
        self.eject_after: int = cfg.eject_after
        self.heartbeat: float = cfg.heartbeat
        self.window: int = cfg.window
        self.peers: dict[bytes, Peer] = {}
        # the workers' body rings by (device, inode): no two workers share one
        self.rings: dict[tuple[int, int], Peer] = {}
        self.take_rings = bool(cfg.body_ring)
        self.take_pipes = bool(cfg.frame_pipes)
        self.ring_bytes = 0  # of request bodies that went through rings (the metrics)
        self.host = socket.gethostname()
        # pools an operator drained (``ctl drain POOL``): their workers, including those
        # that connect later, get nothing new until ``ctl resume``
        self.drained_pools: set[str] = set()
        # what each pool master (host, pid) last reported through its workers (STATS):
        # its pool's name and its figures; forgotten with its last worker
        self.pool_stats: dict[tuple[str, int], tuple[str, protocol.PoolStats]] = {}
        self.http = Lane(HTTP)
        self.lanes: dict[str, Lane] = {HTTP: self.http}
        # HTTP pools by name, their versions by tag (``route`` picks among them); True once
        # a worker of another pool or of a named version connected (before that, every
        # HTTP request belongs to the lane HTTP and the sink need not ask ``route``)
        self.versions: dict[str, dict[str, Version]] = {}
        self.versioned = False
        # the HTTP lane's, under the names the front and its tests use
        self.idle = self.http.idle
        self.ready = self.http.ready
        self.queue = self.http.queue
        self.malformed = LogLimiter(log, "malformed messages from the backend")
        self.refused_rings = LogLimiter(log, "refused body rings")
        # anyone who reaches a job endpoint without CURVE may come and go as an MDP worker:
        # their arrivals and losses are rate limited too
        self.foreign = LogLimiter(log, "lines about MDP workers", burst=20)
        self._dirty: list[Peer] = []
        self._flush_scheduled = False
        self._rid = random.getrandbits(63)
        self.closed = False
        self.metrics: Any = None  # the front's FrontMetrics, with metrics_bind
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100000)
        self.sock.setsockopt(zmq.RCVHWM, 100000)
        interval = max(1, int(cfg.heartbeat * 1000))
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, interval)
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * interval)
        self.sock.setsockopt(zmq.HEARTBEAT_TTL, 3 * interval)
        # CURVE: the workers' keys as ZAP admitted them (User-Id), and the connections of
        # keys taken out of curve_allow, whose messages are dropped from then on
        self.guard: Guard | None = None
        self.keys: dict[bytes, bytes] = {}
        self.revoked: set[bytes] = set()
        events = zmq.EVENT_DISCONNECTED
        if cfg.curve_secret_key is not None:
            self.guard = Guard(self.context, self.loop, cfg.curve_secret_key, cfg.curve_allow,
                               admit_self=cfg.role == "all")
            self.guard.secure(self.sock)
            events |= _HANDSHAKE_FAILED
        self.endpoints: list[str] = []
        for endpoint in cfg.backend:
            bind_zmq(self.sock, endpoint, cfg.umask)
            self.endpoints.append(self.sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self.monitor = self.sock.get_monitor_socket(events)
        self._recv = self.sock.recv
        self._send = self.sock.send
        self._watcher = self.loop.io(self.sock.getsockopt(zmq.FD), 1)
        self._watcher.start(self._on_readable)
        self._more = self.loop.timer(0.0)
        self._monitor_watcher = self.loop.io(self.monitor.getsockopt(zmq.FD), 1)
        self._monitor_watcher.start(self._on_monitor)
        tick = min(1.0, self.request_timeout / 4, self.queue_timeout / 4, cfg.heartbeat)
        self._timer = self.loop.timer(tick, tick)
        self._timer.start(self.tick)
        self._last_probe = self.clock()
        # the FDs may already be readable (edge passed before the watchers existed)
        self.loop.run_callback(self._on_readable)
        self.loop.run_callback(self._on_monitor)

    # -- API for sinks ------------------------------------------------------------------

    def new_rid(self) -> int:
        self._rid = (self._rid + 1) & 0xFFFFFFFFFFFFFFFF
        return self._rid or self.new_rid()  # rid 0 means "no exchange"

    def submit(self, ex: Exchange) -> None:
        """Send ``ex`` to a worker of its lane with free capacity, or queue it, or answer
        503."""
        ex.wait_deadline = self.clock() + self.queue_timeout
        lane = self.lanes.get(ex.service)
        if lane is None:
            lane = self._new_lane(ex.service)
            if lane is None:
                ex.move(DONE)
                ex.sink.on_failure(ex, ServiceUnavailable(
                    "No worker serves it, and too many services and pools wait for one"))
                return
        if not lane.queue:
            peer = self._pick(lane)
            if peer is not None:
                ex.move(SENT)
                self._assign(ex, peer)
                return
        if len(lane.queue) >= self.queue_size or (
                lane.service and not lane.members and self._orphans_full()):
            ex.move(DONE)
            ex.sink.on_failure(ex, ServiceUnavailable("No worker is free; try again"))
            return
        if self.queued_bytes + len(ex.record) > self.max_queue_bytes:
            ex.move(DONE)
            ex.sink.on_failure(ex, ServiceUnavailable(
                "No worker is free, and what waits already holds max_queue_bytes; try again"))
            return
        ex.move(QUEUED)
        self._enqueue(ex, lane)

    def serves(self, service: str) -> bool:
        """Is a worker of ``service`` connected (MMI's ``mmi.service``)?"""
        lane = self.lanes.get(service)
        return lane is not None and lane.serving > 0

    def serves_http(self) -> bool:
        """Does an HTTP worker that takes work serve any pool?"""
        return any(lane.serving for lane in self.lanes.values() if not lane.job)

    def _orphans_full(self) -> bool:
        """Do ``queue_size`` jobs wait, all lanes together, for services that no worker
        serves? Then a request for another such service is refused at once: made-up service
        names cannot make the front hold ``MAX_EMPTY_LANES`` full queues."""
        waiting = 0
        for lane in self.lanes.values():
            if lane.service and not lane.members:
                waiting += len(lane.queue)
        return waiting >= self.queue_size

    def _new_lane(self, service: str) -> Lane | None:
        """A new lane for a request for ``service`` (a job service, or a pool version's
        key), which no worker serves; none while ``MAX_EMPTY_LANES`` lanes have no
        worker."""
        if sum(1 for lane in self.lanes.values() if lane.service and not lane.members) >= \
                MAX_EMPTY_LANES:
            return None
        return self._lane(service)

    def _lane(self, key: str) -> Lane:
        """The lane of ``key``, made if there is none."""
        lane = self.lanes.get(key)
        if lane is None:
            if key[:1] == "\0":
                _, pool, version = key.split("\0", 2)
                lane = Lane(key, pool, version)
            else:
                lane = Lane(key)
            self.lanes[key] = lane
        return lane

    # -- pools, versions and routing -------------------------------------------------------

    def route(self, pool: str, asked: str | None = None, sticky: str | None = None
              ) -> tuple[str, str | None]:
        """The lane key for an HTTP request routed to ``pool``, and the version picked by
        weight (None when the request asked for one or ``sticky`` still holds).

        ``asked`` (the request's version header or cookie) wins while that version has a
        worker that takes work, standby or not; ``sticky`` (the client's sticky cookie)
        while that version takes traffic. Otherwise the pool's versions out of standby,
        with a weight and a worker that takes work, share the requests by smooth weighted
        round robin (exact proportions, evenly spread). With none, the request waits for
        the heaviest version out of standby (its workers may be coming back), or for the
        pool's first version."""
        versions = self.versions.get(pool)
        if not versions:
            return http_key(pool, ""), None
        lanes = self.lanes
        if asked is not None:
            version = versions.get(asked)
            if version is not None:
                lane = lanes.get(version.key)
                if lane is not None and lane.serving:
                    return version.key, None
        if sticky is not None:
            version = versions.get(sticky)
            if version is not None and not version.standby and version.weight:
                lane = lanes.get(version.key)
                if lane is not None and lane.serving:
                    return version.key, None
        best = None
        total = 0
        for version in versions.values():
            if version.standby or not version.weight:
                continue
            lane = lanes.get(version.key)
            if lane is None or not lane.serving:
                continue
            version.current += version.weight
            total += version.weight
            if best is None or version.current > best.current:
                best = version
        if best is not None:
            best.current -= total
            return best.key, best.name
        waiting = [v for v in versions.values() if not v.standby]
        if waiting:
            return max(waiting, key=lambda v: v.weight).key, None
        return next(iter(versions.values())).key, None

    def set_weight(self, pool: str, name: str, weight: int) -> Version:
        """``ctl weight POOL VERSION N``."""
        version = self.version_of(pool, name)
        if not 0 <= weight <= protocol.MAX_WEIGHT:
            raise ValueError(f"a weight is 0 to {protocol.MAX_WEIGHT}")
        log.info("Pool %s version %s: weight %d (was %d)", pool, name or "-", weight,
                 version.weight)
        version.weight = weight
        for other in self.versions[pool].values():
            other.current = 0  # the round robin starts afresh on the new weights
        self._rebalance(pool)
        return version

    def promote(self, pool: str, name: str) -> list[Version]:
        """``ctl promote POOL VERSION``: it takes the pool's traffic, every other version of
        the pool goes to standby (still connected: promoting it back is a rollback)."""
        version = self.version_of(pool, name)
        changed = []
        for other in self.versions[pool].values():
            standby = other is not version
            if other.standby != standby:
                other.standby = standby
                changed.append(other)
            other.current = 0
        log.info("Pool %s: version %s promoted; in standby: %s", pool, name or "-",
                 ", ".join(v.name or "-" for v in self.versions[pool].values()
                           if v.standby) or "none")
        self._rebalance(pool)
        return changed

    def version_of(self, pool: str, name: str) -> Version:
        versions = self.versions.get(pool)
        if versions is None:
            raise ValueError(f"no pool {pool!r} (pools: "
                             f"{', '.join(sorted(self.versions)) or 'none'})")
        version = versions.get(name)
        if version is None:
            raise ValueError(f"pool {pool!r} has no version {name!r} (versions: "
                             f"{', '.join(repr(v) for v in sorted(versions))})")
        return version

    def _version(self, pool: str, name: str, weight: int, standby: bool) -> None:
        """Know version ``name`` of ``pool`` (from a worker's READY); an operator's changes
        to a version already known stand. At most ``MAX_VERSIONS`` are remembered: past
        that, those without a connected worker are forgotten."""
        versions = self.versions.setdefault(pool, {})
        if name in versions:
            return
        if sum(map(len, self.versions.values())) >= MAX_VERSIONS:
            for known in list(self.versions.values()):
                for version in list(known.values()):
                    lane = self.lanes.get(version.key)
                    if lane is None or not lane.members:
                        del known[version.name]
            for key in [k for k, known in self.versions.items() if not known]:
                del self.versions[key]
            versions = self.versions.setdefault(pool, {})
        versions[name] = Version(pool, name, weight, standby)
        self.versioned = True

    def _changed(self, lane: Lane) -> None:
        """A worker of ``lane`` came, left, or started or stopped taking work: count again
        the ones that take work; an HTTP pool's waiting requests may move."""
        serving = sum(1 for peer in self.peers.values() if peer.lane is lane and
                      peer.eligible)
        if serving == lane.serving:
            return
        lane.serving = serving
        if not lane.job:
            self._rebalance(lane.pool)

    def _rebalance(self, pool: str) -> None:
        """Requests waiting in a lane of ``pool`` that has no worker taking work go where
        ``route`` sends them now (in their order, keeping their deadlines), if that lane
        has one; they join the end of its queue, and what passes its bound gets 503."""
        if pool not in self.versions:
            return
        moved: list[Lane] = []
        for lane in list(self.lanes.values()):
            if lane.job or lane.pool != pool or lane.serving or not lane.queue:
                continue
            for ex in list(lane.queue):
                key, _ = self.route(pool)
                target = self.lanes.get(key)
                if target is None or target is lane or not target.serving:
                    continue
                del lane.queue[ex]
                ex.service = key
                target.queue[ex] = None
                if target not in moved:
                    moved.append(target)
        for target in moved:
            self._drain_queue(target)
            self._trim(target)

    def send_body(self, ex: Exchange, data: bytes | memoryview) -> None:
        """Queue a BODY record for a dispatched exchange (the sink minds ``body_credit``),
        or write the piece into the worker's ring and queue its BODY_AT. A view is
        copied now: the sink may use its memory again once this returns."""
        peer = ex.worker
        if peer is None:
            return
        ex.body_credit -= 1
        index = ex.body_sent
        ex.body_sent = index + 1
        ex.deadline = self.clock() + self.request_timeout
        ring = peer.ring
        if ring is not None:
            slot = ring.put(ex.rid, index, data)
            if slot >= 0:
                self.ring_bytes += len(data)
                self._post(peer, protocol.encode_body_at(ex.rid, slot, len(data)))
                return
        self._post(peer, protocol.data_head(protocol.BODY, ex.rid, len(data)))
        peer.outbox.append(data if isinstance(data, bytes) else bytes(data))

    def send_at(self, ex: Exchange, slot: int, size: int) -> None:
        """Queue a BODY_AT record: the sink read the next piece of ``ex``'s body, ``size``
        bytes, into ``slot`` of its worker's ring itself (``BodyRing.slot``, ``view``)."""
        peer = ex.worker
        assert peer is not None and peer.ring is not None
        ex.body_credit -= 1
        ex.body_sent += 1
        ex.deadline = self.clock() + self.request_timeout
        self.ring_bytes += size
        self._post(peer, protocol.encode_body_at(ex.rid, slot, size))

    def end_early(self, ex: Exchange) -> None:
        """The sink sends no more of ``ex``'s body before its worker's first CREDIT (it
        keeps copies of what it sent, and has kept enough)."""
        if ex.early:
            ex.body_credit = 0

    def end_body(self, ex: Exchange) -> None:
        """Tell the worker the request body is complete."""
        peer = ex.worker
        if peer is not None:
            self._post(peer, protocol.encode_request_end(ex.rid))

    def grant(self, ex: Exchange, count: int = 1) -> None:
        """Let the worker send ``count`` more CHUNK records for ``ex``."""
        peer = ex.worker
        if peer is not None:
            self._post(peer, protocol.encode_credit(ex.rid, count))

    def cancel(self, ex: Exchange) -> None:
        """The sink gives up on ``ex`` (client gone, or it answered itself): in any state,
        no more calls reach the sink for it. A worker holding it is told to CANCEL; its slot
        stays taken (by a ghost) until the worker acknowledges with its final record."""
        state = ex.state
        if state == DONE:
            return
        if state == QUEUED:
            self._unqueue(self.lanes[ex.service], ex)
        elif state != NEW:
            peer = ex.worker
            assert peer is not None
            self._post(peer, protocol.encode_signal(protocol.CANCEL, ex.rid))
            self._detach(ex, peer)
        ex.move(DONE)

    def close(self) -> None:
        """Stop: every exchange still queued or held ends (its sink is told nothing: the
        front closes its connections first), and the sockets close."""
        self.closed = True  # a flush still scheduled finds nothing to do
        self._dirty = []
        for lane in self.lanes.values():
            for ex in lane.queue:
                ex.move(DONE)
            lane.queue.clear()
        self.queued_bytes = 0
        for peer in list(self.peers.values()):
            for slot in list(peer.slots.values()):
                if isinstance(slot, Exchange):
                    slot.worker = None
                    slot.move(DONE)
            peer.slots.clear()
            self._forget(peer)
        self._watcher.stop()
        self._more.stop()
        self._monitor_watcher.stop()
        self._timer.stop()
        if self.guard is not None:
            self.guard.close()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.context.term()

    # -- the invariants -------------------------------------------------------------------

    def check(self) -> None:
        """Assert every invariant of the dispatcher's state; raise ``AssertionError``.

        Tests call it after every step. Cheap enough for a debugging front
        (``WSGI_ZMQ_CHECK=1`` calls it once per loop iteration).
        """
        members: dict[str, int] = collections.Counter()
        for ident, peer in self.peers.items():
            assert peer.ident == ident and not peer.gone
            assert self.lanes.get(peer.lane.service) is peer.lane, f"{peer!r}: unknown lane"
            members[peer.lane.service] += 1
        for service, lane in self.lanes.items():
            assert lane.service == service, f"{lane!r} filed as {service!r}"
            assert lane.members == members[service], f"{lane!r}: {members[service]} workers"
            serving = sum(1 for p in self.peers.values() if p.lane is lane and p.eligible)
            assert lane.serving == serving, f"{lane!r}: {serving} take work, not {lane.serving}"
            for ex in lane.queue:
                assert ex.state == QUEUED, f"{ex!r} in the queue"
                assert ex.worker is None, f"queued {ex!r} has a worker"
                assert ex.service == service, f"{ex!r} in the queue of {lane!r}"
            assert len(lane.queue) <= self.queue_size, f"{lane!r}: the queue is over its bound"
            lines = {_IDLE: lane.idle, _READY: lane.ready}
            for line, listed in lines.items():
                assert len(set(map(id, listed))) == len(listed), "a worker listed twice"
                for peer in listed:
                    assert peer.line == line, f"{peer!r} in the wrong line"
                    assert self.peers.get(peer.ident) is peer, f"{peer!r} listed but unknown"
                    assert peer.lane is lane, f"{peer!r} listed in {lane!r}"
                    assert peer.eligible, f"{peer!r} listed but not eligible"
            if lane.queue:
                assert not lane.idle, f"{lane!r}: requests wait while a worker is idle"
        queued = sum(len(ex.record) for lane in self.lanes.values() for ex in lane.queue)
        assert self.queued_bytes == queued, \
            f"queued_bytes {self.queued_bytes}, the queues hold {queued}"
        assert self.idle is self.http.idle and self.ready is self.http.ready and \
            self.queue is self.http.queue, "the HTTP lane's names moved"
        for peer in self.peers.values():
            lines = {_IDLE: peer.lane.idle, _READY: peer.lane.ready}
            if peer.line != _UNLISTED:
                assert peer in lines[peer.line], f"{peer!r} thinks it is listed"
            if peer.line == _IDLE:
                assert not peer.slots, f"idle {peer!r} holds requests"
            if peer.line == _READY:
                assert 0 < len(peer.slots) < peer.capacity, f"ready {peer!r} is full or idle"
            if peer.eligible and not peer.slots:
                assert peer.line == _IDLE, f"{peer!r} is free but not listed"
            if peer.leaving:
                assert peer.slots, f"{peer!r} left with nothing held but is not forgotten"
            for rid, slot in peer.slots.items():
                assert slot.rid == rid, f"slot {rid:x} holds {slot!r}"
                if isinstance(slot, Exchange):
                    assert slot.state in (SENT, STARTED), f"{slot!r} in a slot of {peer!r}"
                    assert slot.worker is peer, f"{slot!r} in a slot of {peer!r}, not its"
                    assert slot.service == peer.lane.service, f"{slot!r} crossed lanes"
                    assert slot.body_credit >= 0, f"{slot!r}: more BODY sent than granted"
                    if slot.early:
                        assert slot.presend and peer.ring is not None and \
                            slot.rid in peer.ring.held, f"{slot!r}: early credit, no group"
                        assert slot.body_sent + slot.body_credit <= peer.ring.window, \
                            f"{slot!r}: sent past its early credit"
            if peer.ring is not None:
                assert self.rings.get(peer.ring.key) is peer, f"{peer!r}: its ring unfiled"
                peer.ring.check(peer.slots)
            if peer.pipe is not None:
                assert peer.ring is not None and peer.link is None, \
                    f"{peer!r}: a pipe without its ring"
                peer.pipe.check()
                assert not peer.pipe.broken, f"{peer!r}: kept with a broken pipe"
        for key, peer in self.rings.items():
            assert peer.ring is not None and peer.ring.key == key, f"ring {key} misfiled"
            assert self.peers.get(peer.ident) is peer, f"{peer!r} gone, its ring kept"

    # -- assignment ---------------------------------------------------------------------

    def _pick(self, lane: Lane) -> Peer | None:
        """The worker of ``lane`` for its next request: idle first, then one with free
        capacity that is not stalled; least recently used first in both lines. Taken off
        its line; the caller assigns to it at once."""
        if lane.idle:
            peer = lane.idle.popleft()
            peer.progress = self.clock()
        else:
            ready = lane.ready
            now = self.clock()
            while True:
                if not ready:
                    return None
                peer = ready.popleft()
                if peer.concurrent or now - peer.progress < STALL_SECONDS:
                    break
                peer.line = _UNLISTED  # stalled: listed again when it finishes a request
        peer.line = _UNLISTED
        return peer

    def _assign(self, ex: Exchange, peer: Peer) -> None:
        """Give ``ex`` (just moved to SENT) to ``peer``, taken off its line by ``_pick`` or
        freeing a slot in ``_release``; list the worker again while it has room."""
        metrics = self.metrics
        if ex.queued_at:
            waited = int((self.clock() - ex.queued_at) * 1e6)
            ex.record = protocol.with_queue_time(ex.record, waited)
            ex.queued_at = 0.0
            if metrics is not None:
                metrics.queue_wait.observe(waited / 1e6)
        elif metrics is not None:
            metrics.unqueued += 1
        ex.worker = peer
        ex.deadline = self.clock() + self.request_timeout
        ex.body_credit = 0
        ex.body_sent = 0
        ex.early = False
        ring = peer.ring
        if ex.presend and ring is not None and ring.slot(ex.rid, 0) >= 0:
            ex.body_credit = _body_window(peer)  # the sink stops at EARLY_BYTES (end_early)
            ex.early = True
        now = self.clock()
        peer.busy += (now - peer.changed) * len(peer.slots)
        peer.changed = now
        peer.slots[ex.rid] = ex
        if len(peer.slots) < peer.capacity and peer.line == _UNLISTED:
            peer.lane.ready.append(peer)
            peer.line = _READY
        self._post(peer, ex.record)
        if not ex.body_complete:
            ex.sink.on_body_credit(ex, 0)

    def _enqueue(self, ex: Exchange, lane: Lane, first: bool = False) -> None:
        now = self.clock()
        ex.queued_at = now
        ex.deadline = ex.wait_deadline
        lane.queue[ex] = None
        self.queued_bytes += len(ex.record)
        if first:
            lane.queue.move_to_end(ex, last=False)
        if _debug():
            log.debug("Queued request %x: %d waiting", ex.rid, len(lane.queue))

    def _pop(self, lane: Lane, last: bool = False) -> Exchange:
        """Take the first (or the last) exchange out of ``lane``'s queue."""
        ex, _ = lane.queue.popitem(last=last)
        self.queued_bytes -= len(ex.record)
        return ex

    def _unqueue(self, lane: Lane, ex: Exchange) -> None:
        del lane.queue[ex]
        self.queued_bytes -= len(ex.record)

    def _detach(self, ex: Exchange, peer: Peer) -> None:
        """``ex`` leaves ``peer`` before the worker's final record: a ghost keeps the slot."""
        peer.slots[ex.rid] = Ghost(ex.rid)
        ex.worker = None

    def _release(self, peer: Peer, rid: int, progressed: bool = True) -> None:
        """The worker's final record for slot ``rid`` arrived: give the slot to the queue or
        back to the worker's line.

        ``progressed`` is false for a request the worker handed back unstarted: that is no
        sign the worker is moving again, so a stalled one gets nothing from the queue.
        """
        now = self.clock()
        peer.busy += (now - peer.changed) * len(peer.slots)
        peer.changed = now
        del peer.slots[rid]
        if peer.ring is not None:
            peer.ring.release(rid)
        if progressed:
            peer.progress = now
        if peer.leaving:
            if not peer.slots:
                self._forget(peer)
            return
        if not peer.eligible:
            return
        lane = peer.lane
        if lane.queue and len(peer.slots) < peer.capacity and (
                peer.concurrent or now - peer.progress < STALL_SECONDS):
            ex = self._pop(lane)
            ex.move(SENT)
            self._assign(ex, peer)  # takes the slot this release freed
            if lane.queue and peer.line != _UNLISTED:
                self._drain_queue(lane)  # it may have more room (stalled while they came)
            return
        if not peer.slots:
            if peer.line == _READY:
                lane.ready.remove(peer)
            lane.idle.append(peer)
            peer.line = _IDLE
        elif peer.line == _UNLISTED and len(peer.slots) < peer.capacity:
            lane.ready.append(peer)
            peer.line = _READY

    def _finish(self, ex: Exchange, peer: Peer) -> None:
        """``ex`` ended with the worker's final record."""
        ex.move(DONE)
        ex.worker = None
        peer.failures = 0
        peer.served += 1
        self._release(peer, ex.rid)

    def _drain_queue(self, lane: Lane) -> None:
        queue = lane.queue
        while queue:
            peer = self._pick(lane)
            if peer is None:
                return
            ex = self._pop(lane)
            ex.move(SENT)
            self._assign(ex, peer)

    # -- sending ------------------------------------------------------------------------

    def _post(self, peer: Peer, record: bytes) -> None:
        outbox = peer.outbox
        if not outbox:
            self._dirty.append(peer)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.run_callback(self.flush)
        outbox.append(record)

    def flush(self) -> None:
        """Send each worker's pending records as one frame (end of a loop iteration)."""
        self._flush_scheduled = False
        dirty = self._dirty
        if not dirty or self.closed:
            return
        self._dirty = []
        send = self._send
        for peer in dirty:
            records = peer.outbox
            if not records:
                continue
            peer.outbox = []
            if peer.gone:
                continue
            if peer.link is not None:
                if not peer.link.deliver(peer, records):
                    self._drop(peer, "its connection is gone")
                continue
            if peer.pipe is not None:
                if not peer.pipe.writer.send(b"".join((_VERSION_BYTE, *records))):
                    self._drop(peer, "its pipe closed")
                continue
            try:
                send(peer.ident, _SNDMORE | _NOBLOCK)
                send(b"".join((_VERSION_BYTE, *records)), _NOBLOCK)
            except zmq.ZMQError as exc:
                self._lost(peer, exc)
        events: int = self.sock.getsockopt(_EVENTS)  # type: ignore[assignment]
        if events & _POLLIN:
            self._on_readable()

    def _send_now(self, peer: Peer, records: list[bytes]) -> bool:
        """Send ``records`` (and whatever is pending for ``peer``) at once."""
        pending, peer.outbox = peer.outbox, []
        if peer.link is not None:
            if peer.link.deliver(peer, pending + records):
                return True
            self._drop(peer, "its connection is gone")
            return False
        if peer.pipe is not None:
            if peer.pipe.writer.send(protocol.frame(pending + records)):
                return True
            self._drop(peer, "its pipe closed")
            return False
        try:
            self._send(peer.ident, _SNDMORE | _NOBLOCK)
            self._send(protocol.frame(pending + records), _NOBLOCK)
        except zmq.ZMQError as exc:
            self._lost(peer, exc)
            return False
        finally:
            # a send may take the edge of the descriptor that announced incoming messages
            # (as in flush): look, and take them on the next turn of the loop
            if not self.closed and not self._more.active:
                events: int = self.sock.getsockopt(_EVENTS)  # type: ignore[assignment]
                if events & _POLLIN:
                    self._more.start(self._on_readable)
        return True

    def _lost(self, peer: Peer, exc: zmq.ZMQError) -> None:
        if exc.errno == zmq.EHOSTUNREACH:
            self._drop(peer, "disconnected")
        elif isinstance(exc, _zmq_Again):
            self._drop(peer, "not reading its messages")
        else:
            log.error("Sending to %r failed: %s", peer, exc)
            self._drop(peer, str(exc))

    # -- receiving ----------------------------------------------------------------------

    def _on_readable(self) -> None:
        recv = self._recv
        sock = self.sock
        waste = 0
        for _ in range(_RECV_BATCH):
            try:
                ident = recv(_NOBLOCK)
            except _zmq_Again:
                return
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ENOTSOCK:
                    return  # closed during shutdown
                raise
            if self.guard is not None and ident not in self.peers:
                data = self._recv_unknown(ident)  # the first message of a connection
                if data is None:
                    continue
            else:
                data = recv()  # a ROUTER always gives [routing id, data]
            if sock.rcvmore:
                while sock.rcvmore:
                    recv()
                self.malformed.warning("Dropped a message of more than two parts from %r",
                                       ident)
            elif self._handle(ident, data):
                continue
            waste += 1
            if waste == _WASTE_PER_TURN:
                break
        if not self._more.active:  # more may wait: take them on the next turn of the loop
            self._more.start(self._on_readable)

    def _recv_unknown(self, ident: bytes) -> bytes | None:
        """The data part of a message from a connection not yet known, with CURVE on: note
        the public key ZAP admitted it with (the User-Id of the message); None for a
        connection whose key was revoked (its messages are dropped)."""
        frame = self.sock.recv(copy=False)
        if ident in self.revoked:
            while self.sock.rcvmore:
                self.sock.recv()
            return None
        key = frame.get("User-Id")
        if isinstance(key, str) and key:
            self.keys[ident] = key.encode("ascii")
        return frame.bytes

    def reload_keys(self) -> None:
        """``HUP``: read ``curve_allow`` again. A connected worker whose key is no longer in
        it is sent nothing more, told to go (BYE), and what it held fails over."""
        if self.guard is None:
            log.info("HUP: no curve_allow to read again (CURVE is off)")
            return
        admitted = self.guard.reload()
        for peer in list(self.peers.values()):
            key = self.keys.get(peer.ident)
            if key is not None and key not in admitted:
                log.warning("Worker %s@%s: its key was removed from curve_allow; it gets "
                            "nothing more", peer.pid, peer.host)
                self._send_now(peer, [protocol.encode_signal(BYE)])
                self.revoked.add(peer.ident)
                self._drop(peer, "its key was revoked")

    def _handle(self, ident: bytes, data: bytes) -> bool:
        """Act on one message; False if it was waste (it did not decode, or came from an
        unknown peer and was no READY)."""
        try:
            records = _split_frame(data)
        except ProtocolError as exc:
            self.malformed.warning("Dropped a malformed message from %r: %s", ident, exc)
            return False
        peer = self.peers.get(ident)
        if peer is None and not any(kind == READY for kind, _, _ in records):
            if _debug():
                log.debug("Dropped a message without READY from unknown peer %r", ident)
            return False
        if peer is not None:
            peer.heard = self.clock()
        for kind, rid, payload in records:
            if peer is None or kind == READY:
                if kind == READY:
                    peer = self._on_ready(ident, payload, peer)
                elif kind != HEARTBEAT and _debug():
                    log.debug("Dropped %s from unknown peer %r", protocol.KIND_NAMES[kind],
                              ident)
                continue
            if peer.gone:
                return True  # lost while this frame was being handled
            if rid:
                ex = peer.slots.get(rid)
                if ex is None:
                    if kind == HEARTBEAT:
                        self._on_probe_answer(peer, rid)
                    elif _debug():
                        log.debug("Dropped %s for unknown request %x from %r",
                                  protocol.KIND_NAMES[kind], rid, peer)
                    continue
                try:
                    if isinstance(ex, Ghost):
                        self._on_ghost_record(peer, rid, kind, payload)
                    else:
                        self._on_exchange_record(peer, ex, kind, payload)
                except ProtocolError as exc:
                    self.malformed.warning("Dropped a malformed %s from %r: %s",
                                           protocol.KIND_NAMES[kind], peer, exc)
                    self._abandon(peer, rid, _is_final(kind, payload))
            elif kind == BYE:
                self._on_bye(peer)
            elif kind == RING:
                self._on_ring(peer, payload)
            elif kind == PIPE:
                self._on_pipe(peer, payload)
            elif kind == PIPED:
                self._on_piped(peer)
            elif kind == STATS:
                try:
                    stats = protocol.decode_stats(payload)
                except ProtocolError as exc:
                    self.malformed.warning("Dropped a malformed STATS from %r: %s", peer, exc)
                else:
                    self.pool_stats[(peer.host, peer.master)] = (peer.pool, stats)
            elif kind != HEARTBEAT:
                self.malformed.warning("Dropped %s without a request id from %r",
                                       protocol.KIND_NAMES[kind], peer)
        return True

    def _on_exchange_record(self, peer: Peer, ex: Exchange, kind: int, payload: bytes) -> None:
        sink = ex.sink
        if kind == CHUNK:
            if ex.job:
                raise ProtocolError("CHUNK for a job")
            if ex.state != STARTED:
                raise ProtocolError("CHUNK before the response head")
            sink.on_chunk(ex, payload)
        elif kind == RESPONSE:
            if ex.job:
                raise ProtocolError("RESPONSE to a job")
            if ex.state != SENT:
                raise ProtocolError("a second response head")
            flags = payload[0]
            if flags & RESP_END:
                self._finish(ex, peer)
            else:
                ex.move(STARTED)
            sink.on_response(ex, flags, payload)
        elif kind == END:
            flags, tail = protocol.decode_end(payload)
            started = ex.state == STARTED
            self._finish(ex, peer)
            if started:
                sink.on_end(ex, flags, tail)
            else:  # the worker gave up before any head: nothing was written yet
                sink.on_failure(ex, BadGateway("The worker ended the request without an "
                                               "answer"))
        elif kind == CREDIT:
            count = protocol.decode_credit(payload)
            if ex.early:  # the worker's first: it counts the pieces sent before it
                ex.early = False
                credit = max(0, count - ex.body_sent)
            else:
                credit = ex.body_credit + count
            window = _body_window(peer)
            if credit > window:
                # a worker never has more outstanding than its window: no peer makes the
                # front buffer more of a body than that
                self.malformed.warning("Cut a CREDIT from %r for %x back to its window of %d",
                                       peer, ex.rid, window)
                credit = window
            ex.body_credit = credit
            ex.deadline = self.clock() + self.request_timeout
            if count:  # on_body_credit(ex, 0) means a worker took ``ex`` anew (_assign)
                sink.on_body_credit(ex, count)
        elif kind == ERROR:
            status, message = protocol.decode_error(payload)
            ex.move(DONE)
            ex.worker = None
            if status >= 500:  # before the release: an ejected worker takes nothing new
                self._failed(peer, f"answered {status}")
            self._release(peer, ex.rid)
            sink.on_failure(ex, WorkerError(status, message))
        elif kind == JOB_REPLY:
            if not ex.job:
                raise ProtocolError("JOB_REPLY to an HTTP request")
            flags, frames = protocol.decode_job_reply(payload)  # malformed: before any move
            if flags & JOB_FINAL:
                self._finish(ex, peer)
            else:
                if ex.state == SENT:
                    ex.move(STARTED)  # a partial reply went out: it can no longer be replayed
                ex.deadline = self.clock() + self.request_timeout  # each reply is progress
            cast(JobSink, sink).on_job_reply(ex, flags, frames)
        elif kind == REJECT:
            if ex.state != SENT:
                raise ProtocolError("REJECT of a started response")
            ex.worker = None
            self._release(peer, ex.rid, progressed=False)
            self._retry(ex)  # its wait_deadline stands: the wait goes on
        else:
            raise ProtocolError(f"{protocol.KIND_NAMES[kind]} is not a worker's record")

    def _on_ghost_record(self, peer: Peer, rid: int, kind: int, payload: bytes) -> None:
        """A record for a slot whose sink gave up: a final one frees the slot."""
        if _is_final(kind, payload):
            self._release(peer, rid)

    def _abandon(self, peer: Peer, rid: int, final: bool) -> None:
        """A worker broke the protocol on slot ``rid``: answer 502. If the broken record was
        a final one, the worker is done with the request and the slot is free; otherwise it
        is told to CANCEL, and a ghost keeps the slot until its final record."""
        ex = peer.slots.get(rid)
        if ex is None or peer.gone:
            return
        if final:
            if isinstance(ex, Exchange):
                ex.worker = None
                ex.move(DONE)
            self._failed(peer, "broke the protocol")  # before the release: see ERROR
            self._release(peer, rid)
        else:
            self._post(peer, protocol.encode_signal(protocol.CANCEL, rid))
            if isinstance(ex, Exchange):
                self._detach(ex, peer)
                ex.move(DONE)
            self._failed(peer, "broke the protocol")
        if isinstance(ex, Exchange):
            ex.sink.on_failure(ex, BadGateway("The worker sent a malformed reply"))

    def _on_ready(self, ident: bytes, payload: bytes, peer: Peer | None) -> Peer | None:
        try:
            ready = protocol.decode_ready(payload)
        except ProtocolError as exc:
            self.malformed.warning("Dropped a malformed READY from %r: %s", ident, exc)
            return peer
        concurrent = bool(ready.flags & protocol.READY_CONCURRENT)
        key = ready.service or http_key(ready.pool, ready.version)
        if peer is not None:
            if key != peer.lane.service:
                self.malformed.warning("Dropped a READY of %r that changes its lane from %s "
                                       "to %s", peer, peer.lane.label, Lane(key).label)
                return peer
            # the worker restated its capacity: apply it from now on
            self._unlist(peer)
            peer.capacity = ready.capacity
            peer.window = ready.window
            peer.concurrent = concurrent
            self._list(peer)
        else:
            if not ready.service:
                self._version(ready.pool, ready.version, ready.weight,
                              bool(ready.flags & protocol.READY_STANDBY))
            lane = self._lane(key)
            peer = Peer(ident, ready.capacity, ready.window, ready.pid, ready.host, lane)
            peer.concurrent = concurrent
            peer.idempotent = bool(ready.flags & protocol.READY_IDEMPOTENT)
            peer.pool, peer.version, peer.master = ready.pool, ready.version, ready.master
            self._arrived(ident, peer)
            what = f" for service {ready.service!r}" if ready.service else ""
            log.info("Worker %s@%s connected%s, capacity %d, pool %s%s", ready.pid,
                     ready.host, what, ready.capacity, ready.pool,
                     f" {ready.version}" if ready.version else "")
        self._drain_queue(peer.lane)
        return peer

    def _on_ring(self, peer: Peer, payload: bytes) -> None:
        """A worker offers its body ring (``wsgi_zmq/ring.py``): take it if every check
        passes; otherwise its bodies go in BODY records, as before."""
        try:
            offer = protocol.decode_ring(payload)
        except ProtocolError as exc:
            self.malformed.warning("Dropped a malformed RING from %r: %s", peer, exc)
            return
        if not self.take_rings or peer.lane.job:
            return  # body_ring 0; or a job worker, whose jobs come whole
        if peer.host != self.host:
            log.debug("Worker %s@%s offers a body ring from another host", peer.pid, peer.host)
            return
        if peer.ring is not None:
            self.malformed.warning("Dropped a second RING from %r", peer)
            return
        try:
            ring = open_ring(offer, peer.window, set(self.rings))
        except RingRefused as exc:
            self.refused_rings.warning("Refused the body ring of %r: %s; its request bodies "
                                       "go in messages", peer, exc)
            return
        peer.ring = ring
        self.rings[ring.key] = peer
        log.info("Worker %s@%s shares a body ring: %d request(s) of %d pieces of %d KiB",
                 peer.pid, peer.host, ring.groups, ring.window, ring.slot_size >> 10)

    def _on_pipe(self, peer: Peer, payload: bytes) -> None:
        """A worker whose ring we took offers two pipes (``docs/protocol.md``, "The frame
        pipes"): open them, send PIPED (the last frame through the ROUTER), and from then
        on send that worker every frame through its pipe, which skips both sides' ZeroMQ
        I/O threads; read its frames from the other once its own PIPED comes. Only from
        the process whose ring we took: knowing the ring's nonce is what shows the offer
        comes from that process, not from a peer on another host naming some local
        process's pipes."""
        try:
            pid, fd, back = protocol.decode_pipe(payload)
        except ProtocolError as exc:
            self.malformed.warning("Dropped a malformed PIPE from %r: %s", peer, exc)
            return
        if not self.take_pipes:
            return  # frame_pipes off: the worker's frames keep to the socket
        ring = peer.ring
        if ring is None or pid != ring.pid or peer.pipe is not None:
            self.refused_rings.warning(
                "Refused the pipes of %r: %s", peer,
                "a second offer" if peer.pipe is not None else
                "it shares no body ring" if ring is None else
                f"process {pid} offered them, the ring was process {ring.pid}'s")
            return
        taken = {key for p in self.peers.values() if p.pipe is not None for key in p.pipe.keys}
        try:
            out, into, key, back_key = open_pipes(pid, fd, back, taken)
        except RingRefused as exc:
            self.refused_rings.warning("Refused the pipes of %r: %s; its frames go through "
                                       "the socket", peer, exc)
            return
        if not self._send_now(peer, [protocol.encode_signal(PIPED)]):
            os.close(out)
            os.close(into)
            return
        peer.pipe = PeerPipe(out, into, (key, back_key), self.loop,
                             lambda: self._drop(peer, "its pipe closed"))
        log.info("Worker %s@%s reads the front's frames from a pipe", peer.pid, peer.host)

    def _on_piped(self, peer: Peer) -> None:
        """The worker's PIPED: its later frames come through its pipe; read it from now."""
        pipe = peer.pipe
        if pipe is None or pipe.reading:
            self.malformed.warning("Dropped a PIPED from %r: %s", peer,
                                   "it has no pipes" if pipe is None else "a second one")
            return
        pipe.start_reading(lambda: self._read_pipe(peer))

    def _read_pipe(self, peer: Peer) -> None:
        """Act on the whole frames in ``peer``'s pipe, up to ``READ_BUDGET`` bytes of it a
        turn of the loop (the watcher calls again while more waits)."""
        pipe = peer.pipe
        if pipe is None or peer.gone:
            return
        try:
            frames, ended = pipe.reader.frames(READ_BUDGET)
        except ProtocolError as exc:
            self.malformed.warning("Dropped the pipe of %r: %s", peer, exc)
            self._drop(peer, "it broke its pipe")
            return
        handle = self._handle
        ident = peer.ident
        for data in frames:
            handle(ident, data)
            if peer.gone:
                return
        if ended:
            self._drop(peer, "its pipe closed")

    # -- foreign workers ------------------------------------------------------------------

    def attach(self, key: bytes, service: str, pid: int, host: str, link: Link) -> Peer:
        """A foreign worker of ``service`` (one job at a time) joins under ``key``, a name
        its link chose that no backend connection can have (a ROUTER's own routing ids
        are five bytes starting with a zero byte, and a peer may not choose one that starts
        with zero); its records go to ``link``. A peer already under ``key`` is dropped."""
        old = self.peers.get(key)
        if old is not None:
            self._drop(old, "another worker took its name")
        lane = self._lane(service)
        peer = Peer(key, 1, 1, pid, host, lane)
        peer.link = link
        peer.pool = service
        self._arrived(key, peer)
        self.foreign.info("Worker %s@%s connected for service %r, capacity 1", pid, host,
                          service)
        self._drain_queue(lane)
        return peer

    def _arrived(self, key: bytes, peer: Peer) -> None:
        """A new worker joins its lane (drained at once if its pool is)."""
        now = self.clock()
        peer.since = peer.heard = peer.changed = now
        peer.drained = peer.pool in self.drained_pools or \
            f"{peer.pool}/{peer.version}" in self.drained_pools
        self.peers[key] = peer
        peer.lane.members += 1
        self._list(peer)
        self._changed(peer.lane)

    # -- operators (the control socket) ---------------------------------------------------

    def select(self, target: str) -> list[Peer]:
        """The workers ``target`` names: a pool (``POOL``), a version of one
        (``POOL/VERSION``), or a worker (``PID`` or ``PID@HOST``)."""
        pid, _, host = target.partition("@")
        if pid.isdigit():
            return [peer for peer in self.peers.values()
                    if peer.pid == int(pid) and (not host or peer.host == host)]
        pool, slash, version = target.partition("/")
        return [peer for peer in self.peers.values()
                if peer.pool == pool and (not slash or peer.version == version)]

    def drain(self, target: str) -> list[Peer]:
        """Give the workers ``target`` names nothing new; what they hold, they finish.
        A pool stays drained for workers that join it later. The workers drained now."""
        peers = self.select(target)
        pid, _, _ = target.partition("@")
        if not pid.isdigit():
            self.drained_pools.add(target)
        for peer in peers:
            if not peer.drained:
                self._unlist(peer)
                peer.drained = True
        for lane in {peer.lane for peer in peers}:
            self._changed(lane)
        log.info("Drained %s: %d worker(s)", target, len(peers))
        return peers

    def resume(self, target: str | None = None) -> list[Peer]:
        """Undo ``drain`` for ``target``, or for every drained worker and pool."""
        if target is None:
            self.drained_pools.clear()
            peers = [peer for peer in self.peers.values() if peer.drained]
        else:
            self.drained_pools.discard(target)
            peers = [peer for peer in self.select(target) if peer.drained]
        lanes = []
        for peer in peers:
            peer.drained = False
            self._list(peer)
            if peer.lane not in lanes:
                lanes.append(peer.lane)
        for lane in lanes:
            self._drain_queue(lane)
            self._changed(lane)
        log.info("Resumed %s: %d worker(s)", target or "every drained worker", len(peers))
        return peers

    def receive(self, key: bytes, records: list[bytes]) -> None:
        """Records from the foreign worker ``key``, as if our ROUTER had received them."""
        self._handle(key, protocol.frame(records))

    def detach(self, key: bytes, reason: str) -> None:
        """The foreign worker ``key`` is gone: what it held fails over."""
        peer = self.peers.get(key)
        if peer is not None:
            self._drop(peer, reason)

    def _on_bye(self, peer: Peer) -> None:
        """The worker leaves: send it nothing more, and tell it so (BYE back)."""
        if peer.leaving:
            return
        log.info("Worker %s@%s leaves", peer.pid, peer.host)
        if not self._send_now(peer, [protocol.encode_signal(BYE)]):
            return
        self._unlist(peer)
        peer.leaving = True
        if not peer.slots:
            self._forget(peer)
        else:
            self._changed(peer.lane)

    def _unlist(self, peer: Peer) -> None:
        if peer.line == _IDLE:
            peer.lane.idle.remove(peer)
        elif peer.line == _READY:
            peer.lane.ready.remove(peer)
        peer.line = _UNLISTED

    def _list(self, peer: Peer) -> None:
        """Put an unlisted worker on the line its state calls for."""
        if not peer.eligible:
            return
        if not peer.slots:
            peer.lane.idle.append(peer)
            peer.line = _IDLE
        elif len(peer.slots) < peer.capacity:
            peer.lane.ready.append(peer)
            peer.line = _READY

    def _forget(self, peer: Peer) -> None:
        self._unlist(peer)
        ring = peer.ring
        if ring is not None:
            peer.ring = None
            del self.rings[ring.key]
            ring.close()
        if peer.pipe is not None:
            peer.pipe.close()
            peer.pipe = None
        if not peer.gone:
            peer.lane.members -= 1
        peer.gone = True
        peer.outbox = []
        self.peers.pop(peer.ident, None)
        self.keys.pop(peer.ident, None)
        self._changed(peer.lane)
        master = (peer.host, peer.master)
        if master in self.pool_stats and not any(
                (p.host, p.master) == master for p in self.peers.values()):
            del self.pool_stats[master]

    # -- failures -----------------------------------------------------------------------

    def _drop(self, peer: Peer, reason: str) -> None:
        """``peer`` is gone: every slot it held is free, its exchanges fail over."""
        if peer.gone:
            return
        held = list(peer.slots.values())
        (self.foreign.warning if peer.link is not None else log.warning)(
            "Worker %s@%s lost (%s) holding %d request(s)", peer.pid, peer.host,
                    reason, sum(isinstance(ex, Exchange) for ex in held))
        peer.slots.clear()
        self._forget(peer)
        waiting = [ex for ex in held if isinstance(ex, Exchange)]
        self._fail_over(peer, waiting, held[0] if held else None,
                        "its worker was lost")

    def _fail_over(self, peer: Peer, held: list[Exchange], running: Exchange | Ghost | None,
                   why: str) -> None:
        """The exchanges of ``held`` (in the order ``peer`` got them) lost their worker:
        send each again or answer it. ``running`` is the first slot the worker held.

        Which of them may have run: every one, for a worker that serves at once; for a
        worker that serves in order, only ``running``. The worker flushes its replies
        before it starts a request that may not be replayed, so a non-replayable request
        behind one whose final record never arrived cannot have started. A request that may
        have run goes again only if it is replayable and fewer than ``MAX_ATTEMPTS`` workers
        died running it; one that cannot have run goes again whatever its method, if all it
        was sent is its REQUEST record, or pieces under early credit (their copies go with
        it). A started response can only be cut (502). The ones
        sent again go to the head of the queue in the order the worker got them.
        """
        again = []
        for ex in held:
            ex.worker = None
            ex.losses += 1
            if ex.state == STARTED:
                ex.move(DONE)
                ex.sink.on_failure(ex, BadGateway("The worker died while answering"))
                continue
            if peer.concurrent or ex is running:
                ex.attempts += 1
                if not (ex.replayable or peer.idempotent):
                    refusal = "it may have been running, and is not idempotent"
                elif ex.attempts >= MAX_ATTEMPTS:
                    refusal = f"it may have been running on {ex.attempts} workers that died"
                else:
                    refusal = ""
            elif ex.body_complete or not ex.body_sent or ex.early:
                refusal = ""  # (early: the sink keeps what it sent, and sends it again)
            else:
                refusal = "part of its body was sent to that worker"
            if not refusal and ex.losses >= MAX_LOSSES:
                refusal = f"it lost its worker {ex.losses} times"
            if refusal:
                ex.move(DONE)
                ex.sink.on_failure(ex, BadGateway(f"The request failed: {why}; {refusal}"))
            else:
                log.info("Dispatching request %x again: %s", ex.rid, why)
                ex.wait_deadline = self.clock() + self.queue_timeout  # a new wait begins
                again.append(ex)
        self._retry(*again)

    def _retry(self, *exchanges: Exchange) -> None:
        """Send SENT exchanges that no worker holds any more to the head of the queue, in
        the order given, each under a new rid (the worker that gave it up may still hold a
        ghost of the old one); then dispatch what can be. The queue keeps its bound: while
        it is over it, its newest request gets 503."""
        if self.metrics is not None:
            self.metrics.redispatches += len(exchanges)
        lanes = []
        for ex in reversed(exchanges):
            ex.move(QUEUED)
            ex.rid = self.new_rid()
            ex.record = protocol.with_rid(ex.record, ex.rid)
            lane = self.lanes[ex.service]
            self._enqueue(ex, lane, first=True)
            if lane not in lanes:
                lanes.append(lane)
        for lane in lanes:
            if not lane.job and not lane.serving:
                self._rebalance(lane.pool)  # its version lost its last worker
            self._drain_queue(lane)
            self._trim(lane)

    def _trim(self, lane: Lane) -> None:
        """Keep ``lane``'s queue within its bound after requests were put back in it (a
        worker lost, a version gone): while it is over, its newest request gets 503."""
        while len(lane.queue) > self.queue_size:
            newest = self._pop(lane, last=True)
            newest.move(DONE)
            newest.sink.on_failure(newest, ServiceUnavailable("No worker is free; try again"))

    def _failed(self, peer: Peer, what: str) -> None:
        """One more consecutive failure of ``peer``; eject it after ``eject_after``.

        An ejected worker gets nothing new, and what it holds but has not started goes to
        other workers (the worker is told to CANCEL it; ghosts keep the slots)."""
        peer.failures += 1
        if not self.eject_after or peer.failures < self.eject_after or not peer.eligible:
            return
        peer.ejections += 1
        beats = min(_EJECT_BEATS * peer.ejections, _EJECT_MAX_BEATS)
        peer.ejected_until = self.clock() + beats * self.heartbeat
        peer.probe_rid = 0
        self._unlist(peer)
        self._changed(peer.lane)
        log.warning("Worker %s@%s ejected: its last %d requests failed (it %s); probing it "
                    "in %.1f s", peer.pid, peer.host, peer.failures, what,
                    beats * self.heartbeat)
        # the slot the worker may be running: the first, unless its exchange has just ended
        # (the failure that ejects it is a final record, sent before the next one started)
        order = [slot for slot in peer.slots.values()
                 if not (isinstance(slot, Exchange) and slot.state == DONE)]
        waiting = [ex for ex in order if isinstance(ex, Exchange) and ex.state == SENT]
        for ex in waiting:
            self._post(peer, protocol.encode_signal(protocol.CANCEL, ex.rid))
            self._detach(ex, peer)
        self._fail_over(peer, waiting, order[0] if order else None,
                        "its worker was ejected")

    def _on_probe_answer(self, peer: Peer, rid: int) -> None:
        if not peer.ejected or rid != peer.probe_rid:
            return
        log.info("Worker %s@%s answered its probe: back in dispatch", peer.pid, peer.host)
        peer.ejected_until = 0.0
        peer.failures = 0
        peer.probe_rid = 0
        self._list(peer)
        self._drain_queue(peer.lane)
        self._changed(peer.lane)

    def _on_monitor(self) -> None:
        lost = False
        try:
            while True:
                event = parse_monitor_message(self.monitor.recv_multipart(_NOBLOCK))
                if event["event"] == zmq.EVENT_DISCONNECTED:
                    lost = True
                elif self.guard is not None:
                    self.guard.refused(_HANDSHAKE_FAILURES.get(
                        event["event"], "its CURVE handshake failed"))
        except _zmq_Again:
            pass
        except zmq.ZMQError:
            return
        if lost:  # a peer disconnected; which one, the event does not say: probe them all
            self.loop.run_callback(self.probe)

    def probe(self) -> None:
        """Send a HEARTBEAT to every worker; ``ROUTER_MANDATORY`` reveals the lost ones.

        An ejected worker whose ejection time is over gets one that carries a probe id to
        echo instead."""
        now = self.clock()
        self._last_probe = now
        beats = {service: protocol.encode_heartbeat(len(lane.queue))
                 for service, lane in self.lanes.items()}
        for peer in list(self.peers.values()):
            record = beats[peer.lane.service]
            if peer.ejected and now >= peer.ejected_until:
                if not peer.probe_rid:
                    peer.probe_rid = self.new_rid()
                record = protocol.encode_probe(peer.probe_rid)
            self._send_now(peer, [record])

    def tick(self) -> None:
        """The timer: heartbeats and probes, queue timeouts, request timeouts."""
        now = self.clock()
        if now - self._last_probe >= self.heartbeat:
            self.probe()
        self.malformed.flush()
        self.foreign.flush()
        self.refused_rings.flush()
        if len(self.keys) > len(self.peers):  # keys of connections that never said READY
            self.keys = {ident: key for ident, key in self.keys.items() if ident in self.peers}
        for lane in list(self.lanes.values()):
            if lane.queue:
                late = [ex for ex in lane.queue if ex.deadline <= now]
                if lane.service and not lane.members:
                    what = repr(lane.service) if lane.job else lane.label
                    why = f"No worker served {what} within {self.queue_timeout:g} s"
                else:
                    why = f"No worker was free within {self.queue_timeout:g} s"
                for ex in late:
                    self._unqueue(lane, ex)
                    ex.move(DONE)
                    ex.sink.on_failure(ex, ServiceUnavailable(why))
            elif lane.service and not lane.members:
                del self.lanes[lane.service]  # nothing waits for a service nobody serves
        for peer in list(self.peers.values()):
            late = [ex for ex in peer.slots.values() if isinstance(ex, Exchange)
                    and _timed(ex) and ex.deadline <= now]
            for ex in late:
                if ex.worker is not peer or not _timed(ex):
                    continue  # failed over by an ejection this loop made
                log.warning("Request %x timed out on worker %s@%s", ex.rid, peer.pid,
                            peer.host)
                self.cancel(ex)
                ex.sink.on_failure(ex, GatewayTimeout(
                    "The worker did not answer in time"))
                self._failed(peer, "timed out")
