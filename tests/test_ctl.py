"""``python -m wsgi_zmq.ctl``: its figures and tables, and the real CLI against a real server.

The pure functions (rates, busy share, quantiles from histogram deltas, tables, the text of a
status, a ``top`` frame) are tested on their own. The CLI runs as a subprocess against a real
``wsgi_zmq.control.ControlServer`` served by a thread of the test, on a Unix socket in
``tmp_path``, whose commands return canned results of the shapes a front and a pool master
answer; the status carries a counter so that successive ``top`` frames differ by known
amounts. ``top`` runs in a pseudo-terminal. Every wait has a deadline; every server thread is
stopped and joined at teardown.
"""

from __future__ import annotations

import io
import json
import math
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import ROOT, python_env
from support.ctl import ctl, run_in_pty
from wsgi_zmq import __version__
from wsgi_zmq.control import Commands, ControlError, ControlServer, listen, wait
from wsgi_zmq.ctl import (
    CLEAR,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Sample,
    Unreachable,
    bucket_deltas,
    busy_share,
    format_latency,
    format_seconds,
    format_table,
    front_figures,
    quantile,
    rate,
    render_result,
    render_status,
    run_top,
    top_frame,
)

BOUNDS = [0.01, 0.1, 1.0]


def worker(pid: int, state: str, capacity: int, n: int, served: int, busy: float
           ) -> dict[str, Any]:
    """A worker of the front's status at step ``n``: ``served`` requests and ``busy``
    slot-seconds more per step."""
    return {"pid": pid, "host": "h1", "state": state, "capacity": capacity,
            "in_flight": 1 if state == "serving" else 0, "served": served * n,
            "busy_seconds": busy * n, "busy_share": 0.25, "connected_for": 10.0 * n,
            "last_heard": 0.2, "concurrent": False, "foreign": False,
            "body_ring": 4 if state == "serving" else 0,
            "pipe": state == "serving"}


def front_status(n: int, **extra: Any) -> dict[str, Any]:
    """The front's status at step ``n``: 10 s of uptime and 100 requests (all between 10
    and 100 ms) per step, so 10 requests/s between any two steps."""
    return {
        "kind": "front", "pid": 4242, "wsgi_zmq": "0.2.0", "uptime": 10.0 * n,
        "binds": ["http://127.0.0.1:8000"], "backend": ["tcp://127.0.0.1:5555"], "jobs": [],
        "metrics": None, "draining": False, "connections": 3, "in_flight": 1,
        "lanes": [{"service": "", "waiting": 2, "workers": 2}], "drained_pools": [],
        "pools": [{"name": "web", "version": "1.4", "host": "h1", "master": 4300,
                   "service": "", "drained": False, "capacity": 3, "in_flight": 1,
                   "workers": [worker(4301, "serving", 2, n, 50, 5.0),
                               worker(4302, "drained", 1, n, 20, 1.0)]}],
        "requests": {"total": 100 * n, "by_status": {"2xx": 98 * n, "5xx": 2 * n},
                     "duration_bounds": BOUNDS, "duration_counts": [0, 100 * n, 0, 0],
                     "duration_sum": 5.5 * n, "front_answers": {"503": n}},
        **extra,
    }


POOL_STATUS: dict[str, Any] = {
    "kind": "pool", "pid": 4300, "name": "web", "version": "1.4", "app": "apps.echo:router",
    "connect": ["tcp://127.0.0.1:5555"], "workers_wanted": 2,
    "workers": [{"pid": 4301, "age": 1, "booted": True, "started": 12.5, "last_beat": 0.4},
                {"pid": 4302, "age": 2, "booted": False, "started": 0.5, "last_beat": 0.1}],
    "restarts": {"timeout": 0, "max_requests": 3, "crash": 1}, "reloads": 2,
}


# -- figures ----------------------------------------------------------------------------------

def test_rate() -> None:
    assert rate(100, 150, 10.0) == 5.0
    assert rate(None, 150, 10.0) is None          # the first sample
    assert rate(100, 150, 0.0) is None            # no time passed
    assert rate(150, 100, 10.0) is None           # the counter went down: a restart
    assert rate(7, 7, 2.0) == 0.0


def test_busy_share() -> None:
    assert busy_share(0.0, 5.0, 10.0, 2) == 0.25
    assert busy_share(0.0, 50.0, 10.0, 2) == 1.0  # clock skew never shows above 100%
    assert busy_share(None, 5.0, 10.0, 2) is None
    assert busy_share(0.0, 5.0, 10.0, 0) is None


