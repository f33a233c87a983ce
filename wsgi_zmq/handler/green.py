"""The gevent runner (``-k gevent``): up to ``worker_connections`` requests at once.

For apps that spend their time waiting on I/O (databases, other HTTP services): the worker
patches the standard library with ``gevent.monkey.patch_all()`` before the app is imported,
announces ``worker_connections`` as its capacity (and READY_CONCURRENT), and serves each
request in a greenlet of its own, so a request waiting on a socket lets the others run.

The protocol, flow control, hooks, the access log, draining on TERM, recycling and the
timeout are the worker core's (``wsgi_zmq.handler.worker``). What this runner decides:

- one greenlet per front reads its socket (``zmq.green``) and one its connection monitor;
- a request's greenlet waits for body or credit on its own ``Event``, woken when a record
  for it arrives;
- replies finished in one loop iteration leave as one frame per front, flushed by a loop
  callback at the end of the iteration (the front's batching, mirrored);
- there is no handing back of queued requests (none wait behind another);
- signals are handled in the hub: a handler sets a flag and wakes the main greenlet;
- a worker past ``timeout`` is one whose loop is blocked (a greenlet that never yields):
  SIGABRT answers 504 for every request it runs and exits at once.

This module does not import gevent at import time: the arbiter builds the worker before it
forks, and the master never imports gevent.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from wsgi_zmq.handler.worker import Front, Request, Worker
from wsgi_zmq.protocol import END_ABORT
from wsgi_zmq.ring import FrameWriter, WorkerPipe

log = logging.getLogger("wsgi_zmq.error.worker")


class GeventRunner:
    """Serves up to ``worker_connections`` requests at once; see the module docstring."""

    concurrent = True  # no request waits behind another: the front's stall rule is off

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.capacity: int = worker.cfg.worker_connections
        self.active: set[Request] = set()
        self.pool: Any = None
        self.wakeup: Any = None
        self.quit_now = False
        self._dirty: set[Front] = set()
        self._flush_scheduled = False
        self.pipe_readers: dict[Front, Any] = {}  # the greenlet reading each front's pipe

    def prepare(self) -> Any:
        """Patch the standard library before the app is imported, as gunicorn's gevent
        worker does: the app's sockets, sleeps and locks then yield to other requests."""
        from gevent import monkey

        monkey.patch_all()
        import zmq.green

        return zmq.green

    def init_process(self) -> None:
        """The greenlet pool, the main greenlet's wake-up, and the signal handlers: in a
        gevent process signals are handled in the hub (set a flag, wake the loop); SIGABRT
        is a plain handler, since the loop it must interrupt is the stuck one."""
        import gevent
        import gevent.event
        import gevent.pool

        self.pool = gevent.pool.Pool(self.capacity)
        self.wakeup = gevent.event.Event()
        signal.signal(signal.SIGABRT, self._on_abort)
        gevent.signal_handler(signal.SIGTERM, self._on_term)
        gevent.signal_handler(signal.SIGINT, self._on_quit)
        gevent.signal_handler(signal.SIGQUIT, self._on_quit)
        gevent.signal_handler(signal.SIGUSR1, self._on_usr1)

    def _on_term(self) -> None:
        self.worker.handle_term()
        self.wakeup.set()

    def _on_quit(self) -> None:
        self.quit_now = True
        self.worker.handle_quit()
        self.wakeup.set()

    def _on_usr1(self) -> None:
        self.worker.handle_usr1()
        self.wakeup.set()

    def _on_abort(self, signum: int, frame: Any) -> None:
        """SIGABRT: the loop is stuck. Answer every running request 504, say BYE, exit now
        (no unwinding: the hub cannot be trusted)."""
        self.worker.handle_abort()
        self.worker.close()
        os._exit(1)

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        """Start the readers; the main greenlet sleeps on ``wakeup`` between turns."""
        import gevent

        worker = self.worker
        helpers = [gevent.spawn(self._read, front) for front in worker.fronts]
        helpers += [gevent.spawn(self._watch, front) for front in worker.fronts]
        try:
            while not self.quit_now and worker.turn():
                self.wakeup.wait(worker.idle_wait)
                self.wakeup.clear()
        finally:
            gevent.killall(helpers + list(self.pipe_readers.values()))
            self.pipe_readers.clear()
            if self.quit_now:
                self.pool.kill()
            self.flush_all()

    def _read(self, front: Front) -> None:
        recv = front.sock.recv
        handle_frame = self.worker.handle_frame
        while True:
            handle_frame(front, recv())
            self.flush(front)  # credits and acknowledgements go out this iteration

    def _watch(self, front: Front) -> None:
        while True:
            self.worker.on_monitor_event(front, front.monitor.recv_multipart())

    def watch_pipe(self, front: Front) -> None:
        """Read the pipe in a greenlet of its own; write the back pipe with a
        ``FrameWriter`` on the loop (``flush`` sends from a loop callback, which must not
        block). A closed back pipe needs no action of its own: the front closed both, and
        the reader acts on the end of the other."""
        import gevent

        pipe = front.pipe
        assert pipe is not None
        pipe.writer = FrameWriter(pipe.back, gevent.get_hub().loop, lambda: None)
        self.pipe_readers[front] = gevent.spawn(self._read_pipe, front, pipe)

    def unwatch_pipe(self, front: Front) -> None:
        import gevent

        reader = self.pipe_readers.pop(front, None)
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill()  # before its descriptor closes; the reader's own end returns

    def check_pipe(self, front: Front) -> None:
        assert front.pipe is not None
        reader = self.pipe_readers.get(front)
        watched = reader is not None and not reader.dead
        assert watched == front.pipe.on, f"the pipe of {front.endpoint}: on " \
            f"{front.pipe.on}, watched {watched}"
        assert (front.pipe.writer is not None) == front.pipe.on, \
            f"the back pipe of {front.endpoint}: on {front.pipe.on}, no writer"
        if front.pipe.writer is not None:
            front.pipe.writer.check()

    def _read_pipe(self, front: Front, pipe: WorkerPipe) -> None:
        from gevent.socket import wait_read

        while front.pipe is pipe:
            wait_read(pipe.fd)
            self.worker.read_pipe(front)
            self.flush(front)

    # -- requests -----------------------------------------------------------------------

    def accept(self, req: Request) -> None:
        """Serve it in a greenlet of its own, now."""
        import gevent.event

        req.event = gevent.event.Event()
        self.active.add(req)
        self.pool.spawn(self._serve, req)

    def _serve(self, req: Request) -> None:
        worker = self.worker
        try:
            if req.cancelled:
                req.end(END_ABORT, b"")
            else:
                worker.layer.handle(req)
        except Exception:
            log.exception("Worker %d: unexpected error serving a request", worker.pid)
            if not req.finished:
                req.end(END_ABORT, b"")
        finally:
            self.active.discard(req)
            self.flush(req.front)
            if worker.served >= worker.recycle_at and worker.alive:
                worker.recycle()
                self.wakeup.set()
            if worker.leaving:
                self.wakeup.set()

    def block(self, req: Request) -> None:
        """Flush, then wait on the request's own event (set when a record for it comes)."""
        self.flush_all()
        req.event.wait(self.worker.idle_wait)
        req.event.clear()
        self.worker.notify()

    def busy(self) -> bool:
        """Are greenlets serving requests?"""
        return bool(self.active)

    def busy_share(self, elapsed: float) -> float:
        """The share of greenlet slots in use now."""
        return len(self.active) / self.capacity

    def stuck(self) -> list[Request]:
        """Every request a greenlet is serving (the whole loop is stuck)."""
        return [req for req in self.active if not req.finished]

    # -- output -------------------------------------------------------------------------

    def flush(self, front: Front) -> None:
        """Send at the end of this loop iteration, with whatever else is due."""
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
            self._send_now(front)

    def _send_now(self, front: Front) -> None:
        if front.outbox:
            records = front.outbox
            front.outbox = []
            self.worker.send(front, records)

    def flush_all(self) -> None:
        self._dirty.clear()
        for front in self.worker.fronts:
            self._send_now(front)
