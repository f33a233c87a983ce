"""The job endpoint: a ROUTER socket where Majordomo clients send jobs (``job_bind``).

Usage (in the front, beside its dispatcher)::

    jobs = JobEndpoint(cfg, dispatcher, loop)   # binds cfg.job_bind, watches the zmq FD
    ...
    jobs.close()

A client's message is parsed by ``wsgi_zmq.mdp`` into one of its dialects (MDP/0.1,
MDP/0.2, majortomo's, or a bare payload for ``default_service``); ``docs/jobs.md`` shows the
frames of each. A job becomes an ``Exchange`` of its service's lane in the dispatcher, with
a JOB record, so it has every guarantee an HTTP request has: dispatch by credit, a bounded
queue per service, ``queue_timeout`` (503) and ``request_timeout`` (504), failover when its
worker dies (for an idempotent pool), ejection of failing workers. The endpoint is the
exchange's sink: a worker's JOB_REPLY records go back to the client in the form it used,
and every failure is an error reply (``mdp.error_reply``: ``wsgi_zmq.error``, the code, the
message), so a client always gets exactly one final answer.

MDP workers written by others (MDP/0.1 ``MDPW01``, MDP/0.2 ``MDPW02``, majortomo's) connect
here too: READY registers one as a worker of its service in the dispatcher (``attach``),
one job at a time, beside our own job pools, and a job goes to whichever worker of its
service is free. Its REQUEST carries the job's rid as the client address, so its REPLY (or
PARTIAL and FINAL) comes back to the exchange and passes the dispatcher's checks. The front
sends each one a HEARTBEAT every ``heartbeat`` seconds; an idle MDP worker silent for
``MDP_LIVENESS`` intervals of at least ``MDP_HEARTBEAT`` seconds is dropped, a busy one
(whose library may not beat while it works) only after ``request_timeout`` more. What it
held fails over as with any worker. MDP has no CANCEL: a job that timed out keeps that
worker until it replies (the reply is dropped). A READY for an ``mmi.`` service, or any
other command from an MDP worker the front does not know, is answered DISCONNECT (RFC 7,
RFC 8), except a HEARTBEAT, which is ignored: the worker of a front that restarted sends
READY again once it hears no heartbeats, while a DISCONNECT would stop a majortomo worker for
good (it does not reconnect, as RFC 18 asks). For the same reason a front that stops sends
its MDP workers no DISCONNECT.

A client says its jobs may run twice with the ZMTP connection property ``X-Idempotent: 1``
(``ZMQ_METADATA``; ``JobClient(idempotent=True)``); such a job whose worker dies goes to
another worker, as does every job of a pool started with ``--job-idempotent``.

MMI (RFC 8): ``mmi.service`` answers ``200`` when a worker of the named service is
connected, else ``404``; any other ``mmi.`` name answers ``501``.

Partial replies (MDP/0.2 PARTIAL) reach a client that speaks MDP/0.2; for a client whose
dialect has none, the front keeps them and sends all their frames with the final reply, up
to ``MAX_HELD_BYTES`` (past it the job is cancelled and answered 502).

Every byte a client sends is hostile: a message that is no valid form is counted and
dropped (logged a few lines a minute), and a message larger than ``MAX_MESSAGE_BYTES`` in
any one frame never reaches Python (ZeroMQ's ``MAXMSGSIZE`` drops the connection).
"""

from __future__ import annotations

import logging
from typing import Any, Final

import zmq

from wsgi_zmq import mdp, protocol
from wsgi_zmq.errors import HTTPError, ProtocolError
from wsgi_zmq.front.dispatcher import Dispatcher, Exchange
from wsgi_zmq.front.sockets import bind_zmq
from wsgi_zmq.log import LogLimiter

log = logging.getLogger("wsgi_zmq.error.jobs")

