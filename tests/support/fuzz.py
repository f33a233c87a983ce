"""Live fuzzing of the front: request streams for Hypothesis, a client that sends them, and
the checks that follow every case. Shared by ``tests/live/test_fuzz.py`` and
``bench/fuzz.py``.

A *case* is a byte stream and a ``Plan`` for sending it on a fresh connection: ``whole`` (one
``sendall``), ``bytewise`` (one byte per send) or ``fragments`` (split at drawn points, with
an optional pause between pieces); the client may close (or reset) after a drawn number of
bytes instead of reading the answers. Streams come from three strategies:

- ``valid_streams``: one to four pipelined requests (GET, HEAD, POST, PUT, DELETE, OPTIONS;
  HTTP/1.0 and 1.1; origin-, absolute- and asterisk-form targets; Content-Length and chunked
  bodies with extensions and trailers; ``Expect: 100-continue``; keep-alive and
  ``Connection: close``), each with the answer the echo router must give;
- ``mutated_streams``: the same requests mutated: field lines duplicated, dropped, folded
  (obs-fold) or added from a list of hostile ones; Content-Length altered (+1, -1, negative,
  huge, a list, duplicated with another value, beside Transfer-Encoding); chunk sizes,
  extensions, CRLFs and trailers corrupted; NUL, bare CR or LF injected; request line parts
  replaced; then bytes flipped, inserted, deleted, duplicated or the stream truncated;
- ``seed_streams``: the parser's corpus (``tests/requests/{valid,invalid}/*.http``) under the
  same byte mutations.

``run_case`` sends a case and reads what comes back, with a deadline on every step (the whole
case takes at most ``CASE_SECONDS`` + ``CLOSE_SECONDS``); a reset or a broken pipe while
sending ends the sending, not the case. ``check_outcome`` then checks what can be checked
without a model of the front:

- every byte received parses as HTTP/1.1 responses (``parse_answers``: RFC 9112 grammar,
  strictly; only ``100 Continue`` as an interim answer);
- a final status is 200 (all the echo router answers) or 4xx/5xx, and a 4xx/5xx has a body;
- after an answer with ``Connection: close`` nothing more comes, and the server closes
  within ``CLOSE_SECONDS``;
- the server does not end the connection while a request it received is unanswered
  (``requests_owed`` counts them with a reference llhttp parser), unless an answer said
  ``Connection: close`` or the connection was idle for the keep-alive timeout;
- the server does not reset the connection (on loopback the answer before a reset still
  arrives; on a real network the reset may erase it: RFC 9112 section 9.6);
- a valid stream gets its answers, in order, with the right bodies.

``FuzzServer.after_case`` checks the server: the front kept its pid, a fresh ``GET /`` on
a new connection is answered 200 within ``HEALTH_SECONDS``, and its log got no
``Traceback`` and no ERROR line. Each kind of failure is its own exception class, so
Hypothesis shrinks and reports each kind separately.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
from hypothesis import strategies as st

from support import TESTS, LiveProcess, Stack, get, logged_pids, pid_alive

# -- deadlines (seconds) --------------------------------------------------------------------

CONNECT_SECONDS = 1.0
SEND_SECONDS = 2.0  # one send
CASE_SECONDS = 3.0  # sending and reading a case, before the close deadline below
QUIET_SECONDS = 0.25  # reading stops after this long without a byte from the server ...
SETTLE_SECONDS = 0.05  # ... or after this long once every answer a valid stream wants is in
CLOSE_SECONDS = 1.0  # an answer that says Connection: close: the server closes within this
HEALTH_SECONDS = 1.0  # the fresh GET / after every case
MEMORY_SLACK = 8 << 20  # the front's RSS after fuzzing: at most idle + this

CRLF = b"\r\n"
HELLO = b"Hello, world!\n"

# -- exceptions: one class per kind of failure ------------------------------------------


class FuzzFailure(AssertionError):
    """A property of the front failed for one case."""

    kind = "failure"


class FrontRestarted(FuzzFailure):
    kind = "front restarted (its pid changed or it died)"


class FrontStoppedServing(FuzzFailure):
    kind = "front stopped serving (the fresh GET / got no 200 within 1 s)"


class TracebackLogged(FuzzFailure):
    kind = "Traceback or ERROR in the log"


class NoAnswer(FuzzFailure):
    kind = "connection ended without an answer"


class UnansweredRequest(FuzzFailure):
    kind = "connection ended with a request unanswered"


class ConnectionReset(FuzzFailure):
    kind = "the server reset the connection"


class MalformedAnswer(FuzzFailure):
    kind = "an answer does not parse as HTTP/1.1"


class NotClosed(FuzzFailure):
    kind = "not closed after Connection: close"


class BadStatus(FuzzFailure):
    kind = "unexpected status, or an error answer without a body"


class WrongAnswer(FuzzFailure):
    kind = "a valid stream did not get its answers"


#: Raised first when a case found several: the front's own state, then the answers.
PRIORITY: tuple[type[FuzzFailure], ...] = (
    FrontRestarted, FrontStoppedServing, TracebackLogged, NoAnswer, UnansweredRequest,
    MalformedAnswer, NotClosed, BadStatus, WrongAnswer, ConnectionReset)

Problem = tuple[type[FuzzFailure], str]


# -- the corpus -----------------------------------------------------------------------------

CORPUS = TESTS / "requests"
_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|.|$)", re.DOTALL)
_PLAIN = {b"r": b"\r", b"n": b"\n", b"\\": b"\\"}


def load_http(path: Path) -> bytes:
    """The bytes a ``.http`` file of the corpus stands for (the format is described in
    ``tests/test_parser.py``: file line breaks dropped, ``\\r``, ``\\n``, ``\\xHH``)."""
    def unescape(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1] == b"x" and len(code) == 3:
            return bytes([int(code[1:], 16)])
        return _PLAIN[code]

    return _ESCAPE.sub(unescape, path.read_bytes().replace(b"\n", b""))


def corpus(kind: str) -> list[bytes]:
    """The streams of ``tests/requests/<kind>/*.http``, in file name order."""
    return [load_http(path) for path in sorted((CORPUS / kind).glob("*.http"))]


# -- requests and their expected answers ----------------------------------------------------

@dataclass(frozen=True)
class Expected:
    """What the echo router (``tests/apps/echo.py``) answers to one valid request."""

    method: bytes
    route: str  # "echo" (the environ as JSON), "upload" (length and sha256), "hello"
    body: bytes  # the request body, de-chunked
    closes: bool  # the request ends the connection


@dataclass
class Message:
    """One request as parts that mutations can reach.

    ``lines``: the request line, the field lines and the empty line ending the head, each
    with its line end. ``body``: the framed body as (role, bytes) pieces; roles: ``data``
    (a Content-Length body), ``size`` (a chunk-size line), ``chunk`` (chunk data and its
    CRLF), ``last`` (the last-chunk line), ``trailer`` (a trailer field line), ``end`` (the
    CRLF ending a chunked body). ``expected`` is None once the request is mutated.
    """

    lines: list[bytes]
    body: list[tuple[str, bytes]] = field(default_factory=list)
    expected: Expected | None = None

    def encode(self) -> bytes:
        return b"".join(self.lines) + b"".join(piece for _, piece in self.body)

    def copy(self) -> Message:
        return Message(list(self.lines), list(self.body), None)


def _route(target: bytes) -> str:
    path = target
    if target.startswith(b"http://"):
        rest = target[len(b"http://"):]
        path = rest[rest.find(b"/"):] if b"/" in rest else b"/"
    if path.startswith(b"/echo"):
        return "echo"
    if path.startswith(b"/upload"):
        return "upload"
    return "hello"


def connection_closes(version: bytes, fields: Sequence[tuple[bytes, bytes]]) -> bool:
    """Does a request (or response) with these fields end its connection (RFC 9112 9.3)?"""
    tokens = {token.strip().lower() for name, value in fields if name.lower() == b"connection"
              for token in value.split(b",")}
    if version == b"HTTP/1.0":
        return b"keep-alive" not in tokens
    return b"close" in tokens


def make_message(method: bytes = b"GET", target: bytes = b"/", version: bytes = b"HTTP/1.1",
                 fields: Sequence[tuple[bytes, bytes]] = ((b"Host", b"example.com"),),
                 body: bytes = b"", framing: str = "none",
                 chunks: Sequence[tuple[bytes, bytes, bytes]] | None = None,
                 last: bytes = b"0", trailers: Sequence[bytes] = ()) -> Message:
    """A valid request and its expected answer.

    ``framing``: ``none``, ``length`` (a Content-Length field is added) or ``chunked`` (a
    Transfer-Encoding field; ``chunks`` are (size text, extension, data), by default one
    chunk of ``body``; ``last`` is the last-chunk line without its CRLF; ``trailers`` are
    trailer field lines without their CRLF).
    """
    fields = list(fields)
    pieces: list[tuple[str, bytes]] = []
    if framing == "length":
        fields.append((b"Content-Length", str(len(body)).encode()))
        pieces.append(("data", body))
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", b"chunked"))
        if chunks is None:
            chunks = [(b"%x" % len(body), b"", body)] if body else []
        body = b"".join(data for _, _, data in chunks)
        for size, ext, data in chunks:
            pieces += [("size", size + ext + CRLF), ("chunk", data + CRLF)]
        pieces.append(("last", last + CRLF))
        pieces += [("trailer", line + CRLF) for line in trailers]
        pieces.append(("end", CRLF))
    lines = [method + b" " + target + b" " + version + CRLF]
    lines += [name + b": " + value + CRLF for name, value in fields]
    lines.append(CRLF)
    expected = Expected(method, _route(target), body, connection_closes(version, fields))
    return Message(lines, pieces, expected)


def valid_stream(messages: Sequence[Message]) -> tuple[bytes, tuple[Expected, ...]]:
    """The stream of pipelined valid requests and the answers it must get: one per request
    up to the first that ends the connection (the front ignores what follows it)."""
    expected: list[Expected] = []
    for message in messages:
        assert message.expected is not None
        expected.append(message.expected)
        if message.expected.closes:
            break
    return b"".join(m.encode() for m in messages), tuple(expected)


# -- strategies: valid requests -------------------------------------------------------------

METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS")
PATHS = (b"/", b"/echo", b"/upload", b"/echo/a%20b", b"/index.html")
# The apps of the first three read the whole body; hello at / answers without reading it.
BODY_PATHS = (b"/echo", b"/upload", b"/echo/x", b"/")
QUERIES = (b"", b"?a=1", b"?x=%41&y=", b"?q=a+b&q=c")
HOSTS = (b"example.com", b"127.0.0.1:8000", b"a-b.example", b"[::1]:80", b"localhost",
         b"")
EXTRA_FIELDS = (
    (b"Accept", b"*/*"), (b"User-Agent", b"fuzz/1.0"), (b"Cookie", b"a=b; c=d"),
    (b"Accept-Encoding", b"gzip, deflate"), (b"X-Empty", b""), (b"X-Obs-Text", b"caf\xe9"),
    (b"x-lower-case", b"v"), (b"X-Tab", b"a\tb"), (b"X-Dup", b"1"), (b"X-Dup", b"2"),
    (b"Trailer", b"X-Checksum"), (b"Content-Type", b"application/octet-stream"),
    (b"Upgrade", b"h2c"), (b"X-Forwarded-Proto", b"https"))
