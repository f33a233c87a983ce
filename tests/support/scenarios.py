"""Operations under continuous load, shared by the tests (short) and bench/scenarios.py
(long): each starts real processes on a ``Stack``, runs ``Load`` and repeats its operation
until ``seconds`` have passed, waiting for each operation's end by polling the logs.

Each returns a ``Result``: the load's counts and what was done. The promise tested is that
every request is answered 200 with its own body: ``failed == 0`` and ``answered == sent``.
"""

from __future__ import annotations

import json
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from support import Stack, exchange
from support.load import Counts, Load

APP = "apps.echo:router"


@dataclass
class Result:
    name: str
    counts: Counts
    operations: int
    failures: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.counts.failed == 0 and self.counts.answered == self.counts.sent


def _repeat(load: Load, seconds: float, operation: Any) -> int:
    """Run ``operation`` again and again under ``load`` until ``seconds`` have passed
    (at least once); return how many times it ran."""
    load.wait_for(50)
    started = time.monotonic()
    done = 0
    while done == 0 or time.monotonic() - started < seconds:
        operation()
        done += 1
        load.wait_for(load.counts.answered + 50)  # traffic flows between operations
    return done


def _count(proc: Any, pattern: str) -> int:
    return len(re.findall(pattern, proc.log()))


def _under_load(name: str, port: int, seconds: float, clients: int, operation: Any
                ) -> Result:
    """Repeat ``operation`` for ``seconds`` under ``clients`` checking clients."""
    with Load(port, clients, seconds + 60) as load:
        operations = _repeat(load, seconds, operation)
    return Result(name, load.counts, operations, load.failures)


def hup_reload(stack: Stack, seconds: float, clients: int = 8) -> Result:
    """HUP the master of an all-in-one with 2 workers, again and again."""
    master, port = stack.all_in_one(APP, workers=2)

    def reload() -> None:
        done = _count(master, r"Reload done")
        exited = _count(master, r"Worker \d+ exited")
        master.send_signal(signal.SIGHUP)
        master.wait_for_log(r"Reload done", count=done + 1, timeout=60)
        master.wait_for_log(r"Worker \d+ exited", count=exited + 2, timeout=60)

    return _under_load("HUP reload", port, seconds, clients, reload)


def ttin_ttou(stack: Stack, seconds: float, clients: int = 8) -> Result:
    """TTIN then TTOU the master of an all-in-one with 2 workers, again and again."""
    master, port = stack.all_in_one(APP, workers=2)

    def grow_and_shrink() -> None:
        connected = _count(master, r"Worker \d+@\S+ connected")
        exited = _count(master, r"Worker \d+ exited")
        master.send_signal(signal.SIGTTIN)
        master.wait_for_log(r"Worker \d+@\S+ connected", count=connected + 1, timeout=60)
        master.send_signal(signal.SIGTTOU)
        master.wait_for_log(r"Worker \d+ exited", count=exited + 1, timeout=60)

    return _under_load("TTIN then TTOU", port, seconds, clients, grow_and_shrink)


def max_requests(stack: Stack, seconds: float, clients: int = 8) -> Result:
    """An all-in-one with 2 workers recycled every 50 requests (--max-requests 50)."""
    master, port = stack.all_in_one(APP, "--max-requests", "50", workers=2)
    with Load(port, clients, seconds + 60) as load:
        load.wait_for(50)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            load.stop.wait(0.1)
    recycled = _count(master, r"max_requests\): recycling")
    return Result("max_requests 50", load.counts, recycled, load.failures)


def _pool(stack: Stack, endpoint: str, front: Any) -> Any:
    connected = _count(front, r"Worker \d+@\S+ connected")
    pool = stack.handler(APP, endpoint, "--workers", "2")
    front.wait_for_log(r"Worker \d+@\S+ connected", count=connected + 2, timeout=60)
    return pool


def deploy(stack: Stack, seconds: float, clients: int = 8) -> Result:
    """The README's deploy: a new pool starts beside the old, then the old gets TERM."""
    front, port, endpoint = stack.front()
    current = _pool(stack, endpoint, front)

    def roll() -> None:
        nonlocal current
        new = _pool(stack, endpoint, front)
        current.send_signal(signal.SIGTERM)
        assert current.wait(60) == 0
        current = new

    return _under_load("deploy a new pool, TERM the old", port, seconds, clients, roll)


