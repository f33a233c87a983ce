"""The dispatcher's lanes (``wsgi_zmq.front.dispatcher``), driven by Hypothesis.

``test_dispatcher_states.py`` drives the HTTP lane in depth and predicts every sink call.
This machine drives several lanes at once over the same kind of real ``Dispatcher`` on
loopback ZeroMQ (``support.peers.Backend``, a manual clock): HTTP workers, job workers of
three services (scripted DEALERs whose READY carries ``READY_JOB``, some with
``READY_IDEMPOTENT``, in order or concurrent), and foreign workers joined with
``Dispatcher.attach`` through a ``Link`` written here, which records what it is delivered and
can be told to fail. Its rules: workers connect, restate READY (also for another service:
dropped), say BYE, die (DEALER closed; ``detach``, after which the worker may still send;
a link that refuses), echo probes; sinks submit HTTP requests and jobs (idempotent or not)
for a served service, an unserved one, or one no worker ever serves, and cancel in any
state; workers answer whatever they hold with any record (partial and final JOB_REPLY,
malformed and truncated JOB_REPLY, RESPONSE whole or head, CHUNK, END, END_ABORT, ERROR 500
and 400, REJECT), so also a JOB_REPLY to an HTTP request and a RESPONSE to a job, and send
late records for rids they no longer hold; the clock moves (stall, request and queue
timeouts, heartbeats, the end of an ejection) and the test calls ``tick()``.

The model is lighter than the HTTP machine's: it knows which lane each exchange belongs to,
what each worker believes it holds (what it was sent minus its final records, with the
CANCELs it got), how many final calls each sink had, and, from the dispatcher's own state at
the start of a step, what the record of that step must do to its exchange. After EVERY step
(``Backend.settle``: barriers, no sleeps) it checks:

- ``dispatcher.check()``;
- lanes never cross: every REQUEST a worker gets is an HTTP request sent to an HTTP worker,
  every JOB one of the worker's service (its service string and its frames), to a job or
  foreign worker; on every delivery the worker is not over its capacity, has not said BYE,
  and the rid is one no worker was ever sent before (a job sent again has a new one);
- every exchange ends exactly once: at most one final call (``on_response`` with the final
  flag of its lane, ``on_end``, ``on_failure``), none after its sink cancelled it, exactly one
  once DONE unless cancelled; an exchange not DONE is in its lane's queue or in the slots of
  a worker of its lane that believes it holds it; one whose reply started never goes back;
  the payload of every ``on_response``/``on_chunk`` is one that a worker sent for that very
  exchange, of its lane's record kind;
- every queue is within ``queue_size``; a lane's ``members`` is the number of its connected
  workers; ``serves()`` agrees for every service name; what each worker believes it holds is
  the dispatcher's slots for it, in order (a ghost where it was told to CANCEL);
- exact outcomes where cheap: the sink call each record makes (or 502 for a record of the
  wrong lane or state, and the malformed count), 503 at once for a full queue or one lane
  too many, 503 "No worker served 'x'" or "No worker was free" at the queue timeout, 504 at
  the request timeout, the deletion of empty lanes in ``tick``; for a lost worker, 502 for
  what started or may have run and is not idempotent (neither the job nor the pool); steps
  that cannot end anything (connect, restate, BYE, late records, a detached worker's records)
  make no sink call at all.

The budget: ``LANES_EXAMPLES`` (examples, default 200) and ``LANES_STEPS`` (steps per
example, default 50): about 10 s; 500 examples take about 25 s, 1500 of 80 steps about
100 s. While the machine runs ``MAX_EMPTY_LANES`` is 2, so refusing a lane is reachable.

The dispatcher decodes a JOB_REPLY before it changes anything, and gives the job sink its
frames (``on_job_reply``, recorded here as a "response" with the record's payload): one
whose frames are malformed is a malformed reply (502). A job is bounded by
``request_timeout`` between its partial replies too. Bugs
found are kept at the end as plain regression tests (an open one would be
``xfail(strict=True)``, and the machine would steer around it, saying where).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

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
from wsgi_zmq.errors import HTTPError, ProtocolError
from wsgi_zmq.front import dispatcher as dispatcher_module
from wsgi_zmq.front.dispatcher import (
    DONE,
    NEW,
    QUEUED,
    SENT,
    STARTED,
    STATE_NAMES,
    Exchange,
    Ghost,
)
from wsgi_zmq.front.dispatcher import Peer as DispatcherPeer

RT = 1000.0  # request_timeout, in seconds of the manual clock
QT = 1500.0  # queue_timeout
HB = 100.0  # heartbeat (ZMTP heartbeats every 100 s of real time never fire in a test)
STALL = 0.05  # more than STALL_SECONDS
WINDOW = 8
SERVICES = ("resize", "thumb", "ocr")  # job services workers may serve
UNKNOWN = ("nobody", "nothing", "noone")  # job services no worker ever serves
NAMES = ("", *SERVICES, *UNKNOWN)  # every lane a test may make ("" is HTTP)
EMPTY_LANES = 2  # MAX_EMPTY_LANES while the machine runs

EXAMPLES = int(os.environ.get("LANES_EXAMPLES", "200"))
STEPS = int(os.environ.get("LANES_STEPS", "50"))

KINDS = ("http", "job", "job", "foreign")
#: What a worker may send for a rid it holds, whatever the rid's lane and state.
HOWS = ("job_partial", "job_final", "job_bad_final", "job_bad_partial", "job_short",
        "response_end", "response_head", "chunk", "end", "abort", "error500", "error400",
        "reject")
EVENTS = ("ready", "ready", "ready_other", "bye", "close", "detach", "fail", "stay", "stay")
ADVANCES = ("stall", "request", "queue", "heartbeat", "ejection")

Call = tuple[Any, ...]


# -- the model -------------------------------------------------------------------------------

@dataclass(eq=False)
class Ex:
    """One exchange, as its sink and the model see it."""

    name: str
    service: str  # its lane: "" for HTTP
    ex: Exchange
    replayable: bool  # GET (HTTP) / JOB_IDEMPOTENT (job)
    calls: list[Call] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # the detail of each on_failure
    finals: int = 0
    cancelled: bool = False
    started: bool = False  # a reply that is not final reached the sink

    @property
    def job(self) -> bool:
        return bool(self.service)

    @property
    def live(self) -> bool:
        return self.ex.state != DONE

    def __repr__(self) -> str:
        return self.name


@dataclass(eq=False)
class Held:
    """What a worker believes about one rid it holds."""

    e: Ex
    cancelled: bool = False  # it got CANCEL


@dataclass(eq=False)
class Worker:
    """One worker: a scripted DEALER (``http``, ``job``) or a foreign one behind a Link."""

    name: str
    kind: str  # "http", "job" or "foreign"
    service: str
    capacity: int
    concurrent: bool
    idempotent: bool
    key: bytes  # its routing id, or the key it was attached under
    wire: ScriptedPeer | None = None
    link: Link | None = None
    belief: dict[int, Held] = field(default_factory=dict)  # in the order it got them
    bye_sent: bool = False
    bye_acked: bool = False
    lost: bool = False  # the dispatcher dropped it (closed, detached, its link failed)
    zombie: bool = False  # detached, and it still sends (its records must be dropped)
    probe_rid: int = 0  # the probe it was sent last (ejected)

    @property
    def known(self) -> bool:
        """Is it in ``dispatcher.peers`` (a leaving worker is, until it holds nothing)?"""
        return not self.lost and not (self.bye_sent and not self.belief)

    @property
    def can_send(self) -> bool:
        return not self.lost or self.zombie

    def __repr__(self) -> str:
        return self.name


class Link:
    """A foreign worker's link (``dispatcher.Link``): what it is delivered goes to the
    machine, as a DEALER's records would; ``failing`` makes it refuse (the worker is gone)."""

    def __init__(self, machine: LanesMachine, worker: Worker) -> None:
        self.machine = machine
        self.worker = worker
        self.delivered: list[p.Record] = []
        self.failing = False
        self.refused = 0

    def deliver(self, peer: DispatcherPeer, records: list[bytes]) -> bool:
        # called inside the dispatcher: it must not raise
        if peer.ident != self.worker.key or peer.link is not self:
            self.machine.violation(f"{self.worker}'s link got records for {peer!r}")
        if self.failing:
            self.refused += 1
            return False
        try:
            got = p.split_frame(p.frame(records))
        except ProtocolError as exc:
            self.machine.violation(f"{self.worker}'s link got a malformed frame: {exc}")
            return True
        self.delivered.extend(got)
        self.machine.on_records(self.worker, got)
        return True


