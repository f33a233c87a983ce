"""STYLE.md "What may import what", checked in fresh interpreters.

Each test imports one module in a new ``python`` process (this one has long since imported
gevent and zmq) and reports what that import pulled in:

1. the pure modules (``protocol``, ``config``, ``handler.environ``, ``front.parser``) import
   neither gevent nor zmq and leave logging untouched;
2. ``arbiter`` and ``cli`` never import gevent or ``zmq.green`` at module level (the arbiter
   forks, and no hub may exist in the parent); ``wsgi_zmq``, ``wsgi_zmq.cli``,
   ``wsgi_zmq.front`` and ``wsgi_zmq.handler`` promise in their docstrings to import zmq
   neither, and are held to it;
3. a worker's constructor is cheap and runs before the fork: no zmq Context, no socket, no
   signal handler until ``init_process()``, whichever runner and layer it is built from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

PURE = ["wsgi_zmq.protocol", "wsgi_zmq.config", "wsgi_zmq.handler.environ",
        "wsgi_zmq.front.parser", "wsgi_zmq.process", "wsgi_zmq.mdp", "wsgi_zmq.ring"]
NO_ZMQ = ["wsgi_zmq", "wsgi_zmq.cli", "wsgi_zmq.front", "wsgi_zmq.handler", "wsgi_zmq.keys"]
NO_GEVENT = ["wsgi_zmq.arbiter", "wsgi_zmq.client", "wsgi_zmq.handler.job"]

REPORT = """
import importlib, json, logging, sys
importlib.import_module(sys.argv[1])
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("gevent", "zmq")),
    "root_handlers": len(logging.getLogger().handlers),
    "error_handlers": len(logging.getLogger("wsgi_zmq.error").handlers),
}))
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WSGI_ZMQ_CMD_ARGS"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def imported_by(module: str) -> dict[str, Any]:
    result = run_python(REPORT, module)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    report["stderr"] = result.stderr
    return report


def _gevent(modules: list[str]) -> list[str]:
    return [m for m in modules if m == "gevent" or m.startswith("gevent.") or
            m == "zmq.green" or m.startswith("zmq.green.")]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_neither_gevent_nor_zmq(module: str) -> None:
    report = imported_by(module)
    assert report["modules"] == [], f"{module} imported {report['modules']}"
    # no logging side effects at import: no handler installed, nothing written
    assert report["root_handlers"] == report["error_handlers"] == 0
    assert report["stderr"] == ""


@pytest.mark.parametrize("module", NO_ZMQ)
def test_package_and_cli_import_neither_gevent_nor_zmq(module: str) -> None:
    report = imported_by(module)
    assert report["modules"] == [], f"{module} imported {report['modules']}"


@pytest.mark.parametrize("module", NO_GEVENT)
def test_arbiter_does_not_import_gevent(module: str) -> None:
    report = imported_by(module)
    assert _gevent(report["modules"]) == [], f"{module} imported {report['modules']}"


def test_front_and_supervisor_do_not_import_each_other() -> None:
    """The process helpers both use live in ``wsgi_zmq.process``: the front never imports
    its supervisor, and the supervisor imports the front only when it forks one."""
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('wsgi_zmq.'))))")
    front = json.loads(run_python(code, "wsgi_zmq.front.server").stdout)
    arbiter = json.loads(run_python(code, "wsgi_zmq.arbiter").stdout)
    assert "wsgi_zmq.arbiter" not in front
    assert "wsgi_zmq.front.server" not in arbiter
    assert "wsgi_zmq.process" in front and "wsgi_zmq.process" in arbiter


WORKER = """
import gc, json, signal, sys
import zmq
from wsgi_zmq.config import Config
from wsgi_zmq.handler.worker import build_worker

cfg = Config("handler")
for name, value in zip(sys.argv[1::2], sys.argv[2::2]):
    cfg.set(name, value)
sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGABRT, signal.SIGALRM)
before = {sig: signal.getsignal(sig) for sig in sigs}
worker = build_worker(cfg, None, ["tcp://127.0.0.1:1"], age=1, ppid=1)
gc.collect()
print(json.dumps({
    "contexts": sum(isinstance(o, zmq.Context) for o in gc.get_objects()),
    "sockets": sum(isinstance(o, zmq.Socket) for o in gc.get_objects()),
    "singleton": zmq.Context._instance is not None,
    "worker_context": worker.context is not None,
    "signals_changed": [sig.name for sig, h in before.items() if signal.getsignal(sig) != h],
    "gevent": sorted(m for m in sys.modules if m.split(".")[0] == "gevent"
                     or m.startswith("zmq.green")),
    "parts": [type(worker.runner).__name__, type(worker.layer).__name__],
}))
"""


@pytest.mark.parametrize(("settings", "parts"), [
    ((), ["SyncRunner", "WsgiLayer"]),
    (("worker_class", "gevent"), ["GeventRunner", "WsgiLayer"]),
    (("job", "apps.jobs:echo"), ["SyncRunner", "JobLayer"]),
    (("worker_class", "gevent", "job", "apps.jobs:echo"), ["GeventRunner", "JobLayer"]),
])
def test_worker_constructor_creates_no_context_socket_or_signal_handler(
        settings: tuple[str, ...], parts: list[str]) -> None:
    """``build_worker`` picks the runner and the layer from ``worker_class`` and ``job``;
    for each of the four, the constructor (run before the fork) creates no zmq context or
    socket, installs no signal handler, imports neither gevent nor ``zmq.green`` and does
    not import the app."""
    result = run_python(WORKER, *settings)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"contexts": 0, "sockets": 0, "singleton": False,
                                         "worker_context": False, "signals_changed": [],
                                         "gevent": [], "parts": parts}