EXTENSIONS = (b"", b";name=value", b';q="a b"', b";flag", b";a=1;b=2")
TRAILERS = (b"X-Checksum: abc", b"X-Digest: sha-256=xyz", b"X-Empty:")
_FIELD_VALUE = st.from_regex(rb"\A[!-~](?:[ !-~]{0,20}[!-~])?\Z").map(bytes)


@st.composite
def valid_messages(draw: Any, framing: str | None = None) -> Message:
    """One valid request, with the answer the echo router gives it; ``framing`` (``none``,
    ``length``, ``chunked``) is drawn unless given."""
    if framing == "chunked":
        version = b"HTTP/1.1"
    else:
        version = draw(st.sampled_from((b"HTTP/1.1", b"HTTP/1.0")))
    method = draw(st.sampled_from(METHODS if framing in (None, "none") else
                                  tuple(m for m in METHODS if m != b"HEAD")))
    if framing is None:
        framings = ["none"] if method == b"HEAD" else ["none", "length"]
        if method in (b"POST", b"PUT"):
            framings.reverse()
        if version == b"HTTP/1.1" and method != b"HEAD":
            framings.append("chunked")
        framing = draw(st.sampled_from(framings))
    body = draw(st.binary(max_size=80)) if framing != "none" else b""
    path = draw(st.sampled_from(BODY_PATHS if framing != "none" else PATHS))
    form = draw(st.sampled_from(("origin", "absolute", "asterisk")))
    if form == "asterisk" and method == b"OPTIONS" and framing == "none":
        target = b"*"
    else:
        target = path + draw(st.sampled_from(QUERIES))
        if form == "absolute":
            target = b"http://example.com" + target
    fields = head_fields(draw, version)
    connection = draw(st.sampled_from((None, b"keep-alive", b"close", b"Keep-Alive, TE")))
    if connection is not None:
        fields.append((b"Connection", connection))
    if framing != "none" and draw(st.booleans()):
        fields.append((b"Expect", b"100-continue"))
    fields = list(draw(st.permutations(fields)))
    return framed_message(draw, method, target, version, fields, body, framing)


def head_fields(draw: st.DrawFn, version: bytes) -> list[tuple[bytes, bytes]]:
    """Drawn header fields of a valid request: ``Host`` (always in HTTP/1.1), a few common
    ones, and maybe an ``X-Fuzz`` with a drawn value."""
    fields: list[tuple[bytes, bytes]] = []
    if version == b"HTTP/1.1" or draw(st.booleans()):
        fields.append((b"Host", draw(st.sampled_from(HOSTS))))
    fields += draw(st.lists(st.sampled_from(EXTRA_FIELDS), max_size=4))
    if draw(st.booleans()):
        fields.append((b"X-Fuzz", draw(_FIELD_VALUE)))
    return fields


