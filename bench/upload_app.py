"""The app ``bench/upload.py`` uploads to: one way of reading ``wsgi.input`` per path.

Every path takes a ``PUT`` and answers ``{"length": N, "lines": L}`` (the body's bytes and
how many b"\\n" it holds, so the client can check the app read it all) with
``Content-Length``:

- ``/read``: ``wsgi.input.read()``, the whole body in one call;
- ``/read-length``: one ``wsgi.input.read(CONTENT_LENGTH)``;
- ``/readline``: ``wsgi.input.readline()`` until it returns ``b""``;
- ``/flask``: a Flask view that reads ``request.get_data()``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request

flask_app = Flask(__name__)


def answer(start_response: Callable[..., Any], length: int, lines: int) -> list[bytes]:
    body = json.dumps({"length": length, "lines": lines}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


@flask_app.route("/flask", methods=["PUT"])
def flask_upload() -> dict[str, int]:
    data = request.get_data()
    return {"length": len(data), "lines": data.count(b"\n")}


def read_whole(stream: Any, environ: dict[str, Any]) -> tuple[int, int]:
    data = stream.read()
    return len(data), data.count(b"\n")


def read_length(stream: Any, environ: dict[str, Any]) -> tuple[int, int]:
    data = stream.read(int(environ.get("CONTENT_LENGTH") or 0))
    return len(data), data.count(b"\n")


def read_lines(stream: Any, environ: dict[str, Any]) -> tuple[int, int]:
    length = lines = 0
    while line := stream.readline():
        length += len(line)
        lines += line.endswith(b"\n")
    return length, lines


READERS = {"/read": read_whole, "/read-length": read_length, "/readline": read_lines}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Route the four ways of reading; ``GET /`` answers an empty upload (readiness)."""
    path = environ.get("PATH_INFO", "")
    if path == "/flask":
        result: Iterable[bytes] = flask_app(environ, start_response)
        return result
    reader = READERS.get(path)
    if reader is not None:
        return answer(start_response, *reader(environ["wsgi.input"], environ))
    if path == "/":
        return answer(start_response, 0, 0)
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return [b""]
