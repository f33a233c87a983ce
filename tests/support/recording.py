"""Small helpers for unit tests of pure code: a logging handler that keeps the messages it
gets (``Lines``) and a clock the test sets by hand (``Clock``, ``clock.now = 5.0``)."""

from __future__ import annotations

import logging


class Clock:
    """A callable clock whose time is ``now``, which the test sets."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """Keeps the message of every record it handles, in ``lines``."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