#: The largest frame a client may send (ZeroMQ drops a peer that sends a larger one).
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
#: Messages ZeroMQ keeps per client connection, each way.
SEND_HWM: Final = 1000
#: The most bytes of partial replies kept for a client that cannot take them one by one.
MAX_HELD_BYTES: Final = 64 * 1024 * 1024
#: An MDP worker is dropped after this many heartbeat intervals without a message from it.
MDP_LIVENESS: Final = 3
#: The shortest interval that counts, in seconds: MDP libraries beat every 2.5 s (the
#: guide's mdwrkapi, majortomo), whatever the front's own ``heartbeat``.
MDP_HEARTBEAT: Final = 2.5
#: Messages taken per turn of the loop (then the loop polls everything else; see the
#: dispatcher's ``_RECV_BATCH``).
_RECV_BATCH: Final = 64

_NOBLOCK = zmq.NOBLOCK
_EVENTS = zmq.EVENTS
_POLLIN = zmq.POLLIN
_zmq_Again = zmq.Again


class Job(Exchange):
    """A job as the dispatcher sees it, with what the endpoint needs to answer it."""

    __slots__ = ("ident", "request", "held", "held_bytes")

    def __init__(self, rid: int, sink: JobEndpoint, service: str, ident: bytes,
                 request: mdp.ClientRequest) -> None:
        super().__init__(rid, sink, service)
        self.ident = ident  # the client's routing id on the job endpoint
        self.request = request
        self.held: list[bytes] = []  # partial replies kept for a client without PARTIAL
        self.held_bytes = 0


class MdpWorker:
    """An MDP worker connected to the job endpoint, as the endpoint knows it."""

    __slots__ = ("ident", "key", "version", "empty", "seen")

    def __init__(self, ident: bytes, version: int, empty: bool, now: float) -> None:
        self.ident = ident
        # its name in the dispatcher, which no backend connection can have (a ROUTER's
        # own ids are 5 bytes, a peer's chosen ones do not start with a zero byte)
        self.key = b"\0mdp" + ident
        self.version = version
        self.empty = empty
        self.seen = now


