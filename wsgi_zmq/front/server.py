"""The HTTP/1.1 front on gevent's event loop: accept, parse, dispatch, stream back.

Usage::

    python -m wsgi_zmq.front --bind 127.0.0.1:8000 --backend tcp://127.0.0.1:5556

The hot path runs as callbacks of the gevent (libev) loop, not as greenlets: a readable
socket is read once and fed to the parser; a completed request is encoded into one REQUEST
record and handed to the ``Dispatcher``, which batches the records of the loop iteration;
replies are written by the dispatcher's callback straight to the client socket. Measured in
``../shared/DESIGN.md`` ("Where the time goes"), this is what halves the front's CPU per
request against a greenlet per connection.

A connection serves its requests one at a time, in order (pipelined requests wait, parsed,
until the response before them is complete). Memory per connection is bounded:

- while a request body streams to a worker, the connection reads only while the worker has
  granted credit (``window`` chunks of at most ``chunk_size``); otherwise the client's
  TCP window fills and the client waits;
- a response chunk is acknowledged to the worker only once it is wholly in the kernel, so a
  slow reader holds at most ``window`` chunks here;
- a pipelined request is parsed from data already read, and reading stops until it is
  served.

``TCP_NODELAY`` is set on every connection: a head and body written in separate sends would
otherwise wait for the client's delayed ACK (40 ms on Linux) on keep-alive connections.

HTTPS: a bind written ``https://HOST:PORT`` (or every bind, when ``certfile`` is set and no
bind is written so) serves HTTP/1.1 over TLS. ``TlsConnection`` runs the handshake, the
reads and the writes of ``ssl`` on the same callbacks, never blocking the loop; a plain
connection pays nothing for it. ALPN offers ``http/1.1`` only: HTTP/2 is not served.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import mmap
import os
import resource
import signal
import socket
import ssl
import time
from types import SimpleNamespace
from typing import Any, Final

import gevent
import gevent.event
import zmq

from wsgi_zmq import protocol
from wsgi_zmq.config import addr_allowed, bind_addresses, bind_scheme, parse_bind
from wsgi_zmq.errors import (
    EXIT_CONFIG,
    EXIT_OK,
    ConfigError,
    HTTPError,
    RequestTimeout,
    render_error,
)
from wsgi_zmq.front.dispatcher import DONE, NEW, Dispatcher, Exchange, StateError
from wsgi_zmq.front.parser import Limits, RequestHead, RequestParser, request_is_idempotent
from wsgi_zmq.front.proxy import parse_proxy_header
from wsgi_zmq.front.sockets import listen
from wsgi_zmq.handler.environ import CLIENT_DN_FIELD, SCRIPT_NAME_FIELD
from wsgi_zmq.log import AccessLog
from wsgi_zmq.log import reopen as reopen_logs
from wsgi_zmq.process import Pidfile, set_owner
from wsgi_zmq.protocol import (
    DEFAULT_POOL,
    END_ABORT,
    END_CLOSE,
    REQ_BODY_COMPLETE,
    REQ_CHUNKED,
    REQ_CLOSE_IF_UNREAD,
    REQ_EXPECT,
    REQ_KEEP_ALIVE,
    REQ_REPLAYABLE,
    RESP_CLOSE,
    RESP_END,
)
from wsgi_zmq.ring import EARLY_BYTES, EARLY_PIECE, BodyRing, PieceCopies

log = logging.getLogger("wsgi_zmq.error.front")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HEALTH_METHODS: Final = (b"GET", b"HEAD")
_HEALTH_HEADERS: Final = (("Cache-Control", "no-store"),)
_RESPONSE_DATA = protocol.RESPONSE_HEAD.size
#: where the first digit of the status is in a RESPONSE payload (``HTTP/1.1 200 ...``)
_STATUS_CLASS_AT: Final = _RESPONSE_DATA + 9
_ACCEPT_BATCH = 64
_READ, _WRITE = 1, 2
_encode_request = protocol.encode_request
# A read that must simply wait for more bytes. SSLWantReadError is a TLS connection's
# "no whole record yet"; it costs a plain connection nothing (only a raised exception is
# matched against the tuple).
_READ_AGAIN: Final = (BlockingIOError, InterruptedError, ssl.SSLWantReadError)


class HttpExchange(Exchange):
    """An exchange owned by an HTTP connection: the request head and its unsent body."""

    __slots__ = ("head", "pending", "request_done", "end_sent", "continue_wanted",
                 "continue_sent", "discarded", "status", "read_at", "stick_to", "kept",
                 "kept_bytes", "copies")

    def __init__(self, rid: int, sink: Connection, head: RequestHead) -> None:
        super().__init__(rid, sink)
        self.head = head
        self.status = 0  # its answer's status, 200 (metrics; 0: not counted)
        self.read_at = 0.0  # when its head was read (for the metrics)
        self.pending: collections.deque[bytes] = collections.deque()
        self.request_done = False
        self.end_sent = False  # the END of its body went to the worker that holds it
        self.continue_wanted = head.expect_continue
        self.continue_sent = False
        self.discarded = -1  # >= 0 while the rest of an answered request's body is skipped
        self.stick_to: str | None = None  # the version its answer's sticky cookie names
        # copies of the pieces sent under early credit (``Exchange.presend``), until the
        # worker's first CREDIT: a request handed back gets them again. Those read
        # straight from the client are views of ``copies``, a buffer of ``PieceCopies``
        # (``_give_back``)
        self.kept: list[bytes | memoryview] = []
        self.kept_bytes = 0
        self.copies: mmap.mmap | None = None


# -- connection phases ---------------------------------------------------------------------

OPEN: Final = 0       # reading requests and answering them, in order
CLOSING: Final = 1    # the last answer is being written; nothing more is read
LINGERING: Final = 2  # written and shut for writing; the client's bytes are read, discarded
CLOSED: Final = 3
PHASE_NAMES: Final = ("OPEN", "CLOSING", "LINGERING", "CLOSED")

#: OPEN -> CLOSING (an answer that ends the connection; a refusal; draining),
#: LINGERING (the same with nothing left to write), CLOSED (the client closed; a cut;
#: a timeout). CLOSING -> LINGERING (all written), CLOSED. LINGERING -> CLOSED (the client
#: closed, or ``LINGER_SECONDS`` passed).
PHASES: Final[tuple[frozenset[int], ...]] = (
    frozenset({CLOSING, LINGERING, CLOSED}),  # OPEN
    frozenset({LINGERING, CLOSED}),           # CLOSING
    frozenset({CLOSED}),                      # LINGERING
    frozenset(),                              # CLOSED
)

#: A request answered before its body was all read (the app did not read it) keeps its
#: connection alive if at most this much of the body is still to come, read and thrown
#: away; with more, the connection closes after the answer, as RFC 9112 section 9.3 allows.
DISCARD_LIMIT: Final = 256 << 10

#: After its last answer a connection is shut for writing and what the client still sends
#: is read and thrown away for up to this long. Closing at once with unread bytes would
#: make the kernel send a reset, and the client could lose the answer (a 400 for a bad
#: request sent byte by byte, say) before reading it.
LINGER_SECONDS: Final = 2.0


def _skippable(ex: HttpExchange) -> bool:
    """Could the rest of this request's body be read and thrown away, should it be answered
    before its body was read? Not a chunked one (no telling how much is left), nor one over
    ``DISCARD_LIMIT``, nor one whose client waits for 100 Continue (having got a final
    answer instead, it may never send its body: RFC 9110 section 10.1.1). For those the
    worker says ``Connection: close`` in such an answer (``REQ_CLOSE_IF_UNREAD``)."""
    head = ex.head
    return (not head.chunked and not (ex.continue_wanted and not ex.continue_sent)
            and 0 <= head.content_length <= DISCARD_LIMIT)


class Connection:
    """One client connection: the parser's sink and the dispatcher's sink.

    ``phase`` is one of ``PHASES``; every change goes through ``_enter``. While OPEN,
    ``current`` is the request being answered, ``pipeline`` the parsed requests behind it
    (not yet submitted), ``parsing`` the request whose body is being read (``current`` or
    the last of ``pipeline``), and ``refusal`` the answer owed, after the requests before
    it, to a stream the parser refused. ``check()`` asserts the invariants.
    """

    __slots__ = ("server", "sock", "fd", "remote_addr", "remote_port", "listener", "trusted",
                 "proxy_header", "parser", "reader", "writer", "reading", "current", "parsing",
                 "pipeline", "out", "phase", "last_active", "read_since", "head_started",
                 "write_stalled", "linger_until", "refusal", "ending")

    def __init__(self, server: FrontServer, sock: socket.socket, remote: Any,
                 listener: Listener) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        if isinstance(remote, tuple):
            self.remote_addr = remote[0].encode("latin-1")
            self.remote_port = remote[1]
        else:
            self.remote_addr, self.remote_port = b"", 0
        self.listener = listener
        self.trusted = server.trusts(self.remote_addr)  # may say the request came over TLS
        # bytes of a PROXY protocol header still being read, or None when none is expected
        self.proxy_header: bytes | None = b"" if server.expects_proxy(self.remote_addr) \
            else None
        self.parser = RequestParser(self, server.limits)
        loop = server.loop
        self.reader = loop.io(self.fd, _READ)
        self.writer: Any = None
        self.reading = False
        self.current: HttpExchange | None = None
        self.parsing: HttpExchange | None = None
        self.pipeline: collections.deque[HttpExchange] = collections.deque()
        self.out: collections.deque[tuple[memoryview, HttpExchange | None]] = \
            collections.deque()
        self.phase = OPEN
        self.last_active = loop.now()  # the last byte read, or the last answer finished
        self.read_since = 0.0  # when reading was last turned on
        self.head_started = 0.0  # the first byte of a request head not yet complete
        self.write_stalled = 0.0  # the last write progress while output waits
        self.linger_until = 0.0
        self.refusal: HTTPError | None = None
        self.ending = False  # no request after the current one (the front drains)
        self._set_reading(True)

    @property
    def closed(self) -> bool:
        return self.phase == CLOSED

    def _enter(self, phase: int) -> None:
        if phase not in PHASES[self.phase]:
            raise StateError(f"connection from {self.remote_addr!r}: "
                             f"{PHASE_NAMES[self.phase]} -> {PHASE_NAMES[phase]}")
        self.phase = phase

    def check(self) -> None:
        """Assert the connection's invariants (tests and ``WSGI_ZMQ_CHECK=1`` call it)."""
        phase = self.phase
        if phase == CLOSED:
            assert self.current is None and not self.pipeline and not self.out
            assert self not in self.server.connections
            return
        assert self in self.server.connections, "an open connection the server lost"
        if self.pipeline:
            assert self.current is not None, "requests wait behind no current one"
        for ex in self.pipeline:
            assert ex.state == NEW, f"pipelined {ex!r} was submitted"
        if self.parsing is not None:
            assert self.parsing is self.current or self.parsing.discarded >= 0 \
                or self.parsing is self.pipeline[-1]
        current = self.current
        if current is not None:
            assert current.state not in (NEW, DONE), f"current {current!r}"
            assert not current.kept or current.early or current.worker is None, \
                f"{current!r} keeps pieces its worker has taken"
            assert current.kept_bytes == sum(map(len, current.kept)), "kept_bytes is off"
            assert current.copies is None or current.early or current.worker is None, \
                f"{current!r} holds a buffer of copies its worker has taken"
            for piece in current.kept:
                assert not isinstance(piece, memoryview) or piece.obj is current.copies, \
                    f"{current!r} keeps a view of another buffer"
            assert current.kept_bytes < EARLY_BYTES + max(map(len, current.kept), default=0), \
                f"{current!r} keeps more than EARLY_BYTES"
        if phase == OPEN:
            assert self.reading == self._wants_to_read(), "reading out of step"
            if self.refusal is not None:
                assert self.parsing is None and self.current is not None
        else:
            assert not self.pipeline and self.parsing is None
        if phase == LINGERING:
            assert current is None and not self.out and self.reading

    # -- reading --------------------------------------------------------------------------

    def _set_reading(self, on: bool) -> None:
        if on != self.reading:
            self.reading = on
            if on:
                self.read_since = self.server.loop.now()
                self.reader.start(self._on_readable)
            else:
                self.reader.stop()

    def _wants_to_read(self) -> bool:
        if self.phase != OPEN or self.refusal is not None:
            return False
        parsing = self.parsing
        if parsing is None:
            return not self.pipeline and not self.ending
        if parsing.discarded >= 0:
            return True
        return (parsing is self.current and parsing.worker is not None
                and not parsing.pending and parsing.body_credit > 0)

    def _update_reading(self) -> None:
        if self.phase == OPEN:
            self._set_reading(self._wants_to_read())

    def _on_readable(self) -> None:
        # While a body streams under credit and the client keeps up, one turn reads up to
        # ``window`` pieces (not more: a worker's credit must not let one client hold the
        # loop), and they leave for the worker as one message: fewer, bigger messages
        # take the ZeroMQ hop faster than a message a piece. Every other read is one a turn.
        server = self.server
        size = server.chunk_size
        reads = server.window
        while True:
            parsing = self.parsing
            if parsing is not None and parsing.body_credit > 0 and parsing.worker is not None:
                ring = parsing.worker.ring
                left = self.parser.raw_left
                if ring is not None and left and not parsing.pending and self.phase == OPEN:
                    asked = min(left, ring.slot_size)
                    if parsing.early:
                        asked = min(asked, EARLY_PIECE)
                    got = self._read_into_ring(parsing, ring, asked)
                    if got < 0:
                        return
                    if got:
                        reads -= 1
                        if got < asked or not reads or not self.reading:
                            return
                        continue
            try:
                data = self.sock.recv(size)
            except _READ_AGAIN:
                return
            except OSError as exc:
                self._read_failed(exc)
                return
            if not data:
                self.close()  # the client closed; an unfinished exchange is cancelled
                return
            metrics = server.metrics
            if metrics is not None:
                metrics.received += len(data)
            self.last_active = server.loop.now()
            if self.phase == LINGERING:
                return  # read only to be thrown away
            if self.proxy_header is not None:
                try:
                    data = self._read_proxy_header(data)
                except HTTPError as exc:
                    self._refuse(exc)
                    return
                if not data:
                    return
            if not self.head_started and self.parser.idle:
                self.head_started = self.last_active
            try:
                self.parser.feed(data)
            except HTTPError as exc:
                self._refuse(exc)  # requests parsed before the bad one are still answered
            current = self.current
            if current is not None and current.state == NEW and self.phase == OPEN:
                self._dispatch(current)
            self._update_reading()
            reads -= 1
            if len(data) < size or not reads or not self.reading:
                return  # the kernel had no more, or this turn's share is read
            parsing = self.parsing
            if parsing is None or parsing.worker is None or parsing.body_credit <= 0:
                return  # no body streaming under credit: one read a turn

    def _read_into_ring(self, ex: HttpExchange, ring: BodyRing, size: int) -> int:
        """Read the next piece of ``ex``'s Content-Length body, at most ``size`` bytes (no
        more than a slot, nor than the body has left), straight into its slot of the
        worker's body ring, and send its BODY_AT: the piece is copied once, by the kernel,
        on its way to the worker. Under early credit the piece is read into a buffer of
        ``server.copies`` instead, kept until the worker's CREDIT, and copied into the
        slot. Returns the bytes read; 0 if ``ex`` holds no group of the ring and none is
        free (read it the usual way); -1 if the turn's reading is over (nothing more to
        read, or the connection ended)."""
        server = self.server
        early = ex.early
        if early:
            slot = -1
            copies = ex.copies
            if copies is None:
                copies = ex.copies = server.copies.take()
            # the pieces lie one after the other; together they pass EARLY_BYTES by less
            # than the last one (end_early), so this one fits
            view = memoryview(copies)[ex.kept_bytes:ex.kept_bytes + size]
        else:
            slot = ring.slot(ex.rid, ex.body_sent)
            if slot < 0:
                return 0
            view = ring.view(slot)
        try:
            got = self.sock.recv_into(view, size)
        except _READ_AGAIN:
            got = -1
        except OSError as exc:
            self._read_failed(exc)
            got = -1
        finally:
            if not early:
                view.release()
        if got <= 0:
            view.release()
            if not got:
                self.close()
            return -1
        if server.metrics is not None:
            server.metrics.received += got
        self.last_active = server.loop.now()
        if early:
            piece = view[:got]
            view.release()
            server.dispatcher.send_body(ex, piece)
            self._keep(ex, piece)
        else:
            server.dispatcher.send_at(ex, slot, got)
        self.parser.took_raw(got)  # on_request_end follows the last piece
        self._update_reading()
        return got

    def _read_failed(self, exc: OSError) -> None:
        """A read raised ``exc`` (a reset, say): the connection is gone."""
        self.close()

    def _read_proxy_header(self, data: bytes) -> bytes:
        """Take the PROXY protocol header off the start of the stream; return what follows
        (``b""`` while the header is incomplete). The client's address replaces the
        proxy's."""
        assert self.proxy_header is not None
        buffered = self.proxy_header + data
        parsed = parse_proxy_header(buffered, self.server.cfg.proxy_protocol)
        if parsed is None:
            self.proxy_header = buffered
            return b""
        info, used = parsed
        self.proxy_header = None
        if info.source_addr is not None and info.source_port is not None:
            self.remote_addr = info.source_addr.encode("latin-1")
            self.remote_port = info.source_port
        return buffered[used:]

    # -- parser sink ------------------------------------------------------------------------

    def on_request(self, head: RequestHead) -> None:
        self.head_started = 0.0
        ex = HttpExchange(self.server.dispatcher.new_rid(), self, head)
        if self.server.metrics is not None:
            ex.read_at = self.server.loop.now()
        self.parsing = ex
        if self.current is None:
            self.current = ex
        else:
            self.pipeline.append(ex)

    def on_body(self, data: bytes) -> None:
        ex = self.parsing
        if ex is None:
            return
        if ex.discarded >= 0:
            ex.discarded += len(data)
            if ex.discarded > DISCARD_LIMIT:
                self._close_after(b"")
            return
        if ex.worker is not None and not ex.pending and ex.body_credit > 0:
            self.server.dispatcher.send_body(ex, data)
            if ex.early:
                self._keep(ex, data)
        else:
            ex.pending.append(data)

    def on_request_end(self) -> None:
        ex = self.parsing
        if ex is None:
            return
        self.parsing = None
        ex.request_done = True
        if ex.discarded >= 0:  # the answered request's body is over: on to the next one
            self.head_started = 0.0
            self._update_reading()
            return
        if ex.worker is not None and not ex.pending:
            self._end_body(ex)

    def _keep(self, ex: HttpExchange, piece: bytes | memoryview) -> None:
        """Keep a copy of a piece sent under early credit, up to ``EARLY_BYTES``."""
        ex.kept.append(piece)
        ex.kept_bytes += len(piece)
        if ex.kept_bytes >= EARLY_BYTES:
            self.server.dispatcher.end_early(ex)

    def _give_back(self, ex: HttpExchange) -> None:
        """Drop the copies ``ex`` keeps; the buffer they were read into serves again."""
        for piece in ex.kept:
            if isinstance(piece, memoryview):
                piece.release()
        ex.kept = []
        ex.kept_bytes = 0
        if ex.copies is not None:
            self.server.copies.give(ex.copies)
            ex.copies = None

    def _end_body(self, ex: HttpExchange) -> None:
        self.server.dispatcher.end_body(ex)
        ex.end_sent = True

    # -- dispatching ------------------------------------------------------------------------

    def _dispatch(self, ex: HttpExchange) -> None:
        head = ex.head
        server = self.server
        if server.health_path is not None and head.method in _HEALTH_METHODS and \
                head.target.partition(b"?")[0] == server.health_path:
            self._answer_health(ex)
            return
        flags = REQ_KEEP_ALIVE if head.keep_alive else 0
        body = b""
        if ex.request_done:
            flags |= REQ_BODY_COMPLETE
            if ex.pending:
                body = b"".join(ex.pending)
                ex.pending.clear()
            if request_is_idempotent(head.method):
                flags |= REQ_REPLAYABLE
                ex.replayable = True
        else:
            # the worker asks for the rest with CREDIT once the app reads: until then the
            # request holds nothing but this record and may go to another worker
            ex.body_complete = False
            flags |= REQ_EXPECT
            if ex.pending:
                body = ex.pending.popleft()
            if head.chunked:
                flags |= REQ_CHUNKED
            if not _skippable(ex):
                flags |= REQ_CLOSE_IF_UNREAD
            # a client that waits for 100 Continue sends nothing before the worker's CREDIT
            ex.presend = not ex.continue_wanted
        listener = self.listener
        scheme = listener.scheme
        if self.trusted and server.secure_headers:
            scheme = server.scheme_of(head.headers, scheme)
        headers = head.headers
        dispatcher = server.dispatcher
        if server.router is not None or dispatcher.versioned:
            headers = self._route(ex, headers)
        ex.record = _encode_request(
            ex.rid, flags, head.method, head.target, head.version, self.remote_addr,
            self.remote_port, listener.server_name, listener.port, scheme,
            headers, server.window, body)
        dispatcher.submit(ex)

    def _route(self, ex: HttpExchange, headers: list[bytes]) -> list[bytes]:
        """Pick the pool and version of ``ex`` (its lane); the headers to send, with the
        ``:script-name`` of a route that strips its prefix."""
        router = self.server.router
        dispatcher = self.server.dispatcher
        if router is None:
            ex.service, _ = dispatcher.route(DEFAULT_POOL)
            return headers
        choice = router.pick(ex.head.target, headers)
        ex.service, picked = dispatcher.route(choice.pool, choice.asked, choice.sticky)
        if picked is not None and router.sticky_cookie is not None:
            ex.stick_to = picked
        if choice.script_name is not None:
            headers = [*headers, _SCRIPT_NAME_FIELD, choice.script_name]
        return headers

    def _answer_health(self, ex: HttpExchange) -> None:
        """The front's own answer to ``health_path`` (see that setting)."""
        status, detail = self.server.health()
        close = not ex.request_done or not ex.head.keep_alive
        version = "1.0" if ex.head.version == b"HTTP/1.0" else "1.1"
        reason = "OK" if status == 200 else "Service Unavailable"
        answer = render_error(status, reason, detail, close, _HEALTH_HEADERS, version,
                              self.server.cfg.server_header)
        if ex.head.method == b"HEAD":
            answer = answer[:answer.index(b"\r\n\r\n") + 4]
        ex.move(DONE)
        self._write(answer)
        self._response_done(ex, close)

    def on_body_credit(self, ex: Exchange, count: int) -> None:
        assert isinstance(ex, HttpExchange)
        pending = ex.pending
        if not count:  # a worker took it anew: it needs the body's END too, after its credit
            ex.end_sent = False
            # what the worker before it had under early credit goes first
            if ex.kept or ex.copies is not None:
                pending.extendleft([bytes(piece) for piece in reversed(ex.kept)])
                self._give_back(ex)
        elif not ex.early and (ex.kept or ex.copies is not None):
            self._give_back(ex)  # the worker's own credit: it started, and has those pieces
        if ex.continue_wanted and not ex.continue_sent and ex.body_credit > 0:
            ex.continue_sent = True
            self._write(_CONTINUE)
        dispatcher = self.server.dispatcher
        while pending and ex.body_credit > 0:
            piece = pending.popleft()
            dispatcher.send_body(ex, piece)
            if ex.early:
                self._keep(ex, piece)
        if ex.request_done and not pending and ex.worker is not None and \
                (count or ex.early) and not ex.end_sent:
            self._end_body(ex)
        if ex is self.parsing:
            self._update_reading()

    # -- dispatcher sink ----------------------------------------------------------------------

    def on_response(self, ex: Exchange, flags: int, payload: bytes) -> None:
        if self.server.metrics is not None:
            assert isinstance(ex, HttpExchange)
            # the 200 of "HTTP/1.1 200"; a worker's head is not trusted to have one
            code = payload[_STATUS_CLASS_AT:_STATUS_CLASS_AT + 3]
            ex.status = int(code) if len(code) == 3 and code.isdigit() and 49 <= code[0] <= 53 \
                else 0
        stick_to = ex.stick_to  # type: ignore[attr-defined]
        if stick_to is not None and self.server.router is not None:
            payload = _with_header(payload, self.server.router.set_cookie(stick_to))
        self._write(memoryview(payload)[_RESPONSE_DATA:])
        if flags & RESP_END:
            self._response_done(ex, flags & RESP_CLOSE)

    def on_chunk(self, ex: Exchange, data: bytes) -> None:
        self._write(data, ex)  # type: ignore[arg-type]

    def on_end(self, ex: Exchange, flags: int, tail: bytes) -> None:
        if flags & END_ABORT:
            log.info("Worker aborted the response to %s; cutting the connection",
                     self.remote_addr.decode("latin-1"))
            self.close()
            return
        if tail:
            self._write(tail)
        self._response_done(ex, flags & END_CLOSE)

    def on_failure(self, ex: Exchange, error: HTTPError) -> None:
        if self.phase == CLOSED:
            return
        if ex.started or ex is not self.current:
            # the head is out: a complete-looking wrong answer is worse than a cut
            self.close()
            return
        assert isinstance(ex, HttpExchange)
        if error.status >= 500:
            log.warning("%d for %s %s: %s", error.status, ex.head.method.decode("latin-1"),
                        ex.head.target.decode("latin-1")[:200], error.detail)
        self.server.dispatcher.cancel(ex)  # done already, unless the sink answers itself
        metrics = self.server.metrics
        if metrics is not None:
            ex.status = error.status
            metrics.front_answer(error.status)
        close = error.close or not ex.request_done
        version = "1.0" if ex.head.version == b"HTTP/1.0" else "1.1"
        answer = render_error(error.status, error.reason, error.detail, close, error.headers,
                              version, self.server.cfg.server_header)
        self._write(answer)
        self.server.log_access(self, ex.head, error, answer)
        self._response_done(ex, close)

    def _refuse(self, error: HTTPError) -> None:
        """The stream is refused (the parser, a timeout): answer the requests before the bad
        one, then answer the error and close (RFC 9112 section 9.6). A refused request a
        worker holds is cancelled there (the app's ``wsgi.input`` read fails)."""
        if self.phase != OPEN:
            return
        log.debug("Refused a request from %s: %d %s", self.remote_addr.decode("latin-1"),
                  error.status, error.detail)
        broken, self.parsing = self.parsing, None  # its body can no longer be read
        if broken is not None and broken.discarded < 0:
            if broken is self.current:
                if broken.started:
                    self.close()  # the response is on its way: it can only be cut
                    return
                self.server.dispatcher.cancel(broken)
                self.current = None
            else:
                self.pipeline.remove(broken)
                broken.move(DONE)
        self.refusal = error
        self._set_reading(False)
        if self.current is None:
            self._answer_refusal()

    def _answer_refusal(self) -> None:
        error = self.refusal
        assert error is not None
        self.refusal = None
        metrics = self.server.metrics
        if metrics is not None:
            metrics.front_answer(error.status)
            metrics.answered(b"", error.status, 0.0)
        answer = error.render(server=self.server.cfg.server_header)
        self.server.log_access(self, None, error, answer)
        self._close_after(answer)

    def _response_done(self, ex: Exchange, close: int) -> None:
        assert isinstance(ex, HttpExchange)
        self.current = None
        if ex.kept or ex.copies is not None:
            self._give_back(ex)  # answered before its worker's first CREDIT
        now = self.last_active = self.server.loop.now()
        metrics = self.server.metrics
        if metrics is not None and ex.status:
            metrics.answered(ex.head.method, ex.status, now - ex.read_at)
        if not ex.request_done and not (close or self.ending) and ex.head.keep_alive \
                and _skippable(ex):
            # answered before its body was read: skip the rest of the body, then serve
            # what the client sends next
            ex.pending.clear()
            ex.discarded = 0
            self._update_reading()
            return
        if close or self.ending or not ex.head.keep_alive or not ex.request_done:
            self._close_after(b"")
        elif self.pipeline:
            nxt = self.current = self.pipeline.popleft()
            self._dispatch(nxt)
            self._update_reading()
        elif self.refusal is not None:
            self._answer_refusal()
        else:
            self._update_reading()

    def _close_after(self, data: bytes) -> None:
        """Write ``data``, then shut the connection for writing once everything buffered is
        out, and linger (see ``LINGER_SECONDS``)."""
        if self.phase == OPEN:
            self._enter(CLOSING)
        self._drop_pipeline()
        self.parsing = None
        self._set_reading(False)
        if data:
            self._write(data)
        if not self.out and self.phase == CLOSING:
            self._linger()

    def _linger(self) -> None:
        """Shut for writing; read and discard until the client closes or time is up."""
        self._enter(LINGERING)
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.linger_until = self.server.loop.now() + LINGER_SECONDS
        self._set_reading(True)

    # -- writing ----------------------------------------------------------------------------

    def _write(self, data: bytes | memoryview, credit: HttpExchange | None = None) -> None:
        if self.phase >= LINGERING:
            return
        metrics = self.server.metrics
        if metrics is not None:
            metrics.sent += len(data)
        if not self.out:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            if sent == len(data):
                if credit is not None:
                    self.server.dispatcher.grant(credit, 1)
                return
            data = memoryview(data)[sent:]
            if self.writer is None:
                self.writer = self.server.loop.io(self.fd, _WRITE)
            self.writer.start(self._on_writable)
            self.write_stalled = self.server.loop.now()
        self.out.append((memoryview(data), credit))

    def _on_writable(self) -> None:
        out = self.out
        dispatcher = self.server.dispatcher
        while out:
            data, credit = out[0]
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            self.write_stalled = self.server.loop.now()
            if sent < len(data):
                out[0] = (data[sent:], credit)
                return
            out.popleft()
            if credit is not None:
                dispatcher.grant(credit, 1)
        self.writer.stop()
        self.write_stalled = 0.0
        if self.phase == CLOSING and self.current is None:
            self._linger()

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close now: stop the watchers, cancel what a worker still holds for us."""
        if self.phase == CLOSED:
            return
        self._enter(CLOSED)
        self.reader.stop()
        self.reading = False
        if self.writer is not None:
            self.writer.stop()
        dispatcher = self.server.dispatcher
        if self.current is not None:
            dispatcher.cancel(self.current)
            if self.current.kept or self.current.copies is not None:
                self._give_back(self.current)
            self.current = None
        self._drop_pipeline()
        self.parsing = None
        self.out.clear()
        try:
            self.sock.close()
        except OSError:
            pass
        self.server.connection_closed(self)

    def end_after_current(self) -> None:
        """Answer the request in progress, then close: read no further request."""
        self.ending = True
        if self.parsing is not self.current:
            self.parsing = None
        self._drop_pipeline()
        self._update_reading()

    def _drop_pipeline(self) -> None:
        """Forget the parsed requests behind the current one (never submitted)."""
        for ex in self.pipeline:
            ex.move(DONE)
        self.pipeline.clear()

    def check_timeouts(self, now: float, cfg: Any) -> None:
        """Close an idle connection, a lingering one past its time, a client that stopped
        reading; answer 408 to a request head or body that is too slow."""
        phase = self.phase
        if phase == LINGERING:
            if now >= self.linger_until:
                self.close()
        elif self.write_stalled and now - self.write_stalled > cfg.request_timeout:
            log.info("Closing a connection from %s: the client stopped reading",
                     self.remote_addr.decode("latin-1"))
            self.close()
        elif phase != OPEN:
            return
        elif self.parsing is not None and self.reading and (
                self.parsing is self.current or self.parsing.discarded >= 0):
            if now - max(self.last_active, self.read_since) > cfg.body_timeout:
                if self.parsing.discarded >= 0:
                    self._close_after(b"")  # its answer is out already
                else:
                    self._refuse(RequestTimeout("The request body stalled"))
        elif self.current is None and not self.out:
            if self.head_started:
                if now - self.head_started > cfg.header_timeout:
                    self._refuse(RequestTimeout("The request head took too long"))
            elif now - self.last_active > cfg.keepalive:
                self.close()


# -- TLS ------------------------------------------------------------------------------------

_CLIENT_DN_FIELD: Final = CLIENT_DN_FIELD.encode("latin-1")
_SCRIPT_NAME_FIELD: Final = SCRIPT_NAME_FIELD.encode("latin-1")


def _with_header(payload: bytes, line: bytes) -> bytes:
    """A RESPONSE payload whose head has ``line`` (ending CRLF) added as its last field."""
    head_len = protocol.RESPONSE_HEAD.unpack_from(payload)[1]
    end = _RESPONSE_DATA + head_len
    if head_len < 4 or payload[end - 4:end] != b"\r\n\r\n":
        return payload  # not a head we can extend (RAW mode): leave it as it is
    return b"".join((protocol.RESPONSE_HEAD.pack(payload[0], head_len + len(line)),
                     payload[_RESPONSE_DATA:end - 2], line, b"\r\n", payload[end:]))
_WRITE_AGAIN: Final = (ssl.SSLWantWriteError, BlockingIOError, InterruptedError)


class TlsConnection(Connection):
    """A connection of an HTTPS bind: a ``Connection`` over a non-blocking ``SSLSocket``.

    Every TLS step is a callback of the loop, as the rest; nothing waits on a socket:

    - Handshake: ``handshake()`` runs at the accept (``do_handshake_on_connect``) or at the
      first readable event, and again at each event until it completes. The reader is on
      from the accept (``reading`` stays true until a request arrives), so
      ``SSLWantReadError`` just returns; ``SSLWantWriteError`` (a full send buffer) waits
      for writable (``read_wants_write``). ``header_timeout`` from the accept bounds it. A
      failure (plain HTTP, a refused or missing client certificate, a client gone) closes
      the connection with one debug line.
    - Reads: ``Connection._on_readable``, where ``SSLWantReadError`` (no whole record yet)
      waits like ``BlockingIOError``; one read still takes at most ``chunk_size``. Bytes
      OpenSSL has decrypted but not yet handed out (``pending()``) raise no fd event: they
      are read by a loop callback while reading is on, and when reading turns on again.
      A read that must write first (``SSLWantWriteError``: a TLS 1.3 KeyUpdate to answer
      while the send buffer is full) is retried when the socket is writable.
    - Writes: ``send`` takes a whole buffer or raises (CPython does not set
      ``SSL_MODE_ENABLE_PARTIAL_WRITE``) and its retry must pass the same bytes: a blocked
      buffer stays at the head of ``out`` as it is, and is acknowledged to the worker only
      once sent, as on plain TCP. A write that must read first (``SSLWantReadError``)
      waits for readable on a watcher of its own (``waker``, ``write_wants_read``),
      whatever ``reading`` says.
    - Close: ``_linger`` sends close_notify before the lingering close.
    - A PROXY protocol header is read after the handshake, inside TLS, as gunicorn reads
      it; a proxy that sends it in the clear before its ClientHello is not understood.

    Client-initiated renegotiation is off (``tls_context``), so the cross waits (a read
    waiting for writable, a write for readable) are rare.
    """

    __slots__ = ("tls", "handshaken", "client_dn", "read_wants_write", "write_wants_read",
                 "read_scheduled", "waker")

    def __init__(self, server: FrontServer, sock: ssl.SSLSocket, remote: Any,
                 listener: Listener) -> None:
        self.tls = sock
        self.handshaken = False
        self.client_dn: bytes | None = None  # the verified client certificate's subject
        self.read_wants_write = False
        self.write_wants_read = False
        self.read_scheduled = False
        self.waker: Any = None
        super().__init__(server, sock, remote, listener)
        self.head_started = self.last_active  # header_timeout bounds the handshake

    def check(self) -> None:
        super().check()
        if self.phase == CLOSED:
            return
        if not self.handshaken:
            assert self.phase == OPEN and self.reading, "a handshake that cannot read"
            assert self.current is None and not self.out
        if self.write_wants_read:
            assert self.waker is not None and self.waker.active

    def handshake(self) -> bool:
        """Take the TLS handshake one step further; True once it is complete."""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return False  # the reader is on
        except ssl.SSLWantWriteError:
            self._read_waits_for_writable()
            return False
        except OSError as exc:  # ssl.SSLError included: no traceback, nothing to answer
            log.debug("TLS handshake with %s failed: %s", self.remote_addr.decode("latin-1"),
                      _ssl_reason(exc))
            self.close()
            return False
        self.handshaken = True
        if self.tls.context.verify_mode != ssl.CERT_NONE:
            cert = self.tls.getpeercert()  # only a verified certificate gets this far
            if cert:
                self.client_dn = client_dn(cert)
        # from here on the connection is timed as a plain one: keepalive until the first
        # byte of a request, then header_timeout for its head
        self.head_started = 0.0
        self.last_active = self.server.loop.now()
        return True

    def check_timeouts(self, now: float, cfg: Any) -> None:
        if self.handshaken:
            super().check_timeouts(now, cfg)
        elif now - self.head_started > cfg.header_timeout:
            log.debug("TLS handshake with %s took too long", self.remote_addr.decode("latin-1"))
            self.close()

    def on_request(self, head: RequestHead) -> None:
        if self.client_dn is not None:
            # a pseudo field no client can send (see handler/environ.py): the worker maps
            # it to SSL_CLIENT_S_DN
            head.headers += (_CLIENT_DN_FIELD, self.client_dn)
        super().on_request(head)

    # -- reading ----------------------------------------------------------------------------

    def _set_reading(self, on: bool) -> None:
        if on and not self.reading:
            super()._set_reading(True)
            if self.read_wants_write or self.tls.pending():
                self._schedule_read()  # no fd event announces what OpenSSL holds
        else:
            super()._set_reading(on)

    def _on_readable(self) -> None:
        self.read_wants_write = False  # this read retries what waited, or waits again
        if not self.handshaken and not self.handshake():
            return
        super()._on_readable()
        if self.reading and self.tls.pending():
            self._schedule_read()

    def _schedule_read(self) -> None:
        if not self.read_scheduled:
            self.read_scheduled = True
            self.server.loop.run_callback(self._on_scheduled_read)

    def _on_scheduled_read(self) -> None:
        self.read_scheduled = False
        if self.reading:  # flow control may have turned it off since; close does
            self._on_readable()

    def _read_failed(self, exc: OSError) -> None:
        if isinstance(exc, ssl.SSLWantWriteError):
            self._read_waits_for_writable()
        else:
            super()._read_failed(exc)

    def _read_waits_for_writable(self) -> None:
        self.read_wants_write = True
        self._start_writer()

    # -- writing ----------------------------------------------------------------------------

    def _start_writer(self) -> None:
        if self.writer is None:
            self.writer = self.server.loop.io(self.fd, _WRITE)
        if not self.writer.active:
            self.writer.start(self._on_writable)

    def _write_waits_for_readable(self) -> None:
        self.write_wants_read = True
        if self.waker is None:
            self.waker = self.server.loop.io(self.fd, _READ)
        if not self.waker.active:
            self.waker.start(self._on_waker)

    def _on_waker(self) -> None:
        self.waker.stop()
        self.write_wants_read = False
        self._on_writable()

    def _write(self, data: bytes | memoryview, credit: HttpExchange | None = None) -> None:
        if self.phase >= LINGERING:
            return
        metrics = self.server.metrics
        if metrics is not None:
            metrics.sent += len(data)
        if not self.out:
            try:
                sent = self.tls.send(data)
            except _WRITE_AGAIN:
                self._start_writer()
            except ssl.SSLWantReadError:
                self._write_waits_for_readable()
            except OSError:
                self.close()
                return
            else:
                if sent == len(data):
                    if credit is not None:
                        self.server.dispatcher.grant(credit, 1)
                    return
                data = memoryview(data)[sent:]  # a build with partial writes
                self._start_writer()
            self.write_stalled = self.server.loop.now()
        self.out.append((memoryview(data), credit))

    def _on_writable(self) -> None:
        if self.read_wants_write and self.reading:
            self._on_readable()
            if self.phase == CLOSED:
                return
        out = self.out
        if out and not self.write_wants_read:
            tls = self.tls
            dispatcher = self.server.dispatcher
            while out:
                data, credit = out[0]
                try:
                    sent = tls.send(data)
                except _WRITE_AGAIN:
                    self._start_writer()  # called by the waker, it may be off
                    return
                except ssl.SSLWantReadError:
                    self._write_waits_for_readable()
                    break
                except OSError:
                    self.close()
                    return
                self.write_stalled = self.server.loop.now()
                if sent < len(data):
                    out[0] = (data[sent:], credit)
                    self._start_writer()
                    return
                out.popleft()
                if credit is not None:
                    dispatcher.grant(credit, 1)
        if self.writer is not None and not (self.read_wants_write and self.reading):
            self.writer.stop()  # nothing to write, or it waits for readable
        if not out:
            self.write_stalled = 0.0
            if self.phase == CLOSING and self.current is None:
                self._linger()

    # -- closing ----------------------------------------------------------------------------

    def _linger(self) -> None:
        """Send close_notify, then linger as a plain connection does.

        A bare ``shutdown(SHUT_WR)`` would end the TCP stream without close_notify: to the
        client a truncation, which a close-delimited body cannot tell from its end. On this
        non-blocking socket ``unwrap()`` never blocks: its first ``SSL_shutdown`` writes
        close_notify, its second looks for the client's and raises ``SSLWantReadError``,
        which is not waited for (RFC 8446 section 6.1: the initiator of the close need not
        wait for the answering close_notify). An alert that cannot be written yet
        (``SSLWantWriteError``) is retried when the socket is writable, bounded by
        ``request_timeout`` as any stalled write. Any other error there (say, pipelined
        records already in) changes nothing: the answer is in the kernel.
        ``Connection._linger`` then shuts TCP for writing (``SSLSocket.shutdown`` drops the
        TLS state, so what the client still sends is read raw and thrown away, never
        decrypted) and drains: the client gets the answer, close_notify, then the end of
        the stream, and no reset.
        """
        try:
            self.tls.unwrap()
        except ssl.SSLWantWriteError:
            if not self.write_stalled:
                self.write_stalled = self.server.loop.now()
            self._start_writer()
            return
        except (OSError, ValueError):
            pass
        super()._linger()

    def close(self) -> None:
        if self.waker is not None:
            self.waker.stop()
        super().close()


#: RFC 4514 section 3: the attribute types with a short name; others keep OpenSSL's name.
_DN_NAMES: Final = {
    "commonName": "CN", "localityName": "L", "stateOrProvinceName": "ST",
    "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
    "streetAddress": "STREET", "domainComponent": "DC", "userId": "UID",
}
_DN_SPECIAL: Final = frozenset('"+,;<>\\')


def client_dn(cert: dict[str, Any]) -> bytes | None:
    """The subject of a peer certificate (``SSLSocket.getpeercert()``) as an RFC 4514 string,
    the most specific RDN first (``CN=client,O=test``); None if it has none. ASCII, no NUL:
    fit for the REQUEST record's NUL-joined strings."""
    subject = cert.get("subject")
    if not subject:
        return None
    return ",".join("+".join(f"{_DN_NAMES.get(name, name)}={_dn_value(value)}"
                             for name, value in rdn)
                    for rdn in reversed(subject)).encode("ascii")


