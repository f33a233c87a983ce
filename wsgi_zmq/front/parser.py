"""The front's HTTP/1.1 request parser: sans-IO, on top of httptools (llhttp).

``RequestParser.feed(data)`` takes bytes as they come off a socket, in any fragmentation,
and calls its sink: ``on_request(head)`` when a request head is complete,
``on_body(data)`` for each piece of (de-chunked) body, ``on_request_end()`` when the
message is complete. Pipelined requests simply produce more calls. Anything the front must
refuse raises an ``HTTPError`` that carries its status; after one the connection is closed,
because the rest of the stream cannot be trusted (RFC 9112 section 9.6).

llhttp does the grammar (RFC 9112 sections 2-7): it rejects a bare LF, whitespace before a
colon (section 5.1), obs-fold (section 5.2), NUL, CR or LF in a field value, a
``Content-Length`` that is not ``1*DIGIT`` or repeats with another value (section 6.3),
``Content-Length`` beside ``Transfer-Encoding`` (section 6.3: smuggling), and a bad
chunk size. This module adds what llhttp leaves to the server:

- limits, each configurable: request line (414), number of fields and size of one field
  (431), body size (413);
- ``Host`` exactly once in an HTTP/1.1 request, at most once in any request, and with a
  valid ``uri-host [ ":" port ]`` value (RFC 9112 section 3.2: else 400);
- ``Transfer-Encoding`` only in HTTP/1.1 (section 6.1: else 400), with ``chunked`` as the
  final coding (section 6.3: else 400) and no other coding (section 6.1: a coding we do
  not understand gets 501);
- a major version other than 1 gets 505, a higher 1.x minor version is served as HTTP/1.1
  (RFC 9110 section 2.5); ``CONNECT`` gets 501 (we are no proxy); a method that is a token
  but unknown to llhttp gets 501, anything else there 400 (RFC 9110 section 9.1); an
  ``Expect`` other than ``100-continue`` gets 417 (RFC 9110 section 10.1.1);
- ``Upgrade`` is ignored (RFC 9110 section 7.8 allows it) and the request served as plain
  HTTP/1.1, including a ``Content-Length`` body that llhttp leaves unparsed on upgrade.

Trailer fields of a chunked body are counted against the limits and dropped.
"""

from __future__ import annotations

import re
from typing import Final, Protocol

import httptools

from wsgi_zmq.errors import (
    BadRequest,
    ExpectationFailed,
    HeaderFieldsTooLarge,
    HTTPError,
    NotImplemented_,
    PayloadTooLarge,
    URITooLong,
    VersionNotSupported,
)

# RFC 9110 section 5.6.2: token = 1*tchar
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# RFC 9112 section 3.2 and RFC 9110 section 7.2: Host = uri-host [ ":" port ], where
# (RFC 3986 section 3.2.2) uri-host = IP-literal / IPv4address / reg-name,
# IP-literal = "[" ( IPv6address / IPvFuture ) "]", reg-name = *( unreserved / pct-encoded
# / sub-delims ), port = *DIGIT. IP-literal and pct-encoded are checked by alphabet only.
_HOST_VALUE: Final = re.compile(
    rb"(?:\[[0-9A-Za-z.:\-_~!$&'()*+,;=]+\]|[0-9A-Za-z.\-_~%!$&'()*+,;=]*)(?::[0-9]*)?")

# How much of a request's start is kept to judge a method llhttp refused: a token longer
# than this is answered 501 without waiting for its end.
_METHOD_PEEK: Final = 64
# RFC 9112 section 2.2: empty lines before a request line are ignored (llhttp skips them).
_EMPTY_LINES: Final = re.compile(rb"[\r\n]*")

_HOST: Final = 1
_TRANSFER_ENCODING: Final = 2
_EXPECT: Final = 3
_CONTENT_LENGTH: Final = 4
_SPECIAL: Final = {b"host": _HOST, b"transfer-encoding": _TRANSFER_ENCODING,
                   b"expect": _EXPECT, b"content-length": _CONTENT_LENGTH}


class Limits:
    """The size limits the parser enforces. ``body`` 0 means no limit."""

    __slots__ = ("request_line", "fields", "field_size", "body")

    def __init__(self, request_line: int = 8190, fields: int = 100, field_size: int = 8190,
                 body: int = 0) -> None:
        self.request_line = request_line
        self.fields = fields
        self.field_size = field_size
        self.body = body


