"""The broker: one ROUTER socket that hands requests to handler workers by credit.

Usage (inside a gevent process, after any fork)::

    dispatcher = Dispatcher(cfg)           # binds cfg.backend, watches the zmq FD
    ex = Exchange(dispatcher.new_rid(), sink)
    ex.record = protocol.encode_request(ex.rid, ...)
    dispatcher.submit(ex)                  # sink.on_response / on_chunk / on_end /
                                           # on_failure / on_body_credit follow

What it guarantees:

- **Dispatch by credit.** A worker announces its capacity (READY); it is sent at most that
  many unfinished requests. An idle worker is preferred, least recently used first; then a
  worker with free capacity, least recently used first. With no capacity anywhere a request
  waits in a FIFO queue of ``queue_size``; past that it is answered 503 at once.
- **Batching.** Records for one worker produced in one loop iteration leave as one frame,
  flushed by a loop callback at the end of the iteration: a lone request waits for nothing,
  a burst costs one ``send``. Replies are drained until the socket is empty.
- **Nothing hangs.** A request waiting without progress for ``request_timeout`` gets 504
  (a dispatched one is also CANCELled). A worker that disconnects (seen through a socket
  monitor and ZMTP heartbeats, confirmed by ``ROUTER_MANDATORY``) fails over: each request it
  held that had not started a response is dispatched again if its method is idempotent and
  its body was whole in the request record, else answered 502; a started response is cut.
- **Malformed input is dropped.** A frame that fails to decode is logged and dropped; it
  never stops the front.

The ZeroMQ FD is edge-triggered: it signals that the socket's state changed, not that a
message waits. So the receive callback drains until ``Again``, and every flush checks
``EVENTS`` once, because a send may consume the edge that announced incoming messages.
"""

from __future__ import annotations

import collections
import logging
import random
from typing import Any, Protocol

import gevent
import zmq

from wsgi_zmq import protocol
from wsgi_zmq.errors import BadGateway, GatewayTimeout, HTTPError, ProtocolError, ServiceUnavailable
from wsgi_zmq.protocol import (
    BYE,
    CHUNK,
    CREDIT,
    END,
    ERROR,
    HEARTBEAT,
    READY,
    REJECT,
    RESP_END,
    RESPONSE,
)

log = logging.getLogger("wsgi_zmq.error.dispatcher")

#: How many times one request may be dispatched (the first try and one replay) when its
#: worker dies before answering: enough to survive a crash or restart, too few for one
#: request that kills every worker it touches to take down the pool.
MAX_ATTEMPTS = 2

_RECV_BATCH = 256  # frames drained per callback before yielding to other watchers

#: A busy worker that has finished no request for this long is stalled: it gets nothing new
#: until it finishes one. A sync worker runs its requests in order, so a request sent to a
#: worker stuck in a slow one would wait behind it while other workers may be free.
STALL_SECONDS = 0.02

_UNLISTED, _IDLE, _READY = 0, 1, 2

_zmq_Again = zmq.Again
_NOBLOCK = zmq.NOBLOCK
_SNDMORE = zmq.SNDMORE
_POLLIN = zmq.POLLIN
_EVENTS = zmq.EVENTS
_split_frame = protocol.split_frame


def _debug() -> bool:
    return log.isEnabledFor(logging.DEBUG)


