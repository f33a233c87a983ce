"""The sans-IO HTTP parser against the raw request corpus in ``tests/requests``.

Every file of the corpus is replayed under every fragmentation a socket could produce: the
whole stream in one ``feed``; one byte per ``feed``; every split into two pieces (for a file
of 2 KiB or more, 50 split points chosen with a fixed seed); and 20 random splits into many
pieces, also with a fixed seed. The answer must not depend on the fragmentation.

The corpus (the gunicorn ``tests/requests`` layout):

- ``requests/valid/NNN-name.http`` holds raw requests, ``NNN-name.json`` beside it the list
  of requests they must parse to: ``method``, ``target``, ``version``, ``headers`` (a list of
  ``[name, value]`` in the order received), ``keep_alive``, ``chunked``,
  ``content_length`` (-1 if none), ``expect_continue`` and ``body`` (the concatenated body
  pieces). Strings are the bytes as latin-1 text. Every request must also end
  (``on_request_end``), and nothing else may be reported.
- ``requests/invalid/NNN-name.http`` holds a stream the parser must refuse, and
  ``NNN-name.json`` ``{"status": S}`` with the status of the ``HTTPError`` it must raise,
  optionally with ``"limits": {"request_line": .., "fields": .., "field_size": .., "body": ..}``
  to parse with non-default ``Limits``. Requests before the refused one may be reported.

A ``.http`` file is ASCII text with one logical line per file line. The file's own line
breaks are dropped; the two characters ``\\r`` stand for CR, ``\\n`` for LF, ``\\xHH`` for
the byte HH and ``\\\\`` for a backslash. So ``GET / HTTP/1.1\\r\\n`` on a line of its own is
the request line with its CRLF.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wsgi_zmq.errors import HTTPError
from wsgi_zmq.front.parser import Limits, RequestHead, RequestParser, request_is_idempotent

REQUESTS = Path(__file__).resolve().parent / "requests"

#: Files shorter than this are split at every point; longer ones at SAMPLED_SPLITS points.
EVERY_SPLIT_BELOW = 2048
SAMPLED_SPLITS = 50
RANDOM_SPLITS = 20
MAX_RANDOM_PIECES = 40

_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|.|$)", re.DOTALL)
_PLAIN = {b"r": b"\r", b"n": b"\n", b"\\": b"\\"}
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e\n]")


def load_http(path: Path) -> bytes:
    """The bytes a ``.http`` file of the corpus stands for (see the module docstring)."""
    text = path.read_bytes()
    bad = _NOT_PRINTABLE.search(text)
    if bad:
        raise ValueError(f"{path.name}: byte {bad.group()!r} at {bad.start()}: write it as \\xHH")

    def unescape(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1] == b"x" and len(code) == 3:
            return bytes([int(code[1:], 16)])
        if code in _PLAIN:
            return _PLAIN[code]
        raise ValueError(f"{path.name}: unknown escape \\{code.decode('ascii', 'replace')}")

    return _ESCAPE.sub(unescape, text.replace(b"\n", b""))


def corpus(kind: str) -> list[Any]:
    """One ``pytest.param`` per ``.http`` file of ``requests/<kind>``, with its id."""
    return [pytest.param(path, id=f"{kind}/{path.stem}")
            for path in sorted((REQUESTS / kind).glob("*.http"))]


def fragmentations(name: str, data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """Every way the corpus replays ``data``: (description, pieces)."""
    size = len(data)
    yield "whole", [data]
    yield "one byte per feed", [data[i:i + 1] for i in range(size)]
    rng = random.Random(f"{name}/two")  # a str seed is stable across runs and processes
    points = (range(1, size) if size < EVERY_SPLIT_BELOW
              else sorted(rng.sample(range(1, size), SAMPLED_SPLITS)))
    for point in points:
        yield f"split at {point}", [data[:point], data[point:]]
    rng = random.Random(f"{name}/many")
    for _ in range(RANDOM_SPLITS if size > 2 else 0):
        cuts = sorted(rng.sample(range(1, size), rng.randint(2, min(size - 1,
                                                                     MAX_RANDOM_PIECES))))
        bounds = [0, *cuts, size]
        pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        yield f"pieces of {[len(p) for p in pieces]}", pieces


class Recorder:
    """A ``RequestSink`` that records the requests it is told of and checks the call order.

    ``on_request`` opens a request, ``on_body`` (never empty) adds to the open one,
    ``on_request_end`` closes it; anything else is an ``AssertionError``.
    """

    requests: list[dict[str, Any]]
    bodies: list[list[bytes]]
    open: bool

    def __init__(self) -> None:
        self.requests = []
        self.bodies = []
        self.open = False

    def on_request(self, head: RequestHead) -> None:
        assert not self.open, "on_request before on_request_end of the previous request"
        fields = [bytes(item).decode("latin-1") for item in head.headers]
        self.requests.append({
            "method": head.method.decode("latin-1"),
            "target": head.target.decode("latin-1"),
            "version": head.version.decode("latin-1"),
            "headers": [list(pair) for pair in zip(fields[::2], fields[1::2], strict=True)],
            "keep_alive": head.keep_alive,
            "chunked": head.chunked,
            "content_length": head.content_length,
            "expect_continue": head.expect_continue,
        })
        self.bodies.append([])
        self.open = True

    def on_body(self, data: bytes) -> None:
        assert self.open, "on_body outside a request"
        assert data, "on_body with no data"
        self.bodies[-1].append(bytes(data))

    def on_request_end(self) -> None:
        assert self.open, "on_request_end outside a request"
        self.open = False

    def parsed(self) -> list[dict[str, Any]]:
        """The requests in the corpus's JSON form, each body joined into one string."""
        return [dict(request, body=b"".join(body).decode("latin-1"))
                for request, body in zip(self.requests, self.bodies, strict=True)]