def framed_message(draw: st.DrawFn, method: bytes, target: bytes, version: bytes,
                   fields: Sequence[tuple[bytes, bytes]], body: bytes, framing: str,
                   max_cuts: int = 3) -> Message:
    """``make_message`` with ``framing``; a chunked body is cut at up to ``max_cuts`` drawn
    places, each size written in a drawn style, with drawn chunk extensions and
    trailers."""
    if framing != "chunked":
        return make_message(method, target, version, fields, body, framing)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=max_cuts))))
    bounds = [0, *cuts, len(body)]
    style = draw(st.sampled_from(("%x", "%X", "%04x")))
    chunks = [((style % (b - a)).encode(), draw(st.sampled_from(EXTENSIONS)), body[a:b])
              for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    last = b"0" + draw(st.sampled_from(EXTENSIONS))
    trailers = draw(st.lists(st.sampled_from(TRAILERS), max_size=2))
    return make_message(method, target, version, fields, body, "chunked", chunks, last,
                        trailers)


@st.composite
def valid_streams(draw: Any) -> tuple[bytes, tuple[Expected, ...]]:
    """Pipelined valid requests and the answers they must get."""
    return valid_stream(draw(st.lists(valid_messages(), min_size=1, max_size=4)))


# -- strategies: mutations ------------------------------------------------------------------

HOSTILE_FIELDS = (
    b"Content-Length: 0", b"Content-Length: 5", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding: chunked, chunked", b"Transfer-Encoding: identity",
    b"Host: other.example", b"Host: a b", b"Host:", b"Expect: 100-continue",
    b"Expect: 200-ok", b"Connection: close", b"Connection: keep-alive",
    b"Connection: Upgrade", b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings",
    b"HTTP2-Settings: AAMAAABkAAQAAP__", b"Upgrade: websocket", b"X-A : b",
    b" X-Leading: space", b"X-NoColon", b": empty-name", b"X A: b", b"X-Nul: a\x00b",
    b"X-Cr: a\rb", b"X-Obs: \xff\xfe", b"X-Long: " + b"v" * 9000, b"Trailer: Content-Length",
    b"Proxy-Connection: close", b"Content-Length: 99999999999999999999",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", b"X-Forwarded-For: 1.2.3.4",
    b"\x00", b"Host: \xff", b"X-\x7f: del")
# b"+1", b"-1": the value plus or minus one (or b"-1" itself); b"dup": a second field with
# another value
CONTENT_LENGTHS = (b"+1", b"-1", b"0", b"99999999999999999999",
                   b"18446744073709551616", b"+5", b"5, 5", b"5,6", b"", b" ", b"0x5", b"5 5",
                   b"1e3", b"00005", b"5\x00", b"dup")
TRANSFER_ENCODINGS = (b"chunked", b"gzip, chunked", b"chunked, gzip", b"chunked, chunked",
                      b"identity", b"CHUNKED", b"chunked ", b" chunked", b"xchunked",
                      b"chunked;q=1", b",chunked", b"chunked,", b"", b"dup")
CHUNK_SIZES = (b"+1", b"-1", b"xyz", b"g", b"ffffffffffffffffffff", b"10000000000000000",
               b"0x5", b"", b" 5", b"5 ", b"5\t", b"+5", b"0", b"00000000000000000001")
CHUNK_EXTENSIONS = (b";", b";a", b";a=b", b';a="b c"', b';a="unterminated', b"; a = b",
                    b";a=\x00", b";" + b"e" * 5000, b";a=b;c=d", b";a=\r")
CHUNK_ENDS = (b"", b"\n", b"\r", b"xx\r\n", b"\r\n\r\n", b" \r\n")
TRAILER_LINES = (b"Content-Length: 99", b"Transfer-Encoding: chunked", b"Host: x", b"X: y",
                 b" folded", b"\tfolded", b"NoColon", b"X: a\x00b", b" X: leading",
                 b"X-T: " + b"t" * 9000, b"X : y", b"Expect: 100-continue")
FOLDS = (b" folded", b"\tfolded", b" ", b"\t \t x")
INJECTED = (b"\x00", b"\r", b"\n", b"\x7f", b"\xff", b" ", b"\t", b"\r\n", b":")
LINE_ENDS = (b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r \n")
METHOD_VARIANTS = (b"get", b"FOO", b"CONNECT", b"PRI", b"G\x00T", b"", b"GET\t", b"TRACE",
                   b"PATCH", b"M" * 100, b"\xffGET", b"GET GET", b"PROPFIND")
TARGET_VARIANTS = (b"*", b"example.com:80", b"http://", b"/a b", b"/\x00", b"", b"//x", b"/%",
                   b"http://[::1", b"/" + b"a" * 9000, b"/\xff", b"https://h/echo", b"?x",
                   b"/echo#frag", b"\\")
VERSION_VARIANTS = (b"HTTP/1.0", b"HTTP/1.1", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9",
                    b"HTTP/1", b"http/1.1", b"HTTP/1.1 ", b"HTTP/11.1", b"HTTP/1.01", b"",
                    b"HTTP/3.0", b"HTTP/1.1\x00", b"HTTP/9.9")
INTERESTING = b"\x00\r\n \t:;,=\"0123456789abcdefABCDEF\x7f\xff/?%"

Draw = Callable[[st.SearchStrategy[Any]], Any]


def _field_indexes(message: Message) -> list[int]:
    return list(range(1, max(1, len(message.lines) - 1)))


def _pick(draw: Draw, choices: Sequence[int]) -> int | None:
    return draw(st.sampled_from(choices)) if choices else None


def _roles(message: Message, *roles: str) -> list[int]:
    return [i for i, (role, _) in enumerate(message.body) if role in roles]


def _value_of(line: bytes) -> bytes:
    return line.partition(b":")[2].strip()


def _named(message: Message, name: bytes) -> list[int]:
    return [i for i in _field_indexes(message)
            if message.lines[i].partition(b":")[0].strip().lower() == name]


def _insert_field(draw: Draw, message: Message, line: bytes) -> Message:
    message.lines.insert(draw(st.integers(1, max(1, len(message.lines) - 1))), line + CRLF)
    return message


def m_duplicate_field(draw: Draw, message: Message) -> Message:
    i = _pick(draw, _field_indexes(message))
    if i is None:
        return message
    line = message.lines[i]
    if draw(st.booleans()):
        line = line.partition(b":")[0] + b": other" + CRLF
    message.lines.insert(draw(st.integers(1, len(message.lines) - 1)), line)
    return message


def m_fold_field(draw: Draw, message: Message) -> Message:
    i = _pick(draw, _field_indexes(message))
    if i is None:
        return message
    if draw(st.booleans()):  # "Name:" CRLF SP "value"
        name, _, value = message.lines[i].partition(b":")
        message.lines[i:i + 1] = [name + b":" + CRLF, b" " + value.lstrip()]
    else:
        message.lines.insert(i + 1, draw(st.sampled_from(FOLDS)) + CRLF)
    return message


def m_drop_field(draw: Draw, message: Message) -> Message:
    i = _pick(draw, _field_indexes(message))
    if i is not None:
        del message.lines[i]
    return message


def m_add_field(draw: Draw, message: Message) -> Message:
    return _insert_field(draw, message, draw(st.sampled_from(HOSTILE_FIELDS)))


def m_many_fields(draw: Draw, message: Message) -> Message:
    count = draw(st.sampled_from((101, 99, 150)))
    return _insert_field(draw, message, CRLF.join(b"X-N%d: 1" % n for n in range(count)))


def m_content_length(draw: Draw, message: Message) -> Message:
    indexes = _named(message, b"content-length")
    variant = draw(st.sampled_from(CONTENT_LENGTHS))
    value = _value_of(message.lines[indexes[0]]) if indexes else b"0"
    number = int(value) if value.isdigit() else 0
    if variant == b"+1":
        variant = b"%d" % (number + 1)
    elif variant == b"-1":
        variant = b"%d" % max(0, number - 1) if draw(st.booleans()) else b"-1"
    if variant == b"dup" or not indexes:
        other = b"%d" % (number + 1) if variant == b"dup" else variant
        return _insert_field(draw, message, b"Content-Length: " + other)
    message.lines[indexes[0]] = b"Content-Length: " + variant + CRLF
    return message


def m_beside_transfer_encoding(draw: Draw, message: Message) -> Message:
    if _named(message, b"transfer-encoding"):
        return _insert_field(draw, message, b"Content-Length: %d" % draw(st.integers(0, 20)))
    return _insert_field(draw, message, b"Transfer-Encoding: chunked")


def m_transfer_encoding(draw: Draw, message: Message) -> Message:
    indexes = _named(message, b"transfer-encoding")
    variant = draw(st.sampled_from(TRANSFER_ENCODINGS))
    if variant == b"dup" or not indexes:
        return _insert_field(draw, message, b"Transfer-Encoding: " + (
            b"chunked" if variant == b"dup" else variant))
    message.lines[indexes[0]] = b"Transfer-Encoding: " + variant + CRLF
    return message


def _split_chunk_line(line: bytes) -> tuple[bytes, bytes]:
    """A chunk-size line as (the hex digits it starts with, the rest)."""
    digits = len(line) - len(line.lstrip(b"0123456789abcdefABCDEF"))
    return line[:digits], line[digits:]


def m_chunk_size(draw: Draw, message: Message) -> Message:
    i = _pick(draw, _roles(message, "size", "last"))
    if i is None:
        return message
    role, line = message.body[i]
    size, rest = _split_chunk_line(line)
    variant = draw(st.sampled_from(CHUNK_SIZES))
    number = int(size, 16) if size else 0
    if variant == b"+1":
        variant = b"%x" % (number + 1)
    elif variant == b"-1":
        variant = b"%x" % max(0, number - 1) if draw(st.booleans()) else b"-1"
    message.body[i] = (role, variant + rest)
    return message


def m_chunk_extension(draw: Draw, message: Message) -> Message:
    i = _pick(draw, _roles(message, "size", "last"))
    if i is None:
        return message
    role, line = message.body[i]
    size, _ = _split_chunk_line(line)
    message.body[i] = (role, size + draw(st.sampled_from(CHUNK_EXTENSIONS)) + CRLF)
    return message


def m_chunk_crlf(draw: Draw, message: Message) -> Message:
    i = _pick(draw, _roles(message, "chunk", "size", "last", "end"))
    if i is None:
        return message
    role, piece = message.body[i]
    end = draw(st.sampled_from(CHUNK_ENDS))
    message.body[i] = (role, (piece[:-2] if piece.endswith(CRLF) else piece) + end)
    return message


def m_trailer(draw: Draw, message: Message) -> Message:
    ends = _roles(message, "end")
    if not ends:
        return message
    choice = draw(st.sampled_from(("add", "add", "drop-end", "many")))
    if choice == "drop-end":
        del message.body[ends[0]]
    elif choice == "many":
        lines = b"".join(b"X-T%d: 1\r\n" % n for n in range(draw(st.sampled_from((101, 99)))))
        message.body.insert(ends[0], ("trailer", lines))
    else:
        message.body.insert(ends[0], ("trailer", draw(st.sampled_from(TRAILER_LINES)) + CRLF))
    return message


def m_inject(draw: Draw, message: Message) -> Message:
    i = draw(st.integers(0, len(message.lines) - 1))
    line = message.lines[i]
    at = draw(st.integers(0, max(0, len(line) - 2)))
    message.lines[i] = line[:at] + draw(st.sampled_from(INJECTED)) + line[at:]
    return message


def m_line_end(draw: Draw, message: Message) -> Message:
    i = draw(st.integers(0, len(message.lines) - 1))
    line = message.lines[i]
    message.lines[i] = (line[:-2] if line.endswith(CRLF) else line) + draw(
        st.sampled_from(LINE_ENDS))
    return message


def m_request_line(draw: Draw, message: Message) -> Message:
    line = message.lines[0]
    parts = (line[:-2] if line.endswith(CRLF) else line).split(b" ")
    if len(parts) != 3:
        return message
    part = draw(st.integers(0, 3))
    if part == 3:
        sep = draw(st.sampled_from((b"  ", b"\t", b"")))
        message.lines[0] = sep.join(parts) + CRLF
        return message
    parts[part] = draw(st.sampled_from((METHOD_VARIANTS, TARGET_VARIANTS,
                                        VERSION_VARIANTS)[part]))
    message.lines[0] = b" ".join(parts) + CRLF
    return message


def m_body_length(draw: Draw, message: Message) -> Message:
    i = _pick(draw, _roles(message, "data", "chunk"))
    if i is None:
        return message
    role, piece = message.body[i]
    if draw(st.booleans()):
        piece = piece[:draw(st.integers(0, max(0, len(piece) - 1)))]
    else:
        piece += draw(st.sampled_from((b"x", b"xxxxx", b"\r\n", b"GET / HTTP/1.1\r\n\r\n")))
    message.body[i] = (role, piece)
    return message


MUTATIONS: dict[str, Callable[[Draw, Message], Message]] = {
    "duplicate_field": m_duplicate_field, "fold_field": m_fold_field,
    "drop_field": m_drop_field, "add_field": m_add_field, "many_fields": m_many_fields,
    "content_length": m_content_length, "beside_transfer_encoding": m_beside_transfer_encoding,
    "transfer_encoding": m_transfer_encoding, "chunk_size": m_chunk_size,
    "chunk_extension": m_chunk_extension, "chunk_crlf": m_chunk_crlf, "trailer": m_trailer,
    "inject": m_inject, "line_end": m_line_end, "request_line": m_request_line,
    "body_length": m_body_length,
}


def b_flip(draw: Draw, data: bytes) -> bytes:
    if not data:
        return data
    i = draw(st.integers(0, len(data) - 1))
    return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]


def b_replace(draw: Draw, data: bytes) -> bytes:
    if not data:
        return data
    i = draw(st.integers(0, len(data) - 1))
    return data[:i] + draw(st.sampled_from(INTERESTING)).to_bytes(1, "big") + data[i + 1:]


def b_insert(draw: Draw, data: bytes) -> bytes:
    i = draw(st.integers(0, len(data)))
    extra = bytes(draw(st.lists(st.sampled_from(INTERESTING), min_size=1, max_size=3)))
    return data[:i] + extra + data[i:]


def b_delete(draw: Draw, data: bytes) -> bytes:
    if not data:
        return data
    i = draw(st.integers(0, len(data) - 1))
    return data[:i] + data[i + draw(st.integers(1, 16)):]


def b_duplicate(draw: Draw, data: bytes) -> bytes:
    if not data:
        return data
    i = draw(st.integers(0, len(data) - 1))
    piece = data[i:i + draw(st.integers(1, 16))]
    j = draw(st.integers(0, len(data)))
    return data[:j] + piece + data[j:]


def b_truncate(draw: Draw, data: bytes) -> bytes:
    return data[:draw(st.integers(0, max(0, len(data) - 1)))]


BYTE_MUTATIONS: dict[str, Callable[[Draw, bytes], bytes]] = {
    "flip": b_flip, "replace": b_replace, "insert": b_insert, "delete": b_delete,
    "duplicate": b_duplicate, "truncate": b_truncate,
}


def _mutate_bytes(draw: Draw, data: bytes, min_count: int = 0) -> bytes:
    for name in draw(st.lists(st.sampled_from(sorted(BYTE_MUTATIONS)), min_size=min_count,
                              max_size=3)):
        data = BYTE_MUTATIONS[name](draw, data)
    return data


#: The mutations by what they reach (``mutated_streams``): the head of a request, refused
#: before anything is handed to a worker; or the body of a request whose head is valid,
#: refused (or not) while a worker already serves it.
FOCUS: dict[str, tuple[str, ...]] = {
    "head": ("duplicate_field", "fold_field", "drop_field", "add_field", "many_fields",
             "inject", "line_end", "request_line", "transfer_encoding", "content_length",
             "beside_transfer_encoding"),
    "chunked": ("chunk_size", "chunk_extension", "chunk_crlf", "trailer", "body_length",
                "beside_transfer_encoding", "transfer_encoding"),
    "length": ("content_length", "body_length", "beside_transfer_encoding"),
    "bytes": (),
}


@st.composite
def mutated_streams(draw: Any) -> bytes:
    """Pipelined valid requests, one of them under one or two mutations of a ``FOCUS``
    (``bytes``: none), then the stream under byte mutations (at least one for ``bytes``)."""
    focus = draw(st.sampled_from(("chunked", "head", "length", "bytes")))
    messages = draw(st.lists(valid_messages(), min_size=1, max_size=3))
    names = FOCUS[focus]
    if names:
        target = draw(st.integers(0, len(messages) - 1))
        message = draw(valid_messages(None if focus == "head" else focus)).copy()
        for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=2)):
            message = MUTATIONS[name](draw, message)
        messages[target] = message
    data = b"".join(message.encode() for message in messages)
    return _mutate_bytes(draw, data, 1 if focus == "bytes" else 0)


