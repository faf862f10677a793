"""The conformance suite's way in: run one scenario in a simulated cluster.

``conformance.backends.SimBackend`` calls ``run_scenario`` with a scenario
written against ``spec.api``; the scenario receives the ``ref`` module
itself as its API, exactly as on the ``ref`` backend, so the two backends
differ only in the seams under the runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import trio

import ref
from spec.api import DistributedAPI, Scenario

from ._cluster import open_cluster
from ._config import NetworkConfig
from ._faults import FaultPlan
from ._run import run, sole


def run_scenario(
    scenario: Scenario,
    *,
    seed: int,
    timeout: float,
    network: NetworkConfig | None = None,
    faults: FaultPlan | None = None,
    trace: str | Path | None = None,
) -> None:
    """Run ``scenario(ref)`` in a fresh simulated cluster; raise what it raised.

    ``timeout`` is in virtual seconds and covers the scenario, not the
    cluster's shutdown; running out raises ``trio.TooSlowError``.  An
    exception that the cluster's nurseries wrapped in single-member
    exception groups is unwrapped, so a failed assertion arrives as an
    ``AssertionError``.
    """
    api = cast(DistributedAPI, ref)

    async def main() -> None:
        async with open_cluster(network=network, faults=faults):
            with trio.fail_after(timeout):
                await scenario(api)

    name = getattr(scenario, "__qualname__", None) or type(scenario).__name__
    failure: BaseException | None = None
    try:
        run(main, seed=seed, scenario=name, trace=trace)
    except BaseException as exc:
        failure = sole(exc)
    # Raised outside the handler, so the group does not become its context.
    if failure is not None:
        raise failure
