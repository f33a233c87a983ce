"""``wsgi.input`` of a streamed request body (``wsgi_zmq.handler.wsgi.BodyInput``).

Pure: a fake channel hands out the body in given pieces, as a worker's request channel
does. What must hold: every mix of ``read``, ``readline``, ``readlines`` and iteration
returns what ``io.BytesIO`` of the same body returns; the input holds at most one piece
beyond what the app asked for; ``read_body`` is called once per piece, and not after the
end; and reading costs work linear in the body's size, whichever way it is read.
"""

from __future__ import annotations

import io
import os
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgi_zmq.errors import ClientDisconnected
from wsgi_zmq.handler.wsgi import PRESIZE_LIMIT, BodyInput

DEFAULT = object()  # call the method without an argument
END = object()  # what next() gave at the end of the body
PIECE = 65536


class Channel:
    """The ``read_body`` side of a request channel: the next piece, b"" at the end.

    A piece that is an exception instance is raised instead of returned. Asked to lend
    (``read_body(lend=True)``), it lends every piece as a view, as a ring does, and
    asserts that each comes back (``taken``) before the next call; the view is of a copy
    that it wipes once taken, so a reader that kept the view and not its bytes is caught.
    """

    def __init__(self, pieces: Iterable[Any], lend: bool = True) -> None:
        self.pieces: Iterator[Any] = iter(pieces)
        self.calls = 0
        self.delivered = 0
        self.largest = 0
        self.ended = False
        self.lends = lend
        self.out: tuple[memoryview, bytearray] | None = None  # the piece lent
        self.lent = 0

    def read_body(self, lend: bool = False) -> bytes | memoryview:
        assert not self.ended, "read_body called again after it returned the end"
        assert self.out is None, "read_body called again before the lent piece came back"
        self.calls += 1
        piece = next(self.pieces, b"")
        if isinstance(piece, BaseException):
            raise piece
        if not piece:
            self.ended = True
        self.delivered += len(piece)
        self.largest = max(self.largest, len(piece))
        if lend and self.lends and piece:
            slot = bytearray(piece)
            view = memoryview(slot)
            self.out = (view, slot)
            self.lent += 1
            return view
        return piece

    def taken(self, view: memoryview) -> None:
        assert self.out is not None and view is self.out[0], "a piece given back twice"
        slot = self.out[1]
        view.release()
        slot[:] = b"!" * len(slot)  # the slot serves another piece now
        self.out = None


def call(stream: Any, name: str, arg: Any) -> Any:
    if name == "next":
        return next(stream, END)
    method = getattr(stream, name)
    return method() if arg is DEFAULT else method(arg)


def check_same(body: bytes, pieces: list[bytes], ops: list[tuple[str, Any]],
               length: int = -1) -> None:
    """Apply ``ops`` to ``BytesIO(body)`` and to a BodyInput fed ``pieces``, told that the
    body has ``length`` bytes (-1: not told): every result must be equal, and after each
    the input holds less than one piece unread."""
    assert b"".join(pieces) == body
    reference = io.BytesIO(body)
    channel = Channel(pieces)
    stream = BodyInput(channel, length)
    for step, (name, arg) in enumerate(ops):
        expected = call(reference, name, arg)
        got = call(stream, name, arg)
        assert got == expected, f"step {step}: {name}({arg!r}) of {ops[:step + 1]}"
        held = channel.delivered - reference.tell()
        assert 0 <= held < max(channel.largest, 1), f"step {step}: holds {held} bytes"
    assert stream.read() == reference.read()
    assert stream.read() == b"" and stream.readline() == b"" and list(stream) == []
    assert channel.ended and channel.out is None


# -- every way of reading gives what BytesIO gives ----------------------------------------

SIZES = st.sampled_from([DEFAULT, None, -1, 0, 1]) | st.integers(0, 120)
OPS = st.lists(
    st.tuples(st.sampled_from(["read", "readline"]), SIZES)
    | st.tuples(st.just("readlines"), st.sampled_from([DEFAULT, None, -1, 0])
                | st.integers(1, 100))
    | st.tuples(st.just("next"), st.just(DEFAULT)),
    max_size=25)
BODIES = st.lists(st.just(b"\n") | st.binary(min_size=1, max_size=40),
                  max_size=30).map(b"".join)


@st.composite
def split(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """``body`` cut into non-empty pieces, as the channel would deliver it."""
    if len(body) < 2:
        return [body] if body else []
    cuts = sorted(draw(st.sets(st.integers(1, len(body) - 1), max_size=12)))
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in pairwise(edges)]


