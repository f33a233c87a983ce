"""The job client: Majordomo (MDP/0.2) requests to a wsgi_zmq job endpoint, lazy-pirate style.

Run a job and get its reply::

    from wsgi_zmq.client import JobClient, JobError, JobTimeout

    with JobClient("tcp://jobs.example:5560", service="resize") as client:
        frames = client.request([b"photo.jpg", image])   # the FINAL reply's frames
        thumb = client.call(image)                        # a one-frame request and reply
        for frames in client.stream(b"report"):           # each PARTIAL, then the FINAL
            ...
        thumbs = client.map(images)                       # many in flight, input order
        client.has_service("resize")                      # mmi.service (ZeroMQ RFC 8/MMI)

or from a shell (``--help`` lists the exit codes)::

    python -m wsgi_zmq.client tcp://jobs.example:5560 --service resize photo.jpg - < image

The wire protocol is MDP/Client 0.2 (ZeroMQ RFC 18/MDP), on a DEALER socket and without
the empty delimiter frame of MDP/0.1::

    request  [b"MDPC02", b"\\x01" REQUEST, service, body frame, ...]
    replies  [b"MDPC02", b"\\x02" PARTIAL, service, body frame, ...]   zero or more, then
             [b"MDPC02", b"\\x03" FINAL,   service, body frame, ...]   exactly one

A failure the broker itself reports (no worker for the service, no worker free in time, the
job timed out or raised, its worker was lost) is a FINAL whose body is exactly the three
frames ``[b"wsgi_zmq.error", b"<3-digit code>", b"<utf-8 message>"]``; the client raises
``JobError(code, message)`` for it and does not retry, since the broker did answer.

Reliability is the Lazy Pirate pattern (the ZeroMQ guide, chapter 4; RFC 18 recommends it):
each attempt waits at most ``timeout`` seconds for a reply; with none, its socket is closed
(linger 0) and the request is sent again on a fresh socket, up to ``retries`` times, after
which ``JobTimeout`` is raised. **A retried job may run more than once** (the first attempt
may still be running, or may have finished with its reply lost): give ``retries=0`` for a
job that must not run twice. RFC 18 assumes idempotent workers; wsgi_zmq does not check it.

MDP/0.2 carries no request id, so the only way to know which request a reply belongs to is
the socket it arrives on: each request in flight has a DEALER of its own, taken from a small
pool of idle sockets. A socket goes back to the pool only after its FINAL (after which RFC 18
forbids the broker to send anything more); a socket whose attempt timed out, failed or was
abandoned is closed, never reused, so a late reply can never be taken for another request's.

Green or not: with ``green=None`` (the default) the client uses ``zmq.green`` when gevent has
monkey-patched the ``socket`` module, plain ``zmq`` otherwise. Under gevent several greenlets
may call one ``JobClient`` at once, each on its own socket. With plain threads a
``JobClient`` is **not** thread-safe (zmq sockets are not): give each thread its own.

Every wait is bounded by the attempt's ``timeout``: nothing here blocks forever. Importing
this module imports zmq but never gevent.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn, overload

import zmq

from wsgi_zmq import __version__
from wsgi_zmq.cli import UsageParser, tool_exits
from wsgi_zmq.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, ProtocolError

log = logging.getLogger("wsgi_zmq.error.client")

# -- the wire protocol (ZeroMQ RFC 18/MDP, MDP/Client 0.2; RFC 8/MMI) ---------------------------

#: Frame 0 of every MDP/Client 0.2 command.
MDP_CLIENT: Final = b"MDPC02"
#: Frame 1: the command.
REQUEST: Final = b"\x01"
PARTIAL: Final = b"\x02"
FINAL: Final = b"\x03"
#: Frame 0 of the body of a FINAL that reports a broker-made failure.
ERROR_FRAME: Final = b"wsgi_zmq.error"
#: The MMI service that says whether a service has a worker (RFC 8/MMI).
MMI_SERVICE: Final = "mmi.service"

# -- defaults and limits ----------------------------------------------------------------------

#: Seconds one attempt waits for a reply message (the guide's REQUEST_TIMEOUT, 2500 ms).
DEFAULT_TIMEOUT: Final = 2.5
#: Attempts after the first.
DEFAULT_RETRIES: Final = 3
#: Requests ``map`` keeps in flight at once (one socket, so one connection, each).
DEFAULT_MAX_IN_FLIGHT: Final = 32
#: Idle sockets the pool keeps; more are closed when they come back.
MAX_IDLE_SOCKETS: Final = 32

#: Exit code of ``python -m wsgi_zmq.client`` when the broker answered with an error.
EXIT_JOB_ERROR: Final = 3

#: One frame: any bytes-like object.
Frame = bytes | bytearray | memoryview
#: A request body: one frame, or a sequence of frames.
Body = Frame | Sequence[Frame]


#: The connection property (ZMTP metadata) by which a client says its jobs may run twice.
IDEMPOTENT_PROPERTY: Final = b"X-Idempotent:1"


class JobError(Exception):
    """The broker answered the request with a failure: ``code`` is the 3-digit status
    (404 unknown service, 500 the job raised, 501 unsupported ``mmi.`` service, 502 worker
    lost, 503 no worker free in time, 504 the job timed out), ``message`` its text."""

    code: int
    message: str

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class JobTimeout(Exception):
    """No reply came: every attempt waited ``timeout`` s in vain (``attempts`` of them), or
    a stream went silent after ``partials`` PARTIAL replies (a stream is not retried once
    it has begun: the job's earlier output would be repeated)."""

    endpoint: str
    service: str
    attempts: int
    timeout: float
    partials: int

    def __init__(self, endpoint: str, service: str, attempts: int, timeout: float,
                 partials: int = 0) -> None:
        if partials:
            text = (f"no reply from {endpoint} for service {service!r} within {timeout:g} s "
                    f"after {partials} partial {_plural(partials, 'reply', 'replies')} "
                    "(a stream is not retried once it has begun)")
        else:
            text = (f"no reply from {endpoint} for service {service!r} after {attempts} "
                    f"{_plural(attempts, 'attempt', 'attempts')} of {timeout:g} s")
        super().__init__(text)
        self.endpoint = endpoint
        self.service = service
        self.attempts = attempts
        self.timeout = timeout
        self.partials = partials


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def encode_request(service: str, body: Body) -> list[bytes]:
    """The frames of a REQUEST for ``service`` carrying ``body``: one bytes-like object is
    one frame, a sequence of them is several. Raises ``ValueError`` for an empty service
    name or an empty sequence (RFC 18: a REQUEST has at least one body frame), and
    ``TypeError`` for a ``str`` body or frame."""
    if not service:
        raise ValueError("the service name is empty")
    if isinstance(body, bytes | bytearray | memoryview):
        frames = [bytes(body)]
    elif isinstance(body, str):
        raise TypeError("a request body is bytes or a sequence of bytes, not str")
    else:
        frames = []
        for frame in body:
            if not isinstance(frame, bytes | bytearray | memoryview):
                raise TypeError(f"a body frame is bytes, not {type(frame).__name__}")
            frames.append(bytes(frame))
        if not frames:
            raise ValueError("a request needs at least one body frame (RFC 18)")
    return [MDP_CLIENT, REQUEST, service.encode("utf-8"), *frames]


def decode_reply(frames: Sequence[bytes], service: str) -> tuple[bool, list[bytes]]:
    """``(final, body)`` of a reply to a request for ``service``: ``final`` is false for a
    PARTIAL. Raises ``ProtocolError`` saying what is wrong if ``frames`` is not an MDP/0.2
    PARTIAL or FINAL for that service."""
    if len(frames) < 3:
        raise ProtocolError(f"not an MDP/0.2 reply: {len(frames)} "
                            f"{_plural(len(frames), 'frame', 'frames')}, at least 3 expected")
    header, command, name = frames[0], frames[1], frames[2]
    if header != MDP_CLIENT:
        raise ProtocolError(f"not an MDP/0.2 reply: it starts with {_show(header)}, "
                            f"not {MDP_CLIENT!r}")
    if command not in (PARTIAL, FINAL):
        raise ProtocolError(f"not an MDP/0.2 reply: command {_show(command)} is neither "
                            f"PARTIAL {PARTIAL!r} nor FINAL {FINAL!r}")
    if name != service.encode("utf-8"):
        raise ProtocolError(f"a reply for service {_show(name)} to a request for {service!r}")
    return command == FINAL, list(frames[3:])


def check_final(body: list[bytes]) -> list[bytes]:
    """``body`` of a FINAL, unless it is the error triple: then raise ``JobError``.
    A triple whose code is not 3 digits raises ``ProtocolError``."""
    if len(body) != 3 or body[0] != ERROR_FRAME:
        return body
    code, message = body[1], body[2]
    if len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"an error reply whose code {_show(code)} is not 3 digits")
    raise JobError(int(code), message.decode("utf-8", "replace"))


