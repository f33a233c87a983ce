"""Scripted handler workers around a real ``Dispatcher``, on real ZeroMQ sockets.

A ``ScriptedPeer`` is a raw ``zmq.green`` DEALER in the test process: it sends exactly the
frames a test tells it to and hands back, decoded, what the front sent it. ``Backend`` owns
a real ``Dispatcher`` on a ``ManualClock`` (the test drives timeouts and calls ``tick``)
and its peers; nothing of zmq or gevent is replaced. The dispatcher's watchers run when the
test yields to gevent's hub.

``Backend.settle()`` waits until the system is quiet, with barriers rather than a fixed
sleep:

1. *upstream*: every peer that sent something sends one empty frame, which the dispatcher
   drops and counts (``dispatcher.malformed.total``). A DEALER's frames arrive in order, so
   once the count is reached the dispatcher has handled everything sent before the barrier;
2. the dispatcher has nothing left to send: no flush is scheduled and every outbox is empty;
3. *downstream*: ``dispatcher.probe()`` sends one HEARTBEAT to every peer it knows, behind
   everything it sent before. Every probe is counted (``Backend`` wraps the instance's
   ``probe``, so the dispatcher's own probes, from its monitor and its timer, count too); once
   every open peer has received every HEARTBEAT counted for it, it has received everything.

Errors raised inside the dispatcher's callbacks would be printed and swallowed by the hub:
``Backend`` records them (the hub's documented ``handle_error`` hook) and ``settle`` raises
them in the test.
"""

from __future__ import annotations

import collections
import os
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import zmq
import zmq.green

from wsgi_zmq import protocol
from wsgi_zmq.config import Config
from wsgi_zmq.errors import ProtocolError
from wsgi_zmq.front.dispatcher import Dispatcher
from wsgi_zmq.ring import WorkerPipe, write_frame

#: How long ``settle`` and ``wait`` may take before the test fails (a stuck system).
SETTLE_TIMEOUT = 10.0


