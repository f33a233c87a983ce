"""The supervisor: forks handler workers (and, all-in-one, the front) and keeps them running.

Usage::

    Arbiter(cfg, app_uri="myapp:app", endpoints=["tcp://127.0.0.1:5556"]).run()
    Arbiter(cfg, app_uri="myapp:app", front=True).run()       # python -m wsgi_zmq
    Arbiter(cfg, app_uri="jobs:resize", endpoints=[...]).run()  # cfg.job = "jobs:resize"

Each worker is ``build_worker(cfg, ...)`` (``wsgi_zmq.handler.worker``): ``worker_class``
picks how it runs requests and ``job`` whether it hosts a WSGI app or a job function; the
arbiter treats every kind alike (``app_uri`` is what the worker loads, and names the
processes unless ``proc_name`` is set).

Signals to the master, as gunicorn operators expect:

========  =================================================================================
TERM      graceful stop: the front (all-in-one) finishes its requests first, then each
          worker says BYE to its fronts, finishes what it holds and exits; anything still
          running after ``graceful_timeout`` is killed
INT/QUIT  fast stop: children are told to exit now, killed if still there after 2 seconds
HUP       reload: re-read the configuration, fork new workers (which import the app
          afresh unless ``preload_app``), and retire the old ones once every new one is
          connected to its fronts; if the new ones cannot load the app, keep the old ones.
          All-in-one, the front reads ``curve_allow`` again
TTIN      one more worker
TTOU      one worker fewer (the oldest; it drains like on TERM)
USR1      reopen the log files, here and in every child
USR2      (handler pool only) start a new master from the same command line, beside this
          one: the way to upgrade wsgi_zmq itself; TERM the old one once the new one serves
CHLD      reap exited children; replace workers and the front that died
========  =================================================================================

Signal handlers only queue the signal and wake the main loop; the loop calls
``handle_<name>()``. The master never imports gevent and creates no zmq context: workers
and the front build theirs after the fork. Every loop turn it also looks at each worker's
liveness file (``WorkerTmp``): a worker silent for longer than ``timeout`` gets SIGABRT,
then SIGKILL. A worker that exits with ``EXIT_CONFIG`` (its app would not import) or
``EXIT_WORKER_BOOT`` at start stops the pool with that code instead of being forked again
and again.

Every worker exit the master did not ask for is counted in ``restarts`` by reason:
``timeout`` (the master aborted it for being silent past ``timeout``), ``max_requests`` (it
recycled itself and said so in its liveness file) or ``crash`` (any other status but exit
code 0, or a signal). The master keeps its figures (``workers``, ``restarts``) in a JSON
file beside the liveness files (``stats_path``), which the workers pass on to their
fronts.

A reload is a state of the pool: steady, or in progress while ``retiring`` holds the
workers a HUP replaces. Each worker's standing in it (``standing``, the one place it is
decided) is CURRENT, NEW (forked for the reload in progress), RETIRING or STOPPING;
``check()`` asserts the invariants that tie them together (``WSGI_ZMQ_CHECK=1`` runs it
every turn of the loop).

With ``control_socket``, a handler pool's master serves it from its select loop
(``status``, ``workers N``, ``reload``; see ``wsgi_zmq.control``). All-in-one, the master
binds it but the front serves it, and forwards ``workers``, ``reload`` and a ``status``
request to the master over a socketpair.

Hooks from the config (``on_starting``, ``when_ready``, ``pre_fork``, ``post_fork``,
``child_exit``, ``worker_exit``, ``nworkers_changed``, ``on_reload``, ``pre_exec``,
``on_exit``) are called with this object as ``server``: it has ``cfg``, ``log``, ``pid``,
``num_workers`` and ``children`` (pid -> ``Child``, whose ``worker`` is the worker object).
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import re
import select
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, Final

from wsgi_zmq import control
from wsgi_zmq import log as wlog
from wsgi_zmq.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_WORKER_BOOT,
    AppImportError,
    ConfigError,
)
from wsgi_zmq.process import Pidfile, set_owner, set_process_title
from wsgi_zmq.protocol import RESTART_REASONS

log = logging.getLogger("wsgi_zmq.error.arbiter")

SIGNALS = [signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM, signal.SIGTTIN,
           signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD]
SIG_NAMES: dict[int, str] = {sig: sig.name[3:].lower() for sig in SIGNALS}

_FAST_STOP_SECONDS = 2.0
#: After SIGABRT a worker answers its request 504, runs worker_abort and exits; it gets this
#: long before SIGKILL, which would lose the 504 (the front would then retry the request).
_ABORT_GRACE_SECONDS = 2.0
_FRONT_START_SECONDS = 30.0
_READY_BIT = 0o2
_RECYCLED_BIT = 0o4  # the worker is leaving for max_requests (``restart_reason``)
#: How a master started by USR2 finds the control socket the old one passes on: "FD:PATH".
_CONTROL_FD_ENV = "WSGI_ZMQ_CONTROL_FD"


def tmp_dir() -> str:
    """Where the liveness files and the pool's stats file live: ``/dev/shm`` where there
    is one (no disk is touched), else the temporary directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