def _show(frame: bytes, limit: int = 40) -> str:
    return repr(frame[:limit]) + ("..." if len(frame) > limit else "")


# -- CURVE ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CurveKeys:
    """The client's key pair and the broker's public key, Z85, for ``curve_*`` options."""

    public: bytes
    secret: bytes
    server: bytes


def load_curve_keys(secret_file: str | None, server_file: str | None) -> CurveKeys | None:
    """Read the client's ``NAME.key_secret`` and the broker's ``.key`` (``zmq.auth``'s
    format, as ``python -m wsgi_zmq.keys generate`` writes them); ``None`` if neither is
    given. Raises ``ConfigError`` naming the file or option at fault: only one of the two
    given, a file missing or not a certificate, a secret file without its secret key, or a
    libzmq without CURVE."""
    if secret_file is None and server_file is None:
        return None
    if server_file is None:
        raise ConfigError("curve_secret_key is given without curve_server_key: give the "
                          "broker's public key file too")
    if secret_file is None:
        raise ConfigError("curve_server_key is given without curve_secret_key: the client "
                          "needs its own key pair (a NAME.key_secret file, see "
                          "python -m wsgi_zmq.keys)")
    if not zmq.has("curve"):
        raise ConfigError(f"libzmq {zmq.zmq_version()} was built without CURVE support")
    from zmq.auth import load_certificate

    from wsgi_zmq.keys import read_public_key

    server = read_public_key(server_file).encode("ascii")
    public = read_public_key(secret_file).encode("ascii")  # checks the pair belongs together
    secret = load_certificate(secret_file)[1]
    if secret is None:
        raise ConfigError(f"curve_secret_key={secret_file} holds no secret key (give the "
                          "NAME.key_secret file)")
    return CurveKeys(public, secret, server)


