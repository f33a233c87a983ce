"""The app ``bench/soak.py`` serves: hello world, downloads and uploads whose bytes it checks.

- ``GET /`` answers ``Hello, World!`` (13 bytes), as ``bench/hello.py``.
- ``GET /download?size=N`` answers the first N bytes of ``pattern()`` (with
  ``Content-Length``) in pieces of 64 KiB: the same bytes in every worker and in the client,
  which checks their sha256, not only their length.
- ``POST /upload`` or ``PUT /upload`` reads ``wsgi.input`` in pieces of 64 KiB (up to
  ``CONTENT_LENGTH``, or to its end when the server sets ``wsgi.input_terminated``, as for a
  chunked body) and answers ``{"length": N, "sha256": "..."}``.

Only the standard library: the client imports this module too, for ``pattern()``.
"""

from __future__ import annotations

import hashlib
import json
import random
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

HELLO = b"Hello, World!"
PIECE = 65536
#: 1 MiB of seeded pseudo-random bytes; longer bodies repeat it
PATTERN = random.Random(0x50A4).randbytes(1 << 20)


def pattern(size: int) -> Iterator[bytes]:
    """The first ``size`` bytes of the download body, in pieces of at most 64 KiB."""
    sent = 0
    while sent < size:
        start = sent % len(PATTERN)
        piece = PATTERN[start:start + min(PIECE, size - sent, len(PATTERN) - start)]
        sent += len(piece)
        yield piece


def answer(start_response: Callable[..., Any], status: str, body: bytes,
           content_type: str = "text/plain") -> list[bytes]:
    start_response(status, [("Content-Type", content_type),
                            ("Content-Length", str(len(body)))])
    return [body]


def download(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    try:
        size = int(query["size"][0])
        if size < 0:
            raise ValueError(size)
    except (KeyError, ValueError):
        return answer(start_response, "400 Bad Request", b"size=N (bytes) is required\n")
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size))])
    return pattern(size)


def upload(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH", "")
    if declared:
        left: int | None = int(declared)
    elif environ.get("wsgi.input_terminated"):
        left = None  # read to the end of the (chunked) body
    else:
        return answer(start_response, "411 Length Required", b"Content-Length required\n")
    digest = hashlib.sha256()
    length = 0
    while left is None or left > 0:
        data = stream.read(PIECE if left is None else min(PIECE, left))
        if not data:
            break
        digest.update(data)
        length += len(data)
        if left is not None:
            left -= len(data)
    body = json.dumps({"length": length, "sha256": digest.hexdigest()}).encode() + b"\n"
    return answer(start_response, "200 OK", body, "application/json")


ROUTES = {"/": (("GET",), None), "/download": (("GET",), download),
          "/upload": (("POST", "PUT"), upload)}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Route ``GET /``, ``GET /download`` and ``POST``/``PUT /upload``; 404 or 405 else."""
    route = ROUTES.get(environ.get("PATH_INFO", ""))
    if route is None:
        return answer(start_response, "404 Not Found",
                      b"GET /, GET /download?size=N, POST or PUT /upload\n")
    methods, handler = route
    if environ["REQUEST_METHOD"] not in methods:
        start_response("405 Method Not Allowed", [("Allow", ", ".join(methods)),
                                                  ("Content-Length", "0")])
        return [b""]
    if handler is None:
        return answer(start_response, "200 OK", HELLO)
    return handler(environ, start_response)
