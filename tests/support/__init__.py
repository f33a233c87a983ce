"""Test support: real processes, polling with deadlines, a raw HTTP client.

Nothing here mocks a socket: ``LiveProcess`` runs a real entry point in a new session with
its output in a log file, ``wait_for_log`` polls that file, and ``stop`` ends the process by
its PID (TERM, then KILL of its process group after a deadline).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httptools

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


def poll_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Call ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    """A raw GET request for ``path``, with ``extra`` header lines (each ending CRLF)."""
    return f"GET {path} HTTP/{version}\r\nHost: test\r\n{extra}\r\n".encode()


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process? (a zombie still answers kill(0): it counts as dead)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def logged_pids(proc: LiveProcess, kind: str = "worker") -> list[int]:
    """The pids in ``Booting <kind> with pid: N`` lines of a master's log, in order."""
    return [int(p) for p in re.findall(rf"Booting {kind} with pid: (\d+)", proc.log())]


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process a test starts. ``WSGI_ZMQ_CHECK=1`` unless ``extra``
    sets it to "": every front, master and worker asserts its invariants every turn of its
    loop (``Dispatcher.check``, ``FrontServer.check``, ``Arbiter.check``, ``Worker.check``),
    and ``Stack.stop_all`` fails the test if one failed (``invariant_failures``)."""
    env = dict(os.environ)
    paths = [str(ROOT), str(TESTS)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("WSGI_ZMQ_CMD_ARGS", None)
    env.setdefault("WSGI_ZMQ_CHECK", "1")
    if extra:
        env.update(extra)
    return env


def keys(directory: Path, *names: str) -> dict[str, tuple[Path, Path]]:
    """Key pairs made with the project's own tool: name -> (public file, secret file)."""
    made = {}
    for name in names:
        subprocess.run([sys.executable, "-m", "wsgi_zmq.keys", "generate", name, "--dir",
                        str(directory)], check=True, capture_output=True, env=python_env(),
                       timeout=60)
        made[name] = (directory / f"{name}.key", directory / f"{name}.key_secret")
    return made


