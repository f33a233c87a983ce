"""The app ``bench/soak.py`` serves: hello world, downloads and uploads whose bytes it checks.

- ``GET /`` answers ``Hello, World!`` (13 bytes), as ``bench/hello.py``.
- ``GET /download?size=N`` answers the first N bytes of ``pattern()`` (with
  ``Content-Length``) in pieces of 64 KiB: the same bytes in every worker and in the client,
  which checks their sha256, not only their length.
- ``POST /upload`` or ``PUT /upload`` reads ``wsgi.input`` in pieces of 64 KiB (up to
  ``CONTENT_LENGTH``, or to its end when the server sets ``wsgi.input_terminated``, as for a
  chunked body) and answers ``{"length": N, "sha256": "..."}``.

Only the standard library and ``bench/stream_app.py``, whose handlers it shares: the client
imports this module too, for ``pattern()``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from bench.stream_app import answer, download_of, upload

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


download = download_of(pattern)


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
