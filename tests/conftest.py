"""Fixtures: live process factories (front, handler pool, all-in-one) on loopback ports.

Every process a test starts is registered here and stopped by its PID at teardown, whatever
the test did. Ports are never guessed: processes bind port 0 / ``tcp://127.0.0.1:*`` and the
tests read the real addresses from their startup log lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    live = Stack(tmp_path)
    try:
        yield live
    finally:
        live.stop_all()