@st.composite
def seed_streams(draw: Any) -> bytes:
    """Streams of the parser's corpus, maybe beside a valid request, under byte mutations."""
    seeds = draw(st.lists(st.sampled_from(corpus("valid") + corpus("invalid")), min_size=1,
                          max_size=2))
    where = draw(st.sampled_from(("alone", "before", "after")))
    if where != "alone":
        other = draw(valid_messages()).encode()
        seeds = [other, *seeds] if where == "before" else [*seeds, other]
    return _mutate_bytes(draw, b"".join(seeds))


# -- sending a case -------------------------------------------------------------------------

MODES = ("whole", "bytewise", "fragments")


@dataclass(frozen=True)
class Plan:
    """How a stream is sent: ``mode`` (see ``MODES``), the fragment ends ``cuts`` and the
    ``pause`` between fragments (``fragments`` only); ``close_at``: the client closes after
    that many bytes instead of reading the answers, with a reset if ``abort``."""

    mode: str = "whole"
    cuts: tuple[int, ...] = ()
    pause: float = 0.0
    close_at: int | None = None
    abort: bool = False

    def __repr__(self) -> str:
        defaults = Plan.__dataclass_fields__
        shown = [f"{name}={getattr(self, name)!r}" for name in ("cuts", "pause", "close_at",
                                                                  "abort")
                 if getattr(self, name) != defaults[name].default]
        return f"Plan({', '.join([repr(self.mode), *shown])})"


