"""Server processes for the benchmarks: start, wait until ready, read /proc, stop by PID.

Shared by ``bench/compare.py`` and ``bench/memory.py`` (run them as scripts, so this module
is importable as ``servers``). Usage::

    with Launcher() as launcher:
        server = launcher.start("wsgi_zmq", [sys.executable, "-m", "wsgi_zmq", ...])
        url = server.wait_for(LISTENING, timeout=30).group(1)
        wait_http(url, server, timeout=30)
        cpu_seconds(server.pid)
    # every process started here, and every process they started, is stopped by PID:
    # TERM, then KILL after a deadline, also on Ctrl-C, SIGTERM or an error.

Every server runs in its own session, so a Ctrl-C on the terminal reaches only the
benchmark, which then stops the servers itself, master first. Readiness is always a log line
or an HTTP answer that is polled for, never a fixed sleep. Nothing here kills by name.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from types import FrameType, TracebackType

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: The log lines of wsgi_zmq (``wsgi_zmq/arbiter.py``, ``front/server.py``, ``dispatcher.py``)
#: and gunicorn that say where a server listens and which processes it runs.
LISTENING = re.compile(r"Listening at: (https?://\S+?)(?:,\S+)? \((\d+)\)")
BOOTING_FRONT = re.compile(r"Booting front with pid: (\d+)")
BOOTING_WORKER = re.compile(r"Booting worker with pid: (\d+)")
WORKER_CONNECTED = re.compile(r"Worker (\d+)@\S+ connected")

#: Lines kept from a server's log; readiness lines come first, so the cap loses nothing.
_MAX_LOG_LINES = 20000
_STOP_SECONDS = 15.0
_KILL_SECONDS = 5.0


class BenchError(Exception):
    """A server or a load run did not behave; the message says which and why."""


# -- /proc -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the benchmarks use."""

    pid: int
    state: str
    ppid: int
    cpu: float  # utime + stime (fields 14 and 15), in seconds
    starttime: int  # field 22, clock ticks after boot: tells a reused PID apart


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/PID/stat`` of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after its last ")".
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); field N is fields[N - 3]
    return ProcStat(pid, fields[0], int(fields[1]),
                    (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[19]))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used, or None if it is gone."""
    stat = read_stat(pid)
    return None if stat is None else stat.cpu


def read_memory(pid: int) -> dict[str, int] | None:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of a process in bytes, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.readlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    memory = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(value.split()[0]) * 1024
    return memory


def descendants(pid: int) -> list[int]:
    """Every live descendant of a process, found by scanning ``/proc``."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                parents.setdefault(stat.ppid, []).append(stat.pid)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def is_alive(pid: int, starttime: int) -> bool:
    """True if ``pid`` is still the process that started at ``starttime`` and not a zombie."""
    stat = read_stat(pid)
    return stat is not None and stat.starttime == starttime and stat.state != "Z"


# -- server processes ----------------------------------------------------------------------

