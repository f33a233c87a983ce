"""The control socket (``control_socket``): one JSON request, one JSON reply, over a Unix socket.

Usage::

    sock = listen("/run/app.ctl")                           # owner-only, stale file replaced
    commands = Commands({"status": (status, "", "show ...")})
    reply = commands.run(line)                               # bytes in, bytes out
    result = call("/run/app.ctl", "workers", ["4"])          # the client side; ControlError

A request is one line of JSON, ``{"command": NAME, "args": [STRING, ...]}``, of at most
``MAX_REQUEST`` bytes; the reply is one line, ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": MESSAGE}``, and the server closes the connection after it. Pure
standard library: the master (no gevent, no zmq) serves it from its select loop
(``ControlServer``), the front from a greenlet (``wsgi_zmq.front.control``).
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from wsgi_zmq.errors import ConfigError

MAX_REQUEST: Final = 64 * 1024
MAX_REPLY: Final = 16 * 1024 * 1024
#: How long a server waits for a request line, and a client for its reply.
TIMEOUT: Final = 5.0

Handler = Callable[[list[str]], Any]


class ControlError(Exception):
    """A command failed: the server's message, or why the socket could not be used."""


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode("utf-8") + b"\n"


def request(command: str, args: Sequence[str] = ()) -> bytes:
    return encode({"command": command, "args": list(args)})


class Commands:
    """The commands a process answers: name -> (handler(args), usage, help).

    A handler returns the result (anything JSON can carry) or raises ``ControlError``
    (or ``ValueError``) with the message the client prints.
    """

    def __init__(self, table: Mapping[str, tuple[Handler, str, str]]) -> None:
        self.table = dict(table)
        self.table.setdefault("help", (self.help, "", "list the commands"))

    def help(self, args: list[str]) -> list[dict[str, str]]:
        return [{"command": name, "usage": f"{name} {usage}".strip(), "help": text}
                for name, (_, usage, text) in sorted(self.table.items())]

    def run(self, line: bytes) -> bytes:
        """The reply line to the request ``line``; never raises for the client's input."""
        try:
            req = json.loads(line)
        except ValueError:
            return encode({"ok": False, "error": "the request is not one line of JSON"})
        command = req.get("command") if isinstance(req, dict) else None
        args = req.get("args", []) if isinstance(req, dict) else None
        if not isinstance(command, str) or not isinstance(args, list) or \
                not all(isinstance(a, str) for a in args):
            return encode({"ok": False,
                           "error": 'expected {"command": NAME, "args": [STRING, ...]}'})
        entry = self.table.get(command)
        if entry is None:
            known = ", ".join(sorted(self.table))
            return encode({"ok": False, "error": f"unknown command {command!r}; "
                                                 f"this process answers: {known}"})
        try:
            return encode({"ok": True, "result": entry[0](args)})
        except (ControlError, ValueError) as exc:
            return encode({"ok": False, "error": str(exc)})


def listen(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600.

    A socket file nobody answers on (its process died) is replaced; one a live process
    answers on, or a file that is not a socket, is a ``ConfigError``.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise ConfigError(f"control_socket {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: left by a process that died
        else:
            raise ConfigError(f"control_socket {path} is in use by a running process")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"control_socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    sock.listen(16)
    return sock


class Unreachable(ControlError):
    """Nothing usable came back: the socket could not be reached, closed without a reply,
    timed out, or sent something that is not a reply."""


def call(path: str, command: str, args: Sequence[str] = (), timeout: float = TIMEOUT) -> Any:
    """Send one command to the control socket at ``path``; its result. ``ControlError``
    with the process's own message when the command failed; ``Unreachable`` when no reply
    came."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    data = bytearray()
    try:
        try:
            sock.connect(path.removeprefix("ipc://"))
        except OSError as exc:
            raise Unreachable(f"cannot reach {path}: {exc.strerror or exc}") from None
        sock.sendall(request(command, list(args)))
        while not data.endswith(b"\n"):
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
            if len(data) > MAX_REPLY:
                raise Unreachable(f"{path} sent a reply longer than {MAX_REPLY} bytes")
    except TimeoutError:
        raise Unreachable(f"{path} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise Unreachable(f"{path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise Unreachable(f"{path} sent no valid reply" if data else
                          f"{path} closed the connection without a reply")
    if not reply["ok"]:
        raise ControlError(str(reply.get("error", "failed")))
    return reply.get("result")


class ControlServer:
    """The control socket of a process that runs a select loop (the arbiter).

    ``fds()`` are what to wait on; ``handle(ready)`` serves those of them that are
    readable. Nothing blocks: connections are non-blocking, each is served once its
    request line is complete (or dropped after ``TIMEOUT`` or ``MAX_REQUEST`` bytes).
    ``extra`` is one more connected socket whose lines are requests too (the front's end
    of a socketpair, all-in-one): it stays open and gets a reply per line.
    """

    def __init__(self, listener: socket.socket | None, commands: Commands,
                 extra: socket.socket | None = None) -> None:
        self.listener = listener
        self.commands = commands
        self.extra = extra
        self.conns: dict[int, tuple[socket.socket, bytearray, float]] = {}
        if listener is not None:
            listener.setblocking(False)
        if extra is not None:
            extra.setblocking(False)
            self.conns[extra.fileno()] = (extra, bytearray(), 0.0)

    def fds(self) -> list[int]:
        fds = list(self.conns)
        if self.listener is not None:
            fds.append(self.listener.fileno())
        return fds

    def timeout(self, now: float) -> float | None:
        """Seconds until the next connection expires, or None."""
        deadlines = [d for _, _, d in self.conns.values() if d]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def handle(self, ready: list[int]) -> None:
        now = time.monotonic()
        for fd in ready:
            if self.listener is not None and fd == self.listener.fileno():
                self._accept(now)
            elif fd in self.conns:
                self._read(fd)
        for fd, (_, _, deadline) in list(self.conns.items()):
            if deadline and now > deadline:
                self._close(fd)

    def _accept(self, now: float) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                    return
                raise
            conn.setblocking(False)
            self.conns[conn.fileno()] = (conn, bytearray(), now + TIMEOUT)

    def _read(self, fd: int) -> None:
        sock, buf, deadline = self.conns[fd]
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(fd)
            return
        buf += data
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            reply = self.commands.run(line)
            try:
                sock.setblocking(True)
                sock.settimeout(TIMEOUT)
                sock.sendall(reply)
                sock.setblocking(False)
            except OSError:
                self._close(fd)
                return
            if sock is not self.extra:
                self._close(fd)
                return
        if len(buf) > MAX_REQUEST:
            self._close(fd)

    def _close(self, fd: int) -> None:
        sock, _, _ = self.conns.pop(fd)
        if sock is self.extra:
            self.extra = None
        sock.close()

    def close(self, path: str | None = None) -> None:
        for fd in list(self.conns):
            self._close(fd)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass


def wait(server: ControlServer | None, fds: list[int], seconds: float) -> list[int]:
    """``select`` on ``fds`` and the control server's; serve the control ones. The
    readable ones of ``fds``."""
    watch = list(fds) + (server.fds() if server is not None else [])
    if server is not None:
        left = server.timeout(time.monotonic())
        if left is not None:
            seconds = min(seconds, left)
    try:
        ready, _, _ = select.select(watch, [], [], seconds)
    except InterruptedError:
        return []
    if server is not None:
        server.handle([fd for fd in ready if fd not in fds])
    return [fd for fd in ready if fd in fds]