def gevent_patched() -> bool:
    """Has gevent monkey-patched the ``socket`` module? Never imports gevent: if
    ``gevent.monkey`` was never imported, nothing was patched."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def _milliseconds(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


@dataclass
class _Flight:
    """One request of ``map`` in flight: its socket, attempt (0 the first) and deadline."""

    index: int
    socket: Any
    attempt: int
    deadline: float


class JobClient:
    """A Majordomo (MDP/0.2) client of the job endpoint at ``endpoint``.

    ``service`` is the default service name of every call; a call may name another, and one
    of the two is required (``ValueError`` otherwise: MDP routes every request by name).
    ``timeout`` is how long one attempt waits for each reply message (the FINAL, or the next
    PARTIAL; so a job that sends PARTIALs can run longer); ``retries`` how many times a
    request is sent again on a fresh socket after a silent attempt (``0``: never; a retried
    job may run twice, see the module docstring). Both can be given per call.

    With ``curve_server_key`` (the broker's ``.key`` file) the link is CurveZMQ, with the
    client's key pair from ``curve_secret_key`` (its ``.key_secret`` file); the files are
    read here, and ``ConfigError`` names a bad one. ``context`` is used but not terminated
    by ``close``; without it the client makes its own, lazily, in the first call (so a
    client made before a fork works in the child). ``green`` picks ``zmq.green``
    (``None``: when gevent has patched ``socket``). ``idempotent=True`` tells a wsgi_zmq
    broker that this client's jobs may run twice: one whose worker dies is sent to another
    worker instead of answered 502. It travels as the ZMTP property ``X-Idempotent: 1`` of
    the client's connections (``ZMQ_METADATA``), so any MDP client can set it the same way.

    Not thread-safe; under gevent, safe for concurrent greenlets. ``close`` it (or use it
    as a context manager): that closes every socket, requests in flight included.
    """

    endpoint: str
    service: str | None
    timeout: float
    retries: int
    green: bool
    curve: CurveKeys | None
    idempotent: bool
    _zmq: Any
    _context: zmq.Context[Any] | None
    _own_context: bool
    _idle: list[zmq.Socket[Any]]
    _sockets: set[zmq.Socket[Any]]
    _closed: bool

    def __init__(self, endpoint: str, *, service: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                 curve_secret_key: str | None = None, curve_server_key: str | None = None,
                 context: zmq.Context[Any] | None = None, green: bool | None = None,
                 idempotent: bool = False) -> None:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ConfigError(f"Bad endpoint {endpoint!r}: give TRANSPORT://ADDRESS, e.g. "
                              "tcp://127.0.0.1:5560")
        self.endpoint = endpoint
        self.service = service
        self.timeout = _check_timeout(timeout)
        self.retries = _check_retries(retries)
        self.curve = load_curve_keys(curve_secret_key, curve_server_key)
        self.idempotent = idempotent
        self.green = gevent_patched() if green is None else green
        if self.green:
            from zmq import green as zmq_green

            self._zmq = zmq_green
        else:
            self._zmq = zmq
        self._context = context
        if context is not None and type(context).__module__.startswith("zmq.green") \
                != self.green:  # a plain context for green sockets, or the other way round
            self._context = self._zmq.Context.shadow(context.underlying)
        self._own_context = context is None
        self._idle = []
        self._sockets = set()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._sockets)} sockets"
        return f"<JobClient {self.endpoint} service={self.service!r} {state}>"

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every socket, those of requests still in flight too (in other greenlets;
        they then raise ``ValueError``, within about a second: zmq.green's poller wakes
        every 1.33 s), and terminate the context if the client made it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for sock in list(self._sockets):
            sock.close(linger=0)
        self._sockets.clear()
        self._idle.clear()
        if self._own_context and self._context is not None:
            self._context.term()
        self._context = None

    # -- the calls ----------------------------------------------------------------------------

    def request(self, body: Body, *, service: str | None = None, timeout: float | None = None,
                retries: int | None = None) -> list[bytes]:
        """Send ``body`` (one frame, or a sequence of frames) to ``service`` and return the
        frames of the FINAL reply; PARTIAL replies are read and dropped (``stream`` shows
        them). Raises ``JobError`` for the broker's error reply, ``JobTimeout`` when the
        last attempt got no reply, ``ProtocolError`` for a reply that is not MDP/0.2,
        ``ValueError`` without a service or on a closed client."""
        for final, frames in self._exchange(body, service, timeout, retries):
            if final:
                return frames
        raise AssertionError("unreachable: _exchange ends with a FINAL or raises")

    def call(self, payload: Frame, *, service: str | None = None,
             timeout: float | None = None, retries: int | None = None) -> bytes:
        """``request`` with one frame, returning the one frame of the reply. Raises
        ``ValueError`` if the reply has another number of frames, and what ``request``
        raises."""
        frames = self.request(payload, service=service, timeout=timeout, retries=retries)
        if len(frames) != 1:
            raise ValueError(f"call() expects a reply of one frame, got {len(frames)}: use "
                             "request()")
        return frames[0]

    def stream(self, body: Body, *, service: str | None = None, timeout: float | None = None,
               retries: int | None = None) -> Iterator[list[bytes]]:
        """Send ``body`` and yield the frames of each PARTIAL reply as it arrives, then those
        of the FINAL. Attempts are retried only until the first PARTIAL: after it, silence
        raises ``JobTimeout`` (a retry would repeat the job's output). Leaving the loop
        early closes the request's socket. Raises what ``request`` raises."""
        for _final, frames in self._exchange(body, service, timeout, retries):
            yield frames

    @overload
    def map(self, bodies: Iterable[Body], *, service: str | None = None,
            timeout: float | None = None, retries: int | None = None,
            max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
            return_exceptions: Literal[False] = False) -> list[list[bytes]]: ...

    @overload
    def map(self, bodies: Iterable[Body], *, service: str | None = None,
            timeout: float | None = None, retries: int | None = None,
            max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
            return_exceptions: Literal[True]) -> list[list[bytes] | JobError | JobTimeout]: ...

    def map(self, bodies: Iterable[Body], *, service: str | None = None,
            timeout: float | None = None, retries: int | None = None,
            max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
            return_exceptions: bool = False) -> Sequence[list[bytes] | JobError | JobTimeout]:
        """Run one request per body, up to ``max_in_flight`` at once (each on its own socket,
        all waited for by one poller, so plain code needs no threads), and return the FINAL
        replies' frames in the order of ``bodies``, whatever order they came in.

        Each request is retried on its own as ``request`` would. By default the first
        ``JobError`` or ``JobTimeout`` (in the order they happen) is raised and the requests
        still in flight are abandoned (their sockets closed); with ``return_exceptions`` it
        takes that request's place in the list and the others go on. ``ProtocolError`` and
        ``ValueError`` are always raised."""
        name = self._service_for(service)
        timeout = self.timeout if timeout is None else _check_timeout(timeout)
        retries = self.retries if retries is None else _check_retries(retries)
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight}: it must be at least 1")
        messages = [encode_request(name, body) for body in bodies]
        results: list[list[bytes] | JobError | JobTimeout | None] = [None] * len(messages)
        waiting = deque(range(len(messages)))
        flights: dict[zmq.Socket[Any], _Flight] = {}
        poller = self._zmq.Poller()

        def launch(index: int, attempt: int) -> None:
            sock = self._take()
            self._send(sock, messages[index])
            flights[sock] = _Flight(index, sock, attempt, time.monotonic() + timeout)
            poller.register(sock, zmq.POLLIN)

        def land(flight: _Flight) -> None:
            poller.unregister(flight.socket)
            del flights[flight.socket]

        try:
            while waiting or flights:
                while waiting and len(flights) < max_in_flight:
                    launch(waiting.popleft(), 0)
                wait = min(f.deadline for f in flights.values()) - time.monotonic()
                events: list[tuple[Any, int]] = poller.poll(_milliseconds(wait))
                for sock, _event in events:
                    flight = flights[sock]
                    try:
                        message = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        continue
                    final, frames = self._decode(message, name)
                    if not final:
                        flight.deadline = time.monotonic() + timeout
                        continue
                    land(flight)
                    self._give_back(sock)
                    try:
                        results[flight.index] = check_final(frames)
                    except JobError as exc:
                        if not return_exceptions:
                            raise
                        results[flight.index] = exc
                now = time.monotonic()
                for flight in [f for f in flights.values() if f.deadline <= now]:
                    land(flight)
                    self._discard(flight.socket)
                    if flight.attempt < retries:
                        log.info("request %d: no reply from %s for service %r within %g s: "
                                 "retrying (%d/%d)", flight.index, self.endpoint, name, timeout,
                                 flight.attempt + 1, retries)
                        launch(flight.index, flight.attempt + 1)
                        continue
                    failure = JobTimeout(self.endpoint, name, retries + 1, timeout)
                    if not return_exceptions:
                        raise failure
                    results[flight.index] = failure
        except zmq.ZMQError:
            self._raise_if_closed()
            raise
        finally:
            for sock in list(flights):
                self._discard(sock)
        assert all(result is not None for result in results)
        return results  # type: ignore[return-value]  # no None left, checked above

    def has_service(self, name: str, *, timeout: float | None = None,
                    retries: int | None = None) -> bool:
        """Does the broker have a worker for service ``name``? Asked with ``mmi.service``
        (RFC 8/MMI: ``200`` yes, ``404`` no). Raises ``JobError`` if the broker does not
        implement it (501), and what ``request`` raises."""
        reply = self.request([name.encode("utf-8")], service=MMI_SERVICE, timeout=timeout,
                             retries=retries)
        if reply == [b"200"]:
            return True
        if reply == [b"404"]:
            return False
        if reply == [b"501"]:
            raise JobError(501, f"the broker does not implement {MMI_SERVICE}")
        raise ProtocolError(f"{MMI_SERVICE} answered {[_show(f) for f in reply]}, not 200 "
                            "or 404")

    # -- one request on one socket, lazy pirate -----------------------------------------------

    def _exchange(self, body: Body, service: str | None, timeout: float | None,
                  retries: int | None) -> Iterator[tuple[bool, list[bytes]]]:
        """Yield ``(final, frames)`` for each reply of the request, the FINAL last (its
        error triple raised as ``JobError``); retry silent attempts on fresh sockets until
        the first PARTIAL."""
        name = self._service_for(service)
        timeout = self.timeout if timeout is None else _check_timeout(timeout)
        retries = self.retries if retries is None else _check_retries(retries)
        message = encode_request(name, body)
        for attempt in range(retries + 1):
            if attempt:
                log.info("no reply from %s for service %r within %g s: retrying (%d/%d)",
                         self.endpoint, name, timeout, attempt, retries)
            sock = self._take()
            partials = 0
            finished = False
            try:
                self._send(sock, message)
                while (reply := self._receive(sock, timeout)) is not None:
                    final, frames = self._decode(reply, name)
                    if final:
                        # the broker sends nothing after a FINAL (RFC 18): reusable
                        finished = True
                        self._give_back(sock)
                        yield True, check_final(frames)
                        return
                    partials += 1
                    yield False, frames
            except zmq.ZMQError:
                self._raise_if_closed()
                raise
            finally:
                if not finished:  # timed out, failed, or abandoned mid-stream
                    self._discard(sock)
            if partials:
                raise JobTimeout(self.endpoint, name, attempt + 1, timeout, partials)
        raise JobTimeout(self.endpoint, name, retries + 1, timeout)

    def _receive(self, sock: zmq.Socket[Any], timeout: float) -> list[bytes] | None:
        """The next message on ``sock``, or ``None`` after ``timeout`` s without one."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if sock.poll(_milliseconds(remaining), zmq.POLLIN):
                try:
                    return sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:  # woken without a message (zmq.green may): wait on
                    continue
        return None

    def _send(self, sock: zmq.Socket[Any], message: list[bytes]) -> None:
        # NOBLOCK: a DEALER that has connect()ed queues the message at once (its pipe exists
        # before the connection does), so EAGAIN means its queue is full, which one message
        # on a fresh socket cannot do. Were it to happen, the attempt simply times out and
        # is retried, like a lost request: send never waits.
        try:
            sock.send_multipart(message, zmq.NOBLOCK)
        except zmq.Again:
            log.info("could not queue a request to %s: counted as lost", self.endpoint)

    def _decode(self, message: list[bytes], service: str) -> tuple[bool, list[bytes]]:
        try:
            return decode_reply(message, service)
        except ProtocolError as exc:
            raise ProtocolError(f"{self.endpoint}: {exc}") from None

    def _service_for(self, service: str | None) -> str:
        self._check_open()
        name = self.service if service is None else service
        if not name:
            raise ValueError("no service given: MDP routes every request by service name, "
                             "so pass service= to JobClient() or to this call")
        return name

    # -- the socket pool ----------------------------------------------------------------------

    def _take(self) -> zmq.Socket[Any]:
        """An idle connected socket, or a new one. An idle socket with input waiting (a
        broker that broke RFC 18 by sending after a FINAL) is closed, not used."""
        self._check_open()
        while self._idle:
            sock = self._idle.pop()
            if not sock.poll(0, zmq.POLLIN):
                return sock
            log.warning("%s sent a message after a FINAL reply: dropped with its socket",
                        self.endpoint)
            self._discard(sock)
        return self._new_socket()

    def _new_socket(self) -> zmq.Socket[Any]:
        if self._context is None:
            self._context = self._zmq.Context()
        assert self._context is not None
        sock: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
        self._sockets.add(sock)
        try:
            sock.linger = 0
            if self.idempotent:
                sock.setsockopt(zmq.METADATA, IDEMPOTENT_PROPERTY)
            if self.curve is not None:
                sock.curve_serverkey = self.curve.server
                sock.curve_publickey = self.curve.public
                sock.curve_secretkey = self.curve.secret
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self._discard(sock)
            raise ConfigError(f"Cannot connect to {self.endpoint}: {exc}") from None
        return sock

    def _give_back(self, sock: zmq.Socket[Any]) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE_SOCKETS:
            self._discard(sock)
        else:
            self._idle.append(sock)

    def _discard(self, sock: zmq.Socket[Any]) -> None:
        sock.close(linger=0)
        self._sockets.discard(sock)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this JobClient is closed")

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise ValueError("this JobClient was closed while the request was in flight") \
                from None


def _check_timeout(timeout: float) -> float:
    if not isinstance(timeout, int | float) or not timeout > 0 or math.isinf(timeout):
        raise ValueError(f"timeout={timeout!r}: give a number of seconds above 0 (every "
                         "wait is bounded)")
    return float(timeout)


def _check_retries(retries: int) -> int:
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries={retries!r}: give a whole number, 0 or more")
    return retries


# -- the command line -------------------------------------------------------------------------

PROG = "python -m wsgi_zmq.client"
#: Every line the command writes on stderr starts with this.
NAME = "wsgi_zmq.client"

EPILOG = f"""\
Each PAYLOAD is one body frame; - reads a frame from stdin (once). The reply is written on
stdout as it arrives, each PARTIAL and then the FINAL, every frame followed by a newline
unless it ends with one. Ask whether a service has a worker with --service mmi.service
NAME (it prints 200 or 404).

A request that got no reply is sent again on a fresh connection, up to --retries times, so
a job may run more than once: give --retries 0 for one that must not.

Exit codes:
  {EXIT_OK}  the reply was printed
  {EXIT_FAILURE}  no reply after the last retry, or a reply that is not MDP/0.2
  {EXIT_CONFIG}  bad usage, or an unusable key file or endpoint
  {EXIT_JOB_ERROR}  the broker answered with an error (no worker for the service, none free in
     time, the job raised or timed out): its code and message on stderr
Every failure is one line on stderr."""


class _Parser(UsageParser):
    def line(self, message: str) -> str:
        return f"{NAME}: {message} (see {self.prog} --help)"


def _seconds(text: str) -> float:
    try:
        return _check_timeout(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0") \
            from None


def _count(text: str) -> int:
    try:
        return _check_retries(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, 0 or more") \
            from None


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m wsgi_zmq.client``; a usage error exits ``EXIT_CONFIG``
    with one line on stderr."""
    script = os.path.basename(sys.argv[0])
    prog = script if script.startswith("wsgi-zmq") else PROG  # bin/ and console scripts
    parser = _Parser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Send one job request to a wsgi_zmq job endpoint (Majordomo, MDP/0.2) "
                    "and print its reply.")
    parser.add_argument("endpoint", metavar="ENDPOINT",
                        help="the broker's job endpoint, e.g. tcp://127.0.0.1:5560")
    parser.add_argument("payload", metavar="PAYLOAD", nargs="+",
                        help="a body frame (several: several frames; -: read from stdin)")
    parser.add_argument("--service", metavar="NAME", required=True,
                        help="the service to run the job (required: MDP routes every request "
                             "by service name)")
    parser.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=DEFAULT_TIMEOUT,
                        help="how long each attempt waits for a reply (default: "
                             f"{DEFAULT_TIMEOUT:g})")
    parser.add_argument("--retries", metavar="N", type=_count, default=DEFAULT_RETRIES,
                        help="attempts after the first, each on a fresh connection (default: "
                             f"{DEFAULT_RETRIES}; 0 for a job that must not run twice)")
    parser.add_argument("--curve-secret-key", metavar="FILE",
                        help="this client's key pair (a NAME.key_secret file of "
                             "python -m wsgi_zmq.keys)")
    parser.add_argument("--curve-server-key", metavar="FILE",
                        help="the broker's public key (its NAME.key file): the link is "
                             "CurveZMQ, and --curve-secret-key is required")
    parser.add_argument("--idempotent", action="store_true",
                        help="the job may run twice: the broker sends it to another worker "
                             "if its worker dies")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="do not log retries on stderr")
    parser.add_argument("--version", action="version", version=f"wsgi_zmq {__version__}")
    return parser


