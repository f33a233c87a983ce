"""Body rings (``wsgi_zmq.ring``) under their flow control, as a state machine driven by
Hypothesis.

The rings are real: a ``WorkerRing`` (a sealed memfd) and the ``BodyRing`` the front opens
on its offer (the RING record, decoded, then ``open_ring`` on ``/proc/<this pid>/fd/...``:
both sides live in this process). What lies between them is modelled: a front, an
in-order queue of records to the worker (REQUEST, BODY_AT, an inline BODY, CANCEL) and one
back (CREDIT, the final record), the worker's credit and its app's reading. The rules are
the events of several requests' bodies, interleaved at will, with more requests at once
than the ring has groups (so some pieces find no group and go inline, in the message):

- a new request; the front cancels one (it stops sending, but keeps the request and its
  group until the worker's final record arrives, like a ghost);
- the front sends the next piece of a body, while it has credit: ``BodyRing.put``, or
  ``slot`` and ``view`` as the front's read straight into the ring does; a piece larger
  than a slot, or of a request that holds no group when none is free, goes inline;
- the worker takes the next record (copying a piece out of the ring at once,
  ``WorkerRing.read``; or, in ``TakesWhenRead``, noting where it lies, ``locate``, and
  copying it out when its app reads it, ``take``; it drops records for requests it
  finished); its app starts reading (CREDIT of the window), reads a piece (granting it at
  once or later: the worker grants in batches), or ends the request (the final record);
- the front takes the next record from the worker: CREDIT, or the final record, on which it
  calls ``release``.

Every piece is tagged with its rid and index and filled with random bytes, and the worker
checks each one it copies out (and again when its app reads it) against what the front
wrote for that piece: a slot overwritten before the worker copied it out fails the run
with ``Corrupted``. After every step: ``BodyRing.check`` with the requests the front
believes its worker holds (cancelled ones included); the groups held are exactly those of
the requests the model says hold one (from their first piece in the ring to their final
record), each piece in its group's slot ``index mod window``; the front's credit and the
worker's outstanding grant are within 0 and the window; and credit is conserved (what the
worker granted beyond what it received is the front's credit, plus CREDIT on its way, plus
pieces on their way).

Cancels and ends half way are drawn one time in four only, so that bodies flow long
enough to reuse slots: a request's own (piece ``n + window``) and, after a final record,
another request's while BODY_AT records of the finished one are still on their way.

Two plain tests give the checker teeth: a front that frees a group when it cancels, not
at the final record, and a worker that grants more than its window, each corrupt a read
that the model catches while every other invariant still holds (either way the worker
copies). Plain tests of the right rules go beside them (the same cancel; a window kept
to; a stale BODY_AT of a finished request, dropped, whose slot holds another request's
piece by then), and of ``WorkerRing.read``, which refuses a payload that names no slot.

The budget: ``WSGI_ZMQ_RING_EXAMPLES`` (examples, default 300) and ``WSGI_ZMQ_RING_STEPS``
(steps per example, default 80), for each of the two machines: about 4 s each. A run
deep enough to reach the rarer cases many times over (another request's piece in a slot
while a finished request's BODY_AT is still on its way: about one example in 60) takes
``WSGI_ZMQ_RING_EXAMPLES=2000 WSGI_ZMQ_RING_STEPS=100``, half a minute a machine.
"""

from __future__ import annotations

import functools
import os
import random
import struct
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final, NamedTuple, ParamSpec, TypeVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from support.machines import run_machine
from wsgi_zmq import protocol
from wsgi_zmq.ring import SUPPORTED, BodyRing, WorkerRing, open_ring

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="no memfd seals on this system")

EXAMPLES = int(os.environ.get("WSGI_ZMQ_RING_EXAMPLES", "300"))
STEPS = int(os.environ.get("WSGI_ZMQ_RING_STEPS", "80"))

SLOT: Final = protocol.MIN_RING_SLOT
#: the head of every piece: its rid and index, so no piece can pass for another
TAG: Final = struct.Struct("!QI")
#: rids as the front picks them, from a 64-bit start
FIRST_RID: Final = 0xF00D_0000_0000_0000
#: requests at once beyond the ring's groups
EXTRA: Final = 3