_STATS_NAME = re.compile(r"wsgi_zmq-pool-(\d+)\.json\Z")
#: A master touches its stats file this often, figures changed or not (``write_stats``) ...
STATS_TOUCH_SECONDS: Final = 30.0
#: ... so one untouched for this long, whose PID is gone, belongs to a dead master.
STATS_STALE_SECONDS: Final = 120.0


def remove_stale_stats(directory: str) -> None:
    """Remove the stats files (``wsgi_zmq-pool-PID.json``) of pool masters that are gone:
    a master ended by SIGKILL cannot remove its own. Gone means both: no process has the
    PID here, and the file was not touched for ``STATS_STALE_SECONDS`` (a master in another
    PID namespace that shares the directory keeps touching its own)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for name in names:
        match = _STATS_NAME.match(name)
        if match is None:
            continue
        path = os.path.join(directory, name)
        try:
            os.kill(int(match.group(1)), 0)
            continue  # alive (or another user's: kill is refused)
        except ProcessLookupError:
            pass
        except (OSError, OverflowError):
            continue
        try:
            if now - os.stat(path).st_mtime < STATS_STALE_SECONDS:
                continue
            os.unlink(path)
            log.info("Removed %s: its pool master is gone", name)
        except OSError:
            pass


class HaltServer(Exception):
    def __init__(self, reason: str, exit_status: int = EXIT_FAILURE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status


class WorkerTmp:
    """A worker's liveness file, unlinked at once and shared through the fork.

    The worker changes the file's mode to say it is alive (the change moves its ctime),
    sets a bit of the mode once it is connected to every front and another once it recycles
    itself (``max_requests``); the master reads them with one ``fstat``. Kept in
    ``/dev/shm`` where there is one, so no disk is touched.
    """

    def __init__(self, cfg: Any) -> None:
        fd, path = tempfile.mkstemp(prefix="wsgi_zmq-", dir=tmp_dir())
        os.unlink(path)
        if cfg.user is not None or cfg.group is not None:
            os.fchown(fd, cfg.user if cfg.user is not None else -1,
                      cfg.group if cfg.group is not None else -1)
        self.fd = fd
        self.spinner = 0
        self.ready = False
        self.recycled = False

    def notify(self) -> None:
        self.spinner ^= 1
        os.fchmod(self.fd, self.spinner | (_READY_BIT if self.ready else 0)
                  | (_RECYCLED_BIT if self.recycled else 0))

    def set_recycled(self) -> None:
        self.recycled = True
        self.notify()

    def is_recycled(self) -> bool:
        try:
            return bool(os.fstat(self.fd).st_mode & _RECYCLED_BIT)
        except OSError:
            return False

    def set_ready(self) -> None:
        if not self.ready:
            self.ready = True
            self.notify()

    def last_update(self) -> float:
        return os.fstat(self.fd).st_ctime

    def is_ready(self) -> bool:
        return bool(os.fstat(self.fd).st_mode & _READY_BIT)

    def report(self, busy: float, queued: int) -> None:
        """The worker's load: its busy share and the queue depth its fronts announce."""
        os.pwrite(self.fd, b"%.3f %d\n" % (busy, queued), 0)

    def read_report(self) -> tuple[float, int] | None:
        try:
            busy, queued = os.pread(self.fd, 64, 0).split()[:2]
            return float(busy), int(queued)
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class Autoscaler:
    """Decides, from the workers' reports, when the pool grows or shrinks by one.

    Up while a front's queue holds requests or the workers are busy more than
    ``UP_BUSY`` of the time; down while nothing waits and they are busy less than
    ``DOWN_BUSY``; never beyond ``min_workers``/``max_workers``, and at most once per
    ``scale_cooldown``. The busy share is smoothed over a few seconds (EWMA), so one quiet
    second does not shrink the pool.
    """

    UP_BUSY = 0.8
    DOWN_BUSY = 0.3
    SMOOTHING = 0.3

    def __init__(self, cfg: Any) -> None:
        self.low: int = cfg.min_workers
        self.high: int = max(cfg.max_workers, cfg.min_workers)
        self.cooldown: float = cfg.scale_cooldown
        self.changed = time.monotonic()
        self.busy = 0.0
        self.queued = 0

    def clamp(self, count: int) -> int:
        return max(self.low, min(self.high, count))

    def decide(self, count: int, reports: list[tuple[float, int]]) -> int:
        """+1, -1 or 0 for a pool of ``count`` workers with these (busy, queued) reports."""
        if not reports:
            return 0
        mean = sum(busy for busy, _ in reports) / len(reports)
        self.busy += (mean - self.busy) * self.SMOOTHING
        self.queued = max(queued for _, queued in reports)
        now = time.monotonic()
        if now - self.changed < self.cooldown:
            return 0
        change = 0
        if (self.queued or self.busy > self.UP_BUSY) and count < self.high:
            change = 1
        elif not self.queued and self.busy < self.DOWN_BUSY and count > self.low:
            change = -1
        elif count != self.clamp(count):
            change = self.clamp(count) - count
        if change:
            self.changed = now
        return change