def test_bucket_deltas() -> None:
    assert bucket_deltas([1, 2, 3, 0], [2, 2, 5, 1]) == [1, 0, 2, 1]
    assert bucket_deltas(None, [1, 2]) is None
    assert bucket_deltas([1, 2], [1, 2, 3]) is None  # another layout
    assert bucket_deltas([5, 2], [1, 2]) is None     # a restart


def test_quantile_interpolates_within_the_bucket() -> None:
    # 100 values in (0.01, 0.1]: the median is half way, p99 99% of the way
    assert quantile(BOUNDS, [0, 100, 0, 0], 0.5) == pytest.approx(0.055)
    assert quantile(BOUNDS, [0, 100, 0, 0], 0.99) == pytest.approx(0.0991)
    # the first bucket starts at 0
    assert quantile(BOUNDS, [10, 0, 0, 0], 0.5) == pytest.approx(0.005)
    # 90 fast, 10 slow: p50 among the fast ones, p99 among the slow ones
    counts = [90, 0, 10, 0]
    assert quantile(BOUNDS, counts, 0.5) == pytest.approx(0.01 * 50 / 90)
    assert quantile(BOUNDS, counts, 0.99) == pytest.approx(0.1 + 0.9 * 9 / 10)


def test_quantile_edges() -> None:
    assert quantile(BOUNDS, [0, 0, 0, 0], 0.5) is None  # no requests in the interval
    assert quantile(BOUNDS, [0, 0, 0, 4], 0.5) == math.inf  # above every bound
    assert format_latency(math.inf, BOUNDS) == ">1000ms"
    assert format_latency(None) == "-"
    assert format_latency(0.0551) == "55.1ms"
    with pytest.raises(ValueError):
        quantile(BOUNDS, [1, 2, 3], 0.5)
    with pytest.raises(ValueError):
        quantile(BOUNDS, [1, 2, 3, 4], 1.5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=len(BOUNDS) + 1, max_size=len(BOUNDS) + 1),
       st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_quantile_is_monotonic_and_within_the_filled_buckets(
        counts: list[int], q1: float, q2: float) -> None:
    low, high = sorted((q1, q2))
    a, b = quantile(BOUNDS, counts, low), quantile(BOUNDS, counts, high)
    if sum(counts) == 0:
        assert a is None and b is None
        return
    assert a is not None and b is not None and a <= b
    edges = [0.0, *BOUNDS, math.inf]
    filled = [i for i, n in enumerate(counts) if n]
    assert edges[filled[0]] <= a and b <= edges[filled[-1] + 1]


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (0.24, 9.96, 42.7, 185, 3720, 183600)] == \
        ["0.2s", "10.0s", "42s", "3m05s", "1h02m", "2d03h"]
    assert format_seconds(None) == "-"


# -- tables -----------------------------------------------------------------------------------

def test_format_table_widths_come_from_content() -> None:
    lines = format_table(["POOL", "PID", "STATE"],
                         [["web", 12345, "serving"], ["background", 7, None]], right={1})
    assert lines == [
        "POOL          PID  STATE",
        "web         12345  serving",
        "background      7  -",
    ]
    # a header wider than every cell sets the width; bools read yes/no
    assert format_table(["BOOTED", "X"], [[True, 1], [False, 22]]) == \
        ["BOOTED  X", "yes     1", "no      22"]
    with pytest.raises(ValueError):
        format_table(["A", "B"], [[1]])


def test_front_status_text() -> None:
    lines = render_status(front_status(3))
    text = "\n".join(lines)
    assert lines[0].startswith("front ") and "pid 4242, wsgi_zmq 0.2.0, up 30s" in lines[0]
    pairs = {line[:15].strip(): line[15:] for line in lines[:lines.index("")]}
    assert pairs == {"front": "pid 4242, wsgi_zmq 0.2.0, up 30s",
                     "binds": "http://127.0.0.1:8000", "backend": "tcp://127.0.0.1:5555",
                     "connections": "3", "in flight": "1", "draining": "no",
                     "queue": "http 2 waiting (2 workers)",
                     "requests": "300 (2xx 294, 5xx 6)", "front answers": "503 3"}
    assert "\n\n" in text
    header = next(line for line in lines if line.startswith("POOL"))
    assert header.split() == ["POOL", "VERSION", "HOST", "MASTER", "PID", "STATE", "CAP",
                              "INFLIGHT", "SERVED", "BUSY%", "HEARD", "RING", "PIPE"]
    rows = lines[lines.index(header) + 1:]
    assert [row.split() for row in rows] == [
        ["web", "1.4", "h1", "4300", "4301", "serving", "2", "1", "150", "25.0", "0.2s", "4",
         "yes"],
        ["web", "1.4", "h1", "4300", "4302", "drained", "1", "0", "60", "25.0", "0.2s", "-",
         "-"],
    ]
    assert len({len(row) for row in rows}) == 1  # aligned columns (right-aligned numbers)


