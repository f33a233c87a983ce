"""The supervisor: forks handler workers (and, all-in-one, the front) and keeps them running.

Usage::

    Arbiter(cfg, app_uri="myapp:app", endpoints=["tcp://127.0.0.1:5556"]).run()
    Arbiter(cfg, app_uri="myapp:app", front=True).run()       # python -m wsgi_zmq

Signals to the master, as gunicorn operators expect:

========  =================================================================================
TERM      graceful stop: the front (all-in-one) finishes its requests first, then each
          worker says BYE to its fronts, finishes what it holds and exits; anything still
          running after ``graceful_timeout`` is killed
INT/QUIT  fast stop: children are told to exit now, killed if still there after 2 seconds
TTIN      one more worker
TTOU      one worker fewer (the oldest; it drains like on TERM)
CHLD      reap exited children; replace workers and the front that died
========  =================================================================================

Signal handlers only queue the signal and wake the main loop; the loop calls
``handle_<name>()``. The master never imports gevent, and creates no zmq context: workers
and the front build theirs after the fork. A worker that exits with ``EXIT_CONFIG`` (its app
would not import) or ``EXIT_WORKER_BOOT`` stops the pool with that code instead of being
forked again and again.
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
import time
from typing import Any

from wsgi_zmq import log as wlog
from wsgi_zmq.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_WORKER_BOOT,
    AppImportError,
)

log = logging.getLogger("wsgi_zmq.error.arbiter")

SIGNALS = [signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM, signal.SIGTTIN,
           signal.SIGTTOU, signal.SIGUSR1, signal.SIGCHLD]
SIG_NAMES: dict[int, str] = {sig: sig.name[3:].lower() for sig in SIGNALS}

_FAST_STOP_SECONDS = 2.0
_FRONT_START_SECONDS = 30.0


def set_process_title(title: str) -> None:
    """``wsgi_zmq: <title>`` in ps, when setproctitle is installed."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    setproctitle(f"wsgi_zmq: {title}")