def _dn_value(value: str) -> str:
    """RFC 4514 section 2.4: escape ``"+,;<>\\``, a leading ``#`` or space and a trailing
    space with a backslash; and (as it allows) every character outside printable ASCII as
    ``\\XX`` per byte of its UTF-8."""
    out = []
    last = len(value) - 1
    for i, char in enumerate(value):
        if char in _DN_SPECIAL or (i == 0 and char in "# ") or (i == last and char == " "):
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.extend(f"\\{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def tls_binds(cfg: Any) -> list[bool]:
    """Which of ``cfg.bind`` serve HTTPS, in order: those written ``https://``; if none is,
    every bind when ``certfile`` is set (gunicorn's rule), else none."""
    explicit = [bind_scheme(address) == "https" for address in cfg.bind]
    if any(explicit):
        return explicit
    return [bool(cfg.certfile)] * len(cfg.bind)


_TLS_VERSIONS: Final = {"tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}


def tls_context(cfg: Any, binds: list[bool]) -> ssl.SSLContext | None:
    """The one server context of the front's HTTPS binds (``binds`` as ``tls_binds`` gives
    them), or None if there is none. Raises ``ConfigError``, one line that names the bind or
    the file, for settings it cannot serve with.

    HTTP/1.1 only: ALPN offers ``http/1.1`` and nothing else (no HTTP/2).
    """
    if not any(binds):
        return None
    # which settings must go together is Config.check's (it runs before anything starts)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cfg.certfile, cfg.keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"Cannot load the certificate {cfg.certfile} with the key "
                          f"{cfg.keyfile}: {_ssl_reason(exc)}") from None
    context.minimum_version = _TLS_VERSIONS[cfg.ssl_min_version.lower()]
    if cfg.ciphers:
        try:
            context.set_ciphers(cfg.ciphers)
        except ssl.SSLError:
            raise ConfigError(f"ciphers {cfg.ciphers!r}: OpenSSL finds no cipher in it") \
                from None
    context.verify_mode = ssl.VerifyMode(cfg.cert_reqs)
    if cfg.ca_certs:
        try:
            context.load_verify_locations(cfg.ca_certs)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"Cannot load the CA certificates {cfg.ca_certs}: "
                              f"{_ssl_reason(exc)}") from None
    context.set_alpn_protocols(["http/1.1"])
    # Client-initiated renegotiation (TLS 1.2) makes the front run handshakes on demand,
    # and is where a write must wait for a read; HTTP/1.1 has no use for it.
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


