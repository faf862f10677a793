"""Built-in scenarios for ``python -m sim``: small, checked fault experiments.

Each scenario opens its own simulated cluster, acts, and raises
``AssertionError`` when the runtime did not behave as documented; a run
that returns is a pass.  ``Options`` carries what the command line can
change: the number of workers, extra faults, the network.

Functions that run on workers are defined at module level, so they travel
by reference (module and name), never by value: a pickled function body
would carry this file's path, and the trace would differ between two
checkouts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

import ref
from spec.api import LaunchError, ProcessExitedException

from ._cluster import crash, partition
from ._cluster import open_cluster as _open_cluster
from ._config import NetworkConfig
from ._faults import FaultPlan, RandomFaults, SlowLaunch
from ._run import RunResult, current_run, simulate

#: The worker timeout scenarios run with (``DISTREF_WORKER_TIMEOUT``).
WORKER_TIMEOUT = 60.0

#: How long a partition stalls before keep-alive breaks it, in scenarios.
BREAK_AFTER = 30.0


@dataclass(frozen=True)
class Options:
    """What one run of a built-in scenario may vary."""

    workers: int
    faults: FaultPlan = field(default_factory=FaultPlan)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    worker_timeout: float = WORKER_TIMEOUT


@dataclass(frozen=True)
class BuiltinScenario:
    """A named scenario, its default worker count, and its body."""

    name: str
    summary: str
    workers: int
    body: Callable[[Options], Awaitable[None]]


# Functions the scenarios call on workers.


async def nap(seconds: float) -> str:
    """Sleep ``seconds`` (virtual) on the calling process, then say so."""
    await trio.sleep(seconds)
    return "rested"


async def _expect_exited(pid: int, call: Awaitable[object], what: str) -> None:
    """``call`` must fail with ProcessExitedException naming ``pid``."""
    try:
        value = await call
    except ProcessExitedException as exc:
        if exc.worker_id != pid:
            raise AssertionError(
                f"{what}: ProcessExitedException names worker {exc.worker_id}, "
                f"expected {pid}"
            ) from exc
        return
    raise AssertionError(
        f"{what}: expected ProcessExitedException({pid}), got {value!r}"
    )


async def _each_answers(pids: list[int]) -> None:
    """Every pid answers ``myid`` with itself, all calls at once."""
    answers: dict[int, int] = {}

    async def ask(pid: int) -> None:
        answers[pid] = await ref.remotecall_fetch(ref.myid, pid)

    async with trio.open_nursery() as nursery:
        for pid in pids:
            nursery.start_soon(ask, pid)
    wrong = {pid: got for pid, got in sorted(answers.items()) if got != pid}
    if wrong or len(answers) != len(pids):
        raise AssertionError(f"myid answers were wrong: {wrong or answers}")


# The scenarios.


async def ping(opts: Options) -> None:
    """Add workers; each answers ``myid`` with its own pid."""
    async with _open_cluster(
        network=opts.network, faults=opts.faults, timeout=opts.worker_timeout
    ):
        pids = await ref.addprocs(opts.workers)
        if ref.workers() != pids:
            raise AssertionError(f"workers() is {ref.workers()}, added {pids}")
        await _each_answers(pids)


async def kill_pending(opts: Options) -> None:
    """A call pending on a worker that crashes fails with ProcessExited.

    The crash comes at a moment drawn from the seed: before the call
    reaches the worker, while it runs there, or as its answer travels.
    Later calls to the dead worker fail the same way at once; the other
    workers keep answering.
    """
    async with _open_cluster(
        network=opts.network, faults=opts.faults, timeout=opts.worker_timeout
    ):
        pids = await ref.addprocs(opts.workers)
        victim = pids[0]
        moment = current_run().rng("scenario.kill-pending").uniform(0.0, 0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _expect_exited,
                victim,
                ref.remotecall_fetch(nap, victim, 3600.0),
                "pending call",
            )
            await trio.sleep(moment)
            crash(victim)

        await _expect_exited(victim, ref.remotecall_fetch(ref.myid, victim), "later")
        if victim in ref.workers():
            raise AssertionError(f"crashed worker {victim} is still in workers()")
        await _each_answers(pids[1:])


async def partition_scenario(opts: Options) -> None:
    """A partition stalls calls across it, then breaks them; or heals.

    Worker A is cut off for good: a call to it stalls until keep-alive
    breaks the connection (``BREAK_AFTER`` seconds), then fails with
    ProcessExited.  Worker B is cut off and healed after 5 seconds: its
    call is late but correct.
    """
    async with _open_cluster(
        network=opts.network, faults=opts.faults, timeout=opts.worker_timeout
    ):
        pids = await ref.addprocs(max(2, opts.workers))
        cut, healed = pids[0], pids[1]

        partition(cut, break_after=BREAK_AFTER)
        began = trio.current_time()
        await _expect_exited(cut, ref.remotecall_fetch(ref.myid, cut), "cut off")
        stalled = trio.current_time() - began
        if stalled < BREAK_AFTER * 0.99:
            raise AssertionError(
                f"the call failed after {stalled:.3f} s; expected a stall of "
                f"{BREAK_AFTER:g} s before the partition broke the connection"
            )

        partition(healed, heal=5.0, break_after=BREAK_AFTER)
        began = trio.current_time()
        answer = await ref.remotecall_fetch(ref.myid, healed)
        waited = trio.current_time() - began
        if answer != healed or waited < 4.99:
            raise AssertionError(
                f"across a healed partition: answer {answer!r} after {waited:.3f} s; "
                f"expected {healed} after about 5 s"
            )


async def slow_launch(opts: Options) -> None:
    """A worker slower to start than the worker timeout is a LaunchError.

    The other workers of the same ``addprocs`` join, and a later
    ``addprocs`` works.
    """
    slow = SlowLaunch(launch=1, delay=opts.worker_timeout * 2)
    async with _open_cluster(
        network=opts.network,
        faults=opts.faults + FaultPlan((slow,)),
        timeout=opts.worker_timeout,
    ):
        began = trio.current_time()
        try:
            pids = await ref.addprocs(opts.workers)
        except LaunchError:
            pass
        else:
            raise AssertionError(f"addprocs returned {pids} despite a slow launch")
        waited = trio.current_time() - began
        if waited < opts.worker_timeout:
            raise AssertionError(
                f"LaunchError after {waited:.3f} s, before the timeout"
            )
        if ref.nworkers() != max(1, opts.workers - 1) or ref.nprocs() != opts.workers:
            raise AssertionError(
                f"after one failed launch of {opts.workers}: nprocs={ref.nprocs()}"
            )

        later = await ref.addprocs(1)
        await _each_answers(ref.workers() if opts.workers > 1 else later)


async def many_workers(opts: Options) -> None:
    """Many workers join one cluster and each answers one call."""
    async with _open_cluster(
        network=opts.network, faults=opts.faults, timeout=opts.worker_timeout
    ):
        pids = await ref.addprocs(opts.workers)
        if len(pids) != opts.workers:
            raise AssertionError(f"asked for {opts.workers} workers, got {len(pids)}")
        await _each_answers(pids)


async def chaos(opts: Options) -> None:
    """Calls under random faults either answer correctly or fail with ProcessExited.

    Crashes, resets, partitions, hangs and slow spells are drawn from the
    seed over 20 virtual seconds while the master keeps calling every
    worker; no call may return a wrong answer, raise anything else, or
    hang past two minutes.
    """
    drawn = RandomFaults(
        crash=0.1,
        reset=0.1,
        partition=0.05,
        hang=0.05,
        slow=0.05,
        stop=20.0,
        limit=4,
        spell=10.0,
        break_after=BREAK_AFTER,
    )
    plan = opts.faults + FaultPlan((), drawn)
    async with _open_cluster(
        network=opts.network, faults=plan, timeout=opts.worker_timeout
    ):
        pids = await ref.addprocs(opts.workers)

        async def keep_calling(pid: int) -> None:
            while trio.current_time() < 25.0:
                with trio.fail_after(120.0):
                    try:
                        answer = await ref.remotecall_fetch(ref.myid, pid)
                    except ProcessExitedException as exc:
                        if exc.worker_id != pid:
                            raise
                        return
                if answer != pid:
                    raise AssertionError(f"worker {pid} answered {answer!r}")
                await trio.sleep(0.5)

        async with trio.open_nursery() as nursery:
            for pid in pids:
                nursery.start_soon(keep_calling, pid)


SCENARIOS: dict[str, BuiltinScenario] = {
    s.name: s
    for s in (
        BuiltinScenario("ping", "addprocs, then myid on each worker", 3, ping),
        BuiltinScenario(
            "kill-pending",
            "a pending call to a crashed worker raises ProcessExitedException",
            2,
            kill_pending,
        ),
        BuiltinScenario(
            "partition",
            "a partition stalls a call then breaks it; a healed one delivers late",
            2,
            partition_scenario,
        ),
        BuiltinScenario(
            "slow-launch",
            "a launch slower than the worker timeout raises LaunchError",
            2,
            slow_launch,
        ),
        BuiltinScenario(
            "many-workers", "N workers each answer one call", 100, many_workers
        ),
        BuiltinScenario(
            "chaos",
            "random faults; every call answers right or raises ProcessExited",
            4,
            chaos,
        ),
    )
}


def run_builtin(
    name: str,
    *,
    seed: int,
    workers: int | None = None,
    faults: FaultPlan | None = None,
    network: NetworkConfig | None = None,
    trace: str | Path | None = None,
    record: bool = False,
) -> RunResult[None]:
    """Run built-in scenario ``name`` once; the result says how it ended."""
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise KeyError(f"no scenario {name!r}; known: {', '.join(SCENARIOS)}")
    opts = Options(
        workers=scenario.workers if workers is None else workers,
        faults=faults or FaultPlan(),
        network=network or NetworkConfig(),
    )

    async def main() -> None:
        await scenario.body(opts)

    return simulate(main, seed=seed, trace=trace, record=record, scenario=name)