def test_pool_and_all_in_one_status_text() -> None:
    lines = render_status(POOL_STATUS)
    text = "\n".join(lines)
    assert "web, pid 4300, version 1.4" in lines[0]
    for expected in ("apps.echo:router", "2 wanted, 2 running",
                     "crash 1, max_requests 3, timeout 0", "reloads   2"):
        assert expected in text
    table = lines[lines.index(next(x for x in lines if x.lstrip().startswith("PID"))):]
    assert table[0].split() == ["PID", "AGE", "BOOTED", "STARTED", "LAST_BEAT"]
    assert table[1].split() == ["4301", "1", "yes", "12s", "0.4s"]

    both = "\n".join(render_status(front_status(1, master=POOL_STATUS)))
    assert both.index("front ") < both.index("web, pid 4300") and "4302" in both
    lost = render_status(front_status(1, master={"error": "the supervisor did not answer"}))
    assert lost[-1] == "supervisor: the supervisor did not answer"
    # a pool master still being built may leave keys out
    assert render_status({"kind": "pool", "pid": 9})[0].split() == ["pool", "pid", "9"]
    assert render_status({"kind": "new"}) == ['{"kind":"new"}']


def test_command_results_text() -> None:
    assert render_result("drain", {"drained": ["123@h", "124@h"], "target": "web"}) == \
        ["drained 2 worker(s) of web: 123@h, 124@h"]
    assert render_result("resume", {"resumed": [], "target": None}) == \
        ["resumed 0 worker(s)"]
    assert render_result("workers", {"previous": 2, "workers": 4}) == ["workers: 4 (was 2)"]
    assert render_result("reload", {"reloading": True, "workers": 2}) == \
        ["reloading with 2 worker(s)"]
    assert render_result("reload", None) == ["reload: done"]
    assert render_result("reload", {"reloads": 3}) == ['reload: {"reloads":3}']  # unknown
    help_lines = render_result("help", [{"command": "drain", "usage": "drain POOL",
                                         "help": "send it nothing new"}])
    assert help_lines[1].split()[:2] == ["drain", "POOL"] and help_lines[2].startswith("top")


# -- top frames -------------------------------------------------------------------------------

def test_top_figures_between_two_samples() -> None:
    figures = front_figures(Sample(0.0, front_status(1)), Sample(0.3, front_status(2)))
    assert figures["seconds"] == 10.0  # the front's own clock (uptime), not the local one
    assert figures["requests_per_second"] == 10.0
    assert figures["p50"] == pytest.approx(0.055) and figures["p99"] == pytest.approx(0.0991)
    assert figures["waiting"] == 2 and not figures["since_start"]
    rows = {w["pid"]: w for w in figures["workers"]}
    assert rows[4301]["requests_per_second"] == 5.0 and rows[4301]["busy"] == 0.25
    assert rows[4302]["requests_per_second"] == 2.0 and rows[4302]["busy"] == 0.1


def test_top_first_frame_and_restarts() -> None:
    first = front_figures(None, Sample(0.0, front_status(2)))
    assert first["requests_per_second"] is None and first["since_start"]
    assert first["p50"] == pytest.approx(0.055)  # over every request so far
    assert first["workers"][0]["busy"] == 0.25   # busy_share since the worker connected
    restarted = front_figures(Sample(0.0, front_status(5)),
                              Sample(1.0, front_status(1, pid=999)))
    assert restarted["seconds"] is None and restarted["requests_per_second"] is None
    quiet = front_figures(Sample(0.0, front_status(2)), Sample(1.0, front_status(2)))
    # the same uptime twice: timed by the local clock; no request in between: no quantile
    assert quiet["requests_per_second"] == 0.0 and quiet["p50"] is None


def test_top_without_metrics_counts_served() -> None:
    before, after = front_status(1, requests=None), front_status(3, requests=None)
    figures = front_figures(Sample(0.0, before), Sample(1.0, after))
    assert figures["requests_per_second"] == 7.0 and figures["rate_source"] == "workers"
    text = "\n".join(top_frame(Sample(0.0, before), Sample(1.0, after), "/c", 1.0))
    assert "requests/s 7.0 (served by workers)" in text and "no latency figures" in text