class LiveProcess:
    """A real process started in its own session, logging to a file."""

    def __init__(self, args: list[str], log_path: Path, cwd: Path | str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd or ROOT,
                                     env=python_env(env), start_new_session=True)
        self.pid = self.proc.pid

    @classmethod
    def python(cls, module_args: list[str], log_path: Path, **kwargs: Any) -> LiveProcess:
        return cls([sys.executable, "-m", *module_args], log_path, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> re.Match[str]:
        """Poll the log until ``pattern`` matched ``count`` times; return the last match."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            matches = list(regex.finditer(self.log()))
            if len(matches) >= count:
                return matches[count - 1]
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}) before "
                                     f"logging {pattern!r}:\n{self.log()[-3000:]}")
            return None

        return poll_until(found, timeout, message=f"{pattern!r} in {self.log_path.name}")

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """End the process by its PID (``sig`` None: it was already signalled); KILL its
        whole session if it outlives ``timeout``."""
        if self.proc.poll() is None:
            try:
                if sig is not None:
                    os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # children left behind by a crash
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def listening_port(proc: LiveProcess, timeout: float = 20.0) -> int:
    match = proc.wait_for_log(r"Listening at: http://[\d.]+:(\d+)", timeout)
    return int(match.group(1))


def backend_endpoint(proc: LiveProcess, timeout: float = 20.0) -> str:
    match = proc.wait_for_log(r"Backend at: (\S+)", timeout)
    return match.group(1).split(",")[0]


# -- raw HTTP -----------------------------------------------------------------------------

class Response:
    """One parsed HTTP response."""

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False
        self.version = ""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.decode("latin-1").lower() == name.lower():
                return value.decode("latin-1")
        return None

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes complete={self.complete}>"


class ResponseReader:
    """Parse responses from a byte stream with httptools (the client side)."""

    def __init__(self, head_requests: int = 0) -> None:
        self.responses: list[Response] = []
        self._current: Response | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_begin(self) -> None:
        self._current = Response()
        self._chunks = []

    def on_status(self, status: bytes) -> None:
        assert self._current is not None
        self._current.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._current is not None
        self._current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._current is not None
        self._current.status = self._parser.get_status_code()
        self._current.version = self._parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def finish(self) -> None:
        """The connection closed: a close-delimited body (RFC 9112 section 6.3) ends here."""
        current = self._current
        if current is not None and current.status and current.header("Content-Length") is None \
                and current.header("Transfer-Encoding") is None:
            self.on_message_complete()

    def on_message_complete(self) -> None:
        assert self._current is not None
        self._current.body = b"".join(self._chunks)
        self._current.complete = True
        self.responses.append(self._current)
        self._current = None


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_responses(sock: socket.socket, count: int, timeout: float = 10.0,
                   head: bool = False) -> tuple[list[Response], bool]:
    """Read until ``count`` complete responses arrived or the peer closed.

    Returns the responses and whether the connection was closed. For a response to HEAD
    (``head=True``) the body is not expected, whatever the headers say.
    """
    sock.settimeout(timeout)
    reader = ResponseReader()
    closed = False
    buffered = b""
    deadline = time.monotonic() + timeout
    while len(reader.responses) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {len(reader.responses)} of {count} responses")
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            closed = True
            break
        if not data:
            closed = True
            reader.finish()
            break
        buffered += data
        if head:
            while b"\r\n\r\n" in buffered and len(reader.responses) < count:
                block, buffered = buffered.split(b"\r\n\r\n", 1)
                response = Response()
                lines = block.split(b"\r\n")
                response.version = lines[0].split(b" ")[0].decode()
                response.status = int(lines[0].split(b" ")[1])
                response.headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
                response.complete = True
                reader.responses.append(response)
            continue
        try:
            reader.feed(data)
        except httptools.HttpParserError as exc:
            raise AssertionError(f"malformed response: {exc}: {buffered[-500:]!r}") from exc
    return reader.responses, closed


def exchange(port: int, data: bytes, count: int = 1, timeout: float = 10.0,
             head: bool = False) -> tuple[list[Response], bool]:
    """Send raw bytes on a new connection; read ``count`` responses (or until closed)."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        return read_responses(sock, count, timeout, head)


def send_async(port: int, data: bytes, results: list, timeout: float = 20.0) -> threading.Thread:
    """Send a request on its own connection in a thread; append (status, body) or None."""

    def run() -> None:
        try:
            responses, closed = exchange(port, data, timeout=timeout)
            results.append((responses[0].status, responses[0].body) if responses else None)
        except OSError:
            results.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_closed(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True once the peer closed the connection (reads EOF or a reset)."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# -- a stack of live processes ------------------------------------------------------------

class Stack:
    """Start real wsgi_zmq processes for one test and stop them all at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[LiveProcess] = []
        self.count = 0

    def start(self, module_args: list[str], name: str, **kwargs: Any) -> LiveProcess:
        self.count += 1
        proc = LiveProcess.python(module_args, self.tmp_path / f"{self.count}-{name}.log",
                                  **kwargs)
        self.procs.append(proc)
        return proc

    def front(self, *args: str, **kwargs: Any) -> tuple[LiveProcess, int, str]:
        """A front on free ports: (process, HTTP port, backend endpoint)."""
        proc = self.start(["wsgi_zmq.front", "--bind", "127.0.0.1:0",
                           "--backend", "tcp://127.0.0.1:*", *args], "front", **kwargs)
        return proc, listening_port(proc), backend_endpoint(proc)

    def handler(self, app: str, endpoint: str, *args: str, **kwargs: Any) -> LiveProcess:
        return self.start(["wsgi_zmq.handler", app, "--connect", endpoint, *args], "handler",
                          **kwargs)

    def serve(self, app: str = "apps.echo:router", front_args: tuple[str, ...] = (),
              handler_args: tuple[str, ...] = (), workers: int = 1,
              env: dict[str, str] | None = None) -> tuple[LiveProcess, LiveProcess, int]:
        """A front and a handler pool, ready: (front, handler, HTTP port). ``env`` is
        added to both processes' environment."""
        front, port, endpoint = self.front(*front_args, env=env)
        handler = self.handler(app, endpoint, "--workers", str(workers), *handler_args,
                               env=env)
        front.wait_for_log(r"Worker \d+@\S+ connected", count=workers)
        return front, handler, port

    def all_in_one(self, app: str = "apps.echo:router", *args: str, workers: int = 1,
                   **kwargs: Any) -> tuple[LiveProcess, int]:
        proc = self.start(["wsgi_zmq", app, "--bind", "127.0.0.1:0",
                           "--backend", "tcp://127.0.0.1:*", "--workers", str(workers),
                           *args], "all", **kwargs)
        port = listening_port(proc)
        proc.wait_for_log(r"Worker \d+@\S+ connected", count=workers)
        return proc, port

    def stop_all(self) -> None:
        """TERM every process still running at once, then wait for each (``stop``); then
        fail if a process logged a broken invariant (``invariant_failures``)."""
        for proc in self.procs:
            if proc.alive():
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in reversed(self.procs):
            proc.stop(None)
        failures = [f"{proc.log_path.name}:\n{excerpt}" for proc in self.procs
                    for excerpt in invariant_failures(proc.log())]
        assert not failures, "a process broke an invariant:\n" + "\n".join(failures)


#: For a test that measures latency: the processes skip the invariant checks, a debugging
#: aid whose cost grows with what the front holds (500 connections, a flood of frames).
UNCHECKED: Final = {"WSGI_ZMQ_CHECK": ""}

#: How a broken invariant shows in a log: ``check()``'s AssertionError, or a refused state
#: change (``StateError`` of an exchange or a connection, ``PhaseError`` of a worker's
#: request), at the start of a traceback's last line.
_BROKEN = re.compile(r"^(?:AssertionError|\S*(?:StateError|PhaseError))\b.*$", re.MULTILINE)


def invariant_failures(log: str) -> list[str]:
    """The lines of ``log`` (and the ten before each) that show a broken invariant."""
    lines = log.splitlines()
    found = []
    for match in _BROKEN.finditer(log):
        end = log.count("\n", 0, match.start())
        found.append("\n".join(lines[max(0, end - 10):end + 1]))
    return found


def term_during_request(proc: LiveProcess, port: int, tmp_path: Path) -> Response:
    """Start a 1 s request, SIGTERM ``proc`` once the app runs it, and return the answer
    (a graceful stop must finish it); ``proc`` must then exit 0."""
    mark = tmp_path / "running"
    with connect(port) as sock:
        sock.sendall(get(f"/slow?seconds=1&mark={mark}"))
        poll_until(mark.exists, 10, message="the request to run")
        proc.send_signal(signal.SIGTERM)
        [response], _ = read_responses(sock, 1, timeout=30)
    assert proc.wait(30) == 0
    return response
