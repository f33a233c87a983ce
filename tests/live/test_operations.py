"""Operations under continuous load lose no request (issue 5, "What must be shown").

Each test runs a scenario of ``support.scenarios`` for a few seconds: 8 keep-alive clients
send requests without pause, every answer is checked for status 200 and its own body, and
the operation (HUP, TTIN/TTOU, recycling, a deploy, TERM of a pool, a worker past its
timeout) is repeated while they run. ``bench/scenarios.py`` runs the same for longer.
"""

from __future__ import annotations

import pytest

from support import scenarios

SECONDS = 3.0


@pytest.mark.parametrize("scenario", [scenarios.hup_reload, scenarios.ttin_ttou,
                                      scenarios.max_requests, scenarios.deploy,
                                      scenarios.term_beside_another],
                         ids=lambda f: f.__name__)
def test_no_request_fails(stack, scenario):
    """1. start the processes of the scenario 2. 8 clients send requests for SECONDS while
    the operation is repeated 3. every request sent was answered 200 with its own body."""
    result = scenario(stack, SECONDS)
    assert result.operations >= 1
    assert result.ok, f"{result.counts}: {result.failures[:5]}"


def test_worker_past_its_timeout_gives_exactly_one_504(stack):
    """1. --timeout 2, 8 clients of fast requests 2. one request gets stuck in the app
    3. it alone is answered 504 (its worker aborted and replaced); every other request is
    200 with its own body."""
    result = scenarios.timeout_abort(stack, 1.0)
    assert result.extra["stuck statuses"] == [504] * result.operations
    assert result.ok, f"{result.counts}: {result.failures[:5]}"
