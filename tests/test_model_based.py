"""Model-based tests of the ``ref`` runtime against ``spec.model``.

The state machine (``model_machine.ClusterMachine``) runs random programs of
user operations on one real cluster per test, checking every answer against
the model and the invariants after every step.  How it drives trio from
Hypothesis's synchronous rules: the cluster runs in its own ``trio.run`` on
a helper thread for the whole test (``model_harness.Driver``), and each rule
hands it one operation and waits, with a bound, for the answers the model
says must come; see model_harness's docstring.

Real processes are slow to start, so the example and step counts on
``ref`` are small; examples reuse the cluster unless one leaves calls
running.  The simulator (``model_sim.SimDriver``) runs many more examples,
each in a fresh simulated world that is frozen between steps, so failures
there replay and shrink deterministically.  ``derandomize`` keeps CI runs
repeatable; DISTREF_MODEL_EXAMPLES and DISTREF_MODEL_SIM_EXAMPLES explore
more.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from conftest import leftover_worker
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from model_harness import Driver, Harness
from model_machine import ClusterMachine

from spec import model as m

EXAMPLES = int(os.environ.get("DISTREF_MODEL_EXAMPLES", "30"))
SIM_EXAMPLES = int(os.environ.get("DISTREF_MODEL_SIM_EXAMPLES", "100"))

REF_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


SIM_SETTINGS = settings(
    max_examples=SIM_EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture
def no_leftover_workers() -> Iterator[None]:
    yield
    if ClusterMachine.driver is not None:
        ClusterMachine.driver.close()
        ClusterMachine.driver = None
    left = {p: why for p in Driver.all_ospids if (why := leftover_worker(p))}
    assert not left, f"worker processes left behind: {left}"


@pytest.fixture
def on_sim() -> Iterator[type[ClusterMachine]]:
    """ClusterMachine set up to run on the simulator, restored afterwards."""
    model_sim = pytest.importorskip("model_sim")
    pytest.importorskip("sim")
    ClusterMachine.driver = None
    ClusterMachine.make_driver = model_sim.SimDriver
    ClusterMachine.fresh_world = True
    yield ClusterMachine
    if ClusterMachine.driver is not None:
        ClusterMachine.driver.close()
    ClusterMachine.driver = None
    ClusterMachine.make_driver = Driver
    ClusterMachine.fresh_world = False


def test_ref_refines_the_model(no_leftover_workers: None) -> None:
    """Random programs on a real cluster: every answer is one the model allows."""
    ClusterMachine.driver = None
    run_state_machine_as_test(ClusterMachine, settings=REF_SETTINGS)


def test_sim_refines_the_model(on_sim: type[ClusterMachine]) -> None:
    """The same on the simulator, with many more examples."""
    run_state_machine_as_test(on_sim, settings=SIM_SETTINGS)


def test_holder_announced_before_first_use_is_kept(
    no_leftover_workers: None,
) -> None:
    """A reference sent on before its first use still counts on the owner.

    The owner stores nothing until the first use, but the holder announced
    before it is kept and joins the client set then (Julia stores the value
    at the add_client already; only live_refs can tell the difference).
    """
    driver = ClusterMachine.driver = Driver(2)
    harness = Harness(driver, workers=2)
    w2, w3 = driver.live_workers()
    harness.step(m.NewFuture("f", w2))
    harness.step(m.Forward("f", w3))
    assert harness.step(m.Clients("f")) == m.Returned(None)
    harness.step(m.IsReady("f"))
    assert harness.step(m.Clients("f")) == m.Returned((1, w3))
    harness.finish()
