"""The gevent worker (``-k gevent``): up to ``worker_connections`` requests at once.

For apps that spend their time waiting on I/O (databases, other HTTP services): the worker
patches the standard library with ``gevent.monkey.patch_all()`` before the app is imported,
announces ``worker_connections`` as its capacity, and serves each request in a greenlet of
its own, so a request waiting on a socket lets the others run.

Everything else is the sync worker's (``SyncWorker``): the protocol, flow control, hooks,
the access log, draining on TERM, recycling, the timeout. The differences:

- one greenlet per front reads its socket (``zmq.green``) and its connection monitor;
- a request's greenlet waits for body or credit on its own ``Event``, woken when a record
  for it arrives;
- replies finished in one loop iteration leave as one frame per front, flushed by a loop
  callback at the end of the iteration (the front's batching, mirrored);
- there is no handing back of queued requests (none wait behind another);
- a worker past ``timeout`` is one whose loop is blocked (a greenlet that never yields):
  SIGABRT answers 504 for every request it runs.

This module does not import gevent at import time: the arbiter may build the worker object
before it forks, and the master never imports gevent.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from wsgi_zmq import protocol
from wsgi_zmq.handler.worker import Front, Request, SyncWorker

log = logging.getLogger("wsgi_zmq.error.worker")


class GeventWorker(SyncWorker):
    """Serves up to ``worker_connections`` requests at once; see the module docstring."""

    kind = "gevent"
    concurrent = True  # no request waits behind another: the front's stall rule is off

    def __init__(self, cfg: Any, app: Any, endpoints: list[str], age: int = 0,
                 ppid: int = 0) -> None:
        super().__init__(cfg, app, endpoints, age, ppid)
        self.capacity = cfg.worker_connections
        self.active: set[Request] = set()
        self.pool: Any = None
        self.wakeup: Any = None
        self.quit_now = False
        self._dirty: set[Front] = set()
        self._flush_scheduled = False

    @property
    def zmq_module(self) -> Any:
        import zmq.green

        return zmq.green

    def prepare(self) -> None:
        """Patch the standard library before the app is imported, as gunicorn's gevent
        worker does: the app's sockets, sleeps and locks then yield to other requests."""
        from gevent import monkey

        monkey.patch_all()

    def init_process(self) -> None:
        import gevent
        import gevent.event
        import gevent.pool

        super().init_process()
        self.pool = gevent.pool.Pool(self.capacity)
        self.wakeup = gevent.event.Event()
        # in a gevent process, signals are handled in the hub: set a flag, wake the loop
        gevent.signal_handler(signal.SIGTERM, self._on_term)
        gevent.signal_handler(signal.SIGINT, self._on_quit)
        gevent.signal_handler(signal.SIGQUIT, self._on_quit)
        gevent.signal_handler(signal.SIGUSR1, self._on_usr1)

    def _on_term(self) -> None:
        self.alive = False
        self.wakeup.set()

    def _on_quit(self) -> None:
        self.alive = False
        self.quit_now = True
        self.call_hook("worker_int", self)
        self.wakeup.set()

    def _on_usr1(self) -> None:
        self.reopen_logs = True
        self.wakeup.set()

    def run(self) -> None:
        import gevent

        helpers = [gevent.spawn(self._read, front) for front in self.fronts]
        helpers += [gevent.spawn(self._watch, front) for front in self.fronts]
        try:
            while not self.quit_now:
                if not self.alive and not self.leaving:
                    self.start_leaving()
                if self.leaving and self.has_left():
                    break
                if not self.housekeeping():
                    break
                self.wakeup.wait(self.idle_wait)
                self.wakeup.clear()
        finally:
            gevent.killall(helpers)
            if self.quit_now:
                self.pool.kill()
            self.flush_all()
            self.close()

    def _read(self, front: Front) -> None:
        recv = front.sock.recv
        while True:
            self._handle(front, recv())
            self.flush_later(front)  # credits and acknowledgements go out this iteration

    def _watch(self, front: Front) -> None:
        while True:
            self.on_monitor_event(front, front.monitor.recv_multipart())

    # -- requests -----------------------------------------------------------------------

    def accept(self, req: Request) -> None:
        import gevent.event

        req.event = gevent.event.Event()
        self.active.add(req)
        self.pool.spawn(self._serve, req)

    def _serve(self, req: Request) -> None:
        try:
            if req.cancelled:
                req.end(protocol.END_ABORT, b"")
            else:
                self.handle(req)
        except Exception:
            log.exception("Worker %d: unexpected error serving a request", self.pid)
            if not req.finished:
                req.end(protocol.END_ABORT, b"")
        finally:
            self.active.discard(req)
            self.flush_later(req.front)
            if self.max_requests and self.served >= self.max_requests and self.alive:
                log.info("Worker %d served %d requests (max_requests): recycling", self.pid,
                         self.served)
                self.alive = False
                self.wakeup.set()
            if self.leaving:
                self.wakeup.set()

    def enter_app(self, req: Request, now: float) -> None:
        pass  # several requests run at once: no single current one, no SIGALRM

    def leave_app(self, req: Request) -> None:
        pass

    def block(self, req: Request) -> None:
        self.flush_all()
        req.event.wait(self.idle_wait)
        req.event.clear()
        self.notify()

    def busy(self) -> bool:
        return bool(self.active)

    def busy_share(self, elapsed: float) -> float:
        return len(self.active) / self.capacity  # the share of greenlet slots in use

    def stuck_requests(self) -> list[Request]:
        return [req for req in self.active if not req.finished]

    def handle_abort(self, signum: int, frame: Any) -> None:
        """SIGABRT: the loop is stuck. Answer every running request 504, say BYE, exit."""
        try:
            super().handle_abort(signum, frame)
        except SystemExit:
            pass
        self.close()
        os._exit(1)

    # -- output -------------------------------------------------------------------------

    def flush(self, front: Front) -> None:
        """Send at the end of this loop iteration, with whatever else is due."""
        self.flush_later(front)

    def flush_later(self, front: Front) -> None:
        if not front.outbox:
            return
        self._dirty.add(front)
        if not self._flush_scheduled:
            import gevent

            self._flush_scheduled = True
            gevent.get_hub().loop.run_callback(self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for front in dirty:
            SyncWorker.flush(self, front)

    def flush_all(self) -> None:
        self._dirty.clear()
        for front in self.fronts:
            SyncWorker.flush(self, front)