def _ssl_reason(exc: OSError) -> str:
    """What went wrong, without the ``(_ssl.c:1234)`` of the C source."""
    text = exc.strerror or str(exc)
    return text.rsplit(" (_ssl.c:", 1)[0]


class Listener:
    """A listening TCP socket and what the environ needs to know of it; with ``tls``, an
    HTTPS bind whose connections are ``TlsConnection``."""

    def __init__(self, server: FrontServer, sock: socket.socket,
                 tls: ssl.SSLContext | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.server = server
        self.tls = tls
        bound = sock.getsockname()
        self.host: str = bound[0]
        self.port: int = bound[1]
        self.server_name = self.host.encode("latin-1")
        scheme = "http" if tls is None else "https"
        self.scheme = scheme.encode("latin-1")
        self.url = (f"{scheme}://[{self.host}]:{self.port}" if sock.family == socket.AF_INET6
                    else f"{scheme}://{self.host}:{self.port}")
        self.watcher = server.loop.io(sock.fileno(), _READ)

    def start(self) -> None:
        """Accept connections (again, after ``pause``)."""
        self.watcher.start(self._on_acceptable)

    def pause(self) -> None:
        """Accept nothing for now: new connections wait in the kernel's backlog."""
        self.watcher.stop()

    def stop(self) -> None:
        self.watcher.stop()
        self.sock.close()

    def _on_acceptable(self) -> None:
        server = self.server
        for _ in range(_ACCEPT_BATCH):
            if len(server.connections) >= server.max_connections:
                server.pause_accepting("max_connections")
                return
            try:
                sock, remote = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    server.pause_accepting(str(exc))  # until a connection closes
                    return
                if exc.errno == errno.EBADF:
                    return
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is None:
                server.connections.add(Connection(server, sock, remote, self))
            else:
                self._accept_tls(sock, remote)

    def _accept_tls(self, sock: socket.socket, remote: Any) -> None:
        """Wrap an accepted socket for TLS (no handshake yet: it runs on the loop)."""
        assert self.tls is not None
        server = self.server
        try:
            tls = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:  # the client is gone already
            log.debug("TLS connection from %s lost before its handshake: %s",
                      remote[0] if isinstance(remote, tuple) else remote, _ssl_reason(exc))
            sock.close()
            return
        conn = TlsConnection(server, tls, remote, self)
        server.connections.add(conn)  # before a handshake that may fail and close it
        if server.cfg.do_handshake_on_connect:
            conn.handshake()


class FrontServer:
    """The front process: listeners, connections, the dispatcher, and its lifecycle."""

    def __init__(self, cfg: Any, sockets: list[socket.socket] | None = None,
                 control: tuple[socket.socket, socket.socket | None] | None = None) -> None:
        self.cfg = cfg
        self.loop = gevent.get_hub().loop
        self.limits = Limits(cfg.limit_request_line, cfg.limit_request_fields,
                             cfg.limit_request_field_size, cfg.limit_request_body)
        self.chunk_size: int = cfg.chunk_size
        self.copies = PieceCopies()  # buffers for the copies of early pieces
        self.window: int = cfg.window
        self.connections: set[Connection] = set()
        # the sockets a supervisor bound are in the order of cfg.bind: paired by index
        secure = tls_binds(cfg)
        self.tls = tls_context(cfg, secure)  # a ConfigError before any port is bound
        if sockets is None:
            sockets = [listen(host, port, cfg.backlog) for host, port in bind_addresses(cfg)]
        self.listeners = [
            Listener(self, sock, self.tls if i < len(secure) and secure[i] else None)
            for i, sock in enumerate(sockets)]
        self.max_connections: int = cfg.max_connections
        self.accept_paused = False
        _raise_file_limit(self.max_connections)
        self.dispatcher = Dispatcher(cfg, self.loop)
        from wsgi_zmq.front.routes import Router

        router = Router(cfg)
        self.router: Router | None = router if router.needed else None
        self.metrics: Any = None  # FrontMetrics, with metrics_bind or control_socket
        self.exporter: Any = None
        self.statsd: Any = None  # the StatsdClient, with statsd_host
        if cfg.metrics_bind or cfg.control_socket or cfg.statsd_host:
            from wsgi_zmq.front.metrics import FrontMetrics

            self.metrics = self.dispatcher.metrics = FrontMetrics()
        if cfg.statsd_host:
            from wsgi_zmq.front.statsd import StatsdClient

            self.statsd = self.metrics.statsd = StatsdClient(cfg, self, self.metrics)
        if cfg.metrics_bind:
            from wsgi_zmq.front.metrics import MetricsServer

            host, port = parse_bind(cfg.metrics_bind)
            self.exporter = MetricsServer(cfg, self, self.metrics,
                                          listen(host, port, cfg.backlog))
        self.jobs: Any = None  # the JobEndpoint, with job_bind
        if cfg.job_bind:
            from wsgi_zmq.front.jobs import JobEndpoint

            self.jobs = JobEndpoint(cfg, self.dispatcher, self.loop)
        tick = min(1.0, cfg.keepalive / 2, cfg.request_timeout / 4, cfg.header_timeout / 4,
                   cfg.body_timeout / 4, LINGER_SECONDS / 2)
        self._timer = self.loop.timer(tick, tick)
        self.stopped = gevent.event.Event()
        self.draining = False
        self._checker: Any = None
        if os.environ.get("WSGI_ZMQ_CHECK"):
            # a debugging front: every invariant, after every loop iteration
            self._checker = self.loop.check()
            self._checker.start(self.check)
        self.log = log  # for hooks written for gunicorn: server.log.info(...)
        self.pid = os.getpid()
        access = AccessLog(cfg, "front")
        self.access = access if access.enabled else None
        self.allowed: list[str] = cfg.forwarded_allow_ips
        self.trusted: dict[bytes, bool] = {}
        self.secure_headers = {name.lower().encode("latin-1"): value.encode("latin-1")
                               for name, value in cfg.secure_scheme_headers.items()}
        self.health_path: bytes | None = (cfg.health_path.encode("ascii")
                                          if cfg.health_path else None)
        # the control socket: bound here (standalone), or by the supervisor, which passes
        # it and the front's end of a socketpair to itself (all-in-one)
        self.control: Any = None
        self.control_path: str | None = None  # the file to remove at the end (ours)
        if cfg.control_socket:
            from wsgi_zmq.control import listen as control_listen
            from wsgi_zmq.front.control import FrontControl

            if control is None:
                control = (control_listen(cfg.control_socket), None)
                self.control_path = cfg.control_socket
            self.control = FrontControl(self, *control)

    def health(self) -> tuple[int, str]:
        """(status, reason) of the ``health_path`` answer."""
        if self.draining:
            return 503, "draining: the front is stopping"
        if not self.dispatcher.serves_http():
            if any(not lane.job and lane.members for lane in self.dispatcher.lanes.values()):
                return 503, "no HTTP worker takes work: each is drained, ejected or leaving"
            return 503, "no HTTP worker is connected"
        return 200, "ok"

    def expects_proxy(self, address: bytes) -> bool:
        """Must a connection from ``address`` start with a PROXY protocol header?"""
        if self.cfg.proxy_protocol == "off":
            return False
        return addr_allowed(address.decode("latin-1"), self.cfg.proxy_allow_ips)

    def trusts(self, address: bytes) -> bool:
        """Is a peer at ``address`` in ``forwarded_allow_ips``? (cached per address)"""
        trusted = self.trusted.get(address)
        if trusted is None:
            if len(self.trusted) > 4096:
                self.trusted.clear()
            trusted = self.trusted[address] = addr_allowed(address.decode("latin-1"),
                                                           self.allowed)
        return trusted

    def scheme_of(self, headers: list[bytes], scheme: bytes) -> bytes:
        """``https`` if a trusted proxy set one of ``secure_scheme_headers`` to its value."""
        secure = self.secure_headers
        for i in range(0, len(headers), 2):
            expected = secure.get(headers[i].lower())
            if expected is not None and headers[i + 1] == expected:
                return b"https"
        return scheme

    def log_access(self, conn: Connection, head: RequestHead | None, error: HTTPError,
                   answer: bytes) -> None:
        """An access line for a request the front answered itself."""
        if self.access is None:
            return
        environ = {"REMOTE_ADDR": conn.remote_addr.decode("latin-1")}
        if head is not None:
            environ["REQUEST_METHOD"] = head.method.decode("latin-1")
            environ["RAW_URI"] = head.target.decode("latin-1")
            environ["SERVER_PROTOCOL"] = head.version.decode("latin-1")
            for i in range(0, len(head.headers), 2):
                name = head.headers[i].decode("latin-1").upper().replace("-", "_")
                environ.setdefault("HTTP_" + name, head.headers[i + 1].decode("latin-1"))
        body = len(answer) - answer.index(b"\r\n\r\n") - 4
        self.access.write(environ, f"{error.status} {error.reason}",
                          [("Content-Type", "text/plain; charset=utf-8")], body, time.time(),
                          0.0)

    def start(self) -> None:
        for listener in self.listeners:
            listener.start()
        self._timer.start(self._on_tick)
        if self.listeners:
            log.info("Listening at: %s (%d)", ",".join(lst.url for lst in self.listeners),
                     os.getpid())
        if self.jobs is not None:
            log.info("Jobs at: %s (%d)", ",".join(self.jobs.endpoints), os.getpid())
        if self.exporter is not None:
            self.exporter.start()
            log.info("Metrics at: %s/metrics (%d)", self.exporter.url, os.getpid())
        if self.statsd is not None:
            self.statsd.start()
        if self.control is not None:
            self.control.start()
            log.info("Control socket at: %s (%d)", self.cfg.control_socket, os.getpid())
        log.info("Backend at: %s", ",".join(self.dispatcher.endpoints))

    def check(self) -> None:
        """Assert the invariants of the dispatcher, of the early pieces' buffers and of
        every connection."""
        self.dispatcher.check()
        self.copies.check()
        for conn in list(self.connections):
            conn.check()
        assert len(self.connections) <= self.max_connections

    def pause_accepting(self, why: str) -> None:
        if self.accept_paused or self.draining:
            return
        self.accept_paused = True
        for listener in self.listeners:
            listener.pause()
        log.warning("Not accepting new connections for now (%s); %d open", why,
                    len(self.connections))

    def resume_accepting(self) -> None:
        if not self.accept_paused or self.draining:
            return
        self.accept_paused = False
        for listener in self.listeners:
            listener.start()
        log.info("Accepting connections again; %d open", len(self.connections))

    def connection_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if self.accept_paused and len(self.connections) < self.max_connections:
            self.resume_accepting()

    def _on_tick(self) -> None:
        now = self.loop.now()
        cfg = self.cfg
        for conn in list(self.connections):
            conn.check_timeouts(now, cfg)
        if self.accept_paused and len(self.connections) < self.max_connections:
            self.resume_accepting()  # paused by EMFILE: the descriptors may be back
        if self.draining and not any(c.current for c in self.connections):
            self.stopped.set()

    def drain(self) -> None:
        """Stop accepting; finish the requests in progress (``TERM``)."""
        if self.draining:
            return
        self.draining = True
        log.info("Draining: %d connection(s) open", len(self.connections))
        for listener in self.listeners:
            listener.stop()
        for conn in list(self.connections):
            if conn.current is None:
                conn.close()
            else:
                conn.end_after_current()
        if not self.connections:
            self.stopped.set()

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        self._timer.stop()
        if self._checker is not None:
            self._checker.stop()
        for conn in list(self.connections):
            conn.close()
        for listener in self.listeners:
            if not self.draining:
                listener.stop()
        self.dispatcher.flush()
        if self.exporter is not None:
            self.exporter.stop()
        if self.statsd is not None:
            self.statsd.close()  # a last flush
        if self.control is not None:
            self.control.stop()
            if self.control_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.control_path)
        if self.jobs is not None:
            self.jobs.close()
        self.dispatcher.close()


