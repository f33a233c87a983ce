"""The frame pipe (``wsgi_zmq/ring.py``): a worker's ``WorkerPipe``, the front's
``open_pipe`` and ``PeerPipe``, both ends in this process on a real pipe and gevent's real
loop.

Hypothesis generates frames (empty, small, several times the pipe's capacity) and the
order in which the front sends, the loop turns and the worker reads: every frame comes out
whole, once, in order, and ``PeerPipe.check()`` holds after every step (something pending
exactly while the writer is on). Then the ways a pipe ends: the worker closes its end (the
front's next write says so, or its writer calls ``on_broken``), the front closes its end
(the worker reads the end of the file after the last whole frame), a worker that never
reads (dropped past ``PIPE_BACKLOG``), a length no frame may have, and the offers
``open_pipe`` refuses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgi_zmq import protocol, ring
from wsgi_zmq.errors import ProtocolError
from wsgi_zmq.ring import MAX_PIPE_FRAME, PeerPipe, RingRefused, WorkerPipe, WorkerRing, open_pipe

DEADLINE = 10.0


@contextmanager
def pipe_pair() -> Iterator[tuple[WorkerPipe, PeerPipe, list[str]]]:
    """A worker's pipe and the front's end of it; ``broken`` collects ``on_broken`` calls."""
    worker = WorkerPipe()
    broken: list[str] = []
    fd, key = open_pipe(os.getpid(), worker.fd, ())
    front = PeerPipe(fd, key, gevent.get_hub().loop, lambda: broken.append("broken"))
    try:
        yield worker, front, broken
    finally:
        if front.fd >= 0:
            front.close()
        worker.close()


def turn_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        gevent.sleep(0.001)


def frame_of(number: int, size: int) -> bytes:
    """Frame ``number``: ``size`` bytes of its own (its number, then a byte of it)."""
    return ((b"%d:" % number) + bytes([number % 251]) * size)[:size]


ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("send"), st.one_of(st.integers(0, 64), st.integers(0, 300_000),
                                         st.sampled_from([1 << 16, (1 << 20) + 7, 3 << 20]))),
    st.tuples(st.just("turn"), st.just(0)),
    st.tuples(st.just("read"), st.just(0)),
), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS)
def test_every_frame_comes_out_whole_once_in_order(actions: list[tuple[str, int]]) -> None:
    with pipe_pair() as (worker, front, broken):
        sent: list[bytes] = []
        got: list[bytes] = []
        for action, size in actions:
            if action == "send":
                data = frame_of(len(sent), size)
                assert front.send(data)
                sent.append(data)
            elif action == "turn":
                gevent.sleep(0)
            else:
                frames, ended = worker.frames()
                assert not ended
                got.extend(frames)
            front.check()
            assert got == sent[:len(got)], "a frame out of order, or not as sent"

        def drained() -> bool:
            frames, ended = worker.frames()
            assert not ended
            got.extend(frames)
            front.check()
            return len(got) == len(sent)

        turn_until(drained, "every frame to come out")
        assert got == sent and not front.pending and not front.watcher.active
        assert not broken and not worker.buffer


def test_the_worker_closing_its_end_breaks_the_pipe_at_the_next_write() -> None:
    """1. the worker closes its pipe 2. the front's next ``send`` returns False (it drops
    the worker), and every later one too."""
    with pipe_pair() as (worker, front, broken):
        assert front.send(b"one")
        worker.close()
        assert not front.send(b"two") and front.broken
        assert not front.send(b"three")
        assert not broken  # ``send`` said so itself


def test_a_worker_that_closes_with_frames_pending_is_reported_by_the_writer() -> None:
    """1. the front sends more than the pipe holds (the rest pending, the writer on) 2. the
    worker closes its end 3. the writer's next turn finds it closed: ``on_broken`` once,
    the writer off."""
    with pipe_pair() as (worker, front, broken):
        assert front.send(b"x" * (3 << 20))
        assert front.pending and front.watcher.active
        worker.close()
        turn_until(lambda: broken, "the writer to find the pipe closed")
        assert broken == ["broken"] and front.broken and not front.watcher.active


def test_the_front_closing_its_end_is_the_end_of_the_file_after_its_frames() -> None:
    with pipe_pair() as (worker, front, broken):
        assert front.send(b"last")
        front.close()
        seen: list[bytes] = []
        for _ in range(3):  # a short read ends one call; the end shows at the next
            frames, ended = worker.frames()
            seen.extend(frames)
            if ended:
                break
        assert seen == [b"last"] and ended and not worker.buffer


def test_a_worker_that_never_reads_is_dropped_past_the_backlog(monkeypatch) -> None:
    """1. a worker that reads nothing 2. the front keeps what the pipe cannot take, up to
    ``PIPE_BACKLOG`` (a quarter MiB here) 3. past it ``send`` returns False: the front
    drops the worker instead of growing without bound."""
    monkeypatch.setattr(ring, "PIPE_BACKLOG", 1 << 18)
    with pipe_pair() as (worker, front, broken):
        data = b"y" * (1 << 16)
        taken = 0
        while front.send(data):
            taken += 1
            assert taken < 1000, "the front kept everything a worker never read"
            gevent.sleep(0)
        assert front.broken and len(front.pending) <= (1 << 18) + len(data)
        assert taken * len(data) >= 1 << 18


def test_a_length_no_frame_may_have_breaks_the_stream() -> None:
    with pipe_pair() as (worker, front, broken):
        os.write(front.fd, protocol.PIPE_FRAME_HEAD.pack(MAX_PIPE_FRAME + 1))
        with pytest.raises(ProtocolError, match="in the pipe"):
            worker.frames()


def test_offers_that_are_no_pipe_of_this_process_are_refused() -> None:
    """``open_pipe`` refuses a descriptor that is not there, one that is no pipe (a ring's
    memfd), and a pipe another worker offered first; a refused offer opens nothing."""
    worker = WorkerPipe()
    memfd = WorkerRing(1, 1, 4096)
    try:
        with pytest.raises(RingRefused, match="No such file"):
            open_pipe(os.getpid(), 10_000, ())
        with pytest.raises(RingRefused, match="is no pipe"):
            open_pipe(os.getpid(), memfd.fd, ())
        fd, key = open_pipe(os.getpid(), worker.fd, ())
        os.close(fd)
        with pytest.raises(RingRefused, match="another worker's pipe"):
            open_pipe(os.getpid(), worker.fd, {key})
    finally:
        memfd.close()
        worker.close()