SIZES = st.one_of(st.integers(TAG.size, 64), st.sampled_from([SLOT - 1, SLOT, SLOT + 1]))


class Corrupted(AssertionError):
    """The worker got bytes for a piece that the front did not write for it."""


# -- the records between the two sides ---------------------------------------------------

class Request(NamedTuple):
    rid: int


class At(NamedTuple):
    """BODY_AT: the encoded record, as the front sends it."""

    rid: int
    slot: int
    length: int
    record: bytes


class Inline(NamedTuple):
    """A piece in the message itself (a BODY record)."""

    rid: int
    data: bytes


class Cancel(NamedTuple):
    rid: int


class Credit(NamedTuple):
    rid: int
    pieces: int


class Done(NamedTuple):
    """The worker's final record for a request."""

    rid: int


ToWorker = Request | At | Inline | Cancel
ToFront = Credit | Done
Located = tuple[WorkerRing, int, int]


# -- the model -----------------------------------------------------------------------------

@dataclass(eq=False)
class Sending:
    """A request as the front sees it, from its dispatch to the worker's final record."""

    rid: int
    pieces: int  # the body's length, in pieces
    sent: int = 0
    credit: int = 0
    cancelled: bool = False
    base: int | None = None  # the first slot of the group it holds


@dataclass(eq=False)
class Serving:
    """A request as the worker sees it, from its REQUEST to its final record."""

    rid: int
    received: int = 0  # pieces whose record arrived
    #: received, not consumed: by index, the piece, or where it lies (``WorkerRing.locate``)
    body: deque[tuple[int, bytes | Located]] = field(default_factory=deque)
    owed: int = 0  # pieces consumed, not yet granted again
    granted: int = 0  # credit granted, in all
    started: bool = False  # the app started reading (and the window was granted)
    cancelled: bool = False


def piece(rid: int, index: int, size: int, seed: int) -> bytes:
    return TAG.pack(rid, index) + random.Random(seed).randbytes(size - TAG.size)


P = ParamSpec("P")
R = TypeVar("R")


def guarded(method: Callable[P, R]) -> Callable[P, R]:
    """A step that marks the machine broken when it fails: no drain at teardown then, so
    the first failure is the one Hypothesis reports and shrinks."""

    @functools.wraps(method)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except BaseException:
            args[0].broken = True  # type: ignore[attr-defined]
            raise

    return run


