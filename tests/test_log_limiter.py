"""``LogLimiter``: what a peer can cause at will is logged a few lines a period, the rest
counted and summed up. Pure code, driven with its own clock."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.recording import Clock, Lines
from wsgi_zmq.log import LogLimiter


@pytest.fixture
def logger():
    logger = logging.getLogger("wsgi_zmq.test.limiter")
    handler = Lines()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)


def test_a_flood_writes_the_burst_then_one_summary_per_period(logger):
    """1. 10,000 warnings within one period 2. only the first 5 are written 3. once the
    period is over, flush() writes one line counting the 9,995 left out 4. the next period
    writes again."""
    log, handler = logger
    clock = Clock()
    limiter = LogLimiter(log, "bad frames", burst=5, period=60.0, clock=clock)
    for i in range(10_000):
        limiter.warning("bad frame %d", i)
    assert handler.lines == [f"bad frame {i}" for i in range(5)]
    limiter.flush()
    assert len(handler.lines) == 5  # the period is not over
    clock.now = 61.0
    limiter.flush()
    assert handler.lines[-1] == "Left out 9995 more lines of bad frames in the last 61 s " \
        "(10000 in all)"
    limiter.warning("bad frame again")
    assert handler.lines[-1] == "bad frame again"
    assert limiter.total == 10_001


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=300))
def test_lines_written_are_bounded_by_periods(times):
    """For any arrival times: at most ``burst`` message lines plus one summary line per
    period, and ``total`` counts every arrival."""
    log = logging.getLogger("wsgi_zmq.test.limiter.prop")
    handler = Lines()
    log.addHandler(handler)
    log.propagate = False
    try:
        clock = Clock()
        limiter = LogLimiter(log, "x", burst=3, period=10.0, clock=clock)
        for t in sorted(times):
            clock.now = t
            limiter.warning("m")
        clock.now = 2000.0
        limiter.flush()
        periods = int(max(times, default=0) // 10) + 2
        assert len(handler.lines) <= periods * 4
        assert limiter.total == len(times)
        written = handler.lines.count("m")
        summed = sum(int(line.split()[2]) for line in handler.lines if line != "m")
        assert written + summed == len(times)
    finally:
        log.removeHandler(handler)