#: A worker's standing in a reload (``Arbiter.standing``): serving and not replaced
#: (CURRENT), forked for the reload in progress (NEW), waiting to be replaced (RETIRING),
#: told to stop (STOPPING).
CURRENT: Final = "current"
NEW: Final = "new"
RETIRING: Final = "retiring"
STOPPING: Final = "stopping"
_CHECK: Final = bool(os.environ.get("WSGI_ZMQ_CHECK"))


class Child:
    """A forked child the arbiter watches."""

    __slots__ = ("pid", "kind", "age", "booted", "stopping", "worker", "tmp", "aborted",
                 "reload")

    def __init__(self, pid: int, kind: str, age: int, worker: Any = None,
                 tmp: WorkerTmp | None = None, reload: int = 0) -> None:
        self.pid = pid
        self.kind = kind  # "worker" or "front"
        self.age = age
        self.booted = time.monotonic()
        self.stopping = False
        self.worker = worker
        self.tmp = tmp
        self.aborted = 0.0  # when the master sent SIGABRT
        self.reload = reload  # the HUP this worker was forked for, 0 for none


class Arbiter:
    """See the module docstring."""

    def __init__(self, cfg: Any, app_uri: str | None, endpoints: list[str] | None = None,
                 front: bool = False, reload_config: Callable[[], Any] | None = None) -> None:
        self.cfg = cfg
        self.app_uri = app_uri
        self.endpoints = list(endpoints or [])
        self.with_front = front
        self.reload_config = reload_config
        self.num_workers: int = cfg.workers
        self.children: dict[int, Child] = {}
        self.sig_queue: list[int] = []
        self.wake_r = self.wake_w = -1
        self.worker_age = 0
        self.pid = os.getpid()
        self.log = log  # for hooks written for gunicorn: server.log.info(...)
        self.listeners: list[socket.socket] = []
        self.front_endpoints: list[str] = []
        self.stopping = False
        self.app: Any = None  # the app, when preloaded in the master
        self.pidfile: Pidfile | None = None
        self.reexec_pid = 0
        self.reloads = 0
        self.proc_name: str | None = cfg.proc_name or app_uri  # as gunicorn: the app
        self.retiring: list[Child] = []  # old workers waiting for a reload to be ready
        self.retire_deadline = 0.0
        self.scaler = Autoscaler(cfg) if cfg.max_workers else None
        if self.scaler is not None:
            self.num_workers = self.scaler.clamp(self.num_workers)
        #: worker exits the master did not ask for, by reason (see ``restart_reason``)
        self.restarts: dict[str, int] = dict.fromkeys(RESTART_REASONS, 0)
        self.reload_requests = 0  # HUPs and ``reload`` commands (``reloads`` is internal)
        self.stats_path = os.path.join(tmp_dir(), f"wsgi_zmq-pool-{self.pid}.json")
        self.stats_written = b""  # what the stats file holds, b"" before the first write
        self.stats_touched = 0.0  # when it was last written or touched (monotonic)
        self.stats_failed = False
        # the control socket (``control_socket``): the listener this master bound (or was
        # given by the master before it, USR2), its path to remove at exit, and the server
        # of its select loop (handler pool: the listener; all-in-one: the link to the front)
        self.control_listener: socket.socket | None = None
        self.control_path: str | None = None
        self.control: control.ControlServer | None = None
        self.commands = control.Commands({
            "status": (self._command(self.command_status), "",
                       "the pool: its master, workers and restarts"),
            "workers": (self._command(self.command_workers), "N",
                        "run N workers (as TTIN/TTOU would)"),
            "reload": (self._command(self.command_reload), "",
                       "replace the workers with new ones (as HUP would)"),
        })

    # -- signals ------------------------------------------------------------------------

    def init_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if len(self.sig_queue) < 10:
            self.sig_queue.append(signum)
        self.wakeup()

    def wakeup(self) -> None:
        try:
            os.write(self.wake_w, b".")
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EINTR):
                raise

    def sleep(self, seconds: float = 1.0) -> None:
        """Wait up to ``seconds`` for a signal; answer the control socket meanwhile."""
        try:
            if control.wait(self.control, [self.wake_r], seconds):
                while os.read(self.wake_r, 64):
                    pass
        except (BlockingIOError, InterruptedError):
            pass

    def call_hook(self, name: str, *args: Any) -> None:
        """Run a server hook from the config; an exception in it is logged, not raised."""
        try:
            getattr(self.cfg, name)(*args)
        except Exception:
            log.exception("Exception in the %s hook", name)

    # -- the main loop ------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; return the exit status."""
        set_process_title("master" if not self.with_front else "master (all-in-one)",
                          self.proc_name)
        self.init_signals()
        status = EXIT_OK
        try:
            self.call_hook("on_starting", self)
            if self.cfg.pidfile:
                self.pidfile = Pidfile(self.cfg.pidfile)
                self.pidfile.create(self.pid)
            self.bind_control()
            remove_stale_stats(os.path.dirname(self.stats_path))
            self.write_stats()
            if self.cfg.preload_app:
                self.app = self.load_app()
            if self.with_front:
                self.bind_listeners()
                self.spawn_front()
            log.info("Handler pool %d serving %s with %d worker(s)", self.pid,
                     self.app_uri, self.num_workers)
            self.manage_workers()
            self.write_stats()
            self.call_hook("when_ready", self)
            while True:
                if _CHECK:
                    self.check()
                sig = self.sig_queue.pop(0) if self.sig_queue else None
                if sig is None:
                    self.sleep()
                    self.reap_children()
                    self.murder_workers()
                    self.check_retiring()
                    self.autoscale()
                    self.manage_workers()
                    self.write_stats()
                    continue
                handler = getattr(self, "handle_" + SIG_NAMES[sig], None)
                if handler is not None:
                    handler()
                self.wakeup()
        except StopIteration:
            status = EXIT_OK
        except HaltServer as exc:
            status = self.halt(exc.reason, exc.exit_status)
        except KeyboardInterrupt:
            self.stop(graceful=False)
        finally:
            self.close_control()
            self.remove_stats()
            self.call_hook("on_exit", self)
            if self.pidfile is not None:
                self.pidfile.unlink(self.pid)
        return status

    def load_app(self) -> Any:
        """Import the app (or the job function) here, for ``preload_app``."""
        from wsgi_zmq.handler.worker import layer_class

        try:
            assert self.app_uri is not None
            return layer_class(self.cfg).load(self.app_uri)
        except AppImportError as exc:
            log.error("%s", exc)
            log.debug("Traceback of the import failure", exc_info=exc.__cause__)
            raise HaltServer("the application failed to load", EXIT_CONFIG) from None

    def halt(self, reason: str, status: int) -> int:
        self.stop(graceful=False)
        if status in (EXIT_OK, EXIT_CONFIG):
            # for EXIT_CONFIG the one line that names the problem is already logged
            log.info("Shutting down: %s", reason)
        else:
            log.error("Shutting down: %s", reason)
        return status

    def handle_chld(self) -> None:
        """A child exited: reap it (the loop replaces it)."""
        self.reap_children()

    def handle_term(self) -> None:
        """Graceful stop."""
        self.stop(graceful=True)
        raise StopIteration

    def handle_int(self) -> None:
        """Fast stop."""
        self.stop(graceful=False)
        raise StopIteration

    handle_quit = handle_int

    def handle_ttin(self) -> None:
        """One more worker."""
        self.set_num_workers(self.num_workers + 1)

    def handle_ttou(self) -> None:
        """One worker fewer (never below one)."""
        if self.num_workers > 1:
            self.set_num_workers(self.num_workers - 1)

    def set_num_workers(self, count: int) -> None:
        old, self.num_workers = self.num_workers, count
        log.info("%d worker(s), was %d", count, old)
        self.call_hook("nworkers_changed", self, count, old)
        self.manage_workers()

    def autoscale(self) -> None:
        """Let the autoscaler (``max_workers``) change the pool's size by one."""
        if self.scaler is None or self.stopping or self.retiring:
            return
        reports = [r for r in (c.tmp.read_report() for c in self.workers()
                               if c.tmp is not None) if r is not None]
        change = self.scaler.decide(self.num_workers, reports)
        if change:
            busy, queued = self.scaler.busy, self.scaler.queued
            log.info("Autoscale: %d worker(s), was %d (queued %d, busy %.0f%%)",
                     self.num_workers + change, self.num_workers, queued, busy * 100)
            self.set_num_workers(self.num_workers + change)

    def handle_usr1(self) -> None:
        """Reopen log files, here and in every child."""
        wlog.reopen(self.cfg)
        for pid in list(self.children):
            self.kill(pid, signal.SIGUSR1)

    def handle_usr2(self) -> None:
        """Start a new master from the same command line, beside this one (handler pool)."""
        if self.with_front:
            log.warning("USR2 is not offered in all-in-one mode (the new front could not "
                        "bind the same backend); use HUP, or run the front and the pools "
                        "apart")
            return
        if self.reexec_pid:
            log.warning("USR2 ignored: the new master %d is still running", self.reexec_pid)
            return
        if self.pidfile is not None:
            self.pidfile.rename(self.pidfile.path + ".oldbin")
        pid = os.fork()
        if pid:
            self.reexec_pid = pid
            log.info("Started a new master, pid %d; TERM this one (%d) once it serves", pid,
                     self.pid)
            return
        self._child_reset(keep_control=True)
        if self.control_listener is not None:
            # the new master serves the same socket (both do until this one exits)
            fd = self.control_listener.fileno()
            os.set_inheritable(fd, True)
            os.environ[_CONTROL_FD_ENV] = f"{fd}:{self.control_path}"
        self.call_hook("pre_exec", self)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

    def handle_hup(self) -> None:
        """Reload: re-read the config, fork new workers, retire the old once they are
        ready (see ``check_retiring``)."""
        log.info("Reloading: new workers replace the %d running", self.num_workers)
        if self.reload_config is not None:
            try:
                cfg = self.reload_config()
            except ConfigError as exc:
                log.error("Reload refused, the configuration is bad: %s", exc)
                return
            self.cfg = cfg
            wlog.setup(cfg)
            if cfg.workers != self.num_workers:
                self.set_num_workers(cfg.workers)
        for child in list(self.children.values()):
            if child.kind == "front":  # it reads curve_allow again
                self.kill(child.pid, signal.SIGHUP)
        self.call_hook("on_reload", self)
        self.reloads += 1
        self.reload_requests += 1
        old = [c for c in self.workers() if not c.reload or c.reload < self.reloads]
        self.retiring = old
        self.retire_deadline = time.monotonic() + max(self.cfg.timeout or 30, 30)
        for _ in range(self.num_workers):
            self.spawn_worker(reload=self.reloads)

    def check_retiring(self) -> None:
        """Retire the workers a HUP replaces once every new one is connected to its fronts
        (or after ``timeout``, at least 30 s, with a warning)."""
        if not self.retiring:
            return
        new = [c for c in self.workers() if c.reload == self.reloads]
        ready = bool(new) and all(c.tmp is not None and c.tmp.is_ready() for c in new)
        late = time.monotonic() > self.retire_deadline
        if not ready and not late:
            return
        if late and not ready:
            log.warning("Reload: the new workers are not all connected in time; retiring "
                        "the old ones anyway")
        for child in self.retiring:
            if self.children.get(child.pid) is child:  # not a new child under a reused pid
                child.stopping = True
                self.kill(child.pid, signal.SIGTERM)
        log.info("Reload done: %d old worker(s) retiring", len(self.retiring))
        self.retiring = []

    # -- the reload's states ------------------------------------------------------------

    def standing(self, child: Child) -> str:
        """``child``'s standing in a reload: CURRENT, NEW, RETIRING or STOPPING."""
        if child.stopping:
            return STOPPING
        if child in self.retiring:
            return RETIRING
        if self.retiring and child.reload == self.reloads:
            return NEW
        return CURRENT

    def check(self) -> None:
        """Assert the invariants of the children and the reload; raise ``AssertionError``.
        Cheap: ``WSGI_ZMQ_CHECK=1`` calls it every turn of the loop."""
        for pid, child in self.children.items():
            assert child.pid == pid, f"child {child.pid} filed under {pid}"
            assert child.kind in ("worker", "front"), f"child {pid} is a {child.kind!r}"
            assert child.reload <= self.reloads, f"worker {pid} of reload {child.reload}"
            if child.kind == "worker":
                assert child.tmp is not None, f"worker {pid} has no liveness file"
        fronts = [c for c in self.children.values() if c.kind == "front" and not c.stopping]
        assert len(fronts) <= 1, f"{len(fronts)} fronts"
        assert self.with_front or not fronts, "a front in a handler pool"
        standings = collections.Counter(self.standing(c) for c in self.workers())
        for child in self.retiring:
            assert child.kind == "worker", f"retiring {child.kind} {child.pid}"
            assert child.reload < self.reloads, \
                f"retiring worker {child.pid} is of the current reload {child.reload}"
        if not self.retiring:
            assert not standings[NEW], "NEW workers without a reload in progress"
        if not self.stopping:
            serving = standings[CURRENT] + standings[NEW]
            assert serving <= self.num_workers, \
                f"{serving} workers serve, {self.num_workers} wanted"

    # -- children -----------------------------------------------------------------------

    def workers(self) -> list[Child]:
        return [c for c in self.children.values() if c.kind == "worker" and not c.stopping]

    def manage_workers(self) -> None:
        """Fork or retire workers until ``num_workers`` are running."""
        if self.stopping:
            return
        if self.with_front and not any(c.kind == "front" for c in self.children.values()):
            self.spawn_front()
        running = [c for c in self.workers() if c not in self.retiring]
        running.sort(key=lambda c: c.age)
        while len(running) < self.num_workers:
            self.spawn_worker(reload=self.reloads if self.retiring else 0)
            running = [c for c in self.workers() if c not in self.retiring]
        while len(running) > self.num_workers:
            oldest = running.pop(0)
            oldest.stopping = True
            self.kill(oldest.pid, signal.SIGTERM)

    def murder_workers(self) -> None:
        """Abort workers silent for longer than ``timeout``: SIGABRT, then SIGKILL."""
        timeout = self.cfg.timeout
        if not timeout:
            return
        now = time.time()
        for child in list(self.children.values()):
            if child.tmp is None:
                continue
            try:
                silent = now - child.tmp.last_update()
            except OSError:
                continue
            if silent <= timeout:
                continue
            if not child.aborted:
                log.critical("WORKER TIMEOUT (pid:%d): silent for %.0f s", child.pid, silent)
                child.aborted = time.monotonic()
                self.kill(child.pid, signal.SIGABRT)
            elif time.monotonic() - child.aborted > _ABORT_GRACE_SECONDS:
                log.critical("Killing worker %d: it did not exit on SIGABRT", child.pid)
                self.kill(child.pid, signal.SIGKILL)

    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            if pid == self.reexec_pid:
                self.reexec_pid = 0
                log.info("The master started by USR2 (%d) exited", pid)
                continue
            self.child_exited(pid, os.waitstatus_to_exitcode(status))

    def child_exited(self, pid: int, code: int) -> None:
        """Child ``pid`` exited with ``code`` (``os.waitstatus_to_exitcode``): forget it,
        count and log why, and stop the pool if it could not boot (``manage_workers``
        replaces it on the next turn)."""
        child = self.children.pop(pid, None)
        if child is None:
            return
        recycled = False
        if child.tmp is not None:
            recycled = child.tmp.is_recycled()
            child.tmp.close()
        if child.kind == "worker":
            self.call_hook("child_exit", self, child.worker)
        if code in (EXIT_CONFIG, EXIT_WORKER_BOOT) and not child.stopping:
            what = ("application failed to load" if code == EXIT_CONFIG
                    else "worker failed to boot")
            if child.reload and child.reload == self.reloads and self.retiring:
                self.abort_reload(f"worker {pid}: {what}")
                return
            raise HaltServer(f"{child.kind} {pid}: {what}", code)
        reason = f"signal {-code}" if code < 0 else f"exit code {code}"
        if child.stopping or self.stopping:
            log.info("%s %d exited (%s)", child.kind.capitalize(), pid, reason)
        elif child.kind != "worker":
            log.warning("%s %d died (%s); replacing it", child.kind.capitalize(), pid,
                        reason)
        else:
            restart = self.restart_reason(child, code, recycled)
            if restart is None:
                log.info("Worker %d exited by itself (%s); replacing it", pid, reason)
                return
            self.restarts[restart] += 1
            if restart == "max_requests":
                log.info("Worker %d exited (%s, restart: max_requests); replacing it",
                         pid, reason)
            else:
                log.warning("Worker %d died (%s, restart: %s); replacing it", pid,
                            reason, restart)

    def restart_reason(self, child: Child, code: int, recycled: bool) -> str | None:
        """Why a worker the master did not stop exited: ``timeout`` (the master aborted it),
        ``max_requests`` (exit code 0 after it marked its liveness file ``recycled``) or
        ``crash`` (any other status, or a signal). None for any other exit code 0 (``reload``
        found a changed file): not a restart."""
        if child.aborted:
            return "timeout"
        if code == EXIT_OK:
            return "max_requests" if recycled else None
        return "crash"

    def abort_reload(self, reason: str) -> None:
        """The new workers of a HUP cannot serve: stop them and keep the old ones."""
        log.error("Reload failed (%s); the old workers keep serving", reason)
        for child in self.workers():
            if child.reload == self.reloads:
                child.stopping = True
                self.kill(child.pid, signal.SIGTERM)
        for child in self.retiring:
            child.reload = 0
        self.retiring = []
        self.reloads += 1  # so the stopped new ones are not mistaken for current

    def kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            child = self.children.pop(pid, None)
            if child is not None and child.tmp is not None:
                child.tmp.close()

    def stop(self, graceful: bool = True) -> None:
        """Stop every child: the front first (it needs the workers to finish), then the
        workers; kill what outlives ``graceful_timeout`` (or 2 s for a fast stop)."""
        self.stopping = True
        limit = self.cfg.graceful_timeout if graceful else _FAST_STOP_SECONDS
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        deadline = time.monotonic() + limit
        for kind in ("front", "worker"):
            pids = [c.pid for c in self.children.values() if c.kind == kind]
            for pid in pids:
                self.children[pid].stopping = True
                self.kill(pid, sig)
            while any(c.kind == kind for c in self.children.values()) and \
                    time.monotonic() < deadline:
                self.sleep(0.05)
                self.reap_children_quietly()
        for pid in list(self.children):
            log.warning("Killing %s %d: it outlived the stop", self.children[pid].kind, pid)
            self.kill(pid, signal.SIGKILL)
        while self.children and time.monotonic() < deadline + 5:
            self.sleep(0.05)
            self.reap_children_quietly()
        for listener in self.listeners:
            listener.close()

    def reap_children_quietly(self) -> None:
        try:
            self.reap_children()
        except HaltServer:
            pass

    # -- forking ------------------------------------------------------------------------

    def spawn_worker(self, reload: int = 0) -> None:
        from wsgi_zmq.handler.worker import build_worker

        self.worker_age += 1
        endpoints = self.front_endpoints if self.with_front else self.endpoints
        worker = build_worker(self.cfg, self.app, endpoints, self.worker_age, self.pid)
        worker.tmp = WorkerTmp(self.cfg)
        worker.pool_stats_path = self.stats_path
        self.call_hook("pre_fork", self, worker)
        pid = os.fork()
        if pid:
            worker.pid = pid
            self.children[pid] = Child(pid, "worker", self.worker_age, worker, worker.tmp,
                                       reload)
            log.info("Booting worker with pid: %d", pid)
            return
        self._child("worker", lambda: self._run_worker(worker))

    def _run_worker(self, worker: Any) -> int:
        worker.pid = os.getpid()
        try:
            set_owner(self.cfg)
        except OSError as exc:
            log.error("Cannot switch to user %s / group %s: %s", self.cfg.user,
                      self.cfg.group, exc)
            return EXIT_WORKER_BOOT
        self.call_hook("post_fork", self, worker)
        worker.prepare()
        try:
            assert self.app_uri is not None
            worker.load(self.app_uri)
        except AppImportError as exc:
            log.error("%s", exc)
            log.debug("Traceback of the import failure", exc_info=exc.__cause__)
            return EXIT_CONFIG
        try:
            worker.init_process()
        except Exception:
            log.exception("Worker %d failed to boot", os.getpid())
            return EXIT_WORKER_BOOT
        try:
            worker.run()
        finally:
            self.call_hook("worker_exit", self, worker)
        return EXIT_OK

    def _child(self, kind: str, run: Any) -> None:
        """In a forked child: reset what the master set up, run, and exit with the status
        ``run`` returns (never return into the master's code)."""
        status = EXIT_FAILURE
        try:
            self._child_reset(keep_control=kind == "front")
            set_process_title(kind, self.proc_name)
            status = run()
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else EXIT_OK
        except BaseException:
            log.exception("%s %d crashed", kind.capitalize(), os.getpid())
        finally:
            _exit(status)

    def bind_listeners(self) -> None:
        """Bind the front's HTTP sockets here, so a restarted front keeps the same ports
        and the connections waiting in the backlog."""
        from wsgi_zmq.config import bind_addresses
        from wsgi_zmq.front.sockets import listen

        self.listeners = [listen(host, port, self.cfg.backlog)
                          for host, port in bind_addresses(self.cfg)]

    def spawn_front(self) -> None:
        """Fork the front and wait until it reports the backend endpoints it bound."""
        report_r, report_w = os.pipe()
        backend = self.front_endpoints or list(self.cfg.backend)
        link: socket.socket | None = None
        if self.control_listener is not None:
            # a new link per front: the old one ended with the front that held its other end
            mine, link = socket.socketpair()
            if self.control is not None:
                self.control.close()
            self.control = control.ControlServer(None, self.commands, extra=mine)
        pid = os.fork()
        if pid:
            os.close(report_w)
            if link is not None:
                link.close()
            self.children[pid] = Child(pid, "front", 0)
            log.info("Booting front with pid: %d", pid)
            self.front_endpoints = self._read_report(report_r, pid)
            return
        os.close(report_r)

        def run() -> int:
            self.cfg.set("backend", backend)
            self.cfg.set("control_socket", self.control_path)
            from wsgi_zmq.front.server import serve

            shared = (self.control_listener, link) if self.control_listener is not None \
                else None
            return serve(self.cfg, listeners=self.listeners, report_fd=report_w,
                         control=shared)

        self._child("front", run)

    def _read_report(self, fd: int, pid: int) -> list[str]:
        deadline = time.monotonic() + _FRONT_START_SECONDS
        data = b""
        try:
            while b"\n" not in data:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HaltServer("the front did not start in time")
                ready, _, _ = select.select([fd], [], [], min(left, 0.5))
                if ready:
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        break
                    data += chunk
        finally:
            os.close(fd)
        if b"\n" not in data:
            try:
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                code = EXIT_FAILURE
            self.children.pop(pid, None)
            raise HaltServer("the front failed to start", code if code > 0 else EXIT_FAILURE)
        endpoints: list[str] = json.loads(data.split(b"\n", 1)[0])["backend"]
        return endpoints

    def _child_reset(self, keep_control: bool = False) -> None:
        """In a forked child: undo the master's signal handlers, and close its pipe, the
        liveness files, the control connections and (unless ``keep_control``: the front,
        all-in-one, serves them; a master started by USR2 takes the control one over) the
        listeners."""
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.sig_queue = []
        for child in self.children.values():
            if child.tmp is not None:
                child.tmp.close()
        if self.control is not None:
            if keep_control:
                self.control.listener = None  # so close() leaves it open
            self.control.close()  # no path: the file is the master's
            self.control = None
        if not keep_control:
            if self.control_listener is not None:
                self.control_listener.close()
                self.control_listener = None
            for listener in self.listeners:  # the front's HTTP sockets: not a worker's
                listener.close()
            self.listeners = []

    # -- the control socket and the stats file ----------------------------------------

    def bind_control(self) -> None:
        """Bind ``control_socket`` (or take over the one the master before this one passed
        on, USR2). A handler pool serves it here; all-in-one, the front does (see
        ``spawn_front``). Unusable: one line and exit 2."""
        inherited = os.environ.pop(_CONTROL_FD_ENV, "")
        path = self.cfg.control_socket
        if not path:
            return
        sock = _inherited_listener(inherited, path)
        if sock is None:
            try:
                sock = control.listen(path)
            except ConfigError as exc:
                log.error("%s", exc)
                raise HaltServer("the control socket cannot be used", EXIT_CONFIG) from None
        self.control_listener = sock
        self.control_path = path
        if not self.with_front:
            self.control = control.ControlServer(sock, self.commands)
            log.info("Control socket at: %s (%d)", path, self.pid)

    def close_control(self) -> None:
        """Close the control socket; remove its file unless a master started by USR2
        still serves it."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.control_listener is not None:
            self.control_listener.close()
            self.control_listener = None
        if self.control_path is not None and not self.reexec_pid:
            try:
                os.unlink(self.control_path)
            except OSError:
                pass
        self.control_path = None

    def _command(self, run: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
        """``run`` as a control command: a failure of the master's own is logged and
        answered, never raised into the main loop (HaltServer and StopIteration are)."""
        def command(args: list[str]) -> Any:
            try:
                return run(args)
            except (control.ControlError, ValueError, HaltServer, StopIteration):
                raise
            except Exception as exc:
                log.exception("The control command failed")
                raise control.ControlError(f"the master failed: {exc}") from None
        return command

    def command_status(self, args: list[str]) -> dict[str, Any]:
        now, wall = time.monotonic(), time.time()
        workers = []
        for child in sorted(self.workers(), key=lambda c: c.age):
            booted, last_beat = False, None
            if child.tmp is not None:
                try:
                    booted = child.tmp.is_ready()
                    last_beat = round(max(0.0, wall - child.tmp.last_update()), 3)
                except OSError:
                    pass
            workers.append({"pid": child.pid, "age": child.age, "booted": booted,
                            "started": round(now - child.booted, 3),
                            "last_beat": last_beat})
        return {
            "kind": "pool",
            "pid": self.pid,
            "name": self.cfg.pool,
            "version": self.cfg.pool_version,
            "app": self.app_uri,
            "connect": list(self.front_endpoints if self.with_front else self.endpoints),
            "workers_wanted": self.num_workers,
            "workers": workers,
            "restarts": dict(self.restarts),
            "reloads": self.reload_requests,
        }

    def command_workers(self, args: list[str]) -> dict[str, int]:
        if len(args) != 1:
            raise control.ControlError("usage: workers N")
        try:
            count = int(args[0])
        except ValueError:
            count = 0
        if count < 1:
            raise control.ControlError(f"workers: expected a whole number >= 1, not "
                                       f"{args[0]!r}")
        if self.scaler is not None and count != self.scaler.clamp(count):
            raise control.ControlError(
                f"workers: {count} is outside min_workers..max_workers "
                f"({self.scaler.low}..{self.scaler.high}), where the autoscaler keeps it")
        if self.stopping:
            raise control.ControlError("the pool is stopping")
        previous = self.num_workers
        if count != previous:
            if self.scaler is not None:
                self.scaler.changed = time.monotonic()  # its cooldown starts now
            self.set_num_workers(count)
        return {"previous": previous, "workers": count}

    def command_reload(self, args: list[str]) -> dict[str, Any]:
        if args:
            raise control.ControlError("usage: reload")
        if self.stopping:
            raise control.ControlError("the pool is stopping")
        self.handle_hup()
        return {"reloading": True, "workers": self.num_workers}

    def stats(self) -> dict[str, Any]:
        return {"pool": self.cfg.pool, "version": self.cfg.pool_version, "master": self.pid,
                "workers": len(self.workers()), "restarts": dict(self.restarts)}

    def write_stats(self) -> None:
        """Write ``stats()`` to ``stats_path`` if it changed, atomically (a file beside it,
        then a rename), readable by the workers whatever user they run as."""
        data = json.dumps(self.stats(), separators=(",", ":"), sort_keys=True).encode()
        if data == self.stats_written:
            now = time.monotonic()
            if now - self.stats_touched >= STATS_TOUCH_SECONDS:
                self.stats_touched = now
                try:
                    os.utime(self.stats_path)  # alive: see ``remove_stale_stats``
                except OSError:
                    pass
            return
        directory, name = os.path.split(self.stats_path)
        temp = None
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
            try:
                os.fchmod(fd, 0o644)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(temp, self.stats_path)
            self.stats_touched = time.monotonic()
        except OSError as exc:
            if temp is not None:
                try:
                    os.unlink(temp)
                except OSError:
                    pass
            if not self.stats_failed:
                self.stats_failed = True
                log.warning("Cannot write the pool's stats to %s: %s", self.stats_path, exc)
            return
        self.stats_written = data

    def remove_stats(self) -> None:
        if self.stats_written:
            try:
                os.unlink(self.stats_path)
            except OSError:
                pass
            self.stats_written = b""


def _inherited_listener(inherited: str, path: str) -> socket.socket | None:
    """The control listener a master passed on through USR2 (``FD:PATH``), if it is the
    listening Unix socket bound at ``path``; else None."""
    fd_text, _, given = inherited.partition(":")
    if not fd_text.isdigit() or given != path:
        return None
    try:
        sock = socket.socket(fileno=int(fd_text))
    except OSError:
        return None
    try:
        good = sock.family == socket.AF_UNIX and sock.getsockname() == path and \
            bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        good = False
    if not good:
        sock.detach()
        return None
    sock.set_inheritable(False)
    return sock


def _exit(status: Any) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status if isinstance(status, int) else EXIT_FAILURE)