@settings(max_examples=1000, deadline=None)
@given(data=st.data(), body=BODIES, ops=OPS)
def test_any_mix_of_reads_matches_bytesio(data: st.DataObject, body: bytes,
                                          ops: list[tuple[str, Any]]) -> None:
    """1. a body with some newlines, split into pieces at random 2. the input is told the
    body's length, or a wrong one (a hostile front's, shorter or longer), or nothing 3. a
    random sequence of read(n), read(), readline(n), readline(), readlines(hint) and
    next() 4. each result is the one BytesIO gives, and the input never holds a whole
    piece unread."""
    length = data.draw(st.sampled_from([-1, len(body)]) | st.integers(0, 2 * len(body) + 5))
    check_same(body, data.draw(split(body)), ops, length)


@pytest.mark.parametrize(("body", "pieces", "ops"), [
    # a line limit that ends exactly at a piece boundary: no more is fetched
    (b"abcdef\n", [b"abc", b"def\n"], [("readline", 3), ("readline", DEFAULT)]),
    # a line limit that ends exactly where a later piece ends
    (b"abcdef\n", [b"ab", b"cd", b"ef\n"], [("readline", 4), ("read", 1), ("readline", 2)]),
    # the newline is the first byte of the next piece
    (b"abc\ndef", [b"abc", b"\ndef"], [("readline", DEFAULT), ("readline", DEFAULT)]),
    # reads of 0 never fetch; a read ending at a piece boundary leaves nothing buffered
    (b"xy\nz", [b"xy", b"\nz"], [("read", 0), ("readline", 0), ("read", 2), ("read", 0),
                                 ("readlines", 1), ("next", DEFAULT)]),
    # readlines(hint) stops at the line that reaches the hint
    (b"a\nbb\nccc\n", [b"a\nb", b"b\nccc\n"], [("readlines", 3), ("readlines", 0)]),
    # None and negative sizes mean "all"
    (b"one\ntwo\n", [b"one\nt", b"wo\n"], [("readline", None), ("read", None)]),
    (b"one\ntwo\n", [b"o", b"ne\ntwo\n"], [("read", 1), ("readline", -1), ("read", -5)]),
    # readlines(None), as BytesIO takes it (found by the property: the old input raised)
    (b"a\nb\n", [b"a", b"\nb\n"], [("readlines", None)]),
    (b"", [], [("read", 5), ("readline", DEFAULT), ("next", DEFAULT), ("readlines", 3)]),
])
def test_edge_cases_match_bytesio(body: bytes, pieces: list[bytes],
                                  ops: list[tuple[str, Any]]) -> None:
    """The cases at piece and limit boundaries, spelled out: each result is BytesIO's."""
    check_same(body, pieces, ops)


def test_a_read_of_one_whole_piece_returns_it_without_copying() -> None:
    """1. the app reads 64 KiB at a time, the size of the pieces, from a channel that does
    not lend them (BODY records) 2. each read returns the piece object itself: the common
    case copies nothing."""
    pieces = [bytes([i]) * PIECE for i in range(4)]
    stream = BodyInput(Channel(pieces, lend=False))
    for piece in pieces:
        assert stream.read(PIECE) is piece
    assert stream.read(PIECE) == b""


@pytest.mark.parametrize("declared", [1 << 30, 300 << 10, 100], ids=["1GiB", "300KiB", "100B"])
def test_a_declared_length_sets_aside_no_more_than_the_limit(declared: int) -> None:
    """1. a body of two 150 KiB pieces (300 KiB) whose Content-Length said 1 GiB (a lie),
    300 KiB (the truth) or 100 bytes (a lie) 2. read() returns the body as it came, and
    so do read(n) of more than it has 3. the read set aside at most ``PRESIZE_LIMIT`` (2
    MiB) beyond the body (tracemalloc's peak), never the length a client only claimed."""
    body = os.urandom(300 << 10)
    pieces = [body[:150 << 10], body[150 << 10:]]
    tracemalloc.start()
    try:
        assert BodyInput(Channel(pieces, lend=False), declared).read() == body
        _, peak = tracemalloc.get_traced_memory()
        assert BodyInput(Channel(pieces, lend=False), declared).read(1 << 40) == body
    finally:
        tracemalloc.stop()
    assert PRESIZE_LIMIT <= 2 << 20
    assert peak < len(body) + (2 << 20) + (64 << 10)


def test_a_disconnect_keeps_what_was_read_for_the_next_call() -> None:
    """1. the channel delivers two pieces, then the client goes away 2. read(10) raises
    ClientDisconnected 3. the six bytes it gathered are still there for the next read."""
    gone = ClientDisconnected("gone")
    stream = BodyInput(Channel([b"abc", b"def", gone, gone]))
    assert stream.read(1) == b"a"
    with pytest.raises(ClientDisconnected):
        stream.read(10)
    assert stream.read(5) == b"bcdef"
    with pytest.raises(ClientDisconnected):
        stream.readline()