@dataclass(frozen=True)
class Case:
    """One stream, how to send it, and (for a valid stream) the answers it must get."""

    data: bytes
    plan: Plan = Plan()
    expected: tuple[Expected, ...] | None = None

    def __repr__(self) -> str:
        valid = "" if self.expected is None else f", {len(self.expected)} answers expected"
        return f"Case({self.data!r}, {self.plan!r}{valid})"


@st.composite
def plans(draw: Any, size: int) -> Plan:
    mode = draw(st.sampled_from(MODES))
    cuts: tuple[int, ...] = ()
    pause = 0.0
    if mode == "fragments" and size > 1:
        cuts = tuple(sorted(set(draw(st.lists(st.integers(1, size - 1), min_size=1,
                                              max_size=12)))))
        pause = draw(st.sampled_from((0.0, 0.001, 0.005)))
    if draw(st.integers(0, 4)) < 4:  # mostly send it all and read
        return Plan(mode, cuts, pause)
    return Plan(mode, cuts, pause, draw(st.integers(0, size)), draw(st.booleans()))


@st.composite
def cases(draw: Any, streams: st.SearchStrategy[Any]) -> Case:
    """A case of ``streams``, which draws bytes or (bytes, expected answers)."""
    stream = draw(streams)
    data, expected = stream if isinstance(stream, tuple) else (stream, None)
    return Case(data, draw(plans(len(data))), expected)


def pieces_of(data: bytes, plan: Plan) -> list[bytes]:
    if plan.mode == "bytewise":
        return [data[i:i + 1] for i in range(len(data))]
    if plan.mode == "fragments":
        bounds = [0, *[c for c in plan.cuts if 0 < c < len(data)], len(data)]
        return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    return [data] if data else []


@dataclass
class Outcome:
    """What happened on the connection of one case."""

    sent: int = 0
    send_error: str | None = None
    received: bytes = b""
    # how reading ended: "client" (the plan closed first), "eof" or "reset" (the server
    # closed), "quiet", "settled" or "deadline" (the client stopped waiting)
    ended: str = ""
    ended_at: float = 0.0
    last_sent_at: float = 0.0
    last_received_at: float = 0.0
    closing_at: float | None = None  # when an answer with Connection: close was complete

    @property
    def server_closed(self) -> bool:
        return self.ended in ("eof", "reset")


def _heads(case: Case) -> list[bool] | None:
    return None if case.expected is None else [e.method == b"HEAD" for e in case.expected]


