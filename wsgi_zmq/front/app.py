"""``FrontApp``: the front as a WSGI application, for any gevent WSGI server.

The split the original Perl adaptor had between its App half (mounted in a web server) and
its Handler half (the workers): mount ``FrontApp`` in ``gevent.pywsgi.WSGIServer`` and every
request is forwarded to the same handler workers ``python -m wsgi_zmq.front`` would use::

    from gevent.pywsgi import WSGIServer
    from wsgi_zmq.front import FrontApp

    app = FrontApp(backend=["tcp://127.0.0.1:5556"])
    WSGIServer(("127.0.0.1", 8000), app).serve_forever()

    # and elsewhere: python -m wsgi_zmq.handler myapp:app

The dispatcher (its ROUTER socket, credit, batching, timeouts, failover) is created on the
first request, in the process and hub that serve it, so a ``FrontApp`` may be built before a
fork. Request bodies are read from ``wsgi.input`` and response bodies yielded to the server
under the same flow control as the native front: memory does not grow with body sizes.

Mounted in ``gevent.pywsgi``, the HTTP parsing is gevent's, not ours: it accepts a request
with both ``Content-Length`` and ``Transfer-Encoding: chunked`` (and answers the request
smuggled in its body), ignores transfer codings other than ``chunked`` and accepts
``Content-Length: +1``; and it does not set ``TCP_NODELAY`` (a keep-alive response then
waits for the client's delayed ACK). Expose it only behind a proxy that normalises requests,
or use ``python -m wsgi_zmq.front``, whose parser refuses all of these.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

import gevent.event
import gevent.queue

from wsgi_zmq import protocol
from wsgi_zmq.config import Config
from wsgi_zmq.errors import HTTPError
from wsgi_zmq.front.dispatcher import Dispatcher, Exchange
from wsgi_zmq.front.parser import request_is_idempotent
from wsgi_zmq.protocol import (
    END_ABORT,
    REQ_BODY_COMPLETE,
    REQ_CHUNKED,
    REQ_EXPECT,
    REQ_RAW,
    REQ_REPLAYABLE,
    RESP_END,
)

log = logging.getLogger("wsgi_zmq.error.front")

# the server in front of us handles these itself
_SKIPPED_HEADERS = {"HTTP_EXPECT", "HTTP_TRANSFER_ENCODING", "HTTP_CONNECTION",
                    "HTTP_KEEP_ALIVE"}


class _Waiter:
    """The dispatcher's sink for one request: records become queue items for the greenlet
    that serves the request; body credit wakes the body pump."""

    __slots__ = ("items", "credit")

    def __init__(self) -> None:
        self.items: gevent.queue.Queue[tuple[Any, ...]] = gevent.queue.Queue()
        self.credit = gevent.event.Event()

    def on_response(self, ex: Exchange, flags: int, payload: bytes) -> None:
        self.items.put(("response", flags, payload))

    def on_chunk(self, ex: Exchange, data: bytes) -> None:
        self.items.put(("chunk", data))

    def on_end(self, ex: Exchange, flags: int, tail: bytes) -> None:
        self.items.put(("end", flags, tail))

    def on_failure(self, ex: Exchange, error: HTTPError) -> None:
        self.items.put(("failure", error))

    def on_body_credit(self, ex: Exchange, count: int) -> None:
        self.credit.set()


class FrontApp:
    """Forward every request to the handler workers connected to ``backend``.

    Keyword arguments are front settings (``request_timeout``, ``queue_size``, ``window``,
    ``chunk_size``, ``heartbeat``; see ``docs/settings.md``). ``cfg`` may be a whole
    ``Config("front")`` instead.
    """

    def __init__(self, backend: list[str] | tuple[str, ...] = ("tcp://127.0.0.1:5556",),
                 cfg: Config | None = None, **settings: Any) -> None:
        if cfg is None:
            cfg = Config("front")
            cfg.set("backend", list(backend))
            for name, value in settings.items():
                cfg.set(name, value)
        self.cfg = cfg
        self.dispatcher: Dispatcher | None = None

    @property
    def endpoints(self) -> list[str]:
        """The backend endpoints really bound (binds them now if not yet)."""
        return self._dispatcher().endpoints

    def _dispatcher(self) -> Dispatcher:
        if self.dispatcher is None:
            self.dispatcher = Dispatcher(self.cfg)
            log.info("Backend at: %s", ",".join(self.dispatcher.endpoints))
        return self.dispatcher

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()
            self.dispatcher = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        dispatcher = self._dispatcher()
        waiter = _Waiter()
        ex = Exchange(dispatcher.new_rid(), waiter)
        chunk_size: int = self.cfg.chunk_size
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH")
        chunked = environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"
        flags = REQ_RAW
        body = b""
        if length and length.isdigit() and int(length) <= chunk_size and not chunked:
            body = stream.read(int(length))
            flags |= REQ_BODY_COMPLETE
        elif not length and not chunked:
            flags |= REQ_BODY_COMPLETE
        else:
            body = stream.read(chunk_size) if not chunked else _read_some(stream, chunk_size)
            if chunked:
                flags |= REQ_CHUNKED
            if not body or (length and len(body) >= int(length)):
                flags |= REQ_BODY_COMPLETE
        ex.body_complete = bool(flags & REQ_BODY_COMPLETE)
        if not ex.body_complete:
            flags |= REQ_EXPECT  # the worker asks for the rest once the app reads
        method = environ["REQUEST_METHOD"]
        ex.replayable = ex.body_complete and request_is_idempotent(method.encode("latin-1"))
        if ex.replayable:
            flags |= REQ_REPLAYABLE
        ex.record = protocol.encode_request(
            ex.rid, flags, method.encode("latin-1"), _target(environ),
            environ.get("SERVER_PROTOCOL", "HTTP/1.1").encode("latin-1"),
            environ.get("REMOTE_ADDR", "").encode("latin-1"),
            int(environ.get("REMOTE_PORT") or 0),
            environ.get("SERVER_NAME", "").encode("latin-1"),
            int(environ.get("SERVER_PORT") or 0),
            environ.get("wsgi.url_scheme", "http").encode("latin-1"),
            _headers(environ), self.cfg.window, body)
        dispatcher.submit(ex)
        pump = None
        if not ex.body_complete and not ex.done:
            pump = gevent.spawn(_pump_body, dispatcher, ex, waiter, stream, chunk_size)
        try:
            item = waiter.items.get()
        except BaseException:
            dispatcher.cancel(ex)
            raise
        if item[0] == "failure":
            if pump is not None:
                pump.kill(block=False)
            error: HTTPError = item[1]
            start_response(f"{error.status} {error.reason}",
                           [("Content-Type", "text/plain; charset=utf-8"),
                            *error.headers])
            return iter([(error.detail + "\n").encode("utf-8")])
        _, resp_flags, payload = item
        response = protocol.decode_response(payload)
        status, headers = _parse_head(response.head)
        start_response(status, headers)
        return _Body(dispatcher, ex, waiter, response.body, bool(resp_flags & RESP_END), pump)


class _Body:
    """The response body as the server iterates it; each chunk consumed returns credit."""

    def __init__(self, dispatcher: Dispatcher, ex: Exchange, waiter: _Waiter, first: bytes,
                 done: bool, pump: Any) -> None:
        self.dispatcher = dispatcher
        self.ex = ex
        self.waiter = waiter
        self.first = first
        self.done = done
        self.pump = pump

    def __iter__(self) -> Iterator[bytes]:
        if self.first:
            yield self.first
        while not self.done:
            item = self.waiter.items.get()
            kind = item[0]
            if kind == "chunk":
                yield item[1]
                self.dispatcher.grant(self.ex, 1)
            elif kind == "end":
                self.done = True
                if item[1] & END_ABORT:
                    raise ConnectionAbortedError("the worker aborted the response")
                if item[2]:
                    yield item[2]
            else:
                self.done = True
                raise ConnectionAbortedError(f"the response failed: {item[1].detail}")

    def close(self) -> None:
        if not self.done:
            self.dispatcher.cancel(self.ex)
        if self.pump is not None:
            self.pump.kill(block=False)


def _pump_body(dispatcher: Dispatcher, ex: Exchange, waiter: _Waiter, stream: Any,
               chunk_size: int) -> None:
    """Send the rest of the request body under the worker's credit."""
    while not ex.done:
        while ex.body_credit <= 0:
            waiter.credit.clear()
            if ex.done:
                return
            waiter.credit.wait()
        data = _read_some(stream, chunk_size)
        if not data:
            dispatcher.end_body(ex)
            return
        dispatcher.send_body(ex, data)


def _read_some(stream: Any, size: int) -> bytes:
    data: bytes = stream.read(size)
    return data


def _target(environ: dict[str, Any]) -> bytes:
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return str(raw).encode("latin-1")
    path = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
                 safe="/:@!$&'()*+,;=~", encoding="latin-1")
    query = environ.get("QUERY_STRING")
    return (path + "?" + query if query else path).encode("latin-1")


def _headers(environ: dict[str, Any]) -> list[bytes]:
    flat: list[bytes] = []
    for key, value in environ.items():
        if key.startswith("HTTP_") and key not in _SKIPPED_HEADERS:
            name = key[5:].replace("_", "-").title()
        elif key == "CONTENT_TYPE" and value:
            name = "Content-Type"
        elif key == "CONTENT_LENGTH" and value:
            name = "Content-Length"
        else:
            continue
        flat.append(name.encode("latin-1"))
        flat.append(str(value).encode("latin-1"))
    return flat


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 1)[1]
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    return status, headers
