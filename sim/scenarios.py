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

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

import ref
from spec.api import LaunchError, NoActiveWorkerError, ProcessExitedException

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
    """A named scenario, its default worker count, and its body.

    A body that returns a string names the outcome the run took (for a
    scenario with several correct endings); ``sweep`` counts them.
    """

    name: str
    summary: str
    workers: int
    body: Callable[[Options], Awaitable[str | None]]


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


# pmap under worker crashes (issue 5's campaign).

#: Virtual seconds each pmap-crashes element spends on its worker, so the
#: map lasts long enough for the drawn crashes to land inside it.
PMAP_WORK = 0.01

#: Elements the ``pmap-crashes`` scenario maps over.
PMAP_ITEMS = 1000

#: The share of seeds whose plan crashes every worker.
ALL_CRASH_SHARE = 0.25

#: The two correct endings of a pmap-crashes run.
COMPLETED = "completed"
ALL_CRASHED = "all-crashed"

#: How many times each element started running, across every simulated
#: process.  The processes share this interpreter (docs/simulator.md), so
#: the workers' counts are visible to the master; reset by each run.
_STARTED: Counter[int] = Counter()


async def tagged_square(x: int) -> tuple[int, int]:
    """The mapped function: count the start, work a while, tag the answer."""
    _STARTED[x] += 1
    await trio.sleep(PMAP_WORK)
    return (x, x * x)


@dataclass(frozen=True)
class CrashPlan:
    """Which workers a pmap-crashes run kills, and when (seconds after the
    map began), in firing order."""

    crashes: tuple[tuple[float, int], ...]
    everyone: bool


def _pick(rng: random.Random, n: int) -> int:
    return min(n - 1, int(rng.random() * n))


def draw_crash_plan(rng: random.Random, pids: list[int], items: int) -> CrashPlan:
    """Draw the victims and their moments from ``rng`` (only ``random()``).

    With probability ``ALL_CRASH_SHARE`` every worker dies, all within the
    first half of the time the map needs when nobody dies, so the map
    cannot finish first.  Otherwise 0 to ``len(pids) - 1`` workers die at
    moments spread over that time: at least one survives.
    """
    fastest = items * PMAP_WORK / len(pids)
    everyone = rng.random() < ALL_CRASH_SHARE
    if everyone:
        count, window = len(pids), fastest / 2
    else:
        count, window = _pick(rng, len(pids)), fastest
    order = list(pids)
    for i in range(len(order) - 1, 0, -1):  # Fisher-Yates on random()
        j = _pick(rng, i + 1)
        order[i], order[j] = order[j], order[i]
    moments = sorted(0.01 + rng.random() * window for _ in range(count))
    return CrashPlan(tuple(zip(moments, order[:count], strict=True)), everyone)