class _Reader:
    """Collects the server's bytes; ``poll`` reads without blocking, ``wait`` with a
    timeout. Both record the end of the connection in the outcome."""

    def __init__(self, sock: socket.socket, outcome: Outcome, case: Case) -> None:
        self.sock = sock
        self.outcome = outcome
        self.case = case
        self.buffer = bytearray()

    def _got(self, data: bytes) -> None:
        now = time.monotonic()
        if not data:
            self.outcome.ended, self.outcome.ended_at = "eof", now
            return
        self.buffer += data
        self.outcome.last_received_at = now
        if self.outcome.closing_at is None:
            parsed = parse_answers(bytes(self.buffer), more=True, heads=_heads(self.case),
                                   maybe_head=b"HEAD" in self.case.data)
            if any(a.closes for a in parsed.finals):
                self.outcome.closing_at = now

    def poll(self) -> None:
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)
        try:
            while not self.outcome.ended:
                try:
                    data = self.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    return
                except ConnectionResetError:
                    self.outcome.ended, self.outcome.ended_at = "reset", time.monotonic()
                    return
                self._got(data)
        finally:
            self.sock.settimeout(timeout)

    def wait(self, timeout: float) -> bool:
        """Read once with ``timeout``; False if nothing came."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            self.outcome.ended, self.outcome.ended_at = "reset", time.monotonic()
            return True
        self._got(data)
        return True


def run_case(port: int, case: Case) -> Outcome:
    """Send ``case`` on a fresh connection to 127.0.0.1:``port`` and read the answers.

    Every send has ``SEND_SECONDS``; the case ``CASE_SECONDS`` (plus ``CLOSE_SECONDS`` once
    an answer said Connection: close). Reading stops when the server closes, when every
    answer a valid stream wants is in (after ``SETTLE_SECONDS`` more), after
    ``QUIET_SECONDS`` without a byte, or at the deadline. A reset or broken pipe while
    sending ends the sending only.
    """
    outcome = Outcome()
    plan = case.plan
    start = time.monotonic()
    deadline = start + CASE_SECONDS
    sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_SECONDS)
    reader = _Reader(sock, outcome, case)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(SEND_SECONDS)
        limit = len(case.data) if plan.close_at is None else plan.close_at
        for piece in pieces_of(case.data[:limit], plan):
            if outcome.ended or time.monotonic() > deadline:
                break
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError) as exc:
                outcome.send_error = type(exc).__name__
                break
            except TimeoutError:
                outcome.send_error = f"a send took over {SEND_SECONDS} s"
                break
            outcome.sent += len(piece)
            outcome.last_sent_at = time.monotonic()
            reader.poll()
            if plan.pause:
                time.sleep(plan.pause)
        if plan.close_at is not None:
            reader.poll()
            if not outcome.ended:
                outcome.ended, outcome.ended_at = "client", time.monotonic()
            if plan.abort:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            _read_answers(reader, case, deadline)
    finally:
        outcome.received = bytes(reader.buffer)
        sock.close()
    return outcome


def _read_answers(reader: _Reader, case: Case, deadline: float) -> None:
    outcome = reader.outcome
    heads = _heads(case)
    while not outcome.ended:
        now = time.monotonic()
        last = max(outcome.last_sent_at, outcome.last_received_at)
        if outcome.closing_at is not None:
            until, why = outcome.closing_at + CLOSE_SECONDS, "deadline"
        elif case.expected is not None:
            parsed = parse_answers(bytes(reader.buffer), more=True, heads=heads)
            if len(parsed.finals) >= len(case.expected):
                until, why = last + SETTLE_SECONDS, "settled"
            else:
                until, why = deadline, "deadline"
        else:
            until, why = min(deadline, last + QUIET_SECONDS), "quiet"
        if now >= until:
            outcome.ended, outcome.ended_at = why, now
            return
        reader.wait(until - now)


# -- parsing the answers ----------------------------------------------------------------

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3}) ([\t \x21-\x7e\x80-\xff]*)")
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*((?:[\x21-\x7e\x80-\xff]+(?:[ \t]+"
                         rb"[\x21-\x7e\x80-\xff]+)*)?)[ \t]*")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[\t \x21-\x7e\x80-\xff]*)?)\r\n")


@dataclass
class Answer:
    """One response as received."""

    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    bodiless: bool = False  # no body by its status, or taken for the answer to a HEAD

    def values(self, name: str) -> list[bytes]:
        key = name.lower().encode()
        return [value for n, value in self.headers if n.lower() == key]

    @property
    def closes(self) -> bool:
        return connection_closes(self.version, self.headers)

    def __repr__(self) -> str:
        return f"<{self.version.decode()} {self.status} {len(self.body)} bytes>"


@dataclass
class Parsed:
    answers: list[Answer]  # interim (1xx) and final answers, in order
    partial: bool  # bytes of an incomplete answer follow the last one
    error: str | None  # why the bytes are not HTTP/1.1 answers

    @property
    def finals(self) -> list[Answer]:
        return [a for a in self.answers if a.status >= 200]


def parse_answers(data: bytes, more: bool, closed: bool = False,
                  heads: Sequence[bool] | None = None, maybe_head: bool = False) -> Parsed:
    """Parse ``data`` as a sequence of HTTP/1.1 responses (RFC 9112), strictly.

    ``more``: more bytes may come (an incomplete answer is then not an error); ``closed``:
    the server closed after ``data`` (the end of a close-delimited body). ``heads`` says for
    each final answer whether it answers a HEAD (no body). Without it, when the stream held
    a HEAD (``maybe_head``), an answer whose framed body is followed by nothing or by
    ``HTTP/1.`` is taken for a HEAD answer.
    """
    answers: list[Answer] = []
    pos = 0
    finals = 0

    def result(error: str | None = None, partial: bool = False) -> Parsed:
        return Parsed(answers, partial, error)

    while pos < len(data):
        if answers and answers[-1].status >= 200 and answers[-1].closes:
            return result(f"{len(data) - pos} bytes after an answer with Connection: close: "
                          f"{data[pos:pos + 80]!r}")
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            rest = data[pos:pos + 9]
            if not (b"HTTP/1.1 "[:len(rest)] == rest or b"HTTP/1.0 "[:len(rest)] == rest):
                return result(f"not a status line: {data[pos:pos + 80]!r}")
            if len(data) - pos > 16384:
                return result("an answer head over 16 KiB")
            return result(None if more else "the connection ended inside an answer head",
                          True)
        lines = data[pos:end].split(CRLF)
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            return result(f"bad status line {lines[0][:80]!r}")
        status = int(status_line.group(2))
        if status < 100:
            return result(f"bad status {status}")
        headers = []
        for line in lines[1:]:
            field_line = _FIELD_LINE.fullmatch(line)
            if field_line is None:
                return result(f"bad field line {line[:80]!r} in {lines[0]!r}")
            headers.append((field_line.group(1), field_line.group(2)))
        answer = Answer(b"HTTP/1." + status_line.group(1), status, status_line.group(3),
                        headers)
        start = end + 4
        if status < 200:
            if status != 100:
                return result(f"unexpected interim answer {lines[0]!r}")
            answer.bodiless = True
            answers.append(answer)
            pos = start
            continue
        te, cl = answer.values("transfer-encoding"), answer.values("content-length")
        if te and cl:
            return result(f"both Transfer-Encoding and Content-Length in {lines[0]!r}")
        head = heads[finals] if heads is not None and finals < len(heads) else None
        rest = data[start:]
        if head is None and maybe_head and (te or cl not in ([], [b"0"])) and (
                rest.startswith(b"HTTP/1.") or (not rest and not more)):
            head = True
        if status in (204, 304) or head:
            answer.bodiless = True
            stop = start
        elif te:
            if [v.lower() for v in te] != [b"chunked"]:
                return result(f"Transfer-Encoding {te!r} in {lines[0]!r}")
            chunked = _parse_chunked(data, start)
            if isinstance(chunked, str):
                return result(f"{chunked} in the body of {lines[0]!r}")
            if chunked is None:
                return result(None if more else "the connection ended inside a chunked body",
                              True)
            answer.body, stop = chunked
        elif cl:
            if len(set(cl)) != 1 or not cl[0].isdigit():
                return result(f"Content-Length {cl!r} in {lines[0]!r}")
            stop = start + int(cl[0])
            if stop > len(data):
                return result(None if more else
                              f"the connection ended {stop - len(data)} bytes before the end "
                              f"of the body of {lines[0]!r}", True)
            answer.body = data[start:stop]
        else:  # close-delimited (RFC 9112 section 6.3, 8.)
            if not closed:
                return result(None, True)
            answer.body, stop = data[start:], len(data)
        answers.append(answer)
        finals += 1
        pos = stop
    return result()


def _parse_chunked(data: bytes, pos: int) -> tuple[bytes, int] | str | None:
    """The body and end of a chunked body at ``pos``; None if incomplete; why if bad."""
    body = []
    while True:
        line = _CHUNK_LINE.match(data, pos)
        if line is None:
            eol = data.find(CRLF, pos)
            return None if eol < 0 and len(data) - pos < 1024 else \
                f"bad chunk-size line {data[pos:pos + 40]!r}"
        size = int(line.group(1), 16)
        pos = line.end()
        if size == 0:
            break
        if len(data) < pos + size + 2:
            return None
        if data[pos + size:pos + size + 2] != CRLF:
            return "chunk data not followed by CRLF"
        body.append(data[pos:pos + size])
        pos += size + 2
    while True:  # trailer section
        eol = data.find(CRLF, pos)
        if eol < 0:
            return None
        if eol == pos:
            return b"".join(body), eol + 2
        if _FIELD_LINE.fullmatch(data[pos:eol]) is None:
            return f"bad trailer line {data[pos:eol][:40]!r}"
        pos = eol + 2


# -- checking a case ------------------------------------------------------------------------

def check_outcome(case: Case, outcome: Outcome, keepalive: float) -> list[Problem]:
    """The properties every case must have (see the module docstring); [] if all hold."""
    problems: list[Problem] = []
    sent = case.data[:outcome.sent]
    parsed = parse_answers(outcome.received, more=not outcome.server_closed,
                           closed=outcome.server_closed, heads=_heads(case),
                           maybe_head=b"HEAD" in sent)
    if parsed.error:
        problems.append((MalformedAnswer, parsed.error))
    finals = parsed.finals
    for answer in finals:
        if answer.status != 200 and not 400 <= answer.status <= 599:
            problems.append((BadStatus, f"status {answer.status} {answer.reason!r}"))
        elif answer.status >= 400 and not answer.body and not answer.bodiless:
            problems.append((BadStatus, f"{answer.status} without a body"))
    idle = outcome.ended_at - max(outcome.last_sent_at, outcome.last_received_at)
    if outcome.server_closed and not (finals and finals[-1].closes) and not parsed.error \
            and idle < keepalive - 0.05:
        # not an idle keep-alive connection, and no answer said Connection: close
        owed = requests_owed(sent)
        if len(finals) < owed:
            how = "reset" if outcome.ended == "reset" else "closed"
            problems.append((UnansweredRequest if finals else NoAnswer, (
                f"the server {how} the connection {idle:.3f} s after the last byte, with "
                f"{len(finals)} answers to {owed} requests (keep-alive timeout "
                f"{keepalive} s)" + _send_note(outcome))))
    if outcome.closing_at is not None and not outcome.server_closed \
            and outcome.ended != "client":
        problems.append((NotClosed, f"still open {CLOSE_SECONDS} s after an answer with "
                                    "Connection: close"))
    if outcome.ended == "reset" or outcome.send_error in _RESET_ERRORS:
        # On loopback the answer sent before a reset still reaches the client; on a real
        # network the reset may erase it (RFC 9112 section 9.6: close in stages, so that
        # a client still sending never gets one).
        problems.append((ConnectionReset, "the server reset the connection" + (
            f" while the client was sending ({outcome.send_error})"
            if outcome.send_error else "")))
    if case.expected is not None and outcome.ended != "client" and not parsed.error:
        problems += _check_expected(case.expected, finals)
    return problems


_RESET_ERRORS = ("BrokenPipeError", "ConnectionResetError")


class _Requests:
    """Counts the requests a reference parser (llhttp, as in the front) completes."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_version=True)
        self.complete = 0
        self.last = False  # the last complete request ends the connection

    def on_message_complete(self) -> None:
        self.complete += 1
        self.last = not self.parser.should_keep_alive()


