"""Hello world, the app every server in ``bench/compare.py`` serves: a 13-byte body."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"Hello, World!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer every request ``200 OK`` with ``Hello, World!``."""
    start_response("200 OK", list(HEADERS))
    return [BODY]
