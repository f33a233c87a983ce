"""How every Hypothesis state machine of the tests runs (``run_machine``)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test


def run_machine(machine: type[RuleBasedStateMachine], examples: int, steps: int) -> None:
    """Run ``machine`` for ``examples`` cases of up to ``steps`` steps. No deadline (the
    machines drive real sockets, whose timing a shared machine does not promise), one
    failure shrunk rather than one per bug (time), and no health check for slow or
    filtered data."""
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