class HaltServer(Exception):
    def __init__(self, reason: str, exit_status: int = EXIT_FAILURE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status


class Child:
    """A forked child the arbiter watches."""

    __slots__ = ("pid", "kind", "age", "booted", "stopping")

    def __init__(self, pid: int, kind: str, age: int) -> None:
        self.pid = pid
        self.kind = kind  # "worker" or "front"
        self.age = age
        self.booted = time.monotonic()
        self.stopping = False


class Arbiter:
    """See the module docstring."""

    def __init__(self, cfg: Any, app_uri: str | None, endpoints: list[str] | None = None,
                 front: bool = False) -> None:
        self.cfg = cfg
        self.app_uri = app_uri
        self.endpoints = list(endpoints or [])
        self.with_front = front
        self.num_workers: int = cfg.workers
        self.children: dict[int, Child] = {}
        self.sig_queue: list[int] = []
        self.wake_r = self.wake_w = -1
        self.worker_age = 0
        self.pid = os.getpid()
        self.listeners: list[socket.socket] = []
        self.front_endpoints: list[str] = []
        self.stopping = False

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

    # -- the main loop ------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; return the exit status."""
        set_process_title("master" if not self.with_front else "master (all-in-one)")
        self.init_signals()
        try:
            if self.with_front:
                self.bind_listeners()
                self.spawn_front()
            log.info("Handler pool %d serving %s with %d worker(s)", self.pid,
                     self.app_uri, self.num_workers)
            self.manage_workers()
            while True:
                sig = self.sig_queue.pop(0) if self.sig_queue else None
                if sig is None:
                    self.sleep()
                    self.reap_children()
                    self.manage_workers()
                    continue
                handler = getattr(self, "handle_" + SIG_NAMES[sig], None)
                if handler is not None:
                    handler()
                self.wakeup()
        except StopIteration:
            return EXIT_OK
        except HaltServer as exc:
            return self.halt(exc.reason, exc.exit_status)
        except KeyboardInterrupt:
            self.stop(graceful=False)
            return EXIT_OK

    def halt(self, reason: str, status: int) -> int:
        self.stop(graceful=False)
        if status in (EXIT_OK, EXIT_CONFIG):
            # for EXIT_CONFIG the child has logged the one line that names the problem
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
        self.num_workers += 1
        log.info("TTIN: %d worker(s)", self.num_workers)
        self.manage_workers()

    def handle_ttou(self) -> None:
        """One worker fewer (never below one)."""
        if self.num_workers <= 1:
            return
        self.num_workers -= 1
        log.info("TTOU: %d worker(s)", self.num_workers)
        self.manage_workers()

    def handle_usr1(self) -> None:
        """Reopen log files, here and in every child."""
        wlog.reopen()
        for pid in list(self.children):
            self.kill(pid, signal.SIGUSR1)

    def handle_hup(self) -> None:
        """Reload: start new workers, then retire the old ones."""
        log.info("HUP: replacing %d worker(s)", self.num_workers)
        old = [c for c in self.children.values() if c.kind == "worker" and not c.stopping]
        for _ in range(self.num_workers):
            self.spawn_worker()
        for child in old:
            child.stopping = True
            self.kill(child.pid, signal.SIGTERM)

    # -- children -----------------------------------------------------------------------

    def workers(self) -> list[Child]:
        return [c for c in self.children.values() if c.kind == "worker" and not c.stopping]

    def manage_workers(self) -> None:
        """Fork or retire workers until ``num_workers`` are running."""
        if self.stopping:
            return
        if self.with_front and not any(c.kind == "front" for c in self.children.values()):
            self.spawn_front()
        running = sorted(self.workers(), key=lambda c: c.age)
        while len(running) < self.num_workers:
            self.spawn_worker()
            running = self.workers()
        while len(running) > self.num_workers:
            oldest = running.pop(0)
            oldest.stopping = True
            self.kill(oldest.pid, signal.SIGTERM)

    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code in (EXIT_CONFIG, EXIT_WORKER_BOOT) and not child.stopping:
                what = "application failed to load" if code == EXIT_CONFIG \
                    else "worker failed to boot"
                raise HaltServer(f"{child.kind} {pid}: {what}", code)
            reason = f"signal {-code}" if code < 0 else f"exit code {code}"
            if child.stopping or self.stopping:
                log.info("%s %d exited (%s)", child.kind.capitalize(), pid, reason)
            else:
                log.warning("%s %d died (%s); replacing it", child.kind.capitalize(), pid,
                            reason)

    def kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            self.children.pop(pid, None)

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

    def spawn_worker(self) -> None:
        from wsgi_zmq.handler.worker import SyncWorker

        self.worker_age += 1
        endpoints = self.front_endpoints if self.with_front else self.endpoints
        worker = SyncWorker(self.cfg, None, endpoints, self.worker_age, self.pid)
        pid = os.fork()
        if pid:
            self.children[pid] = Child(pid, "worker", self.worker_age)
            log.info("Booting worker with pid: %d", pid)
            return
        self._child("worker", lambda: self._run_worker(worker))

    def _run_worker(self, worker: Any) -> int:
        from wsgi_zmq.handler.wsgi import import_app

        try:
            assert self.app_uri is not None
            worker.app = import_app(self.app_uri)
        except AppImportError as exc:
            log.error("%s", exc)
            log.debug("Traceback of the import failure", exc_info=exc.__cause__)
            return EXIT_CONFIG
        try:
            worker.init_process()
        except Exception:
            log.exception("Worker %d failed to boot", os.getpid())
            return EXIT_WORKER_BOOT
        worker.run()
        return EXIT_OK

    def _child(self, kind: str, run: Any) -> None:
        """In a forked child: reset what the master set up, run, and exit with the status
        ``run`` returns (never return into the master's code)."""
        status = EXIT_FAILURE
        try:
            self._child_reset()
            set_process_title(kind)
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


def _exit(status: Any) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status if isinstance(status, int) else EXIT_FAILURE)
