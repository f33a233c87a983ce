"""The front's control socket (``--control-socket``) with real fronts and handler pools:
``status`` lists the pools and their workers, ``drain`` and ``resume`` move traffic under load
with nothing lost, and bad commands or a busy socket path get clear answers."""

from __future__ import annotations

import json
import os
import stat

import pytest

from support import exchange, get, logged_pids, poll_until
from support.ctl import ctl, run_in_pty
from support.load import Load
from wsgi_zmq.control import ControlError, call


def front_with_control(stack, tmp_path, *args):
    """A front on free ports with two backend endpoints and a control socket."""
    path = str(tmp_path / "front.ctl")
    proc = stack.start(["wsgi_zmq.front", "--bind", "127.0.0.1:0",
                        "--backend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
                        "--control-socket", path, *args], "front")
    port = int(proc.wait_for_log(r"Listening at: http://[\d.]+:(\d+)").group(1))
    endpoints = proc.wait_for_log(r"Backend at: (\S+)").group(1).split(",")
    proc.wait_for_log(r"Control socket at: ")
    return proc, port, endpoints, path


def pools_by_name(path):
    return {pool["name"]: pool for pool in call(path, "status")["pools"]}


def served(path, name):
    return sum(w["served"] for w in pools_by_name(path)[name]["workers"])


