"""The error log of every process: logger names, the line format, reopening files.

Loggers: ``wsgi_zmq.error`` with one child per part (``.front``, ``.dispatcher``,
``.arbiter``, ``.worker``). A line reads like gunicorn's::

    [2026-11-23 23:11:57 +0000] [4242] [INFO] Listening at: http://127.0.0.1:8000

``setup(cfg)`` is called once per process (again in a forked child is harmless);
``reopen()`` reopens a log file after rotation (the ``USR1`` handlers call it from their
main loops, never from the signal handler).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

ERROR_LOGGER = "wsgi_zmq.error"

LINE_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def get_logger(part: str) -> logging.Logger:
    """The error logger of one part: ``wsgi_zmq.error.<part>``."""
    return logging.getLogger(f"{ERROR_LOGGER}.{part}")


class ReopenableFileHandler(logging.FileHandler):
    """A file handler whose file can be reopened after logrotate moved it."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def setup(cfg: Any) -> None:
    """Send the ``wsgi_zmq.error`` tree to ``cfg.errorlog`` at ``cfg.loglevel``."""
    root = logging.getLogger(ERROR_LOGGER)
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    handler: logging.Handler
    if cfg.errorlog == "-":
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = ReopenableFileHandler(cfg.errorlog, delay=False)
    handler.setFormatter(logging.Formatter(LINE_FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(cfg.loglevel.upper())
    root.propagate = False


def reopen() -> None:
    """Reopen every log file of the ``wsgi_zmq.error`` tree."""
    for handler in logging.getLogger(ERROR_LOGGER).handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()
