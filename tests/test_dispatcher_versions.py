"""The versions of one HTTP pool in the dispatcher (``route``, weights, standby, drain,
promote, ``_rebalance``), driven by Hypothesis over a real ``Dispatcher`` on loopback ZeroMQ
(``support.peers.Backend``, a manual clock) against scripted DEALER workers.

Workers of versions a, b and c of the pool ``default`` connect (with a weight, some in
standby), answer what they hold, say BYE or die; requests are routed by ``route`` (some
asking for a version) and submitted, or cancelled; operators drain and resume a version,
promote one, change a weight; the clock passes the queue timeout. After EVERY step:

- ``dispatcher.check()`` (with each lane's count of workers that take work);
- lanes never cross: a worker gets only requests whose lane is its version's;
- no request waits in a lane without a worker that takes work while its pool has a version
  out of standby, with a weight, that has one (``_rebalance`` moved it);
- a request that asked for a version that took work went to that version's lane;
- every exchange has at most one final sink call, none after its cancel.

At the end every worker answers what it holds, the clock passes every timeout, and every
submitted exchange must have ended exactly once (or been cancelled).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

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
from wsgi_zmq.front.dispatcher import DONE, Exchange, http_key

VERSIONS = ("a", "b", "c")
POOL = "default"
QT = 30.0
RT = 600.0
EXAMPLES = int(os.environ.get("WSGI_ZMQ_VERSIONS_EXAMPLES", "100"))
STEPS = int(os.environ.get("WSGI_ZMQ_VERSIONS_STEPS", "40"))


@dataclass
class Worker:
    name: str
    version: str
    wire: ScriptedPeer
    held: list[int] = field(default_factory=list)  # rids it got and has not answered
    lost: bool = False
    bye: bool = False


@dataclass
class Ex:
    name: str
    ex: Exchange
    asked: str | None
    finals: int = 0
    cancelled: bool = False
    calls_after_cancel: int = 0


class Sink:
    def __init__(self, machine: VersionsMachine) -> None:
        self.machine = machine

    def final(self, ex: Exchange) -> None:
        e = self.machine.by_ex[ex]
        e.finals += 1
        if e.cancelled:
            e.calls_after_cancel += 1

    def on_response(self, ex: Exchange, flags: int, payload: bytes) -> None:
        if flags & p.RESP_END:
            self.final(ex)

    def on_chunk(self, ex: Exchange, data: bytes) -> None:
        pass

    def on_end(self, ex: Exchange, flags: int, tail: bytes) -> None:
        self.final(ex)

    def on_failure(self, ex: Exchange, error: HTTPError) -> None:
        self.final(ex)

    def on_body_credit(self, ex: Exchange, count: int) -> None:
        pass


class VersionsMachine(Driving, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.backend: Backend | None = None
        self.workers: list[Worker] = []
        self.by_ident: dict[bytes, Worker] = {}
        self.exs: list[Ex] = []
        self.by_ex: dict[Exchange, Ex] = {}
        self.by_rid: dict[int, Ex] = {}
        self.sink = Sink(self)
        self.problems: list[str] = []

    def on_records(self, wire: ScriptedPeer, records: list[p.Record]) -> None:
        w = self.by_ident[wire.ident]
        for record in records:
            if record.kind == p.REQUEST:
                e = self.by_rid.get(record.rid)
                if e is None:
                    # sent again under a new rid: find it by its path
                    path = p.decode_request(record.payload).target
                    e = next(x for x in self.exs if x.name == path.lstrip("/"))
                    self.by_rid[record.rid] = e
                if e.ex.service != http_key(POOL, w.version):
                    self.problems.append(f"{e.name} of lane {e.ex.service!r} went to "
                                         f"{w.name} of version {w.version}")
                w.held.append(record.rid)

    def settle(self, senders: list[ScriptedPeer] = ()) -> None:  # type: ignore[assignment]
        assert self.backend is not None
        self.backend.settle(senders)
        self.check()

    def check(self) -> None:
        d = self.d
        d.check()
        versions = d.versions.get(POOL, {})
        takers = [v for v in versions.values() if not v.standby and v.weight and
                  d.lanes.get(v.key) is not None and d.lanes[v.key].serving]
        for lane in d.lanes.values():
            if lane.job or not lane.queue or lane.serving:
                continue
            if takers:
                self.problems.append(f"{len(lane.queue)} wait in {lane!r} while "
                                     f"{takers} take work")
        for e in self.exs:
            if e.finals > 1 or e.calls_after_cancel:
                self.problems.append(f"{e.name}: {e.finals} finals, "
                                     f"{e.calls_after_cancel} after its cancel")
        assert not self.problems, "\n".join(self.problems)

    # -- rules ---------------------------------------------------------------------------

    @initialize()
    def init(self) -> None:
        self.backend = Backend(self.on_records, queue_size=4, request_timeout=RT,
                               queue_timeout=QT, heartbeat=5.0, eject_after=0)

    def live(self) -> list[Worker]:
        return [w for w in self.workers if not w.lost and not w.bye]

    @precondition(lambda self: len(self.live()) < 5)
    @rule(version=st.sampled_from(VERSIONS), standby=st.booleans(),
          weight=st.sampled_from([0, 1, 3, 100]), capacity=st.integers(1, 2))
    def connect(self, version: str, standby: bool, weight: int, capacity: int) -> None:
        assert self.backend is not None
        name = f"w{len(self.workers)}"
        wire = self.backend.connect(name.encode())
        w = Worker(name, version, wire)
        self.workers.append(w)
        self.by_ident[wire.ident] = w
        flags = p.READY_STANDBY if standby else 0
        wire.send(p.encode_ready(capacity, 8, 100 + len(self.workers), name, flags, "", POOL,
                                 version, 1, weight))
        self.settle([wire])

    @precondition(lambda self: sum(e.ex.state != DONE for e in self.exs) < 8)
    @rule(asked=st.sampled_from([None, *VERSIONS]))
    def submit(self, asked: str | None) -> None:
        d = self.d
        ex = Exchange(d.new_rid(), self.sink)
        e = Ex(f"x{len(self.exs)}", ex, asked)
        self.exs.append(e)
        self.by_ex[ex] = e
        self.by_rid[ex.rid] = e
        ex.body_complete = True
        ex.replayable = True
        ex.record = p.encode_request(ex.rid, p.REQ_BODY_COMPLETE | p.REQ_REPLAYABLE, b"GET",
                                     f"/{e.name}".encode(), b"HTTP/1.1", b"127.0.0.1", 1,
                                     b"h", 80, b"http", [], 8)
        wanted = d.lanes.get(http_key(POOL, asked)) if asked else None
        ex.service, _ = d.route(POOL, asked)
        if wanted is not None and wanted.serving:
            assert ex.service == wanted.service, f"asked {asked}, routed to {ex.service!r}"
        d.submit(ex)
        self.settle()

    @precondition(lambda self: any(w.held and not w.lost for w in self.workers))
    @rule(which=st.integers(0, 9))
    def serve(self, which: int) -> None:
        holding = [w for w in self.workers if w.held and not w.lost]
        w = holding[which % len(holding)]
        rid = w.held.pop(0)
        w.wire.send(p.encode_response(rid, p.RESP_END, b"HTTP/1.1 200 OK\r\n\r\n"))
        self.settle([w.wire])

    @precondition(lambda self: self.live())
    @rule(which=st.integers(0, 9), how=st.sampled_from(["bye", "lose"]))
    def leave(self, which: int, how: str) -> None:
        assert self.backend is not None
        live = self.live()
        w = live[which % len(live)]
        if how == "bye":
            w.bye = True
            w.wire.send(p.encode_signal(p.BYE))
            self.settle([w.wire])
        else:
            w.lost = True
            self.backend.lose(w.wire)
            self.settle()

    @precondition(lambda self: self.d.versions.get(POOL))
    @rule(version=st.sampled_from(VERSIONS), drain=st.booleans())
    def drain(self, version: str, drain: bool) -> None:
        d = self.d
        if drain:
            d.drain(f"{POOL}/{version}")
        elif f"{POOL}/{version}" in d.drained_pools or any(
                peer.drained for peer in d.select(f"{POOL}/{version}")):
            d.resume(f"{POOL}/{version}")
        self.settle()

    @precondition(lambda self: self.d.versions.get(POOL))
    @rule(version=st.sampled_from(VERSIONS), weight=st.sampled_from([None, 0, 1, 50]))
    def operate(self, version: str, weight: int | None) -> None:
        d = self.d
        if version not in d.versions[POOL]:
            with pytest.raises(ValueError):
                d.promote(POOL, version)
            return
        if weight is None:
            d.promote(POOL, version)
            assert not d.versions[POOL][version].standby
        else:
            d.set_weight(POOL, version, weight)
        self.settle()

    @precondition(lambda self: any(e.ex.state != DONE and not e.cancelled for e in self.exs))
    @rule(which=st.integers(0, 9))
    def cancel(self, which: int) -> None:
        live = [e for e in self.exs if e.ex.state != DONE and not e.cancelled]
        e = live[which % len(live)]
        e.cancelled = True
        self.d.cancel(e.ex)
        self.settle()

    @rule()
    def queue_timeout(self) -> None:
        assert self.backend is not None
        self.backend.clock.advance(QT + 1)
        self.d.tick()
        self.settle()

    def teardown(self) -> None:
        if self.backend is None:
            return
        try:
            for _ in range(20):
                holding = [w for w in self.workers if w.held and not w.lost]
                if not holding:
                    break
                for w in holding:
                    while w.held:
                        rid = w.held.pop(0)
                        w.wire.send(p.encode_response(rid, p.RESP_END,
                                                      b"HTTP/1.1 200 OK\r\n\r\n"))
                self.settle([w.wire for w in holding])
            self.backend.clock.advance(QT + RT + 1)
            self.d.tick()
            self.settle()
            for e in self.exs:
                assert e.ex.state == DONE, f"{e.name} never ended ({e.ex!r})"
                assert e.finals == 1 or (e.cancelled and e.finals == 0), \
                    f"{e.name} ended {e.finals} times (cancelled: {e.cancelled})"
        finally:
            self.backend.close()


@pytest.mark.timeout(300)
def test_dispatcher_versions_state_machine() -> None:
    run_machine(VersionsMachine, EXAMPLES, STEPS)


# -- regressions: failures the machine found, shrunk, replayed as plain steps ----------------

def test_regression_rebalance_keeps_the_queue_bound() -> None:
    """Version a (two workers, capacity 1) holds a full queue (queue_size 4); a request
    that asked for c went to c's one worker, and that worker is lost. The request goes
    back to c's queue, and ``_rebalance`` moves it to a, where ``route`` sends it now.
    It used not to look at ``queue_size``: a's queue held 5 and ``Dispatcher.check()``
    failed (found in CI). Now what passes the bound gets 503: the moved request, which
    joined the end of a's queue."""
    state = VersionsMachine()
    state.init()
    try:
        state.connect(capacity=1, standby=False, version="a", weight=0)
        for _ in range(5):
            state.submit(asked=None)
        state.connect(capacity=1, standby=False, version="a", weight=0)
        state.submit(asked=None)
        state.leave(how="bye", which=0)
        state.connect(capacity=1, standby=False, version="c", weight=0)
        state.submit(asked="c")
        moved = state.exs[-1]
        state.leave(how="lose", which=1)
        assert moved.ex.state == DONE and moved.finals == 1
        assert len(state.d.lanes[http_key(POOL, "a")].queue) == 4
        state.teardown()
    finally:
        if state.backend is not None:
            state.backend.close()