def requests_owed(sent: bytes) -> int:
    """How many requests of ``sent`` the server must answer (or refuse) before it may
    close: the complete ones, up to one that ends the connection, plus one if anything but
    empty lines follows them (a request begun, or bytes to refuse). The body of a request
    is part of it, so bytes that break the body of a request already answered owe
    nothing more. (A request with ``Upgrade`` ends the count: less is owed, never more.)"""
    requests = _Requests()
    end = 0
    for i in range(len(sent)):  # byte by byte, to know where each request ends
        done = requests.complete
        try:
            requests.parser.feed_data(sent[i:i + 1])
        except httptools.HttpParserUpgrade:
            return requests.complete
        except httptools.HttpParserError:
            break
        if requests.complete > done:
            end = i + 1
            if requests.last:
                return requests.complete
    return requests.complete + bool(sent[end:].strip(b"\r\n"))


def _send_note(outcome: Outcome) -> str:
    return f" (sending stopped: {outcome.send_error})" if outcome.send_error else ""


def _check_expected(expected: Sequence[Expected], finals: list[Answer]) -> list[Problem]:
    # The server may end the connection after any answer that says so: the requests after
    # it are then not answered (the client would send them again on a new connection).
    closing = next((n for n, a in enumerate(finals) if a.closes), None)
    if closing is not None:
        expected = expected[:closing + 1]
    if len(finals) != len(expected):
        return [(WrongAnswer, f"{len(finals)} answers {finals!r} to {len(expected)} "
                              "requests")]
    problems: list[Problem] = []
    for n, (want, answer) in enumerate(zip(expected, finals, strict=True)):
        what = f"answer {n + 1} ({want.method.decode()} to {want.route})"
        if answer.status != 200:
            problems.append((WrongAnswer, f"{what}: status {answer.status}: {answer.body!r}"))
            continue
        if want.closes and not answer.closes:
            problems.append((WrongAnswer, f"{what}: no Connection: close"))
        if want.method == b"HEAD":
            if answer.body:
                problems.append((WrongAnswer, f"{what}: a body"))
            continue
        digest = hashlib.sha256(want.body).hexdigest()
        if want.route == "hello":
            ok = answer.body == HELLO
        else:
            try:
                got = json.loads(answer.body)
            except ValueError:
                got = {}
            if want.route == "echo":
                ok = (got.get("REQUEST_METHOD") == want.method.decode()
                      and got.get("body_length") == len(want.body)
                      and got.get("body_sha256") == digest)
            else:
                ok = got == {"length": len(want.body), "sha256": digest}
        if not ok:
            problems.append((WrongAnswer, f"{what}: body {answer.body[:300]!r} for a "
                                          f"request body of {len(want.body)} bytes"))
    return problems