class RingMachine(RuleBasedStateMachine):
    """A front, its worker and the ring between them; see the module docstring. The
    methods without a rule (``new``, ``send``, ``deliver`` ...) are the events themselves,
    which the plain tests drive in a fixed order."""

    def __init__(self) -> None:
        super().__init__()
        self.worker_ring: WorkerRing | None = None
        self.front_ring: BodyRing | None = None
        self.window = 0
        self.groups = 0
        self.broken = False
        self.next_rid = FIRST_RID
        self.front: dict[int, Sending] = {}  # dispatched, no final record received yet
        self.worker: dict[int, Serving] = {}  # REQUEST received, no final record sent yet
        self.finished: set[int] = set()  # the worker sent its final record
        self.to_worker: deque[ToWorker] = deque()
        self.to_front: deque[ToFront] = deque()
        self.written: dict[tuple[int, int], bytes] = {}  # what the front sent, by piece

    @property
    def ring(self) -> BodyRing:
        assert self.front_ring is not None, "open_rings() first"
        return self.front_ring

    @property
    def wring(self) -> WorkerRing:
        assert self.worker_ring is not None, "open_rings() first"
        return self.worker_ring

    #: The worker copies a piece out of the ring when its BODY_AT arrives; else it notes
    #: where the piece lies and copies it out when the app reads it.
    copies_at_receipt = True

    def opening_credit(self) -> int:
        """What the worker grants when its app starts reading: its window."""
        return self.window

    @initialize(groups=st.integers(1, 3), window=st.integers(1, 3))
    def open_rings(self, groups: int, window: int) -> None:
        self.groups, self.window = groups, window
        self.worker_ring = WorkerRing(groups, window, SLOT)
        [offer] = protocol.split_frame(protocol.VERSION_BYTE + self.wring.offer(os.getpid()))
        assert offer.kind == protocol.RING and offer.rid == 0
        self.front_ring = open_ring(protocol.decode_ring(offer.payload), window, set())
        ring = self.ring
        assert (ring.groups, ring.window, ring.slot_size) == (groups, window, SLOT)
        assert not ring.held and sorted(ring.free) == list(range(0, groups * window, window))

    # -- the events ------------------------------------------------------------------------

    def new(self, pieces: int) -> int:
        rid = self.next_rid
        self.next_rid += 1
        self.front[rid] = Sending(rid, pieces)
        self.to_worker.append(Request(rid))
        return rid

    def send(self, rid: int, size: int, seed: int, direct: bool = False) -> None:
        """The front sends the next piece of ``rid``'s body (``direct``: read into the
        slot, as ``HttpConnection._read_into_ring``; else ``BodyRing.put``)."""
        s = self.front[rid]
        assert s.credit > 0 and not s.cancelled and s.sent < s.pieces
        index = s.sent
        data = piece(rid, index, size, seed)
        held = sum(other.base is not None for other in self.front.values())
        if size > SLOT:
            expected: int | None = -1
        elif s.base is not None:
            expected = s.base + index % self.window
        elif held < self.groups:
            expected = None  # a group of the free ones
        else:
            expected = -1
        ring = self.ring
        if direct and size <= SLOT:
            slot = ring.slot(rid, index)
            if slot >= 0:
                view = ring.view(slot)
                try:
                    assert len(view) == SLOT
                    view[:size] = data
                finally:
                    view.release()
        else:
            slot = ring.put(rid, index, data)
        if expected is None:
            assert slot >= 0 and slot % self.window == index % self.window, \
                f"piece {index} of {rid:x} in slot {slot}, with {held} of {self.groups} " \
                f"groups held"
            s.base = slot - index % self.window
        else:
            assert slot == expected, f"piece {index} of {rid:x} in slot {slot}, " \
                                     f"not {expected}"
        self.written[rid, index] = data
        s.sent += 1
        s.credit -= 1
        if slot >= 0:
            self.to_worker.append(At(rid, slot, size, protocol.encode_body_at(rid, slot, size)))
        else:
            self.to_worker.append(Inline(rid, data))

    def cancel(self, rid: int) -> None:
        s = self.front[rid]
        s.cancelled = True
        self.to_worker.append(Cancel(rid))

    def deliver(self) -> None:
        """The worker takes the next record from the front."""
        record = self.to_worker.popleft()
        rid = record.rid
        if isinstance(record, Request):
            assert rid not in self.worker and rid not in self.finished
            self.worker[rid] = Serving(rid)
            return
        req = self.worker.get(rid)
        if req is None:
            assert rid in self.finished, f"a record for {rid:x}, never sent"
            return  # for a request already finished: dropped, as the worker does
        if isinstance(record, Cancel):
            req.cancelled = True
            return
        index = req.received
        req.received += 1
        assert req.received <= req.granted, f"{rid:x} got more pieces than it granted"
        if isinstance(record, Inline):
            self.verify(rid, index, record.data, "received")
            req.body.append((index, record.data))
            return
        [body_at] = protocol.split_frame(protocol.VERSION_BYTE + record.record)
        assert (body_at.kind, body_at.rid) == (protocol.BODY_AT, rid)
        if self.copies_at_receipt:
            data = self.wring.read(body_at.payload)
            assert data is not None, f"{record[:3]} names no slot"
            assert type(data) is bytes  # a copy: the slot may be reused once granted
            self.verify(rid, index, data, "copied out")
            req.body.append((index, data))
        else:
            where = self.wring.locate(body_at.payload)
            assert where is not None and where[0] is self.wring, f"{record[:3]} names no slot"
            req.body.append((index, where))

    def verify(self, rid: int, index: int, data: bytes, when: str) -> None:
        if data != self.written[rid, index]:
            got = TAG.unpack_from(data) if len(data) >= TAG.size else data
            raise Corrupted(f"piece {index} of {rid:x} {when}: {len(data)} bytes tagged "
                            f"{got!r}, not what the front wrote")

    def start(self, rid: int) -> None:
        """The app starts reading the body: the worker grants its window."""
        req = self.worker[rid]
        assert not req.started
        req.started = True
        count = self.opening_credit()
        req.granted += count
        self.to_front.append(Credit(rid, count))

    def consume(self, rid: int, grant: bool) -> None:
        """The app reads the next piece (taking it out of the ring now, if the worker left
        it there), then owes its credit: the copy comes before any credit for it."""
        req = self.worker[rid]
        index, held = req.body.popleft()
        if isinstance(held, tuple):
            ring, start, length = held
            self.verify(rid, index, ring.take(start, length), "taken")
        else:
            self.verify(rid, index, held, "consumed")  # and still intact
        req.owed += 1
        if grant:
            self.grant(rid)

    def grant(self, rid: int) -> None:
        req = self.worker[rid]
        assert req.owed > 0
        req.granted += req.owed
        self.to_front.append(Credit(rid, req.owed))
        req.owed = 0

    def finish(self, rid: int) -> None:
        """The worker sends its final record for ``rid`` and forgets it."""
        del self.worker[rid]
        self.finished.add(rid)
        self.to_front.append(Done(rid))

    def hear(self) -> None:
        """The front takes the next record from the worker."""
        record = self.to_front.popleft()
        s = self.front.get(record.rid)
        assert s is not None, f"{record} for a request the front does not hold"
        if isinstance(record, Credit):
            s.credit += record.pieces
        else:
            del self.front[s.rid]
            self.ring.release(s.rid)

    # -- the rules: the events, any request, any order ---------------------------------------

    def sendable(self) -> list[Sending]:
        return [s for s in self.front.values()
                if s.credit > 0 and not s.cancelled and s.sent < s.pieces]

    @precondition(lambda self: len(self.front) < self.groups + EXTRA)
    @rule(pieces=st.integers(0, 10))
    @guarded
    def new_request(self, pieces: int) -> None:
        self.new(pieces)

    @precondition(lambda self: self.sendable())
    @rule(which=st.integers(0, 7), sizes=st.lists(SIZES, min_size=1, max_size=4),
          seed=st.integers(0, 2**32 - 1), direct=st.booleans())
    @guarded
    def front_sends(self, which: int, sizes: list[int], seed: int, direct: bool) -> None:
        """Pieces of one body, while the front has credit and body left (as it reads)."""
        ready = self.sendable()
        s = ready[which % len(ready)]
        for size in sizes:
            if not (s.credit and s.sent < s.pieces):
                break
            self.send(s.rid, size, seed + s.sent, direct)

    def cancellable(self) -> list[Sending]:
        # a request that sent nothing yet has nothing in the ring to cancel
        return [s for s in self.front.values() if s.sent and not s.cancelled]

    @precondition(lambda self: self.cancellable())
    @rule(which=st.integers(0, 7), stays=st.integers(0, 3))
    @guarded
    def front_cancels(self, which: int, stays: int) -> None:
        # the client goes one time in four: the bodies that flow make the cases that count
        if not stays:
            live = self.cancellable()
            self.cancel(live[which % len(live)].rid)

    @precondition(lambda self: self.to_worker)
    @rule(count=st.integers(1, 3))
    @guarded
    def worker_takes(self, count: int) -> None:
        for _ in range(min(count, len(self.to_worker))):
            self.deliver()

    @precondition(lambda self: any(not r.started for r in self.worker.values()))
    @rule(which=st.integers(0, 7))
    @guarded
    def app_starts(self, which: int) -> None:
        waiting = [r for r in self.worker.values() if not r.started]
        self.start(waiting[which % len(waiting)].rid)

    @precondition(lambda self: any(r.body for r in self.worker.values()))
    @rule(which=st.integers(0, 7), count=st.integers(1, 3), grant=st.booleans())
    @guarded
    def app_consumes(self, which: int, count: int, grant: bool) -> None:
        """The app reads pieces of one body; the worker grants them at once or later."""
        reading = [r for r in self.worker.values() if r.body]
        req = reading[which % len(reading)]
        for _ in range(min(count, len(req.body))):
            self.consume(req.rid, grant)

    @precondition(lambda self: any(r.owed for r in self.worker.values()))
    @rule(which=st.integers(0, 7))
    @guarded
    def worker_grants(self, which: int) -> None:
        owing = [r for r in self.worker.values() if r.owed]
        self.grant(owing[which % len(owing)].rid)

    def finishable(self, early: bool) -> list[Serving]:
        """The requests the worker may end: whose whole body it received, or whose CANCEL;
        ``early``, also one whose app stops reading half way. (One whose app never read
        its body ends too, in ``drain``: it never took a group.)"""
        return [r for r in self.worker.values()
                if r.cancelled or self.front[r.rid].pieces == r.received and r.started
                or early and r.started]

    @precondition(lambda self: self.finishable(early=True))
    @rule(which=st.integers(0, 7), early=st.integers(0, 3))
    @guarded
    def worker_finishes(self, which: int, early: int) -> None:
        # an end half way one time in four, as a client's going
        serving = self.finishable(early=not early)
        if serving:
            self.finish(serving[which % len(serving)].rid)

    @precondition(lambda self: self.to_front)
    @rule(count=st.integers(1, 3))
    @guarded
    def front_hears(self, count: int) -> None:
        for _ in range(min(count, len(self.to_front))):
            self.hear()

    # -- after every step ------------------------------------------------------------------

    @invariant()
    @guarded
    def consistent(self) -> None:
        if self.front_ring is None:
            return
        self.check_groups()
        self.check_credit()

    def check_groups(self) -> None:
        ring = self.ring
        ring.check(self.front)
        holding = {s.rid: s.base for s in self.front.values() if s.base is not None}
        assert ring.held == holding, f"groups held {ring.held}, not {holding}"

    def check_credit(self) -> None:
        limit = self.opening_credit()
        credits: dict[int, int] = {}
        for back in self.to_front:
            if isinstance(back, Credit):
                credits[back.rid] = credits.get(back.rid, 0) + back.pieces
        pieces: dict[int, int] = {}
        for out in self.to_worker:
            if isinstance(out, At | Inline):
                pieces[out.rid] = pieces.get(out.rid, 0) + 1
        for s in self.front.values():
            assert 0 <= s.credit <= limit, f"{s.rid:x}: credit {s.credit}"
            req = self.worker.get(s.rid)
            if req is None:
                if s.rid not in self.finished:  # its REQUEST is on its way
                    assert s.credit == s.sent == 0
                continue
            outstanding = req.granted - req.received
            assert 0 <= outstanding <= limit, f"{s.rid:x}: {outstanding} outstanding"
            assert outstanding == s.credit + credits.get(s.rid, 0) + pieces.get(s.rid, 0), \
                f"{s.rid:x}: credit not conserved"

    # -- the end ---------------------------------------------------------------------------

    def drain(self) -> None:
        """Everything on its way arrives and the worker ends every request: every group is
        free again, each once."""
        while self.to_worker or self.worker or self.to_front:
            while self.to_worker:
                self.deliver()
            for rid in list(self.worker):
                self.finish(rid)
            while self.to_front:
                self.hear()
        assert not self.front
        self.check_groups()
        assert sorted(self.ring.free) == list(range(0, self.groups * self.window, self.window))

    def teardown(self) -> None:
        try:
            if self.front_ring is not None and not self.broken:
                self.drain()
        finally:
            if self.front_ring is not None:
                self.front_ring.close()
            if self.worker_ring is not None:
                self.worker_ring.close()


