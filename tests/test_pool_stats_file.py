"""The pool master's stats file (``wsgi_zmq-pool-PID.json``): written when the figures
change, touched every ``STATS_TOUCH_SECONDS`` while they do not, and removed by a starting
master once it is stale (``remove_stale_stats``). Real files in ``tmp_path``; the master's
clock is moved by setting when it last touched the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from wsgi_zmq import arbiter
from wsgi_zmq.config import Config


def _master(tmp_path: Path) -> arbiter.Arbiter:
    master = arbiter.Arbiter(Config("handler"), "apps.echo:router", ["tcp://127.0.0.1:1"])
    master.stats_path = str(tmp_path / f"wsgi_zmq-pool-{master.pid}.json")
    return master


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(20)
    return proc.pid


def test_unchanged_figures_are_touched_not_rewritten(tmp_path: Path) -> None:
    """1. the first write_stats writes the figures 2. a second one at once changes
    nothing 3. once STATS_TOUCH_SECONDS have passed the file's mtime moves, its content
    the same 4. changed figures are written at once."""
    master = _master(tmp_path)
    path = Path(master.stats_path)
    master.write_stats()
    first = json.loads(path.read_text())
    assert first["master"] == master.pid and first["restarts"]["crash"] == 0
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    master.write_stats()
    assert path.stat().st_mtime == hour_ago
    master.stats_touched -= arbiter.STATS_TOUCH_SECONDS
    master.write_stats()
    assert path.stat().st_mtime > hour_ago + 3000
    assert json.loads(path.read_text()) == first
    master.restarts["crash"] += 1
    master.write_stats()
    assert json.loads(path.read_text())["restarts"]["crash"] == 1
    master.remove_stats()
    assert not path.exists()


def test_only_old_files_of_gone_pids_are_removed(tmp_path: Path) -> None:
    """A file is removed only when its PID is gone and it is older than
    STATS_STALE_SECONDS; other names in the directory are never touched."""
    hour_ago = time.time() - 3600
    gone = _dead_pid()
    files = {name: tmp_path / name for name in (
        f"wsgi_zmq-pool-{gone}.json",            # gone and old: removed
        f"wsgi_zmq-pool-{_dead_pid()}.json",     # gone, but touched just now: kept
        f"wsgi_zmq-pool-{os.getpid()}.json",     # alive and old: kept
        f"wsgi_zmq-pool-{gone}.json.tmp",        # not a stats file's name: kept
        "wsgi_zmq-pool-x.json")}                 # not a PID: kept
    for name, path in files.items():
        path.write_text("{}")
        if "x" in name or str(gone) in name or str(os.getpid()) in name:
            os.utime(path, (hour_ago, hour_ago))
    arbiter.remove_stale_stats(str(tmp_path))
    left = {path.name for path in tmp_path.iterdir()}
    assert left == set(files) - {f"wsgi_zmq-pool-{gone}.json"}
    arbiter.remove_stale_stats(str(tmp_path / "missing"))  # no directory: nothing happens
