"""The dispatcher's receive turn under a flood of waste (``_WASTE_PER_TURN``): a real
``Dispatcher`` on loopback ZeroMQ (``support.peers.Backend``) and raw DEALER peers.

Without yielding to gevent's hub the dispatcher's own watchers do not run, so the test calls
its receive turn (``_on_readable``) itself and counts what each turn took."""

from __future__ import annotations

import time

import zmq

from support.peers import Backend
from wsgi_zmq import protocol as p
from wsgi_zmq.front import dispatcher as dispatcher_module


def _turns(backend: Backend, expected: int, deadline: float = 10.0) -> list[int]:
    """Call the receive turn until the dispatcher counted ``expected`` more malformed
    messages; return how many each turn took. A turn may find fewer than are on their way
    (the I/O thread has not queued them yet): it is only called once one waits."""
    d = backend.dispatcher
    start = d.malformed.total
    taken = []
    until = time.monotonic() + deadline
    while d.malformed.total < start + expected:
        assert time.monotonic() < until, f"counted {d.malformed.total - start} of {expected}"
        if not d.sock.poll(10, zmq.POLLIN):
            continue  # the loopback I/O thread is still queueing them
        before = d.malformed.total
        d._on_readable()
        taken.append(d.malformed.total - before)
    return taken


def test_a_flood_of_waste_costs_each_turn_at_most_its_budget() -> None:
    """1. a known worker and an unknown peer 2. the peer sends 200 empty frames, the worker
    100 malformed ones 3. no turn takes more than ``_WASTE_PER_TURN`` of them, and every one
    is counted 4. the worker is still connected, and the dispatcher's state checks."""
    budget = dispatcher_module._WASTE_PER_TURN
    backend = Backend(queue_size=4)
    try:
        worker = backend.connect(b"w0")
        worker.send(p.encode_ready(1, 8, 4242, "w0"))
        backend.settle([worker])
        rogue = backend.connect(b"rogue")
        for _ in range(200):
            rogue.send_raw(b"")
        for _ in range(100):
            worker.send_raw(b"\x63bad version")
        taken = _turns(backend, 300)
        assert max(taken) <= budget, taken
        assert sum(taken) == 300
        assert len(taken) >= 300 // budget
        backend.expect_malformed(300)
        backend.settle([worker])
        assert b"w0" in backend.dispatcher.peers
        backend.dispatcher.check()
    finally:
        backend.close()