# -- the property ----------------------------------------------------------------------------

class TakesWhenRead(RingMachine):
    """The worker leaves a piece in its slot until the app reads it (``locate``, then
    ``take``), and grants its credit only after that."""

    copies_at_receipt = False


@pytest.mark.parametrize("kind", [RingMachine, TakesWhenRead])
@pytest.mark.timeout(120 + EXAMPLES * STEPS // 500)
def test_ring_state_machine(kind: type[RingMachine]) -> None:
    run_machine(kind, EXAMPLES, STEPS)


# -- broken rules, which the model must catch -------------------------------------------------

class FreesAtCancel(RingMachine):
    """A front that frees a request's group when it cancels it, not when the worker's final
    record arrives (and believes the group free: the group invariants still hold)."""

    def cancel(self, rid: int) -> None:
        super().cancel(rid)
        self.ring.release(rid)
        self.front[rid].base = None


class GrantsPastWindow(RingMachine):
    """A worker that grants one piece more than its window when its app starts reading, and
    a front that takes it (the credit invariants allow it too)."""

    def opening_credit(self) -> int:
        return self.window + 1


@contextmanager
def machine(kind: type[RingMachine], copies: bool, groups: int = 1,
            window: int = 2) -> Iterator[RingMachine]:
    """A machine of ``kind`` whose worker copies pieces out at receipt (``copies``) or
    when the app reads them; one group of 2 slots unless told."""
    state = kind()
    state.copies_at_receipt = copies
    state.open_rings(groups=groups, window=window)
    try:
        yield state
    finally:
        state.broken = True  # no drain: some runs stop half way on purpose
        state.teardown()


def stepped(state: RingMachine, *events: Callable[[], object]) -> None:
    """Events in turn, each followed by the invariants, as a run of the machine checks."""
    for event in events:
        event()
        state.consistent()


COPIES = pytest.mark.parametrize("copies", [True, False], ids=["copy-at-receipt",
                                                                "take-when-read"])


@COPIES
@pytest.mark.parametrize("kind", [RingMachine, FreesAtCancel])
def test_a_group_freed_at_cancel_is_overwritten(kind: type[RingMachine], copies: bool) -> None:
    """1. requests A and B start, the worker grants both their window 2. the front writes
    piece 0 of A (slot 0) 3. the front cancels A 4. the front sends piece 0 of B 5. the
    worker takes A's BODY_AT and its app reads the piece.
    Right (A keeps its group until its final record): B's piece goes inline and A's piece
    is intact. Broken (A's group freed at 3): B's piece takes slot 0 and the worker gets
    B's bytes for A's piece, which the model catches; every invariant held until then."""
    with machine(kind, copies) as state:
        a, b = state.new(pieces=1), state.new(pieces=1)
        stepped(state, state.deliver, state.deliver, lambda: state.start(a),
                lambda: state.start(b), state.hear, state.hear,
                lambda: state.send(a, 100, 1), lambda: state.cancel(a),
                lambda: state.send(b, 100, 2))
        assert isinstance(state.to_worker[0], At)
        if kind is RingMachine:
            assert isinstance(state.to_worker[-1], Inline)
            stepped(state, state.deliver, lambda: state.consume(a, grant=True))
        else:
            assert state.to_worker[-1][:2] == (b, 0)  # At(b, slot 0)
            with pytest.raises(Corrupted, match=f"piece 0 of {a:x} (copied out|taken)"):
                state.deliver()
                state.consume(a, grant=True)


@COPIES
def test_credit_past_the_window_overwrites_a_slot(copies: bool) -> None:
    """1. request A starts, the worker grants 3 pieces 2. the front sends pieces 0, 1 and
    2: piece 2 goes to slot 0, over piece 0 3. the worker takes the BODY_AT of piece 0 and
    its app reads it: piece 2's bytes, which the model catches; every invariant held until
    then (this front takes the over-grant)."""
    with machine(GrantsPastWindow, copies) as state:
        a = state.new(pieces=3)
        stepped(state, state.deliver, lambda: state.start(a), state.hear,
                *(functools.partial(state.send, a, 50, index) for index in range(3)))
        assert [at[:2] for at in state.to_worker] == [(a, 0), (a, 1), (a, 0)]
        with pytest.raises(Corrupted, match=rf"piece 0 of {a:x} .*\({a}, 2\)"):
            state.deliver()
            state.consume(a, grant=True)


@COPIES
def test_a_right_worker_keeps_to_its_window(copies: bool) -> None:
    """The same start with the right worker: after its window of 2 pieces the front has no
    credit; the third piece goes (into slot 0, read in place this time) once the app read
    the first, and every piece arrives intact; at the final record the group is free."""
    with machine(RingMachine, copies) as state:
        a = state.new(pieces=3)
        stepped(state, state.deliver, lambda: state.start(a), state.hear,
                lambda: state.send(a, 50, 0), lambda: state.send(a, 50, 1))
        assert not state.sendable()
        stepped(state, state.deliver, state.deliver, lambda: state.consume(a, grant=True),
                state.hear, lambda: state.send(a, 50, 2, direct=True), state.deliver,
                lambda: state.consume(a, grant=False), lambda: state.consume(a, grant=True))
        assert state.to_front[-1] == Credit(a, 2)
        stepped(state, lambda: state.finish(a), state.hear, state.hear)
        assert not state.ring.held and not state.front


@COPIES
def test_a_stale_body_at_of_a_finished_request_is_dropped(copies: bool) -> None:
    """1. requests A and B start 2. the front writes piece 0 of A (slot 0) 3. A's app ends
    before the worker took that BODY_AT; its final record frees the group 4. B's piece 0
    takes the group, slot 0 5. the worker takes A's BODY_AT, then B's, and B's app reads.
    A's is dropped (the slot holds B's piece now, which reading it would have given A's
    app); B's piece arrives intact."""
    with machine(RingMachine, copies) as state:
        a, b = state.new(pieces=2), state.new(pieces=2)
        stepped(state, state.deliver, state.deliver, lambda: state.start(a),
                lambda: state.start(b), state.hear, state.hear,
                lambda: state.send(a, 30, 1), lambda: state.finish(a), state.hear,
                lambda: state.send(b, 40, 2))
        stale, fresh = state.to_worker
        assert isinstance(stale, At) and isinstance(fresh, At)
        assert (stale.rid, stale.slot, fresh.rid, fresh.slot) == (a, 0, b, 0)
        payload = protocol.split_frame(protocol.VERSION_BYTE + stale.record)[0].payload
        assert state.wring.read(payload) == state.written[b, 0][:30]
        stepped(state, state.deliver, state.deliver, lambda: state.consume(b, grant=True))
        assert a not in state.worker and state.worker[b].received == 1


# -- WorkerRing.read -----------------------------------------------------------------------

@pytest.fixture
def worker_ring() -> Iterator[WorkerRing]:
    ring = WorkerRing(2, 2, SLOT)
    try:
        yield ring
    finally:
        ring.close()


def body_at(slot: int, length: int) -> bytes:
    return protocol.BODY_AT_HEAD.pack(slot, length)


def test_read_copies_a_slot_out(worker_ring: WorkerRing) -> None:
    """Slot 0 starts after the header (no magic, no nonce in it); the last slot is read
    whole; an empty piece is empty."""
    assert worker_ring.slots == 4
    assert worker_ring.read(body_at(0, 64)) == bytes(64)
    assert worker_ring.read(body_at(3, SLOT)) == bytes(SLOT)
    assert worker_ring.read(body_at(1, 0)) == b""


@pytest.mark.parametrize("payload", [
    body_at(4, 1),  # one past the last slot
    body_at(2**32 - 1, 1),
    body_at(0, SLOT + 1),  # longer than a slot
    body_at(3, 2**32 - 1),
    b"",
    body_at(0, 1)[:-1],
    body_at(0, 1) + b"\0",
], ids=["slot-past-end", "slot-max", "length-past-slot", "length-max", "empty", "short",
        "long"])
def test_read_refuses_what_names_no_slot(worker_ring: WorkerRing, payload: bytes) -> None:
    assert worker_ring.read(payload) is None