def term_beside_another(stack: Stack, seconds: float, clients: int = 8) -> Result:
    """Two pools serve one front; TERM one (and start it again, to repeat)."""
    front, port, endpoint = stack.front()
    pools = [_pool(stack, endpoint, front), _pool(stack, endpoint, front)]

    def term_one() -> None:
        pool = pools.pop(0)
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(60) == 0
        pools.append(_pool(stack, endpoint, front))

    return _under_load("TERM a pool while another serves", port, seconds, clients, term_one)


def timeout_abort(stack: Stack, seconds: float, clients: int = 8) -> Result:
    """--timeout 2: one request stuck in the app among fast ones; it alone gets 504."""
    master, port = stack.all_in_one(APP, "--timeout", "2", workers=2)
    stuck: list[int] = []
    with Load(port, clients, seconds + 60) as load:

        def one_stuck() -> None:
            aborted = _count(master, r"WORKER TIMEOUT")
            connected = _count(master, r"Worker \d+@\S+ connected")
            responses, _ = exchange(port, b"GET /slow?seconds=600 HTTP/1.1\r\nHost: t\r\n\r\n",
                                    timeout=60)
            stuck.append(responses[0].status if responses else 0)
            master.wait_for_log(r"WORKER TIMEOUT", count=aborted + 1)
            # the aborted worker's replacement is up before the next round
            master.wait_for_log(r"Worker \d+@\S+ connected", count=connected + 1, timeout=60)

        operations = _repeat(load, seconds, one_stuck)
    return Result("worker stuck past timeout", load.counts, operations, load.failures,
                  {"stuck statuses": stuck})


def _version(stack: Stack, endpoint: str, front: Any, version: str, *args: str) -> Any:
    connected = _count(front, r"Worker \d+@\S+ connected")
    pool = stack.handler(APP, endpoint, "--workers", "2", "--pool-version", version, *args)
    front.wait_for_log(r"Worker \d+@\S+ connected", count=connected + 2, timeout=60)
    return pool


def _asks(port: int, version: str) -> int:
    """A request asking for ``version`` (the header): the pid that answered it."""
    responses, _ = exchange(port, f"GET /echo?verify=1 HTTP/1.1\r\nHost: t\r\n"
                                  f"X-Version: {version}\r\n\r\n".encode(), timeout=30)
    assert responses and responses[0].status == 200, responses
    return int(json.loads(responses[0].body)["pid"])


def canary_promote_rollback(stack: Stack, seconds: float, clients: int = 8) -> Result:
    """The README's canary deploy, again and again: start the next version in standby,
    verify it with the version header, give it 10% by weight, promote it, roll back to
    the old one, promote it again, then stop the old version (TERM)."""
    control = str(stack.tmp_path / "front.ctl")
    front, port, endpoint = stack.front("--control-socket", control,
                                        "--version-header", "X-Version")
    from support import logged_pids
    from wsgi_zmq.control import call

    number = 1
    current = _version(stack, endpoint, front, "v1")
    checks: list[str] = []

    def cycle() -> None:
        nonlocal current, number
        old, number = f"v{number}", number + 1
        new_name = f"v{number}"
        new = _version(stack, endpoint, front, new_name, "--standby")
        pid = _asks(port, new_name)  # verify before it takes traffic
        if pid not in logged_pids(new):
            checks.append(f"{new_name} asked, answered by {pid}")
        call(control, "weight", ["default", new_name, "10"])
        call(control, "promote", ["default", new_name, ])  # it takes the traffic
        call(control, "promote", ["default", old])  # roll back
        call(control, "promote", ["default", new_name])  # and forward again
        current.send_signal(signal.SIGTERM)  # the old version, now in standby, stops
        assert current.wait(60) == 0
        current = new

    result = _under_load("canary: standby, verify, promote, roll back, TERM the old",
                         port, seconds, clients, cycle)
    result.failures += checks
    if checks:
        result.counts.failed += len(checks)
    return result


ALL = [hup_reload, ttin_ttou, max_requests, deploy, term_beside_another, timeout_abort,
       canary_promote_rollback]

