"""Body rings through the real broker (``Dispatcher``), driven by Hypothesis.

A ``RuleBasedStateMachine`` drives a real ``Dispatcher`` (``support.peers.Backend``: real
ZeroMQ sockets on loopback, a manual clock) against one to three scripted workers at once.
Most of them share a real body ring: a ``WorkerRing`` (a sealed memfd made in this process,
of 1 to 3 groups of a window of 1 to 4 slots of 4 or 8 KiB) offered in a RING frame of its
own after a READY that names this host, which the dispatcher opens, checks and maps as it
would a worker's; one in four has none. The sinks are this test's: they stream their
bodies as the front's ``Connection`` does (``wsgi_zmq/front/server.py``: ``on_body``,
``_read_into_ring``, ``on_body_credit``, ``_keep``), some with ``presend`` (early credit:
they keep a copy of every piece sent before the worker's first CREDIT, call ``end_early``
once they keep ``EARLY_BUDGET`` bytes, and send the copies again, first, when a worker takes
the request anew), some straight into the ring (``BodyRing.slot``, ``view``, ``send_at``).
Every piece is tagged with its request's number in the model and its index (never the rid,
which changes when a request is sent again) and filled with bytes of its own; a piece is
smaller than a slot, as large, or larger (a BODY record then).

The rules are the events of a body's life, interleaved at will: a request is submitted; its
client sends pieces (sent at once under credit, or kept pending) or ends its body; its sink
cancels; a worker takes its next records (copying a BODY_AT piece out of its ring at once,
``WorkerRing.read``, or, for a *lazy* worker as ours is, only when its app consumes it,
before it grants the credit for it), starts the app (CREDIT of its window), consumes pieces
and grants credit (never more than its window outstanding), REJECTs a request it has not
started, answers (RESPONSE with RESP_END, ERROR 400 or 500, END before any head: after its
app read the whole body, or at any time), ends a ghost (END_ABORT for a request whose
CANCEL it took), or is lost; a new worker connects; the clock passes the request timeout
(every held request gets 504 and leaves a ghost). Two rules do several of these in a row:
``flow`` (a held request's client sends, its worker takes, starts, consumes and grants) and
``work`` (a worker's turn): Hypothesis turns a random part of the rules off in each example
(swarm testing), and a body flows far enough to reuse its slots only while every rule on
its way is on. The rules that end bodies (losses, timeouts, cancels, REJECTs, early
answers) each wait a few steps after their last use, or bodies would rarely get that far.

The model predicts, and the test checks after every step (``Backend.settle``, then
``Dispatcher.check()``):

- **every record each worker gets, in order**: REQUEST (under a rid never used), BODY or
  BODY_AT, END, CANCEL. A piece goes to the ring when its worker's ring was taken, it fits
  in a slot, and its request holds a group or one is free; it then names slot ``base + n mod
  window`` of its group; the model keeps the ring's free groups as ``BodyRing`` does, so it
  knows which group a request takes;
- **every piece a worker copies out is the one its sink sent for that request at that
  index**: no piece of another request, no stale bytes, in order, from piece 0, with no gap
  (at the body's END the worker has them all), also for a request handed back (REJECT) and
  served by another worker, which sees the whole body again from its start. A worker never
  reads a slot after its final record for that rid (it drops what comes later);
- **credit**: no worker gets more pieces than it granted, or before its first CREDIT more
  than its window, and only if the request got early credit: its sink presends and a group
  was free when it was dispatched. Each exchange's ``body_credit``, ``early`` and
  ``body_sent`` are what the rules say (the worker's first CREDIT of ``n`` leaves ``n``
  minus the pieces already sent);
- **groups**: the groups each ring holds are exactly those of the requests that the model
  says hold one (from the first piece, or from dispatch with early credit, to the worker's
  final record, also for a ghost; or to the worker's loss), and its free list is the
  model's; every worker's slots (ghosts too) are the model's, in order;
- **outcomes**: each sink's final call (response, 400, 500, 502 for an END before any head
  or a lost worker, 504) in the step that causes it, and whether a request a worker lost
  is sent again: a POST that may have run gets 502, one behind it in a worker that serves
  in order goes again if nothing of its body was sent to that worker, or only early
  pieces (its sink sends their copies again), and gets 502 if something was sent after its
  worker's first CREDIT.
- **lost workers**: the dispatcher forgets the worker, and unmaps and unfiles its ring.

At teardown every worker takes what it was sent and ends everything it holds (one final
record a step, so the groups' order stays predictable); what still waits is cancelled;
every group of every live ring is free, and every request ended exactly once or was
cancelled.

The budget: ``WSGI_ZMQ_RINGS_EXAMPLES`` (examples, default 100) and
``WSGI_ZMQ_RINGS_STEPS`` (steps per example, default 60): 9 to 13 s when it passes, on two
shared cores (a step costs about 1.5 ms of loopback round trips), with about a thousand
pieces copied out and checked, a hundred of them from a slot that held an earlier piece.
``WSGI_ZMQ_RINGS_EXAMPLES=800`` takes about 80 s. The machine catches, in its first
examples, a dispatcher that frees a group when the sink cancels (a ghost's piece then
reads back as another request's), one whose first CREDIT does not count the early pieces
(a worker then gets more than it granted) and one that never frees a group: each first by
the groups or the credit the model keeps, before any byte goes wrong.

Plain tests follow: the main paths and refusals of rings (a REJECT after early pieces, a
ghost's group, a second RING, a RING with another nonce, a job worker's RING, a lost
worker's ring), and two bugs this file found, kept as regression tests: a request lost
with early pieces before it started got 502 where the docs say it goes again, and a worker
that restated READY with a larger window got its early pieces overwritten (its ring stays
cut by the old window; credit is now held to it). The machine never restates READY.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import socket
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from support.machines import Driving, run_machine
from support.peers import Backend, ScriptedPeer
from wsgi_zmq import protocol as p
from wsgi_zmq.errors import HTTPError
from wsgi_zmq.front.dispatcher import DONE, MAX_LOSSES, QUEUED, SENT, Exchange, Ghost
from wsgi_zmq.ring import SUPPORTED, BodyRing, WorkerRing

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="no memfd seals on this system")

EXAMPLES = int(os.environ.get("WSGI_ZMQ_RINGS_EXAMPLES", "100"))
STEPS = int(os.environ.get("WSGI_ZMQ_RINGS_STEPS", "60"))

RT: Final = 1000.0  # request_timeout, in seconds of the manual clock
QT: Final = 1e7  # queue_timeout: never reached
HB: Final = 100.0  # heartbeat
QUEUE_SIZE: Final = 16  # more than ever waits: no 503
MAX_LIVE: Final = 6  # requests not ended at once
MAX_WORKERS: Final = 3  # connected at once
MAX_CONNECTS: Final = 6  # workers in one example (a loss needs a worker to come)
HOST: Final = socket.gethostname()
#: what a presending sink keeps before it calls ``end_early`` (the front's ``EARLY_BYTES``,
#: scaled down to this test's pieces)
EARLY_BUDGET: Final = 6000
#: a piece smaller than the smallest slot, about as large as it, larger than it but not than
#: the largest, larger than any
SIZES = st.one_of(st.integers(24, 300), st.integers(24, 300), st.integers(3000, 4096),
                  st.integers(4097, 8192), st.integers(8193, 9000))
#: steps between two losses of a worker, two timeouts, two cancels (each ends bodies that
#: would otherwise flow long enough to reuse their slots)
LOSS_EVERY: Final = 15
TIMEOUT_EVERY: Final = 25
CANCEL_EVERY: Final = 4
#: and between two REJECTs, two answers before the app read the whole body
REJECT_EVERY: Final = 4
ANSWER_EVERY: Final = 6
HOWS: Final = ("response", "response", "error400", "error500", "end")
FINALS: Final = {"response": ("response", p.RESP_END), "error400": ("failure", 400),
                 "error500": ("failure", 500), "end": ("failure", 502)}

Call = tuple[Any, ...]
Located = tuple[WorkerRing, int, int]
_TAG = re.compile(rb"<r(\d+) piece (\d+)>")


def piece(number: int, index: int, size: int) -> bytes:
    """Piece ``index`` of request ``number``'s body: its tag, then bytes of its own."""
    tag = b"<r%d piece %d>" % (number, index)
    return tag + random.Random(number << 20 | index).randbytes(max(0, size - len(tag)))


