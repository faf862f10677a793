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

#: Virtual seconds, beyond the scenario's own limit, for the cluster to
#: start and shut down (as ``conformance.backends.CLUSTER_GRACE`` for ``ref``).
CLUSTER_GRACE = 30.0


class ScenarioTooSlow(trio.TooSlowError):
    """A scenario, or its cluster, ran out of virtual time.

    Unlike a ``trio.TooSlowError`` of the scenario's own, this one says the
    limit ``run_scenario`` was given ran out: ``what`` is ``"scenario"`` or
    ``"cluster"`` and ``timeout`` the limit, in virtual seconds.
    """

    def __init__(self, timeout: float, what: str) -> None:
        super().__init__(f"{what} did not finish within {timeout:g} virtual s")
        self.timeout = timeout
        self.what = what


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

    ``timeout`` is in virtual seconds and covers the scenario; the cluster
    gets ``CLUSTER_GRACE`` more to start and shut down.  Running out raises
    ``ScenarioTooSlow``, unless the scenario itself failed first.  An
    exception that the cluster's nurseries wrapped in single-member
    exception groups is unwrapped, so a failed assertion arrives as an
    ``AssertionError``.
    """
    api = cast(DistributedAPI, ref)
    failures: list[BaseException] = []
    timed_out = False

    async def main() -> None:
        nonlocal timed_out
        try:
            with trio.move_on_after(timeout + CLUSTER_GRACE) as cluster_scope:
                async with open_cluster(network=network, faults=faults):
                    with trio.move_on_after(timeout) as scope:
                        # Caught inside the cluster, so that closing it still
                        # runs its course and the error is the scenario's own.
                        try:
                            await scenario(api)
                        except Exception as exc:
                            failures.append(exc)
                    timed_out = scope.cancelled_caught
        except Exception as exc:
            # The scenario's own failure is the news; a cluster that then
            # failed to close is a footnote to it.
            if not failures:
                raise
            failures[0].add_note(f"closing the cluster then raised {exc!r}")
        if failures:
            raise failures[0]
        if cluster_scope.cancelled_caught:
            raise ScenarioTooSlow(timeout + CLUSTER_GRACE, "cluster")
        if timed_out:
            raise ScenarioTooSlow(timeout, "scenario")

    name = getattr(scenario, "__qualname__", None) or type(scenario).__name__
    failure: BaseException | None = None
    try:
        run(main, seed=seed, scenario=name, trace=trace)
    except BaseException as exc:
        failure = sole(exc)
    # Raised outside the handler, so the group does not become its context.
    if failure is not None:
        raise failure
