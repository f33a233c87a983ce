"""``RequestParser`` under any fragmentation, and with a caller that reads Content-Length
bodies itself (``raw_left``, ``took_raw``): Hypothesis properties checked against a model of
the requests sent.

A case is a stream of pipelined valid requests (``streams``): zero to four that keep the
connection alive (GET, HEAD, POST, PUT, DELETE, OPTIONS; HTTP/1.0 with keep-alive and
HTTP/1.1; no body, a Content-Length body of 0 to 300 KiB of random bytes with CR, LF, CRLF
runs and request-looking text written in, or, in HTTP/1.1, a chunked body of several chunks
with extensions and optional trailers; ``Expect: 100-continue``; empty lines before a request
line, RFC 9112 section 2.2), then possibly one that ends it (``Connection: close``, or
HTTP/1.0 without keep-alive) followed by garbage the parser must ignore. The requests are
built by ``support.fuzz.make_message``; each gives its ``Want``: the head the parser must
report, its de-chunked body, and where its head and body lie in the stream.

The stream is fed whole or cut at drawn points: one-byte pieces over a prefix, cuts at and
next to every boundary (a request's first byte, the end of its head, the end of its body),
one-byte windows around some of them, and cuts anywhere. The properties:

1. ``test_any_fragmentation_gives_the_requests_sent``: whole and cut, the sink sees exactly
   the wanted requests, in order: each ``on_request`` with the wanted head, its body pieces
   joining to the body sent, one ``on_request_end``, nothing else.
2. ``test_taking_raw_bodies_gives_the_same_requests``: the same, but between feeds, while
   ``raw_left > 0``, the driver may take the next k bytes (1 <= k <= ``raw_left``) itself
   and call ``took_raw(k)``, as the front does when it reads a body straight into shared
   memory: the bytes it took count as the request's body (``on_body`` is not called for
   them), and the requests are the same.

Both check between every two feeds (``check_between``) that ``raw_left`` is exactly the rest
of a Content-Length body whose head has been fed and 0 everywhere else (in a head, in a
chunked body, between requests, after the last one), that the parser is not ``idle`` inside
a body, and that it is ``idle`` once a request that keeps the connection alive has ended; so
also at the end of a stream whose last request kept it alive.

The explicit cases at the end pin the transitions of the raw path one by one.

The budget: ``WSGI_ZMQ_PARSER_EXAMPLES`` (examples per property, default 200).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from support.fuzz import (
    CRLF,
    METHODS,
    PATHS,
    QUERIES,
    Message,
    connection_closes,
    framed_message,
    head_fields,
)
from wsgi_zmq.front.parser import RequestHead, RequestParser

EXAMPLES = int(os.environ.get("WSGI_ZMQ_PARSER_EXAMPLES", "200"))

#: The largest Content-Length or chunked body drawn.
MAX_BODY = 300 * 1024
#: Written into random bodies at drawn places: line ends and what a confused parser could
#: take for a chunk end, a head end or a next request.
BODY_TOKENS = (b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\n\n", b"0\r\n\r\n",
               b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n", b"\x00")
#: What follows a request that ends the connection; the parser must ignore all of it.
GARBAGE = (b"", b"\x00\x16\x03 NOT HTTP\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
           b"\r\n", b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"\xff" * 40,
           b"GET / HTTP/1.1\r\n\r\n")
KEEP_ALIVE = {b"HTTP/1.1": (None, b"keep-alive", b"Keep-Alive, TE"),
              b"HTTP/1.0": (b"keep-alive", b"Keep-Alive, TE")}
CLOSE = {b"HTTP/1.1": (b"close", b"TE, close"), b"HTTP/1.0": (None, b"close")}


# -- the model ------------------------------------------------------------------------------

class Head(NamedTuple):
    """What ``on_request`` reports, in a comparable form."""

    method: bytes
    target: bytes
    version: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    keep_alive: bool
    chunked: bool
    content_length: int
    expect_continue: bool

    @classmethod
    def of(cls, head: RequestHead) -> Head:
        flat = [bytes(item) for item in head.headers]
        return cls(bytes(head.method), bytes(head.target), bytes(head.version),
                   tuple(zip(flat[::2], flat[1::2], strict=True)), head.keep_alive,
                   head.chunked, head.content_length, head.expect_continue)


class Seen(NamedTuple):
    """One request as the sink saw it: its head, its body joined, whether it ended."""

    head: Head
    body: bytes
    ended: bool


@dataclass(frozen=True)
class Want:
    """One request of a stream: what the parser must report, and where it lies.

    ``start`` is its first byte (after any empty lines before it), ``head_end`` the first
    byte after its head, ``end`` the first byte after its (framed) body.
    """

    head: Head
    body: bytes
    start: int
    head_end: int
    end: int

    @property
    def closes(self) -> bool:
        return not self.head.keep_alive

    @property
    def raw(self) -> bool:
        """Has a Content-Length body that ``took_raw`` may take."""
        return not self.head.chunked and self.head.content_length > 0

    def seen(self) -> Seen:
        return Seen(self.head, self.body, True)


@dataclass(frozen=True)
class Stream:
    """Pipelined requests and their ``Want``s, garbage after a closing one included."""

    data: bytes
    wants: tuple[Want, ...]

    def boundaries(self) -> list[int]:
        """Every request's start, head end and end: where the parser changes state."""
        return sorted({point for want in self.wants
                       for point in (want.start, want.head_end, want.end)})

    def expected(self) -> list[Seen]:
        return [want.seen() for want in self.wants]