def decodes(payload: bytes) -> bool:
    """Is ``payload`` a JOB_REPLY payload that decodes?"""
    try:
        p.decode_job_reply(payload)
    except (ProtocolError, struct.error):
        return False
    return True


class RecordingSink:
    """Records every call (never raises: calls come from inside the dispatcher)."""

    def __init__(self, machine: LanesMachine) -> None:
        self.machine = machine

    def on_response(self, ex: Exchange, flags: int, payload: bytes) -> None:
        self.machine.sink_call(ex, ("response", flags, bytes(payload)))

    def on_job_reply(self, ex: Exchange, flags: int, frames: list[bytes]) -> None:
        # the record's payload again (its encoding is canonical), to match what was sent
        payload = p.encode_job_reply(0, flags, frames)[p.RECORD_HEAD.size:]
        self.machine.sink_call(ex, ("response", flags, payload))

    def on_chunk(self, ex: Exchange, data: bytes) -> None:
        self.machine.sink_call(ex, ("chunk", bytes(data)))

    def on_end(self, ex: Exchange, flags: int, tail: bytes) -> None:
        self.machine.sink_call(ex, ("end", flags, bytes(tail)))

    def on_failure(self, ex: Exchange, error: HTTPError) -> None:
        self.machine.sink_call(ex, ("failure", error.status), error.detail)

    def on_body_credit(self, ex: Exchange, count: int) -> None:
        self.machine.sink_call(ex, ("credit", count))


def final_record(kind: int, payload: bytes) -> bool:
    """Does this worker record end its exchange (docs/protocol.md)?"""
    if kind in (p.END, p.ERROR, p.REJECT):
        return True
    if kind == p.RESPONSE:
        return bool(payload[0] & p.RESP_END)
    return kind == p.JOB_REPLY and bool(payload[0] & p.JOB_FINAL)


# -- the machine -----------------------------------------------------------------------------

