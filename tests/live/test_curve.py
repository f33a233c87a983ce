"""CURVE on the backend, through real processes: who may be a worker, and what the front
refuses. Keys are made in each test with ``python -m wsgi_zmq.keys generate``."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from support import ROOT, exchange, get, keys, logged_pids, poll_until, python_env
from support.load import Load


def curve_front(stack, tmp_path: Path, admitted: list[str], *args: str):
    """A front with CURVE on a wildcard backend, admitting the named pools' keys."""
    made = keys(tmp_path / "keys", "front", "pool", "other", "rogue")
    allow = tmp_path / "allow"
    allow.mkdir()
    for name in admitted:
        (allow / f"{name}.key").write_bytes(made[name][0].read_bytes())
    front, port, endpoint = stack.front("--curve-secret-key", str(made["front"][1]),
                                        "--curve-allow", str(allow), *args)
    return front, port, endpoint.replace("0.0.0.0", "127.0.0.1"), made, allow


def pool(stack, endpoint: str, made, name: str, server: str = "front", *args: str):
    return stack.handler("apps.echo:router", endpoint, "--curve-secret-key",
                         str(made[name][1]), "--curve-server-key", str(made[server][0]),
                         *args)


def served_by(port: int, count: int) -> set[int]:
    pids = set()
    for _ in range(count):
        [response], _ = exchange(port, get("/echo"))
        assert response.status == 200
        pids.add(json.loads(response.body)["pid"])
    return pids


def test_only_admitted_keys_serve_and_each_refusal_is_logged(stack, tmp_path):
    """1. a front with CURVE on tcp://0.0.0.0:* admitting one pool's key 2. that pool, a
    pool with an unlisted key, a pool that trusts a wrong server key, and a plaintext pool
    connect 3. every request is served by the admitted pool's worker 4. the front logged a
    refusal for each of the others, and none of them ever reported a request."""
    front, port, endpoint, made, _ = curve_front(
        stack, tmp_path, ["pool"], "--backend", "tcp://0.0.0.0:*")
    good = pool(stack, endpoint, made, "pool")
    unlisted = pool(stack, endpoint, made, "rogue")
    wrong_server = pool(stack, endpoint, made, "other", "rogue")
    plaintext = stack.handler("apps.echo:router", endpoint)
    front.wait_for_log(r"Worker \d+@\S+ connected")
    front.wait_for_log(r"Refused a worker: the key of a worker at \S+ is not in curve_allow")
    front.wait_for_log(r"Refused a worker: its handshake broke the protocol", count=1)
    poll_until(lambda: front.log().count("Refused a worker") >= 3, 20,
               message="a refusal for each of the three others")
    assert served_by(port, 20) == set(logged_pids(good))
    assert front.log().count("connected, capacity") == 1
    for other in (unlisted, wrong_server, plaintext):
        assert "Booting worker" in other.log()
        assert other.alive()


def test_a_key_removed_on_hup_stops_its_pool_and_nothing_fails(stack, tmp_path):
    """1. two admitted pools under a keep-alive load 2. one pool's key file is removed from
    curve_allow and the front gets HUP 3. the front says that worker gets nothing more, and
    every later request is served by the other pool 4. the load saw 0 failed requests."""
    front, port, endpoint, made, allow = curve_front(stack, tmp_path, ["pool", "other"])
    kept = pool(stack, endpoint, made, "pool")
    removed = pool(stack, endpoint, made, "other")
    front.wait_for_log(r"Worker \d+@\S+ connected", count=2)
    with Load(port, clients=4, seconds=30) as load:
        load.wait_for(200)
        (allow / "other.key").unlink()
        front.send_signal(signal.SIGHUP)
        front.wait_for_log(r"its key was removed from curve_allow")
        front.wait_for_log(r"CURVE on the backend: 1 worker key\(s\) admitted")
        answered = load.counts.answered
        load.wait_for(answered + 200)
    assert load.counts.failed == 0, load.failures[:5]
    assert served_by(port, 20) == set(logged_pids(kept))
    removed.wait_for_log(r"let this worker go")


def test_a_plaintext_backend_others_can_reach_is_refused(tmp_path):
    """1. a front asked for tcp://0.0.0.0 without CURVE 2. one line naming the endpoint and
    the fix, exit 2 3. with --insecure-backend it starts."""
    argv = [sys.executable, "-m", "wsgi_zmq.front", "--bind", "127.0.0.1:0",
            "--backend", "tcp://0.0.0.0:*"]
    result = subprocess.run(argv, capture_output=True, text=True, env=python_env(),
                            cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "tcp://0.0.0.0:*" in line and "--insecure-backend" in line and "curve" in line
    insecure = subprocess.Popen([*argv, "--insecure-backend"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=python_env(), cwd=ROOT,
                                text=True)
    try:
        assert insecure.stdout is not None
        for line in insecure.stdout:
            if "Backend at:" in line:
                break
    finally:
        insecure.send_signal(signal.SIGINT)
        insecure.wait(20)
        assert insecure.stdout is not None
        insecure.stdout.close()


def test_an_ipc_backend_is_owner_only(stack, tmp_path):
    """1. a front on ipc:// 2. its socket file is mode 0600 3. a handler serves through
    it."""
    path = tmp_path / "backend.sock"
    front = stack.start(["wsgi_zmq.front", "--bind", "127.0.0.1:0", "--backend",
                         f"ipc://{path}"], "front")
    port = int(front.wait_for_log(r"Listening at: http://[\d.]+:(\d+)").group(1))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    stack.handler("apps.echo:router", f"ipc://{path}")
    front.wait_for_log(r"Worker \d+@\S+ connected")
    [response], _ = exchange(port, get("/"))
    assert response.status == 200


def test_all_in_one_with_curve_admits_its_own_workers(stack, tmp_path):
    """1. all-in-one with a key pair and an empty allowlist on a wildcard backend 2. its
    own workers use the front's key pair, which it admits: they serve."""
    made = keys(tmp_path / "keys", "front")
    allow = tmp_path / "allow"
    allow.mkdir()
    proc, port = stack.all_in_one("apps.echo:router", "--curve-secret-key",
                                  str(made["front"][1]), "--curve-allow", str(allow),
                                  "--backend", "tcp://0.0.0.0:*")
    [response], _ = exchange(port, get("/"))
    assert response.status == 200
