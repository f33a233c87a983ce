"""How every Hypothesis state machine of the tests runs (``run_machine``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test


class Driving:
    """What the dispatcher machines share: the ``Backend`` (``support.peers``) each drives,
    set by its ``init`` rule, and the violations of its model that a step found."""

    backend: Any
    violations: list[str]
    broken: bool

    @property
    def d(self) -> Any:
        """The real ``Dispatcher`` under test."""
        assert self.backend is not None
        return self.backend.dispatcher

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def check_step(self) -> None:
        """Check the model against the dispatcher after a step (each machine's own)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def settling(self) -> Iterator[list[Any]]:
        """The second half of a step: its body acts, naming the peers it sent from; then
        the backend settles and ``check_step`` checks everything. A failure marks the
        machine ``broken``, so its teardown checks nothing more."""
        assert self.backend is not None, "init() first"
        senders: list[Any] = []
        try:
            yield senders
            self.backend.settle(senders)
            self.check_step()
        except BaseException:
            self.broken = True
            raise


def run_machine(machine: type[RuleBasedStateMachine], examples: int, steps: int) -> None:
    """Run ``machine`` for ``examples`` cases of up to ``steps`` steps. No deadline (the
    machines drive real sockets, whose timing a shared machine does not promise), one
    failure shrunk rather than one per bug (time), and no health check for slow or
    filtered data."""
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