class RequestHead:
    """A parsed request head. ``headers`` is flat: name, value, name, value, ... as received.

    ``content_length`` is -1 when the request declares none; ``chunked`` says the body is
    chunked; ``expect_continue`` says the client waits for ``100 Continue``.
    """

    __slots__ = ("method", "target", "version", "headers", "keep_alive", "chunked",
                 "content_length", "expect_continue")

    method: bytes
    target: bytes
    version: bytes
    headers: list[bytes]
    keep_alive: bool
    chunked: bool
    content_length: int
    expect_continue: bool

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0


class RequestSink(Protocol):
    """What the parser calls. Exceptions raised here propagate out of ``feed``."""

    def on_request(self, head: RequestHead) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_request_end(self) -> None: ...


class RequestParser:
    """Parse a stream of HTTP/1.1 requests into sink calls; see the module docstring."""

    __slots__ = ("sink", "limits", "_parser", "_url", "_headers", "_fields", "_host_count",
                 "_te", "_expect", "_length", "_upgrade", "_in_head", "_line", "_body_bytes",
                 "_raw_body", "_raw_ends", "_head", "_finished", "_completed", "_between",
                 "_method", "_bad_method", "_in_method", "_begun", "_host_ok")

    def __init__(self, sink: RequestSink, limits: Limits | None = None) -> None:
        self.sink = sink
        self.limits = limits or Limits()
        self._parser = _new_parser(self)
        # bytes of a body llhttp left to us: an upgrade request's (llhttp skipped it), or
        # the rest of a Content-Length body that did not end in the feed of its head
        # (``_raw_ends``: llhttp is not fed the rest, and a fresh llhttp takes the bytes
        # after it, so a large body is not copied on its way through llhttp and can be
        # read straight where it goes, ``took_raw``)
        self._raw_body = 0
        self._raw_ends = False
        self._head: RequestHead | None = None
        self._finished = False  # a request that ends the connection was parsed
        self._completed = False  # a message completed during the current feed
        # No byte of a next request has been parsed (the empty lines RFC 9112 section 2.2
        # lets us ignore do not count): on_message_complete sets it, on_message_begin clears.
        self._between = True
        # The start of the request being parsed, kept while llhttp is still in its method
        # and we know where that request started (it began a feed); None otherwise. llhttp
        # refuses an unknown method at its first unexpected byte, before the method is
        # complete. Copied only when a method spans feeds or is refused (the rare paths).
        self._method: bytes | None = None
        self._bad_method = False  # llhttp refused the method; waiting to see all of it
        self._in_method = False  # a request began and llhttp has not accepted its method
        self._begun = 0  # requests begun during the current feed
        self._host_ok = b""  # the last Host value checked: keep-alive clients repeat it
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: list[bytes] = []
        self._fields = 0
        self._host_count = 0
        self._te: bytes | None = None
        self._expect: bytes | None = None
        self._length = -1
        self._upgrade = False
        self._in_head = True
        self._line = 0
        self._body_bytes = 0

    @property
    def idle(self) -> bool:
        """True between requests: nothing of a next request has been received yet."""
        return (self._in_head and self._line == 0 and not self._url and not self._fields
                and not self._raw_body)

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raise ``HTTPError`` (with its status) if the stream is refused.

        Bytes after a request that ends the connection (HTTP/1.0 without keep-alive,
        ``Connection: close``) are ignored: the connection closes after its response.
        """
        # The body of an upgrade request that also ends the connection is still read.
        if self._raw_body:
            data = self._feed_raw_body(data)
            if not data:
                return
        if self._finished:
            return
        if self._bad_method:
            self._method = _peek(self._method or b"", data)
            self._refuse_method()
            return
        known = self._between or self._method is not None  # where this request started
        prefix = b"" if self._between else self._method or b""
        self._begun = 0
        self._completed = False
        upgrade_at = -1
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, BaseException):
                raise cause from None
            raise BadRequest(str(exc)) from None
        except httptools.HttpParserInvalidMethodError:
            self._bad_method = True
            self._method = _peek(prefix, data) if known and self._begun <= 1 else None
        except httptools.HttpParserInvalidURLError:
            raise BadRequest("Invalid request target") from None
        except httptools.HttpParserUpgrade as exc:
            upgrade_at = exc.args[0]
        except httptools.HttpParserError as exc:
            if self._finished:
                return
            raise BadRequest(str(exc) or "Malformed request") from None
        if upgrade_at >= 0:
            # outside the except block: an error in the bytes after the upgrade must not
            # carry the upgrade as its context (the callback error's __context__ is how
            # the cause is found above)
            self._after_upgrade(data, upgrade_at)
            return
        if self._bad_method:
            self._refuse_method()
            return
        if self._in_method:  # the method continues in the next feed
            self._method = _peek(prefix, data) if known and self._begun <= 1 else None
        if not self._in_head:
            head = self._head
            if head is not None and head.content_length > 0 and not head.chunked and \
                    not self._upgrade:
                self._raw_body = head.content_length - self._body_bytes
                self._raw_ends = True
            return
        if self._in_head:
            if self._completed:
                # the bytes of this feed belonged (mostly) to the request that completed;
                # where a next head began is unknown, so its partial line is counted from
                # the next feed: the bound is loose by one read, never wrong
                self._line = 0
            else:
                self._track_line(data)

    def _refuse_method(self) -> None:
        # RFC 9110 section 9.1: an unrecognized method gets 501, but only a token followed
        # by the SP of the request line (RFC 9112 section 3) is a method; anything else
        # there is an invalid request line: 400. llhttp stops at the first byte that starts
        # no method it knows, so decide only once the whole method is in (the answer must
        # not depend on how the bytes were split) and until then wait for more. A request
        # that did not start a feed (it followed another in one read) has no known start:
        # 400.
        start = self._method
        if start is None:
            raise BadRequest("Invalid method")
        token = _TOKEN.match(start)
        end = token.end() if token else 0
        if end < len(start):
            if end and start[end] == 0x20:
                raise NotImplemented_("Method not implemented")
            raise BadRequest("Invalid method")
        if end >= _METHOD_PEEK:
            raise NotImplemented_("Method not implemented")

    def _track_line(self, data: bytes) -> None:
        # httptools accumulates a partial header field without limit; bound the line in
        # progress here, once per feed. A long URL is refused by on_url (414) before this
        # can see it, so an over-long line is a header field (431).
        newline = data.rfind(b"\n")
        self._line = self._line + len(data) if newline < 0 else len(data) - newline - 1
        limits = self.limits
        longest = limits.field_size if self._fields else max(limits.field_size,
                                                              limits.request_line + 32)
        if self._line > longest + 2:
            raise HeaderFieldsTooLarge(f"Header field longer than {limits.field_size} bytes")

    def _after_upgrade(self, data: bytes, offset: int) -> None:
        # llhttp pauses after an Upgrade request's head (skipping its body) or after a
        # CONNECT. We decline the upgrade: a fresh parser takes the bytes that follow.
        head = self._head
        self._parser = _new_parser(self)
        self._reset()
        rest = data[offset:]
        if head is not None and head.content_length > 0:
            self._raw_body = head.content_length
            rest = self._feed_raw_body(rest)
        if rest:
            self.feed(rest)

    def _feed_raw_body(self, data: bytes) -> bytes:
        take = min(self._raw_body, len(data))
        if take:
            self._raw_body -= take
            self.sink.on_body(data if take == len(data) else data[:take])
        if not self._raw_body:
            self._end_raw_body()
        return data[take:]

    @property
    def raw_left(self) -> int:
        """Bytes of a Content-Length body still to come that ``took_raw`` may take (0 when
        no such body is being read)."""
        return self._raw_body if self._raw_ends else 0

    def took_raw(self, size: int) -> None:
        """The caller read ``size`` bytes of the body (at most ``raw_left``) itself, straight
        where they go, and gave them to the worker: count them (``on_body`` is not called
        for them); ``on_request_end`` follows if they were the last."""
        assert 0 < size <= self.raw_left
        self._raw_body -= size
        if not self._raw_body:
            self._end_raw_body()

    def _end_raw_body(self) -> None:
        if self._raw_ends:  # what llhttp's on_message_complete would have done
            head = self._head
            self._raw_ends = False
            self._parser = _new_parser(self)
            self._reset()
            self._between = True
            self._method = None
            if head is not None and not head.keep_alive:
                self._finished = True
        self.sink.on_request_end()

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._between = False
        self._in_method = True
        self._begun += 1
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._in_method = False  # llhttp accepted the method
        self._method = None
        self._url += url
        if len(self._url) > self.limits.request_line:
            raise URITooLong(f"Request line longer than {self.limits.request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # RFC 9112 section 5: OWS around the value is not part of it. llhttp drops the
        # leading OWS but passes the trailing OWS on.
        value = value.rstrip(b" \t")
        self._fields += 1
        if self._fields > self.limits.fields:
            raise HeaderFieldsTooLarge(f"More than {self.limits.fields} header fields")
        if len(name) + len(value) + 1 > self.limits.field_size:
            raise HeaderFieldsTooLarge(f"Header field longer than {self.limits.field_size} "
                                       "bytes")
        if not self._in_head:
            return  # a trailer field: counted, then dropped
        special = _SPECIAL.get(name.lower())
        if special is not None:
            if special == _HOST:
                self._host_count += 1
                if value != self._host_ok:
                    if not _HOST_VALUE.fullmatch(value):
                        raise BadRequest("Invalid Host header")  # RFC 9112 section 3.2
                    self._host_ok = value
            elif special == _TRANSFER_ENCODING:
                self._te = value if self._te is None else self._te + b"," + value
            elif special == _CONTENT_LENGTH:
                self._length = int(value)  # llhttp has checked it is 1*DIGIT
            else:
                self._expect = value
        self._headers.append(name)
        self._headers.append(value)

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version[:2] != "1.":
            raise VersionNotSupported(f"HTTP/{version} is not supported")
        method = parser.get_method()
        if method == b"CONNECT":
            raise NotImplemented_("CONNECT is not supported")
        # RFC 9112 section 3.2: more than one Host is refused in any request (HTTP/1.0
        # included), a missing one in HTTP/1.1.
        if self._host_count > 1:
            raise BadRequest("More than one Host header")
        if version != "1.0" and not self._host_count:
            raise BadRequest("Missing Host header")
        chunked = False
        if self._te is not None:
            if version == "1.0":
                raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
            # RFC 9110 section 5.6.1: empty list elements are ignored.
            codings = [c for c in (c.strip().lower() for c in self._te.split(b",")) if c]
            if not codings or codings[-1] != b"chunked":
                # RFC 9112 section 6.3 (4): chunked is not the final coding, so the body
                # length cannot be determined: 400, then close.
                raise BadRequest("Transfer-Encoding does not end with chunked")
            if len(codings) > 1:
                raise NotImplemented_("Only the chunked transfer coding is supported")
            chunked = True
        limit = self.limits.body
        if limit and self._length > limit:
            raise PayloadTooLarge(f"Request body larger than {limit} bytes")
        expect = False
        if self._expect is not None:
            if self._expect.strip().lower() != b"100-continue":
                raise ExpectationFailed("Only 100-continue is supported")
            expect = version != "1.0"
        head = RequestHead()
        head.method = method
        head.target = self._url
        # RFC 9110 section 2.5: a higher minor version is processed as the highest we
        # implement.
        head.version = b"HTTP/1.0" if version == "1.0" else b"HTTP/1.1"
        head.headers = self._headers
        head.keep_alive = parser.should_keep_alive()
        head.chunked = chunked
        head.content_length = self._length
        head.expect_continue = expect
        self._in_head = False
        self._line = 0
        self._head = head
        # llhttp hands the rest of the stream over (skipping any body) only for an Upgrade
        # named in Connection (RFC 9110 section 7.8); another Upgrade field is just a field.
        self._upgrade = parser.should_upgrade()
        if self._upgrade and chunked:
            raise BadRequest("Upgrade with a chunked body is not supported")
        self.sink.on_request(head)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        limit = self.limits.body
        if limit and self._body_bytes > limit:
            raise PayloadTooLarge(f"Request body larger than {limit} bytes")
        self.sink.on_body(body)

    def on_message_complete(self) -> None:
        head = self._head
        self._completed = True
        self._between = True
        self._method = None
        self._in_head = True
        self._line = 0
        self._url = b""
        self._fields = 0
        if head is not None and not head.keep_alive:
            self._finished = True
        if self._upgrade and head is not None and head.content_length > 0:
            return  # llhttp skipped the body; _after_upgrade reads it and ends the request
        self.sink.on_request_end()


def _new_parser(parser: RequestParser) -> httptools.HttpRequestParser:
    llhttp = httptools.HttpRequestParser(parser)
    # llhttp refuses versions other than 0.9, 1.0, 1.1 and 2.0 with a 400. RFC 9110 section
    # 2.5 wants 1.x served as 1.1 and lets us answer another major version with 505: let
    # any DIGIT "." DIGIT through and judge it in on_headers_complete.
    llhttp.set_dangerous_leniencies(lenient_version=True)
    return llhttp


def _peek(prefix: bytes, data: bytes) -> bytes:
    """The first ``_METHOD_PEEK`` bytes of a request: ``prefix`` (seen in earlier feeds),
    then ``data``, whose leading empty lines are skipped if nothing came before."""
    if not prefix:
        match = _EMPTY_LINES.match(data)
        data = data[match.end():] if match else data
    return (prefix + data[:_METHOD_PEEK])[:_METHOD_PEEK]


def request_is_idempotent(method: bytes) -> bool:
    """RFC 9110 section 9.2.2: may the request be sent again after a failure?"""
    return method in _IDEMPOTENT


_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


__all__ = ["HTTPError", "Limits", "RequestHead", "RequestParser", "RequestSink",
           "request_is_idempotent"]
