"""``--profile DIR`` on one of two handler pools of a front: the profiled pool leaves one
``pstats`` file per sampled request, about ``--profile-rate`` of what it served, named by
time, method and sanitised path; the other pool is untouched. Bad values exit 2 with one
line naming the setting."""

from __future__ import annotations

import json
import math
import os
import pstats
import re
import subprocess
import sys
from collections import Counter

import pytest

from support import ROOT, exchange, get, logged_pids, python_env
from wsgi_zmq.handler.profile import NAME

CONNECTED = r"Worker \d+@\S+ connected"
PATHS = {"/shop/items/42": "shop.items.42", "/": "root",
         "/odd/../dots/%20sp%C3%A9ce": "odd.dots._sp_ce"}


def test_one_pool_profiles_its_share_and_the_other_pool_nothing(stack, tmp_path):
    """1. a front; pool A (2 workers) with --profile DIR --profile-rate 0.25, pool B (1
    worker) without, B in a directory of its own 2. 400 GETs over three paths through the
    front 3. the files in DIR are 25% of what A served (by the pids in the echo bodies),
    within 4 standard deviations of the binomial; each loads in pstats, names GET, the
    sanitised path and one of A's worker pids 4. nothing is profiled anywhere else."""
    front, port, endpoint = stack.front()
    prof = tmp_path / "prof"  # missing: the workers make it
    pool_a = stack.handler("apps.echo:echo", endpoint, "--workers", "2", "--profile",
                           str(prof), "--profile-rate", "0.25")
    b_dir = tmp_path / "b-cwd"
    b_dir.mkdir()
    pool_b = stack.handler("apps.echo:echo", endpoint, cwd=b_dir)
    front.wait_for_log(CONNECTED, count=3)
    pool_a.wait_for_log(rf"(?m)Profiling 25% of requests into {re.escape(str(prof))}$",
                        count=2)
    assert "Profiling" not in pool_b.log()
    a_pids, b_pids = set(logged_pids(pool_a)), set(logged_pids(pool_b))
    assert len(a_pids) == 2 and len(b_pids) == 1
    served: Counter[int] = Counter()
    by_path: Counter[str] = Counter()
    paths = list(PATHS)
    for number in range(400):
        path = paths[number % len(paths)]
        [response], _ = exchange(port, get(path))
        assert response.status == 200, response.body
        served[json.loads(response.body)["pid"]] += 1
        by_path[path] += 1
    assert set(served) <= a_pids | b_pids
    n_a = sum(served[pid] for pid in a_pids)
    assert n_a > 50 and sum(served[pid] for pid in b_pids) > 50, served  # both took a share
    # each file is written before its response is sent: all are there now
    files = sorted(prof.iterdir())
    expected, sd = 0.25 * n_a, math.sqrt(n_a * 0.25 * 0.75)
    assert abs(len(files) - expected) <= 4 * sd, (len(files), n_a)
    for path in files:
        match = NAME.fullmatch(path.name)
        assert match, path.name
        assert match["method"] == "GET" and match["path"] in PATHS.values()
        assert int(match["pid"]) in a_pids
        stats = pstats.Stats(str(path))
        assert stats.total_calls > 0
        assert any(func[2] == "echo" for func in stats.stats), "the app is in the profile"
    # nothing profiled for pool B, nor anywhere but DIR
    assert list(b_dir.iterdir()) == []
    assert {p.parent for p in tmp_path.rglob("*.prof")} <= {prof}


def run_handler(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsgi_zmq.handler", "apps.echo:echo",
                           "--connect", "ipc:///nonexistent/nowhere", *args], cwd=ROOT,
                          env=python_env(), capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("args", "message"), [
    (("--profile-rate", "0"), "Invalid value for profile_rate: '0': expected a share"),
    (("--profile-rate", "1.5"), "Invalid value for profile_rate: '1.5': expected a share"),
    (("--profile", "/dev/null/prof"), "Invalid value for profile: '/dev/null/prof': "
                                      "/dev/null is not a directory"),
])
def test_bad_profile_settings_exit_2_with_one_line_naming_them(args, message):
    result = run_handler(*args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_directory_the_pool_cannot_write_exits_2(tmp_path):
    """A read-only directory, and a missing one under it."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        for target, problem in ((locked, f"{locked} is not writable"),
                                (locked / "prof", f"cannot be made: {locked} is not "
                                                  "writable")):
            result = run_handler("--profile", str(target))
            assert result.returncode == 2, result.stderr
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "Invalid value for profile" in lines[0], lines
            assert problem in lines[0], lines
    finally:
        locked.chmod(0o700)
