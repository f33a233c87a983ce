"""The WSGI layer of a worker: one REQUEST record through a PEP 3333 app.

``WsgiLayer`` is the layer (``wsgi_zmq.handler.worker.Layer``) of a worker that hosts a
WSGI app: for each request it builds the environ (``handler/environ.py``), runs the
``pre_request``/``post_request`` hooks, calls ``serve_request`` between the worker's
``enter_app`` and ``leave_app``, and writes the access line. ``HttpRequest`` is its
exchange: the ``channel`` through which ``serve_request`` moves records.

``serve_request(app, environ, req, channel, chunk_size, server_header)`` is the whole PEP
3333 server side of one request. The channel moves records (the sync runner blocks on its
sockets, the gevent runner on greenlet events):

    channel.respond(flags, head, body, final)   one RESPONSE record
    channel.send_chunk(data) -> bool            one CHUNK under credit; False if cancelled
    channel.end(flags, tail)                    the final END record
    channel.cancelled                           the front gave up on the request
    channel.read_body(lend) -> bytes | view     the next piece of request body, b"" at end
    channel.taken(view)                         a lent piece is copied: credit may follow

What the client gets:

- The worker writes the HTTP head. A response whose length is known (the app set
  ``Content-Length``, or returned a list or tuple) is sent with ``Content-Length`` and, when
  it fits in one chunk, as one record; otherwise HTTP/1.1 gets ``Transfer-Encoding:
  chunked`` and HTTP/1.0 a close-delimited body. Each block the app yields is sent before
  the next is asked for (PEP 3333: no block is delayed), in chunks of ``chunk_size`` at
  most, under the front's credit.
- HEAD, 1xx, 204 and 304 get no body. A HEAD answer is framed only by what the app said
  (RFC 9110 section 9.3.2): its own ``Content-Length``, or the length of the list or tuple
  it returned if that is not empty; never ``Transfer-Encoding``, and no ``Content-Length``
  made up from the empty body a HEAD response has (werkzeug returns ``()`` for HEAD).
  Hop-by-hop headers set by the app are dropped (PEP 3333 forbids them) except
  ``Connection: close``, which is honoured.
- An exception before the head is sent gives 500 and the worker serves on. After it, the
  response is aborted: the front cuts the connection so the client sees a truncated
  response, never a complete wrong one. The traceback is logged either way.
- More bytes than the declared ``Content-Length`` are dropped (and logged); fewer close the
  connection after the response.
- The app iterator's ``close()`` is always called.
- Every head the worker renders (the 500 of a failed app too) carries ``Server:
  <server_header>`` unless the setting is empty or the app set its own ``Server`` (which
  is sent as it is, alone). Not in raw mode: the gateway adds its own.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from email.utils import formatdate
from typing import Any, Final

from wsgi_zmq import __version__, protocol
from wsgi_zmq.errors import AppImportError, ClientDisconnected, ProtocolError, server_line
from wsgi_zmq.handler.environ import build_environ
from wsgi_zmq.handler.worker import Request, Worker
from wsgi_zmq.protocol import (
    CHUNK,
    END_ABORT,
    END_CLOSE,
    REQ_BODY_COMPLETE,
    REQ_CHUNKED,
    REQ_CLOSE_IF_UNREAD,
    REQ_EXPECT,
    REQ_KEEP_ALIVE,
    REQ_RAW,
    REQ_REPLAYABLE,
    REQUEST,
    RESP_CLOSE,
    RESP_END,
)

log = logging.getLogger("wsgi_zmq.error.worker")

_LENGTH: Final = 1
_DATE: Final = 2
_CONNECTION: Final = 3
_HOP: Final = 4
_SERVER: Final = 5
_RESPONSE_SPECIAL: Final = {
    "content-length": _LENGTH, "date": _DATE, "connection": _CONNECTION, "server": _SERVER,
    "keep-alive": _HOP, "transfer-encoding": _HOP, "upgrade": _HOP, "te": _HOP,
    "trailer": _HOP, "proxy-authenticate": _HOP, "proxy-authorization": _HOP,
}
_CHUNK_END: Final = b"0\r\n\r\n"
_ERROR_BODY: Final = b"Internal Server Error\n"

_date_second = 0
_date_line = ""
_server_setting = ""
_server_line = ""


def server_header_line(setting: str) -> str:
    """``Server: ...\\r\\n`` for the ``server_header`` setting (``""`` for none), rendered
    once per process: the setting does not change while a worker runs."""
    global _server_setting, _server_line
    if setting != _server_setting:
        _server_setting = setting
        _server_line = server_line(setting)
    return _server_line


def date_line() -> str:
    """``Date: ...\\r\\n`` for now, formatted once per second (RFC 9110 section 6.6.1)."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = f"Date: {formatdate(now, usegmt=True)}\r\n"
    return _date_line