def describe(data: bytes) -> str:
    """What a piece a worker read is: which request's piece, or garbage."""
    found = _TAG.match(data)
    if found is None:
        return f"{len(data)} bytes that are no piece ({data[:24]!r}...)"
    return f"{len(data)} bytes of piece {int(found[2])} of r{int(found[1])}"


class Shape(NamedTuple):
    """A worker to connect: with a ring or not, its READY and its ring's cut, how it serves
    (concurrent: at once; else in order) and when it copies a BODY_AT piece out (lazy: when
    its app consumes it; else when it takes the record), and whether it offers a pipe
    after its ring (the front's frames then come through it, after PIPED)."""

    ring: bool = True
    capacity: int = 2
    window: int = 2
    groups: int = 2
    slot_size: int = 4096
    concurrent: bool = False
    lazy: bool = True
    pipe: bool = False


SHAPES = st.builds(Shape, ring=st.sampled_from([True, True, True, False]),
                   capacity=st.integers(1, 3), window=st.integers(1, 4),
                   groups=st.integers(1, 3), slot_size=st.sampled_from([4096, 8192]),
                   concurrent=st.booleans(), lazy=st.booleans(), pipe=st.booleans())


# -- the model -------------------------------------------------------------------------------

@dataclass(eq=False)
class Req:
    """One request, as its sink (a client connection) and the model see it: by identity
    (its rid changes when it is sent again)."""

    number: int
    ex: Exchange
    presend: bool
    direct: bool  # a Content-Length body: its pieces are read straight into the ring
    body: list[bytes] = field(default_factory=list)  # every piece its client sent, in order
    # as ``HttpExchange``: read, not sent to the worker holding it; the copies of what went
    # under early credit; whether the client's body is over; whether END went to its worker
    pending: collections.deque[bytes] = field(default_factory=collections.deque)
    kept: list[bytes] = field(default_factory=list)
    kept_bytes: int = 0
    request_done: bool = False
    end_sent: bool = False
    cancelled: bool = False  # the sink cancelled it
    done: bool = False  # the model says it ended (or was cancelled)
    at: Slot | None = None  # the worker's slot holding it (model)
    waiting: bool = False  # in the dispatcher's queue (model)
    losses: int = 0
    finals: list[Call] = field(default_factory=list)  # the sink's final calls
    expected: list[Call] = field(default_factory=list)  # final calls due in this step
    mark: int = 0  # len(finals) when this step began

    @property
    def live(self) -> bool:
        return not self.done

    def __repr__(self) -> str:
        return f"r{self.number}"


@dataclass(eq=False)
class Slot:
    """One of a worker's slots as the dispatcher must see it (predicted)."""

    req: Req
    worker: Worker
    rid: int
    early: bool  # ``ex.early``
    credit: int  # ``ex.body_credit``
    sent: int = 0  # ``ex.body_sent``
    ghost: bool = False

    def __repr__(self) -> str:
        return f"{self.req}{'~' if self.ghost else ''}@{self.rid:x}"


@dataclass(eq=False)
class Serving:
    """One request as its worker sees it, from its REQUEST (on the wire) on."""

    req: Req
    rid: int
    window: int  # its worker's
    early: int  # pieces the front may send before the first CREDIT
    arrived: int = 0  # data records that reached the worker's socket
    taken: bool = False  # the worker took its REQUEST
    pieces: int = 0  # data records taken
    body: collections.deque[tuple[int, bytes | Located]] = field(
        default_factory=collections.deque)  # taken, not consumed: the piece, or where it is
    copied: dict[int, bytes] = field(default_factory=dict)  # every piece copied out, by index
    consumed: int = 0
    granted: int = 0
    started: bool = False  # its app started reading: CREDIT of the window
    cancelled: bool = False  # the worker took its CANCEL
    ended: bool = False  # the worker took the END of its body
    final: bool = False  # the worker sent its final record

    def read_all(self) -> bool:
        """Its app read the whole body."""
        return self.ended and not self.body

    def reading(self) -> bool:
        """Its app reads: it has pieces to consume, or credit to grant."""
        return self.started and (bool(self.body) or self.granted - self.consumed < self.window)

    def __repr__(self) -> str:
        return f"{self.req}@{self.rid:x}"


@dataclass(eq=False)
class Worker:
    """One scripted worker: its wire, its ring, what it received and what the dispatcher
    must think it holds."""

    name: str
    wire: ScriptedPeer
    shape: Shape
    ring: WorkerRing | None = None  # its side of its ring, once offered
    offered: bool = False
    taken: BodyRing | None = None  # the dispatcher's side of it, once taken
    free: list[int] = field(default_factory=list)  # ``BodyRing.free`` (model)
    held: dict[int, int] = field(default_factory=dict)  # ``BodyRing.held`` (model)
    slots: list[Slot] = field(default_factory=list)  # the dispatcher's, in order (model)
    expected: collections.deque[tuple[Any, ...]] = field(default_factory=collections.deque)
    inbox: collections.deque[p.Record] = field(default_factory=collections.deque)
    serving: dict[int, Serving] = field(default_factory=dict)  # by rid, every REQUEST
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    lost: bool = False
    piped: bool = False  # it got PIPED: the front's frames now come through its pipe

    @property
    def ident(self) -> bytes:
        return self.wire.ident

    @property
    def window(self) -> int:
        return self.shape.window

    def slot(self, rid: int) -> Slot | None:
        for slot in self.slots:
            if slot.rid == rid:
                return slot
        return None

    def holding(self) -> list[Serving]:
        """What it believes it holds: REQUESTs taken, no final record sent."""
        return [s for s in self.serving.values() if s.taken and not s.final]

    def __repr__(self) -> str:
        return self.name


class RingSink:
    """The sink of every request: passes each call to the machine (it never raises: the
    calls come from inside the dispatcher's callbacks, where the hub would swallow it)."""

    def __init__(self, machine: RingsMachine) -> None:
        self.machine = machine

    def _guard(self, what: Callable[[], None]) -> None:
        try:
            what()
        except Exception:
            self.machine.violation(f"the sink raised:\n{traceback.format_exc()}")

    def on_response(self, ex: Exchange, flags: int, payload: bytes) -> None:
        self._guard(lambda: self.machine.final(ex, ("response", flags & p.RESP_END)))

    def on_chunk(self, ex: Exchange, data: bytes) -> None:
        self.machine.violation(f"a CHUNK for {ex!r}: no worker sent one")

    def on_end(self, ex: Exchange, flags: int, tail: bytes) -> None:
        self._guard(lambda: self.machine.final(ex, ("end", flags)))

    def on_failure(self, ex: Exchange, error: HTTPError) -> None:
        self._guard(lambda: self.machine.final(ex, ("failure", error.status)))

    def on_body_credit(self, ex: Exchange, count: int) -> None:
        self._guard(lambda: self.machine.body_credit(ex, count))


# -- the machine -----------------------------------------------------------------------------

