"""The model-based tests catch deliberate mistakes in the runtime.

Each test makes one mistake in ``ref`` (``model_mistakes``: on the master by
monkeypatching, on every worker the driver starts by a remote call) and runs
the model-based state machine; it must fail.  It runs on real processes and
on the simulator (where one monkeypatch reaches every simulated process).
Shrinking is off (only detection is asserted, and shrinking on real
processes is slow); ``derandomize`` fixes the programs drawn, so on the
simulator the outcome is the same on every run.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import model_mistakes
import pytest
from conftest import leftover_worker
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from model_harness import Driver
from model_machine import ClusterMachine

from spec.refinement import Refuted

MISTAKE_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _caught(error: BaseException) -> bool:
    """A failure of the checks (not of the test machinery itself)."""
    if isinstance(error, BaseExceptionGroup):
        return any(_caught(e) for e in error.exceptions)
    return isinstance(error, Refuted | AssertionError)


@pytest.fixture
def machine() -> Iterator[type[ClusterMachine]]:
    yield ClusterMachine
    if ClusterMachine.driver is not None:
        ClusterMachine.driver.close()
    ClusterMachine.driver = None
    ClusterMachine.make_driver = Driver
    ClusterMachine.bound = 15.0
    ClusterMachine.fresh_world = False
    left = {p: why for p in Driver.all_ospids if (why := leftover_worker(p))}
    assert not left, f"worker processes left behind: {left}"


@pytest.mark.parametrize("backend", ["ref", "sim"])
@pytest.mark.parametrize("mistake", sorted(model_mistakes.MISTAKES))
def test_model_based_tests_catch(
    mistake: str, backend: str, machine: type[ClusterMachine]
) -> None:
    machine.driver = None
    if backend == "sim":
        model_sim = pytest.importorskip("model_sim")
        pytest.importorskip("sim")
        machine.make_driver = model_sim.SimDriver
        machine.fresh_world = True
    else:
        machine.make_driver = functools.partial(Driver, mistake=mistake)
    machine.bound = 5.0
    # A real cluster's timing varies between runs, so when Hypothesis replays
    # the program that failed, the replay may draw differently and end in
    # its own "flaky" error instead.  What counts is that a check failed on
    # some run: note every failure of a step or of the invariants as it
    # happens.
    noticed: list[BaseException] = []
    undo = model_mistakes.apply(mistake)
    try:
        with (
            _noting_failures(machine, noticed),
            pytest.raises(Exception) as failure,
        ):
            run_state_machine_as_test(machine, settings=MISTAKE_SETTINGS)
    finally:
        undo()
    assert _caught(failure.value) or any(map(_caught, noticed)), (
        f"failed for another reason: {failure.value!r}"
    )


@contextlib.contextmanager
def _noting_failures(
    machine: type[ClusterMachine], noticed: list[BaseException]
) -> Iterator[None]:
    """Record into ``noticed`` each exception ``step`` or the invariants raise."""
    originals = {name: getattr(machine, name) for name in ("step", "invariants")}

    def noting(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(self: ClusterMachine, *args: Any) -> Any:
            try:
                return original(self, *args)
            except BaseException as exc:
                noticed.append(exc)
                raise

        return wrapper

    for name, original in originals.items():
        setattr(machine, name, noting(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(machine, name, original)
