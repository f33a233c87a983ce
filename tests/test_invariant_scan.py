"""``support.invariant_failures``: how ``Stack.stop_all`` finds a broken invariant in the
log of a process a live test started (``WSGI_ZMQ_CHECK=1``)."""

from __future__ import annotations

from support import invariant_failures

TRACEBACK = """[INFO] Listening at: http://127.0.0.1:8000 (1)
Traceback (most recent call last):
  File "wsgi_zmq/front/dispatcher.py", line 848, in check
    assert len(lane.queue) <= self.queue_size, f"{lane!r}: the queue is over its bound"
AssertionError: <lane pool default: 1 workers, 5 waiting>: the queue is over its bound
[INFO] Shutting down
"""


def test_a_failed_check_and_a_refused_change_are_found() -> None:
    """1. check()'s AssertionError is found, with the lines before it 2. so are the
    StateError and PhaseError of a refused change, by their qualified names."""
    [found] = invariant_failures(TRACEBACK)
    assert found.endswith("the queue is over its bound")
    assert "in check" in found
    refused = ("wsgi_zmq.front.dispatcher.StateError: SENT -> QUEUED\n"
               "PhaseError: request 5 is DONE\n")
    assert len(invariant_failures(refused)) == 2


def test_ordinary_logs_have_none() -> None:
    """Warnings, app tracebacks and lines that only mention the words are not failures."""
    log = ("[WARNING] Worker 3@h lost (disconnected) holding 1 request(s)\n"
           "Traceback (most recent call last):\nValueError: the app failed\n"
           "[INFO] a line about AssertionError in the middle is no failure\n")
    assert invariant_failures(log) == []
