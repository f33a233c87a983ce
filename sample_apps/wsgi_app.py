"""A plain PEP 3333 application, no framework: routing, the request body, streaming, files.

Serve it from the repository root with::

    python -m wsgi_zmq sample_apps.wsgi_app:application

Routes:

- ``GET /``        a fixed text body, sent with its ``Content-Length``
- ``POST /echo``   the request body read from ``wsgi.input``, sent back reversed
- ``GET /stream``  ``?lines=N`` lines from a generator, each sent as soon as it is made
- ``GET /file``    this source file, through ``wsgi.file_wrapper``
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

BLOCK_SIZE = 64 * 1024
MAX_ECHO = 16 * 1024 * 1024
MAX_LINES = 100_000


def text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    """A whole text response: a one-item list, so the server knows its length up front."""
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data)))])
    return [data]


def hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    return text(start_response, "200 OK", "Hello from a plain WSGI app behind wsgi_zmq!\n")


def echo(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Read the body from ``wsgi.input`` and send it back reversed.

    PEP 3333: read at most ``CONTENT_LENGTH`` bytes; a missing or empty one means no body.
    The body is read in blocks; a real app would process each block (hash it, write it to
    disk) instead of joining them, as this one must do to reverse the whole.
    """
    if environ["REQUEST_METHOD"] != "POST":
        return text(start_response, "405 Method Not Allowed", "POST a body to /echo\n")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return text(start_response, "400 Bad Request", "invalid Content-Length\n")
    if length > MAX_ECHO:
        return text(start_response, "413 Content Too Large", f"at most {MAX_ECHO} bytes\n")
    stream = environ["wsgi.input"]
    blocks = []
    left = length
    while left > 0:
        block = stream.read(min(BLOCK_SIZE, left))
        if not block:
            break  # the client sent less than it announced
        blocks.append(block)
        left -= len(block)
    body = b"".join(blocks)[::-1]
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


def stream(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """``?lines=N`` numbered lines (default 10) from a generator, with no ``Content-Length``.

    The length is unknown when the head goes out, so an HTTP/1.1 client gets a chunked
    body, and every line reaches it before the generator is asked for the next.
    """
    raw = parse_qs(environ.get("QUERY_STRING", "")).get("lines", ["10"])[0]
    if not raw.isdecimal() or int(raw) > MAX_LINES:
        return text(start_response, "400 Bad Request", f"lines must be 0 to {MAX_LINES}\n")
    count = int(raw)

    def generate() -> Iterator[bytes]:
        for number in range(1, count + 1):
            yield f"line {number} of {count}\n".encode()

    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return generate()


def source_file(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Send this module's source through ``wsgi.file_wrapper``.

    The server may send the file its own way (in blocks, or with ``sendfile``) and closes
    it when the response ends. PEP 3333 makes the wrapper optional, so fall back to reading
    the file in blocks when the server has none.
    """
    path = os.path.abspath(__file__)
    f = open(path, "rb")
    size = os.fstat(f.fileno()).st_size
    start_response("200 OK", [("Content-Type", "text/x-python; charset=utf-8"),
                              ("Content-Length", str(size))])
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None:
        return wrapper(f, BLOCK_SIZE)
    return read_blocks(f)


def read_blocks(f: Any) -> Iterator[bytes]:
    with f:
        while block := f.read(BLOCK_SIZE):
            yield block


ROUTES: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
    "/": hello,
    "/echo": echo,
    "/stream": stream,
    "/file": source_file,
}


def application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Route by ``PATH_INFO``, the percent-decoded path below the app's mount point."""
    route = ROUTES.get(environ.get("PATH_INFO") or "/")
    if route is None:
        return text(start_response, "404 Not Found", "no such page\n")
    return route(environ, start_response)