def _raise_file_limit(connections: int) -> None:
    """Raise the soft open-file limit to fit ``connections`` clients, where the hard limit
    allows; say so when it does not."""
    need = connections + 128  # listeners, zmq sockets and their pipes, log files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
        if soft < need:
            log.warning("max_connections %d needs %d open files; the limit is %d",
                        connections, need, soft)


def serve(cfg: Any, listeners: list[socket.socket] | None = None,
          report_fd: int | None = None,
          control: tuple[socket.socket, socket.socket | None] | None = None) -> int:
    """Run a front until ``TERM`` (drain within ``graceful_timeout``) or ``INT``/``QUIT``.

    ``listeners`` are sockets already bound by a supervisor; ``report_fd`` receives one JSON
    line with the backend endpoints really bound; ``control`` the control socket and the
    link to the supervisor (all-in-one). Returns the exit status.
    """
    standalone = listeners is None  # else the master runs the hooks and owns the pidfile
    if standalone:
        _call_hook(cfg, "on_starting", SimpleNamespace(cfg=cfg, log=log, pid=os.getpid()))
    try:
        server = FrontServer(cfg, listeners, control)
        pidfile = Pidfile(cfg.pidfile) if standalone and cfg.pidfile else None
        if pidfile is not None:
            pidfile.create(os.getpid())
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except zmq.ZMQError as exc:
        what = "backend or job endpoint" if cfg.job_bind else "backend"
        log.error("Cannot bind the %s %s: %s", what, ",".join([*cfg.backend, *cfg.job_bind]),
                  exc)
        return EXIT_CONFIG
    try:
        set_owner(cfg)  # after binding: ports below 1024 need the privilege, serving not
    except OSError as exc:
        log.error("Cannot switch to user %s / group %s: %s", cfg.user, cfg.group, exc)
        return EXIT_CONFIG
    server.start()
    if standalone:
        _call_hook(cfg, "when_ready", server)
    if report_fd is not None:
        os.write(report_fd, json.dumps({"backend": server.dispatcher.endpoints}).encode()
                 + b"\n")
        os.close(report_fd)

    def on_term() -> None:
        server.drain()
        gevent.spawn_later(cfg.graceful_timeout, server.stop)

    if listeners is not None:
        # started by a supervisor: if it dies (kill -9), do not outlive it holding the ports
        parent = os.getppid()

        def watch_parent() -> None:
            if os.getppid() != parent:
                log.warning("The supervisor %d is gone; the front stops", parent)
                server.stop()

        watcher = server.loop.timer(1.0, 1.0)
        watcher.start(watch_parent)

    gevent.signal_handler(signal.SIGTERM, on_term)
    gevent.signal_handler(signal.SIGINT, server.stop)
    gevent.signal_handler(signal.SIGQUIT, server.stop)
    gevent.signal_handler(signal.SIGUSR1, reopen_logs, cfg)
    gevent.signal_handler(signal.SIGHUP, server.dispatcher.reload_keys)
    try:
        server.stopped.wait()
    finally:
        server.close()
        log.info("Front stopped (%d)", os.getpid())
        if standalone:
            _call_hook(cfg, "on_exit", server)
            if pidfile is not None:
                pidfile.unlink(os.getpid())
    return EXIT_OK


def _call_hook(cfg: Any, name: str, *args: Any) -> None:
    try:
        getattr(cfg, name)(*args)
    except Exception:
        log.exception("Exception in the %s hook", name)