class LanesMachine(Driving, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.backend: Backend | None = None
        self.broken = False
        self.queue_size = 2
        self.eject_after = 0
        self.workers: list[Worker] = []
        self.by_key: dict[bytes, Worker] = {}
        self.exs: list[Ex] = []
        self.by_ex: dict[Exchange, Ex] = {}
        self.by_name: dict[str, Ex] = {}
        self.sent: dict[bytes, tuple[Ex, int]] = {}  # every reply payload: exchange, kind
        self.delivered: list[int] = []  # the rid of every REQUEST and JOB delivered
        self.delivered_set: set[int] = set()
        self.sink = RecordingSink(self)
        self.violations: list[str] = []
        self.marks: dict[Ex, int] = {}
        self.expected: dict[Ex, list[list[Call]]] = {}  # alternatives for this step's calls
        self.after: list[Callable[[], str | None]] = []  # this step's own checks
        self.may_call: set[Ex] | None = None  # None: any sink may be called in this step
        self.tags = 0
        self.patch = mock.patch.object(dispatcher_module, "MAX_EMPTY_LANES", EMPTY_LANES)
        self.patched = False

    # -- plumbing ---------------------------------------------------------------------------

    def expect(self, e: Ex, *alternatives: list[Call]) -> None:
        self.expected[e] = list(alternatives)

    def later(self, holds: Callable[[], object], problem: Callable[[], str]) -> None:
        """Once this step has settled, ``holds()`` must be true; else ``problem()``."""
        self.after.append(lambda: None if holds() else problem())

    def new_calls(self, e: Ex) -> list[Call]:
        return e.calls[self.marks.get(e, 0):]

    @contextlib.contextmanager
    def step(self, may_call: set[Ex] | None = None) -> Iterator[list[ScriptedPeer]]:
        """One step: the body acts and predicts; then settle and check everything."""
        self.marks = {e: len(e.calls) for e in self.exs}
        self.expected = {}
        self.after = []
        self.may_call = may_call
        with self.settling() as senders:
            yield senders

    def sink_call(self, ex: Exchange, call: Call, detail: str = "") -> None:
        e = self.by_ex.get(ex)
        if e is None:
            self.violation(f"sink call {call!r} for an unknown exchange {ex!r}")
            return
        if e.cancelled:
            self.violation(f"{e}: sink call {call!r} after its sink cancelled it")
        kind = call[0]
        if kind == "credit":
            self.violation(f"{e}: on_body_credit({call[1]}), but its body was whole")
        elif kind in ("response", "chunk"):
            payload = call[2] if kind == "response" else call[1]
            owner, record = self.sent.get(payload, (None, 0))
            want = p.CHUNK if kind == "chunk" else p.JOB_REPLY if e.job else p.RESPONSE
            if owner is not e or record != want:
                self.violation(f"{e}: {kind} with a payload sent as "
                               f"{p.KIND_NAMES.get(record, '?')} for {owner}")
            if kind == "response" and call[1] != payload[0]:
                self.violation(f"{e}: on_response flags {call[1]:#x}, the record's "
                               f"{payload[0]:#x}")
        final = kind in ("end", "failure") or (kind == "response" and bool(call[1] & 0x01))
        if final:
            e.finals += 1
            if e.finals > 1:
                self.violation(f"{e}: a second final call {call!r} (calls: {e.calls})")
        elif kind == "response":
            e.started = True
        e.calls.append(call)
        if kind == "failure":
            e.details.append(detail)

    def tag(self, e: Ex | None) -> bytes:
        self.tags += 1
        return b"%s#%d" % ((e.name if e else "stray").encode(), self.tags)

    # -- what the workers receive ------------------------------------------------------------

    def on_dealer_records(self, wire: ScriptedPeer, records: list[p.Record]) -> None:
        self.on_records(self.by_key[wire.ident], records)

    def on_records(self, worker: Worker, records: list[p.Record]) -> None:
        for kind, rid, payload in records:
            if kind in (p.REQUEST, p.JOB):
                self.got_exchange(worker, kind, rid, payload)
            elif kind == p.CANCEL:
                held = worker.belief.get(rid)
                if held is None or held.cancelled:
                    self.violation(f"{worker} got CANCEL for {rid:x}, which it does not hold "
                                   "(or was told to CANCEL already)")
                else:
                    held.cancelled = True
            elif kind == p.BYE:
                if not worker.bye_sent or worker.bye_acked:
                    self.violation(f"{worker} got an unexpected BYE")
                worker.bye_acked = True
            elif kind == p.HEARTBEAT:
                if rid:
                    worker.probe_rid = rid
            else:
                self.violation(f"{worker} got {p.KIND_NAMES[kind]} {rid:x} from the front")

    def got_exchange(self, worker: Worker, kind: int, rid: int, payload: bytes) -> None:
        """A REQUEST or a JOB: of the worker's lane, within its capacity, under a new rid."""
        try:
            if kind == p.REQUEST:
                head = p.decode_request(payload)
                name, service = head.target[1:], ""
                flags_ok = True
            else:
                job = p.decode_job(payload)
                name = job.frames[0].decode() if job.frames else "?"
                service = job.service
                flags_ok = None  # checked below, once the exchange is known
        except (ProtocolError, UnicodeDecodeError) as exc:
            self.violation(f"{worker} got a malformed {p.KIND_NAMES[kind]}: {exc}")
            return
        e = self.by_name.get(name)
        what = f"{worker} ({worker.kind} {worker.service!r}) got {p.KIND_NAMES[kind]} {rid:x}"
        if e is None:
            self.violation(f"{what} for an unknown exchange {name!r}")
            return
        if (kind == p.REQUEST) != (worker.kind == "http") or e.service != worker.service \
                or service != e.service:
            self.violation(f"{what} for {e} of lane {e.service!r} (record's {service!r}): "
                           "crossed lanes")
        if kind == p.JOB:
            flags_ok = bool(job.flags & p.JOB_IDEMPOTENT) == e.replayable \
                and job.frames[1:] == [b"payload"] and job.window == WINDOW
        if not flags_ok:
            self.violation(f"{what}: its record for {e} changed on the way")
        if rid in self.delivered_set:
            self.violation(f"{what} for {e}: a rid a worker was sent before")
        self.delivered.append(rid)
        self.delivered_set.add(rid)
        if worker.bye_sent:
            self.violation(f"{what} for {e} after it said BYE")
        if rid in worker.belief:
            self.violation(f"{what} for {e} while it holds that rid")
        if len(worker.belief) >= worker.capacity:
            self.violation(f"{what} for {e} while it holds {len(worker.belief)}: over its "
                           f"capacity {worker.capacity}")
        worker.belief[rid] = Held(e)

    # -- checks ----------------------------------------------------------------------------

    def check_step(self) -> None:
        d = self.d
        problems = list(self.violations)
        self.violations.clear()
        d.check()
        for e, alternatives in self.expected.items():
            new = self.new_calls(e)
            if new not in alternatives:
                problems.append(f"{e}: sink calls {new}, expected one of {alternatives}")
        if self.may_call is not None:
            for e in self.exs:
                if e not in self.may_call and self.new_calls(e):
                    problems.append(f"{e}: sink calls {self.new_calls(e)} in a step that "
                                    "can end nothing")
        for check in self.after:
            problem = check()
            if problem:
                problems.append(problem)
        self.check_lanes(problems)
        self.check_exchanges(problems)
        self.check_workers(problems)
        if problems:
            raise AssertionError("after this step:\n  " + "\n  ".join(problems))

    def check_lanes(self, problems: list[str]) -> None:
        d = self.d
        for service, lane in d.lanes.items():
            if service not in NAMES:
                problems.append(f"a lane for {service!r}, which nothing asked for")
            if len(lane.queue) > self.queue_size:
                problems.append(f"{lane!r}: {len(lane.queue)} queued, queue_size "
                                f"{self.queue_size}")
            for ex in lane.queue:
                e = self.by_ex.get(ex)
                if e is None or e.service != service:
                    problems.append(f"{lane!r} queues {e or ex!r}")
        for service in NAMES:
            want = sum(w.service == service and w.known for w in self.workers)
            lane = d.lanes.get(service)
            got = lane.members if lane is not None else 0
            if got != want:
                problems.append(f"lane {service!r}: members {got}, connected workers {want}")
            # MMI's answer: a worker that takes work (not leaving, not ejected) is connected
            able = sum(w.service == service and w.known and w.key in d.peers
                       and d.peers[w.key].eligible for w in self.workers)
            if d.serves(service) != (able > 0):
                problems.append(f"serves({service!r}) is {d.serves(service)} with {able} "
                                "connected workers that take work")
        known = {w.key for w in self.workers if w.known}
        if set(d.peers) != known:
            problems.append(f"the dispatcher knows {sorted(d.peers)}, model {sorted(known)}")

    def check_exchanges(self, problems: list[str]) -> None:
        d = self.d
        for e in self.exs:
            ex = e.ex
            state = ex.state
            where = f"{e} ({STATE_NAMES[state]})"
            if state == NEW:
                problems.append(f"{where}: submitted, still NEW")
            elif state == DONE:
                if not e.cancelled and e.finals != 1:
                    problems.append(f"{where}: {e.finals} final calls, not cancelled: {e.calls}")
            elif e.cancelled or e.finals:
                problems.append(f"{where}: live, but cancelled={e.cancelled}, {e.finals} finals")
            if state == QUEUED:
                lane = d.lanes.get(e.service)
                if lane is None or ex not in lane.queue or ex.worker is not None:
                    problems.append(f"{where}: not in the queue of lane {e.service!r}")
            elif state in (SENT, STARTED):
                peer = ex.worker
                w = self.by_key.get(peer.ident) if peer is not None else None
                if w is None or d.peers.get(w.key) is not peer:
                    problems.append(f"{where}: held by {peer!r}, which the dispatcher lost")
                else:
                    held = w.belief.get(ex.rid)
                    if w.service != e.service:
                        problems.append(f"{where}: held by {w} of lane {w.service!r}")
                    if held is None or held.e is not e or held.cancelled:
                        problems.append(f"{where}: {w} does not believe it holds it as "
                                        f"{ex.rid:x}")
            if state == STARTED and not e.started:
                problems.append(f"{where}: no reply reached its sink")
            if e.started and state not in (STARTED, DONE):
                problems.append(f"{where}: its reply started; it went back")

    def check_workers(self, problems: list[str]) -> None:
        d = self.d
        for w in self.workers:
            if not w.known:
                continue
            real = d.peers.get(w.key)
            if real is None:
                continue  # check_lanes said so
            if list(real.slots) != list(w.belief):
                problems.append(f"{w}: the dispatcher's slots {list(map(hex, real.slots))}, "
                                f"the worker believes {list(map(hex, w.belief))}")
            else:
                for rid, held in w.belief.items():
                    slot = real.slots[rid]
                    if held.cancelled != isinstance(slot, Ghost):
                        problems.append(f"{w}: slot {rid:x} is {slot!r}, the worker "
                                        f"cancelled={held.cancelled}")
                    elif not held.cancelled and slot is not held.e.ex:
                        problems.append(f"{w}: slot {rid:x} holds {slot!r}, not {held.e}")
            for name, want in (("capacity", w.capacity), ("concurrent", w.concurrent),
                               ("idempotent", w.idempotent), ("leaving", w.bye_sent)):
                if getattr(real, name) != want:
                    problems.append(f"{w}: {name} is {getattr(real, name)}, model {want}")
            if real.lane.service != w.service or real.link is not w.link:
                problems.append(f"{w}: in {real.lane!r} with link {real.link!r}")
            if w.bye_sent and not w.bye_acked:
                problems.append(f"{w} said BYE and got no BYE back")

    # -- choosing (by index among the candidates, so a shrunk run replays as plain calls) ----

    def connected(self) -> list[Worker]:
        return [w for w in self.workers if w.known and not w.bye_sent]

    def senders(self) -> list[Worker]:
        """Workers that can send and believe they hold something."""
        return [w for w in self.workers if w.can_send and w.belief]

    # -- rules: workers --------------------------------------------------------------------

    @initialize(queue_size=st.sampled_from([2, 2, 1, 0]), eject_after=st.sampled_from([0, 2, 1]),
                workers=st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 2),
                                           st.integers(1, 3), st.booleans(), st.booleans()),
                                 min_size=1, max_size=3))
    def init(self, queue_size: int = 2, eject_after: int = 0,
             workers: Sequence[tuple[str, int, int, bool, bool]] = ()) -> None:
        """The dispatcher (``queue_size`` per lane, 0: no queue; ``eject_after``, 0: never)
        and the workers connected at first (kind, service, capacity, concurrent,
        idempotent)."""
        self.queue_size = queue_size
        self.eject_after = eject_after
        self.patch.start()
        self.patched = True
        self.backend = Backend(self.on_dealer_records, queue_size=queue_size,
                               request_timeout=RT, queue_timeout=QT, heartbeat=HB,
                               eject_after=eject_after)
        for spec in workers:
            self.connect(*spec)

    @precondition(lambda self: len(self.connected()) < 6)
    @rule(kind=st.sampled_from(KINDS), service=st.integers(0, 2), capacity=st.integers(1, 3),
          concurrent=st.booleans(), idempotent=st.booleans())
    def connect(self, kind: str, service: int, capacity: int, concurrent: bool,
                idempotent: bool) -> None:
        """A worker joins: an HTTP or job DEALER sends READY, a foreign one is attached
        (capacity 1, in order). It takes what waits in its lane, nothing else."""
        self.join(kind, "" if kind == "http" else SERVICES[service], capacity, concurrent,
                  idempotent)

    def join(self, kind: str, service: str, capacity: int = 1, concurrent: bool = False,
             idempotent: bool = False) -> Worker:
        assert self.backend is not None
        name = f"{kind[0]}{len(self.workers)}"
        if kind == "foreign":
            capacity, concurrent, idempotent = 1, False, False
        if kind == "http":
            idempotent = False
        with self.step(may_call=set()) as senders:
            w = Worker(name, kind, service, capacity, concurrent, idempotent, name.encode())
            self.workers.append(w)
            if kind == "foreign":
                w.key = b"link:" + name.encode()
                w.link = Link(self, w)
                self.by_key[w.key] = w
                peer = self.d.attach(w.key, service, 100 + len(self.workers), name, w.link)
                assert self.d.peers.get(w.key) is peer and peer.capacity == 1
            else:
                self.by_key[w.key] = w
                w.wire = self.backend.connect(w.key)
                flags = p.READY_CONCURRENT if concurrent else 0
                if kind == "job":
                    flags |= p.READY_JOB | (p.READY_IDEMPOTENT if idempotent else 0)
                w.wire.send(p.encode_ready(capacity, WINDOW, 100 + len(self.workers), name,
                                           flags, service))
                senders.append(w.wire)
        return w

    def restate(self, w: Worker, capacity: int, other: bool) -> None:
        """A DEALER sends READY again: with a new capacity, or (``other``) for another lane
        (an HTTP worker as a job worker, a job worker for another service or as an HTTP
        worker), which is dropped and counted as malformed."""
        assert self.backend is not None and w.wire is not None
        with self.step(may_call=set()) as senders:
            flags = p.READY_CONCURRENT if w.concurrent else 0
            job, service = w.kind == "job", w.service
            if not other:
                w.capacity = capacity
            elif not job:  # an HTTP worker says it is a job worker
                job, service = True, SERVICES[capacity - 1]
            elif capacity == 1:  # a job worker says it is an HTTP worker
                job, service = False, ""
            else:  # a job worker says it serves another service
                service = SERVICES[(SERVICES.index(w.service) + capacity - 1) % 3]
            if other:
                self.backend.expect_malformed()
            if job:
                flags |= p.READY_JOB | (p.READY_IDEMPOTENT if w.idempotent else 0)
            w.wire.send(p.encode_ready(capacity, WINDOW, 1, w.name, flags, service))
            senders.append(w.wire)

    @precondition(lambda self: any(not w.lost for w in self.workers))
    @rule(worker=st.integers(0, 5), how=st.sampled_from(EVENTS), capacity=st.integers(1, 3))
    def worker_event(self, worker: int, how: str, capacity: int = 1) -> None:
        """Something a worker does on its own. ``ready``: a DEALER restates READY with
        ``capacity``; ``ready_other``: READY for another lane (see ``restate``). ``bye``: it
        leaves (the dispatcher answers BYE, sends it nothing new, and forgets it once it
        holds nothing; it may still answer what it holds). It dies: its DEALER closes
        (``close``; ``fail`` for a DEALER), it is ``detach``ed (it may go on sending:
        dropped), or its link refuses the next delivery (``fail``; the settle's probe is
        one), and what it held fails over. Or it stays, and sends a HEARTBEAT (ignored;
        leaving would otherwise empty the pool too often)."""
        candidates = [w for w in self.workers if not w.lost]
        w = candidates[worker % len(candidates)]
        usable = w.known and not w.bye_sent
        if how.startswith("ready") and usable and w.wire is not None:
            self.restate(w, capacity, how == "ready_other")
        elif how == "bye" and usable:
            self.bye(w)
        elif how in ("close", "detach", "fail"):
            self.die(w, how)
        else:
            with self.step(may_call=set()) as senders:
                self.send(w, p.encode_signal(p.HEARTBEAT), senders)

    def send(self, w: Worker, record: bytes, senders: list[ScriptedPeer]) -> None:
        """``w`` sends ``record`` (a DEALER's frame, or a foreign worker's ``receive``)."""
        if w.wire is not None:
            w.wire.send(record)
            senders.append(w.wire)
        else:
            self.d.receive(w.key, [record])

    def bye(self, w: Worker) -> None:
        with self.step(may_call=set()) as senders:
            w.bye_sent = True
            self.send(w, p.encode_signal(p.BYE), senders)

    def die(self, w: Worker, how: str) -> None:
        assert self.backend is not None
        real = self.d.peers.get(w.key)
        snapshot = [] if real is None else [
            (rid, slot, slot.state if isinstance(slot, Exchange) else None)
            for rid, slot in real.slots.items()]
        concurrent = real is not None and real.concurrent
        idempotent = real is not None and real.idempotent
        with self.step():
            self.after.append(lambda: self.check_fail_over(w, snapshot, concurrent, idempotent))
            w.lost = True
            if how == "detach":
                w.zombie = True  # it believes what it believed
                self.d.detach(w.key, "the test detached it")
            elif w.link is not None:
                w.belief.clear()
                w.link.failing = True  # the settle's probe finds out
            else:
                assert w.wire is not None
                w.belief.clear()
                self.backend.lose(w.wire)

    def check_fail_over(self, w: Worker, snapshot: list[tuple[int, Any, int | None]],
                        concurrent: bool, idempotent: bool) -> str | None:
        """``_fail_over``: what started gets 502; what may have run (any slot of a worker
        that serves at once, the first of one in order) gets 502 unless the job, the
        request or the pool is idempotent; the rest goes again under a new rid (or gets
        502 past its attempts, or 503 if the queue is over its bound)."""
        problems = []
        if self.d.peers.get(w.key) is not None:
            problems.append(f"{w} died, but the dispatcher still knows it")
        for index, (rid, slot, state) in enumerate(snapshot):
            if not isinstance(slot, Exchange):
                continue
            e = self.by_ex[slot]
            new = self.new_calls(e)
            may_have_run = concurrent or index == 0
            if state == STARTED or (may_have_run and not (e.replayable or idempotent)):
                if new != [("failure", 502)]:
                    problems.append(f"{e} ({STATE_NAMES[state or 0]}, may have run: "
                                    f"{may_have_run}) lost {w}: calls {new}, not a 502")
            elif new not in ([], [("failure", 502)], [("failure", 503)]):
                problems.append(f"{e} lost {w}: calls {new}")
            elif not new and (e.ex.state not in (QUEUED, SENT) or e.ex.rid == rid):
                problems.append(f"{e} lost {w}: {STATE_NAMES[e.ex.state]} as {e.ex.rid:x} "
                                f"(was {rid:x})")
        return "; ".join(problems) or None

    @precondition(lambda self: any(w.known and w.probe_rid for w in self.workers))
    @rule(worker=st.integers(0, 5))
    def echo_probe(self, worker: int) -> None:
        """An ejected worker echoes the probe it got: back in dispatch, it takes from the
        queue of its lane."""
        candidates = [w for w in self.workers if w.known and w.probe_rid]
        w = candidates[worker % len(candidates)]
        with self.step(may_call=set()) as senders:
            record = p.encode_probe(w.probe_rid)
            w.probe_rid = 0
            self.send(w, record, senders)

    # -- rules: workers answer -------------------------------------------------------------

    @precondition(lambda self: self.senders())
    @rule(worker=st.integers(0, 5), slot=st.integers(0, 3), whole=st.booleans())
    def serve(self, worker: int, slot: int, whole: bool) -> None:
        """A good answer: END_ABORT for a cancelled rid; a final or partial JOB_REPLY for a
        job; a whole RESPONSE, or its head then END, for an HTTP request."""
        w, rid = self.pick_held(worker, slot)
        held = w.belief[rid]
        if held.cancelled:
            how = "abort"
        elif held.e.job:
            how = "job_final" if whole else "job_partial"
        elif held.e.started:
            how = "end" if whole else "chunk"
        else:
            how = "response_end" if whole else "response_head"
        self.reply(w, rid, how)

    @precondition(lambda self: self.senders())
    @rule(worker=st.integers(0, 5), whole=st.booleans())
    def serve_oldest(self, worker: int, whole: bool) -> None:
        """``serve`` for the oldest rid a worker holds (what a worker in order does)."""
        self.serve(worker=worker, slot=0, whole=whole)

    @precondition(lambda self: self.senders())
    @rule(worker=st.integers(0, 5), slot=st.integers(0, 3), how=st.sampled_from(HOWS))
    def answer(self, worker: int, slot: int, how: str) -> None:
        """Any record for a rid the worker holds, whatever its lane and state."""
        w, rid = self.pick_held(worker, slot)
        self.reply(w, rid, how)

    def pick_held(self, worker: int, slot: int) -> tuple[Worker, int]:
        candidates = self.senders()
        w = candidates[worker % len(candidates)]
        return w, list(w.belief)[slot % len(w.belief)]

    @precondition(lambda self: self.delivered and any(w.can_send for w in self.workers))
    @rule(worker=st.integers(0, 5), which=st.integers(0, 15), job=st.booleans())
    def stray(self, worker: int, which: int, job: bool) -> None:
        """A final record (END_ABORT, or a final JOB_REPLY) for a rid the worker does not
        hold: one another worker, maybe of another lane, holds or held: dropped."""
        candidates = [w for w in self.workers if w.can_send]
        w = candidates[worker % len(candidates)]
        rid = self.delivered[-1 - which % len(self.delivered)]
        if rid in w.belief:
            return
        self.reply(w, rid, "job_final" if job else "abort")

    def reply(self, w: Worker, rid: int, how: str) -> None:
        """``w`` sends one record for ``rid``; predict what it does to its exchange."""
        held = w.belief.get(rid)
        real: DispatcherPeer | None = None if w.lost else self.d.peers.get(w.key)
        slot = real.slots.get(rid) if real is not None else None
        target = self.by_ex.get(slot) if isinstance(slot, Exchange) else None
        lone = self.eject_after == 0 and how != "reject"
        with self.step(may_call={target} if target is not None and lone else
                       None if target is not None else set()) as senders:
            record = self.record(held.e if held else target, rid, how)
            if how == "job_short":
                assert self.backend is not None
                self.backend.expect_malformed()  # the frame is dropped whole
            else:
                kind, _, payload = p.split_frame(p.frame([record]))[0]
                if final_record(kind, payload):
                    w.belief.pop(rid, None)
                if real is not None and target is not None:
                    self.predict(real, rid, target, kind, payload)
                elif real is not None and isinstance(slot, Ghost) \
                        and final_record(kind, payload):
                    self.freed(real, rid)
            self.send(w, record, senders)

    def record(self, e: Ex | None, rid: int, how: str) -> bytes:
        """The record for ``how``; the payload of a reply is registered as sent for ``e``."""
        tag = self.tag(e)
        if how == "job_short":
            return p.RECORD_HEAD.pack(p.JOB_REPLY, rid, 1) + b"\x01"
        if how in ("job_bad_final", "job_bad_partial"):
            flags = p.JOB_FINAL if how == "job_bad_final" else 0
            payload = p.JOB_REPLY_HEAD.pack(flags, 3) + tag  # its frames overrun it
            record = p.RECORD_HEAD.pack(p.JOB_REPLY, rid, len(payload)) + payload
        elif how in ("job_final", "job_partial"):
            flags = p.JOB_FINAL if how == "job_final" else 0
            record = p.encode_job_reply(rid, flags, [tag, b"reply"])
        elif how in ("response_end", "response_head"):
            flags = p.RESP_END if how == "response_end" else 0
            record = p.encode_response(rid, flags, b"HTTP/1.1 200 OK\r\nX-Tag: %s\r\n\r\n" % tag,
                                       b"body" if flags else b"")
        elif how == "chunk":
            record = p.encode_data(p.CHUNK, rid, b"chunk " + tag)
        elif how == "end":
            record = p.encode_end(rid, 0, b"0\r\n\r\n")
        elif how == "abort":
            record = p.encode_end(rid, p.END_ABORT)
        elif how.startswith("error"):
            record = p.encode_error(rid, int(how[5:]), "worker error")
        elif how == "reject":
            record = p.encode_signal(p.REJECT, rid)
        else:
            raise AssertionError(how)
        if e is not None and record[0] in (p.JOB_REPLY, p.RESPONSE, p.CHUNK):
            self.sent[record[p.RECORD_HEAD.size:]] = (e, record[0])
        return record

    def predict(self, real: DispatcherPeer, rid: int, e: Ex, kind: int,
                payload: bytes) -> None:
        """What the record does to ``e``, held by ``real`` (docs/protocol.md, and the table
        ``TRANSITIONS``): its sink call, its state, the slot; 502 for a record of the
        wrong lane or state (a malformed reply: counted, and the worker told to CANCEL
        unless the record was final)."""
        state = e.ex.state
        final = final_record(kind, payload)
        wrong = (kind == p.RESPONSE and (e.job or state != SENT)
                 or kind == p.CHUNK and (e.job or state != STARTED)
                 or kind == p.JOB_REPLY and (not e.job or not decodes(payload))
                 or kind == p.REJECT and state != SENT)
        if wrong:
            assert self.backend is not None
            self.backend.expect_malformed()
            self.expect(e, [("failure", 502)])
            if final:
                self.freed(real, rid)
            return
        if kind in (p.RESPONSE, p.JOB_REPLY):
            self.expect(e, [("response", payload[0], payload)])
            if final:
                self.freed(real, rid)
            else:
                self.later(lambda: e.ex.state == STARTED, lambda: f"{e}: "
                           f"{STATE_NAMES[e.ex.state]} after a reply that was not final")
        elif kind == p.CHUNK:
            self.expect(e, [("chunk", payload)])
        elif kind == p.END:
            flags, tail = p.decode_end(payload)
            self.expect(e, [("end", flags, tail) if state == STARTED else ("failure", 502)])
            self.freed(real, rid)
        elif kind == p.ERROR:
            self.expect(e, [("failure", p.decode_error(payload)[0])])
            self.freed(real, rid)
        elif kind == p.REJECT:  # again, under a new rid; or the newest of a queue over it
            self.expect(e, [], [("failure", 503)])
            self.later(lambda: self.new_calls(e) or (e.ex.state in (QUEUED, SENT)
                                                     and e.ex.rid != rid),
                       lambda: f"{e}: {STATE_NAMES[e.ex.state]} as {e.ex.rid:x} after "
                       f"REJECT of {rid:x}")
            self.freed(real, rid)

    def freed(self, real: DispatcherPeer, rid: int) -> None:
        self.later(lambda: rid not in real.slots,
                   lambda: f"{real!r}: slot {rid:x} still taken after its final record")

    # -- rules: sinks ----------------------------------------------------------------------

    @precondition(lambda self: sum(e.live for e in self.exs) < 10)
    @rule(lane=st.integers(0, 11), replayable=st.booleans())
    def submit(self, lane: int, replayable: bool) -> None:
        """A sink submits an HTTP request (GET: replayable) or a job (JOB_IDEMPOTENT): mostly
        (``lane`` < 8) for a lane a worker serves, else for any name: a service whose
        workers left, or one nobody ever serves."""
        served = sorted({w.service for w in self.connected()})
        names = served if lane < 8 and served else NAMES
        self.submit_one(names[lane % len(names)], replayable)

    def submit_one(self, service: str, replayable: bool) -> Ex:
        d = self.d
        lane = d.lanes.get(service)
        empty = sum(1 for name, other in d.lanes.items() if name and not other.members)
        queued = len(lane.queue) if lane is not None else 0
        # requests waiting, all lanes together, for services no worker serves: at
        # queue_size, a request for another such service is refused at once
        orphans = sum(len(other.queue) for name, other in d.lanes.items()
                      if name and not other.members)
        orphan_lane = bool(service) and (lane is None or not lane.members)
        idle = lane is not None and bool(lane.idle)
        ex = Exchange(d.new_rid(), self.sink, service=service)
        e = Ex(f"x{len(self.exs)}", service, ex, replayable)
        with self.step(may_call={e}):
            self.exs.append(e)
            self.by_ex[ex] = e
            self.by_name[e.name] = e
            ex.replayable = replayable
            ex.body_complete = True
            if service:
                ex.record = p.encode_job(ex.rid, p.JOB_IDEMPOTENT if replayable else 0,
                                         service, "127.0.0.1:1", "", "MDP/0.2",
                                         [e.name.encode(), b"payload"], WINDOW)
            else:
                flags = p.REQ_BODY_COMPLETE | (p.REQ_REPLAYABLE if replayable else 0)
                ex.record = p.encode_request(
                    ex.rid, flags, b"GET" if replayable else b"POST", b"/" + e.name.encode(),
                    b"HTTP/1.1", b"127.0.0.1", 40000, b"localhost", 8000, b"http",
                    [b"Host", b"localhost"], WINDOW)
            d.submit(ex)
            created = lane is None and service in d.lanes  # before the timer may delete it
            state = ex.state
        problems: list[str] = []
        new = self.new_calls(e)
        if lane is None and not created:
            if new != [("failure", 503)] or "too many services" not in e.details[-1]:
                problems.append(f"{e}: no lane made for {service!r}, calls {new}")
            if empty < EMPTY_LANES:
                problems.append(f"{e}: refused with {empty} empty lanes of {EMPTY_LANES}")
        elif lane is None and empty >= EMPTY_LANES:
            problems.append(f"{e}: a lane for {service!r} made with {empty} empty lanes")
        full = queued >= self.queue_size or orphan_lane and orphans >= self.queue_size
        if new and (lane is not None or created) and (
                new != [("failure", 503)] or not full
                or not e.details[-1].startswith("No worker is free")):
            problems.append(f"{e}: calls {new} at submit with {queued} queued")
        if idle and not queued and state != SENT:
            problems.append(f"{e}: {STATE_NAMES[state]} with an idle worker in its lane")
        if problems:
            self.broken = True
            raise AssertionError("after this step:\n  " + "\n  ".join(problems))
        return e

    @precondition(lambda self: self.exs)
    @rule(exchange=st.integers(0, 15), live=st.booleans())
    def cancel(self, exchange: int, live: bool) -> None:
        """The sink gives up, in any state (a live one, or any): queued, it leaves the
        queue; held, its worker gets CANCEL and keeps a ghost; done, nothing."""
        candidates = [e for e in self.exs if e.live] if live else []
        candidates = candidates or self.exs
        self.cancel_one(candidates[exchange % len(candidates)])

    def cancel_one(self, e: Ex) -> None:
        with self.step(may_call=set()):
            if e.live:
                e.cancelled = True
            self.d.cancel(e.ex)
            if e.ex.state != DONE:
                self.violation(f"{e}: {STATE_NAMES[e.ex.state]} after cancel")

    # -- rules: time -----------------------------------------------------------------------

    @precondition(lambda self: any(e.live for e in self.exs)
                  or any(peer.ejected for peer in self.d.peers.values()))
    @rule(how=st.sampled_from(ADVANCES))
    def advance(self, how: str) -> None:
        """The clock moves; the test calls ``tick()`` (the dispatcher's timer would)."""
        assert self.backend is not None
        d = self.d
        clock = self.backend.clock
        ejected = [peer.ejected_until for peer in d.peers.values() if peer.ejected]
        delta = {"stall": STALL, "request": RT, "queue": QT, "heartbeat": HB,
                 "ejection": max(ejected, default=clock.now + HB) - clock.now}[how]
        with self.step():
            clock.advance(max(delta, 0.0))
            self.predict_tick(clock.now)
            d.tick()

    def predict_tick(self, now: float) -> None:
        """``tick``: what waited past its queue timeout gets 503 (naming the service if no
        worker of it is connected); what a worker holds unstarted (or, for a job, since
        its last partial reply) past its request timeout gets 504 (or, when that ejects the
        worker, fails over); a job lane with no worker and nothing queued is deleted."""
        d = self.d
        for lane in d.lanes.values():
            for ex in lane.queue:
                if ex.deadline <= now:
                    e = self.by_ex[ex]
                    self.expect(e, [("failure", 503)])
                    if lane.service and not lane.members:
                        why = f"No worker served {lane.service!r} within {QT:g} s"
                    else:
                        why = f"No worker was free within {QT:g} s"
                    self.explained(e, why)
        for peer in d.peers.values():
            for rid, slot in peer.slots.items():
                timed = isinstance(slot, Exchange) and (
                    slot.state == SENT or slot.state == STARTED and bool(slot.service))
                if timed and slot.deadline <= now:
                    e = self.by_ex[slot]
                    if not self.eject_after:
                        self.expect(e, [("failure", 504)])
                    else:  # an ejection in this tick may fail it over first
                        self.expect(e, [("failure", 504)], [("failure", 502)],
                                    [("failure", 503)], [])
                        self.answered(e, rid)
        doomed = [name for name, lane in d.lanes.items()
                  if name and not lane.members and not lane.queue]

        self.later(lambda: not any(name in self.d.lanes for name in doomed),
                   lambda: f"the empty lanes {doomed} were not all deleted")

    def explained(self, e: Ex, why: str) -> None:
        self.later(lambda: e.details[-1:] == [why], lambda: f"{e}: {e.details[-1:]}, not {why}")

    def answered(self, e: Ex, rid: int) -> None:
        """``e`` was answered in this step, or sent again (under a new rid)."""
        self.later(lambda: self.new_calls(e) or e.ex.rid != rid,
                   lambda: f"{e}: no answer after its request timeout")

    # -- teardown --------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.backend is not None:
                try:
                    if not self.broken:
                        self.drain()
                finally:
                    self.backend.close()
        finally:
            if self.patched:
                self.patch.stop()
                self.patched = False

    def drain(self) -> None:
        """Answer everything, cancel what waits, lose every worker; then every exchange has
        ended exactly once (or was cancelled) and the dispatcher holds nothing."""
        for _ in range(300):
            todo = [w for w in self.workers if w.known and w.belief]
            if not todo:
                break
            w = todo[0]
            rid, held = next(iter(w.belief.items()))
            if held.cancelled:
                how = "abort"
            elif held.e.job:
                how = "job_final"
            else:
                how = "end" if held.e.ex.state == STARTED else "response_end"
            self.reply(w, rid, how)
        for e in self.exs:
            if e.ex.state == QUEUED:
                self.cancel_one(e)
        for w in self.workers:
            if not w.lost:
                self.die(w, "detach" if w.link is not None else "close")
        d = self.d
        d.check()
        assert not d.peers and not any(lane.queue for lane in d.lanes.values())
        for e in self.exs:
            assert e.ex.state == DONE, e
            assert e.finals == 1 or (e.cancelled and not e.finals), \
                f"{e} ended {e.finals} times (cancelled: {e.cancelled}): {e.calls}"


