"""Running ``python -m wsgi_zmq.ctl`` in tests: plainly (``ctl``) or with its output on a
pseudo-terminal (``run_in_pty``, for ``top``)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from support import ROOT, python_env


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsgi_zmq.ctl", *args], cwd=ROOT,
                          env=python_env(), capture_output=True, text=True, timeout=20)


def run_in_pty(*args: str, timeout: float = 15.0) -> tuple[int, str, str]:
    """Run the CLI with its stdout on a pseudo-terminal: (exit code, output, stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "wsgi_zmq.ctl", *args], cwd=ROOT,
                            env=python_env(), stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.PIPE)
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no end of output within {timeout}s: {bytes(output)!r}")
            ready, _, _ = select.select([master], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal (it exited)
                break
            if not data:
                break
            output += data
        code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        assert proc.stderr is not None
        errors = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
        if proc.stderr is not None:
            proc.stderr.close()
    return code, output.decode(), errors