class Server:
    """One server: its master process, the log it writes, and the PIDs it reports."""

    name: str
    proc: subprocess.Popen[bytes]
    lines: list[str]
    roles: dict[str, list[int]]
    seen: dict[int, int]  # PID -> starttime of every process of the tree stop() found
    _cond: threading.Condition
    _eof: bool

    def __init__(self, name: str, argv: list[str], cwd: str = REPO,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.lines = []
        self.roles = {}
        self.seen = {}
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        threading.Thread(target=self._read_log, name=f"log-{name}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_log(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                if len(self.lines) < _MAX_LOG_LINES:
                    self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float, count: int = 1,
                 start: int = 0) -> list[re.Match[str]]:
        """Wait until ``count`` log lines (from line ``start``) match ``pattern``; return
        the matches. Raises BenchError if the server exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matches = [m for m in map(pattern.search, self.lines[start:]) if m]
                if len(matches) >= count:
                    return matches[:count]
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "exited" if self._eof else f"did not log it within {timeout:g} s"
                    raise BenchError(f"{self.name}: waiting for /{pattern.pattern}/: the "
                                     f"server {why}\n{self.tail()}")
                self._cond.wait(min(left, 1.0))

    def tail(self, count: int = 20) -> str:
        with self._cond:
            return "\n".join("    " + line for line in self.lines[-count:])

    def stop(self, timeout: float = _STOP_SECONDS) -> None:
        """Stop the master with TERM (KILL after ``timeout``), then every process of the
        tree still alive, each by PID: TERM, then KILL after a deadline."""
        # every process of the tree seen so far, so that a stop that is interrupted and
        # called again still finds the children of a master that is gone by then
        tree = self.seen
        for pid in descendants(self.pid) + [p for ps in self.roles.values() for p in ps]:
            stat = read_stat(pid)
            if stat is not None:
                tree.setdefault(pid, stat.starttime)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(_KILL_SECONDS)
        for sig, seconds in ((signal.SIGTERM, timeout), (signal.SIGKILL, _KILL_SECONDS)):
            alive = [pid for pid, start in tree.items() if is_alive(pid, start)]
            for pid in alive:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + seconds
            while alive and time.monotonic() < deadline:
                time.sleep(0.05)
                alive = [pid for pid in alive if is_alive(pid, tree[pid])]
            if not alive:
                return
        raise BenchError(f"{self.name}: processes {alive} survived SIGKILL")


class Launcher:
    """Starts servers and stops every one of them on exit, whatever the exit."""

    servers: list[Server]

    def __init__(self) -> None:
        self.servers = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: str = REPO) -> Server:
        server = Server(name, argv, cwd=cwd, env=env)
        self.servers.append(server)
        return server

    def stop(self, server: Server) -> None:
        """Stop one server. If that is interrupted, the server stays on the list and
        ``__exit__`` stops it."""
        server.stop()
        self.servers.remove(server)

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stop every server still running. Ctrl-C, TERM and HUP are ignored meanwhile: each
        stop has deadlines, and a second Ctrl-C must not leave processes behind."""
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
        errors: list[BenchError] = []
        try:
            for server in reversed(list(self.servers)):
                try:
                    self.stop(server)
                except BenchError as error:
                    errors.append(error)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if errors and exc is None:
            raise errors[0]


def exit_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit, so that cleanup code runs for them too
    (Ctrl-C already raises KeyboardInterrupt)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def wait_http(url: str, server: Server, timeout: float, path: str = "/") -> bytes:
    """Poll ``GET url+path`` until it answers 200; return the body. Raises BenchError if
    the server exits, answers 4xx, or ``timeout`` passes first."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    deadline = time.monotonic() + timeout
    error = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited with {server.proc.returncode}\n"
                             f"{server.tail()}")
        if parts.scheme == "https":  # a test certificate: checking it is not the point
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=2,
                context=ssl._create_unverified_context())  # noqa: S323
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status == 200:
                return body
            if response.status < 500:  # up, but this is not the answer we wait for
                raise BenchError(f"{server.name}: GET {url}{path}: status {response.status}")
            error = f"status {response.status}"
        except OSError as exc:
            error = repr(exc)
        finally:
            conn.close()
        time.sleep(0.05)
    raise BenchError(f"{server.name}: GET {url}{path}: {error} after {timeout:g} s\n"
                     f"{server.tail()}")


def free_port() -> int:
    """A loopback port free right now, for servers that cannot report the one they bound."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_wsgi_zmq(launcher: Launcher, app: str, workers: int = 1,
                   extra: list[str] | None = None, timeout: float = 30.0,
                   probe: str = "/", source: str | None = None,
                   name: str = "wsgi_zmq") -> tuple[Server, str]:
    """Start ``python -m wsgi_zmq APP`` on a free loopback port and wait until it listens,
    every worker is connected to the front and the app answers ``GET probe`` with 200.

    ``source`` is another checkout to run wsgi_zmq (and the app) from, first on the
    import path; by default this one. Returns the server, whose ``roles`` hold the PIDs of
    the ``master``, the ``front`` and each ``worker`` (from the master's log lines), and the
    URL it listens at.
    """
    argv = [sys.executable, "-m", "wsgi_zmq", app, "--workers", str(workers),
            "--bind", "127.0.0.1:0", "--backend", "tcp://127.0.0.1:*", *(extra or [])]
    env = None
    if source is not None:
        env = dict(os.environ, PYTHONPATH=source)
    server = launcher.start(name, argv, env=env, cwd=source or REPO)
    front = int(server.wait_for(BOOTING_FRONT, timeout)[0].group(1))
    url = server.wait_for(LISTENING, timeout)[0].group(1)
    pids = [int(m.group(1)) for m in server.wait_for(BOOTING_WORKER, timeout, workers)]
    server.roles = {"master": [server.pid], "front": [front], "worker": pids}
    connected = {int(m.group(1)) for m in server.wait_for(WORKER_CONNECTED, timeout, workers)}
    if connected != set(pids):
        raise BenchError(f"wsgi_zmq: workers {sorted(connected)} connected, but the master "
                         f"booted {pids}\n{server.tail()}")
    wait_http(url, server, timeout, probe)
    return server, url


class Baseline:
    """A temporary ``git worktree`` of one revision, removed on exit."""

    def __init__(self, rev: str) -> None:
        self.rev = rev
        self.path = tempfile.mkdtemp(prefix="wsgi_zmq-baseline-")

    def __enter__(self) -> str:
        result = subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", self.path,
                                 self.rev], capture_output=True, text=True, timeout=120,
                                check=False)
        if result.returncode != 0:
            shutil.rmtree(self.path, ignore_errors=True)
            raise BenchError(f"git worktree add {self.rev}: {result.stderr.strip()}")
        return self.path

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", self.path],
                       capture_output=True, timeout=120, check=False)
        shutil.rmtree(self.path, ignore_errors=True)