class AppError(Exception):
    """The app broke the WSGI contract (bad status, bad header, start_response misuse)."""


class FileWrapper:
    """``wsgi.file_wrapper``: iterate a file-like object in blocks, close it at the end.

    Blocks go through the same credit as any other body, so a large file costs the worker
    ``window`` chunks of memory, not its size.
    """

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        data: bytes = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


#: The most memory one read of ``wsgi.input`` sets aside for what it expects before the
#: bytes come (``_Gathered``): a client's ``Content-Length`` may be a lie, so a request
#: head alone costs no more than this (what one request's ring group holds at the
#: defaults), and a bigger body's result grows from there.
PRESIZE_LIMIT: Final = 2 << 20


class _Gathered:
    """The bytes one read of ``BodyInput`` collects. One piece is kept as it is (a read the
    size of a piece copies nothing); from the second on, each is copied once into a
    ``BytesIO`` and let go, and the result is the ``BytesIO``'s own buffer (``getvalue``
    does not copy it). So the pieces' memory serves again for the next ones and a
    whole-body ``read()`` touches fresh memory for its result only: holding every piece
    and joining them at the end touched twice the body's size of fresh pages and took
    about 20% more time for 100 MiB (``bench/upload.py --baseline``).

    A read that knows how much it will return (``expect``: the body's ``Content-Length``,
    or the size asked for) sets that much aside at its second piece, up to
    ``PRESIZE_LIMIT``, instead of growing the buffer an eighth at a time: one block of the
    result's size, allocated once, which the allocator hands out again for the next body
    of that size without faulting in fresh pages."""

    __slots__ = ("one", "buf", "expect")

    def __init__(self, expect: int = 0) -> None:
        self.one = b""
        self.buf: io.BytesIO | None = None
        self.expect = expect

    def add(self, data: bytes | memoryview) -> None:
        """Take ``data``: bytes may be kept as they are, a view (of a ring slot, lent) is
        copied now."""
        if not data:
            return
        buf = self.buf
        if buf is None:
            if not self.one and (isinstance(data, bytes) or len(data) >= self.expect):
                self.one = bytes(data)  # (bytes of bytes is the same object)
                return
            buf = self.buf = io.BytesIO()
            presize = min(self.expect, PRESIZE_LIMIT)
            if presize > len(self.one) + len(data):
                buf.seek(presize - 1)
                buf.write(b"\0")  # the buffer, its size at once (``value`` cuts it)
                buf.seek(0)
            buf.write(self.one)
            self.one = b""
        buf.write(data)

    def value(self) -> bytes:
        buf = self.buf
        if buf is None:
            return self.one
        buf.truncate()  # what was set aside and not filled (a body shorter than it said)
        return buf.getvalue()


