"""The job worker (``python -m wsgi_zmq.handler --job MODULE:FUNC``) against a scripted front.

Each test starts a real handler pool hosting a function of ``tests/apps/jobs.py`` and
connects it to a ``FakeFront`` (``tests/support/fake_front.py``): a plain ROUTER in this
process that sends JOB, CREDIT and CANCEL records and reads what the worker answers, with
``wsgi_zmq.protocol``. Every test ends by checking that the same worker still serves.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from support import ROOT, LiveProcess, Stack, logged_pids, pid_alive, poll_until, python_env
from support.fake_front import FakeFront, decode_error
from wsgi_zmq import protocol
from wsgi_zmq.protocol import (
    JOB_IDEMPOTENT,
    READY_CONCURRENT,
    READY_IDEMPOTENT,
    READY_JOB,
)


@pytest.fixture
def front() -> Iterator[FakeFront]:
    context: zmq.Context[Any] = zmq.Context()
    fake = FakeFront(context)
    try:
        yield fake
    finally:
        fake.close()
        context.term()


class Pool:
    """A job pool under test: the master process, and its worker as the front sees it."""

    def __init__(self, proc: LiveProcess, front: FakeFront) -> None:
        self.proc = proc
        self.front = front
        self.ident, self.ready = self.wait_ready()

    def wait_ready(self) -> tuple[bytes, protocol.Ready]:
        """The next worker's READY (failing with the pool's log if the pool exits)."""
        def arrived() -> tuple[bytes, protocol.Ready] | None:
            if not self.proc.alive():
                raise AssertionError(f"the pool exited ({self.proc.proc.returncode}):\n"
                                     f"{self.proc.log()[-3000:]}")
            try:
                return self.front.ready(timeout=0.2)
            except AssertionError:
                return None

        ready: tuple[bytes, protocol.Ready] = poll_until(arrived, 20, 0,
                                                         message="the worker's READY")
        return ready

    def job(self, frames: list[bytes], **kwargs: Any) -> int:
        return self.front.job(self.ident, frames, **kwargs)

    def call(self, frames: list[bytes], **kwargs: Any) -> list[bytes]:
        """Send a job and return the frames of its final reply."""
        return self.front.reply(self.job(frames, **kwargs))

    def error(self, frames: list[bytes], **kwargs: Any) -> tuple[int, str]:
        """Send a job and return the (status, message) of the ERROR that ends it."""
        received = self.front.final(self.job(frames, **kwargs))
        error = decode_error(received)
        assert error is not None, received
        return error

    def assert_still_serves(self, frames: list[bytes], expected: list[bytes] | None = None,
                            **kwargs: Any) -> tuple[int, list[bytes]]:
        """The same worker (same connection, same pid, no new READY, no new worker
        forked) answers another job with a final reply (``expected``, if given); returns
        the job's rid and the reply's frames."""
        kwargs.setdefault("service", self.ready.service)
        rid = self.job(frames, **kwargs)
        received = self.front.final(rid)
        assert received.ident == self.ident
        assert received.kind == protocol.JOB_REPLY, (received, decode_error(received))
        reply = protocol.decode_job_reply(received.payload)[1]
        if expected is not None:
            assert reply == expected
        assert not [r for r in self.front.buffered if r.kind == protocol.READY]
        assert pid_alive(self.ready.pid)
        assert logged_pids(self.proc) == [self.ready.pid]
        return rid, reply


def start_pool(stack: Stack, front: FakeFront, func: str, *args: str,
               env: dict[str, str] | None = None) -> Pool:
    proc = stack.start(["wsgi_zmq.handler", "--job", f"apps.jobs:{func}", "--connect",
                        front.endpoint, *args], f"jobs-{func}", env=env)
    return Pool(proc, front)


def test_bytes_function(stack, front):
    """1. a sync pool for ``echo(payload) -> bytes`` 2. its READY: READY_JOB, no other
    flag, service ``echo`` (the function's name), capacity 32 3. a job gets its one frame
    back as a final JOB_REPLY 4. functions returning None and a bytearray: a final reply
    with no frames, and the bytes."""
    pool = start_pool(stack, front, "echo")
    assert pool.ready.flags == READY_JOB
    assert pool.ready.service == "echo"
    assert pool.ready.capacity == 32
    assert pool.call([b"hello"]) == [b"hello"]
    assert pool.call([b""]) == [b""]
    pool.assert_still_serves([b"again"], [b"again"])
    for func, expected in (("nothing", []), ("mutable", [b"ABC"])):
        other = start_pool(stack, front, func)
        assert other.ready.service == func
        assert other.call([b"abc"], service=func) == expected
        other.assert_still_serves([b"abc"], expected)


def test_list_of_frames_function(stack, front):
    """1. ``swap(frames: list[bytes]) -> list[bytes]`` 2. a job of three frames gets them
    back reversed, each reversed 3. no frames in, none out 4. a list-form generator sends one
    partial of two frames per frame, then a final reply with none."""
    pool = start_pool(stack, front, "swap")
    assert pool.call([b"ab", b"", b"cde"], service="swap") == [b"edc", b"", b"ba"]
    assert pool.call([], service="swap") == []
    pool.assert_still_serves([b"xy"], [b"yx"])
    gen = start_pool(stack, front, "split")
    rid = gen.job([b"one", b"three"], service="split")
    partials = [front.for_rid(rid), front.for_rid(rid)]
    assert [protocol.decode_job_reply(p.payload) for p in partials] == [
        (0, [b"one", b"3"]), (0, [b"three", b"5"])]
    assert front.reply(rid) == []
    gen.assert_still_serves([b"z"], [])


def test_generator_partials_obey_the_credit_window(stack, front, tmp_path):
    """1. a generator that yields 6 items, writing the index of each to a file before it
    yields it, then returns b"done" 2. a job with window 2: two partial replies come, then
    nothing while no CREDIT is granted, and the generator is not resumed past the third
    item (the one waiting for credit) 3. CREDIT 1: one more partial 4. CREDIT 10: the rest
    and the final reply, which carries the generator's return value."""
    pool = start_pool(stack, front, "count")
    progress = tmp_path / "progress"
    rid = pool.job([json.dumps({"n": 6, "progress": str(progress)}).encode()],
                   service="count", window=2)

    def partial() -> bytes:
        received = front.for_rid(rid)
        flags, frames = protocol.decode_job_reply(received.payload)
        assert received.kind == protocol.JOB_REPLY and flags == 0, received
        return frames[0]

    assert [partial(), partial()] == [b"0", b"1"]
    front.quiet(lambda r: r.rid == rid, 0.5)
    assert progress.read_text() == "2"
    front.credit(pool.ident, rid, 1)
    assert partial() == b"2"
    front.quiet(lambda r: r.rid == rid, 0.3)
    assert progress.read_text() == "3"
    front.credit(pool.ident, rid, 10)
    assert [partial(), partial(), partial()] == [b"3", b"4", b"5"]
    assert front.reply(rid) == [b"done"]
    assert Path(f"{progress}.closed").exists()
    pool.assert_still_serves([json.dumps({"n": 0, "progress": str(progress)}).encode()],
                             [b"done"])


def test_cancel_of_a_generator_waiting_for_credit(stack, front, tmp_path):
    """1. a generator job with window 1 sends its first partial and waits for credit
    2. CANCEL it 3. its one final record is END with END_ABORT, and the generator is
    closed 4. the worker serves the next job."""
    pool = start_pool(stack, front, "count")
    progress = tmp_path / "progress"
    rid = pool.job([json.dumps({"n": 5, "progress": str(progress)}).encode()],
                   service="count", window=1)
    assert protocol.decode_job_reply(front.for_rid(rid).payload) == (0, [b"0"])
    front.cancel(pool.ident, rid)
    final = front.final(rid)
    assert final.kind == protocol.END
    assert protocol.decode_end(final.payload)[0] & protocol.END_ABORT
    poll_until(Path(f"{progress}.closed").exists, 10, message="the generator to be closed")
    front.quiet(lambda r: r.rid == rid, 0.3)
    pool.assert_still_serves([json.dumps({"n": 0, "progress": str(progress)}).encode()],
                             [b"done"])


@pytest.mark.parametrize("worker_class", ["sync", "gevent"])
def test_cancel_of_a_running_job(stack, front, tmp_path, worker_class):
    """1. a job that sleeps 0.5 s is running (sync and gevent workers) 2. CANCEL it 3. the
    function runs to its end, and the job's one final record is END with END_ABORT (its
    reply is dropped) 4. the worker serves the next job."""
    pool = start_pool(stack, front, "slow", "-k", worker_class)
    mark = tmp_path / "running"
    rid = pool.job([json.dumps({"seconds": 0.5, "mark": str(mark)}).encode()], service="slow")
    poll_until(mark.exists, 10, message="the job to run")
    front.cancel(pool.ident, rid)
    final = front.final(rid)
    assert final.kind == protocol.END, final
    assert protocol.decode_end(final.payload)[0] & protocol.END_ABORT
    assert Path(f"{mark}.done").exists()
    front.quiet(lambda r: r.rid == rid, 0.3)
    payload = json.dumps({"seconds": 0, "mark": str(tmp_path / "next")}).encode()
    pool.assert_still_serves([payload], [payload])


def test_context_argument(stack, front):
    """1. ``context(payload, ctx)`` returns its JobContext as JSON 2. a job from a client
    with a key, in dialect MDP01, flagged JOB_IDEMPOTENT: every field is the job's 3. the
    same job without the flag: idempotent is false."""
    pool = start_pool(stack, front, "context")
    rid = pool.job([b"x"], service="context", flags=JOB_IDEMPOTENT, client="tcp://10.1.2.3:99",
                   key="K" * 40, dialect="MDP01")
    ctx = json.loads(front.reply(rid)[0])
    assert ctx == {"client": "tcp://10.1.2.3:99", "key": "K" * 40, "rid": rid,
                   "service": "context", "dialect": "MDP01", "idempotent": True,
                   "frames": 1}
    rid, [reply] = pool.assert_still_serves([b"y"])
    assert json.loads(reply)["idempotent"] is False
    assert json.loads(reply)["rid"] == rid


def test_raising_function_is_an_error_500_and_the_worker_serves_on(stack, front):
    """1. ``picky`` raises ValueError("no good") for b"raise..." 2. the job's final record
    is ERROR 500 "ValueError: no good"; the traceback is in the error log, the payload is
    not 3. results of the wrong type are ERROR 500 naming the type 4. the next job is
    served by the same worker."""
    pool = start_pool(stack, front, "picky")
    secret = b"raise-secret-payload-8d1f"
    assert pool.error([secret], service="picky") == (500, "ValueError: no good")
    poll_until(lambda: "ValueError: no good" in pool.proc.log(), 10,
               message="the traceback in the log")
    log = pool.proc.log()
    assert "Traceback (most recent call last)" in log
    assert secret.decode() not in log
    assert pool.error([b"str"], service="picky") == (500, "picky returned str, expected bytes")
    assert pool.error([b"int"], service="picky") == (500, "picky returned int, expected bytes")
    assert pool.error([b"list"], service="picky") == (500,
                                                      "picky returned list, expected bytes")
    pool.assert_still_serves([b"fine"], [b"fine"])


def test_wrong_number_of_frames_is_an_error_400(stack, front):
    """1. ``echo(payload)`` takes one frame 2. jobs of two frames and of none: ERROR 400
    "service echo takes one frame, got N" 3. the worker serves on."""
    pool = start_pool(stack, front, "echo")
    assert pool.error([b"a", b"b"]) == (400, "service echo takes one frame, got 2")
    assert pool.error([]) == (400, "service echo takes one frame, got 0")
    pool.assert_still_serves([b"one"], [b"one"])


def test_gevent_worker_runs_jobs_at_once(stack, front, tmp_path):
    """1. ``-k gevent --worker-connections 10``: READY says READY_JOB | READY_CONCURRENT,
    capacity 10 2. five ``barrier`` jobs, each of which sleeps (gevent.sleep) until all five
    have started 3. all five get their reply: only a worker running them at once can."""
    pool = start_pool(stack, front, "barrier", "-k", "gevent", "--worker-connections", "10")
    assert pool.ready.flags == READY_JOB | READY_CONCURRENT
    assert pool.ready.capacity == 10
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    payload = json.dumps({"dir": str(arrived), "n": 5}).encode()
    rids = [pool.job([payload], service="barrier") for _ in range(5)]
    assert [front.reply(rid, timeout=30) for rid in rids] == [[b"all 5"]] * 5
    again = tmp_path / "again"
    again.mkdir()
    pool.assert_still_serves([json.dumps({"dir": str(again), "n": 1}).encode()], [b"all 1"])


def test_job_idempotent_and_service(stack, front):
    """1. ``--job-idempotent``: READY carries READY_IDEMPOTENT, and a job without the
    JOB_IDEMPOTENT flag is idempotent for the function 2. ``--service other``: READY names
    ``other`` instead of the function's name."""
    pool = start_pool(stack, front, "context", "--job-idempotent")
    assert pool.ready.flags == READY_JOB | READY_IDEMPOTENT
    assert pool.ready.service == "context"
    assert json.loads(pool.call([b"x"], service="context")[0])["idempotent"] is True
    named = start_pool(stack, front, "echo", "--service", "other")
    assert named.ready.flags == READY_JOB
    assert named.ready.service == "other"
    named.assert_still_serves([b"hi"], [b"hi"])


def test_sigterm_hands_back_queued_jobs_and_says_bye(stack, front, tmp_path):
    """1. a sync pool whose app took SIGALRM (so the worker never hands jobs back by itself)
    2. one frame of three jobs: a 1 s job, then two more, queued behind it 3. once the
    first runs, SIGTERM the pool 4. the first job gets its reply, the two others REJECT,
    and the worker says BYE 5. the pool exits 0."""
    pool = start_pool(stack, front, "slow", env={"JOBS_TAKE_SIGALRM": "1"})
    assert pool.call([json.dumps({"seconds": 0, "mark": str(tmp_path / "m0")}).encode()],
                     service="slow")
    mark = tmp_path / "running"
    first, slow = front.job_record([json.dumps({"seconds": 1, "mark": str(mark)}).encode()],
                                   service="slow")
    queued = [front.job_record([b"{}"], service="slow") for _ in range(2)]
    front.send(pool.ident, slow, *(record for _, record in queued))
    poll_until(mark.exists, 10, message="the first job to run")
    pool.proc.send_signal(signal.SIGTERM)
    assert json.loads(front.reply(first)[0])["seconds"] == 1
    for rid, _ in queued:
        assert front.final(rid).kind == protocol.REJECT
    front.bye(pool.ident)
    assert front.byes == [pool.ident]
    assert pool.proc.wait(30) == 0


def test_hooks_access_log_and_max_requests(stack, front):
    """1. a pool with tests/apps/gunicorn_conf.py (hooks written for HTTP, an access log)
    and --max-requests 2, one worker 2. each job runs pre_request and post_request, which
    see method JOB, the service as path and a status, and writes one access line:
    the client, "JOB echo", 200, the reply bytes 3. after 2 jobs the worker recycles (BYE);
    a new worker connects and serves."""
    pool = start_pool(stack, front, "echo", "-c", str(ROOT / "tests/apps/gunicorn_conf.py"),
                      "--workers", "1", "--max-requests", "2")
    assert pool.call([b"hello"], client="tcp://192.0.2.9:7") == [b"hello"]
    line = pool.proc.wait_for_log(r"(?m)^access .*$").group(0)
    assert re.fullmatch(r'access tcp://192\.0\.2\.9:7 "JOB echo" 200 5 worker=\d+@\S+', line)
    pool.proc.wait_for_log(r"hook pre_request JOB echo")
    pool.proc.wait_for_log(r"hook post_request JOB echo -> 200 OK")
    assert pool.call([b"two"]) == [b"two"]
    front.bye(pool.ident)
    successor = Pool(pool.proc, front)
    assert successor.ready.pid != pool.ready.pid
    assert front.reply(front.job(successor.ident, [b"three"])) == [b"three"]
    assert len(logged_pids(pool.proc)) == 2


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=python_env(),
                          capture_output=True, text=True, timeout=60, check=False)