def test_top_frame_text() -> None:
    lines = top_frame(Sample(0.0, front_status(1)), Sample(1.0, front_status(2)), "/c.sock",
                      1.0, clock="12:00:00")
    assert lines[0].startswith("wsgi_zmq top  /c.sock  every 1s  12:00:00  front pid 4242")
    assert lines[1] == ("requests/s 10.0  p50 55.0ms  p99 99.1ms  queue 2  connections 3  "
                        "in flight 1")
    header = lines[3].split()
    assert header == ["POOL", "HOST", "PID", "STATE", "INFLIGHT/CAP", "REQ/S", "BUSY%", "HEARD"]
    assert lines[4].split() == ["web", "h1", "4301", "serving", "1/2", "5.0", "25.0", "0.2s"]
    assert lines[5].split() == ["web", "h1", "4302", "drained", "0/1", "2.0", "10.0", "0.2s"]
    first = top_frame(None, Sample(0.0, front_status(1)), "/c.sock", 1.0)
    assert "requests/s -  p50 (since start) 55.0ms" in first[1]
    failed = top_frame(None, None, "/c.sock", 2.0, error="cannot reach /c.sock")
    assert failed[-1] == "error: cannot reach /c.sock (trying again every 2s)"


def test_run_top_keeps_trying_after_the_first_frame() -> None:
    answers: list[Any] = [front_status(1), Unreachable("cannot reach /c"), front_status(3),
                          KeyboardInterrupt()]

    def ask_status() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    out, err = io.StringIO(), io.StringIO()
    code = run_top("/c", 1.0, None, 1.0, out, err, ask_status=ask_status, pause=lambda s: None)
    assert code == EXIT_OK and not answers and not err.getvalue()
    assert CLEAR not in out.getvalue()  # not a terminal: frames a blank line apart
    frames = out.getvalue().split("wsgi_zmq top")[1:]
    assert len(frames) == 3
    assert "requests/s -" in frames[0]
    assert "error: cannot reach /c (trying again every 1s)" in frames[1]
    # the third is against the first sample: 200 requests in 20 s of the front's uptime
    assert "requests/s 10.0" in frames[2]

    def refused() -> Any:
        raise ControlError("unknown command 'status'")

    err = io.StringIO()
    assert run_top("/c", 1.0, 3, 1.0, io.StringIO(), err, ask_status=refused) == EXIT_FAILED
    assert err.getvalue() == "ctl: unknown command 'status'\n"


# -- the CLI against a real control server ----------------------------------------------------

class CannedServer:
    """A real ``ControlServer`` on ``path``, served by a thread until ``close``."""

    def __init__(self, path: Path, table: dict[str, Any]) -> None:
        self.path = path
        self.server = ControlServer(listen(str(path)), Commands(table))
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            wait(self.server, [], 0.02)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.server.close(str(self.path))


def front_table(master: dict[str, Any] | None = None) -> dict[str, Any]:
    """A front's commands with canned answers; ``status`` counts its calls."""
    calls = iter(range(1, 1_000_000))

    def status(args: list[str]) -> dict[str, Any]:
        return front_status(next(calls), **({"master": master} if master else {}))

    def drain(args: list[str]) -> dict[str, Any]:
        if args != ["web"]:
            raise ControlError(f"no pool or worker {args[0]!r} is connected (pools: web)")
        return {"drained": ["4301@h1", "4302@h1"], "target": "web"}

    return {"status": (status, "", "the front"),
            "drain": (drain, "POOL|PID[@HOST]", "send a pool or a worker nothing new"),
            "resume": (lambda args: {"resumed": [], "target": None}, "[POOL|PID[@HOST]]",
                       "undo drain")}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Path]]:
    servers: list[CannedServer] = []

    def start(table: dict[str, Any]) -> Path:
        path = tmp_path / f"c{len(servers)}.sock"
        servers.append(CannedServer(path, table))
        return path

    try:
        yield start
    finally:
        for server in servers:
            server.close()


def test_cli_status_and_json(serve: Callable[[dict[str, Any]], Path]) -> None:
    path = serve(front_table())
    done = ctl(str(path), "status")
    assert done.returncode == EXIT_OK, done.stderr
    assert "pid 4242" in done.stdout and "4301" in done.stdout and "4302" in done.stdout
    assert done.stderr == ""
    raw = ctl(f"ipc://{path}", "status", "--json")
    assert raw.returncode == EXIT_OK, raw.stderr
    assert json.loads(raw.stdout) == front_status(2)  # the second call the server answered
    assert raw.stdout.startswith('{\n  "kind"')       # indented