def _frames(payloads: list[str]) -> list[bytes]:
    if payloads.count("-") > 1:
        raise ConfigError("- (stdin) is given more than once: stdin can be read only once")
    # os.fsencode: an argument that is not valid UTF-8 is sent as the bytes it was
    return [sys.stdin.buffer.read() if p == "-" else os.fsencode(p) for p in payloads]


def _write(out: Any, frames: list[bytes]) -> None:
    for frame in frames:
        out.write(frame)
        if not frame.endswith(b"\n"):
            out.write(b"\n")
    out.flush()


def _fail(code: int, message: object) -> NoReturn:
    print(f"{NAME}: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    """``python -m wsgi_zmq.client``: send the request in ``argv`` (default
    ``sys.argv[1:]``), print the reply, exit with one of the codes of ``--help``."""
    args = build_parser().parse_args(argv)
    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{NAME}: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    out = sys.stdout.buffer
    with tool_exits(EXIT_FAILURE):
        try:
            frames = _frames(args.payload)
            with JobClient(args.endpoint, service=args.service, timeout=args.timeout,
                           retries=args.retries, curve_secret_key=args.curve_secret_key,
                           curve_server_key=args.curve_server_key, green=False,
                           idempotent=args.idempotent) as client:
                for reply in client.stream(frames):
                    _write(out, reply)
        except ConfigError as exc:
            _fail(EXIT_CONFIG, exc)
        except JobError as exc:
            _fail(EXIT_JOB_ERROR, exc)
        except (JobTimeout, ProtocolError) as exc:
            _fail(EXIT_FAILURE, exc)
    sys.exit(EXIT_OK)
