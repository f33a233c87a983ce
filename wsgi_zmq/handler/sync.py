"""The sync runner (``-k sync``, the default): a worker serves its requests one at a time.

The worker holds up to ``capacity`` requests and runs them in the order they came, so it
answers several in one message and never waits a round trip to the front for work:

- Replies are batched: records produced while the worker drains its queue leave as one
  frame per front, flushed when the queue is empty, after half ``capacity`` replies, or
  after ``_BATCH_SECONDS`` of app time, so a slow request does not hold back the replies of
  the fast ones before it. Before the worker blocks (waiting for body or credit), it
  flushes. Before it starts a request that may not run twice (``Request.replayable``), it
  sends every reply it holds: a front that loses this worker can then tell that such a
  request never started while replies before it were unsent.
- A request that has run ``STEAL_SECONDS`` with others waiting behind it hands the waiting
  ones back to their front (REJECT; the front dispatches them to a free worker). The worker
  is inside the app then, so a ``SIGALRM`` interval timer, armed only while requests wait,
  lets it act; the handler touches sockets only when the app, not the worker's own code,
  was running (``worker.quiet == 0``). If the app installed its own ``SIGALRM`` handler,
  the worker leaves it alone and does not hand requests back.
- The sockets are polled (one ``zmq.Poller``) and drained until ``Again`` (the zmq file
  descriptor is edge-triggered): the loop waits only when the queue is empty.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import zmq

from wsgi_zmq.handler.worker import Front, Request, Worker
from wsgi_zmq.protocol import END_ABORT

log = logging.getLogger("wsgi_zmq.error.worker")

_BATCH_REQUESTS = 64
_BATCH_SECONDS = 0.002
#: A request that has run this long hands the requests queued behind it back to the front.
STEAL_SECONDS = 0.04
_STEAL_TICK = 0.02
_NOBLOCK = zmq.NOBLOCK
_zmq_Again = zmq.Again


class SyncRunner:
    """Serves one request at a time, in order; see the module docstring."""

    concurrent = False  # serves its requests in order: the front limits what waits

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.capacity: int = worker.cfg.capacity
        # flush replies every half capacity: the front refills one half while this worker
        # serves the other, so the worker never waits a round trip for work
        self.batch = max(1, min(_BATCH_REQUESTS, self.capacity // 2))
        self.poller = zmq.Poller()
        self.by_socket: dict[Any, Front] = {}
        self.by_monitor: dict[Any, Front] = {}
        self.by_pipe: dict[int, Front] = {}  # the pipes fronts switched to, by descriptor
        self.steal = False  # hand back queued requests behind a slow one (SIGALRM is ours)
        self.timer_armed = False
        self.busy_time = 0.0  # seconds spent serving since the last report
        self.busy_since = 0.0  # when the current serve_queue began counting, 0 when idle
        self.wake = -1  # read end of the pipe a signal writes to: it ends a poll at once

    # -- process setup ------------------------------------------------------------------

    def prepare(self) -> Any:
        """Nothing to patch: the sockets are plain ``zmq``."""
        return zmq

    def init_process(self) -> None:
        """Signal handlers; SIGALRM for handing back queued requests, unless the app took it
        or the worker holds one request at a time (then none wait behind another)."""
        # a poll interrupted by a signal is resumed by pyzmq after the handler ran: without
        # the wake-up byte, a TERM would act only when the poll times out (the heartbeat)
        self.wake, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_quit)
        signal.signal(signal.SIGQUIT, self._on_quit)
        signal.signal(signal.SIGABRT, self._on_abort)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        if self.capacity > 1 and signal.getsignal(signal.SIGALRM) == signal.SIG_DFL:
            signal.signal(signal.SIGALRM, self._on_alarm)
            signal.siginterrupt(signal.SIGALRM, False)  # restart system calls the app makes
            self.steal = True

    def _on_term(self, signum: int, frame: Any) -> None:
        self.worker.handle_term()

    def _on_usr1(self, signum: int, frame: Any) -> None:
        self.worker.handle_usr1()

    def _on_quit(self, signum: int, frame: Any) -> None:
        self.worker.handle_quit()
        raise SystemExit(0)

    def _on_abort(self, signum: int, frame: Any) -> None:
        self.worker.handle_abort()
        raise SystemExit(1)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        """SIGALRM, while requests wait behind the running one: hand them back if it is
        slow. Acts only when the app was running, never in the middle of worker code."""
        if self.worker.quiet == 0:
            self.return_queued()

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        """Wait for records, serve the queue, repeat, until ``worker.turn()`` says stop."""
        worker = self.worker
        for front in worker.fronts:
            self.by_socket[front.sock] = front
            self.by_monitor[front.monitor] = front
            self.poller.register(front.sock, zmq.POLLIN)
            self.poller.register(front.monitor, zmq.POLLIN)
        if self.wake >= 0:
            self.poller.register(self.wake, zmq.POLLIN)
        queue = worker.queue
        while worker.turn():
            if not queue:
                self.wait()
            if queue:
                self.serve_queue()

    def wait(self, timeout: float | None = None) -> None:
        """Block until a socket has something (or ``timeout``, default the heartbeat)."""
        worker = self.worker
        worker.notify()  # waiting for work, body or credit is not being stuck
        ms = int((worker.idle_wait if timeout is None else timeout) * 1000)
        events = self.poller.poll(ms)
        worker.notify()  # so the master counts a request's time from when it starts
        for sock, _ in events:
            front = self.by_socket.get(sock)
            if front is not None:
                self.drain(front)
            elif sock == self.wake:
                self.read_wake()
            elif sock in self.by_monitor:
                self.read_monitor(self.by_monitor[sock])
            else:
                # a pipe (one an earlier event of this poll closed is in no map)
                front = self.by_pipe.get(sock)
                if front is not None:
                    worker.read_pipe(front)

    def drain(self, front: Front) -> None:
        """Act on every frame ``front`` has sent, until ``Again``."""
        recv = front.sock.recv
        handle_frame = self.worker.handle_frame
        while True:
            try:
                data = recv(_NOBLOCK)
            except _zmq_Again:
                return
            handle_frame(front, data)

    def watch_pipe(self, front: Front) -> None:
        assert front.pipe is not None
        self.by_pipe[front.pipe.fd] = front
        self.poller.register(front.pipe.fd, zmq.POLLIN)

    def unwatch_pipe(self, front: Front) -> None:
        assert front.pipe is not None
        if self.by_pipe.pop(front.pipe.fd, None) is not None:
            self.poller.unregister(front.pipe.fd)

    def check_pipe(self, front: Front) -> None:
        assert front.pipe is not None
        watched = self.by_pipe.get(front.pipe.fd) is front
        assert watched == front.pipe.on, f"the pipe of {front.endpoint}: on " \
            f"{front.pipe.on}, watched {watched}"

    def read_wake(self) -> None:
        """Empty the wake-up pipe (the signal's handler has already run)."""
        try:
            while os.read(self.wake, 512):
                pass
        except BlockingIOError:
            pass

    def read_monitor(self, front: Front) -> None:
        while True:
            try:
                message = front.monitor.recv_multipart(_NOBLOCK)
            except _zmq_Again:
                return
            self.worker.on_monitor_event(front, message)

    def serve_queue(self) -> None:
        """Serve the queued requests in order, flushing replies in batches."""
        worker = self.worker
        started = self.busy_since = time.monotonic()
        count = 0
        queue = worker.queue
        handle = worker.layer.handle
        flush_all = self.flush_all
        if self.steal:
            self._arm(True)  # requests may arrive behind this one while the app runs
        while queue:
            req = queue.popleft()
            if req.generation != req.front.generation:
                continue
            if req.cancelled:
                req.end(END_ABORT, b"")
            else:
                if not req.replayable():
                    # the front may send a request elsewhere after our death only if it
                    # can tell that we never started it: nothing that must not run twice
                    # starts while replies to the requests before it wait in an outbox
                    flush_all()
                handle(req)
            count += 1
            if count >= self.batch or time.monotonic() - started > _BATCH_SECONDS:
                flush_all()
                worker.notify()
                started = time.monotonic()
                count = 0
            if worker.served >= worker.recycle_at:
                worker.recycle()
            if not worker.alive and not worker.leaving:
                break  # start_leaving hands the rest of the queue back
        if self.timer_armed:
            self._arm(False)
        flush_all()
        self.busy_time += time.monotonic() - self.busy_since
        self.busy_since = 0.0

    # -- while a request runs -----------------------------------------------------------

    def accept(self, req: Request) -> None:
        """Queue it: ``serve_queue`` serves it in turn."""
        self.worker.queue.append(req)

    def block(self, req: Request) -> None:
        """Wait for records while ``req`` runs (its body or credit is late): the queued
        requests behind it go back to the front if it has run long."""
        if self.steal:
            self.return_queued()
        self.wait()

    def return_queued(self) -> None:
        """If the running request has run ``STEAL_SECONDS``, take in what the fronts sent
        meanwhile and REJECT the queued requests that can go elsewhere (the front dispatches
        them to a free worker); keep the others."""
        worker = self.worker
        if time.monotonic() - worker.running_since < STEAL_SECONDS:
            return
        current = worker.current
        if current is None or not current.granted or current.body_done:
            # a request that streams its body waits on the sockets (block) whenever it
            # runs out of body, and drains them then; draining them from the signal
            # handler as well stalled such uploads (100 MB PUTs: 0.2 to 3 s, against a
            # steady 0.3 s without)
            for front in worker.fronts:
                self.drain(front)
                if front.pipe is not None and front.pipe.on:
                    worker.read_pipe(front)  # a front that switched sends only that way
        queue = worker.queue
        if not queue:
            return
        kept = []
        handed = 0
        for req in queue:
            if req.finished or req.generation != req.front.generation:
                continue
            if req.cancelled:
                req.end(END_ABORT, b"")
            elif req.can_hand_back():
                req.reject()
                handed += 1
            else:
                kept.append(req)
        queue.clear()
        queue.extend(kept)
        self.flush_all()
        if handed:
            log.info("Worker %d handed %d queued request(s) back: the running one has taken "
                     "%.0f ms", worker.pid, handed,
                     (time.monotonic() - worker.running_since) * 1e3)

    def _arm(self, on: bool) -> None:
        if on != self.timer_armed:
            self.timer_armed = on
            signal.setitimer(signal.ITIMER_REAL, _STEAL_TICK if on else 0, _STEAL_TICK)

    # -- output and accounting ----------------------------------------------------------

    def flush(self, front: Front) -> None:
        """Send ``front``'s pending records now, as one frame."""
        if front.outbox:
            records = front.outbox
            front.outbox = []
            self.worker.send(front, records)

    def flush_all(self) -> None:
        for front in self.worker.fronts:
            if front.outbox:
                self.flush(front)

    def busy(self) -> bool:
        """Is ``serve_queue`` running?"""
        return self.busy_since != 0.0

    def busy_share(self, elapsed: float) -> float:
        """The share of ``elapsed`` spent in ``serve_queue`` (and start a new count)."""
        busy, self.busy_time = self.busy_time, 0.0
        if self.busy_since:  # serving now: count the time so far, and restart the count
            now = time.monotonic()
            busy += now - self.busy_since
            self.busy_since = now
        return busy / elapsed

    def stuck(self) -> list[Request]:
        """The request the app runs, if the app (not worker code) was running."""
        current = self.worker.current
        if self.worker.quiet == 0 and current is not None and not current.finished:
            return [current]
        return []
