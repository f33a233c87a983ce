"""The frame pipes (``wsgi_zmq/ring.py``): a worker's ``WorkerPipe``, the front's
``open_pipes``, ``FrameWriter`` (on gevent's loop), ``write_frame`` (the sync worker's
waiting write) and ``FrameReader``, both ends in this process on real pipes and gevent's
real loop.

Hypothesis generates frames (empty, small, several times the pipe's capacity) and the
order in which the writer sends, the loop turns and the reader reads: every frame comes
out whole, once, in order, and ``FrameWriter.check()`` holds after every step (something
pending exactly while the writer is on). The same for the worker's direction, written
with ``write_frame`` and read by the front's reader in budgets. Then the ways a pipe ends:
the reader closes its end (the next write says so, or the writer calls ``on_broken``), the
writer closes its end (the reader gets the end of the file after the last whole frame),
a reader that never reads (dropped past ``PIPE_BACKLOG``; ``write_frame`` gives up after
its timeout), a length no frame may have, and the offers ``open_pipes`` refuses.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgi_zmq import protocol, ring
from wsgi_zmq.errors import ProtocolError
from wsgi_zmq.ring import (
    MAX_PIPE_FRAME,
    MAX_WORKER_FRAME,
    FrameReader,
    FrameWriter,
    RingRefused,
    WorkerPipe,
    WorkerRing,
    open_pipes,
    write_frame,
)

DEADLINE = 10.0


@contextmanager
def pipe_pair() -> Iterator[tuple[WorkerPipe, FrameWriter, list[str]]]:
    """A worker's pipes and the front's writer into the first; ``broken`` collects
    ``on_broken`` calls."""
    worker = WorkerPipe()
    broken: list[str] = []
    fd, into, _, _ = open_pipes(os.getpid(), worker.fd, worker.back, ())
    os.close(into)
    front = FrameWriter(fd, gevent.get_hub().loop, lambda: broken.append("broken"))
    try:
        yield worker, front, broken
    finally:
        if front.fd >= 0:
            front.close()
        worker.close()


@contextmanager
def back_pair() -> Iterator[tuple[WorkerPipe, FrameReader]]:
    """A worker's pipes and the front's reader of the back one."""
    worker = WorkerPipe()
    fd, into, _, _ = open_pipes(os.getpid(), worker.fd, worker.back, ())
    os.close(fd)
    front = FrameReader(into, MAX_WORKER_FRAME)
    try:
        yield worker, front
    finally:
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
        assert not broken and not worker.reader.buffer


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
        assert seen == [b"last"] and ended and not worker.reader.buffer


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


BACK_ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("send"), st.one_of(st.integers(0, 64), st.integers(0, 200_000),
                                         st.sampled_from([1 << 16, 500_000]))),
    st.tuples(st.just("read"), st.sampled_from([1, 1 << 16, 1 << 20])),
), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=BACK_ACTIONS)
def test_the_workers_frames_come_out_whole_once_in_order(
        actions: list[tuple[str, int]]) -> None:
    """The worker's direction: ``write_frame`` (which waits for room; a frame is never
    more than the pipe holds here, so nothing has to read meanwhile) and the front's
    reader, which takes at most a budget a turn."""
    with back_pair() as (worker, front):
        sent: list[bytes] = []
        got: list[bytes] = []
        for action, size in actions:
            if action == "send":
                while sent[len(got):] and sum(map(len, sent[len(got):])) + size > 1 << 19:
                    frames, ended = front.frames()  # make room: the pipe holds 1 MiB
                    got.extend(frames)
                data = frame_of(len(sent), size)
                assert write_frame(worker.back, data, DEADLINE)
                sent.append(data)
            else:
                frames, ended = front.frames(size)
                assert not ended
                got.extend(frames)
            assert got == sent[:len(got)], "a frame out of order, or not as sent"
        deadline = time.monotonic() + DEADLINE
        while len(got) < len(sent):
            assert time.monotonic() < deadline, "frames never came out"
            got.extend(front.frames()[0])
        assert got == sent and not front.buffer


def test_a_worker_frame_longer_than_the_front_takes_breaks_the_stream() -> None:
    with back_pair() as (worker, front):
        os.write(worker.back, protocol.PIPE_FRAME_HEAD.pack(MAX_WORKER_FRAME + 1))
        with pytest.raises(ProtocolError, match="in the pipe"):
            front.frames()


def test_write_frame_gives_up_on_a_reader_that_never_reads_or_is_gone() -> None:
    """1. nobody reads the back pipe: ``write_frame`` fills it, then gives up after its
    timeout (the sync worker drops the frame) 2. the reader closes: False at once."""
    with back_pair() as (worker, front):
        started = time.monotonic()
        assert not write_frame(worker.back, b"z" * (3 << 20), 0.2)
        assert time.monotonic() - started >= 0.2
        front.close()
        assert not write_frame(worker.back, b"x", 5.0)


def test_a_leaving_gevent_worker_writes_what_is_pending_before_it_closes() -> None:
    """``WorkerPipe.close(linger)``: the back pipe's ``FrameWriter`` writes its pending
    frames (more than the pipe holds at once) while the front reads, then closes."""
    with back_pair() as (worker, front):
        worker.writer = FrameWriter(worker.back, gevent.get_hub().loop, lambda: None)
        big = b"q" * (3 << 20)
        assert worker.writer.send(big) and worker.writer.pending
        got: list[bytes] = []

        def read() -> None:  # the front, in a thread: the worker's close waits in this one
            deadline = time.monotonic() + DEADLINE
            while not got and time.monotonic() < deadline:
                select.select([front.fd], [], [], 0.1)
                got.extend(front.frames()[0])

        reader = threading.Thread(target=read)
        reader.start()
        worker.close(DEADLINE)
        reader.join(DEADLINE)
        assert got == [big] and worker.back == -1


def test_offers_that_are_no_pipe_of_this_process_are_refused() -> None:
    """``open_pipes`` refuses a descriptor that is not there, one that is no pipe (a
    ring's memfd), the same pipe as both ends, and a pipe another worker offered first;
    a refused offer leaves nothing open."""
    worker = WorkerPipe()
    memfd = WorkerRing(1, 1, 4096)
    try:
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(RingRefused, match="No such file"):
            open_pipes(os.getpid(), 10_000, worker.back, ())
        with pytest.raises(RingRefused, match="is no pipe"):
            open_pipes(os.getpid(), memfd.fd, worker.back, ())
        with pytest.raises(RingRefused, match="is no pipe"):
            open_pipes(os.getpid(), worker.fd, memfd.fd, ())
        with pytest.raises(RingRefused, match="another worker's pipe"):
            open_pipes(os.getpid(), worker.fd, worker.fd, ())
        assert len(os.listdir("/proc/self/fd")) == before
        fd, into, key, back_key = open_pipes(os.getpid(), worker.fd, worker.back, ())
        os.close(fd)
        os.close(into)
        for taken in ({key}, {back_key}):
            with pytest.raises(RingRefused, match="another worker's pipe"):
                open_pipes(os.getpid(), worker.fd, worker.back, taken)
    finally:
        memfd.close()
        worker.close()
