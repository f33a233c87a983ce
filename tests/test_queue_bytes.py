"""``max_queue_bytes``: the bytes the waiting requests and jobs hold, all lanes together, are
bounded, over a real ``Dispatcher`` on loopback ZeroMQ (``support.peers.Backend``) with a
scripted job worker. A job that would pass the bound is answered 503 at once; what waits
is served once the worker answers; the count is derived again by ``check()`` after every
step."""

from __future__ import annotations

from typing import Any

from support.peers import Backend
from wsgi_zmq import protocol as p
from wsgi_zmq.front.dispatcher import DONE, QUEUED, SENT, Exchange

FRAME = 10_000


class Sink:
    def __init__(self) -> None:
        self.calls: dict[Exchange, list[Any]] = {}

    def on_job_reply(self, ex: Exchange, flags: int, frames: list[bytes]) -> None:
        self.calls.setdefault(ex, []).append(("reply", flags))

    def on_response(self, ex: Exchange, flags: int, payload: bytes) -> None:
        self.calls.setdefault(ex, []).append(("response", flags))

    def on_chunk(self, ex: Exchange, data: bytes) -> None:
        pass

    def on_end(self, ex: Exchange, flags: int, tail: bytes) -> None:
        self.calls.setdefault(ex, []).append(("end", flags))

    def on_failure(self, ex: Exchange, error: Any) -> None:
        self.calls.setdefault(ex, []).append(("failure", error.status, error.detail))

    def on_body_credit(self, ex: Exchange, count: int) -> None:
        pass


def job(backend: Backend, sink: Sink) -> Exchange:
    d = backend.dispatcher
    ex = Exchange(d.new_rid(), sink, service="resize")
    ex.record = p.encode_job(ex.rid, 0, "resize", "127.0.0.1:1", "", "MDP/0.2",
                             [b"x" * FRAME], 8)
    d.submit(ex)
    return ex


def test_jobs_past_max_queue_bytes_are_refused_and_the_rest_served() -> None:
    """1. a worker of capacity 1 holds one job 2. jobs wait until the next would pass
    max_queue_bytes (two fit): the third is refused with 503 at once 3. the worker answers
    each in turn: every waiting job is served, and the front takes jobs again."""
    records: list[p.Record] = []
    backend = Backend(lambda peer, got: records.extend(got), queue_size=100,
                      max_queue_bytes=2 * (FRAME + 200), queue_timeout=600.0,
                      request_timeout=600.0, heartbeat=5.0)
    try:
        d = backend.dispatcher
        sink = Sink()
        worker = backend.connect(b"w0")
        worker.send(p.encode_ready(1, 8, 1, "w0", p.READY_JOB, "resize"))
        backend.settle([worker])
        held = job(backend, sink)
        waiting = [job(backend, sink), job(backend, sink)]
        refused = job(backend, sink)
        backend.settle()
        d.check()
        assert held.state == SENT and [x.state for x in waiting] == [QUEUED, QUEUED]
        assert refused.state == DONE
        [failure] = sink.calls[refused]
        assert failure[:2] == ("failure", 503) and "max_queue_bytes" in failure[2]
        assert d.queued_bytes == sum(len(x.record) for x in waiting)
        for ex in [held, *waiting]:
            rids = [r.rid for r in records if r.kind == p.JOB]
            assert ex.rid in rids
            worker.send(p.encode_job_reply(ex.rid, p.JOB_FINAL, [b"done"]))
            backend.settle([worker])
            d.check()
            assert sink.calls[ex] == [("reply", p.JOB_FINAL)]
        assert d.queued_bytes == 0
        again = job(backend, sink)
        backend.settle()
        assert again.state == SENT  # served at once: the bound is free again
    finally:
        backend.close()