# -- the property ----------------------------------------------------------------------------

@pytest.mark.timeout(120 + EXAMPLES * STEPS // 100)
def test_dispatcher_lanes_state_machine() -> None:
    run_machine(LanesMachine, EXAMPLES, STEPS)


# -- the main paths, as plain examples -------------------------------------------------------

@contextlib.contextmanager
def replaying(**init: Any) -> Iterator[LanesMachine]:
    state = LanesMachine()
    state.init(**init)
    try:
        yield state
    finally:
        state.teardown()


def held(w: Worker) -> list[Ex]:
    return [h.e for h in w.belief.values()]


def test_each_exchange_goes_only_to_its_lane() -> None:
    """1. an HTTP worker, job workers of ``resize`` and ``thumb`` (DEALERs), a foreign
    worker of ``ocr`` 2. one request of each lane 3. each worker got exactly the one of its
    lane 4. each answers in its lane's form: every sink gets one final call."""
    with replaying() as m:
        http = m.join("http", "")
        resize = m.join("job", "resize", capacity=2)
        thumb = m.join("job", "thumb", concurrent=True)
        ocr = m.join("foreign", "ocr")
        xs = [m.submit_one(service, False) for service in ("ocr", "thumb", "", "resize")]
        assert [held(w) for w in (ocr, thumb, http, resize)] == [[x] for x in xs]
        assert ocr.link is not None
        assert [r.kind for r in ocr.link.delivered if r.kind != p.HEARTBEAT] == [p.JOB]
        for w, how in ((ocr, "job_final"), (thumb, "job_final"), (http, "response_end"),
                       (resize, "job_final")):
            m.reply(w, next(iter(w.belief)), how)
        assert [x.finals for x in xs] == [1, 1, 1, 1]
        assert [x.calls[0][0] for x in xs] == ["response"] * 4


def test_unknown_service_waits_then_503_names_it_and_its_lane_goes() -> None:
    """1. a job for a service nobody serves waits in a new lane; ``serves`` says no
    2. at its queue timeout it gets 503 "No worker served 'nobody' within 1500 s" 3. the next
    tick deletes the empty lane."""
    with replaying() as m:
        x = m.submit_one("nobody", False)
        assert x.ex.state == QUEUED and "nobody" in m.d.lanes and not m.d.serves("nobody")
        m.advance("queue")
        assert x.calls == [("failure", 503)]
        assert x.details == ["No worker served 'nobody' within 1500 s"]
        m.advance("heartbeat")
        assert "nobody" not in m.d.lanes


def test_workers_that_come_later_take_the_jobs_of_their_service() -> None:
    """1. two ``thumb`` jobs and an HTTP request wait, no worker 2. a foreign ``thumb``
    worker attaches: it takes the first job 3. a ``thumb`` DEALER connects: it takes the
    second; the HTTP request still waits 4. an HTTP worker takes it."""
    with replaying() as m:
        first, second = m.submit_one("thumb", False), m.submit_one("thumb", True)
        request = m.submit_one("", True)
        foreign = m.join("foreign", "thumb")
        assert held(foreign) == [first] and second.ex.state == QUEUED
        dealer = m.join("job", "thumb", capacity=3)
        assert held(dealer) == [second] and request.ex.state == QUEUED
        assert held(m.join("http", "")) == [request]


def test_a_flood_of_one_service_does_not_take_the_queue_of_another() -> None:
    """1. queue_size 2; a ``resize`` worker of capacity 1 is busy 2. two more ``resize`` jobs
    fill its lane's queue, a third gets 503 at once 3. two ``thumb`` jobs and two HTTP
    requests still wait in their own lanes."""
    with replaying(queue_size=2) as m:
        m.join("job", "resize")
        resize = [m.submit_one("resize", False) for _ in range(4)]
        assert [x.ex.state for x in resize] == [SENT, QUEUED, QUEUED, DONE]
        assert resize[3].calls == [("failure", 503)]
        others = [m.submit_one(service, False) for service in ("thumb", "thumb", "", "")]
        assert [x.ex.state for x in others] == [QUEUED] * 4


@pytest.mark.parametrize("idempotent", [False, True], ids=["plain-pool", "idempotent-pool"])
def test_a_job_whose_worker_dies_goes_again_only_from_an_idempotent_pool(
        idempotent: bool) -> None:
    """1. a ``resize`` pool (``READY_IDEMPOTENT`` or not) holds a job that is not idempotent
    2. its worker dies 3. from an idempotent pool the job goes to the next worker under a new
    rid; from a plain one it may have run: 502."""
    with replaying() as m:
        w = m.join("job", "resize", idempotent=idempotent)
        x = m.submit_one("resize", False)
        old = x.ex.rid
        m.die(w, "close")
        if idempotent:
            assert x.calls == [] and x.ex.state == QUEUED and x.ex.rid != old
            assert held(m.join("foreign", "resize")) == [x]
        else:
            assert x.calls == [("failure", 502)]


def test_a_partial_reply_then_a_death_is_502_even_in_an_idempotent_pool() -> None:
    """1. an idempotent ``ocr`` pool holds an idempotent job 2. it sends a partial JOB_REPLY:
    the sink has it, the job is STARTED 3. the worker dies: the reply cannot be taken back,
    so 502, however idempotent the job."""
    with replaying() as m:
        w = m.join("job", "ocr", idempotent=True)
        x = m.submit_one("ocr", True)
        m.reply(w, x.ex.rid, "job_partial")
        assert x.ex.state == STARTED and x.calls[0][:2] == ("response", 0)
        m.die(w, "close")
        assert x.calls[1:] == [("failure", 502)]


def test_a_failing_link_drops_its_worker_and_its_job_goes_on() -> None:
    """1. a foreign ``thumb`` worker holds an idempotent job; a DEALER of ``thumb`` is busy
    2. the link refuses the next delivery (the settle's probe): the worker is dropped
    3. the job waits under a new rid; the DEALER takes it once it is free."""
    with replaying() as m:
        foreign = m.join("foreign", "thumb")
        x = m.submit_one("thumb", True)
        dealer = m.join("job", "thumb")
        busy = m.submit_one("thumb", False)
        assert held(foreign) == [x] and held(dealer) == [busy]
        m.die(foreign, "fail")
        assert foreign.link is not None and foreign.link.refused
        assert x.ex.state == QUEUED and x.calls == [] and m.d.serves("thumb")
        m.reply(dealer, busy.ex.rid, "job_final")
        assert held(dealer) == [x]


@pytest.mark.parametrize(("service", "how"), [("resize", "response_end"),
                                              ("resize", "response_head"),
                                              ("", "job_final"), ("", "job_partial")])
def test_a_record_of_the_other_lane_is_502(service: str, how: str) -> None:
    """1. a job worker holds a job (an HTTP worker a request) 2. it answers with the other
    lane's record (RESPONSE to a job, JOB_REPLY to an HTTP request) 3. 502, counted as
    malformed; a final record frees the slot, any other leaves a ghost and a CANCEL."""
    with replaying() as m:
        w = m.join("job" if service else "http", service)
        x = m.submit_one(service, False)
        rid = x.ex.rid
        m.reply(w, rid, how)
        assert x.calls == [("failure", 502)]
        slots = m.d.peers[w.key].slots
        if how.endswith(("end", "final")):
            assert not slots
        else:
            assert isinstance(slots[rid], Ghost) and w.belief[rid].cancelled


def test_a_detached_worker_is_heard_no_more() -> None:
    """1. a ``resize`` DEALER holds a job 2. it is detached (the front dropped it): the job
    may have run, 502 3. its late final JOB_REPLY for that job is dropped: no second call."""
    with replaying() as m:
        w = m.join("job", "resize")
        x = m.submit_one("resize", False)
        rid = x.ex.rid
        m.die(w, "detach")
        assert x.calls == [("failure", 502)] and w.zombie
        m.reply(w, rid, "job_final")
        assert x.finals == 1 and len(x.calls) == 1


# -- bugs found here, fixed: regression tests -------------------------------------------

def test_regression_one_empty_lane_too_many() -> None:
    """``MAX_EMPTY_LANES`` bounds the lanes of job services no worker serves. With HTTP
    workers connected, ``_new_lane`` counted ``sum(not lane.members ...) > MAX_EMPTY_LANES``
    over every lane: the HTTP lane has members, so MAX_EMPTY_LANES empty job lanes gave a
    sum of MAX_EMPTY_LANES, not over it, and one lane more was made. (Without HTTP workers
    the HTTP lane counted as empty and the bound held: the limit moved with the HTTP pool.)
    Now only job lanes count, against ``>=``. 1. an HTTP worker connects 2. jobs for
    MAX_EMPTY_LANES (2) services nobody serves wait 3. a job for one more such service gets
    503 at once."""
    with replaying() as m:
        m.join("http", "")
        for service in UNKNOWN[:EMPTY_LANES]:
            m.submit_one(service, False)
        x = m.submit_one(UNKNOWN[EMPTY_LANES], False)
        assert x.calls == [("failure", 503)], f"{UNKNOWN[EMPTY_LANES]!r} got a lane"


@pytest.mark.parametrize("started", [True, False], ids=["started", "sent"])
def test_regression_chunk_for_a_job(started: bool) -> None:
    """A job worker sends a CHUNK, an HTTP body piece, which no job has (after a partial
    JOB_REPLY, so the job is STARTED, or before any reply). ``_on_exchange_record`` refused
    a RESPONSE for a job (``ex.service``) but checked a CHUNK only against ``state !=
    STARTED``, so after a partial reply the CHUNK reached the job's sink as ``on_chunk``, a
    call of the HTTP lane on a job, and the worker was never counted as failing (the
    front's job sink cancelled the job, but a worker that always did it was never ejected).
    Now a CHUNK for a job is a malformed reply: 502, the worker is told to CANCEL (a ghost
    keeps the slot), and a failure counts toward its ejection."""
    with replaying() as m:
        w = m.join("job", "resize")
        x = m.submit_one("resize", False)
        rid = x.ex.rid
        if started:
            m.reply(w, rid, "job_partial")
        m.reply(w, rid, "chunk")
        assert x.calls[-1] == ("failure", 502) and x.finals == 1
        real = m.d.peers[w.key]
        assert real.failures == 1 and isinstance(real.slots[rid], Ghost)
        assert w.belief[rid].cancelled


def test_regression_attach_under_a_key_a_backend_worker_has() -> None:
    """(Found by reading; fixed: ``JobEndpoint`` now names MDP workers ``b"\\0mdp" + ident``,
    which no backend routing id can be, and ``attach`` drops a peer already under its key.)
    It used to attach an MDP worker under ``b"mdp\\0" + ident``, and a backend DEALER may
    set ``ROUTING_ID`` to that. ``attach``
    then overwrote ``peers[key]``: the DEALER's ``Peer`` is no longer in ``peers`` but
    still idle in its lane, its ``members`` count stays, and ``check()`` fails. 1. a DEALER
    with routing id ``b"mdp\\0w"`` connects as a ``resize`` worker 2. a foreign worker is
    attached under that key 3. two jobs: both must reach a worker the dispatcher knows, and
    ``check()`` must hold; the orphan gets one, whose request timeout ``tick`` never sees
    (it walks ``peers``), so its sink would wait forever."""
    with replaying() as m:
        assert m.backend is not None
        key = b"mdp\0w"
        m.broken = True  # the model does not know these workers
        m.by_key[key] = Worker("dealer", "job", "resize", 1, False, False, key)
        wire = m.backend.connect(key)
        wire.send(p.encode_ready(1, WINDOW, 1, "dealer", p.READY_JOB, "resize"))
        m.backend.settle([wire])
        link = Link(m, Worker("f", "foreign", "resize", 1, False, False, key))
        m.d.attach(key, "resize", 2, "foreign", link)
        for _ in range(2):
            ex = Exchange(m.d.new_rid(), m.sink, service="resize")
            ex.record = p.encode_job(ex.rid, 0, "resize", "", "", "MDP/0.2", [b"x"], WINDOW)
            m.d.submit(ex)
            assert ex.worker is None or m.d.peers.get(ex.worker.ident) is ex.worker, \
                f"a job went to {ex.worker!r}, which the dispatcher no longer knows"
        m.d.check()