async def pmap_campaign(opts: Options, items: int) -> str:
    """pmap over ``items`` elements while drawn workers crash; returns the ending.

    The elements are retried with one delay per worker, so an element can
    outlive every worker dying under it in turn.  While a worker survives
    the map must return every result once, in input order; when all die
    it must raise NoActiveWorkerError (retries spent on an empty pool).
    Each dead worker may fail at most one element (its one call in
    flight), and an element runs again only after its worker died.
    """
    async with _open_cluster(
        network=opts.network, faults=opts.faults, timeout=opts.worker_timeout
    ):
        pids = await ref.addprocs(opts.workers)
        plan = draw_crash_plan(current_run().rng("scenario.pmap-crashes"), pids, items)
        _STARTED.clear()
        fired: list[int] = []
        failures: list[BaseException] = []

        def note(state: object, exc: BaseException) -> tuple[object, bool]:
            failures.append(exc)
            return state, True

        async def crasher(began: float) -> None:
            for moment, pid in plan.crashes:
                await trio.sleep_until(began + moment)
                crash(pid)
                fired.append(pid)

        ending: list[object] | NoActiveWorkerError
        # Generous: the slowest correct run is one worker doing it all.
        bound = 60.0 + 10 * items * PMAP_WORK
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crasher, trio.current_time())
            with trio.fail_after(bound):
                try:
                    ending = await ref.pmap(
                        tagged_square,
                        range(items),
                        retry_delays=[0.01] * len(pids),
                        retry_check=note,
                    )
                except NoActiveWorkerError as exc:
                    ending = exc
            nursery.cancel_scope.cancel()

        _check_failures(failures, fired)
        extra = sum(_STARTED.values()) - sum(1 for _ in _STARTED)
        exited = sum(isinstance(f, ProcessExitedException) for f in failures)
        if extra > exited:
            raise AssertionError(
                f"elements ran {extra} extra times but only {exited} calls "
                "failed because a worker died"
            )
        if plan.everyone:
            if not isinstance(ending, NoActiveWorkerError):
                raise AssertionError(
                    f"every worker crashed ({fired}), yet pmap returned "
                    f"{_summary(ending)}"
                )
            if sorted(fired) != sorted(pids):
                raise AssertionError(
                    f"pmap raised NoActiveWorkerError with workers alive: "
                    f"only {fired} of {pids} crashed"
                )
            return ALL_CRASHED
        if isinstance(ending, NoActiveWorkerError):
            raise AssertionError(
                f"pmap raised {ending!r} although only {fired} of {pids} crashed"
            )
        expected = [(x, x * x) for x in range(items)]
        if ending != expected:
            raise AssertionError(
                f"with {fired} crashed, pmap returned {_summary(ending)}; "
                f"wrong at {_first_difference(ending, expected)}"
            )
        if set(_STARTED) != set(range(items)):
            raise AssertionError("some elements never ran, yet have results")
        if any(isinstance(f, NoActiveWorkerError) for f in failures):
            raise AssertionError(
                f"an element found the pool empty although {len(pids) - len(fired)} "
                "workers survived"
            )
        return COMPLETED


def _check_failures(failures: list[BaseException], fired: list[int]) -> None:
    """Every retried failure is a death of a crashed worker, once each, or
    an empty pool."""
    dead: Counter[int] = Counter()
    for failure in failures:
        if isinstance(failure, ProcessExitedException):
            dead[failure.worker_id] += 1
        elif not isinstance(failure, NoActiveWorkerError):
            raise AssertionError(f"an element failed with {failure!r}")
    strangers = set(dead) - set(fired)
    twice = sorted(pid for pid, n in dead.items() if n > 1)
    if strangers or twice:
        raise AssertionError(
            f"ProcessExitedException named workers that did not crash "
            f"({sorted(strangers)}) or failed several elements ({twice})"
        )


def _summary(value: object) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} results"
    return repr(value)


def _first_difference(got: list[object], expected: list[tuple[int, int]]) -> str:
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return f"index {i}: {a!r} instead of {b!r}"
    return f"length {len(got)} instead of {len(expected)}"


async def pmap_crashes(opts: Options) -> str:
    """pmap of ``PMAP_ITEMS`` elements with retries while workers crash."""
    return await pmap_campaign(opts, PMAP_ITEMS)


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
        BuiltinScenario(
            "pmap-crashes",
            "pmap with retries returns every result once while a worker "
            "survives, else raises NoActiveWorkerError",
            8,
            pmap_crashes,
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
) -> RunResult[str | None]:
    """Run built-in scenario ``name`` once; the result says how it ended."""
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise KeyError(f"no scenario {name!r}; known: {', '.join(SCENARIOS)}")
    opts = Options(
        workers=scenario.workers if workers is None else workers,
        faults=faults or FaultPlan(),
        network=network or NetworkConfig(),
    )

    async def main() -> str | None:
        return await scenario.body(opts)

    return simulate(main, seed=seed, trace=trace, record=record, scenario=name)