def head_of(message: Message) -> Head:
    """The head the parser must report for a request built by ``make_message``."""
    method, target, version = message.lines[0][:-2].split(b" ")
    fields = tuple((name, value) for name, _, value in
                   (line[:-2].partition(b": ") for line in message.lines[1:-1]))
    names = {name.lower(): value for name, value in fields}
    chunked = names.get(b"transfer-encoding") == b"chunked"
    length = int(names[b"content-length"]) if b"content-length" in names else -1
    expect = version == b"HTTP/1.1" and b"expect" in names
    return Head(method, target, version, fields, not connection_closes(version, fields),
                chunked, length, expect)


def stream_of(messages: Sequence[tuple[bytes, Message]], garbage: bytes = b"") -> Stream:
    """The stream of ``messages`` (each after its empty lines), then ``garbage``."""
    data = bytearray()
    wants = []
    for empty, message in messages:
        assert message.expected is not None
        data += empty
        start = len(data)
        data += b"".join(message.lines)
        head_end = len(data)
        data += b"".join(piece for _, piece in message.body)
        wants.append(Want(head_of(message), message.expected.body, start, head_end,
                          len(data)))
    assert all(not want.closes for want in wants[:-1]) and (wants[-1].closes or not garbage)
    return Stream(bytes(data + garbage), tuple(wants))


# -- strategies -----------------------------------------------------------------------------