class JobEndpoint:
    """The front's job endpoint; the sink of every job exchange. See the module docstring."""

    def __init__(self, cfg: Any, dispatcher: Dispatcher, loop: Any) -> None:
        self.cfg = cfg
        self.dispatcher = dispatcher
        self.loop = loop
        self.window: int = cfg.window
        self.default_service: str | None = cfg.default_service
        self.malformed = LogLimiter(log, "malformed messages from job clients")
        self.undelivered = LogLimiter(log, "replies that could not be delivered")
        self.sock = dispatcher.context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        # per connection: a client that sends and never reads makes the front keep at most
        # this many replies for it (then they are dropped, and counted), not all of them
        self.sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.sock.setsockopt(zmq.RCVHWM, SEND_HWM)
        interval = max(1, int(cfg.heartbeat * 1000))
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, interval)
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * interval)
        self.secure = dispatcher.guard is not None
        if dispatcher.guard is not None:
            dispatcher.guard.secure(self.sock)  # the same key pair and allowlist
        self.endpoints: list[str] = []
        for endpoint in cfg.job_bind:
            bind_zmq(self.sock, endpoint, cfg.umask)
            self.endpoints.append(self.sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self.delivered = 0
        self.closed = False
        self.workers: dict[bytes, MdpWorker] = {}  # by routing id
        self.liveness = MDP_LIVENESS * max(cfg.heartbeat, MDP_HEARTBEAT)
        self.busy_liveness = self.liveness + cfg.request_timeout
        self._beat = loop.timer(cfg.heartbeat, cfg.heartbeat)
        self._beat.start(self._on_beat)
        self._recv = self.sock.recv
        self._watcher = loop.io(self.sock.getsockopt(zmq.FD), 1)
        self._watcher.start(self._on_readable)
        self._more = loop.timer(0.0)
        loop.run_callback(self._on_readable)

    def close(self) -> None:
        # no DISCONNECT to the MDP workers: majortomo's would stop serving for good (RFC 18
        # asks a worker to reconnect); each notices the silence and connects again
        self.closed = True
        self._watcher.stop()
        self._more.stop()
        self._beat.stop()
        self.sock.close(linger=0)

    # -- receiving ----------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self.closed:
            return
        recv = self._recv
        sock = self.sock
        for _ in range(_RECV_BATCH):
            try:
                ident = recv(_NOBLOCK)
            except _zmq_Again:
                break
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ENOTSOCK:
                    return
                raise
            frames: list[bytes] = []
            first: zmq.Frame | None = None
            too_many = False
            while sock.rcvmore:
                if first is None:
                    first = sock.recv(copy=False)  # a Frame: the connection's metadata
                    frames.append(first.bytes)
                elif len(frames) > protocol.MAX_JOB_FRAMES + 4:
                    recv()
                    too_many = True
                else:
                    frames.append(recv())
            if too_many:
                self.malformed.warning("Dropped a message of more than %d frames",
                                       protocol.MAX_JOB_FRAMES)
                continue
            self._handle(ident, frames, first)
        else:
            if not self._more.active:  # more may wait: take them on the next turn
                self._more.start(self._on_readable)

    def _handle(self, ident: bytes, frames: list[bytes], first: zmq.Frame | None) -> None:
        try:
            message = mdp.parse(frames)
        except mdp.MdpError as exc:
            self.malformed.warning("Dropped a malformed job message: %s", exc)
            return
        if not isinstance(message, mdp.ClientRequest):
            self._from_worker(ident, message, first)
            return
        request = message
        service_bytes = request.service
        if request.dialect is mdp.Dialect.BARE:
            if self.default_service is None:
                self._send(ident, mdp.error_reply(
                    request, 404, "a request without a Majordomo header needs the front's "
                    "default_service, which is not set"))
                return
            service_bytes = self.default_service.encode("utf-8")
        if mdp.is_mmi(service_bytes):
            self._mmi(ident, request, service_bytes)
            return
        service = _service_name(service_bytes)
        if service is None:
            self._send(ident, mdp.error_reply(request, 400, "a service name is UTF-8 "
                                              "without NUL bytes"))
            return
        address, key, idempotent = _client_of(first, self.secure)
        job = Job(self.dispatcher.new_rid(), self, service, ident, request)
        job.record = protocol.encode_job(job.rid, protocol.JOB_IDEMPOTENT if idempotent else 0,
                                         service, address, key, request.dialect.value,
                                         list(request.body), self.window)
        job.body_complete = True
        job.replayable = idempotent
        self.dispatcher.submit(job)

    def _mmi(self, ident: bytes, request: mdp.ClientRequest, service: bytes) -> None:
        if service == b"mmi.service":
            name = request.body[0] if request.body else b""
            try:
                known = self.dispatcher.serves(name.decode("utf-8"))
            except UnicodeDecodeError:
                known = False
            status = b"200" if known else b"404"
        else:
            status = b"501"
        self._send(ident, mdp.mmi_reply(request, status))

    # -- MDP workers ------------------------------------------------------------------------

    def _from_worker(self, ident: bytes, message: mdp.WorkerMessage,
                     first: zmq.Frame | None) -> None:
        command = message.command
        worker = self.workers.get(ident)
        if worker is None:
            if command is mdp.WorkerCommand.HEARTBEAT:
                return  # a worker of a front that restarted: it sends READY once it sees
                #         no heartbeats from us (a DISCONNECT would stop majortomo's)
            if command is not mdp.WorkerCommand.READY or mdp.is_mmi(message.service):
                if command is not mdp.WorkerCommand.DISCONNECT:
                    self.malformed.warning("Disconnected an MDP worker that sent %s%s",
                                           command.value, " for an mmi. service"
                                           if command is mdp.WorkerCommand.READY else
                                           " before READY")
                    self._send(ident, mdp.worker_disconnect(message.version, message.empty))
                return
            service = _service_name(message.service)
            if service is None:
                self.malformed.warning("Disconnected an MDP worker whose service name is "
                                       "not UTF-8 without NUL bytes")
                self._send(ident, mdp.worker_disconnect(message.version, message.empty))
                return
            worker = MdpWorker(ident, message.version, message.empty, self.loop.now())
            self.workers[ident] = worker
            address = _client_of(first, False)[0]
            self.dispatcher.attach(worker.key, service, 0,
                                   f"{address or 'job endpoint'} (MDP/0.{message.version})",
                                   self)
            return
        worker.seen = self.loop.now()
        if command is mdp.WorkerCommand.HEARTBEAT:
            peer = self.dispatcher.peers.get(worker.key)
            if peer is not None and peer.probe_rid:
                # ejected and due for a probe: a heartbeat is its answer (MDP has no echo)
                self.dispatcher.receive(worker.key, [protocol.encode_probe(peer.probe_rid)])
            return
        if command is mdp.WorkerCommand.DISCONNECT:
            del self.workers[ident]
            self.dispatcher.detach(worker.key, "it said DISCONNECT")
            return
        if command is mdp.WorkerCommand.READY:
            self.malformed.warning("Dropped a second READY from an MDP worker")
            return
        if len(message.client) != 8:
            self.malformed.warning("Dropped an MDP worker's reply for an unknown client")
            return
        rid = int.from_bytes(message.client, "big")
        flags = protocol.JOB_FINAL if command is mdp.WorkerCommand.REPLY else 0
        self.dispatcher.receive(worker.key, [protocol.encode_job_reply(
            rid, flags, list(message.body))])

    def deliver(self, peer: Any, records: list[bytes]) -> bool:
        """The dispatcher's records for an MDP worker, in its protocol (the ``Link``)."""
        worker = self.workers.get(peer.ident[4:])
        if worker is None or self.closed:
            return False
        for kind, rid, payload in protocol.split_frame(protocol.frame(records)):
            if kind == protocol.JOB:
                try:
                    job = protocol.decode_job(payload)
                except ProtocolError as exc:  # our own record: a bug, not the peer's fault
                    log.error("Cannot pass job %x to an MDP worker: %s", rid, exc)
                    return False
                frames = job.frames or [b""]
                message = mdp.worker_request((worker.version, worker.empty),
                                             rid.to_bytes(8, "big"), frames)
            elif kind == protocol.HEARTBEAT:
                message = mdp.worker_heartbeat(worker.version, worker.empty)
            elif kind == protocol.BYE:
                message = mdp.worker_disconnect(worker.version, worker.empty)
                self.workers.pop(worker.ident, None)
            else:
                continue  # CANCEL, CREDIT: MDP has none; the worker finishes, we drop it
            if not self._send(worker.ident, message):
                self.workers.pop(worker.ident, None)
                return False
        return True

    def _on_beat(self) -> None:
        """Drop the MDP workers that went silent (the dispatcher sends the heartbeats)."""
        now = self.loop.now()
        for worker in list(self.workers.values()):
            peer = self.dispatcher.peers.get(worker.key)
            limit = self.busy_liveness if peer is not None and peer.slots else self.liveness
            if peer is None or now - worker.seen > limit:
                del self.workers[worker.ident]
                if peer is not None:
                    self._send(worker.ident, mdp.worker_disconnect(worker.version,
                                                                   worker.empty))
                    self.dispatcher.detach(worker.key, f"silent for {now - worker.seen:.1f} s")

    # -- the sink -------------------------------------------------------------------------

    def on_job_reply(self, ex: Exchange, flags: int, frames: list[bytes]) -> None:
        """A JOB_REPLY: the final one ends the job, a partial one goes on (or is kept)."""
        assert isinstance(ex, Job)
        request = ex.request
        if flags & protocol.JOB_FINAL:
            if ex.held:
                frames = ex.held + frames
                ex.held = []
            if not frames and request.dialect is not mdp.Dialect.MAJORTOMO:
                frames = [b""]  # MDP replies have a body frame; a REQ cannot take none
            self._send(ex.ident, mdp.client_reply(request, frames))
            return
        if request.dialect.partial_replies:
            if frames or request.dialect is mdp.Dialect.MAJORTOMO:
                self._send(ex.ident, mdp.client_reply(request, frames, final=False))
        else:
            ex.held.extend(frames)
            ex.held_bytes += sum(map(len, frames))
            if ex.held_bytes > MAX_HELD_BYTES:
                self.dispatcher.cancel(ex)
                ex.held = []
                self._send(ex.ident, mdp.error_reply(
                    request, 502, f"the partial replies passed {MAX_HELD_BYTES} bytes, and "
                    f"this client's protocol ({request.dialect.value}) takes only a final one"))
                return
        self.dispatcher.grant(ex)

    def on_response(self, ex: Exchange, flags: int, payload: bytes) -> None:
        self._broken(ex, "the worker sent an HTTP response for a job")

    def on_chunk(self, ex: Exchange, data: bytes) -> None:
        self._broken(ex, "the worker sent an HTTP body piece for a job")

    def on_end(self, ex: Exchange, flags: int, tail: bytes) -> None:
        assert isinstance(ex, Job)
        ex.held = []
        self._send(ex.ident, mdp.error_reply(ex.request, 502,
                                             "the worker ended the job without a final reply"))

    def on_failure(self, ex: Exchange, error: HTTPError) -> None:
        assert isinstance(ex, Job)
        ex.held = []
        message = error.detail
        if error.status == 503 and message.startswith("No worker is free"):
            message = f"No worker of {ex.service!r} is free; try again"
        self._send(ex.ident, mdp.error_reply(ex.request, error.status, message))

    def on_body_credit(self, ex: Exchange, count: int) -> None:
        pass  # a job's frames are all in its JOB record

    def _broken(self, ex: Exchange, why: str) -> None:
        assert isinstance(ex, Job)
        self.dispatcher.malformed.warning("Cancelled job %x: %s", ex.rid, why)
        self.dispatcher.cancel(ex)
        self._send(ex.ident, mdp.error_reply(ex.request, 502, why))

    # -- sending ------------------------------------------------------------------------

    def _send(self, ident: bytes, frames: list[bytes]) -> bool:
        if self.closed:
            return False
        try:
            self.sock.send_multipart([ident, *frames], _NOBLOCK)
            self.delivered += 1
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer left; Again: not reading
            self.undelivered.warning("Dropped a message to a job endpoint peer: %s", exc)
            return False
        finally:
            # the socket's descriptor is edge-triggered, and a send may take the edge that
            # announced incoming messages: look, and take them on the next turn of the loop
            # (without this, a worker's reply that came during a send waited for the next
            # event on the socket, seconds later)
            if not self._more.active:
                events: int = self.sock.getsockopt(_EVENTS)  # type: ignore[assignment]
                if events & _POLLIN:
                    self._more.start(self._on_readable)


def _service_name(raw: bytes) -> str | None:
    """A service name as the dispatcher and the JOB record take it, or None: UTF-8
    without NUL (the record's strings are NUL-separated)."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\0" in name else name


def _client_of(first: zmq.Frame | None, secure: bool) -> tuple[str, str, bool]:
    """(the client's address, its CURVE public key or "", whether it says its jobs may run
    twice) from a message's metadata: the connection's ``Peer-Address``, the ``User-Id``
    ZAP gave it, and the ZMTP property ``X-Idempotent`` the client set (``ZMQ_METADATA``)."""
    if first is None:
        return "", "", False
    try:
        address = first.get("Peer-Address")
    except zmq.ZMQError:
        address = ""
    key: Any = ""
    if secure:
        try:
            key = first.get("User-Id") or ""
        except zmq.ZMQError:
            key = ""
    try:
        idempotent = first.get("X-Idempotent") == "1"
    except zmq.ZMQError:  # EINVAL: the client set no such property
        idempotent = False
    return str(address or ""), str(key), idempotent