class RingsMachine(Driving, RuleBasedStateMachine):
    """A dispatcher, its ring workers and the sinks; see the module docstring. The rules
    pick their objects by index; the methods they call (``connect_worker``, ``send``,
    ``take_from``, ``end_one`` ...) take the objects, for the plain tests."""

    def __init__(self) -> None:
        super().__init__()
        self.backend: Backend | None = None
        self.broken = False
        self.workers: list[Worker] = []
        self.by_ident: dict[bytes, Worker] = {}
        self.reqs: list[Req] = []
        self.by_ex: dict[Exchange, Req] = {}
        self.rids: set[int] = set()  # every rid a worker was given
        self.rings: list[WorkerRing] = []  # every ring made: closed at teardown
        self.violations: list[str] = []
        self.sink = RingSink(self)
        self.steps = 0
        self.last: dict[str, int] = collections.defaultdict(int)  # step of the last loss ...

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self) -> Iterator[list[ScriptedPeer]]:
        """One step: the body acts (and predicts); then settle and check everything."""
        self.steps += 1
        for r in self.reqs:
            r.expected = []
            r.mark = len(r.finals)
        with self.settling() as senders:
            yield senders

    def open_workers(self) -> list[Worker]:
        return [w for w in self.workers if not w.lost]

    def servings(self, condition: Callable[[Serving], bool] = lambda s: True
                 ) -> list[tuple[Worker, Serving]]:
        return [(w, s) for w in self.open_workers() for s in w.holding() if condition(s)]

    def since(self, what: str, steps: int) -> bool:
        """Have ``steps`` steps passed since the last ``what`` (a rule's own rate)?"""
        return self.steps - self.last[what] >= steps

    def streaming(self) -> list[Req]:
        """Requests whose client is still sending its body."""
        return [r for r in self.reqs if r.live and not r.request_done]

    # -- what the sink does (``Connection``, written again) ----------------------------------

    def body_credit(self, ex: Exchange, count: int) -> None:
        """``Connection.on_body_credit``: ``count`` 0 is a new worker (learn it, and put
        the copies kept back at the head of what is pending); more is its credit."""
        r = self.by_ex[ex]
        if r.done:
            self.violation(f"{r}: on_body_credit({count}) after it ended")
            return
        if not count:
            self.assigned(r, ex)
            r.end_sent = False
            if r.kept:
                r.pending.extendleft(reversed(r.kept))
                r.kept = []
                r.kept_bytes = 0
        elif not ex.early:
            r.kept = []  # the worker's own credit: it started, and has those pieces
            r.kept_bytes = 0
        while r.pending and ex.body_credit > 0:
            self.send_piece(r, r.pending.popleft(), fresh=False)
        if r.request_done and not r.pending and ex.worker is not None and \
                (count or ex.early) and not r.end_sent:
            self.end_body(r)

    def assigned(self, r: Req, ex: Exchange) -> None:
        """The dispatcher gave ``r`` to a worker (``_assign``): early credit if it
        presends, the worker's ring was taken and one of its groups is free (it takes it)."""
        w = self.by_ident.get(ex.worker.ident) if ex.worker is not None else None
        if w is None:
            self.violation(f"{r} assigned to {ex.worker!r}, no worker of the model")
            return
        if r.at is not None:
            self.violation(f"{r} assigned to {w} while the model has it at {r.at.worker}")
        if not r.waiting:
            self.violation(f"{r} assigned to {w}, but the model has it waiting nowhere")
        if ex.rid in self.rids:
            self.violation(f"{r} assigned to {w} under {ex.rid:x}, a rid given before")
        self.rids.add(ex.rid)
        r.waiting = False
        early = r.presend and w.taken is not None and bool(w.free)
        slot = Slot(r, w, ex.rid, early, w.window if early else 0)
        if early:
            w.held[ex.rid] = w.free.pop()
        w.slots.append(slot)
        w.expected.append(("REQUEST", ex.rid, slot))
        r.at = slot
        if len(w.slots) > w.shape.capacity:
            self.violation(f"{w} holds {w.slots}, over its capacity {w.shape.capacity}")
        if ex.early != early or ex.body_credit != slot.credit:
            self.violation(f"{r} assigned to {w}: early {ex.early}, credit {ex.body_credit}; "
                           f"model {early}, {slot.credit} (free groups: {w.free})")

    def ring_slot(self, w: Worker, rid: int, index: int) -> int:
        """``BodyRing.slot`` (model): the slot of piece ``index``, taking a group for
        ``rid`` if it holds none; -1 if none is free."""
        base = w.held.get(rid)
        if base is None:
            if not w.free:
                return -1
            base = w.held[rid] = w.free.pop()
        return base + index % w.window

    def send_piece(self, r: Req, data: bytes, fresh: bool) -> None:
        """Send the next piece of ``r``'s body to its worker (it has credit): straight into
        its slot (``_read_into_ring``: a fresh piece of a Content-Length body, not under
        early credit, that fits), else ``send_body``; keep a copy under early credit."""
        ex = r.ex
        slot = r.at
        assert slot is not None and ex.worker is not None, f"{r}: a piece, and no worker"
        w = slot.worker
        index = ex.body_sent
        if index != slot.sent:
            self.violation(f"{r}: body_sent {index}, model {slot.sent}")
        if index >= len(r.body) or r.body[index] != data:
            self.violation(f"{r}: the sink sends {describe(data)} as piece {index}")
        ring = ex.worker.ring
        if fresh and r.direct and not ex.early and ring is not None and \
                len(data) <= ring.slot_size:
            at = ring.slot(ex.rid, index)
            want = self.ring_slot(w, ex.rid, index)
            if at != want:
                self.violation(f"{r}: BodyRing.slot gave slot {at} for piece {index}, "
                               f"model {want}")
            if at >= 0:
                view = ring.view(at)
                try:
                    view[:len(data)] = data
                finally:
                    view.release()
                self.d.send_at(ex, at, len(data))
                w.expected.append(("BODY_AT", ex.rid, at, len(data)))
                self.sent(r, slot, data)
                return
        at = -1
        if w.taken is not None and len(data) <= w.shape.slot_size:
            at = self.ring_slot(w, ex.rid, index)
        if at >= 0:
            w.expected.append(("BODY_AT", ex.rid, at, len(data)))
        else:
            w.expected.append(("BODY", ex.rid, data))
        self.d.send_body(ex, data)
        self.sent(r, slot, data)

    def sent(self, r: Req, slot: Slot, data: bytes) -> None:
        slot.sent += 1
        slot.credit -= 1
        if r.ex.early:  # ``_keep``
            r.kept.append(data)
            r.kept_bytes += len(data)
            if r.kept_bytes >= EARLY_BUDGET:
                self.d.end_early(r.ex)
                slot.credit = 0

    def end_body(self, r: Req) -> None:
        assert r.at is not None
        self.d.end_body(r.ex)
        r.end_sent = True
        r.at.worker.expected.append(("END", r.ex.rid))

    def final(self, ex: Exchange, call: Call) -> None:
        r = self.by_ex[ex]
        if r.cancelled:
            self.violation(f"{r}: final call {call} after the sink cancelled it")
        r.finals.append(call)
        if len(r.finals) > 1:
            self.violation(f"{r}: a second final call: {r.finals}")

    def expect_final(self, r: Req, call: Call) -> None:
        r.expected.append(call)
        r.done = True
        r.at = None
        r.waiting = False

    # -- what the workers get ---------------------------------------------------------------

    def on_records(self, wire: ScriptedPeer, records: list[p.Record]) -> None:
        """What reached a worker's socket: the record the model predicted next, and within
        credit; it waits in the worker's inbox until the worker takes it."""
        w = self.by_ident[wire.ident]
        for record in records:
            kind, rid, payload = record
            if kind == p.HEARTBEAT:
                continue
            if kind == p.PIPED:
                if not w.shape.pipe or w.piped:
                    self.violation(f"{w} got PIPED (pipe {w.shape.pipe}, piped {w.piped})")
                w.piped = True
                continue
            w.inbox.append(record)
            name = p.KIND_NAMES.get(kind, str(kind))
            want = w.expected.popleft() if w.expected else None
            if want is None or want[0] != name or want[1] != rid:
                self.violation(f"{w} got {name} for {rid:x}; the model sent it {want}")
                if want is not None:
                    w.expected.appendleft(want)
                continue
            if kind == p.REQUEST:
                slot = want[2]
                target = p.decode_request(payload).target
                if target != f"/r{slot.req.number}":
                    self.violation(f"{w} got {target} under {rid:x}, the rid of {slot.req}")
                if rid in w.serving:
                    self.violation(f"{w} got a second REQUEST for {rid:x}")
                w.serving[rid] = Serving(slot.req, rid, w.window, w.window if slot.early else 0)
            elif kind == p.BODY_AT:
                if payload != p.BODY_AT_HEAD.pack(want[2], want[3]):
                    self.violation(f"{w} got BODY_AT{p.BODY_AT_HEAD.unpack(payload)} for "
                                   f"{rid:x}, model {want[2:]}")
            elif kind == p.BODY:
                if payload != want[2]:
                    self.violation(f"{w} got a BODY of {describe(payload)} for {rid:x}, "
                                   f"model {describe(want[2])}")
            if kind in (p.BODY, p.BODY_AT):
                w.kinds[name] += 1
                s = w.serving.get(rid)
                if s is None:
                    continue
                s.arrived += 1
                bound = max(s.granted, s.early)
                if s.arrived > bound:
                    self.violation(f"{w} got piece {s.arrived} of {s}, beyond its credit: "
                                   f"granted {s.granted}, early {s.early}")

    # -- the worker's side -----------------------------------------------------------------

    def take_from(self, w: Worker, count: int) -> None:
        """``w`` takes its next ``count`` records (it drops those of requests it ended:
        it never reads a slot for them)."""
        with self.step():
            for _ in range(count):
                if not w.inbox:
                    break
                self.take_record(w, *w.inbox.popleft())

    def take_record(self, w: Worker, kind: int, rid: int, payload: bytes) -> None:
        s = w.serving.get(rid)
        if s is None:
            self.violation(f"{w} took {p.KIND_NAMES[kind]} for {rid:x}, never given")
            return
        if kind == p.REQUEST:
            s.taken = True
            return
        if s.final:
            return  # ended: dropped, never read
        if kind == p.BODY:
            self.copied(w, s, s.pieces, bytes(payload))
            s.body.append((s.pieces, bytes(payload)))
            s.pieces += 1
        elif kind == p.BODY_AT:
            where = w.ring.locate(payload) if w.ring is not None else None
            if where is None:
                self.violation(f"{w} got a BODY_AT for {s} that names no slot of its ring")
                return
            if w.shape.lazy:
                s.body.append((s.pieces, where))
            else:
                data = where[0].read(payload)
                assert data is not None
                self.copied(w, s, s.pieces, data)
                s.body.append((s.pieces, data))
            s.pieces += 1
        elif kind == p.END:
            s.ended = True
            if s.pieces != len(s.req.body):
                self.violation(f"{w} took the END of {s} after {s.pieces} pieces; its "
                               f"body has {len(s.req.body)}")
        elif kind == p.CANCEL:
            s.cancelled = True
        else:
            self.violation(f"{w} took {p.KIND_NAMES[kind]} for {s}")

    def copied(self, w: Worker, s: Serving, index: int, data: bytes) -> None:
        """``w`` copied piece ``index`` of ``s`` out: it must be the sink's."""
        body = s.req.body
        if index >= len(body) or data != body[index]:
            sent = describe(body[index]) if index < len(body) else "nothing"
            self.violation(f"{w} read piece {index} of {s} and got {describe(data)}; its "
                           f"sink sent {sent}")
        s.copied[index] = data

    def grant(self, w: Worker, s: Serving, count: int) -> None:
        """``w`` sends CREDIT(count) for ``s``; the front applies it (model) as
        ``_on_exchange_record`` does."""
        s.granted += count
        w.wire.send(p.encode_credit(s.rid, count))
        slot = w.slot(s.rid)
        if slot is None:
            self.violation(f"{w} grants credit for {s}, which the front does not hold")
            return
        if slot.ghost:
            return
        if slot.early:
            slot.early = False
            credit = max(0, count - slot.sent)
        else:
            credit = slot.credit + count
        if credit > w.window:  # no worker of ours grants past its window
            assert self.backend is not None
            self.backend.expect_malformed()
            credit = w.window
        slot.credit = credit

    def start_one(self, w: Worker, s: Serving) -> None:
        """The app starts reading: CREDIT of the window."""
        with self.step() as senders:
            s.started = True
            self.grant(w, s, w.window)
            senders.append(w.wire)

    def consume_one(self, w: Worker, s: Serving, count: int, grant: int) -> None:
        """The app reads up to ``count`` pieces (a lazy worker copies each out now); then
        the worker grants up to ``grant``, never past a window outstanding."""
        with self.step() as senders:
            for _ in range(count):
                if not s.body:
                    break
                index, item = s.body.popleft()
                if isinstance(item, tuple):
                    ring, start, length = item
                    self.copied(w, s, index, ring.take(start, length))
                s.consumed += 1
            grant = min(grant, w.window - (s.granted - s.consumed))
            if grant > 0 and not s.cancelled:
                self.grant(w, s, grant)
                senders.append(w.wire)

    def end_one(self, w: Worker, s: Serving, how: str) -> None:
        """``w`` sends its final record for ``s``: REJECT, or an answer (``HOWS``)."""
        with self.step() as senders:
            if how == "reject":
                record = p.encode_signal(p.REJECT, s.rid)
            elif how == "response":
                head = b"HTTP/1.1 200 OK\r\n\r\n"
                record = p.encode_response(s.rid, p.RESP_END, head, b"ok")
            elif how.startswith("error"):
                record = p.encode_error(s.rid, int(how[5:]), "failed")
            else:
                record = p.encode_end(s.rid, p.END_ABORT)
            s.final = True
            w.wire.send(record)
            senders.append(w.wire)
            self.front_final(w, s.rid, how)

    def front_final(self, w: Worker, rid: int, how: str) -> None:
        """``_release`` (model): the slot and its group are free; a live exchange ends, or
        (REJECT) waits at the head of the queue."""
        slot = w.slot(rid)
        if slot is None:
            self.violation(f"{w} ends {rid:x}, which the front does not hold")
            return
        w.slots.remove(slot)
        base = w.held.pop(rid, None)
        if base is not None:
            w.free.append(base)
        if slot.ghost:
            return
        r = slot.req
        r.at = None
        if how == "reject":
            r.waiting = True
        else:
            self.expect_final(r, FINALS[how])

    def lose_worker(self, w: Worker, by_pipe: bool = False) -> None:
        """``_drop`` (model): every slot and group is free, the ring unmapped; what it held
        fails over (``_fail_over``). ``by_pipe``: a worker whose pipe is on closes only its
        pipe first; the dispatcher's next frame to it (a probe) finds the pipe closed and
        drops it then, with its socket still connected."""
        assert self.backend is not None
        with self.step():
            if by_pipe and w.piped:
                assert w.wire.pipe is not None
                w.wire.pipe.close()
                self.backend.probe()
                if w.ident in self.d.peers:
                    self.violation(f"{w}: its pipe closed, the dispatcher kept it")
            order = list(w.slots)
            running = order[0] if order else None
            for slot in order:
                if slot.ghost:
                    continue
                r = slot.req
                r.at = None
                r.losses += 1
                if w.shape.concurrent or slot is running or r.losses >= MAX_LOSSES:
                    self.expect_final(r, ("failure", 502))  # a POST that may have run
                elif slot.sent == 0 or slot.early:
                    r.waiting = True  # (early: the sink sends its copies again)
                else:
                    self.expect_final(r, ("failure", 502))  # part of its body went
            w.slots.clear()
            w.held.clear()
            w.free.clear()
            w.expected.clear()
            w.inbox.clear()
            w.lost = True
            self.backend.lose(w.wire)
        if w.ring is not None:
            w.ring.close()

    def connect_worker(self, shape: Shape) -> Worker:
        """A worker connects (READY naming this host); with ``shape.ring`` it offers its
        ring in a frame of its own, in a step of its own (so the model knows which requests
        the worker took before its ring)."""
        assert self.backend is not None
        name = f"w{len(self.workers)}"
        wire = self.backend.connect(name.encode())
        w = Worker(name, wire, shape)
        self.workers.append(w)
        self.by_ident[wire.ident] = w
        with self.step() as senders:
            flags = p.READY_CONCURRENT if shape.concurrent else 0
            wire.send(p.encode_ready(shape.capacity, shape.window, os.getpid(), HOST, flags))
            senders.append(wire)
        if shape.ring:
            w.ring = WorkerRing(shape.groups, shape.window, shape.slot_size)
            self.rings.append(w.ring)
            with self.step() as senders:
                w.offered = True
                w.free = [g * shape.window for g in range(shape.groups - 1, -1, -1)]
                wire.send(w.ring.offer(os.getpid()))
                senders.append(wire)
            if shape.pipe:
                with self.step() as senders:
                    wire.offer_pipe()
                    senders.append(wire)
                if not w.piped:
                    self.violation(f"{w} offered a pipe and got no PIPED")
        return w

    # -- the sink's side -------------------------------------------------------------------

    def submit_one(self, presend: bool, direct: bool) -> Req:
        ex = Exchange(self.d.new_rid(), self.sink)
        r = Req(len(self.reqs), ex, presend, direct)
        ex.presend = presend
        ex.body_complete = False
        ex.record = p.encode_request(
            ex.rid, p.REQ_EXPECT, b"POST", b"/r%d" % r.number, b"HTTP/1.1", b"127.0.0.1", 40000,
            b"localhost", 8000, b"http", [b"Host", b"localhost"], 8)
        self.reqs.append(r)
        self.by_ex[ex] = r
        with self.step():
            r.waiting = True
            self.d.submit(ex)
        return r

    def send(self, r: Req, sizes: Sequence[int]) -> None:
        """``r``'s client sends pieces (``Connection.on_body``): each goes at once if its
        worker has credit and nothing is pending, else it waits."""
        with self.step():
            for size in sizes:
                data = piece(r.number, len(r.body), size)
                r.body.append(data)
                ex = r.ex
                if ex.worker is not None and not r.pending and ex.body_credit > 0:
                    self.send_piece(r, data, fresh=True)
                else:
                    r.pending.append(data)

    def end_request(self, r: Req) -> None:
        """``r``'s client sent its whole body (``Connection.on_request_end``)."""
        with self.step():
            r.request_done = True
            if r.ex.worker is not None and not r.pending:
                self.end_body(r)

    def cancel_one(self, r: Req) -> None:
        """The sink gives up: a worker holding it is told to CANCEL (its ghost keeps the
        slot, and the group)."""
        with self.step():
            if r.at is not None:
                r.at.ghost = True
                r.at.worker.expected.append(("CANCEL", r.at.rid))
            r.cancelled = r.done = True
            r.at = None
            r.waiting = False
            self.d.cancel(r.ex)

    def time_out(self) -> None:
        """The clock passes the request timeout: every request a worker holds gets 504 and
        is CANCELled (worker by worker, in the order of its slots)."""
        assert self.backend is not None
        with self.step():
            self.backend.clock.advance(RT + 1)
            for w in self.open_workers():
                for slot in w.slots:
                    if not slot.ghost:
                        slot.ghost = True
                        w.expected.append(("CANCEL", slot.rid))
                        self.expect_final(slot.req, ("failure", 504))
            self.d.tick()

    # -- checks ------------------------------------------------------------------------------

    def check_step(self) -> None:
        d = self.d
        problems = list(self.violations)
        self.violations.clear()
        d.check()
        for w in self.workers:
            problems.extend(self.check_worker(w))
        for r in self.reqs:
            problems.extend(self.check_req(r))
        if problems:
            raise AssertionError("after this step:\n  " + "\n  ".join(problems))

    def check_worker(self, w: Worker) -> list[str]:
        d = self.d
        problems = []
        if w.expected:
            problems.append(f"{w} never got {list(w.expected)}")
            w.expected.clear()
        if w.lost:
            if w.ident in d.peers:
                problems.append(f"lost {w} is still a peer")
            if w.taken is not None:
                if not w.taken.mm.closed or w.taken.key in d.rings:
                    problems.append(f"lost {w}: its ring is still mapped or filed")
            return problems
        peer = d.peers.get(w.ident)
        if peer is None:
            return [*problems, f"{w} is no peer of the dispatcher"]
        if w.offered and w.taken is None:
            w.taken = peer.ring
            if w.taken is None:
                return [*problems, f"{w}: its ring was refused"]
            if (w.taken.groups, w.taken.window, w.taken.slot_size) != \
                    (w.shape.groups, w.window, w.shape.slot_size):
                problems.append(f"{w}: the ring was cut as {w.taken.groups} groups of "
                                f"{w.taken.window} slots of {w.taken.slot_size}")
        if peer.ring is not w.taken:
            problems.append(f"{w}: the dispatcher's ring is {peer.ring!r}, not {w.taken!r}")
        if (peer.pipe is not None) != w.piped:
            problems.append(f"{w}: the dispatcher's pipe is {peer.pipe!r}, piped {w.piped}")
        if peer.pipe is not None and peer.pipe.reading and not (
                w.wire.pipe is not None and w.wire.pipe.sending):
            problems.append(f"{w}: the dispatcher reads a pipe the worker never switched to")
        if w.taken is not None:
            if w.taken.held != w.held or w.taken.free != w.free:
                problems.append(f"{w}: groups held {w.taken.held}, free {w.taken.free}; "
                                f"model {w.held}, {w.free}")
            if d.rings.get(w.taken.key) is not peer:
                problems.append(f"{w}: its ring is not filed under its key")
        slots = [(rid, isinstance(slot, Ghost)) for rid, slot in peer.slots.items()]
        model = [(slot.rid, slot.ghost) for slot in w.slots]
        if slots != model:
            problems.append(f"{w}: slots {slots}, model {w.slots}")
        return problems

    def check_req(self, r: Req) -> list[str]:
        d = self.d
        ex = r.ex
        problems = []
        new = r.finals[r.mark:]
        if new != r.expected:
            problems.append(f"{r}: final calls {new}, expected {r.expected}")
        if r.done:
            if ex.state != DONE:
                problems.append(f"{r} ended (model), but is {ex!r}")
            return problems
        if r.waiting:
            if ex.state != QUEUED:
                problems.append(f"{r} waits (model), but is {ex!r}")
            return problems
        slot = r.at
        if slot is None or ex.state != SENT:
            return [*problems, f"{r}: {ex!r}, model at {slot}"]
        if ex.worker is not d.peers.get(slot.worker.ident) or ex.rid != slot.rid:
            problems.append(f"{r}: at {ex.worker!r} under {ex.rid:x}, model {slot}")
        state = (ex.body_credit, ex.early, ex.body_sent)
        if state != (slot.credit, slot.early, slot.sent):
            problems.append(f"{r}: (credit, early, sent) {state}, model "
                            f"{(slot.credit, slot.early, slot.sent)}")
        if r.kept and not ex.early:
            problems.append(f"{r} keeps pieces its worker has taken")
        return problems

    # -- rules -------------------------------------------------------------------------------

    @initialize(shapes=st.lists(SHAPES, min_size=1, max_size=3))
    def init(self, shapes: Sequence[Shape] = ()) -> None:
        """The dispatcher, and the workers connected at first."""
        self.backend = Backend(self.on_records, queue_size=QUEUE_SIZE, request_timeout=RT,
                               queue_timeout=QT, heartbeat=HB, eject_after=0)
        for shape in shapes:
            self.connect_worker(shape)

    @precondition(lambda self: len(self.open_workers()) < MAX_WORKERS
                  and len(self.workers) < MAX_CONNECTS)
    @rule(shape=SHAPES)
    def connect(self, shape: Shape) -> None:
        self.connect_worker(shape)

    @precondition(lambda self: sum(r.live for r in self.reqs) < MAX_LIVE)
    @rule(presend=st.sampled_from([True, True, False]), direct=st.booleans())
    def submit(self, presend: bool, direct: bool) -> None:
        self.submit_one(presend, direct)

    @precondition(lambda self: self.streaming())
    @rule(index=st.integers(0, 7), sizes=st.lists(SIZES, min_size=1, max_size=3))
    def client_sends(self, index: int, sizes: list[int]) -> None:
        candidates = self.streaming()
        self.send(candidates[index % len(candidates)], sizes)

    @precondition(lambda self: self.streaming())
    @rule(index=st.integers(0, 7))
    def client_ends(self, index: int) -> None:
        candidates = self.streaming()
        self.end_request(candidates[index % len(candidates)])

    @precondition(lambda self: any(r.live for r in self.reqs)
                  and self.since("cancel", CANCEL_EVERY))
    @rule(index=st.integers(0, 7))
    def cancel(self, index: int) -> None:
        candidates = [r for r in self.reqs if r.live]
        self.last["cancel"] = self.steps
        self.cancel_one(candidates[index % len(candidates)])

    @precondition(lambda self: any(w.inbox for w in self.open_workers()))
    @rule(index=st.integers(0, 3), count=st.sampled_from([1, 2, 3, 100]))
    def take(self, index: int, count: int) -> None:
        candidates = [w for w in self.open_workers() if w.inbox]
        self.take_from(candidates[index % len(candidates)], count)

    @precondition(lambda self: self.servings(lambda s: not s.started and not s.cancelled))
    @rule(index=st.integers(0, 7))
    def start(self, index: int) -> None:
        candidates = self.servings(lambda s: not s.started and not s.cancelled)
        self.start_one(*candidates[index % len(candidates)])

    @precondition(lambda self: self.servings(Serving.reading))
    @rule(index=st.integers(0, 7), count=st.integers(0, 4), grant=st.integers(0, 4))
    def consume(self, index: int, count: int, grant: int) -> None:
        candidates = self.servings(Serving.reading)
        self.consume_one(*candidates[index % len(candidates)], count, grant)

    @precondition(lambda self: self.servings(lambda s: not s.started)
                  and self.since("reject", REJECT_EVERY))
    @rule(index=st.integers(0, 7))
    def reject(self, index: int) -> None:
        candidates = self.servings(lambda s: not s.started)
        self.last["reject"] = self.steps
        self.end_one(*candidates[index % len(candidates)], "reject")

    @precondition(lambda self: self.servings(Serving.read_all))
    @rule(index=st.integers(0, 7), how=st.sampled_from(HOWS))
    def answer(self, index: int, how: str) -> None:
        """The app read the whole body, and answers."""
        candidates = self.servings(Serving.read_all)
        self.end_one(*candidates[index % len(candidates)], how)

    @precondition(lambda self: self.servings() and self.since("answer_now", ANSWER_EVERY))
    @rule(index=st.integers(0, 7), how=st.sampled_from(HOWS))
    def answer_now(self, index: int, how: str) -> None:
        """The app answers before it read the whole body, or before it started."""
        candidates = self.servings()
        self.last["answer_now"] = self.steps
        self.end_one(*candidates[index % len(candidates)], how)

    @precondition(lambda self: self.servings(lambda s: s.cancelled))
    @rule(index=st.integers(0, 7))
    def answer_ghost(self, index: int) -> None:
        candidates = self.servings(lambda s: s.cancelled)
        self.end_one(*candidates[index % len(candidates)], "end")

    def held_streaming(self) -> list[Req]:
        return [r for r in self.streaming() if r.at is not None]

    @precondition(lambda self: self.held_streaming())
    @rule(index=st.integers(0, 7), sizes=st.lists(SIZES, min_size=1, max_size=4),
          start=st.sampled_from([True, True, False]))
    def flow(self, index: int, sizes: list[int], start: bool) -> None:
        """The body of a request a worker holds flows: its client sends ``sizes``; the
        worker takes every record, its app starts (``start``), consumes every piece and
        grants what it may. (One rule for what takes several: Hypothesis turns off some
        rules in each example, and a body flows only while all of them are on.)"""
        candidates = self.held_streaming()
        r = candidates[index % len(candidates)]
        assert r.at is not None
        w, rid = r.at.worker, r.at.rid
        self.send(r, sizes)
        self.take_from(w, len(w.inbox))
        s = w.serving.get(rid)
        if s is None or s.final:
            return
        if start and not s.started and not s.cancelled:
            self.start_one(w, s)
        if s.reading():
            self.consume_one(w, s, len(s.body), w.window)

    @precondition(lambda self: any(w.inbox or w.holding() for w in self.open_workers()))
    @rule(index=st.integers(0, 3), start=st.booleans())
    def work(self, index: int, start: bool) -> None:
        """A worker's turn, as a worker whose apps read fast: it takes every record, its
        apps start (``start``: those that have not, and are not cancelled), those that
        started consume every piece, and it grants all it may."""
        candidates = [w for w in self.open_workers() if w.inbox or w.holding()]
        w = candidates[index % len(candidates)]
        self.take_from(w, len(w.inbox))
        for s in w.holding():
            if start and not s.started and not s.cancelled:
                self.start_one(w, s)
            if s.reading():
                self.consume_one(w, s, len(s.body), w.window)

    @precondition(lambda self: self.open_workers() and len(self.workers) < MAX_CONNECTS
                  and self.since("lose", LOSS_EVERY))
    @rule(index=st.integers(0, 3), by_pipe=st.booleans())
    def lose(self, index: int, by_pipe: bool) -> None:
        candidates = self.open_workers()
        self.last["lose"] = self.steps
        self.lose_worker(candidates[index % len(candidates)], by_pipe)

    @precondition(lambda self: any(r.at is not None for r in self.reqs)
                  and self.since("timeout", TIMEOUT_EVERY))
    @rule()
    def timeout(self) -> None:
        self.last["timeout"] = self.steps
        self.time_out()

    # -- teardown ----------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.backend is not None and not self.broken:
                self.finish()
        finally:
            if self.backend is not None:
                self.backend.close()
            for ring in self.rings:
                if not ring.closed:
                    ring.close()

    def finish(self) -> None:
        """Every worker takes what it got and ends what it holds, one final record a step
        (the requests waiting take the slots freed); what still waits is cancelled. Then
        every group of every live ring is free, and every request ended once."""
        for _ in range(500):
            busy = [w for w in self.open_workers() if w.inbox or w.holding()]
            if not busy:
                break
            w = busy[0]
            if w.inbox:
                self.take_from(w, len(w.inbox))
                continue
            s = w.holding()[0]
            self.end_one(w, s, "end" if s.cancelled else "response")
        else:
            raise AssertionError("the workers never finished")
        for r in self.reqs:
            if r.live:
                assert r.waiting, f"{r} is live but waits nowhere: {r.ex!r}"
                self.cancel_one(r)
        d = self.d
        d.check()
        for w in self.open_workers():
            assert not d.peers[w.ident].slots, f"{w} holds {d.peers[w.ident].slots}"
            if w.taken is not None:
                assert not w.taken.held, f"{w}: groups still held: {w.taken.held}"
                assert sorted(w.taken.free) == [g * w.window for g in range(w.taken.groups)]
        for r in self.reqs:
            assert r.ex.state == DONE, r
            assert len(r.finals) == 1 or (r.cancelled and not r.finals), \
                f"{r} ended {len(r.finals)} times (cancelled: {r.cancelled}): {r.finals}"