def failure(case: Case, problems: Sequence[Problem], outcome: Outcome | None) -> FuzzFailure:
    """One exception for the problems of a case: of the first kind in ``PRIORITY``."""
    kinds = {kind for kind, _ in problems}
    kind = next(k for k in PRIORITY if k in kinds)
    lines = [f"{k.__name__}: {text}" for k, text in problems]
    lines.append(f"case: {case!r}")
    if outcome is not None:
        lines.append(f"sent {outcome.sent} of {len(case.data)} bytes; connection ended: "
                     f"{outcome.ended}; received {outcome.received[:1500]!r}")
    return kind("\n".join(lines))


# -- the server under test ------------------------------------------------------------------

APP = "apps.echo:router"
#: Short keep-alive so an idle connection is closed quickly; short graceful timeout so a
#: restart after a failure is quick.
SERVER_ARGS = ("--keep-alive", "0.5", "--graceful-timeout", "1")
_BAD_LOG = re.compile(r"Traceback|\] \[(?:ERROR|CRITICAL)\]")


def rss(pid: int) -> int | None:
    """``VmRSS`` of a process in bytes, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def health(port: int) -> str | None:
    """A fresh ``GET /`` must be answered 200 within ``HEALTH_SECONDS``: None if it was,
    else what went wrong."""
    deadline = time.monotonic() + HEALTH_SECONDS
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=HEALTH_SECONDS) as sock:
            sock.sendall(get("/"))
            data = b""
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"no answer to GET / within {HEALTH_SECONDS} s (got {data!r})"
                sock.settimeout(left)
                chunk = sock.recv(65536)
                data += chunk
                parsed = parse_answers(data, more=bool(chunk), closed=not chunk)
                if parsed.error:
                    return f"GET /: {parsed.error}: {data!r}"
                if parsed.finals:
                    answer = parsed.finals[0]
                    return None if answer.status == 200 and answer.body == HELLO else \
                        f"GET / answered {answer.status}: {answer.body!r}"
                if not chunk:
                    return f"GET /: the connection closed (got {data!r})"
    except TimeoutError:
        return f"no answer to GET / within {HEALTH_SECONDS} s"
    except OSError as exc:
        return f"GET /: {exc!r}"


def warm_up_cases() -> list[Case]:
    """Valid requests of each kind in each mode, and a few refusals: run before the idle RSS
    is measured."""
    messages = [
        make_message(),
        make_message(b"POST", b"/echo", body=b"e" * 200, framing="length"),
        make_message(b"PUT", b"/upload", body=b"u" * 300, framing="chunked"),
        make_message(b"HEAD", b"/echo"),
        make_message(b"GET", b"/", b"HTTP/1.0", ()),
    ]
    cases = []
    for mode in MODES:
        for message in messages:
            data, expected = valid_stream([message])
            cases.append(Case(data, Plan(mode, (3, 20)), expected))
        data, expected = valid_stream(messages[:3] * 2)
        cases.append(Case(data, Plan(mode, (5, 60, 200)), expected))
    refusals = [Case(b"GET /\x01 HTTP/1.1\r\n\r\n"), Case(b"GET / HTTP/1.1\r\n\r\n")]
    return cases * 4 + refusals * 5


class FuzzServer:
    """The all-in-one server under test (``python -m wsgi_zmq apps.echo:router`` with one
    worker) on a loopback port, and the checks after each case.

    ``start`` also warms the front up and measures its idle RSS. ``after_case`` returns the
    problems of the server after a case and marks it ``broken`` if it is no longer the
    process it was or stopped serving; ``ensure_ready`` then starts a fresh one (so that each
    case, and each step of shrinking, meets a working front). Processes are stopped by PID
    (``LiveProcess.stop``).
    """

    def __init__(self, directory: Path, args: Sequence[str] = SERVER_ARGS) -> None:
        self.directory = directory
        self.args = tuple(args)
        self.keepalive = float(self.args[self.args.index("--keep-alive") + 1]) \
            if "--keep-alive" in self.args else 2.0
        self.stack = Stack(directory)
        self.proc: LiveProcess | None = None
        self.port = 0
        self.front_pid = 0
        self.idle_rss = 0
        self.broken = False
        self.starts = 0
        self._offset = 0

    def start(self) -> None:
        self.starts += 1
        # WSGI_ZMQ_CHECK: the front asserts every invariant of its dispatcher and its
        # connections after every loop iteration; a broken one is a traceback in its log
        self.proc, self.port = self.stack.all_in_one(APP, *self.args, workers=1,
                                                     env={"WSGI_ZMQ_CHECK": "1"})
        self.front_pid = logged_pids(self.proc, "front")[-1]
        for case in warm_up_cases():
            run_case(self.port, case)
        reason = health(self.port)
        bad = _BAD_LOG.search(self.proc.log())
        if reason or bad:
            raise AssertionError(f"the front failed the warm-up: {reason or bad.group()}\n"
                                 f"{self.proc.log()[-3000:]}")
        self._offset = self.proc.log_path.stat().st_size
        self.idle_rss = rss(self.front_pid) or 0
        self.broken = False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.stack.procs.remove(self.proc)
            self.proc = None

    def ensure_ready(self) -> None:
        if self.broken or self.proc is None:
            self.stop()
            self.start()

    def new_log(self) -> str:
        assert self.proc is not None
        with open(self.proc.log_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        return data.decode("utf-8", "replace")

    def after_case(self) -> list[Problem]:
        """The front is the same process, serves a fresh GET / and logged nothing bad."""
        assert self.proc is not None
        problems: list[Problem] = []
        reason = health(self.port)
        text = self.new_log()
        booted = re.findall(r"Booting front with pid: (\d+)", text)
        if booted or not pid_alive(self.front_pid):
            problems.append((FrontRestarted, f"the front {self.front_pid} "
                             + (f"was replaced by {booted[-1]}" if booted else "died")
                             + f"; log:\n{text[-3000:]}"))
            self.broken = True
        if reason:
            problems.append((FrontStoppedServing, reason))
            self.broken = True
        bad = _BAD_LOG.search(text)
        if bad:
            problems.append((TracebackLogged, text[max(0, bad.start() - 200):][:3000]))
        return problems

    def memory_growth(self) -> int:
        """RSS of the front now minus its idle RSS (bytes)."""
        return (rss(self.front_pid) or 0) - self.idle_rss


def check_case(server: FuzzServer, case: Case) -> tuple[Outcome | None, list[Problem]]:
    """Run ``case`` against ``server`` (started afresh first if the last case broke it) and
    return what happened with every problem found: the answers', then the server's."""
    server.ensure_ready()
    try:
        outcome = run_case(server.port, case)
    except OSError as exc:  # cannot even connect
        return None, [(FrontStoppedServing, f"connecting: {exc!r}"), *server.after_case()]
    return outcome, check_outcome(case, outcome, server.keepalive) + server.after_case()