class BodyInput:
    """``wsgi.input`` for a body that streams in from the front under credit.

    Holds at most one chunk beyond what the app asked for, except what a single read asks
    for (``read()`` holds the whole body it returns). Reads return ``b""`` at the end of the
    body (``wsgi.input_terminated`` is true). ``channel.read_body(lend)`` returns the next
    piece, ``b""`` at the end, and may raise ``ClientDisconnected``; it is not called again
    after the end. With ``lend`` true it may return a view of the piece instead (a slot of
    the worker's body ring), which the reader copies and hands back with
    ``channel.taken(view)`` before it calls again.

    Every way of reading costs time linear in what it returns: between calls the buffer is
    the unread tail of the last piece (``rest`` from ``start``), and a call that needs more
    than that gathers pieces in a ``_Gathered``, which copies each one once into a
    ``BytesIO`` as it arrives and lets it go. ``readline`` searches each byte for b"\\n" at
    most once.
    """

    __slots__ = ("channel", "rest", "start", "eof", "coming")

    def __init__(self, channel: Any, length: int = -1) -> None:
        self.channel = channel
        self.rest = b""
        self.start = 0
        self.eof = False
        self.coming = length  # the bytes the channel has yet to give (-1: not known)

    def _gather(self, expect: int = 0) -> _Gathered:
        """A ``_Gathered`` for a read that returns ``expect`` bytes if the body is as long
        as it said (0: not known), holding the unread tail of the last piece, which it
        takes over."""
        gathered = _Gathered(expect)
        rest, start = self.rest, self.start
        if start < len(rest):
            gathered.add(rest[start:] if start else rest)
        self.rest, self.start = b"", 0
        return gathered

    def _next_piece(self, gathered: _Gathered, lend: bool = False) -> Any:
        """The next piece from the channel, ``b""`` at the end of the body; with ``lend``,
        maybe a view the caller copies and gives back (``channel.taken``) at once. If the
        channel raises, what the current call ``gathered`` is buffered again: no byte of
        the body is lost."""
        if self.eof:
            return b""
        try:
            data = self.channel.read_body(lend)
        except BaseException:
            self.rest, self.start = gathered.value(), 0
            raise
        if not data:
            self.eof = True
        elif self.coming >= 0:
            self.coming = max(0, self.coming - len(data))
        return data

    def _collect(self, gathered: _Gathered, last: bytes, cut: int) -> bytes:
        """What was ``gathered`` and the first ``cut`` bytes of ``last``; keep the rest
        buffered."""
        if cut < len(last):
            gathered.add(last[:cut])
            self.rest, self.start = last, cut
        else:
            gathered.add(last)
            self.rest, self.start = b"", 0
        return gathered.value()

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left if ``size`` is None or negative); fewer
        only at the end of the body."""
        limit = -1 if size is None or size < 0 else size
        rest, start = self.rest, self.start
        if 0 <= limit <= len(rest) - start:
            self.start = start + limit
            return rest[start:start + limit]
        have = len(rest) - start
        expect = 0
        if self.coming >= 0:
            expect = have + self.coming if limit < 0 else min(limit, have + self.coming)
        gathered = self._gather(expect)
        while limit < 0 or have < limit:
            # a piece in the channel's ring is lent, not copied out, and copied once
            # straight into the result
            piece = self._next_piece(gathered, lend=True)
            if not piece:
                break
            have += len(piece)
            lent = piece if isinstance(piece, memoryview) else None
            try:
                if 0 <= limit < have:
                    if lent is not None:
                        piece = bytes(lent)  # its tail stays buffered
                    return self._collect(gathered, piece, len(piece) - (have - limit))
                gathered.add(piece)
            finally:
                if lent is not None:
                    self.channel.taken(lent)
        return gathered.value()

    def readline(self, size: int | None = -1) -> bytes:
        """The next line, its b"\\n" included, or at most ``size`` bytes of it; b"" at the
        end of the body."""
        limit = -1 if size is None or size < 0 else size
        rest, start = self.rest, self.start
        end = len(rest) if limit < 0 else min(len(rest), start + limit)
        newline = rest.find(b"\n", start, end)
        if newline >= 0 or end - start == limit:
            cut = newline + 1 if newline >= 0 else end
            self.start = cut
            return rest[start:cut]
        have = len(rest) - start
        gathered = self._gather()
        while True:
            piece = self._next_piece(gathered)
            if not piece:
                return gathered.value()
            wanted = len(piece) if limit < 0 else min(len(piece), limit - have)
            newline = piece.find(b"\n", 0, wanted)
            if newline >= 0:
                return self._collect(gathered, piece, newline + 1)
            if wanted < len(piece) or have + wanted == limit:
                return self._collect(gathered, piece, wanted)
            gathered.add(piece)
            have += len(piece)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """The remaining lines; with ``hint`` > 0, stop once they hold ``hint`` bytes."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> BodyInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class Responder:
    """The response side of one request: ``start_response``, ``write`` and the framing."""

    __slots__ = ("channel", "version", "keep_alive", "is_head", "raw", "chunk_size",
                 "status", "headers", "head_sent", "declared", "sent", "chunked", "close",
                 "no_body", "close_if_unread", "server")

    def __init__(self, channel: Any, version: str, flags: int, is_head: bool,
                 chunk_size: int, server: str = "") -> None:
        self.channel = channel
        self.version = "HTTP/1.0" if version == "HTTP/1.0" else "HTTP/1.1"
        self.keep_alive = bool(flags & REQ_KEEP_ALIVE)
        self.raw = bool(flags & REQ_RAW)
        self.close_if_unread = bool(flags & REQ_CLOSE_IF_UNREAD)
        self.is_head = is_head
        self.chunk_size = chunk_size
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.declared: int | None = None  # the body length the head announces
        self.sent = 0
        self.chunked = False
        self.close = False
        self.no_body = is_head
        self.server = server  # the ``Server: ...\r\n`` line, "" for none

    @property
    def status_code(self) -> int:
        """The status as a number, for hooks (gunicorn's ``resp.status_code``)."""
        return int(self.status[:3]) if self.status else 0

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        if exc_info:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AppError("start_response called a second time without exc_info")
        if not isinstance(status, str) or len(status) < 4 or not status[:3].isdigit() \
                or status[3] != " ":
            raise AppError(f"invalid status {status!r}")
        if not isinstance(headers, list):
            raise AppError("headers must be a list of (name, value) tuples")
        self.status = status
        self.headers = headers
        return self.write

    # -- the head -----------------------------------------------------------------------

    def _head(self, known: int | None) -> bytes:
        """Render the head. ``known`` is the body length if the whole body is at hand."""
        status = self.status
        if status is None:
            raise AppError("the app returned without calling start_response")
        code = int(status[:3])
        if code < 200:
            raise AppError(f"a WSGI app cannot send an informational status ({status})")
        if code in (204, 304):
            self.no_body = True
        lines = [f"{self.version} {status}\r\n"]
        has_date = False
        has_server = False
        app_close = False
        declared = None
        special_of = _RESPONSE_SPECIAL.get
        for name, value in self.headers:
            special = special_of(name.lower())
            if special is not None:
                if special == _LENGTH:
                    try:
                        declared = int(value)
                    except (TypeError, ValueError):
                        raise AppError(f"invalid Content-Length {value!r}") from None
                    if declared < 0:
                        raise AppError(f"invalid Content-Length {value!r}")
                    if code == 204:
                        continue  # RFC 9110 section 8.6: never in a 204
                elif special == _DATE:
                    has_date = True
                elif special == _SERVER:
                    has_server = True
                elif special == _CONNECTION:
                    app_close = "close" in value.lower()
                    continue
                else:
                    continue  # hop-by-hop: the framing is ours
            lines.append(f"{name}: {value}\r\n")
        if self.raw:
            self.declared = declared  # the gateway frames the body itself
        elif self.no_body and not self.is_head:
            self.declared = 0
        elif declared is not None:
            self.declared = declared
        elif known is not None and code != 204:
            self.declared = known
            lines.append(f"Content-Length: {known}\r\n")
        elif self.is_head:
            pass  # unknown length and no body: announce no framing at all
        elif self.version == "HTTP/1.1":
            self.chunked = True
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            self.close = True  # HTTP/1.0: the body ends with the connection
        if not self.raw:
            if app_close or not self.keep_alive:
                self.close = True
            elif self.close_if_unread and not getattr(self.channel, "body_done", True):
                # answered before the app read the whole body, and the front cannot skip
                # the rest: the client must know the connection ends with this response
                self.close = True
            if self.close:
                lines.append("Connection: close\r\n")
            elif self.version == "HTTP/1.0":
                lines.append("Connection: keep-alive\r\n")
            if not has_date:
                lines.append(date_line())
            if self.server and not has_server:
                lines.append(self.server)
        text = "".join(lines) + "\r\n"
        # a CR or LF inside a name or value would start a line of its own: header injection
        if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1:
            raise AppError("a response header contains CR or LF")
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            raise AppError("response headers must be latin-1") from None

    # -- the body -----------------------------------------------------------------------

    def _frame(self, data: bytes) -> bytes:
        if self.chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def _clip(self, data: bytes) -> bytes:
        """Count ``data`` as sent, dropping what exceeds the announced length."""
        declared = self.declared
        if declared is not None and self.sent + len(data) > declared:
            if self.sent < declared:
                log.warning("The app sent more than its Content-Length of %d; dropped the "
                            "rest", declared)
            data = data[:max(0, declared - self.sent)]
        self.sent += len(data)
        return data

    def _flags(self) -> int:
        return RESP_CLOSE if self.close else 0

    def write(self, data: bytes) -> None:
        """The ``write`` callable of PEP 3333, and the path of every block the app yields."""
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"response body blocks must be bytes, not {type(data).__name__}")
        size = self.chunk_size
        if not self.head_sent:
            head = self._head(None)
            self.head_sent = True
            first = b""
            if not self.no_body:
                first = self._clip(bytes(data[:size]))
                data = data[size:]
            complete = self.no_body or (self.declared is not None
                                        and self.sent >= self.declared)
            self.channel.respond(self._flags() | (RESP_END if complete else 0), head,
                                 self._frame(first) if first else b"", complete)
            if complete:
                return
        if self.no_body:
            return
        for start in range(0, len(data), size):
            piece = self._clip(bytes(data[start:start + size]))
            if not piece or not self.channel.send_chunk(self._frame(piece)):
                return
        if self.declared is not None and self.sent >= self.declared and not self.raw:
            self.finish()  # the announced length is complete: end without waiting

    def finish(self) -> None:
        """Send the final record of a response whose head is out."""
        if self.channel.finished:
            return
        flags = END_CLOSE if self.close else 0
        tail = b""
        if self.declared is not None and self.sent < self.declared and not self.no_body:
            log.warning("The app sent %d bytes of its Content-Length of %d", self.sent,
                        self.declared)
            flags = END_CLOSE
        elif self.chunked:
            tail = _CHUNK_END
        self.channel.end(flags, tail)

    def send_whole(self, body: bytes) -> None:
        """Send a response whose body is all known: one record when it fits one chunk.

        For HEAD an empty ``body`` announces no length: it is the body a HEAD response
        has, not the one the GET would have.
        """
        head = self._head(len(body) if body or not self.is_head else None)
        self.head_sent = True
        body = b"" if self.no_body else self._clip(body)
        flags = self._flags()
        if self.declared is not None and self.sent < self.declared and not self.no_body:
            log.warning("The app sent %d bytes of its Content-Length of %d", self.sent,
                        self.declared)
            flags |= RESP_CLOSE
        size = self.chunk_size
        if len(body) <= size:
            self.channel.respond(flags | RESP_END, head, body, True)
            return
        self.channel.respond(flags, head, body[:size], False)
        for start in range(size, len(body), size):
            if not self.channel.send_chunk(body[start:start + size]):
                return
        self.channel.end(END_CLOSE if flags & RESP_CLOSE else 0, b"")