class Sink(Protocol):
    """The side that owns a request (an HTTP connection, or ``FrontApp``)."""

    def on_response(self, ex: Exchange, flags: int, payload: bytes) -> None: ...

    def on_chunk(self, ex: Exchange, data: bytes) -> None: ...

    def on_end(self, ex: Exchange, flags: int, tail: bytes) -> None: ...

    def on_failure(self, ex: Exchange, error: HTTPError) -> None: ...

    def on_body_credit(self, ex: Exchange, count: int) -> None: ...


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

    The sink sets ``record`` (the encoded REQUEST), ``replayable`` and ``body_complete``
    before ``submit``; the dispatcher sets ``worker`` and ``body_credit`` when it assigns a
    worker, ``started`` when the response head arrives and ``finished`` when the worker
    sent its final record.
    """

    __slots__ = ("rid", "sink", "record", "worker", "replayable", "body_complete", "expect",
                 "attempts", "started", "finished", "cancelled", "deadline", "body_credit",
                 "queued_at")

    def __init__(self, rid: int, sink: Sink) -> None:
        self.rid = rid
        self.sink = sink
        self.record = b""
        self.worker: Peer | None = None
        self.replayable = False
        self.body_complete = True
        self.expect = False
        self.attempts = 0
        self.started = False
        self.finished = False
        self.cancelled = False
        self.deadline = 0.0
        self.body_credit = 0
        self.queued_at = 0.0


class Peer:
    """One connected handler worker, as the front sees it."""

    __slots__ = ("ident", "capacity", "window", "inflight", "pid", "host", "outbox",
                 "exchanges", "leaving", "gone", "line", "progress", "concurrent")

    def __init__(self, ident: bytes, capacity: int, window: int, pid: int, host: str) -> None:
        self.ident = ident
        self.capacity = capacity
        self.window = window
        self.pid = pid
        self.host = host
        self.inflight = 0
        self.outbox: list[bytes] = []
        self.exchanges: dict[int, Exchange] = {}
        self.leaving = False
        self.gone = False
        self.line = _UNLISTED  # which deque holds it: _IDLE, _READY or none
        self.concurrent = False  # serves its requests at once: never stalled
        self.progress = 0.0  # when it last finished a request, or became busy

    def __repr__(self) -> str:
        return f"<worker {self.pid}@{self.host} {self.inflight}/{self.capacity}>"


class Dispatcher:
    """The broker; see the module docstring. Create it in the process that uses it."""

    def __init__(self, cfg: Any, loop: Any = None) -> None:
        self.cfg = cfg
        self.loop = loop if loop is not None else gevent.get_hub().loop
        self.queue_size: int = cfg.queue_size
        self.request_timeout: float = cfg.request_timeout
        self.window: int = cfg.window
        self.peers: dict[bytes, Peer] = {}
        self.idle: collections.deque[Peer] = collections.deque()
        self.ready: collections.deque[Peer] = collections.deque()
        self.queue: collections.deque[Exchange] = collections.deque()
        self.queued = 0  # live entries in queue (cancelled ones are skipped lazily)
        self._dirty: list[Peer] = []
        self._flush_scheduled = False
        self._rid = random.getrandbits(63)
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
        self.endpoints: list[str] = []
        for endpoint in cfg.backend:
            self.sock.bind(endpoint)
            self.endpoints.append(self.sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._recv = self.sock.recv
        self._send = self.sock.send
        self._watcher = self.loop.io(self.sock.getsockopt(zmq.FD), 1)
        self._watcher.start(self._on_readable)
        self._monitor_watcher = self.loop.io(self.monitor.getsockopt(zmq.FD), 1)
        self._monitor_watcher.start(self._on_monitor)
        tick = min(1.0, self.request_timeout / 4, cfg.heartbeat)
        self._timer = self.loop.timer(tick, tick)
        self._timer.start(self._on_tick)
        self._last_probe = self.loop.now()
        # the FD may already be readable (edge passed before the watcher existed)
        self.loop.run_callback(self._on_readable)

    # -- API for sinks ------------------------------------------------------------------

    def new_rid(self) -> int:
        self._rid = (self._rid + 1) & 0xFFFFFFFFFFFFFFFF
        return self._rid

    def submit(self, ex: Exchange) -> None:
        """Send ``ex`` to a worker with free capacity, or queue it, or answer 503."""
        ex.deadline = self.loop.now() + self.request_timeout
        if not self.queued:
            peer = self._pick()
            if peer is not None:
                self._assign(ex, peer)
                return
        if self.queued >= self.queue_size:
            ex.finished = True
            ex.sink.on_failure(ex, ServiceUnavailable("No worker is free; try again"))
            return
        ex.queued_at = self.loop.now()
        self.queue.append(ex)
        self.queued += 1
        if _debug():
            log.debug("Queued request %x: %d waiting", ex.rid, self.queued)

    def send_body(self, ex: Exchange, data: bytes) -> None:
        """Queue a BODY record for a dispatched exchange (the sink minds ``body_credit``)."""
        peer = ex.worker
        if peer is None or ex.finished:
            return
        ex.body_credit -= 1
        ex.deadline = self.loop.now() + self.request_timeout
        self._post(peer, protocol.encode_data(protocol.BODY, ex.rid, data))

    def end_body(self, ex: Exchange) -> None:
        """Tell the worker the request body is complete."""
        peer = ex.worker
        if peer is not None and not ex.finished:
            self._post(peer, protocol.encode_request_end(ex.rid))

    def grant(self, ex: Exchange, count: int = 1) -> None:
        """Let the worker send ``count`` more CHUNK records for ``ex``."""
        peer = ex.worker
        if peer is not None and not ex.finished:
            self._post(peer, protocol.encode_credit(ex.rid, count))

    def cancel(self, ex: Exchange) -> None:
        """The sink gives up on ``ex`` (client gone, or it answered itself); no more calls
        reach the sink. A dispatched exchange keeps its worker's capacity until the worker
        acknowledges with its final record."""
        if ex.cancelled:
            return
        ex.cancelled = True
        if ex.finished:
            return
        peer = ex.worker
        if peer is None:
            self.queued -= 1  # left in the deque; skipped when it reaches the head
            ex.finished = True
        else:
            self._post(peer, protocol.encode_signal(protocol.CANCEL, ex.rid))

    def close(self) -> None:
        self._watcher.stop()
        self._monitor_watcher.stop()
        self._timer.stop()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.context.term()

    # -- assignment ---------------------------------------------------------------------

    def _pick(self) -> Peer | None:
        """The worker for the next request: idle first, then one with free capacity that
        is not stalled; least recently used first in both lines."""
        if self.idle:
            peer = self.idle.popleft()
            peer.progress = self.loop.now()
        else:
            ready = self.ready
            now = self.loop.now()
            while True:
                if not ready:
                    return None
                peer = ready.popleft()
                if peer.concurrent or now - peer.progress < STALL_SECONDS:
                    break
                peer.line = _UNLISTED  # stalled: listed again when it finishes a request
        peer.inflight += 1
        if peer.inflight < peer.capacity:
            self.ready.append(peer)
            peer.line = _READY
        else:
            peer.line = _UNLISTED
        return peer

    def _assign(self, ex: Exchange, peer: Peer) -> None:
        if ex.queued_at:
            waited = int((self.loop.now() - ex.queued_at) * 1e6)
            ex.record = protocol.with_queue_time(ex.record, waited)
            ex.queued_at = 0.0
        ex.worker = peer
        ex.attempts += 1
        peer.exchanges[ex.rid] = ex
        self._post(peer, ex.record)
        if not ex.body_complete:
            ex.body_credit = 0 if ex.expect else peer.window
            ex.sink.on_body_credit(ex, 0)

    def _release(self, peer: Peer, progressed: bool = True) -> None:
        """One of ``peer``'s exchanges ended: give the capacity to the queue or back.

        ``progressed`` is false for a request the worker handed back unstarted: that is no
        sign the worker is moving again, so a stalled one gets nothing from the queue.
        """
        if peer.gone:
            return
        now = self.loop.now()
        if progressed:
            peer.progress = now
        if peer.leaving:
            peer.inflight -= 1
            if not peer.inflight:
                self._forget(peer)
            return
        while self.queued and (peer.concurrent or now - peer.progress < STALL_SECONDS):
            ex = self.queue.popleft()
            if ex.cancelled:
                continue
            self.queued -= 1
            self._assign(ex, peer)  # keeps the unit of capacity it frees
            return
        peer.inflight -= 1
        if peer.inflight == 0:
            if peer.line == _READY:
                self.ready.remove(peer)
            self.idle.append(peer)
            peer.line = _IDLE
        elif peer.line == _UNLISTED:
            self.ready.append(peer)
            peer.line = _READY

    def _finish(self, ex: Exchange, peer: Peer) -> None:
        ex.finished = True
        del peer.exchanges[ex.rid]
        self._release(peer)

    def _drain_queue(self) -> None:
        while self.queued:
            peer = self._pick()
            if peer is None:
                return
            ex = self.queue.popleft()
            while ex.cancelled:
                ex = self.queue.popleft()
            self.queued -= 1
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
        if not dirty:
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
            try:
                send(peer.ident, _SNDMORE | _NOBLOCK)
                send(protocol.VERSION_BYTE + b"".join(records), _NOBLOCK)
            except zmq.ZMQError as exc:
                self._lost(peer, exc)
        events: int = self.sock.getsockopt(_EVENTS)  # type: ignore[assignment]
        if events & _POLLIN:
            self._on_readable()

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
        for _ in range(_RECV_BATCH):
            try:
                ident = recv(_NOBLOCK)
            except _zmq_Again:
                return
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ENOTSOCK:
                    return  # closed during shutdown
                raise
            data = recv()
            if self.sock.rcvmore:
                while self.sock.rcvmore:
                    recv()
                log.warning("Dropped a message of more than two parts from %r", ident)
                continue
            self._handle(ident, data)
        self.loop.run_callback(self._on_readable)  # more may wait; let others run first

    def _handle(self, ident: bytes, data: bytes) -> None:
        try:
            records = _split_frame(data)
        except ProtocolError as exc:
            log.warning("Dropped a malformed message from %r: %s", ident, exc)
            return
        peer = self.peers.get(ident)
        for kind, rid, payload in records:
            if peer is None or kind == READY:
                if kind == READY:
                    peer = self._on_ready(ident, payload, peer)
                elif kind != HEARTBEAT:
                    log.debug("Dropped %s from unknown peer %r", protocol.KIND_NAMES[kind],
                              ident)
                continue
            if rid:
                ex = peer.exchanges.get(rid)
                if ex is None:
                    log.debug("Dropped %s for unknown request %x from %r",
                              protocol.KIND_NAMES[kind], rid, peer)
                    continue
                try:
                    self._on_exchange_record(peer, ex, kind, payload)
                except ProtocolError as exc:
                    log.warning("Dropped a malformed %s from %r: %s",
                                protocol.KIND_NAMES[kind], peer, exc)
                    self._abandon(peer, ex)
            elif kind == BYE:
                self._on_bye(peer)
            elif kind != HEARTBEAT:
                log.warning("Dropped %s without a request id from %r",
                            protocol.KIND_NAMES[kind], peer)

    def _on_exchange_record(self, peer: Peer, ex: Exchange, kind: int, payload: bytes) -> None:
        sink = ex.sink
        if kind == RESPONSE:
            flags = payload[0]
            ex.started = True
            if flags & RESP_END:
                self._finish(ex, peer)
            if not ex.cancelled:
                sink.on_response(ex, flags, payload)
        elif kind == CHUNK:
            if not ex.cancelled:
                sink.on_chunk(ex, payload)
        elif kind == END:
            self._finish(ex, peer)
            if not ex.cancelled:
                flags, tail = protocol.decode_end(payload)
                sink.on_end(ex, flags, tail)
        elif kind == CREDIT:
            count = protocol.decode_credit(payload)
            ex.body_credit += count
            ex.deadline = self.loop.now() + self.request_timeout
            if not ex.cancelled:
                sink.on_body_credit(ex, count)
        elif kind == ERROR:
            status, message = protocol.decode_error(payload)
            self._finish(ex, peer)
            if not ex.cancelled:
                sink.on_failure(ex, WorkerError(status, message))
        elif kind == REJECT:
            del peer.exchanges[ex.rid]
            self._release(peer, progressed=False)
            self._retry(ex, "the worker returned it unstarted", always=True)
        else:
            log.warning("Dropped %s from %r: not a worker's record", protocol.KIND_NAMES[kind],
                        peer)

    def _abandon(self, peer: Peer, ex: Exchange) -> None:
        """A worker broke the protocol on ``ex``: answer 502 and tell it to stop."""
        if ex.finished:
            return
        self._post(peer, protocol.encode_signal(protocol.CANCEL, ex.rid))
        self._finish(ex, peer)
        if not ex.cancelled:
            ex.sink.on_failure(ex, BadGateway("The worker sent a malformed reply"))

    def _on_ready(self, ident: bytes, payload: bytes, peer: Peer | None) -> Peer | None:
        try:
            ready = protocol.decode_ready(payload)
        except ProtocolError as exc:
            log.warning("Dropped a malformed READY from %r: %s", ident, exc)
            return peer
        if peer is not None:
            # the worker restated its capacity: apply it from now on
            self._unlist(peer)
            peer.capacity = ready.capacity
            peer.window = ready.window
            peer.concurrent = bool(ready.flags & protocol.READY_CONCURRENT)
            self._list(peer)
        else:
            peer = Peer(ident, ready.capacity, ready.window, ready.pid, ready.host)
            peer.concurrent = bool(ready.flags & protocol.READY_CONCURRENT)
            self.peers[ident] = peer
            self._list(peer)
            log.info("Worker %s@%s connected, capacity %d", ready.pid, ready.host,
                     ready.capacity)
        self._drain_queue()
        return peer

    def _on_bye(self, peer: Peer) -> None:
        """The worker leaves: send it nothing more, and tell it so (BYE back)."""
        log.info("Worker %s@%s leaves", peer.pid, peer.host)
        records = peer.outbox  # credits, body, cancels already due still go, BYE last
        peer.outbox = []
        records.append(protocol.encode_signal(BYE))
        try:
            self._send(peer.ident, _SNDMORE | _NOBLOCK)
            self._send(protocol.frame(records), _NOBLOCK)
        except zmq.ZMQError as exc:
            self._lost(peer, exc)
            return
        self._unlist(peer)
        peer.leaving = True
        if not peer.inflight:
            self._forget(peer)

    def _unlist(self, peer: Peer) -> None:
        if peer.line == _IDLE:
            self.idle.remove(peer)
        elif peer.line == _READY:
            self.ready.remove(peer)
        peer.line = _UNLISTED

    def _list(self, peer: Peer) -> None:
        if peer.leaving or peer.gone:
            return
        if peer.inflight == 0:
            self.idle.append(peer)
            peer.line = _IDLE
        elif peer.inflight < peer.capacity:
            self.ready.append(peer)
            peer.line = _READY

    def _forget(self, peer: Peer) -> None:
        peer.gone = True
        self.peers.pop(peer.ident, None)

    # -- failures -----------------------------------------------------------------------

    def _drop(self, peer: Peer, reason: str) -> None:
        """``peer`` is gone: fail over every exchange it held."""
        if peer.gone:
            return
        held = list(peer.exchanges.values())
        log.warning("Worker %s@%s lost (%s) holding %d request(s)", peer.pid, peer.host,
                    reason, len(held))
        self._unlist(peer)
        self._forget(peer)
        peer.exchanges.clear()
        for ex in held:
            ex.worker = None
            if ex.cancelled:
                ex.finished = True
            elif ex.started:
                ex.finished = True
                ex.sink.on_failure(ex, BadGateway("The worker died while answering"))
            else:
                self._retry(ex, "its worker was lost")

    def _retry(self, ex: Exchange, why: str, always: bool = False) -> None:
        ex.worker = None
        if ex.cancelled:
            ex.finished = True
            return
        if (always or (ex.replayable and ex.attempts < MAX_ATTEMPTS)) and ex.body_complete:
            log.info("Dispatching request %x again: %s", ex.rid, why)
            ex.queued_at = self.loop.now()
            self.queue.appendleft(ex)
            self.queued += 1
            self._drain_queue()
            return
        ex.finished = True
        ex.sink.on_failure(ex, BadGateway(f"The request failed: {why}"))

    def _on_monitor(self) -> None:
        try:
            while True:
                self.monitor.recv_multipart(_NOBLOCK)
                self._probe_needed = True
        except _zmq_Again:
            pass
        except zmq.ZMQError:
            return
        # a peer disconnected; which one, the event does not say: probe them all
        self.loop.run_callback(self.probe)

    def probe(self) -> None:
        """Send a HEARTBEAT to every worker; ``ROUTER_MANDATORY`` reveals the lost ones."""
        self._last_probe = self.loop.now()
        beat = protocol.VERSION_BYTE + protocol.encode_heartbeat(self.queued)
        for peer in list(self.peers.values()):
            try:
                self._send(peer.ident, _SNDMORE | _NOBLOCK)
                self._send(beat, _NOBLOCK)
            except zmq.ZMQError as exc:
                self._lost(peer, exc)

    def _on_tick(self) -> None:
        now = self.loop.now()
        if now - self._last_probe >= self.cfg.heartbeat:
            self.probe()
        queue = self.queue
        while queue and (queue[0].cancelled or queue[0].deadline <= now):
            ex = queue.popleft()
            if ex.cancelled:
                continue
            self.queued -= 1
            ex.finished = True
            ex.sink.on_failure(ex, GatewayTimeout("No worker was free in time"))
        for peer in list(self.peers.values()):
            late = [ex for ex in peer.exchanges.values()
                    if not ex.started and not ex.cancelled and ex.deadline <= now]
            for ex in late:
                log.warning("Request %x timed out on worker %s@%s", ex.rid, peer.pid,
                            peer.host)
                ex.sink.on_failure(ex, GatewayTimeout("The worker did not answer in time"))
                self.cancel(ex)
