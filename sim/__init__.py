"""distref's deterministic simulator: the real runtime on a simulated world.

Run a cluster of simulated processes inside one ``trio.run`` on virtual
time, over a simulated network with latency and injected faults, with the
scheduling order drawn from a seed::

    import ref, sim

    async def main() -> None:
        async with sim.open_cluster(faults=sim.FaultPlan((sim.Crash(2, at=5.0),))):
            pids = await ref.addprocs(2)
            assert await ref.remotecall_fetch(ref.myid, pids[1]) == pids[1]

    sim.run(main, seed=1, trace="run.jsonl")

The runtime is ``ref``'s own, unchanged: the simulator plugs a simulated
transport and launcher into its seams.  The same scenario, seed and
package versions give the same run and a byte-identical trace.  See
docs/simulator.md.
"""

from ._cluster import (
    NoSimulatedClusterError,
    World,
    crash,
    current_world,
    hang,
    heal,
    open_cluster,
    partition,
    reset,
    resume,
    slow,
)
from ._config import (
    Constant,
    Distribution,
    LinkConfig,
    LogNormal,
    NetworkConfig,
    Uniform,
)
from ._conformance import ScenarioTooSlow, run_scenario
from ._determinism import TrioInternalsChanged, check_trio_internals
from ._faults import (
    Crash,
    FailLaunch,
    FaultPlan,
    Hang,
    Partition,
    RandomFaults,
    Reset,
    Slow,
    SlowLaunch,
)
from ._guards import SimulationViolation
from ._oracles import LeakCheck, ReferenceLeak
from ._run import NotSimulatingError, RunResult, current_run, run, simulate
from ._trace import FORMAT, FORMAT_VERSION
from ._watchdog import SimulationStuck

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Constant",
    "Crash",
    "Distribution",
    "FailLaunch",
    "FaultPlan",
    "Hang",
    "LeakCheck",
    "LinkConfig",
    "LogNormal",
    "NetworkConfig",
    "NoSimulatedClusterError",
    "NotSimulatingError",
    "Partition",
    "RandomFaults",
    "ReferenceLeak",
    "Reset",
    "RunResult",
    "ScenarioTooSlow",
    "SimulationStuck",
    "SimulationViolation",
    "Slow",
    "SlowLaunch",
    "TrioInternalsChanged",
    "Uniform",
    "World",
    "check_trio_internals",
    "crash",
    "current_run",
    "current_world",
    "hang",
    "heal",
    "open_cluster",
    "partition",
    "reset",
    "resume",
    "run",
    "run_scenario",
    "simulate",
    "slow",
]