def serve_request(app: Any, environ: dict[str, Any], req: protocol.RequestHead, channel: Any,
                  chunk_size: int, server_header: str = "") -> Responder:
    """Run ``app`` for one request and send its response through ``channel``; return the
    ``Responder``, whose ``status``, ``headers`` and ``sent`` say what the client got.
    ``server_header`` is the setting of that name (``""``: no ``Server`` header).

    Always ends with exactly one final record (RESPONSE with RESP_END, or END), whatever the
    app does, and always calls the app iterator's ``close()``.
    """
    responder = Responder(channel, req.version, req.flags, req.method == "HEAD", chunk_size,
                          server_header_line(server_header) if server_header else "")
    result = None
    try:
        result = app(environ, responder.start_response)
        if not responder.head_sent and type(result) in (list, tuple):
            responder.send_whole(b"".join(result))
        else:
            for block in result:
                if block:
                    responder.write(block)
                if channel.cancelled:
                    break
            if channel.finished:
                pass
            elif channel.cancelled:
                channel.end(END_ABORT, b"")
            elif not responder.head_sent:
                responder.send_whole(b"")
            else:
                responder.finish()
    except Exception as exc:
        if isinstance(exc, ClientDisconnected) or channel.cancelled:
            log.info("Client went away during %s %s", req.method, req.target[:200])
        else:
            log.exception("Error handling request %s %s", req.method, req.target[:200])
        if channel.finished:
            pass
        elif responder.head_sent:
            channel.end(END_ABORT, b"")
        else:
            _send_error(responder, channel)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("Error closing the app iterator of %s %s", req.method,
                              req.target[:200])
    return responder