@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Random bytes, mostly short, up to ``MAX_BODY``, with ``BODY_TOKENS`` written in.

    The bytes come from a drawn seed: Hypothesis draws a few numbers, not 300 KiB.
    """
    size = draw(st.one_of(st.integers(0, 300), st.integers(0, 8192), st.integers(0, MAX_BODY)))
    body = bytearray(random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(size))
    if size:
        for at, token in draw(st.lists(st.tuples(st.integers(0, size - 1),
                                                 st.sampled_from(BODY_TOKENS)), max_size=4)):
            fit = token[:size - at]
            body[at:at + len(fit)] = fit
    return bytes(body)



@st.composite
def messages(draw: st.DrawFn, closes: bool) -> Message:
    """One valid request that ends the connection if ``closes``, else keeps it alive."""
    version = draw(st.sampled_from((b"HTTP/1.1", b"HTTP/1.0")))
    # Content-Length bodies twice as often: they take the raw path
    framing = draw(st.sampled_from(("none", "length", "length", "chunked")
                                   if version == b"HTTP/1.1" else ("none", "length", "length")))
    method = draw(st.sampled_from(METHODS))
    if method == b"OPTIONS" and draw(st.booleans()):
        target = b"*"
    else:
        target = draw(st.sampled_from(PATHS)) + draw(st.sampled_from(QUERIES))
        if draw(st.booleans()):
            target = b"http://example.com" + target
    fields = head_fields(draw, version)
    connection = draw(st.sampled_from((CLOSE if closes else KEEP_ALIVE)[version]))
    if connection is not None:
        fields.append((b"Connection", connection))
    if draw(st.booleans()):
        fields.append((b"Expect", draw(st.sampled_from((b"100-continue", b"100-Continue")))))
    fields = list(draw(st.permutations(fields)))
    body = draw(bodies()) if framing != "none" else b""
    return framed_message(draw, method, target, version, fields, body, framing, max_cuts=6)


_EMPTY_LINES = st.sampled_from((b"", b"", b"", CRLF, CRLF * 2))


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    """Zero to four requests that keep the connection alive, then possibly (always, if
    there are none) one that ends it, followed by garbage."""
    kept = draw(st.lists(st.tuples(_EMPTY_LINES, messages(closes=False)), max_size=4))
    stays_open: bool = draw(st.booleans())
    if kept and stays_open:
        return stream_of(kept)
    closing = draw(st.tuples(_EMPTY_LINES, messages(closes=True)))
    garbage = draw(st.one_of(st.sampled_from(GARBAGE), st.binary(max_size=64)))
    return stream_of([*kept, closing], garbage)


@st.composite
def cuts(draw: st.DrawFn, stream: Stream) -> list[int]:
    """Where to cut ``stream`` into feeds: sorted offsets strictly inside it."""
    size = len(stream.data)
    points = set(range(1, draw(st.integers(0, min(size, 400)))))  # one byte a feed
    boundaries = stream.boundaries()
    for point, shift in draw(st.lists(st.tuples(st.sampled_from(boundaries),
                                                st.integers(-3, 3)), max_size=12)):
        points.add(point + shift)
    for point, width in draw(st.lists(st.tuples(st.sampled_from(boundaries),
                                                st.integers(1, 16)), max_size=3)):
        points.update(range(point - width, point + width + 1))
    points.update(draw(st.lists(st.integers(1, max(1, size - 1)), max_size=30)))
    return sorted(point for point in points if 0 < point < size)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Stream, list[int]]:
    stream = draw(streams())
    return stream, draw(cuts(stream))


# -- the driver -----------------------------------------------------------------------------

@dataclass
class Events:
    """A ``RequestSink`` that records what it is told and checks the order of the calls."""

    heads: list[Head] = field(default_factory=list)
    bodies: list[list[bytes]] = field(default_factory=list)
    ends: int = 0

    @property
    def open(self) -> bool:
        return len(self.heads) > self.ends

    def on_request(self, head: RequestHead) -> None:
        assert not self.open, "on_request before on_request_end of the previous request"
        self.heads.append(Head.of(head))
        self.bodies.append([])

    def on_body(self, data: bytes) -> None:
        assert self.open, "on_body outside a request"
        assert data, "on_body with no data"
        self.bodies[-1].append(bytes(data))

    def took(self, data: bytes) -> None:
        """The driver read ``data`` of the open request's body itself."""
        assert self.open, "took_raw outside a request"
        self.bodies[-1].append(data)

    def on_request_end(self) -> None:
        assert self.open, "on_request_end outside a request"
        self.ends += 1

    def seen(self) -> list[Seen]:
        return [Seen(head, b"".join(body), i < self.ends)
                for i, (head, body) in enumerate(zip(self.heads, self.bodies, strict=True))]


#: How many bytes of a raw body the driver takes itself, given at most how many it may.
Take = Callable[[int], int]


def never(limit: int) -> int:
    return 0


def check_between(parser: RequestParser, stream: Stream, fed: int) -> None:
    """What must hold once the first ``fed`` bytes of ``stream`` were fed (or taken)."""
    raw = 0
    for want in stream.wants:
        if want.head_end <= fed < want.end:
            if want.raw:
                raw = want.end - fed
            assert not parser.idle, f"idle at {fed}, inside the body of {want}"
        if fed == want.end and not want.closes:
            assert parser.idle, f"not idle at {fed}, the end of {want}"
    assert parser.raw_left == raw, f"raw_left {parser.raw_left} at {fed}, want {raw}"