class ManualClock:
    """A monotonic clock the test advances by hand (``Dispatcher(clock=...)``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class ScriptedPeer:
    """One fake worker: a DEALER that speaks only when told to."""

    def __init__(self, context: zmq.Context[Any], endpoint: str, ident: bytes) -> None:
        self.ident = ident
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, ident)
        self.sock.connect(endpoint)
        self.closed = False
        self.heartbeats = 0  # HEARTBEAT records received (one per probe)
        self.errors: list[str] = []  # frames from the front that failed to decode
        # the pipes it offered (``offer_pipe``); once PIPED came, the front's frames are
        # read from one (a frame through the socket after PIPED is an error), and, with
        # ``switch``, it answers PIPED and sends through the other from then on
        self.pipe: WorkerPipe | None = None
        self.switch = True

    def offer_pipe(self, pid: int | None = None, fd: int | None = None,
                   switch: bool = True) -> None:
        """Make the two pipes and offer them (PIPE, in a frame of its own), as a worker does
        after its RING; ``pid`` and ``fd`` default to this process and the read end of the
        pipe for the front's frames. ``switch``: answer PIPED as ours does (else keep
        sending through the socket, which a worker may)."""
        self.pipe = WorkerPipe()
        self.switch = switch
        self.send(protocol.encode_pipe(os.getpid() if pid is None else pid,
                                       self.pipe.fd if fd is None else fd, self.pipe.back))

    def send(self, *records: bytes) -> None:
        """Send ``records`` as one frame."""
        self.send_raw(protocol.frame(list(records)))

    def send_raw(self, data: bytes) -> None:
        assert not self.closed
        pipe = self.pipe
        if pipe is not None and pipe.sending:
            assert write_frame(pipe.back, data, SETTLE_TIMEOUT), \
                f"{self.ident!r}: the front does not read its pipe"
            return
        self.sock.send(data, zmq.NOBLOCK)

    def receive(self) -> list[protocol.Record]:
        """Every record that has arrived, in order (never blocks)."""
        records: list[protocol.Record] = []
        if self.closed:
            return records
        while True:
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if self.pipe is not None and self.pipe.on:
                self.errors.append(f"{self.ident!r} got a frame through the socket after "
                                   f"PIPED")
            self._take(data, records)
        pipe = self.pipe
        if pipe is not None and pipe.on and pipe.fd >= 0:
            try:
                frames, ended = pipe.frames()
            except ProtocolError as exc:
                self.errors.append(f"{self.ident!r}: its pipe broke: {exc}")
                return records
            for data in frames:
                self._take(data, records)
            if ended:
                pipe.close()  # the front forgot this peer
        return records

    def _take(self, data: bytes, records: list[protocol.Record]) -> None:
        try:
            got = protocol.split_frame(data)
        except ProtocolError as exc:
            self.errors.append(f"{self.ident!r} got a malformed frame: {exc}")
            return
        self.heartbeats += sum(r.kind == protocol.HEARTBEAT for r in got)
        for record in got:
            if record.kind == protocol.PIPED:
                if self.pipe is None or self.pipe.on:
                    self.errors.append(f"{self.ident!r} got PIPED, not offering a pipe")
                else:
                    self.pipe.on = True
                    if self.switch:  # our PIPED, the last frame through the socket
                        self.sock.send(protocol.frame([protocol.encode_signal(
                            protocol.PIPED)]), zmq.NOBLOCK)
                        self.pipe.sending = True
        records.extend(got)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close(linger=0)
            if self.pipe is not None:
                self.pipe.close()


class Backend:
    """A real ``Dispatcher`` bound on loopback, its scripted peers, and ``settle``.

    ``on_records(peer, records)`` is called with whatever each peer receives while the
    backend waits; it must not send (peers speak only when the test tells them to).
    """

    def __init__(self, on_records: Callable[[ScriptedPeer, list[protocol.Record]], None]
                 | None = None, **settings: Any) -> None:
        self.on_records = on_records or (lambda peer, records: None)
        self.clock = ManualClock()
        self.hub_errors: list[str] = []
        self._hub = gevent.get_hub()
        self._hub.handle_error = self._record_hub_error
        cfg = Config("front")
        cfg.set("backend", ["tcp://127.0.0.1:*"])
        for name, value in settings.items():
            cfg.set(name, value)
        self.cfg = cfg
        self.context = zmq.green.Context()
        self.peers: dict[bytes, ScriptedPeer] = {}
        self.heartbeats_sent: collections.Counter[bytes] = collections.Counter()
        self.closed = False
        self.dispatcher_closed = False
        try:
            self.dispatcher = Dispatcher(cfg, clock=self.clock)
        except BaseException:
            self.context.term()
            del self._hub.handle_error
            raise
        self.endpoint = self.dispatcher.endpoints[0]
        self.malformed_expected = self.dispatcher.malformed.total
        self._probe = self.dispatcher.probe
        self.dispatcher.probe = self._counted_probe  # type: ignore[method-assign]

    # -- plumbing ---------------------------------------------------------------------------

    def _record_hub_error(self, context: Any, kind: Any, value: Any, tb: Any) -> None:
        text = "".join(traceback.format_exception(kind, value, tb))
        self.hub_errors.append(f"in {context!r}:\n{text}")
        type(self._hub).handle_error(self._hub, context, kind, value, tb)

    def _counted_probe(self) -> None:
        for ident in list(self.dispatcher.peers):
            self.heartbeats_sent[ident] += 1
        self._probe()

    def connect(self, ident: bytes) -> ScriptedPeer:
        assert ident not in self.peers
        peer = ScriptedPeer(self.context, self.endpoint, ident)
        self.peers[ident] = peer
        return peer

    def open_peers(self) -> list[ScriptedPeer]:
        return [peer for peer in self.peers.values() if not peer.closed]

    def pump(self) -> int:
        """Hand every record the peers received to ``on_records``; return how many."""
        count = 0
        for peer in self.open_peers():
            records = peer.receive()
            if records:
                count += len(records)
                self.on_records(peer, records)
        return count

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = SETTLE_TIMEOUT,
             between: Callable[[], Any] | None = None) -> None:
        """Yield to the loop (and pump the peers) until ``predicate()``; fail at the deadline.
        ``between`` runs before each check (``probe``, to find a lost peer sooner)."""
        deadline = time.monotonic() + timeout
        spins = 0
        while True:
            self.pump()
            if predicate():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            # a few bare yields first (the loopback round trip is well under 1 ms), then
            # short sleeps so the zmq I/O threads get the CPU
            gevent.sleep(0 if spins < 5 else 0.001)
            spins += 1
            if between is not None:
                between()

    def _quiet(self) -> bool:
        d = self.dispatcher
        return not d._flush_scheduled and not d._dirty and \
            not any(peer.outbox for peer in d.peers.values())

    def _heard_every_probe(self) -> bool:
        return all(peer.heartbeats >= self.heartbeats_sent[peer.ident]
                   for peer in self.open_peers())

    # -- what tests call ---------------------------------------------------------------------

    def expect_malformed(self, count: int = 1) -> None:
        """The frames just sent make the dispatcher count ``count`` malformed messages."""
        self.malformed_expected += count

    def settle(self, senders: Iterable[ScriptedPeer] = ()) -> None:
        """Wait until the dispatcher handled everything ``senders`` sent and every peer
        received everything the dispatcher sent (see the module docstring)."""
        d = self.dispatcher
        for peer in {id(p): p for p in senders}.values():
            if not peer.closed:
                peer.send_raw(b"")  # the barrier: an empty frame is dropped and counted
                self.malformed_expected += 1
        self.wait(lambda: d.malformed.total >= self.malformed_expected,
                  f"the dispatcher to count {self.malformed_expected} malformed frames "
                  f"(counted {d.malformed.total})")
        for _ in range(100):
            self.wait(self._quiet, "the dispatcher to flush what it has to send")
            known = set(d.peers)
            self.probe()
            self.wait(self._heard_every_probe, "every peer to receive its HEARTBEATs")
            if set(d.peers) == known and self._quiet():
                break
        else:
            raise AssertionError("the dispatcher never stopped sending")
        for peer in self.open_peers():
            assert peer.heartbeats <= self.heartbeats_sent[peer.ident], \
                f"{peer.ident!r} got a HEARTBEAT no probe sent"
        self.raise_errors()
        assert d.malformed.total == self.malformed_expected, \
            f"the dispatcher counted {d.malformed.total} malformed messages, " \
            f"expected {self.malformed_expected}"

    def probe(self) -> None:
        self.dispatcher.probe()

    def lose(self, peer: ScriptedPeer) -> None:
        """Close ``peer``'s DEALER (linger 0) and wait until the dispatcher dropped it."""
        peer.close()
        self.wait(lambda: peer.ident not in self.dispatcher.peers,
                  f"the dispatcher to drop {peer.ident!r}", between=self.probe)

    def raise_errors(self) -> None:
        errors = list(self.hub_errors)
        for peer in self.peers.values():
            errors.extend(peer.errors)
        if errors:
            self.hub_errors.clear()
            for peer in self.peers.values():
                peer.errors.clear()
            raise AssertionError("errors inside the event loop:\n" + "\n".join(errors))

    def close_dispatcher(self) -> None:
        if not self.dispatcher_closed:
            self.dispatcher_closed = True
            self.dispatcher.close()

    def close(self) -> None:
        """Close the dispatcher, every peer (linger 0) and the peers' context."""
        if self.closed:
            return
        self.closed = True
        try:
            self.close_dispatcher()
        finally:
            for peer in self.peers.values():
                peer.close()
            self.context.term()
            gevent.sleep(0)  # let callbacks the close left behind run now, not in the next test
            self._hub.__dict__.pop("handle_error", None)