def _send_error(responder: Responder, channel: Any) -> None:
    """Answer 500 for an app that failed before its head went out."""
    keep = responder.keep_alive
    lines = [f"{responder.version} 500 Internal Server Error\r\n",
             "Content-Type: text/plain; charset=utf-8\r\n",
             f"Content-Length: {len(_ERROR_BODY)}\r\n"]
    if not responder.raw:
        lines.append(date_line())
        if not keep:
            lines.append("Connection: close\r\n")
        elif responder.version == "HTTP/1.0":
            lines.append("Connection: keep-alive\r\n")
        if responder.server:
            lines.append(responder.server)
    lines.append("\r\n")
    flags = RESP_END | (0 if keep else RESP_CLOSE)
    channel.respond(flags, "".join(lines).encode("latin-1"), _ERROR_BODY, True)
    responder.status = "500 Internal Server Error"
    responder.headers = [("Content-Type", "text/plain; charset=utf-8"),
                         ("Content-Length", str(len(_ERROR_BODY)))]
    responder.sent = len(_ERROR_BODY)


# -- the layer ----------------------------------------------------------------------------

class HttpRequest(Request):
    """One HTTP exchange; the ``channel`` of ``serve_request`` (see the module docstring)."""

    __slots__ = ()

    def can_hand_back(self) -> bool:
        """Yes while the app has not started it and all the front sent is the REQUEST
        record: its whole body was inside, or the front waits for our CREDIT
        (REQ_EXPECT) before it sends the rest."""
        return not self.granted and bool(self.payload[0] & (REQ_BODY_COMPLETE | REQ_EXPECT))

    def replayable(self) -> bool:
        """The front says so (REQ_REPLAYABLE: an idempotent method, its whole body here)."""
        return bool(self.payload[0] & REQ_REPLAYABLE)

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
        return self.send_under_credit(protocol.data_head(CHUNK, self.rid, len(data)), data)

    def read_body(self, lend: bool = False) -> bytes | memoryview:
        """The next piece of the body, b"" at its end. With ``lend``, a piece in the ring
        comes as a view of its slot, not a copy: the caller copies it and calls
        ``taken``, and it counts toward credit only then."""
        worker = self.worker
        worker.quiet += 1
        try:
            if not self.granted:
                self.granted = True
                if self.payload and self.payload[0] & REQ_EXPECT:
                    self._post(protocol.encode_credit(self.rid, worker.cfg.window))
                    if self.body:  # pieces came early: the front waits on this to send on
                        worker.flush(self.front)
            while not self.body:
                if self.body_done:
                    return b""
                if self.cancelled:
                    raise ClientDisconnected("the client went away before sending the whole "
                                             "body")
                self._grant()
                worker.flush(self.front)
                worker.block(self)
            piece = self.body.popleft()
            if isinstance(piece, tuple):  # in the ring: copy it out before any credit for it
                ring, start, length = piece
                if ring.closed or self.finished:
                    # its front went away; or its final record is out (an abort's 504), and
                    # the front may have given the slot to another request
                    raise ClientDisconnected("the front went away before sending the whole "
                                             "body")
                if lend:
                    return ring.lend(start, length)  # no credit for it until ``taken``
                piece = ring.take(start, length)
            self._took()
            return piece
        finally:
            worker.quiet -= 1

    def taken(self, view: memoryview) -> None:
        """The caller of ``read_body(lend=True)`` has copied the piece it was lent: release
        it, and count it toward the next CREDIT."""
        view.release()
        worker = self.worker
        worker.quiet += 1
        try:
            self._took()
        finally:
            worker.quiet -= 1

    def _took(self) -> None:
        self.consumed += 1
        if self.consumed >= max(1, self.worker.cfg.window // 2):
            self._grant()
            self.worker.flush(self.front)  # at once: the front reads the client only on credit

    def _grant(self) -> None:
        if self.consumed > 0:
            self._post(protocol.encode_credit(self.rid, self.consumed))
            self.consumed = 0


def _declared_length(head: protocol.RequestHead, environ: dict[str, Any]) -> int:
    """The body's ``Content-Length`` (the front checked it), -1 for a chunked body."""
    if head.flags & REQ_CHUNKED:
        return -1
    try:
        return max(-1, int(environ.get("CONTENT_LENGTH") or -1))
    except ValueError:
        return -1


class WsgiLayer:
    """The layer of a worker that hosts a WSGI app; see the module docstring."""

    request_kind = REQUEST
    request_class: type[Request] = HttpRequest

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.app: Any = None
        self.base_environ: dict[str, Any] = {}
        self.chunk_size = 0
        self.server_header = ""

    @staticmethod
    def load(uri: str) -> Any:
        """The WSGI app ``uri`` (``import_app``)."""
        return import_app(uri)

    def setup(self) -> None:
        """The environ keys every request shares, and the settings read per request."""
        cfg = self.worker.cfg
        self.app = self.worker.app
        if cfg.profile is not None:  # a sampled share of the requests (handler/profile.py)
            from wsgi_zmq.handler.profile import SampledProfiler

            self.app = SampledProfiler.start(self.app, cfg.profile, cfg.profile_rate)
        self.chunk_size = cfg.chunk_size
        self.server_header = cfg.server_header
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

    def ready(self) -> tuple[int, str]:
        """An HTTP worker: no flags of its own, no service."""
        return 0, ""

    def handle(self, req: Request) -> None:
        """Run the app for one request (see ``Layer.handle``)."""
        worker = self.worker
        try:
            head = protocol.decode_request(req.payload)
        except (ProtocolError, ValueError, IndexError) as exc:
            log.warning("Dropped a malformed REQUEST from %s: %s", req.front.endpoint, exc)
            req.error(502, "malformed request record")
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
            environ["wsgi.input"] = BodyInput(req, _declared_length(head, environ))
        resp, hook_req, started = worker.in_app(
            req, lambda: HookRequest(head),
            lambda: serve_request(self.app, environ, head, req, self.chunk_size,
                                  self.server_header))
        if worker.post_request is not None:
            try:
                worker.post_request(worker, hook_req or HookRequest(head), environ, resp)
            except Exception:
                log.exception("Exception in the post_request hook")
        if worker.access is not None:
            duration = time.monotonic() - started
            worker.access.write(environ, resp.status or "-", resp.headers, resp.sent,
                                time.time() - duration, duration, head.queue_us / 1000)


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


def import_app(uri: str) -> Any:
    """Import ``MODULE:CALLABLE`` the way gunicorn does, and return the callable.

    ``MODULE`` alone means ``MODULE:application``. ``CALLABLE`` may be a dotted attribute
    path or a factory call with literal arguments (``create_app()``,
    ``create_app("prod", debug=False)``). Raises ``AppImportError`` with one line naming the
    problem; the original exception is chained for ``--log-level debug``.
    """
    import ast
    import importlib
    import os
    import sys

    module_name, _, expression = uri.partition(":")
    expression = expression or "application"
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name) and \
                (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppImportError(f"Failed to find application module {module_name!r}: "
                                 f"{exc}") from exc
        raise AppImportError(f"Failed to import {module_name!r}: {exc!r}") from exc
    except Exception as exc:
        raise AppImportError(f"Failed to import {module_name!r}: {exc!r}") from exc
    try:
        node = ast.parse(expression, mode="eval").body
    except SyntaxError:
        raise AppImportError(f"Failed to parse {expression!r} as an attribute name or "
                             "function call") from None
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    call = isinstance(node, ast.Call)
    if call:
        assert isinstance(node, ast.Call)
        try:
            args = [ast.literal_eval(arg) for arg in node.args]
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        except ValueError:
            raise AppImportError(f"Failed to parse the arguments of {expression!r}: only "
                                 "literal values are allowed") from None
        node = node.func
    path = []
    while isinstance(node, ast.Attribute):
        path.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise AppImportError(f"Failed to parse {expression!r} as an attribute name or "
                             "function call")
    path.append(node.id)
    target: Any = module
    for name in reversed(path):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise AppImportError(f"Failed to find attribute {expression!r} in "
                                 f"{module_name!r}") from None
    if call:
        try:
            target = target(*args, **kwargs)
        except Exception as exc:
            raise AppImportError(f"Calling {expression!r} in {module_name!r} failed: "
                                 f"{exc!r}") from exc
    if target is None:
        raise AppImportError(f"{uri!r}: the factory returned None")
    if not callable(target):
        raise AppImportError(f"{uri!r} is not callable")
    return target