def test_status_lists_two_pools_on_two_endpoints_with_their_pids(stack, tmp_path):
    """1. a front with two backend endpoints; pool web (v1, two workers) connects to the
    first, pool api (one worker) to the second 2. ``status`` names both pools, with the
    version, the master's pid and exactly the worker pids each master logged 3. after
    traffic the served counts add up to the requests sent."""
    front, port, endpoints, path = front_with_control(stack, tmp_path, "--route", "/=web",
                                                      "--route", "/api=api")
    web = stack.handler("apps.echo:echo", endpoints[0], "--workers", "2", "--pool", "web",
                        "--pool-version", "v1")
    api = stack.handler("apps.echo:echo", endpoints[1], "--pool", "api")
    front.wait_for_log(r"Worker \d+@\S+ connected", count=3)
    pools = poll_until(lambda: (lambda p: p if len(p) == 2 else None)(pools_by_name(path)))
    assert pools["web"]["version"] == "v1" and pools["api"]["version"] == ""
    assert pools["web"]["master"] == web.pid and pools["api"]["master"] == api.pid
    assert sorted(w["pid"] for w in pools["web"]["workers"]) == sorted(logged_pids(web))
    assert [w["pid"] for w in pools["api"]["workers"]] == logged_pids(api)
    for target in ("/", "/api/x", "/", "/api", "/", "/apis"):  # /apis is web's
        answer = exchange(port, get(target))[0][0]
        assert answer.status == 200
        assert json.loads(answer.body)["pid"] in logged_pids(api if target.startswith(
            "/api/") or target == "/api" else web)
    status = poll_until(lambda: (lambda s: s if sum(
        w["served"] for p in s["pools"] for w in p["workers"]) == 6 else None)(
        call(path, "status")))
    assert status["kind"] == "front" and status["pid"] == front.pid
    assert status["backend"] == endpoints
    assert status["requests"]["total"] == 6 and status["requests"]["by_status"] == {"2xx": 6}
    for pool in status["pools"]:
        for worker in pool["workers"]:
            assert worker["state"] == "serving" and worker["in_flight"] == 0
            assert 0 <= worker["busy_share"] <= 1 and worker["last_heard"] < 5
    # the command a user types: a table with a line per worker, its pool and master
    done = ctl(path, "status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for pid in logged_pids(web) + logged_pids(api):
        [line] = [line for line in lines if f" {pid} " in f" {line} "]
        pool, master = ("web", web.pid) if pid in logged_pids(web) else ("api", api.pid)
        assert line.split()[0] == pool and str(master) in line.split()
    assert f"pid {front.pid}" in done.stdout


def test_top_redraws_a_live_front_in_a_terminal(stack, tmp_path):
    """``ctl top`` on a pseudo-terminal against a real front under load: two redraws, the
    second with a request rate and a latency figure, and a line for the worker."""
    front, port, endpoints, path = front_with_control(stack, tmp_path)
    pool = stack.handler("apps.echo:echo", endpoints[0])
    front.wait_for_log(r"Worker \d+@\S+ connected")
    with Load(port, clients=2, seconds=30) as load:
        load.wait_for(50)
        code, output, errors = run_in_pty(path, "top", "--interval", "0.5", "--count", "2")
    assert (code, errors) == (0, "")
    frames = output.split("\x1b[H\x1b[2J")[1:]
    assert len(frames) == 2
    second = frames[1]
    rate = float(second.split("requests/s", 1)[1].split()[0])
    assert rate > 0 and "p99" in second and "ms" in second
    assert str(logged_pids(pool)[0]) in second
    assert load.finish().failed == 0


def by_version(path):
    return {pool["version"]: pool for pool in call(path, "status")["pools"]}


def served_by(path, version):
    return sum(w["served"] for w in by_version(path)[version]["workers"])


def test_drain_and_resume_a_pool_version_under_load_lose_nothing(stack, tmp_path):
    """1. versions a and b of the pool default on one front, 4 keep-alive clients
    2. ``drain default/a``: a's served count stops moving (once what it held is done) while
    b's grows; status says drained 3. ``resume``: a serves again 4. the load saw 0 failed
    requests."""
    front, port, endpoints, path = front_with_control(stack, tmp_path)
    stack.handler("apps.echo:echo", endpoints[0], "--pool-version", "a")
    stack.handler("apps.echo:echo", endpoints[1], "--pool-version", "b")
    front.wait_for_log(r"Worker \d+@\S+ connected", count=2)
    with Load(port, clients=4, seconds=60) as load:
        load.wait_for(200)
        poll_until(lambda: served_by(path, "a") > 0 and served_by(path, "b") > 0)
        result = call(path, "drain", ["default/a"])
        assert len(result["drained"]) == 1
        assert by_version(path)["a"]["workers"][0]["state"] == "drained"
        poll_until(lambda: by_version(path)["a"]["in_flight"] == 0)
        before_a, before_b = served_by(path, "a"), served_by(path, "b")
        load.wait_for(load.counts.answered + 300)
        assert served_by(path, "a") == before_a
        assert served_by(path, "b") > before_b
        result = call(path, "resume", ["default/a"])
        assert len(result["resumed"]) == 1
        poll_until(lambda: served_by(path, "a") > before_a)
    counts = load.finish()
    assert counts.failed == 0, (counts, load.failures[:5])
    assert counts.answered > 500


def test_drained_worker_and_pools_that_join_later(stack, tmp_path):
    """A worker drained by pid gets nothing new while its pool-mate serves; a pool drained
    by name stays drained for a worker that connects later, and the health check says 503
    (drained) until ``resume``."""
    front, port, endpoints, path = front_with_control(stack, tmp_path, "--health-path",
                                                      "/healthz", "--route", "/=web")
    web = stack.handler("apps.echo:echo", endpoints[0], "--workers", "2", "--pool", "web")
    front.wait_for_log(r"Worker \d+@\S+ connected", count=2)
    first, second = logged_pids(web)[:2]
    assert call(path, "drain", [str(first)])["drained"][0].startswith(f"{first}@")
    for _ in range(10):
        answer = exchange(port, get("/"))[0][0]
        assert answer.status == 200 and json.loads(answer.body)["pid"] == second
    call(path, "resume", [str(first)])
    call(path, "drain", ["web"])
    late = stack.handler("apps.echo:echo", endpoints[1], "--pool", "web")
    front.wait_for_log(r"Worker \d+@\S+ connected", count=3)
    pools = pools_by_name(path)
    assert {w["pid"]: w["state"] for w in pools["web"]["workers"]}[logged_pids(late)[0]] \
        == "drained"
    health = exchange(port, get("/healthz"))[0][0]
    assert health.status == 503 and b"drained" in health.body
    call(path, "resume")
    assert exchange(port, get("/"))[0][0].status == 200
    assert exchange(port, get("/healthz"))[0][0].status == 200


def test_bad_commands_get_clear_errors_and_the_front_serves_on(stack, tmp_path):
    """An unknown command, a drain of a pool nobody runs, a resume of what is not drained,
    a request that is not JSON: each an error naming the problem; the socket is owner-only;
    the front serves on."""
    front, port, endpoints, path = front_with_control(stack, tmp_path)
    stack.handler("apps.echo:echo", endpoints[0])
    front.wait_for_log(r"Worker \d+@\S+ connected")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ControlError, match="unknown command 'bogus'.*status"):
        call(path, "bogus")
    with pytest.raises(ControlError, match="no pool or worker 'nope' is connected.*default"):
        call(path, "drain", ["nope"])
    with pytest.raises(ControlError, match="usage: drain"):
        call(path, "drain")
    with pytest.raises(ControlError, match="is not drained"):
        call(path, "resume", ["default"])
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"this is not json\n")
        assert b"not one line of JSON" in sock.recv(4096)
    names = {entry["command"] for entry in call(path, "help")}
    assert names == {"status", "drain", "resume", "weight", "promote", "help"}
    assert exchange(port, get("/"))[0][0].status == 200


def test_socket_in_use_refuses_the_start_and_a_stale_one_is_replaced(stack, tmp_path):
    """A second front on the same control socket path exits 2 with one line naming it;
    after a front is killed with SIGKILL its stale socket file is replaced by the next
    front; a front stopped with TERM removes its file."""
    import signal

    front, port, endpoints, path = front_with_control(stack, tmp_path)
    second = stack.start(["wsgi_zmq.front", "--bind", "127.0.0.1:0", "--backend",
                          "tcp://127.0.0.1:*", "--control-socket", path], "second")
    assert second.wait(20) == 2
    assert "control_socket" in second.log() and "in use" in second.log()
    assert call(path, "status")["pid"] == front.pid  # the first one is untouched
    front.stop(signal.SIGKILL)
    assert os.path.exists(path)
    third = stack.start(["wsgi_zmq.front", "--bind", "127.0.0.1:0", "--backend",
                         "tcp://127.0.0.1:*", "--control-socket", path], "third")
    third.wait_for_log(r"Control socket at: ")
    assert call(path, "status")["pid"] == third.pid
    third.stop(signal.SIGTERM)
    assert not os.path.exists(path)