# -- the property ----------------------------------------------------------------------------

@pytest.mark.timeout(120 + EXAMPLES * STEPS // 100)
def test_dispatcher_rings_machine() -> None:
    run_machine(RingsMachine, EXAMPLES, STEPS)


# -- plain examples --------------------------------------------------------------------------

@contextlib.contextmanager
def replaying(*shapes: Shape) -> Iterator[RingsMachine]:
    state = RingsMachine()
    state.init(shapes=shapes)
    try:
        yield state
    finally:
        state.teardown()


def serving(w: Worker, r: Req) -> Serving:
    """What ``w`` holds of ``r`` now (its REQUEST taken)."""
    return w.serving[r.ex.rid]


def body_copied(s: Serving) -> list[bytes]:
    return [s.copied[i] for i in range(len(s.copied))]


def test_a_request_handed_back_after_early_pieces_gets_its_whole_body_again() -> None:
    """1. two workers with rings (window 3, slots of 4 KiB) 2. a request whose sink
    presends goes to the first, with early credit of 3 and a group 3. its client sends two
    pieces, the second larger than a slot: both go before any CREDIT (BODY_AT, then BODY),
    and the sink keeps copies 4. the worker copies them out and REJECTs it: its group is
    free 5. the request goes to the second worker under a new rid, and the sink sends the
    copies again first: that worker gets pieces 0 and 1 again, from its ring and in a BODY,
    then (after its CREDIT) a third piece and END: its body is the client's, whole."""
    shape = Shape(capacity=1, window=3, groups=1, lazy=False)
    with replaying(shape, shape) as m:
        first, second = m.workers
        r = m.submit_one(presend=True, direct=False)
        assert r.at is not None and r.at.worker is first
        assert r.ex.early and r.ex.body_credit == 3 and first.taken is not None
        m.send(r, [200, 5000])
        assert [k for k, _, _ in first.inbox] == [p.REQUEST, p.BODY_AT, p.BODY]
        assert len(r.kept) == 2 and r.ex.body_credit == 1
        old = r.ex.rid
        m.take_from(first, 3)
        assert body_copied(serving(first, r)) == r.body
        m.end_one(first, serving(first, r), "reject")
        assert first.taken.held == {} and first.taken.free == [0]
        assert r.at is not None and r.at.worker is second and r.ex.rid != old
        assert r.ex.early and r.ex.body_sent == 2 and r.ex.body_credit == 1
        m.take_from(second, 3)
        s = serving(second, r)
        assert body_copied(s) == r.body and not s.started
        m.start_one(second, s)  # CREDIT 3 after 2 early: 1 more
        assert not r.ex.early and r.ex.body_credit == 1 and not r.kept
        m.send(r, [300])
        m.end_request(r)
        m.take_from(second, 2)
        m.consume_one(second, s, 3, 0)
        assert s.ended and body_copied(s) == r.body and len(r.body) == 3
        assert second.kinds == {"BODY_AT": 2, "BODY": 1}
        m.end_one(second, s, "response")
        assert r.finals == [("response", p.RESP_END)]


def test_a_ghost_keeps_its_group_until_its_final_record() -> None:
    """1. a worker (capacity 2) whose ring has one group of two slots 2. a request with
    early credit takes it and sends a piece into it 3. its sink cancels: the ghost keeps the
    group 4. a second request goes to the same worker: no group is free, so no early credit,
    and after the worker's CREDIT its piece goes in a BODY record 5. the worker copies the
    cancelled request's piece out: still its own bytes 6. the worker's END_ABORT for the
    ghost frees the group, and the second request's next piece goes into it."""
    with replaying(Shape(capacity=2, window=2, groups=1)) as m:
        w = m.workers[0]
        ring = w.taken
        assert ring is not None
        x = m.submit_one(presend=True, direct=False)
        rid = x.ex.rid
        m.send(x, [100])
        m.cancel_one(x)
        assert ring.held == {rid: 0} and not ring.free
        y = m.submit_one(presend=True, direct=False)
        assert y.at is not None and y.at.worker is w and not y.ex.early
        m.take_from(w, 100)
        ghost = w.serving[rid]
        assert ghost.cancelled and ring.held == {rid: 0}
        m.consume_one(w, ghost, 1, 0)  # the lazy worker copies it now
        assert body_copied(ghost) == x.body
        s = serving(w, y)
        m.start_one(w, s)
        m.send(y, [50])
        assert w.kinds["BODY"] == 1 and ring.held == {rid: 0}
        m.end_one(w, ghost, "end")
        assert ring.held == {} and ring.free == [0]
        m.send(y, [60])
        assert ring.held == {y.ex.rid: 0} and w.kinds["BODY_AT"] == 2
        m.take_from(w, 100)
        m.consume_one(w, s, 2, 0)
        assert body_copied(s) == y.body


def test_a_second_ring_from_the_same_worker_is_dropped() -> None:
    """1. a worker whose ring the dispatcher took 2. it offers another ring: a malformed
    message, dropped 3. the first ring stays mapped and filed, and still carries bodies."""
    with replaying(Shape(capacity=1, window=2, groups=1)) as m:
        w = m.workers[0]
        first = w.taken
        assert first is not None and m.backend is not None
        other = WorkerRing(1, 2, 4096)
        m.rings.append(other)
        with m.step() as senders:
            m.backend.expect_malformed()
            w.wire.send(other.offer(os.getpid()))
            senders.append(w.wire)
        assert m.d.peers[w.ident].ring is first and not first.mm.closed
        assert list(m.d.rings) == [first.key]
        r = m.submit_one(presend=True, direct=False)
        m.send(r, [100])
        m.take_from(w, 100)
        m.start_one(w, serving(w, r))
        m.consume_one(w, serving(w, r), 1, 0)
        assert w.kinds["BODY_AT"] == 1 and body_copied(serving(w, r)) == r.body


def test_a_ring_whose_nonce_differs_is_refused() -> None:
    """1. a worker offers a ring whose RING record carries another nonce than its header
    2. the dispatcher refuses it (refused_rings counts one; nothing is malformed) 3. its
    requests get no early credit, and their pieces come in BODY records."""
    with replaying() as m:
        w = m.connect_worker(Shape(ring=False, capacity=1, window=2))
        ring = WorkerRing(1, 2, 4096)
        m.rings.append(ring)
        refused = m.d.refused_rings.total
        with m.step() as senders:
            nonce = bytes(b ^ 0xFF for b in ring.nonce)
            w.wire.send(p.encode_ring(os.getpid(), ring.fd, ring.slots, ring.slot_size, nonce))
            senders.append(w.wire)
        assert m.d.refused_rings.total == refused + 1
        assert m.d.peers[w.ident].ring is None and not m.d.rings
        r = m.submit_one(presend=True, direct=True)
        assert not r.ex.early and r.ex.body_credit == 0
        m.take_from(w, 1)
        m.start_one(w, serving(w, r))
        m.send(r, [100, 200])
        m.take_from(w, 100)
        assert w.kinds == {"BODY": 2} and body_copied(serving(w, r)) == r.body


def test_a_job_workers_ring_is_ignored() -> None:
    """1. a job worker (READY_JOB, service ``jobs``) on this host offers a ring 2. the
    dispatcher does not look at it: no ring, nothing refused, nothing malformed."""
    backend = Backend(queue_size=QUEUE_SIZE, request_timeout=RT, queue_timeout=QT,
                      heartbeat=HB)
    ring = WorkerRing(1, 2, 4096)
    try:
        wire = backend.connect(b"job")
        wire.send(p.encode_ready(1, 2, os.getpid(), HOST, p.READY_JOB, service="jobs"))
        backend.settle([wire])
        wire.send(ring.offer(os.getpid()))
        backend.settle([wire])
        d = backend.dispatcher
        peer = d.peers[b"job"]
        assert peer.lane.job and peer.ring is None and not d.rings
        assert d.refused_rings.total == 0
        d.check()
    finally:
        backend.close()
        ring.close()


def test_a_lost_workers_ring_is_unmapped_and_its_requests_go_on() -> None:
    """1. a worker in order (capacity 2) with a ring holds two requests: the first took
    its CREDIT and sent a piece, the second has sent nothing 2. the worker is lost: its
    ring is unmapped and unfiled, the first gets 502 (it may have run) 3. the second goes to
    a new worker as soon as its READY comes (before its ring: no early credit), and once
    that worker's ring is taken the second's body flows through it."""
    with replaying(Shape(capacity=2, window=2, groups=2)) as m:
        w = m.workers[0]
        ring = w.taken
        assert ring is not None
        running = m.submit_one(presend=False, direct=True)
        behind = m.submit_one(presend=True, direct=False)
        m.take_from(w, 100)
        m.start_one(w, serving(w, running))
        m.send(running, [100])
        m.lose_worker(w)
        assert ring.mm.closed and not m.d.rings and running.finals == [("failure", 502)]
        assert behind.ex.state == QUEUED
        other = m.connect_worker(Shape(capacity=1, window=3, groups=1))
        assert behind.at is not None and behind.at.worker is other
        assert not behind.ex.early  # it was sent before the ring was taken
        m.take_from(other, 1)
        m.start_one(other, serving(other, behind))
        m.send(behind, [100, 4000])
        m.take_from(other, 100)
        m.consume_one(other, serving(other, behind), 2, 0)
        assert other.kinds == {"BODY_AT": 2}
        assert body_copied(serving(other, behind)) == behind.body


# -- regressions: bugs this file found ------------------------------------------------------

def test_a_request_lost_with_early_pieces_before_it_started_goes_again() -> None:
    """Found by this file: ``_fail_over`` gave this request 502 (fixed: early pieces count
    as the sink's copies).

    ``docs/protocol.md`` ("Body rings", "Early pieces") and ``Exchange``'s docstring: a
    worker may "be lost with it before it started: the front keeps a copy of its early
    pieces until the worker's first CREDIT and sends them again to the next worker". But
    ``_fail_over`` refuses a request behind the running one whose ``body_sent`` is not 0
    ("part of its body was sent to that worker"): the early pieces count, so it gets 502.

    1. a worker in order (capacity 2) with a ring holds two POSTs: the first runs, the
    second got early credit and sent a piece (its sink keeps the copy) 2. the worker is
    lost 3. the first gets 502 (it may have run); the second cannot have started (the
    worker serves in order, and never sent CREDIT for it): it must go to the next worker,
    with its early piece again from the sink's copy, not get 502."""
    with replaying(Shape(capacity=2, window=2, groups=2)) as m:
        w = m.workers[0]
        running = m.submit_one(presend=False, direct=False)
        behind = m.submit_one(presend=True, direct=False)
        m.send(behind, [100])
        assert behind.ex.early and behind.ex.body_sent == 1 and behind.kept
        m.lose_worker(w)
        assert running.finals == [("failure", 502)]
        assert behind.finals == [], f"the request that never started got {behind.finals}"
        other = m.connect_worker(Shape(capacity=1, window=2, groups=1))
        assert behind.at is not None and behind.at.worker is other
        m.take_from(other, 100)
        m.start_one(other, serving(other, behind))
        m.take_from(other, 100)  # its READY came before its RING: the copy waits for CREDIT
        m.consume_one(other, serving(other, behind), 1, 0)
        assert body_copied(serving(other, behind)) == behind.body


class LoneSink:
    """A sink for a test without the machine: it records its calls."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def on_response(self, ex: Exchange, flags: int, payload: bytes) -> None:
        self.calls.append(("response", flags))

    def on_chunk(self, ex: Exchange, data: bytes) -> None:
        self.calls.append(("chunk", data))

    def on_end(self, ex: Exchange, flags: int, tail: bytes) -> None:
        self.calls.append(("end", flags))

    def on_failure(self, ex: Exchange, error: HTTPError) -> None:
        self.calls.append(("failure", error.status))

    def on_body_credit(self, ex: Exchange, count: int) -> None:
        self.calls.append(("credit", count))


def test_a_worker_that_restates_a_larger_window_gets_its_early_pieces_intact() -> None:
    """Found by this file (fixed: ``_body_window`` holds credit to the ring's window).

    ``docs/protocol.md`` (READY): "A READY from a peer the front already knows restates its
    capacity and window from then on", and ``_on_ready`` sets ``peer.window``; but the
    worker's ring was cut into groups of the window it had when the ring was taken
    (``BodyRing.window``), and ``_assign`` gives early credit of ``peer.window``. So piece
    ``n + 2`` goes into the slot of piece ``n`` before the worker could copy it out.

    1. a worker (window 2) offers a ring of one group of 2 slots; the dispatcher takes it
    2. it restates READY with window 4 3. a request whose sink presends gets early credit
    of 4 (the new window) and sends 4 pieces, before any CREDIT, as the worker allows 4. the
    worker copies each piece out as its BODY_AT arrives: each must be the piece sent (before
    the fix, pieces 0 and 1 held the bytes of pieces 2 and 3: slots 0, 1, 0, 1)."""
    got: list[p.Record] = []
    backend = Backend(lambda peer, records: got.extend(records), queue_size=QUEUE_SIZE,
                      request_timeout=RT, queue_timeout=QT, heartbeat=HB)
    ring = WorkerRing(1, 2, 4096)
    try:
        wire = backend.connect(b"w0")
        wire.send(p.encode_ready(1, 2, os.getpid(), HOST))
        backend.settle([wire])
        wire.send(ring.offer(os.getpid()))
        backend.settle([wire])
        wire.send(p.encode_ready(1, 4, os.getpid(), HOST))
        backend.settle([wire])
        d = backend.dispatcher
        assert d.peers[b"w0"].ring is not None and d.peers[b"w0"].window == 4
        ex = Exchange(d.new_rid(), LoneSink())
        ex.presend = True
        ex.body_complete = False
        ex.record = p.encode_request(ex.rid, p.REQ_EXPECT, b"POST", b"/", b"HTTP/1.1",
                                     b"127.0.0.1", 40000, b"localhost", 8000, b"http", [], 8)
        d.submit(ex)
        backend.settle()
        pieces = [piece(0, i, 100) for i in range(ex.body_credit)]
        for data in pieces:
            d.send_body(ex, data)
        backend.settle()
        d.check()
        read = [ring.read(payload) for kind, _, payload in got if kind == p.BODY_AT]
        assert [describe(data) for data in read if data is not None] == \
            [describe(data) for data in pieces]
    finally:
        backend.close()
        ring.close()