def replay(pieces: list[bytes], limits: Limits | None = None
           ) -> tuple[Recorder, HTTPError | None]:
    """Feed ``pieces`` one by one to a fresh parser; stop at the first ``HTTPError``."""
    sink = Recorder()
    parser = RequestParser(sink, limits)
    try:
        for piece in pieces:
            parser.feed(piece)
    except HTTPError as exc:
        return sink, exc
    return sink, None


# -- the corpus -------------------------------------------------------------------------------


def test_corpus_files_come_in_pairs() -> None:
    """Every ``.http`` has its ``.json`` and the other way round; neither folder is empty."""
    for kind in ("valid", "invalid"):
        folder = REQUESTS / kind
        http = {path.stem for path in folder.glob("*.http")}
        expected = {path.stem for path in folder.glob("*.json")}
        assert http, f"no requests in {folder}"
        assert http == expected, f"{kind}: unpaired files {sorted(http ^ expected)}"
        assert not {path.name for path in folder.iterdir()} - {
            f"{stem}{ext}" for stem in http for ext in (".http", ".json")}


@pytest.mark.parametrize("path", corpus("valid"))
def test_valid_request(path: Path) -> None:
    """Each fragmentation reports exactly the expected requests, each one ended."""
    data = load_http(path)
    expected = json.loads(path.with_suffix(".json").read_text("ascii"))
    assert isinstance(expected, list) and expected
    for how, pieces in fragmentations(path.stem, data):
        sink, error = replay(pieces)
        assert error is None, f"{how}: refused with {error.status}: {error.detail}"
        assert not sink.open, f"{how}: the last request did not end"
        assert sink.parsed() == expected, f"{how}: parsed differently"


@pytest.mark.parametrize("path", corpus("invalid"))
def test_invalid_request(path: Path) -> None:
    """Each fragmentation raises an ``HTTPError`` with the expected status."""
    data = load_http(path)
    spec = json.loads(path.with_suffix(".json").read_text("ascii"))
    assert set(spec) <= {"status", "limits"}, f"unknown keys {sorted(spec)}"
    limits = Limits(**spec.get("limits", {}))
    for how, pieces in fragmentations(path.stem, data):
        sink, error = replay(pieces, limits)
        assert error is not None, f"{how}: accepted as {sink.parsed()}"
        assert error.status == spec["status"], f"{how}: {error.status} {error.detail}"


# -- the parser's other promises --------------------------------------------------------------

HEAD = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"


def test_idle_between_requests() -> None:
    """``idle`` is True before a request and after one ends, False while one is in progress.

    1. a new parser is idle; empty lines before a request (RFC 9112 section 2.2) keep it so
    2. any byte of a request line or of a head makes it busy
    3. it stays busy while a Content-Length body is outstanding
    4. it is idle once the body has ended, though the body did not end with a line break
    5. the same for an Upgrade request whose body the parser reads itself
    """
    parser = RequestParser(Recorder())
    assert parser.idle
    parser.feed(b"\r\n")
    assert parser.idle
    for piece in (b"G", b"ET /", b" HTTP/1.1\r\n", b"Host: example.org\r\nContent-Le",
                  b"ngth: 5\r\n\r\n", b"ab"):
        parser.feed(piece)
        assert not parser.idle, piece
    parser.feed(b"cde")
    assert parser.idle
    parser.feed(b"POST / HTTP/1.1\r\nHost: example.org\r\nConnection: upgrade\r\n"
                b"Upgrade: websocket\r\nContent-Length: 3\r\n\r\nx")
    assert not parser.idle
    parser.feed(b"yz")
    assert parser.idle
    parser.feed(HEAD)
    assert parser.idle