def test_cli_other_commands(serve: Callable[[dict[str, Any]], Path]) -> None:
    path = serve(front_table())
    drained = ctl(str(path), "drain", "web")
    assert (drained.returncode, drained.stdout) == \
        (EXIT_OK, "drained 2 worker(s) of web: 4301@h1, 4302@h1\n")
    missing = ctl(str(path), "drain", "api")
    assert missing.returncode == EXIT_FAILED and missing.stdout == ""
    assert missing.stderr == "ctl: no pool or worker 'api' is connected (pools: web)\n"
    helped = ctl(str(path), "help")
    assert helped.returncode == EXIT_OK
    assert [line.split()[0] for line in helped.stdout.splitlines()] == \
        ["COMMAND", "drain", "help", "resume", "status", "top"]


def test_cli_all_in_one_and_pool_status(serve: Callable[[dict[str, Any]], Path]) -> None:
    both = ctl(str(serve(front_table(master=POOL_STATUS))), "status")
    assert both.returncode == EXIT_OK and "apps.echo:router" in both.stdout
    pool = ctl(str(serve({"status": (lambda args: POOL_STATUS, "", "the pool")})), "status")
    assert pool.returncode == EXIT_OK and "2 wanted, 2 running" in pool.stdout


def test_cli_failures(serve: Callable[[dict[str, Any]], Path], tmp_path: Path) -> None:
    path = serve(front_table())
    unknown = ctl(str(path), "bogus")
    assert unknown.returncode == EXIT_FAILED
    assert unknown.stderr.startswith("ctl: unknown command 'bogus'")
    assert unknown.stderr.count("\n") == 1
    gone = ctl(str(tmp_path / "nobody.sock"), "status")
    assert gone.returncode == EXIT_UNREACHABLE and gone.stderr.startswith("ctl: cannot reach")
    for usage in ([str(path)], [str(path), "status", "--count", "2"],
                  [str(path), "top", "--interval", "0"], ["tcp://127.0.0.1:9", "status"],
                  [str(path), "top", "--json"]):
        done = ctl(*usage)
        assert done.returncode == EXIT_USAGE, usage
        assert done.stderr.startswith("ctl: ") and done.stderr.count("\n") == 1, usage
    version = ctl("--version")
    assert (version.returncode, version.stdout) == (EXIT_OK, f"wsgi_zmq {__version__}\n")


def test_cli_silent_socket_times_out(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        mute.bind(str(path))
        mute.listen(4)  # connections complete (backlog) but nobody ever answers
        done = ctl(str(path), "status", "--timeout", "0.2")
        assert done.returncode == EXIT_UNREACHABLE
        assert done.stderr == f"ctl: {path} did not answer within 0.2 s\n"
        top = ctl(str(path), "top", "--timeout", "0.2", "--count", "1")
        assert top.returncode == EXIT_UNREACHABLE
    finally:
        mute.close()


def test_cli_top_in_a_terminal(serve: Callable[[dict[str, Any]], Path]) -> None:
    path = serve(front_table())
    code, output, errors = run_in_pty(str(path), "top", "--interval", "0.05", "--count", "2")
    assert (code, errors) == (EXIT_OK, "")
    assert output.count(CLEAR) == 2
    first, second = output.split(CLEAR)[1:]
    assert "requests/s -  p50 (since start) 55.0ms" in first  # no previous sample
    # 100 requests per 10 s of the front's uptime between the two canned statuses
    assert "requests/s 10.0  p50 55.0ms  p99 99.1ms  queue 2" in second
    assert "4301" in second and "25.0" in second


def test_bin_script_runs_the_tool(serve: Callable[[dict[str, Any]], Path]) -> None:
    """``bin/wsgi-zmq-ctl`` (and the console script of that name) is the same tool."""
    path = serve(front_table())
    script = str(ROOT / "bin" / "wsgi-zmq-ctl")
    done = subprocess.run([sys.executable, script, str(path), "status"], cwd=ROOT,
                          env=python_env(), capture_output=True, text=True, timeout=20)
    assert done.returncode == EXIT_OK, done.stderr
    assert "pid 4242" in done.stdout
    helped = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=python_env(),
                            capture_output=True, text=True, timeout=20)
    assert helped.stdout.startswith("usage: wsgi-zmq-ctl ")