def test_bad_job_path_exits_2_with_one_line(tmp_path):
    """1. a pool for a job that does not exist, is not callable or takes three parameters,
    started normally and with --check-config 2. each exits 2 with one ERROR line that names
    the problem, no traceback 3. --check-config of a good function exits 0."""
    connect = ["--connect", f"ipc://{tmp_path}/nowhere"]
    cases = [("no_such_module:echo", "no_such_module"),
             ("apps.jobs:no_such", "no_such"),
             ("apps.jobs:NOT_CALLABLE", "is not callable"),
             ("apps.jobs:three_params", "a job function takes (payload) or (payload, ctx)"),
             ("apps.jobs:coroutine", "coroutine is async")]
    for uri, message in cases:
        result = _run(["wsgi_zmq.handler", "--job", uri, *connect])
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1, result.stderr
        assert message in errors[0], result.stderr
        assert "Traceback" not in result.stderr
        checked = _run(["wsgi_zmq.handler", "--job", uri, "--check-config"])
        assert checked.returncode == 2, checked.stderr
        lines = [line for line in checked.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], checked.stderr
    good = _run(["wsgi_zmq.handler", "--job", "apps.jobs:echo", "--check-config"])
    assert good.returncode == 0, good.stderr
    both = _run(["wsgi_zmq.handler", "apps.echo:router", "--job", "apps.jobs:echo"])
    assert both.returncode == 2 and "not both" in both.stderr
