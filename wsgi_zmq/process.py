"""What a supervisor and a front both do to the process they run in: its pidfile, its user
and group, its title in ``ps``.

The arbiter (``wsgi_zmq.arbiter``) and a standalone front (``wsgi_zmq.front.server``) use
these; neither imports the other. Pure standard library: no gevent, no zmq.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from wsgi_zmq.errors import ConfigError


def set_process_title(title: str, name: str | None = None) -> None:
    """``wsgi_zmq: <title> [name]`` in ps, when setproctitle is installed."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    setproctitle(f"wsgi_zmq: {title}" + (f" [{name}]" if name else ""))


def set_owner(cfg: Any) -> None:
    """Switch to ``cfg.group`` and ``cfg.user`` (group first, while we still may)."""
    if cfg.group is not None and os.getegid() != cfg.group:
        os.setgroups([cfg.group])
        os.setgid(cfg.group)
    if cfg.user is not None and os.geteuid() != cfg.user:
        os.setuid(cfg.user)


class Pidfile:
    """The master's pid in a file; a file naming a live process refuses the start."""

    def __init__(self, path: str) -> None:
        self.path = path

    def create(self, pid: int) -> None:
        try:
            with open(self.path) as f:
                old = int(f.read().strip() or 0)
        except (OSError, ValueError):
            old = 0
        if old and old != pid and alive(old):
            raise ConfigError(f"Pidfile {self.path} names the running process {old}")
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(f"{pid}\n")
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.path)

    def rename(self, path: str) -> None:
        os.rename(self.path, path)
        self.path = path

    def unlink(self, pid: int) -> None:
        try:
            with open(self.path) as f:
                if int(f.read().strip() or 0) != pid:
                    return  # another master (USR2) owns it now
            os.unlink(self.path)
        except (OSError, ValueError):
            pass


def alive(pid: int) -> bool:
    """Does a process with this pid exist (as any user)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True
