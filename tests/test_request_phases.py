"""The phases of a worker's request (``wsgi_zmq.handler.worker.PHASES``): the table is the
only way a phase changes, a final record moves a request to DONE once, and a request is
never started after its end. The live suite runs the workers with ``WSGI_ZMQ_CHECK=1`` too
(``Worker.check`` every turn)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_zmq import protocol as p
from wsgi_zmq.handler.worker import (
    DONE,
    PHASE_NAMES,
    PHASES,
    QUEUED,
    RUNNING,
    PhaseError,
    Request,
)


class Plain(Request):
    """The smallest layer's request: the abstract decisions answered."""

    __slots__ = ()

    def can_hand_back(self) -> bool:
        return True

    def replayable(self) -> bool:
        return True


def request(rid: int = 7) -> tuple[Plain, SimpleNamespace]:
    # a front's bookkeeping only (its outbox and registry): no socket is involved
    front = SimpleNamespace(generation=0, outbox=[], requests={})
    req = Plain(SimpleNamespace(quiet=1), front, rid, b"")  # type: ignore[arg-type]
    front.requests[rid] = req
    return req, front


def test_the_table_is_a_line_to_done() -> None:
    assert [sorted(allowed) for allowed in PHASES] == [[RUNNING, DONE], [DONE], []]
    assert PHASE_NAMES == ("QUEUED", "RUNNING", "DONE")


@pytest.mark.parametrize("final", ["reject", "error", "end"])
@pytest.mark.parametrize("ran", [False, True])
def test_a_final_record_ends_the_request_once(final: str, ran: bool) -> None:
    req, front = request()
    if ran:
        req.move(RUNNING)
    {"reject": req.reject, "error": lambda: req.error(502, "x"),
     "end": lambda: req.end(p.END_ABORT, b"")}[final]()
    assert req.phase == DONE and req.finished and 7 not in front.requests
    assert len(front.outbox) == 1
    with pytest.raises(PhaseError, match="DONE -> DONE"):
        req.reject()
    with pytest.raises(PhaseError, match="DONE -> RUNNING"):
        req.move(RUNNING)


def test_a_request_of_a_lost_connection_ends_without_a_record() -> None:
    req, front = request()
    front.generation += 1  # the front's connection was lost and made again
    front.requests.clear()
    req.end(p.END_ABORT, b"")
    assert req.phase == DONE and req.cancelled and front.outbox == []


@given(st.lists(st.sampled_from([QUEUED, RUNNING, DONE]), max_size=8))
def test_every_change_follows_the_table(moves: list[int]) -> None:
    req, _ = request()
    for phase in moves:
        before = req.phase
        if phase in PHASES[before]:
            req.move(phase)
            assert req.phase == phase
        else:
            with pytest.raises(PhaseError):
                req.move(phase)
            assert req.phase == before
