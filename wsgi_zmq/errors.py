"""Error types shared by every part, and the exit codes of every entry point.

HTTP errors carry their own status and reason and render themselves (``HTTPError.render``),
so the front answers every malformed request through one function. Exit reasons are named
constants; ``docs/settings.md`` lists them.
"""

from __future__ import annotations

from typing import ClassVar, Final

#: The process stopped because it was asked to (TERM, INT, QUIT) or finished its work.
EXIT_OK: Final = 0
#: Something failed at run time after the process had started serving.
EXIT_FAILURE: Final = 1
#: Bad configuration: a bad setting value, a missing config file, an app that cannot be
#: imported, an endpoint that cannot be bound. One line on stderr names the problem.
EXIT_CONFIG: Final = 2
#: A worker could not boot (its app failed to load after the fork); the pool stopped rather
#: than fork in a loop.
EXIT_WORKER_BOOT: Final = 3


class ConfigError(Exception):
    """A setting, config file, app path or endpoint is unusable; the message names it."""


class AppImportError(ConfigError):
    """``MODULE:CALLABLE`` could not be imported or does not name a callable."""


class ClientDisconnected(OSError):
    """Raised from ``wsgi.input`` when the client went away before sending the whole body."""


class ProtocolError(ValueError):
    """A ZeroMQ message does not follow the wire protocol; it is logged and dropped."""


class HTTPError(Exception):
    """An HTTP error answered by the front itself, before any handler sees the request.

    Subclasses set ``status`` and ``reason``; the message given to the constructor is a short
    explanation sent as the body. ``close`` says whether the connection must be closed after
    the answer (RFC 9112 section 9.6: after a framing error the rest of the stream cannot be
    trusted).
    """

    status: ClassVar[int] = 400
    reason: ClassVar[str] = "Bad Request"
    close: ClassVar[bool] = True
    headers: tuple[tuple[str, str], ...] = ()

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason

    def render(self, version: str = "1.1", server: str = "") -> bytes:
        """Return the whole answer: status line, headers and a short text body; ``server``
        is the ``server_header`` setting (``""``: no ``Server`` header)."""
        return render_error(self.status, self.reason, self.detail, self.close, self.headers,
                            version, server)


def server_line(server: str) -> str:
    """``Server: SERVER\\r\\n`` for the ``server_header`` setting, ``""`` if it is empty.

    The value cannot break the head: control characters (CR and LF among them) are dropped,
    characters outside latin-1 become ``?``.
    """
    value = "".join(ch for ch in server if " " <= ch != "\x7f")
    value = value.encode("latin-1", "replace").decode("latin-1").strip()
    return f"Server: {value}\r\n" if value else ""


def render_error(status: int, reason: str, detail: str, close: bool,
                 headers: tuple[tuple[str, str], ...] = (), version: str = "1.1",
                 server: str = "") -> bytes:
    """Render a complete HTTP answer with a ``text/plain`` body of ``detail``; with a
    ``Server`` header unless ``server`` (the ``server_header`` setting) is empty."""
    body = (detail + "\n").encode("utf-8", "replace")
    lines = [f"HTTP/{version} {status} {reason}\r\n",
             "Content-Type: text/plain; charset=utf-8\r\n",
             f"Content-Length: {len(body)}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    if close:
        lines.append("Connection: close\r\n")
    if server:
        lines.append(server_line(server))
    return ("".join(lines) + "\r\n").encode("latin-1") + body


class BadRequest(HTTPError):
    status = 400
    reason = "Bad Request"


class RequestTimeout(HTTPError):
    status = 408
    reason = "Request Timeout"


class PayloadTooLarge(HTTPError):
    status = 413
    reason = "Content Too Large"


class URITooLong(HTTPError):
    status = 414
    reason = "URI Too Long"


class HeaderFieldsTooLarge(HTTPError):
    status = 431
    reason = "Request Header Fields Too Large"


class ExpectationFailed(HTTPError):
    status = 417
    reason = "Expectation Failed"


class NotImplemented_(HTTPError):
    status = 501
    reason = "Not Implemented"


class VersionNotSupported(HTTPError):
    status = 505
    reason = "HTTP Version Not Supported"


class BadGateway(HTTPError):
    """The worker serving the request died or broke the protocol before answering."""

    status = 502
    reason = "Bad Gateway"
    close = False


class ServiceUnavailable(HTTPError):
    """Every worker is busy and the front's queue is full."""

    status = 503
    reason = "Service Unavailable"
    close = False
    headers = (("Retry-After", "1"),)


class GatewayTimeout(HTTPError):
    """No worker answered within ``request_timeout``."""

    status = 504
    reason = "Gateway Timeout"
    close = False