def drive(stream: Stream, cuts: Sequence[int], take: Take = never
          ) -> tuple[RequestParser, Events]:
    """Feed ``stream`` to a fresh parser in pieces ending at ``cuts``; between feeds, while
    ``raw_left > 0``, ``take(limit)`` says how many of the next bytes (up to ``limit``) the
    driver reads itself, reporting them with ``took_raw``; ``check_between`` after each
    step."""
    data = stream.data
    sink = Events()
    parser = RequestParser(sink)
    ends = [*(cut for cut in cuts if 0 < cut < len(data)), len(data)]
    fed = 0
    piece = 0
    raw = took = 0
    while fed < len(data):
        check_between(parser, stream, fed)
        if parser.raw_left:
            raw += 1
            size = take(min(parser.raw_left, len(data) - fed))
            if size:
                took += 1
                sink.took(data[fed:fed + size])  # first: took_raw may end the request
                parser.took_raw(size)
                fed += size
                continue
        while ends[piece] <= fed:
            piece += 1
        parser.feed(data[fed:ends[piece]])
        fed = ends[piece]
    check_between(parser, stream, fed)
    event(f"steps with raw_left > 0: {_bucket(raw)}")
    if take is not never:
        event(f"took_raw calls: {_bucket(took)}")
    return parser, sink


def _bucket(count: int) -> str:
    return "3+" if count >= 3 else str(count)


def check_result(stream: Stream, parser: RequestParser, sink: Events) -> None:
    assert sink.seen() == stream.expected()
    if not stream.wants[-1].closes:
        assert parser.idle, "not idle after the last request"


# -- the properties -------------------------------------------------------------------------

@settings(max_examples=EXAMPLES, deadline=None)
@given(case=cases())
def test_any_fragmentation_gives_the_requests_sent(case: tuple[Stream, list[int]]) -> None:
    """1. a stream of valid requests, fed whole 2. the same, cut at the drawn points
    3. each time: the wanted heads, bodies and ends, in order; ``raw_left`` and ``idle``
    right between feeds; idle at the end unless the last request closed."""
    stream, points = case
    for how in ([], points):
        check_result(stream, *drive(stream, how))


@settings(max_examples=EXAMPLES, deadline=None)
@given(case=cases(), data=st.data())
def test_taking_raw_bodies_gives_the_same_requests(case: tuple[Stream, list[int]],
                                                   data: st.DataObject) -> None:
    """1. a stream of valid requests, cut at the drawn points 2. between feeds, while
    ``raw_left > 0``, the driver may take 1 to ``raw_left`` bytes itself (``took_raw``)
    3. the wanted heads, and bodies made of the pieces ``on_body`` gave and the bytes the
    driver took, and ends, in order; ``raw_left`` and ``idle`` right between steps."""
    stream, points = case

    def take(limit: int) -> int:
        return data.draw(st.integers(1, limit), label="take") \
            if data.draw(st.booleans(), label="take?") else 0

    check_result(stream, *drive(stream, points, take))


# -- the transitions of the raw path, one by one --------------------------------------------

def post(body: bytes, *fields: bytes) -> bytes:
    head = b"POST /upload HTTP/1.1\r\nHost: example.org\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(line + CRLF for line in fields) + CRLF + body


GET = b"GET /next HTTP/1.1\r\nHost: example.org\r\n\r\n"


def seen(sink: Events) -> list[tuple[bytes, bytes, bool]]:
    return [(s.head.method, s.body, s.ended) for s in sink.seen()]


def test_raw_body_then_a_get_in_the_feed_of_its_last_bytes() -> None:
    """1. the head and 3 bytes of a 10-byte body 2. 4 more 3. the last 3 and a pipelined
    GET, in one feed 4. raw_left is 7, then 3, then 0; both requests end; idle after."""
    sink = Events()
    parser = RequestParser(sink)
    data = post(b"0123456789")
    parser.feed(data[:-7])
    assert parser.raw_left == 7 and seen(sink) == [(b"POST", b"012", False)]
    parser.feed(data[-7:-3])
    assert parser.raw_left == 3 and not parser.idle
    parser.feed(data[-3:] + GET)
    assert parser.raw_left == 0 and parser.idle
    assert seen(sink) == [(b"POST", b"0123456789", True), (b"GET", b"", True)]
    assert sink.heads[1].target == b"/next"


