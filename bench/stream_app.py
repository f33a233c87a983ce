"""A streaming WSGI app for ``bench/memory.py``: large bodies out and in, never held whole.

- ``GET /download?size=N`` answers N bytes (with ``Content-Length``) in blocks of 64 KiB,
  each the same preallocated block, so the app itself holds 64 KiB whatever N is.
- ``POST /upload`` reads ``wsgi.input`` in pieces of 64 KiB (up to ``CONTENT_LENGTH``, or to
  its end when the server sets ``wsgi.input_terminated``, as for a chunked body) and answers
  ``{"length": N, "sha256": "..."}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

BLOCK_SIZE = 65536
BLOCK = os.urandom(BLOCK_SIZE)


def blocks(size: int, block: bytes = BLOCK) -> Iterator[bytes]:
    """``size`` bytes as repeats of ``block`` (64 KiB), the last one cut short."""
    whole, rest = divmod(size, len(block))
    for _ in range(whole):
        yield block
    if rest:
        yield block[:rest]


def answer(start_response: Callable[..., Any], status: str, body: bytes,
           content_type: str = "text/plain") -> list[bytes]:
    start_response(status, [("Content-Type", content_type),
                            ("Content-Length", str(len(body)))])
    return [body]


def download_of(body: Callable[[int], Iterator[bytes]]) -> Callable[..., Iterable[bytes]]:
    """A ``GET /download?size=N`` handler that answers ``body(N)`` with Content-Length."""

    def download(environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        try:
            size = int(query["size"][0])
            if size < 0:
                raise ValueError(size)
        except (KeyError, ValueError):
            return answer(start_response, "400 Bad Request", b"size=N (bytes) is required\n")
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size))])
        return body(size)

    return download


download = download_of(blocks)


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
        data = stream.read(BLOCK_SIZE if left is None else min(BLOCK_SIZE, left))
        if not data:
            break
        digest.update(data)
        length += len(data)
        if left is not None:
            left -= len(data)
    body = json.dumps({"length": length, "sha256": digest.hexdigest()}).encode() + b"\n"
    return answer(start_response, "200 OK", body, "application/json")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Route ``GET /download`` and ``POST /upload``; 404 or 405 for anything else."""
    routes = {"/download": ("GET", download), "/upload": ("POST", upload)}
    route = routes.get(environ.get("PATH_INFO", ""))
    if route is None:
        return answer(start_response, "404 Not Found", b"GET /download?size=N, POST /upload\n")
    method, handler = route
    if environ["REQUEST_METHOD"] != method:
        start_response("405 Method Not Allowed", [("Allow", method), ("Content-Length", "0")])
        return [b""]
    return handler(environ, start_response)
