"""The reload of a handler pool (HUP) as a state machine: ``Arbiter.standing`` (CURRENT,
NEW, RETIRING, STOPPING) and ``Arbiter.check``, driven by Hypothesis.

The arbiter here is the real ``Arbiter`` with its bookkeeping intact (``handle_hup``,
``check_retiring``, ``manage_workers``, ``child_exited``, ``abort_reload``,
``set_num_workers``); only its two edges to the operating system are replaced, so that
thousands of interleavings run in seconds: ``spawn_worker`` files a child under a made-up
pid instead of forking (with a real liveness file, which a rule marks connected), and
``kill`` records the signal instead of sending it. The live tests (``test_operations``,
``test_settings``, ``test_ctl_pool``) run the same code with real processes and
``WSGI_ZMQ_CHECK=1``, so the real master calls ``check()`` every turn there.

After every step: ``check()``, and

- the old workers of a reload are told to stop only once every new one is connected, or
  the reload's deadline passed;
- after a turn of the loop as many workers serve (CURRENT and NEW) as ``num_workers``;
- no worker is sent TERM twice, and a worker that was never told to stop is never TERMed
  but by a reload's end, a TTOU or an abort.
"""

from __future__ import annotations

import os
import signal
import time

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
from wsgi_zmq.arbiter import (
    CURRENT,
    EXIT_WORKER_BOOT,
    NEW,
    RETIRING,
    STOPPING,
    Arbiter,
    Child,
    HaltServer,
    WorkerTmp,
)
from wsgi_zmq.config import Config

EXAMPLES = int(os.environ.get("WSGI_ZMQ_RELOAD_EXAMPLES", "150"))
STEPS = int(os.environ.get("WSGI_ZMQ_RELOAD_STEPS", "40"))


class Pool(Arbiter):
    """The real arbiter without fork and kill (see the module docstring)."""

    def __init__(self, workers: int) -> None:
        cfg = Config("handler")
        cfg.set("workers", workers)
        super().__init__(cfg, "apps.echo:router", ["tcp://127.0.0.1:1"])
        self.next_pid = 4_000_000  # above any pid_max: never a real process
        self.sent: list[tuple[int, int]] = []

    def spawn_worker(self, reload: int = 0) -> None:
        self.worker_age += 1
        self.next_pid += 1
        self.children[self.next_pid] = Child(self.next_pid, "worker", self.worker_age,
                                             None, WorkerTmp(self.cfg), reload)

    def kill(self, pid: int, sig: int) -> None:
        self.sent.append((pid, sig))

    def close(self) -> None:
        for child in self.children.values():
            if child.tmp is not None:
                child.tmp.close()


class ReloadMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool: Pool | None = None
        self.halted = False
        self.stop_reasons: dict[int, str] = {}  # pid -> why the master may TERM it

    @property
    def p(self) -> Pool:
        assert self.pool is not None
        return self.pool

    @initialize(workers=st.integers(1, 3))
    def start(self, workers: int) -> None:
        self.pool = Pool(workers)
        self.p.manage_workers()

    def teardown(self) -> None:
        if self.pool is not None:
            self.pool.close()

    # -- helpers ------------------------------------------------------------------------

    def live(self) -> list[Child]:
        return sorted(self.p.children.values(), key=lambda c: c.pid)

    def pick(self, which: int, children: list[Child]) -> Child | None:
        return children[which % len(children)] if children else None

    def turn(self, late: bool = False) -> None:
        """What one turn of the master's loop does with the reload (no I/O)."""
        p = self.p
        if late:
            p.retire_deadline = time.monotonic() - 1
        retiring = list(p.retiring)
        new = [c for c in p.workers() if p.standing(c) == NEW]
        all_ready = bool(new) and all(c.tmp is not None and c.tmp.is_ready() for c in new)
        for child in retiring:
            self.stop_reasons.setdefault(child.pid, "the reload's end")
        before = len(p.sent)
        p.check_retiring()
        terms = {pid for pid, sig in p.sent[before:] if sig == signal.SIGTERM}
        if retiring and (all_ready or late):
            assert not p.retiring, "the reload did not end"
            assert terms == {c.pid for c in retiring if p.children.get(c.pid) is c}
        else:
            assert not terms, f"{terms} were told to stop while the new workers boot"
            assert p.retiring == retiring
        for child in p.workers():
            if p.standing(child) != RETIRING:
                self.stop_reasons.pop(child.pid, None)
        before = len(p.sent)
        p.manage_workers()
        for pid, sig in p.sent[before:]:
            if sig == signal.SIGTERM:
                self.stop_reasons.setdefault(pid, "too many workers")

    # -- rules --------------------------------------------------------------------------

    @precondition(lambda self: self.halted)
    @rule(workers=st.integers(1, 3))
    def operator_starts_it_again(self, workers: int) -> None:
        """The pool stopped (a worker that is not new could not boot: HaltServer)."""
        self.p.close()
        self.pool = Pool(workers)
        self.p.manage_workers()
        self.halted = False
        self.stop_reasons.clear()

    @precondition(lambda self: not self.halted)
    @rule()
    def hup(self) -> None:
        self.p.handle_hup()

    @precondition(lambda self: not self.halted)
    @rule(which=st.integers(0, 20))
    def connected(self, which: int) -> None:
        """A worker is connected to every front (its liveness file says so)."""
        child = self.pick(which, [c for c in self.live() if c.tmp is not None])
        if child is not None and child.tmp is not None:
            child.tmp.set_ready()

    @precondition(lambda self: not self.halted)
    @rule(late=st.booleans())
    def loop_turn(self, late: bool) -> None:
        self.turn(late)

    @precondition(lambda self: not self.halted)
    @rule(which=st.integers(0, 20),
          code=st.sampled_from([0, 1, -signal.SIGKILL, -signal.SIGTERM, EXIT_WORKER_BOOT]))
    def exits(self, which: int, code: int) -> None:
        """A child exits, by itself or as it was told; the loop then turns."""
        child = self.pick(which, self.live())
        if child is None:
            return
        p = self.p
        booting = child.reload == p.reloads and bool(p.retiring)
        if code == EXIT_WORKER_BOOT and not child.stopping and not booting:
            with pytest.raises(HaltServer):
                p.child_exited(child.pid, code)
            self.halted = True
            return
        before = len(p.sent)
        p.child_exited(child.pid, code)
        if code == EXIT_WORKER_BOOT and not child.stopping:
            # a new worker could not boot: the reload is abandoned, the old ones serve on
            assert not p.retiring
            for pid, sig in p.sent[before:]:
                assert sig == signal.SIGTERM
                self.stop_reasons.setdefault(pid, "an aborted reload")
        self.turn()

    @precondition(lambda self: not self.halted)
    @rule(more=st.booleans())
    def ttin_ttou(self, more: bool) -> None:
        p = self.p
        before = len(p.sent)
        if more:
            p.handle_ttin()
        else:
            p.handle_ttou()
        for pid, sig in p.sent[before:]:
            if sig == signal.SIGTERM:
                self.stop_reasons.setdefault(pid, "a TTOU")

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        if self.pool is None or self.halted:
            return
        p = self.p
        p.check()
        terms = [pid for pid, sig in p.sent if sig == signal.SIGTERM]
        assert len(terms) == len(set(terms)), f"a worker was sent TERM twice: {terms}"
        for pid in terms:
            assert pid in self.stop_reasons, f"worker {pid} was told to stop for no reason"
        for child in p.children.values():
            standing = p.standing(child)
            assert standing in (CURRENT, NEW, RETIRING, STOPPING)
            if child.pid in terms:
                assert standing == STOPPING, f"worker {child.pid} got TERM but is {standing}"


@pytest.mark.timeout(300)
def test_reload_state_machine() -> None:
    run_machine(ReloadMachine, EXAMPLES, STEPS)


def test_a_reused_pid_is_not_retired() -> None:
    """A retiring worker dies and the kernel gives its pid to a new worker before the
    reload ends: the end of the reload TERMs the old child objects only, never the new
    worker under the reused pid (``check_retiring`` compares the child, not the pid)."""
    pool = Pool(1)
    try:
        pool.manage_workers()
        [old] = pool.workers()
        pool.handle_hup()
        pool.child_exited(old.pid, -signal.SIGKILL)
        pool.children[old.pid] = Child(old.pid, "worker", 99, None, WorkerTmp(pool.cfg),
                                       pool.reloads)
        for child in pool.workers():
            assert child.tmp is not None
            child.tmp.set_ready()
        pool.check_retiring()
        assert (old.pid, signal.SIGTERM) not in pool.sent
        assert not pool.retiring
    finally:
        pool.close()


def test_check_finds_a_broken_reload() -> None:
    """``check`` refuses NEW workers without a reload, a retiring worker of the current
    reload, and more serving workers than wanted."""
    pool = Pool(1)
    try:
        pool.manage_workers()
        pool.check()
        [child] = pool.workers()
        child.reload = pool.reloads = 1
        pool.retiring = [child]
        with pytest.raises(AssertionError, match="current reload"):
            pool.check()
        pool.retiring = []
        pool.spawn_worker()
        with pytest.raises(AssertionError, match="2 workers serve, 1 wanted"):
            pool.check()
    finally:
        pool.close()