# -- linear work --------------------------------------------------------------------------

class Counted(bytes):
    """A piece of body that counts, in ``Counted.work``, the bytes each slice,
    concatenation or search of it touches; what it makes is Counted again, so a buffer grown
    from pieces keeps counting. Work, not time: the count is the same on any machine.
    (``b"".join`` is not seen: joining each piece once is the linear way.)"""

    work = 0

    def __getitem__(self, key: Any) -> Any:
        data = bytes.__getitem__(self, key)
        if not isinstance(key, slice):
            return data
        Counted.work += len(data)
        return Counted(data)

    def __add__(self, other: Any) -> Counted:
        Counted.work += len(self) + len(other)
        return Counted(bytes(self) + bytes(other))

    def __radd__(self, other: Any) -> Counted:
        Counted.work += len(other) + len(self)
        return Counted(bytes(other) + bytes(self))

    def __contains__(self, sub: Any) -> bool:
        Counted.work += len(self)
        return bytes.__contains__(self, sub)

    def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
        begin, stop, _ = slice(start, end).indices(len(self))
        found = bytes.find(self, sub, begin, stop)
        Counted.work += found + len(sub) - begin if found >= 0 else max(0, stop - begin)
        return found


Way = Callable[[BodyInput, int], int]


def read_in(size: int) -> Way:
    def run(stream: BodyInput, length: int) -> int:
        return sum(len(block) for block in iter(lambda: stream.read(size), b""))
    return run


def readline_in(size: int) -> Way:
    def run(stream: BodyInput, length: int) -> int:
        return sum(len(line) for line in iter(lambda: stream.readline(size), b""))
    return run


def mixed(stream: BodyInput, length: int) -> int:
    total = 0
    while True:
        sizes = (len(stream.read(1000)), len(stream.readline(3000)), len(stream.readline()))
        if not any(sizes):
            return total
        total += sum(sizes)


#: (name, line length of the body or 0 for none, how the app reads it: returns the bytes
#: it read of a body of ``length`` bytes)
WAYS: list[tuple[str, int, Way]] = [
    ("read()", 0, lambda s, n: len(s.read())),
    ("read(None)", 0, lambda s, n: len(s.read(None))),
    ("read(CONTENT_LENGTH)", 0, lambda s, n: len(s.read(n))),
    ("read(huge)", 0, lambda s, n: len(s.read(1 << 40))),
    ("read(64K)", 0, read_in(PIECE)),
    ("read(5000)", 0, read_in(5000)),
    ("readline() without newlines", 0, lambda s, n: len(s.readline())),
    ("readline(5000) without newlines", 0, readline_in(5000)),
    ("readline() of 4K lines", 4096, readline_in(-1)),
    ("iteration without newlines", 0, lambda s, n: sum(map(len, s))),
    ("iteration of 4K lines", 4096, lambda s, n: sum(map(len, s))),
    ("readlines()", 4096, lambda s, n: sum(map(len, s.readlines()))),
    ("readlines(hint)", 4096, lambda s, n: sum(sum(map(len, s.readlines(100000)))
                                               for _ in range(1000))),
    ("mixed reads", 4096, mixed),
]


def body_pieces(size: int, line: int) -> list[bytes]:
    """``size`` bytes in 64 KiB Counted pieces (the same object each time), with a newline
    every ``line`` bytes if ``line``."""
    pattern = b"x" * PIECE
    if line:
        pattern = (b"x" * (line - 1) + b"\n") * (PIECE // line)
    return [Counted(pattern)] * (size // PIECE)


@pytest.mark.parametrize(("name", "line", "way"), WAYS, ids=[w[0] for w in WAYS])
@pytest.mark.parametrize("size", [4 << 20, 40 << 20], ids=["4MiB", "40MiB"])
def test_reading_is_linear_in_the_body_size(size: int, name: str, line: int,
                                            way: Way) -> None:
    """1. read a 4 MiB and a 40 MiB body, in 64 KiB pieces, the way named, then read() to
    the end 2. read_body is called once per piece and once for the end 3. the bytes
    sliced, concatenated and searched are at most 3 times the body (the old buffer, grown
    by ``+=``, copied 320 times a 40 MiB body read whole)."""
    channel = Channel(body_pieces(size, line))
    stream = BodyInput(channel)
    Counted.work = 0
    assert way(stream, size) == size
    assert stream.read() == b""
    assert channel.calls == size // PIECE + 1
    assert Counted.work <= 3 * size, f"{Counted.work / size:.1f} bytes of work per byte"
