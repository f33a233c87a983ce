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

Hooks from the config (``on_starting``, ``when_ready``, ``pre_fork``, ``post_fork``,
``child_exit``, ``worker_exit``, ``nworkers_changed``, ``on_reload``, ``pre_exec``,
``on_exit``) are called with this object as ``server``: it has ``cfg``, ``log``, ``pid``,
``num_workers`` and ``children`` (pid -> ``Child``, whose ``worker`` is the worker object).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

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


class HaltServer(Exception):
    def __init__(self, reason: str, exit_status: int = EXIT_FAILURE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status


class WorkerTmp:
    """A worker's liveness file, unlinked at once and shared through the fork.

    The worker changes the file's mode to say it is alive (the change moves its ctime) and
    sets a bit of the mode once it is connected to every front; the master reads both with
    one ``fstat``. Kept in ``/dev/shm`` where there is one, so no disk is touched.
    """

    def __init__(self, cfg: Any) -> None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="wsgi_zmq-", dir=directory)
        os.unlink(path)
        if cfg.user is not None or cfg.group is not None:
            os.fchown(fd, cfg.user if cfg.user is not None else -1,
                      cfg.group if cfg.group is not None else -1)
        self.fd = fd
        self.spinner = 0
        self.ready = False

    def notify(self) -> None:
        self.spinner ^= 1
        os.fchmod(self.fd, self.spinner | (_READY_BIT if self.ready else 0))

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
        try:
            ready = select.select([self.wake_r], [], [], seconds)
            if ready[0]:
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
            if self.cfg.preload_app:
                self.app = self.load_app()
            if self.with_front:
                self.bind_listeners()
                self.spawn_front()
            log.info("Handler pool %d serving %s with %d worker(s)", self.pid,
                     self.app_uri, self.num_workers)
            self.manage_workers()
            self.call_hook("when_ready", self)
            while True:
                sig = self.sig_queue.pop(0) if self.sig_queue else None
                if sig is None:
                    self.sleep()
                    self.reap_children()
                    self.murder_workers()
                    self.check_retiring()
                    self.autoscale()
                    self.manage_workers()
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
        self._child_reset()
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
            if child.pid in self.children:
                child.stopping = True
                self.kill(child.pid, signal.SIGTERM)
        log.info("Reload done: %d old worker(s) retiring", len(self.retiring))
        self.retiring = []

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
            child = self.children.pop(pid, None)
            if child is None:
                continue
            if child.tmp is not None:
                child.tmp.close()
            code = os.waitstatus_to_exitcode(status)
            if child.kind == "worker":
                self.call_hook("child_exit", self, child.worker)
            if code in (EXIT_CONFIG, EXIT_WORKER_BOOT) and not child.stopping:
                what = ("application failed to load" if code == EXIT_CONFIG
                        else "worker failed to boot")
                if child.reload and child.reload == self.reloads and self.retiring:
                    self.abort_reload(f"worker {pid}: {what}")
                    continue
                raise HaltServer(f"{child.kind} {pid}: {what}", code)
            reason = f"signal {-code}" if code < 0 else f"exit code {code}"
            if child.stopping or self.stopping:
                log.info("%s %d exited (%s)", child.kind.capitalize(), pid, reason)
            else:
                log.warning("%s %d died (%s); replacing it", child.kind.capitalize(), pid,
                            reason)

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
            self._child_reset()
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
        pid = os.fork()
        if pid:
            os.close(report_w)
            self.children[pid] = Child(pid, "front", 0)
            log.info("Booting front with pid: %d", pid)
            self.front_endpoints = self._read_report(report_r, pid)
            return
        os.close(report_r)

        def run() -> int:
            self.cfg.set("backend", backend)
            from wsgi_zmq.front.server import serve

            return serve(self.cfg, listeners=self.listeners, report_fd=report_w)

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

    def _child_reset(self) -> None:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.sig_queue = []
        for child in self.children.values():
            if child.tmp is not None:
                child.tmp.close()


def _exit(status: Any) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status if isinstance(status, int) else EXIT_FAILURE)