@pytest.mark.parametrize("head", [
    pytest.param(b"GET / HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n",
                 id="connection-close"),
    pytest.param(b"GET / HTTP/1.0\r\n\r\n", id="http10"),
    pytest.param(b"POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nok", id="http10-body"),
])
def test_bytes_after_a_closing_request_are_ignored(head: bytes) -> None:
    """1. a request that ends the connection 2. then garbage, in the same feed and in later
    ones 3. one request is reported, ended, and nothing is raised."""
    garbage = b"\x00\x16\x03 NOT HTTP\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    for pieces in ([head + garbage], [head, garbage], [head + garbage[:3], garbage[3:]]):
        sink, error = replay([*pieces, garbage, HEAD])
        assert error is None
        assert len(sink.requests) == 1 and not sink.open


@pytest.mark.parametrize("limits, data, status, detail", [
    pytest.param(Limits(request_line=20), b"GET /" + b"a" * 20 + b" HTTP/1.1\r\n", 414,
                 "Request line longer than 20 bytes", id="request-line"),
    pytest.param(Limits(fields=2), HEAD[:-2] + b"A: 1\r\nB: 2\r\n\r\n", 431,
                 "More than 2 header fields", id="fields"),
    pytest.param(Limits(field_size=30), HEAD[:-2] + b"X-A: " + b"v" * 30 + b"\r\n\r\n", 431,
                 "Header field longer than 30 bytes", id="field-size"),
    pytest.param(Limits(field_size=30), HEAD[:-2] + b"X-A: " + b"v" * 200, 431,
                 "Header field longer than 30 bytes", id="field-size-unfinished-line"),
    pytest.param(Limits(body=7), HEAD[:-2] + b"Content-Length: 8\r\n\r\n", 413,
                 "Request body larger than 7 bytes", id="body-content-length"),
    pytest.param(Limits(body=7), HEAD[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n5\r\nworld\r\n", 413,
                 "Request body larger than 7 bytes", id="body-chunked"),
])
def test_limits_named_in_error_detail(limits: Limits, data: bytes, status: int,
                                      detail: str) -> None:
    """The refusal names the configured limit, whether the bytes come at once or slowly."""
    for pieces in ([data], [data[i:i + 3] for i in range(0, len(data), 3)]):
        _, error = replay(pieces, limits)
        assert error is not None
        assert (error.status, error.detail) == (status, detail)


def test_unknown_method_waits_for_its_end() -> None:
    """1. feed ``FO`` then ``O``: llhttp has refused the method, but whether it is a token
    (501) or garbage (400) is not known yet, so nothing is raised 2. feed the SP: 501."""
    parser = RequestParser(Recorder())
    parser.feed(b"FO")
    parser.feed(b"O")
    with pytest.raises(HTTPError) as info:
        parser.feed(b" / HTTP/1.1\r\n")
    assert info.value.status == 501


def test_refused_method_after_a_pipelined_request() -> None:
    """1. a good request and, in the same feed, one with an unknown method 2. the good one
    is reported and ended 3. the bad one is refused (400 or 501: where it starts in the feed
    is unknown to the parser, so it cannot always tell a token from garbage)."""
    sink, error = replay([HEAD + b"FOO / HTTP/1.1\r\nHost: example.org\r\n\r\n"])
    assert error is not None and error.status in (400, 501)
    assert [r["method"] for r in sink.parsed()] == ["GET"] and not sink.open


def test_trailer_fields_are_dropped() -> None:
    """Trailer fields are counted, not reported: the head keeps only the header fields."""
    sink, error = replay([HEAD[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
                          b"0\r\nHost: evil.example\r\nX-T: 1\r\n\r\n"])
    assert error is None
    [request] = sink.parsed()
    assert request["headers"] == [["Host", "example.org"], ["Transfer-Encoding", "chunked"]]


@pytest.mark.parametrize("method, idempotent", [
    (b"GET", True), (b"HEAD", True), (b"OPTIONS", True), (b"TRACE", True), (b"PUT", True),
    (b"DELETE", True), (b"POST", False), (b"PATCH", False), (b"CONNECT", False),
    (b"FOO", False), (b"get", False), (b"", False),
])
def test_request_is_idempotent(method: bytes, idempotent: bool) -> None:
    """RFC 9110 section 9.2.2: GET, HEAD, OPTIONS, TRACE, PUT and DELETE; names are
    case-sensitive (section 9.1)."""
    assert request_is_idempotent(method) is idempotent
