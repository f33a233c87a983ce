"""The broker's state machine (``wsgi_zmq.front.dispatcher``), driven by Hypothesis.

A ``RuleBasedStateMachine`` drives a real ``Dispatcher`` over real ZeroMQ sockets against
scripted workers (``support.peers``: raw ``zmq.green`` DEALERs in this process; nothing of
zmq or gevent is replaced). Its rules are the events of an exchange's life: workers
connect (READY, any capacity, in order or concurrent), restate their capacity, answer
(whole response, head then chunks then END, ERROR, REJECT, END without a head, CREDIT,
malformed records and frames, records for requests they do not hold, late records for the
rid a request had before it was sent again), say BYE, are lost (DEALER closed), echo
probes; sinks submit (replayable or not, body whole or streamed), cancel in any state, send
body and grant chunk credit; the clock moves (request timeout, queue timeout, the stall
rule, the end of an ejection) and the test calls ``tick()``.

The model predicts, from the rules documented in ``dispatcher.py`` and
``docs/protocol.md``, every call each sink must get in a step (which final call, which
status: 503 full queue, queue timeout, or the newest queued when requests sent again leave
the queue over its bound, 504 request timeout, 502 lost worker or malformed reply, the
worker's status for ERROR), every CANCEL and every REQUEST each worker must get, in order
(the model keeps the dispatcher's lines: idle workers and workers with room, least recently
used first, and when each last made progress, for the stall rule), every ejection, the
queue in order, and the dispatcher's view of every worker's slots. Exchanges are tracked by
identity: a request sent again (after a REJECT, a lost worker, an ejection) gets a new rid,
which the model learns from the REQUEST that carries it (the request's path names the
exchange) and checks is one never used before; the worker that gave it up may keep a ghost
under the old rid, and a late record for the old rid reaches the ghost or nothing. After
every step the system settles (``Backend.settle``: barriers, no fixed sleep) and the test
checks ``dispatcher.check()``, the predictions, and that what each worker believes it holds
(the REQUESTs it received minus the final records it sent) is what the dispatcher says it
holds; on every REQUEST a worker receives, that it is not over its announced capacity, not
leaving, and not holding that rid already.

The budget: ``WSGI_ZMQ_STATEFUL_EXAMPLES`` (examples, default 100) and
``WSGI_ZMQ_STATEFUL_STEPS`` (steps per example, default 50): about 7 s when it passes (a
step costs about a millisecond of loopback round trips; 1500 examples of 60 steps take
about two minutes). While a bug is there, the first run spends up to a minute or so
shrinking it; later runs replay the saved example from Hypothesis's database at once.

Beyond the predictions, one rule is checked directly: nothing waits in the queue while an
eligible worker has room and is not stalled.

Failures found by the machine are kept at the end as plain regression tests that replay
the shrunk steps (``test_regression_*``); each checks that its bug stays fixed. None is
known and open: the model predicts the rules, with nothing to steer around.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
)

from support.machines import Driving, run_machine
from support.peers import Backend, ScriptedPeer
from wsgi_zmq import protocol as p
from wsgi_zmq.errors import HTTPError
from wsgi_zmq.front.dispatcher import (
    DONE,
    MAX_ATTEMPTS,
    MAX_LOSSES,
    NEW,
    QUEUED,
    SENT,
    STALL_SECONDS,
    STARTED,
    STATE_NAMES,
    Exchange,
    Ghost,
)

RT = 1000.0  # request_timeout, in seconds of the manual clock
QT = 1500.0  # queue_timeout
HB = 100.0  # heartbeat: ZMTP heartbeats every 100 s of real time never fire in a test
QUEUE_SIZE = 3
STALL = 0.05  # more than STALL_SECONDS: a busy worker in order is stalled after it
WINDOW = 8
#: what one CREDIT of a scripted worker grants: three of them pass the window
GRANT = 3

EXAMPLES = int(os.environ.get("WSGI_ZMQ_STATEFUL_EXAMPLES", "100"))
STEPS = int(os.environ.get("WSGI_ZMQ_STATEFUL_STEPS", "50"))

#: What a worker may send for a request it holds, literally: whether it is malformed
#: depends on the state (CHUNK before a head, a second head, REJECT of a started response).
HOWS = ("full", "head", "chunk", "end", "abort", "error500", "error502", "error400",
        "reject", "credit", "overcredit", "bad_error", "body_kind", "heartbeat", "bad_version",
        "truncated")
#: Records that end an exchange, as the worker sees it (it forgets the request once sent).
FINAL_HOWS = frozenset({"full", "end", "abort", "error500", "error502", "error400",
                        "reject", "bad_error"})
ADVANCES = ("stall", "request", "queue", "heartbeat", "ejection", "ejection")

# the dispatcher's lines (``Peer.line``)
UNLISTED, IDLE, READY = 0, 1, 2

Call = tuple[Any, ...]


def is_final(call: Call) -> bool:
    kind = call[0]
    return kind in ("end", "failure") or (kind == "response" and bool(call[1] & p.RESP_END))


# -- the model -------------------------------------------------------------------------------

@dataclass(eq=False)
class Ex:
    """One exchange as the test's sink and model see it (by identity: its rid changes when
    it is sent again)."""

    name: str
    ex: Exchange
    replayable: bool
    body_complete: bool
    rid: int = 0  # its rid as the model knows it; 0 once sent again, until learned
    rids: list[int] = field(default_factory=list)  # every rid it has had
    sent_as: Slot | None = None  # its last dispatch under a rid the model did not know
    submitted: bool = False
    cancelled: bool = False  # the sink called cancel()
    calls_at_cancel: int = -1
    done: bool = False  # the model says it ended (a final call expected, or cancelled)
    calls: list[Call] = field(default_factory=list)
    finals: int = 0
    waiting: bool = False  # in the dispatcher's queue (model)
    queue_deadline: float = 0.0
    queued_at: float = 0.0  # when it last entered the queue, until a worker takes it
    deadline: float = 0.0  # request deadline while a worker holds it unstarted
    started: bool = False  # the response head reached the sink
    attempts: int = 0
    losses: int = 0
    handbacks: int = 0  # REJECTs
    wait_deadline: float = 0.0  # when it gets 503 if no worker starts it (queue_timeout)
    body_sent: int = 0  # BODY records sent to the worker holding it
    credit: int = 0  # what ex.body_credit must be
    credited: bool = False  # its worker granted body credit
    body_ended: bool = False

    @property
    def live(self) -> bool:
        return self.submitted and not self.done

    def __repr__(self) -> str:
        return self.name


@dataclass(eq=False)
class Slot:
    """The dispatcher's view of one of a worker's slots (predicted). ``rid`` is 0 for a
    request sent again until its REQUEST shows the new rid."""

    ex: Ex
    rid: int = 0
    ghost: bool = False
    queue_us: int = 0  # what its REQUEST must carry

    def __repr__(self) -> str:
        return f"{self.ex}{'~' if self.ghost else ''}@{self.rid:x}"


@dataclass(eq=False)
class Held:
    """What a worker believes about one request it holds."""

    ex: Ex
    cancelled: bool = False  # it received CANCEL
    started: bool = False  # it sent a response head
    granted: int = 0  # BODY credit it granted
    body: int = 0  # BODY records received
    ended: bool = False  # END of the request body received


@dataclass(eq=False)
class Peer:
    """One scripted worker and what the model says the dispatcher thinks of it."""

    name: str
    wire: ScriptedPeer
    capacity: int
    concurrent: bool
    slots: list[Slot] = field(default_factory=list)  # in the order they were sent
    pending: list[Slot] = field(default_factory=list)  # REQUESTs due in this step, in order
    belief: dict[int, Held] = field(default_factory=dict)
    expected_cancels: list[Slot] = field(default_factory=list)
    stray_cancels: list[int] = field(default_factory=list)
    bye_sent: bool = False
    bye_acked: bool = False
    lost: bool = False
    forgotten: bool = False
    failures: int = 0
    ejected: bool = False
    ejections: int = 0
    ejected_until: float = 0.0
    probe_rid: int = 0
    line: int = UNLISTED
    progress: float = 0.0  # when it last finished a request, or became busy
    pid: int = 0
    drained: bool = False  # an operator's ``drain``

    @property
    def ident(self) -> bytes:
        return self.wire.ident

    @property
    def known(self) -> bool:
        """Is it in ``dispatcher.peers``?"""
        return not (self.lost or self.forgotten)

    @property
    def eligible(self) -> bool:
        return self.known and not (self.bye_sent or self.ejected or self.drained)

    def slot(self, rid: int) -> Slot | None:
        for slot in self.slots:
            if slot.rid == rid:
                return slot
        return None

    def __repr__(self) -> str:
        return self.name


class RecordingSink:
    """A sink that records every call (it never raises: the calls come from inside the
    dispatcher's callbacks, where an exception would be swallowed by the hub)."""

    def __init__(self, machine: DispatcherMachine) -> None:
        self.machine = machine

    def on_response(self, ex: Exchange, flags: int, payload: bytes) -> None:
        self.machine.sink_call(ex, ("response", flags, bytes(payload)))

    def on_chunk(self, ex: Exchange, data: bytes) -> None:
        self.machine.sink_call(ex, ("chunk", bytes(data)))

    def on_end(self, ex: Exchange, flags: int, tail: bytes) -> None:
        self.machine.sink_call(ex, ("end", flags, bytes(tail)))

    def on_failure(self, ex: Exchange, error: HTTPError) -> None:
        self.machine.sink_call(ex, ("failure", error.status))

    def on_body_credit(self, ex: Exchange, count: int) -> None:
        self.machine.sink_call(ex, ("credit", count))


def head_for(rid: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nX-Rid: %x\r\n\r\n" % rid


def response_payload(rid: int, flags: int, body: bytes = b"") -> bytes:
    return p.RESPONSE_HEAD.pack(flags, len(head_for(rid))) + head_for(rid) + body


# -- the machine -----------------------------------------------------------------------------

class DispatcherMachine(Driving, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.backend: Backend | None = None
        self.broken = False
        self.eject_after = 2
        self.queue_size = QUEUE_SIZE
        self.model_peers: list[Peer] = []  # in the order they connected (= dispatcher.peers)
        self.pool_drained = False  # the operator drained the pool ``default``
        self.by_ident: dict[bytes, Peer] = {}
        self.exs: list[Ex] = []
        self.by_ex: dict[Exchange, Ex] = {}
        self.by_name: dict[str, Ex] = {}  # by the path of its REQUEST
        self.by_rid: dict[int, Ex] = {}  # every rid ever learned
        self.queue: list[Ex] = []  # the dispatcher's queue, in order (model)
        self.idle: list[Peer] = []  # the dispatcher's lines, in order (model)
        self.ready: list[Peer] = []
        self.sink = RecordingSink(self)
        self.violations: list[str] = []
        self.expected: dict[Ex, list[Call]] = collections.defaultdict(list)
        self.marks: dict[Ex, int] = {}
        self.assigned: collections.Counter[Ex] = collections.Counter()  # REQUESTs this step

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def now(self) -> float:
        assert self.backend is not None
        return self.backend.clock.now

    @contextlib.contextmanager
    def step(self) -> Iterator[list[ScriptedPeer]]:
        """One step: the body acts (and predicts); then settle and check everything."""
        self.marks = {e: len(e.calls) for e in self.exs}
        self.expected = collections.defaultdict(list)
        self.assigned = collections.Counter()
        with self.settling() as senders:
            yield senders

    def sink_call(self, ex: Exchange, call: Call) -> None:
        e = self.by_ex.get(ex)
        if e is None:
            self.violation(f"sink call {call!r} for an unknown exchange {ex!r}")
            return
        if e.cancelled:
            self.violation(f"{e}: sink call {call!r} after the sink cancelled it")
        if is_final(call):
            e.finals += 1
            if e.finals > 1:
                self.violation(f"{e}: a second final call {call!r} (calls: {e.calls})")
        e.calls.append(call)

    # -- what the workers receive ------------------------------------------------------------

    def on_records(self, wire: ScriptedPeer, records: list[p.Record]) -> None:
        peer = self.by_ident[wire.ident]
        for kind, rid, payload in records:
            if kind == p.REQUEST:
                self.got_request(peer, rid, payload)
            elif kind == p.CANCEL:
                self.got_cancel(peer, rid)
            elif kind == p.BODY:
                held = peer.belief.get(rid)
                if held is None or held.cancelled:
                    self.violation(f"{peer} got BODY for {rid:x}, which it does not hold")
                else:
                    held.body += 1
                    if held.body > held.granted:
                        self.violation(f"{peer} got {held.body} BODY records for {held.ex}, "
                                       f"more than the {held.granted} it granted")
            elif kind == p.END:
                held = peer.belief.get(rid)
                if held is None or held.cancelled or held.ended or held.ex.body_complete:
                    self.violation(f"{peer} got an unexpected request END for {rid:x}")
                else:
                    held.ended = True
            elif kind == p.CREDIT:
                held = peer.belief.get(rid)
                if held is None or held.cancelled:
                    self.violation(f"{peer} got CREDIT for {rid:x}, which it does not hold")
            elif kind == p.BYE:
                if not peer.bye_sent or peer.bye_acked:
                    self.violation(f"{peer} got an unexpected BYE")
                peer.bye_acked = True
            elif kind == p.HEARTBEAT:
                if rid:
                    self.got_probe(peer, rid)
            else:
                self.violation(f"{peer} got {p.KIND_NAMES[kind]} from the front")

    def got_request(self, peer: Peer, rid: int, payload: bytes) -> None:
        """A REQUEST: the one the model sent this worker next, under the rid it knows, or
        (sent again) under a rid no request has had."""
        head = p.decode_request(payload)
        e = self.by_name.get(head.target)
        if e is None:
            self.violation(f"{peer} got a REQUEST for an unknown target {head.target!r}")
            return
        want = p.REQ_BODY_COMPLETE if e.body_complete else p.REQ_EXPECT
        if e.replayable:
            want |= p.REQ_REPLAYABLE
        if head.flags != want:
            self.violation(f"{peer} got {e} with flags {head.flags:#x}, sent {want:#x}")
        if peer.bye_sent:
            self.violation(f"{peer} got {e} after it said BYE")
        if rid in peer.belief:
            self.violation(f"{peer} got {e} ({rid:x}) while it still holds "
                           f"{peer.belief[rid].ex} under that rid "
                           f"(cancelled={peer.belief[rid].cancelled})")
        if len(peer.belief) + 1 > peer.capacity:
            self.violation(f"{peer} got {e} while holding {list(peer.belief.values())}: "
                           f"over its capacity {peer.capacity}")
        peer.belief[rid] = Held(e)
        if not peer.pending:
            self.violation(f"{peer} got {e} ({rid:x}), which the model did not send it")
            return
        slot = peer.pending.pop(0)
        if slot.ex is not e:
            self.violation(f"{peer} got {e} ({rid:x}); the model sent it {slot.ex} next")
        elif slot.rid == 0:  # sent again: a new rid
            if rid in self.by_rid:
                self.violation(f"{peer} got {e} again under {rid:x}, a rid "
                               f"{self.by_rid[rid]} had before")
            else:
                self.by_rid[rid] = e
                e.rids.append(rid)
            slot.rid = rid
        elif slot.rid != rid:
            self.violation(f"{peer} got {e} under {rid:x}, not {slot.rid:x}")
        if head.queue_us != slot.queue_us:
            self.violation(f"{peer} got {e} with queue_us {head.queue_us}, model "
                           f"{slot.queue_us}")

    def got_cancel(self, peer: Peer, rid: int) -> None:
        held = peer.belief.get(rid)
        if held is None:
            peer.stray_cancels.append(rid)  # crossed with its final record
        elif held.cancelled:
            self.violation(f"{peer} got a second CANCEL for {held.ex}")
        else:
            held.cancelled = True
        for slot in peer.expected_cancels:
            if slot.rid == rid:
                peer.expected_cancels.remove(slot)
                break
        else:
            self.violation(f"{peer} got an unexpected CANCEL for {rid:x}")

    def got_probe(self, peer: Peer, rid: int) -> None:
        if not peer.ejected:
            self.violation(f"{peer} got a probe ({rid:x}) but is not ejected")
            return
        if self.now < peer.ejected_until:
            self.violation(f"{peer} probed at {self.now}, before {peer.ejected_until}")
        if peer.probe_rid and peer.probe_rid != rid:
            self.violation(f"{peer} probed with {peer.probe_rid:x}, then with {rid:x}")
        peer.probe_rid = rid

    # -- predictions (the rules of dispatcher.py, written again) ----------------------------

    def expect(self, e: Ex, call: Call) -> None:
        self.expected[e].append(call)

    def end(self, e: Ex, call: Call) -> None:
        self.expect(e, call)
        e.done = True
        self.unqueue(e)

    def unqueue(self, e: Ex) -> None:
        if e.waiting:
            e.waiting = False
            if e in self.queue:
                self.queue.remove(e)

    def enqueue(self, e: Ex, first: bool = False) -> None:
        """A new wait in the queue (at its head: a request sent again)."""
        e.waiting = True
        e.queued_at = self.now
        e.queue_deadline = e.wait_deadline
        if first:
            self.queue.insert(0, e)
        else:
            self.queue.append(e)

    def unlist(self, peer: Peer) -> None:
        if peer.line == IDLE:
            self.idle.remove(peer)
        elif peer.line == READY:
            self.ready.remove(peer)
        peer.line = UNLISTED

    def list_(self, peer: Peer) -> None:
        """An eligible worker goes on a line: idle if it holds nothing, else ready if it
        has room (a worker at its capacity is on no line)."""
        if not peer.eligible:
            return
        if not peer.slots:
            self.idle.append(peer)
            peer.line = IDLE
        elif len(peer.slots) < peer.capacity:
            self.ready.append(peer)
            peer.line = READY

    def forget(self, peer: Peer) -> None:
        self.unlist(peer)
        peer.forgotten = True

    def stalled(self, peer: Peer) -> bool:
        """A busy worker in order that has finished nothing for ``STALL_SECONDS``."""
        return not peer.concurrent and not self.now - peer.progress < STALL_SECONDS

    def pick(self) -> Peer | None:
        """The worker for the next request: idle first (it becomes busy: progress), then
        one with room that is not stalled (a stalled one leaves its line); least recently
        used first."""
        if self.idle:
            peer = self.idle.pop(0)
            peer.progress = self.now
        else:
            while True:
                if not self.ready:
                    return None
                peer = self.ready.pop(0)
                if not self.stalled(peer):
                    break
                peer.line = UNLISTED
        peer.line = UNLISTED
        return peer

    def assign(self, e: Ex, peer: Peer) -> None:
        """``peer`` takes ``e``: a REQUEST is due, under the rid the model knows (0: sent
        again, a new one); it stays on the ready line while it has room."""
        assert peer.eligible and len(peer.slots) < peer.capacity, \
            f"the model sends {e} to {peer}, which cannot take it"
        queue_us = 0  # sent at once: as the sink encoded it (a request sent again waited)
        if e.queued_at:
            queue_us = min(int((self.now - e.queued_at) * 1e6), 0xFFFFFFFF)
        slot = Slot(e, e.rid, queue_us=queue_us)
        if not e.rid:
            e.sent_as = slot  # its REQUEST shows the rid
        e.queued_at = 0.0
        peer.slots.append(slot)
        peer.pending.append(slot)
        self.assigned[e] += 1
        e.waiting = False
        e.deadline = self.now + RT
        e.body_sent = 0
        e.credit = 0
        e.credited = False
        e.body_ended = False
        if len(peer.slots) < peer.capacity and peer.line == UNLISTED:
            self.ready.append(peer)
            peer.line = READY

    def drain_queue(self) -> None:
        while self.queue:
            peer = self.pick()
            if peer is None:
                return
            self.assign(self.queue.pop(0), peer)

    def submit(self, e: Ex) -> None:
        """``submit``: to a worker if nothing waits and one is free; else the queue; 503
        when the queue is full."""
        e.submitted = True
        e.wait_deadline = self.now + QT
        if not self.queue:
            peer = self.pick()
            if peer is not None:
                self.assign(e, peer)
                return
        if len(self.queue) >= self.queue_size:
            self.end(e, ("failure", 503))
            return
        self.enqueue(e)

    def retry(self, *es: Ex) -> None:
        """``_retry``: requests no worker holds any more go to the head of the queue in the
        order given (the oldest first, ahead of what already waited), each under a new rid;
        then the queue drains (once, also with nothing given); only then is the bound kept:
        while the queue is over it, its newest request (the tail) gets 503."""
        for e in reversed(es):
            e.rid = 0
            e.sent_as = None
            self.enqueue(e, first=True)
        self.drain_queue()
        while len(self.queue) > self.queue_size:
            self.end(self.queue[-1], ("failure", 503))

    def ghost(self, peer: Peer, slot: Slot) -> None:
        """The exchange leaves the worker before its final record: CANCEL, and a ghost."""
        slot.ghost = True
        peer.expected_cancels.append(slot)

    def release(self, peer: Peer, slot: Slot, progressed: bool = True) -> None:
        """``_release``: the worker's final record for ``slot`` came. The slot goes to the
        queue's head if the worker is eligible, under its capacity and not stalled (a
        REJECT is no progress); then, if more waits and the worker is still listed (it has
        room), the queue drains: a worker that made progress takes all it has room for.
        Otherwise the worker goes back on its line."""
        peer.slots.remove(slot)
        if progressed:
            peer.progress = self.now
        if peer.bye_sent:
            if not peer.slots:
                self.forget(peer)
            return
        if not peer.eligible:
            return
        if self.queue and len(peer.slots) < peer.capacity and not self.stalled(peer):
            self.assign(self.queue.pop(0), peer)
            if self.queue and peer.line != UNLISTED:
                self.drain_queue()  # (from the lines: the least recently used goes first)
            return
        if not peer.slots:
            if peer.line == READY:
                self.ready.remove(peer)
            self.idle.append(peer)
            peer.line = IDLE
        elif peer.line == UNLISTED and len(peer.slots) < peer.capacity:
            self.ready.append(peer)
            peer.line = READY

    def live_slot(self, e: Ex) -> tuple[Peer, Slot] | None:
        for peer in self.model_peers:
            if peer.known:
                for slot in peer.slots:
                    if slot.ex is e and not slot.ghost:
                        return peer, slot
        return None

    def failed(self, peer: Peer, finished: Slot | None = None) -> None:
        """``_failed``: one more consecutive failure; eject after ``eject_after``: off its
        line, and what it holds unstarted is cancelled and fails over. ``finished``: the
        slot whose final record made the failure (an ERROR, a malformed final record): the
        worker no longer holds it, so for a worker in order the first slot behind it is the
        one that may be running (docs/protocol.md, "Losing a worker"). If that slot is a
        ghost (a request the sink gave up, the worker may still run it), none of the
        requests that fail over counts as running."""
        peer.failures += 1
        if not self.eject_after or peer.failures < self.eject_after or not peer.eligible:
            return
        peer.ejections += 1
        peer.ejected = True
        peer.ejected_until = self.now + min(5 * peer.ejections, 60) * HB
        peer.probe_rid = 0
        self.unlist(peer)
        order = [s for s in peer.slots if s is not finished]
        running = order[0].ex if order and not order[0].ghost else None
        waiting = [s for s in order if not s.ghost and not s.ex.done and not s.ex.started]
        for slot in waiting:
            self.ghost(peer, slot)
        self.fail_over(peer, [s.ex for s in waiting], running)

    def fail_over(self, peer: Peer, held: list[Ex], running: Ex | None) -> None:
        """``_fail_over``: each of ``held`` (in the order the worker got them) is cut (502:
        started), refused (502) or goes again; those that go again are retried together,
        in that order (``retry`` runs once, also with none)."""
        again: list[Ex] = []
        for e in held:
            e.losses += 1
            if e.started:
                self.end(e, ("failure", 502))
                continue
            if peer.concurrent or e is running:
                e.attempts += 1
                ok = e.replayable and e.attempts < MAX_ATTEMPTS
            else:
                ok = e.body_complete or not e.body_sent
            if ok and e.losses < MAX_LOSSES:
                e.wait_deadline = self.now + QT  # a new wait begins
                again.append(e)
            else:
                self.end(e, ("failure", 502))
        self.retry(*again)

    def abandon(self, peer: Peer, slot: Slot, final: bool) -> None:
        """``_abandon``: a malformed record for a live exchange: 502 and a failure. A final
        one (END, ERROR, REJECT, RESPONSE with RESP_END) frees the slot at once (after the
        failure: an ejected worker takes nothing from the queue); any other is CANCELled
        and leaves a ghost."""
        assert self.backend is not None
        self.backend.expect_malformed()
        e = slot.ex
        if final:
            self.end(e, ("failure", 502))
            self.failed(peer, finished=slot)
            self.release(peer, slot)
        else:
            self.ghost(peer, slot)
            self.end(e, ("failure", 502))
            self.failed(peer)

    def finish(self, peer: Peer, slot: Slot, call: Call) -> None:
        """``_finish``: the worker's final record for a live exchange."""
        self.end(slot.ex, call)
        peer.failures = 0
        self.release(peer, slot)

    # -- checks ----------------------------------------------------------------------------

    def check_step(self) -> None:
        d = self.d
        problems = list(self.violations)
        self.violations.clear()
        for peer in self.model_peers:
            if peer.pending:
                problems.append(f"{peer} never got the REQUESTs of {peer.pending}")
                peer.pending.clear()
        self.learn_rids(problems)
        d.check()
        queue = list(d.queue)
        for e in self.exs:
            new = e.calls[self.marks.get(e, 0):]
            credits0 = [c for c in new if c == ("credit", 0)]
            rest = [c for c in new if c != ("credit", 0)]
            if rest != self.expected.get(e, []):
                problems.append(f"{e}: sink calls {rest}, expected {self.expected.get(e, [])}")
            want = 0 if e.body_complete else self.assigned[e]
            if len(credits0) != want:
                problems.append(f"{e}: {len(credits0)} on_body_credit(0), expected {want}")
            ex = e.ex
            if ex.state == DONE and not e.cancelled and e.finals != 1:
                problems.append(f"{e}: DONE with {e.finals} final calls, not cancelled")
            for name in ("attempts", "losses"):
                if getattr(ex, name) != getattr(e, name):
                    problems.append(f"{e}: {name} {getattr(ex, name)}, model {getattr(e, name)}")
            holders = [peer for peer in self.model_peers if peer.known
                       and any(s.ex is e and not s.ghost for s in peer.slots)]
            if not e.submitted:
                want_state = DONE if e.done else NEW
            elif e.done:
                want_state = DONE
            elif e.waiting:
                want_state = QUEUED
            elif e.started:
                want_state = STARTED
            else:
                want_state = SENT
            if ex.state != want_state:
                problems.append(f"{e}: state {STATE_NAMES[ex.state]}, model "
                                f"{STATE_NAMES[want_state]}")
            if e.live and ex.wait_deadline != e.wait_deadline:
                problems.append(f"{e}: wait deadline {ex.wait_deadline}, model "
                                f"{e.wait_deadline}")
            if e.live and e.waiting:
                if holders:
                    problems.append(f"{e}: queued, but held by {holders}")
                if ex not in d.queue:
                    problems.append(f"{e}: not in the dispatcher's queue")
                elif ex.deadline != e.queue_deadline:
                    problems.append(f"{e}: queue deadline {ex.deadline}, model "
                                    f"{e.queue_deadline}")
            elif e.live:
                if len(holders) != 1:
                    problems.append(f"{e}: held by {holders}, not by one worker")
                else:
                    peer = holders[0]
                    if ex.worker is not d.peers.get(peer.ident):
                        problems.append(f"{e}: its worker is {ex.worker!r}, not {peer}")
                if not e.started and ex.deadline != e.deadline:
                    problems.append(f"{e}: deadline {ex.deadline}, model {e.deadline}")
                if ex.body_credit != e.credit:
                    problems.append(f"{e}: body_credit {ex.body_credit}, model {e.credit}")
            elif holders:
                problems.append(f"{e}: ended, but held by {holders}")
        if queue:  # nothing waits while a worker could take it: room, and not stalled
            for peer in self.model_peers:
                if peer.eligible and len(peer.slots) < peer.capacity \
                        and not self.stalled(peer):
                    problems.append(f"{len(queue)} requests wait while {peer} "
                                    f"({'concurrent' if peer.concurrent else 'not stalled'}) "
                                    f"holds {len(peer.slots)} of {peer.capacity}")
        model_queue = [e.ex for e in self.queue]
        if queue != model_queue:
            problems.append(f"queue {[self.by_ex.get(x, x) for x in queue]}, model "
                            f"{self.queue}")
        if len(queue) > self.queue_size:
            problems.append(f"{len(queue)} requests queued, queue_size {self.queue_size}")
        for name, line in (("idle", self.idle), ("ready", self.ready)):
            real = [self.by_ident.get(peer.ident, peer) for peer in getattr(d, name)]
            if real != line:
                problems.append(f"the {name} line is {real}, model {line}")
        for peer in self.model_peers:
            problems.extend(self.check_peer(peer))
        if problems:
            raise AssertionError("after this step:\n  " + "\n  ".join(problems))

    def learn_rids(self, problems: list[str]) -> None:
        """Each exchange's rid is the one its worker's REQUEST carried (also if it ended
        since, in this step); one sent again that no worker took (queued, or ended) has a
        rid no request has had."""
        for e in self.exs:
            rid = e.ex.rid
            held = self.live_slot(e)
            if held is not None:
                want = held[1].rid
            elif e.rid:
                want = e.rid
            elif e.sent_as is not None:
                want = e.sent_as.rid
            else:  # sent again in this step, and no worker took it
                want = rid
                if rid in self.by_rid:
                    problems.append(f"{e} was sent again under {rid:x}, a rid "
                                    f"{self.by_rid[rid]} had before")
            if rid != want:
                problems.append(f"{e}: rid {rid:x}, model {want:x}")
            e.rid = rid
            e.sent_as = None
            if rid not in self.by_rid:
                self.by_rid[rid] = e
                e.rids.append(rid)

    def check_peer(self, peer: Peer) -> list[str]:
        d = self.d
        problems = []
        if peer.expected_cancels and not peer.lost:
            problems.append(f"{peer} never got CANCEL for {peer.expected_cancels}")
        if not peer.known:
            if peer.ident in d.peers:
                problems.append(f"{peer} is {'lost' if peer.lost else 'gone'}, but the "
                                "dispatcher still lists it")
            if peer.forgotten and not peer.lost and peer.belief:
                problems.append(f"{peer} was forgotten while it holds {peer.belief}")
            return problems
        real = d.peers.get(peer.ident)
        if real is None:
            return [f"{peer} is unknown to the dispatcher"]
        named = [f"{self.by_rid.get(rid, '?')}{'~' if isinstance(s, Ghost) else ''}@{rid:x}"
                 for rid, s in real.slots.items()]
        if list(real.slots) != [s.rid for s in peer.slots]:
            problems.append(f"{peer}: the dispatcher's slots {named}, model {peer.slots} "
                            "(~ a ghost)")
        else:
            for slot in peer.slots:
                got = real.slots[slot.rid]
                if isinstance(got, Ghost) != slot.ghost:
                    problems.append(f"{peer}: slot {slot} is {type(got).__name__}, "
                                    f"model ghost={slot.ghost}")
                elif not slot.ghost and got is not slot.ex.ex:
                    problems.append(f"{peer}: slot {slot} holds {got!r}")
        # what the worker believes it holds is what the dispatcher says it holds
        believed = [(rid, held.ex, held.cancelled) for rid, held in peer.belief.items()]
        slots = [(rid, self.by_rid.get(rid), isinstance(s, Ghost))
                 for rid, s in real.slots.items()]
        if believed != slots:
            problems.append(f"{peer} believes it holds {believed} (rid, request, cancelled), "
                            f"the dispatcher says {slots} (rid, request, ghost)")
        for name, want in (("capacity", peer.capacity), ("concurrent", peer.concurrent),
                           ("leaving", peer.bye_sent), ("ejected", peer.ejected),
                           ("failures", peer.failures), ("line", peer.line),
                           ("progress", peer.progress), ("drained", peer.drained)):
            if getattr(real, name) != want:
                problems.append(f"{peer}: {name} is {getattr(real, name)}, model {want}")
        if peer.ejected and real.ejected_until != peer.ejected_until:
            problems.append(f"{peer}: ejected until {real.ejected_until}, model "
                            f"{peer.ejected_until}")
        if peer.bye_sent and not peer.bye_acked:
            problems.append(f"{peer} said BYE and got no BYE back")
        return problems

    # -- choosing (by index among the candidates, so a shrunk run replays as plain calls) ----

    def connected(self) -> list[Peer]:
        """Workers the dispatcher knows that have not said BYE."""
        return [peer for peer in self.model_peers if peer.known and not peer.bye_sent]

    def holding(self) -> list[Peer]:
        """Open workers that believe they hold something."""
        return [peer for peer in self.model_peers if not peer.lost and peer.belief]

    def pick_held(self, peer: int, slot: int) -> tuple[Peer, int]:
        candidates = self.holding()
        chosen = candidates[peer % len(candidates)]
        return chosen, list(chosen.belief)[slot % len(chosen.belief)]

    def in_flight(self) -> list[Ex]:
        """Live exchanges a worker holds."""
        return [e for e in self.exs if e.live and not e.waiting]

    # -- rules: workers --------------------------------------------------------------------

    @initialize(eject_after=st.sampled_from([2, 1, 0, 3]),
                workers=st.lists(st.tuples(st.integers(1, 4), st.booleans()), max_size=3),
                queue_size=st.sampled_from([QUEUE_SIZE, 1, 0]))
    def init(self, eject_after: int, workers: Sequence[tuple[int, bool]] = (),
             queue_size: int = QUEUE_SIZE) -> None:
        """The dispatcher (``eject_after`` and ``queue_size`` vary; 0 means no queue), and
        the workers connected at first (capacity, concurrent)."""
        self.eject_after = eject_after
        self.queue_size = queue_size
        self.backend = Backend(self.on_records, queue_size=queue_size, request_timeout=RT,
                               queue_timeout=QT, heartbeat=HB, eject_after=eject_after)
        for capacity, concurrent in workers:
            self.connect(capacity=capacity, concurrent=concurrent)

    @precondition(lambda self: len(self.connected()) < 3)
    @rule(capacity=st.integers(1, 4), concurrent=st.booleans())
    def connect(self, capacity: int, concurrent: bool) -> None:
        """A new worker: idle, it takes from the queue at once."""
        assert self.backend is not None
        with self.step() as senders:
            name = f"w{len(self.model_peers)}"
            wire = self.backend.connect(name.encode())
            peer = Peer(name, wire, capacity, concurrent, pid=101 + len(self.model_peers))
            peer.drained = self.pool_drained
            self.model_peers.append(peer)
            self.by_ident[wire.ident] = peer
            self.list_(peer)
            self.drain_queue()
            flags = p.READY_CONCURRENT if concurrent else 0
            wire.send(p.encode_ready(capacity, WINDOW, peer.pid, name, flags))
            senders.append(wire)

    @precondition(lambda self: self.connected())
    @rule(peer=st.integers(0, 3), capacity=st.integers(0, 4), concurrent=st.booleans(),
          below=st.booleans())
    def restate(self, peer: int, capacity: int, concurrent: bool, below: bool = False) -> None:
        """READY again from a connected worker (capacity 0 is malformed: dropped). Half the
        time (concurrent with an odd capacity) it restates what it said before: a change of
        capacity would otherwise come too often; ``below``, if it holds several, it lowers
        its capacity to one less than it holds."""
        candidates = self.connected()
        chosen = candidates[peer % len(candidates)]
        if concurrent and capacity % 2:
            capacity, concurrent = chosen.capacity, chosen.concurrent
        if below and len(chosen.slots) > 1:
            capacity, concurrent = len(chosen.slots) - 1, chosen.concurrent
        with self.step() as senders:
            flags = p.READY_CONCURRENT if concurrent else 0
            if capacity == 0:
                assert self.backend is not None
                self.backend.expect_malformed()
                record = p.READY_HEAD.pack(0, WINDOW, 1, flags)
                chosen.wire.send(p.RECORD_HEAD.pack(p.READY, 0, len(record)) + record)
            else:
                self.unlist(chosen)
                chosen.capacity = capacity
                chosen.concurrent = concurrent
                self.list_(chosen)
                self.drain_queue()
                chosen.wire.send(p.encode_ready(capacity, WINDOW, 1, chosen.name, flags))
            senders.append(chosen.wire)

    @precondition(lambda self: self.connected())
    @rule(peer=st.integers(0, 3), pool=st.booleans())
    def operator_drain(self, peer: int, pool: bool) -> None:
        """An operator drains one worker, or the pool (every worker is in ``default``,
        and so is every one that connects later): they get nothing new."""
        candidates = self.connected()
        chosen = candidates[peer % len(candidates)]
        with self.step():
            targets = [p for p in self.model_peers if p.known] if pool else [chosen]
            if pool:
                self.pool_drained = True
            for target in targets:
                if not target.drained:
                    self.unlist(target)
                    target.drained = True
            self.d.drain("default" if pool else str(chosen.pid))

    @precondition(lambda self: any(p.drained for p in self.model_peers if p.known) or
                  self.pool_drained)
    @rule(peer=st.integers(0, 3), everything=st.booleans())
    def operator_resume(self, peer: int, everything: bool) -> None:
        """The operator resumes one drained worker, or everything drained."""
        drained = [p for p in self.model_peers if p.known and p.drained]
        with self.step():
            if everything or not drained:
                self.pool_drained = False
                targets = drained
                self.d.resume()
            else:
                targets = [drained[peer % len(drained)]]
                self.d.resume(str(targets[0].pid))
            for target in targets:
                target.drained = False
                self.list_(target)
            self.drain_queue()

    @precondition(lambda self: any(not peer.lost for peer in self.model_peers))
    @rule(peer=st.integers(0, 3), how=st.sampled_from(["stay", "bye", "lose"]))
    def leave(self, peer: int, how: str) -> None:
        """The worker leaves: BYE (the dispatcher answers BYE and sends it nothing new; it
        may still answer what it holds), or its DEALER closes (linger 0: lost; the
        dispatcher finds out and fails over what it held); or it stays, and sends a
        HEARTBEAT (ignored; leaving would otherwise drain the pool too often)."""
        if how == "stay":
            candidates = [w for w in self.model_peers if not w.lost]
            chosen = candidates[peer % len(candidates)]
            with self.step() as senders:
                chosen.wire.send(p.encode_signal(p.HEARTBEAT))
                senders.append(chosen.wire)
            return
        if how == "bye":
            candidates = self.connected()
            if candidates:
                self.bye(candidates[peer % len(candidates)])
                return
        candidates = [w for w in self.model_peers if not w.lost]
        self.lose_peer(candidates[peer % len(candidates)])

    def bye(self, chosen: Peer) -> None:
        with self.step() as senders:
            chosen.bye_sent = True
            self.unlist(chosen)
            if not chosen.slots:
                self.forget(chosen)
            chosen.wire.send(p.encode_signal(p.BYE))
            senders.append(chosen.wire)

    def lose_peer(self, peer: Peer) -> None:
        """``_drop``: every slot is free; the ghosts are forgotten, the exchanges fail
        over (for a worker in order, only the first slot may have been running)."""
        assert self.backend is not None
        with self.step():
            if peer.known:
                order = list(peer.slots)
                running = order[0].ex if order and not order[0].ghost else None
                peer.slots.clear()
                self.unlist(peer)
                peer.lost = True
                self.fail_over(peer, [s.ex for s in order if not s.ghost], running)
            peer.lost = True
            peer.belief.clear()
            peer.expected_cancels.clear()
            self.backend.lose(peer.wire)

    @precondition(lambda self: any(peer.known and peer.probe_rid for peer in self.model_peers))
    @rule(peer=st.integers(0, 3), stale=st.booleans())
    def echo_probe(self, peer: int, stale: bool) -> None:
        """The worker answers the probe it got (or sends a HEARTBEAT with a wrong id): back
        on its line, it takes from the queue."""
        candidates = [w for w in self.model_peers if w.known and w.probe_rid]
        chosen = candidates[peer % len(candidates)]
        with self.step() as senders:
            rid = chosen.probe_rid
            if stale:
                rid = (rid + 2**62) & 0xFFFFFFFFFFFFFFFF
            elif chosen.ejected:
                chosen.ejected = False
                chosen.failures = 0
                chosen.probe_rid = 0
                self.list_(chosen)
                self.drain_queue()
            chosen.wire.send(p.encode_probe(rid))
            senders.append(chosen.wire)

    @precondition(lambda self: self.holding())
    @rule(peer=st.integers(0, 3), slot=st.integers(0, 3), whole=st.booleans())
    def serve(self, peer: int, slot: int, whole: bool) -> None:
        """The worker makes progress on a request as a good worker would: a cancelled one
        ends with END_ABORT; a started one gets a CHUNK or its END; a new one gets its
        whole response, or its head (a streamed body is asked for first: CREDIT)."""
        chosen, rid = self.pick_held(peer, slot)
        with self.step() as senders:
            self.answer_one(chosen, rid, self.good_answer(chosen.belief[rid], whole))
            senders.append(chosen.wire)

    @staticmethod
    def good_answer(held: Held, whole: bool) -> str:
        if held.cancelled:
            return "abort"
        if held.started:
            return "end" if whole else "chunk"
        if not whole and not held.ex.body_complete and not held.granted:
            return "credit"  # the app starts reading its body
        return "full" if whole else "head"

    @precondition(lambda self: self.holding())
    @rule(peer=st.integers(0, 3), whole=st.booleans())
    def serve_all(self, peer: int, whole: bool) -> None:
        """``serve`` for every request a worker holds, all in one frame (a worker may answer
        several requests at once)."""
        candidates = self.holding()
        chosen = candidates[peer % len(candidates)]
        with self.step() as senders:
            records = [self.answer_record(chosen, rid, self.good_answer(held, whole))
                       for rid, held in list(chosen.belief.items())]
            chosen.wire.send(*records)
            senders.append(chosen.wire)

    @precondition(lambda self: self.holding())
    @rule(peer=st.integers(0, 3), whole=st.booleans())
    def serve_oldest(self, peer: int, whole: bool) -> None:
        """``serve`` for the oldest request a worker holds (what a worker in order does)."""
        self.serve(peer=peer, slot=0, whole=whole)

    @precondition(lambda self: self.holding())
    @rule(peer=st.integers(0, 3), slot=st.integers(0, 3), how=st.sampled_from(HOWS))
    def answer(self, peer: int, slot: int, how: str) -> None:
        """The worker sends one record (or frame) for a request it holds, whatever its
        state (so CHUNK before a head, a second head, REJECT of a started response)."""
        chosen, rid = self.pick_held(peer, slot)
        with self.step() as senders:
            self.answer_one(chosen, rid, how)
            senders.append(chosen.wire)

    def answer_one(self, peer: Peer, rid: int, how: str) -> None:
        """``peer`` sends one frame for ``rid``: one record, or a malformed frame."""
        assert self.backend is not None
        if how == "bad_version":
            peer.wire.send_raw(b"\x02" + p.encode_response(rid, p.RESP_END, head_for(rid)))
            self.backend.expect_malformed()
        elif how == "truncated":
            peer.wire.send_raw(p.VERSION_BYTE + p.RECORD_HEAD.pack(p.END, rid, 10) + b"\0")
            self.backend.expect_malformed()
        else:
            peer.wire.send(self.answer_record(peer, rid, how))

    def answer_record(self, peer: Peer, rid: int, how: str) -> bytes:
        """The record ``peer`` sends for ``rid``, and what it does, predicted."""
        flags = 0
        if how == "full":
            flags = p.RESP_END
            record = p.encode_response(rid, flags, head_for(rid), b"body")
        elif how == "head":
            record = p.encode_response(rid, 0, head_for(rid))
        elif how == "chunk":
            record = p.encode_data(p.CHUNK, rid, b"chunk %x" % rid)
        elif how == "end":
            record = p.encode_end(rid, 0, b"0\r\n\r\n")
        elif how == "abort":
            record = p.encode_end(rid, p.END_ABORT)
        elif how.startswith("error"):
            record = p.encode_error(rid, int(how[5:]), "worker error")
        elif how == "reject":
            record = p.encode_signal(p.REJECT, rid)
        elif how == "credit":
            record = p.encode_credit(rid, GRANT)
        elif how == "overcredit":  # more than the window it announced
            record = p.encode_credit(rid, 2 * WINDOW)
        elif how == "bad_error":
            record = p.RECORD_HEAD.pack(p.ERROR, rid, 2) + p.U16.pack(999)
        elif how == "body_kind":
            record = p.encode_data(p.BODY, rid, b"not a worker's record")
        elif how == "heartbeat":
            record = p.encode_probe(rid)  # a HEARTBEAT naming a request: not a probe answer
        else:
            raise AssertionError(how)
        self.predict_answer(peer, rid, how, flags)
        return record

    def predict_answer(self, peer: Peer, rid: int, how: str, flags: int) -> None:
        held = peer.belief[rid]
        # the worker's view
        if how in FINAL_HOWS:
            del peer.belief[rid]
        elif how == "head":
            held.started = True
        elif how in ("credit", "overcredit"):
            held.granted += GRANT if how == "credit" else 2 * WINDOW
        # the dispatcher's view
        slot = peer.slot(rid)
        if slot is None or not peer.known:
            return  # unknown request or unknown worker: dropped
        if slot.ghost:
            if how in FINAL_HOWS:
                self.release(peer, slot)
            return
        e = slot.ex
        if how == "full":
            if e.started:
                self.abandon(peer, slot, final=True)
            else:
                self.finish(peer, slot,
                            ("response", flags, response_payload(rid, flags, b"body")))
        elif how == "head":
            if e.started:
                self.abandon(peer, slot, final=False)
            else:
                e.started = True
                self.expect(e, ("response", 0, response_payload(rid, 0)))
        elif how == "chunk":
            if not e.started:
                self.abandon(peer, slot, final=False)
            else:
                self.expect(e, ("chunk", b"chunk %x" % rid))
        elif how in ("end", "abort"):
            if e.started:
                call: Call = ("end", 0, b"0\r\n\r\n") if how == "end" else ("end", p.END_ABORT,
                                                                           b"")
            else:
                call = ("failure", 502)
            self.finish(peer, slot, call)
        elif how.startswith("error"):
            status = int(how[5:])
            self.end(e, ("failure", status))
            if status >= 500:  # before the release: an ejected worker takes nothing new
                self.failed(peer, finished=slot)
            self.release(peer, slot)
        elif how == "reject":
            if e.started:
                self.abandon(peer, slot, final=True)
            else:
                self.release(peer, slot, progressed=False)
                e.handbacks += 1
                self.retry(e)  # the wait that began at submit goes on
        elif how in ("credit", "overcredit"):
            count = GRANT if how == "credit" else 2 * WINDOW
            if e.credit + count > WINDOW:  # past the window the worker announced: cut back
                self.backend.expect_malformed()
            e.credit = min(e.credit + count, WINDOW)
            e.credited = True
            e.deadline = self.now + RT
            self.expect(e, ("credit", count))
        elif how == "bad_error":
            self.abandon(peer, slot, final=True)
        elif how in ("body_kind", "heartbeat"):
            self.abandon(peer, slot, final=False)

    @precondition(lambda self: any(not peer.lost for peer in self.model_peers)
                  and any(e.submitted for e in self.exs))
    @rule(peer=st.integers(0, 3), exchange=st.integers(0, 15), which=st.integers(0, 3))
    def stray(self, peer: int, exchange: int, which: int) -> None:
        """A worker sends a final record for a rid it does not hold: one a request has now,
        or one it had before it was sent again (a late record for the old dispatch):
        dropped."""
        workers = [w for w in self.model_peers if not w.lost]
        chosen = workers[peer % len(workers)]
        submitted = [e for e in self.exs if e.submitted]
        e = submitted[exchange % len(submitted)]
        rid = e.rids[-1 - which % len(e.rids)]
        if chosen.slot(rid) is not None or rid in chosen.belief:
            return
        with self.step() as senders:
            chosen.wire.send(p.encode_end(rid, p.END_ABORT))
            senders.append(chosen.wire)

    # -- rules: sinks ----------------------------------------------------------------------

    @precondition(lambda self: sum(e.live for e in self.exs) < 8)
    @rule(replayable=st.booleans(), body_complete=st.booleans(),
          submit=st.sampled_from([True, True, True, False]))
    def create(self, replayable: bool, body_complete: bool, submit: bool) -> None:
        """A sink builds an exchange and (mostly) submits it. Replayable means idempotent
        with the whole body in the record, so it implies ``body_complete``."""
        with self.step():
            replayable = replayable and body_complete
            ex = Exchange(self.d.new_rid(), self.sink)
            e = Ex(f"x{len(self.exs)}", ex, replayable, body_complete, rid=ex.rid,
                   rids=[ex.rid])
            self.exs.append(e)
            self.by_ex[ex] = e
            self.by_name[f"/{e.name}"] = e
            self.by_rid[ex.rid] = e
            self.marks[e] = 0
            flags = p.REQ_BODY_COMPLETE if body_complete else p.REQ_EXPECT
            if replayable:
                flags |= p.REQ_REPLAYABLE
            ex.replayable = replayable
            ex.body_complete = body_complete
            ex.record = p.encode_request(
                ex.rid, flags, b"GET" if replayable else b"POST", b"/%s" % e.name.encode(),
                b"HTTP/1.1", b"127.0.0.1", 40000, b"localhost", 8000, b"http",
                [b"Host", b"localhost"], WINDOW, b"part" if not body_complete else b"")
            if submit:
                self.submit(e)
                self.d.submit(ex)

    @precondition(lambda self: any(not e.submitted and not e.done for e in self.exs))
    @rule(exchange=st.integers(0, 7))
    def submit_later(self, exchange: int) -> None:
        candidates = [e for e in self.exs if not e.submitted and not e.done]
        e = candidates[exchange % len(candidates)]
        with self.step():
            self.submit(e)
            self.d.submit(e.ex)

    @precondition(lambda self: self.exs)
    @rule(exchange=st.integers(0, 15), which=st.sampled_from(["done", "live", "any"]))
    def cancel(self, exchange: int, which: str) -> None:
        """The sink gives up (client gone, or a refusal after submit), in any state: a
        ``live`` one (not ended), ``any`` (new, queued, held, done), or a ``done`` one
        (a no-op for the dispatcher; and requests would otherwise end too often)."""
        if which == "live":
            candidates = [e for e in self.exs if e.live]
        elif which == "done":
            candidates = [e for e in self.exs if e.done]
        else:
            candidates = []
        candidates = candidates or self.exs
        self.cancel_one(candidates[exchange % len(candidates)])

    def cancel_one(self, e: Ex) -> None:
        with self.step():
            if not e.done:
                if e.submitted and not e.waiting:
                    held = self.live_slot(e)
                    assert held is not None, f"{e} is held by no worker"
                    self.ghost(*held)
                self.unqueue(e)
                e.done = True
            if not e.cancelled:
                e.cancelled = True
                e.calls_at_cancel = len(e.calls)
            self.d.cancel(e.ex)

    def body_ready(self) -> list[Ex]:
        return [e for e in self.in_flight() if not e.body_complete and not e.body_ended]

    @precondition(lambda self: any(e.ex.body_credit > 0 for e in self.body_ready()))
    @rule(exchange=st.integers(0, 7))
    def send_body(self, exchange: int) -> None:
        candidates = [e for e in self.body_ready() if e.ex.body_credit > 0]
        e = candidates[exchange % len(candidates)]
        with self.step():
            e.body_sent += 1
            e.credit -= 1
            e.deadline = self.now + RT
            self.d.send_body(e.ex, b"piece %d" % e.body_sent)

    @precondition(lambda self: any(e.credited for e in self.body_ready()))
    @rule(exchange=st.integers(0, 7))
    def end_body(self, exchange: int) -> None:
        candidates = [e for e in self.body_ready() if e.credited]
        e = candidates[exchange % len(candidates)]
        with self.step():
            e.body_ended = True
            self.d.end_body(e.ex)

    @precondition(lambda self: any(e.started for e in self.in_flight()))
    @rule(exchange=st.integers(0, 7), count=st.integers(1, 3))
    def grant(self, exchange: int, count: int) -> None:
        candidates = [e for e in self.in_flight() if e.started]
        with self.step():
            self.d.grant(candidates[exchange % len(candidates)].ex, count)

    # -- rules: time -----------------------------------------------------------------------

    @precondition(lambda self: any(e.live for e in self.exs)
                  or any(peer.known and peer.ejected for peer in self.model_peers))
    @rule(how=st.sampled_from(ADVANCES))
    def advance(self, how: str) -> None:
        """The clock moves; the test calls ``tick()`` (the dispatcher's timer would)."""
        assert self.backend is not None
        ejected = [peer.ejected_until for peer in self.model_peers
                   if peer.known and peer.ejected]
        delta = {"stall": STALL, "request": RT, "queue": QT, "heartbeat": HB,
                 "ejection": max(ejected, default=self.now + HB) - self.now}[how]
        with self.step():
            self.backend.clock.advance(max(delta, 0.0))
            self.predict_tick()
            self.d.tick()

    @precondition(lambda self: any(peer.known and peer.ejected for peer in self.model_peers))
    @rule(stale=st.booleans())
    def end_ejections(self, stale: bool) -> None:
        """The clock moves to the end of every ejection; the probes go out (the settle's
        probe is a heartbeat) and every probed worker echoes its probe."""
        self.advance(how="ejection")
        for peer in list(self.model_peers):
            candidates = [w for w in self.model_peers if w.known and w.probe_rid]
            if peer in candidates:
                self.echo_probe(peer=candidates.index(peer), stale=stale)

    def predict_tick(self) -> None:
        """``tick``: queue timeouts (503), then, worker by worker, request timeouts (504,
        CANCEL, a failure: an ejection fails over to workers later in the loop too)."""
        now = self.now
        for e in list(self.queue):
            if e.queue_deadline <= now:
                self.end(e, ("failure", 503))
        for peer in [w for w in self.model_peers if w.known]:
            late = [s for s in peer.slots if not s.ghost and not s.ex.started
                    and not s.ex.done and s.ex.deadline <= now]
            for slot in late:
                if slot.ghost:
                    continue  # failed over by the ejection of this worker
                self.ghost(peer, slot)
                self.end(slot.ex, ("failure", 504))
                self.failed(peer)

    # -- teardown --------------------------------------------------------------------------

    def teardown(self) -> None:
        if self.backend is None:
            return
        try:
            if not self.broken:
                self.drain()
        finally:
            self.backend.close()

    def drain(self) -> None:
        """Answer everything (one worker a step: the order of frames from several workers
        is not predictable), cancel what still waits, lose every worker; then every
        submitted exchange must have ended exactly once."""
        for _ in range(200):
            todo = [peer for peer in self.model_peers if not peer.lost and peer.belief]
            if not todo:
                break
            peer = todo[0]
            with self.step() as senders:
                for rid, held in list(peer.belief.items()):
                    how = "abort" if held.cancelled else "end" if held.ex.started else "full"
                    self.answer_one(peer, rid, how)
                senders.append(peer.wire)
        for e in self.exs:
            if e.live and e.waiting:
                self.cancel_one(e)
        for peer in self.model_peers:
            if not peer.lost:
                self.lose_peer(peer)
        d = self.d
        d.check()
        assert not d.queue and not d.peers
        for e in self.exs:
            if e.submitted:
                assert e.finals == 1 or (e.cancelled and e.finals == 0), \
                    f"{e} ended {e.finals} times (cancelled: {e.cancelled}): {e.calls}"
                assert e.ex.state == DONE, e
            if e.cancelled:
                extra = e.calls[e.calls_at_cancel:]
                assert not extra, f"{e}: calls after its cancel: {extra}"


# -- the property ----------------------------------------------------------------------------

@pytest.mark.timeout(120 + EXAMPLES * STEPS // 200)  # about 1 ms a step, and shrinking
def test_dispatcher_state_machine() -> None:
    run_machine(DispatcherMachine, EXAMPLES, STEPS)


# -- the main paths, as plain examples -------------------------------------------------------

@contextlib.contextmanager
def replaying(machine: type[DispatcherMachine] = DispatcherMachine,
              **init: Any) -> Iterator[DispatcherMachine]:
    state = machine()
    state.init(**init)
    try:
        yield state
    finally:
        state.teardown()


@pytest.fixture
def machine() -> Iterator[DispatcherMachine]:
    with replaying(eject_after=2) as state:
        yield state


def worker(state: DispatcherMachine, capacity: int) -> Peer:
    state.connect(capacity=capacity, concurrent=False)
    return state.model_peers[-1]


def request(state: DispatcherMachine, replayable: bool) -> Ex:
    state.create(replayable=replayable, body_complete=True, submit=True)
    return state.exs[-1]


def reply(state: DispatcherMachine, peer: Peer, rid: int, how: str) -> None:
    """``peer`` sends one record for ``rid`` (any rid it holds, a ghost's too)."""
    with state.step() as senders:
        state.answer_one(peer, rid, how)
        senders.append(peer.wire)


def test_submit_then_whole_response(machine: DispatcherMachine) -> None:
    """1. a worker of capacity 1 connects 2. a request is submitted: the worker gets it
    3. the worker answers with a whole RESPONSE: the sink gets it, its only final call."""
    w = worker(machine, 1)
    x = request(machine, replayable=True)
    assert list(w.belief) == [x.rid]
    reply(machine, w, x.rid, "full")
    assert x.calls == [("response", p.RESP_END, response_payload(x.rid, p.RESP_END, b"body"))]
    assert x.ex.state == DONE and not machine.d.peers[w.ident].slots


def test_full_queue_answers_503(machine: DispatcherMachine) -> None:
    """1. a worker of capacity 1 takes the first request 2. the next three wait in the
    queue (queue_size 3) 3. the fifth is answered 503 at once."""
    worker(machine, 1)
    xs = [request(machine, replayable=False) for _ in range(5)]
    assert [x.ex.state for x in xs] == [SENT, QUEUED, QUEUED, QUEUED, DONE]
    assert xs[4].calls == [("failure", 503)]
    assert not any(x.calls for x in xs[:4])


def test_cancel_while_queued(machine: DispatcherMachine) -> None:
    """1. two requests wait, no worker 2. the sink cancels the first 3. a worker connects:
    it gets only the second; the cancelled one gets no call at all."""
    first = request(machine, replayable=True)
    second = request(machine, replayable=True)
    machine.cancel_one(first)
    w = worker(machine, 2)
    assert list(w.belief) == [second.rid]
    assert first.calls == [] and first.ex.state == DONE


def test_lost_worker_fails_the_running_request_and_redispatches_the_one_behind(
        machine: DispatcherMachine) -> None:
    """1. a worker in order (capacity 2) holds two POSTs 2. it is lost (DEALER closed)
    3. the first (possibly running) gets 502; the second never ran, so it goes to the next
    worker although it is not idempotent, under a new rid."""
    w = worker(machine, 2)
    running = request(machine, replayable=False)
    behind = request(machine, replayable=False)
    assert list(w.belief) == [running.rid, behind.rid]
    old = behind.rid
    machine.lose_peer(w)
    assert running.calls == [("failure", 502)]
    assert behind.ex.state == QUEUED and behind.calls == [] and behind.rid != old
    other = worker(machine, 1)
    assert list(other.belief) == [behind.rid]
    reply(machine, other, behind.rid, "full")
    assert behind.finals == 1 and behind.calls[0][0] == "response"


def test_reject_redispatches_to_another_worker_under_a_new_rid(
        machine: DispatcherMachine) -> None:
    """1. two idle workers; a POST goes to the first (least recently used) 2. it REJECTs
    the request 3. the request goes to the second worker under a new rid, and the sink saw
    nothing 4. a late record from the first worker for the old rid is dropped: the second
    still holds the request, and its answer reaches the sink."""
    first = worker(machine, 1)
    second = worker(machine, 1)
    x = request(machine, replayable=False)
    old = x.rid
    assert list(first.belief) == [old]
    reply(machine, first, old, "reject")
    assert list(second.belief) == [x.rid] and not first.belief
    assert x.rid != old and x.rids == [old, x.rid]
    assert x.calls == [] and x.handbacks == 1
    machine.stray(peer=0, exchange=0, which=1)  # END_ABORT for the old rid, from the first
    assert x.ex.state == SENT and list(machine.d.peers[second.ident].slots) == [x.rid]
    reply(machine, second, x.rid, "full")
    assert x.calls == [("response", p.RESP_END, response_payload(x.rid, p.RESP_END, b"body"))]


def test_ejected_worker_keeps_a_ghost_under_the_old_rid(machine: DispatcherMachine) -> None:
    """1. a worker in order (capacity 2) answers a GET with ERROR 500 (one failure) 2. it
    holds a GET and a POST; a CHUNK before any head for the GET is malformed: 502, CANCEL
    and a ghost, and the second failure ejects the worker (eject_after 2): the POST behind,
    which cannot have run, is CANCELled too (a ghost under its old rid) and waits under a
    new rid 3. a new worker takes the POST 4. the ghost's END_ABORT for the old rid frees
    the ejected worker's slot and does not touch the POST."""
    w = worker(machine, 2)
    a = request(machine, replayable=True)
    reply(machine, w, a.rid, "error500")
    b = request(machine, replayable=True)
    c = request(machine, replayable=False)
    assert list(w.belief) == [b.rid, c.rid]
    old = c.rid
    reply(machine, w, b.rid, "chunk")
    assert w.ejected and b.calls == [("failure", 502)]
    assert c.ex.state == QUEUED and c.rid != old and c.calls == []
    assert list(machine.d.peers[w.ident].slots) == [b.rid, old]  # two ghosts
    other = worker(machine, 1)
    assert list(other.belief) == [c.rid]
    reply(machine, w, old, "abort")
    assert list(machine.d.peers[w.ident].slots) == [b.rid]
    assert c.ex.state == SENT and c.calls == []


def test_fail_over_keeps_the_workers_order_at_the_head_of_the_queue(
        machine: DispatcherMachine) -> None:
    """1. a worker in order (capacity 3) holds a GET and two POSTs; three more requests
    fill the queue (queue_size 3) 2. the worker is lost: the GET (possibly running,
    idempotent) and the two POSTs behind it (never started) go again, together, at the
    head of the queue in the order the worker got them; the queue keeps its bound by
    answering its newest requests, the three that waited, 503 3. a new worker takes the
    three in that order."""
    w = worker(machine, 3)
    xs = [request(machine, replayable=replayable) for replayable in (True, False, False)]
    waiting = [request(machine, replayable=True) for _ in range(3)]
    assert list(w.belief) == [x.rid for x in xs]
    assert list(machine.d.queue) == [x.ex for x in waiting]
    machine.lose_peer(w)
    assert list(machine.d.queue) == [x.ex for x in xs]
    assert [x.calls for x in waiting] == [[("failure", 503)]] * 3
    assert not any(x.calls for x in xs) and [x.attempts for x in xs] == [1, 0, 0]
    other = worker(machine, 3)
    assert list(other.belief) == [x.rid for x in xs] and not machine.d.queue


def test_redispatch_with_no_queue_goes_to_a_free_worker() -> None:
    """With ``queue_size`` 0, a request a worker hands back (REJECT) while another worker
    is idle goes to that worker under a new rid; the sink sees nothing (``_retry`` drains
    the queue before it keeps the bound)."""
    with replaying(eject_after=2, queue_size=0) as state:
        first = worker(state, 1)
        second = worker(state, 1)
        x = request(state, replayable=False)
        old = x.rid
        assert list(first.belief) == [old]
        reply(state, first, old, "reject")
        assert x.calls == [] and x.ex.state == SENT and x.rid != old
        assert list(second.belief) == [x.rid] and not first.belief


def test_redispatch_with_no_queue_answers_503_if_no_worker_takes_it() -> None:
    """With ``queue_size`` 0, a worker in order holding two POSTs is lost while the only
    other worker is busy: the first may have run (502); the one behind goes again, no
    worker takes it, and it is the newest request of a queue over its bound of nothing:
    503."""
    with replaying(eject_after=2, queue_size=0) as state:
        w = worker(state, 2)
        running = request(state, replayable=False)
        behind = request(state, replayable=False)
        assert list(w.belief) == [running.rid, behind.rid]
        busy = worker(state, 1)
        other = request(state, replayable=False)
        assert list(busy.belief) == [other.rid]
        state.lose_peer(w)
        assert running.calls == [("failure", 502)] and behind.calls == [("failure", 503)]
        assert behind.ex.state == DONE and not state.d.queue and other.calls == []


# -- regressions: failures the machine found, shrunk, replayed as plain steps ----------------
# Each checks that its bug stays fixed: the docstring says what went wrong, and where.

@pytest.mark.parametrize("answers", [["bad_error"], ["head", "reject"], ["head", "full"]],
                         ids=["error-999", "reject-after-head", "second-head-with-end"])
def test_regression_malformed_final_record_frees_the_slot(answers: list[str]) -> None:
    """A worker's final record that is malformed (ERROR with a status outside 100-599,
    REJECT of a started response, a second RESPONSE with RESP_END) was handled as any
    malformed record: 502 to the client, CANCEL to the worker, and a ghost that kept the
    slot "until the worker's final record". But that record was the final one: the worker
    had forgotten the request (and ignores the CANCEL, docs/protocol.md), so the ghost never
    went and the worker had one unit of capacity less until it disconnected. Now
    ``_abandon(final=True)`` frees the slot at once: no CANCEL, no ghost, 502, a failure;
    the next request goes to that worker."""
    with replaying(eject_after=2, workers=[(1, False)]) as state:
        state.create(replayable=False, body_complete=True, submit=True)
        x = state.exs[-1]
        for how in answers:
            state.answer(peer=0, slot=0, how=how)
        assert x.calls[-1] == ("failure", 502) and x.ex.state == DONE
        real = state.d.peers[b"w0"]
        assert not real.slots and real.failures == 1
        state.create(replayable=False, body_complete=True, submit=True)
        assert list(state.model_peers[0].belief) == [state.exs[-1].rid]


def test_regression_redispatch_keeps_the_queue_bound() -> None:
    """A worker in order holding two POSTs is lost while the queue (queue_size 1) is full:
    the first gets 502, the one behind never ran and goes back to the queue, at its head.
    ``_retry`` used not to look at ``queue_size``: the queue held 2 > 1 and
    ``Dispatcher.check()`` failed. Now the queue's newest request (the one that waited)
    gets 503 and the one sent again waits, under a new rid."""
    with replaying(eject_after=2, workers=[(2, False)], queue_size=1) as state:
        for _ in range(3):
            state.create(replayable=False, body_complete=False, submit=True)
        running, behind, newest = state.exs
        old = behind.rid
        state.leave(peer=0, how="lose")
        assert running.calls[-1] == ("failure", 502) and newest.calls == [("failure", 503)]
        assert list(state.d.queue) == [behind.ex] and behind.rid != old
        assert not any(c != ("credit", 0) for c in behind.calls)


def test_regression_lowered_capacity_is_not_refilled() -> None:
    """A worker of capacity 2 holding two requests restates READY with capacity 1; when it
    finished one, ``_release`` used to hand it the head of the queue without checking
    ``len(peer.slots) < peer.capacity``, so it held 2 again, over its capacity 1. Now it
    keeps the one it holds, and the queue waits."""
    with replaying(eject_after=2, workers=[(2, False)]) as state:
        for _ in range(3):
            state.create(replayable=False, body_complete=True, submit=True)
        state.restate(peer=0, capacity=1, concurrent=False)
        state.serve_oldest(peer=0, whole=True)
        assert len(state.d.peers[b"w0"].slots) == 1 and len(state.d.queue) == 1


def test_regression_redispatch_to_a_worker_holding_the_ghost_of_the_same_request() -> None:
    """A worker is ejected (eject_after 1) by a timeout: the request behind the one that
    timed out is CANCELled there (a ghost keeps its slot) and queued again. The worker
    answers its probe and then ends the first request, so ``_release`` hands it the queued
    one. It used to keep its rid, whose ghost was still in the worker's slots: ``_assign``
    overwrote the ghost, the worker got a REQUEST for a request it was still cancelling,
    and its END_ABORT for the old one was taken as the final record of the new one. Now the
    request sent again has a new rid: the worker holds the ghost under the old rid and the
    request under the new one."""
    with replaying(eject_after=1, workers=[(1, False)]) as state:
        state.create(replayable=False, body_complete=False, submit=True)
        state.create(replayable=False, body_complete=False, submit=True)
        behind = state.exs[1]
        old = behind.rid
        state.restate(peer=0, capacity=2, concurrent=False)
        state.advance(how="request")
        state.end_ejections(stale=False)
        state.serve_oldest(peer=0, whole=False)
        w = state.model_peers[0]
        assert list(state.d.peers[w.ident].slots) == [old, behind.rid] and behind.rid != old
        reply(state, w, old, "abort")  # the ghost's final record: the new one goes on
        assert behind.ex.state == SENT and list(w.belief) == [behind.rid]


def test_regression_close_with_a_flush_pending() -> None:
    """(Found by reading, not by the machine.) ``close()`` while a flush is scheduled (a
    request was just submitted, nothing yielded since): the flush callback ran after the
    socket was closed and raised ``ZMQError`` (ENOTSOCK) from ``self.sock.getsockopt`` in
    the hub. Now a flush scheduled before ``close()`` does nothing, and the worker gets
    nothing."""
    with replaying(eject_after=2, workers=[(1, False)]) as state:
        backend = state.backend
        assert backend is not None
        ex = Exchange(state.d.new_rid(), state.sink)
        ex.record = p.encode_request(ex.rid, p.REQ_BODY_COMPLETE, b"GET", b"/", b"HTTP/1.1",
                                     b"127.0.0.1", 1, b"localhost", 80, b"http", [], WINDOW)
        state.d.submit(ex)
        assert state.d._flush_scheduled
        state.broken = True  # no drain: the dispatcher is closed below
        backend.close_dispatcher()
        ran: list[bool] = []
        state.d.loop.run_callback(ran.append, True)  # callbacks run in order: after flush
        backend.wait(lambda: ran, "the callbacks scheduled before close() to run")
        backend.raise_errors()
        assert not state.d._dirty and ex.state == DONE
        assert state.model_peers[0].wire.receive() == []


# -- found by the machine at 1500 examples of 60 steps, since fixed ------------------------

@pytest.mark.parametrize("how", ["error500", "bad_error"])
def test_regression_ejection_by_a_final_record_counts_the_request_behind_as_running(
        how: str) -> None:
    """A worker in order (capacity 2) holds two POSTs and answers the first with a final
    record that ejects it (eject_after 1): ERROR 500, or a malformed ERROR. It sent that
    final record before it started the POST behind it (docs/protocol.md: a worker in order
    sends the final records of the requests before one without REQ_REPLAYABLE, then starts
    it), so the POST behind may be running: it must get 502. The dispatcher calls
    ``_failed`` while the finished exchange (DONE) is still in ``peer.slots`` (before the
    release, on purpose), and ``_failed`` used to pass ``order[0]``, that finished
    exchange, as ``running``: the POST was CANCELled and sent to another worker as if it
    could not have started (attempts 0), so it could run twice (and a GET there went again
    without counting the attempt). Found as ``x2: attempts 0, model 1 / sink calls [],
    expected [('failure', 502)]`` after ``answer(how='error500')``. Now ``running`` is the
    first slot that is not an exchange already DONE: the POST behind gets 502."""
    with replaying(eject_after=1, workers=[(2, False)]) as state:
        state.create(replayable=False, body_complete=True, submit=True)
        state.create(replayable=False, body_complete=True, submit=True)
        state.answer(peer=0, slot=0, how=how)
        assert state.exs[1].calls == [("failure", 502)]


def test_regression_freed_worker_takes_what_waits_while_it_has_room() -> None:
    """A worker in order (capacity 2) holds one request and is stalled (20 ms without
    progress), so the next two wait in the queue. It finishes its request: ``_release``
    used to give it the queue's head, and that was all: the second waited although the
    worker held 1 of 2 and had just made progress (``_pick`` would give it one). Nothing
    drained the queue until some worker finished again, and meanwhile every submit queued
    behind it (and got 503 once the queue was full) while that worker had room. Found as
    ``1 requests wait while w0 (not stalled) holds 1 of 2``. Now ``_release`` drains the
    queue while the worker is still listed (has room)."""
    with replaying(eject_after=2, workers=[(2, False)]) as state:
        state.create(replayable=False, body_complete=True, submit=True)
        state.advance(how="stall")
        state.create(replayable=False, body_complete=True, submit=True)
        state.create(replayable=False, body_complete=True, submit=True)
        state.serve_oldest(peer=0, whole=True)
        assert not state.d.queue
