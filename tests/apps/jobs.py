"""Job functions for the job worker tests (``--job apps.jobs:NAME``): every form one may take.

With ``JOBS_TAKE_SIGALRM=1`` in the environment the module installs its own SIGALRM handler
at import, as an app may: a sync worker then leaves SIGALRM alone and never hands queued
jobs back by itself, so only a TERM does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wsgi_zmq.handler.job import JobContext

if os.environ.get("JOBS_TAKE_SIGALRM"):
    signal.signal(signal.SIGALRM, lambda signum, frame: None)


def echo(payload: bytes) -> bytes:
    """The payload, unchanged."""
    return payload


def nothing(payload: bytes) -> None:
    """A final reply with no frames."""


def mutable(payload: bytes) -> bytearray:
    """A bytearray: sent as bytes."""
    return bytearray(payload.upper())


def swap(frames: list[bytes]) -> list[bytes]:
    """The list form: each frame reversed, in reverse order."""
    return [frame[::-1] for frame in reversed(frames)]


def count(payload: bytes) -> Iterator[bytes]:
    """A generator: ``{"n": N, "progress": PATH}`` yields N partial replies (b"0", b"1",
    ...), writing the index of each to PATH before it yields it, then returns b"done". It
    writes "closed" to PATH + ".closed" when it is closed or finishes."""
    spec = json.loads(payload)
    progress = Path(spec["progress"])
    try:
        for index in range(spec["n"]):
            progress.write_text(str(index))
            yield b"%d" % index
        return b"done"  # noqa: B901 (the final reply of a generator job)
    finally:
        Path(str(progress) + ".closed").write_text("closed")


def split(frames: list[bytes]) -> Iterator[list[bytes]]:
    """A list-form generator: one partial reply per frame (the frame and its length)."""
    for frame in frames:
        yield [frame, b"%d" % len(frame)]


def context(payload: bytes, ctx: JobContext) -> bytes:
    """The JobContext, as JSON."""
    return json.dumps(dataclasses.asdict(ctx)).encode()


def picky(payload: bytes) -> Any:
    """``b"raise..."`` raises ValueError("no good") (a message without the payload);
    ``b"str"`` returns text, ``b"int"`` a number, ``b"list"`` a list; anything else comes
    back unchanged."""
    if payload.startswith(b"raise"):
        raise ValueError("no good")
    wrong = {b"str": "text", b"int": 42, b"list": [b"a"]}
    return wrong.get(payload, payload)


def slow(payload: bytes) -> bytes:
    """``{"seconds": S, "mark": PATH}``: create PATH, sleep S seconds, create PATH.done,
    return the payload."""
    spec = json.loads(payload)
    Path(spec["mark"]).touch()
    time.sleep(spec["seconds"])
    Path(spec["mark"] + ".done").touch()
    return payload


def barrier(payload: bytes) -> bytes:
    """``{"dir": DIR, "n": N}`` (for -k gevent): add a file to DIR, then sleep
    (``gevent.sleep``) until DIR holds N files; only a worker that runs N jobs at once can
    answer any of them. Gives up after 20 s."""
    import gevent

    spec = json.loads(payload)
    folder = Path(spec["dir"])
    (folder / uuid.uuid4().hex).touch()
    deadline = time.monotonic() + 20
    while len(list(folder.iterdir())) < spec["n"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the other jobs never came")
        gevent.sleep(0.01)
    return b"all %d" % spec["n"]


def three_params(a: bytes, b: bytes, c: bytes) -> bytes:
    """Cannot take (payload) or (payload, ctx)."""
    return a + b + c


async def coroutine(payload: bytes) -> bytes:
    """Async: not a job function."""
    return payload


NOT_CALLABLE = b"a constant"


def slow_pid(payload: bytes) -> bytes:
    """``{"seconds": S, "mark": PATH}``: write this worker's pid to PATH, sleep S seconds,
    return ``b"done by PID"`` (the pid of the worker that finished it)."""
    spec = json.loads(payload)
    Path(spec["mark"]).write_text(str(os.getpid()))
    time.sleep(spec["seconds"])
    return b"done by %d" % os.getpid()


def slow_once(payload: bytes) -> bytes:
    """``{"seconds": S, "mark": PATH}``: the first call (PATH does not exist yet) creates
    PATH and sleeps S seconds; later calls answer at once. Returns ``b"attempt N"``."""
    spec = json.loads(payload)
    mark = Path(spec["mark"])
    try:
        with open(mark, "x") as first:
            first.write("1")
    except FileExistsError:
        return b"attempt 2"
    time.sleep(spec["seconds"])
    return b"attempt 1"
