"""The control socket of a handler pool's master and of all-in-one, on real processes.

Every command goes through ``wsgi_zmq.control.call`` to the socket file the process was
started with (in ``tmp_path``); worker pids are checked against the master's log
(``logged_pids``), and the pool's stats file (``wsgi_zmq-pool-<master pid>.json`` beside
the liveness files) against ``status``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from support import exchange, get, logged_pids, pid_alive, poll_until, python_env
from wsgi_zmq.arbiter import tmp_dir
from wsgi_zmq.control import ControlError, call

APP = "apps.echo:router"
CONNECTED = r"Worker \d+@\S+ connected"


def stats_file(master: int) -> Path:
    return Path(tmp_dir()) / f"wsgi_zmq-pool-{master}.json"


def read_stats(master: int) -> dict[str, Any] | None:
    try:
        return json.loads(stats_file(master).read_text())
    except (OSError, ValueError):
        return None


def status_when(path: Path, check: Any, message: str, timeout: float = 20.0) -> dict:
    """Poll ``status`` until ``check(status)`` holds; that status."""
    def ready() -> dict | None:
        status = call(str(path), "status")
        return status if check(status) else None

    return poll_until(ready, timeout, interval=0.05, message=message)


def pids(status: dict) -> set[int]:
    return {w["pid"] for w in status["workers"]}


def all_booted(status: dict, count: int) -> bool:
    return len(status["workers"]) == count and all(w["booted"] for w in status["workers"])


def get_ok(port: int, path: str = "/echo") -> dict:
    [response], _ = exchange(port, get(path))
    assert response.status == 200, response.body
    return json.loads(response.body)


def test_pool_status_workers_reload_crash_and_stop(stack, tmp_path):
    """1. a front and a pool of 2 with --control-socket 2. status: kind pool, the master's
    pid, the 2 worker pids it logged, no restart; the stats file says the same 3. an
    unknown command and bad `workers` arguments are errors 4. `workers 3`: three workers
    run 5. `reload` (as HUP: --workers 2 is read again): two new pids replace the three
    old, and a GET is 200 from one of them
    6. SIGKILL one worker: one crash in status and in the stats file, and it is replaced
    7. a second pool on the same socket path exits 2 with one error line; the first still
    answers 8. TERM: exit 0, the socket file and the stats file are gone."""
    front, port, endpoint = stack.front()
    ctl = tmp_path / "pool.ctl"
    pool = stack.handler(APP, endpoint, "--workers", "2", "--control-socket", str(ctl))
    front.wait_for_log(CONNECTED, count=2)

    status = status_when(ctl, lambda s: all_booted(s, 2), "2 booted workers")
    assert status["kind"] == "pool"
    assert status["pid"] == pool.pid
    assert status["name"] == "default" and status["version"] == ""
    assert status["app"] == APP
    assert status["connect"] == [endpoint]
    assert status["workers_wanted"] == 2
    assert pids(status) == set(logged_pids(pool))
    assert status["restarts"] == {"timeout": 0, "max_requests": 0, "crash": 0}
    assert status["reloads"] == 0
    for worker in status["workers"]:
        assert worker["started"] >= 0 and worker["last_beat"] >= 0
    assert sorted(w["age"] for w in status["workers"]) == [1, 2]
    stats = poll_until(lambda: read_stats(pool.pid), message="the stats file")
    assert stats == {"pool": "default", "version": "", "master": pool.pid, "workers": 2,
                     "restarts": {"timeout": 0, "max_requests": 0, "crash": 0}}
    assert os.stat(ctl).st_mode & 0o777 == 0o600

    with pytest.raises(ControlError, match="unknown command 'nonsense'"):
        call(str(ctl), "nonsense")
    for bad in (["0"], ["x"], ["-2"], []):
        with pytest.raises(ControlError, match="workers"):
            call(str(ctl), "workers", bad)

    assert call(str(ctl), "workers", ["3"]) == {"previous": 2, "workers": 3}
    status = status_when(ctl, lambda s: all_booted(s, 3), "3 booted workers")
    assert status["workers_wanted"] == 3
    front.wait_for_log(CONNECTED, count=3)
    old = pids(status)

    # as HUP: the configuration is read again, so its --workers 2 is back
    assert call(str(ctl), "reload") == {"reloading": True, "workers": 2}
    status = status_when(ctl, lambda s: all_booted(s, 2) and not pids(s) & old,
                         "2 new workers after the reload", timeout=40)
    new = pids(status)
    assert status["reloads"] == 1
    assert new <= set(logged_pids(pool))
    poll_until(lambda: not any(pid_alive(p) for p in old), 30, message="old workers gone")
    assert get_ok(port)["pid"] in new
    assert status["restarts"] == {"timeout": 0, "max_requests": 0, "crash": 0}

    victim = min(new)
    os.kill(victim, signal.SIGKILL)
    status = status_when(ctl, lambda s: s["restarts"]["crash"] == 1 and all_booted(s, 2)
                         and victim not in pids(s), "the crash counted and replaced")
    assert status["restarts"] == {"timeout": 0, "max_requests": 0, "crash": 1}
    pool.wait_for_log(rf"Worker {victim} died \(signal 9, restart: crash\)")
    poll_until(lambda: (read_stats(pool.pid) or {}).get("restarts", {}).get("crash") == 1,
               message="the crash in the stats file")
    assert read_stats(pool.pid)["workers"] == 2

    second = subprocess.run([sys.executable, "-m", "wsgi_zmq.handler", APP, "--connect",
                             endpoint, "--control-socket", str(ctl)],
                            env=python_env(), capture_output=True, text=True, timeout=60)
    assert second.returncode == 2, second.stderr
    errors = [line for line in second.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, second.stderr
    assert str(ctl) in errors[0] and "in use" in errors[0]
    assert "Traceback" not in second.stderr
    assert "Booting worker" not in second.stderr
    assert call(str(ctl), "status")["pid"] == pool.pid  # still the first pool's

    stats_path = stats_file(pool.pid)
    assert pool.stop(signal.SIGTERM) == 0
    assert not ctl.exists()
    assert not stats_path.exists()


def test_max_requests_restarts_are_counted(stack, tmp_path):
    """1. a pool of one worker with --max-requests 3 and --control-socket 2. 10 GETs, each
    200 3. status counts at least one max_requests restart, and no crash; so does the
    stats file."""
    front, port, endpoint = stack.front()
    ctl = tmp_path / "pool.ctl"
    pool = stack.handler(APP, endpoint, "--workers", "1", "--max-requests", "3",
                         "--control-socket", str(ctl))
    front.wait_for_log(CONNECTED)
    for _ in range(10):
        get_ok(port)
    status = status_when(ctl, lambda s: s["restarts"]["max_requests"] >= 1,
                         "a max_requests restart")
    assert status["restarts"]["crash"] == 0 and status["restarts"]["timeout"] == 0
    pool.wait_for_log(r"Worker \d+ exited \(exit code 0, restart: max_requests\)")
    poll_until(lambda: (read_stats(pool.pid) or {}).get("restarts", {})
               .get("max_requests", 0) >= 1, message="max_requests in the stats file")


def test_a_new_master_removes_the_stats_files_of_masters_that_are_gone(stack):
    """1. stats files named for two PIDs that have exited (a master ended by SIGKILL leaves
    its own), one untouched for an hour, one just touched (it could be a live master's in
    another PID namespace), and one named for a live process (this test's) 2. a pool starts
    3. its master removed the first, with a log line, and left the other two 4. the pool
    serves."""
    gone = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    for proc in gone:
        proc.wait(20)
    stale, fresh, live = (stats_file(gone[0].pid), stats_file(gone[1].pid),
                          stats_file(os.getpid()))
    for path in (stale, fresh, live):
        path.write_text("{}")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(live, (hour_ago, hour_ago))
    try:
        front, port, endpoint = stack.front()
        pool = stack.handler(APP, endpoint, "--workers", "1")
        pool.wait_for_log(rf"Removed wsgi_zmq-pool-{gone[0].pid}\.json: its pool master is "
                          "gone")
        assert not stale.exists() and fresh.exists() and live.exists()
        front.wait_for_log(CONNECTED)
        get_ok(port)
    finally:
        for path in (stale, fresh, live):
            path.unlink(missing_ok=True)


def test_a_reload_for_a_changed_file_is_no_max_requests_restart(stack, tmp_path):
    """1. a pool of one worker with --reload and --max-requests 1000 on an app in tmp_path
    2. the file changes: the worker exits 0 and is replaced 3. status counts no restart of
    any reason (an exit 0 is max_requests only when the worker recycled itself) 4. the new
    worker serves the new text."""
    module = tmp_path / "reloadable_pool_app.py"
    source = ("def app(environ, start_response):\n"
              "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
              "    return [b'version {}\\n']\n")
    module.write_text(source.format(1))
    front, port, endpoint = stack.front()
    ctl = tmp_path / "pool.ctl"
    pool = stack.handler("reloadable_pool_app:app", endpoint, "--workers", "1",
                         "--pythonpath", str(tmp_path), "--reload", "--max-requests", "1000",
                         "--control-socket", str(ctl))
    front.wait_for_log(CONNECTED)
    assert exchange(port, get("/"))[0][0].body == b"version 1\n"
    mtime = module.stat().st_mtime
    module.write_text(source.format(2))
    os.utime(module, (mtime + 5, mtime + 5))
    pool.wait_for_log(r"Worker \d+ exited by itself \(exit code 0\); replacing it")
    poll_until(lambda: exchange(port, get("/"))[0][0].body == b"version 2\n", 15,
               interval=0.1, message="the new version to be served")
    status = call(str(ctl), "status")
    assert status["restarts"] == {"crash": 0, "max_requests": 0, "timeout": 0}


def test_timeout_restarts_are_counted(stack, tmp_path):
    """1. a pool of one worker with --timeout 2 2. a request stuck in the app is answered
    504 (the master aborted its worker) 3. status counts one timeout restart, no crash."""
    front, port, endpoint = stack.front()
    ctl = tmp_path / "pool.ctl"
    stack.handler(APP, endpoint, "--workers", "1", "--timeout", "2",
                  "--control-socket", str(ctl))
    front.wait_for_log(CONNECTED)
    [response], _ = exchange(port, get("/slow?seconds=600"), timeout=60)
    assert response.status == 504
    status = status_when(ctl, lambda s: s["restarts"]["timeout"] == 1 and all_booted(s, 1),
                         "a timeout restart")
    assert status["restarts"] == {"timeout": 1, "max_requests": 0, "crash": 0}


def test_all_in_one_front_serves_the_master_commands(stack, tmp_path):
    """1. all-in-one with --control-socket and one worker 2. status: kind front, with a
    master section listing the worker pid the master logged 3. `workers 2` through the
    front's socket: two workers run and connect 4. SIGKILL the front: the master forks a
    new one, which answers status with the master section again (a new link) 5. TERM:
    exit 0, the socket file is gone."""
    ctl = tmp_path / "all.ctl"
    proc, port = stack.all_in_one(APP, "--control-socket", str(ctl), workers=1)

    status = call(str(ctl), "status")
    assert status["kind"] == "front"
    master = status["master"]
    assert master["kind"] == "pool" and master["pid"] == proc.pid
    assert pids(master) == set(logged_pids(proc))
    assert master["connect"] == status["backend"]

    assert call(str(ctl), "workers", ["2"]) == {"previous": 1, "workers": 2}
    status = status_when(ctl, lambda s: all_booted(s["master"], 2), "2 booted workers")
    assert pids(status["master"]) == set(logged_pids(proc))
    proc.wait_for_log(CONNECTED, count=2)
    assert get_ok(port)["pid"] in pids(status["master"])

    [front] = logged_pids(proc, "front")
    os.kill(front, signal.SIGKILL)
    poll_until(lambda: len(logged_pids(proc, "front")) == 2, 30, message="a new front")

    def master_status() -> dict | None:
        try:
            status = call(str(ctl), "status")
        except ControlError:
            return None  # the new front is starting
        ok = status["pid"] != front and "error" not in status["master"]
        return status if ok else None

    status = poll_until(master_status, 30, message="status from the new front")
    assert status["pid"] == logged_pids(proc, "front")[1]
    assert len(status["master"]["workers"]) == 2
    assert call(str(ctl), "workers", ["1"]) == {"previous": 2, "workers": 1}

    assert proc.stop(signal.SIGTERM) == 0
    assert not ctl.exists()


def test_usr2_new_master_takes_the_control_socket_over(stack, tmp_path):
    """1. a pool with --control-socket 2. USR2: the new master starts beside it (the
    socket in use does not stop it: the old master passes it on) 3. TERM the old master:
    it exits 0 and leaves the socket file 4. status is the new master's, with the worker
    it logged 5. TERM the new master (by its pid): the socket file is gone."""
    front, _, endpoint = stack.front()
    ctl = tmp_path / "pool.ctl"
    old = stack.handler(APP, endpoint, "--workers", "1", "--control-socket", str(ctl))
    front.wait_for_log(CONNECTED)
    old.send_signal(signal.SIGUSR2)
    new_master = int(old.wait_for_log(r"Started a new master, pid (\d+)").group(1))
    try:
        worker = int(old.wait_for_log(rf"\[{new_master}\] \[INFO\] Booting worker with "
                                      rf"pid: (\d+)").group(1))
        front.wait_for_log(rf"Worker {worker}@\S+ connected")
        old.send_signal(signal.SIGTERM)
        assert old.wait(20) == 0
        assert ctl.exists()
        status = status_when(ctl, lambda s: all_booted(s, 1), "the new master's worker")
        assert status["pid"] == new_master
        assert pids(status) == {worker}
        assert "[ERROR]" not in old.log()
    finally:
        try:
            os.kill(new_master, signal.SIGTERM)
        except ProcessLookupError:
            pass
        poll_until(lambda: not pid_alive(new_master), 20, message="the new master to exit")
    assert not ctl.exists()