def test_raw_body_ending_at_a_feed_boundary() -> None:
    """1. the head and half of the body 2. the other half, nothing more 3. the POST has
    ended and the parser is idle 4. a GET in the next feed is parsed by a fresh llhttp."""
    sink = Events()
    parser = RequestParser(sink)
    data = post(b"\r\n\r\nhalf\r\n")
    parser.feed(data[:-5])
    assert parser.raw_left == 5
    parser.feed(data[-5:])
    assert parser.raw_left == 0 and parser.idle
    assert seen(sink) == [(b"POST", b"\r\n\r\nhalf\r\n", True)]
    parser.feed(GET)
    assert seen(sink)[1:] == [(b"GET", b"", True)] and parser.idle


def test_head_alone_then_raw_body() -> None:
    """1. a head with Content-Length, ending exactly at the feed's end 2. raw_left is the
    whole body 3. the body in 1-byte feeds: raw_left counts down, the POST ends once."""
    sink = Events()
    parser = RequestParser(sink)
    body = b"a\r\nb"
    data = post(body)
    parser.feed(data[:-len(body)])
    for i, byte in enumerate(body):
        assert parser.raw_left == len(body) - i
        parser.feed(bytes([byte]))
    assert parser.raw_left == 0 and seen(sink) == [(b"POST", body, True)]


@pytest.mark.parametrize("split", [1, 3, 6])
def test_bytes_after_a_closing_raw_body_are_ignored(split: int) -> None:
    """1. a ``Connection: close`` POST whose body does not end in the feed of its head
    2. the rest of the body and garbage, in the same feed, then more garbage and a GET
    3. one request, ended; nothing raised, nothing else reported."""
    sink = Events()
    parser = RequestParser(sink)
    data = post(b"abcdefgh", b"Connection: close")
    parser.feed(data[:-8 + split])
    assert parser.raw_left == 8 - split
    parser.feed(data[-8 + split:] + b"\x00\x16\x03 NOT HTTP\r\n\r\n")
    assert parser.raw_left == 0
    parser.feed(b"\xff garbage\r\n")
    parser.feed(GET)
    assert seen(sink) == [(b"POST", b"abcdefgh", True)]


def test_took_raw_of_the_whole_rest_then_a_next_request() -> None:
    """1. the head and 2 bytes of a 9-byte body 2. the caller takes the 7 others itself
    3. the POST ends at once, on_body having been called for the 2 bytes only 4. a GET
    fed next is parsed and ends; idle after."""
    sink = Events()
    parser = RequestParser(sink)
    data = post(b"012345678")
    parser.feed(data[:-7])
    assert parser.raw_left == 7
    parser.took_raw(7)
    assert parser.raw_left == 0 and parser.idle
    assert seen(sink) == [(b"POST", b"01", True)]
    parser.feed(GET)
    assert seen(sink)[1:] == [(b"GET", b"", True)] and parser.idle


def test_took_raw_in_parts_then_feed_the_rest() -> None:
    """1. the head of a 10-byte body alone 2. took_raw(4), took_raw(1) 3. the last 5 bytes
    fed with a pipelined GET 4. on_body got only those 5; both requests end."""
    sink = Events()
    parser = RequestParser(sink)
    data = post(b"0123456789")
    parser.feed(data[:-10])
    parser.took_raw(4)
    assert parser.raw_left == 6
    parser.took_raw(1)
    assert parser.raw_left == 5 and not sink.ends
    parser.feed(data[-5:] + GET)
    assert seen(sink) == [(b"POST", b"56789", True), (b"GET", b"", True)]


def test_took_raw_ending_a_closing_request() -> None:
    """1. an HTTP/1.0 POST without keep-alive, its head alone 2. the caller takes the whole
    body 3. the POST ends 4. what follows is ignored."""
    sink = Events()
    parser = RequestParser(sink)
    parser.feed(b"POST / HTTP/1.0\r\nContent-Length: 4\r\n\r\n")
    assert parser.raw_left == 4
    parser.took_raw(4)
    parser.feed(GET + b"\x00 garbage")
    assert seen(sink) == [(b"POST", b"", True)] and not sink.heads[0].keep_alive


def test_no_raw_left_in_a_chunked_body() -> None:
    """A chunked body that spans feeds is parsed by llhttp: raw_left stays 0."""
    sink = Events()
    parser = RequestParser(sink)
    parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
    assert parser.raw_left == 0 and not parser.idle
    parser.feed(b"cde\r\n0\r\n\r\n")
    assert parser.raw_left == 0 and parser.idle
    assert seen(sink) == [(b"POST", b"abcde", True)]
