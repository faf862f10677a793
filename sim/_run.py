"""A simulated run: one ``trio.run`` on virtual time, seeded, guarded, traced.

``simulate`` owns the ``trio.run``.  Around it: trio's scheduler in
deterministic mode, seeded from the run's seed (``_determinism``); a
virtual clock (``_clock``) that jumps to the next deadline whenever every
task is blocked, so a 60-second timeout costs no wall time; the cyclic garbage
collector switched off, because the runtime queues reference-count notices
from weakref finalizers and a collection at an arbitrary moment would make
their timing depend on the machine, and everything allocated before the
run frozen out of it (``gc.freeze``), so that garbage from earlier code is
never finalized inside the run.  Inside it: the guards (``_guards``), the
watchdog (``_watchdog``) and a task that collects the run's garbage only at
quiescent points (every task blocked) after every ``gc_every`` deliveries
(times the run's simulated processes in hundreds, beyond the first hundred).
Each simulated worker also gets a ``__main__`` module of its own
(``_mains``), as a worker process would.

All randomness of a run comes from its seed, through named streams
(``Run.rng``): the scheduler, and per cluster the network, the launcher,
the faults and the cookie.  Each stream is a ``random.Random`` seeded with
a string naming the seed and the stream, so adding a stream, or a cluster
drawing more, never shifts the draws of another.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import random
import string
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import trio
import trio.testing

from ref._context import peek_current
from ref._history import recording

from ._clock import SimClock
from ._determinism import deterministic_scheduling
from ._guards import Guards
from ._mains import MainModules
from ._trace import Trace, now_ns
from ._watchdog import MAX_ITERATIONS_PER_INSTANT, SimulationStuck, Watchdog

if TYPE_CHECKING:
    from ref._process import Process

    from ._oracles import LeakCheck

T = TypeVar("T")

#: The OS pid ``os.getpid()`` answers outside any simulated process.
SIMULATOR_OSPID = 100
#: Simulated OS pids count up from here, one per simulated process.
FIRST_OSPID = 1000
#: What ``os.cpu_count()`` answers inside a run.
SIM_CPU_COUNT = 4
#: Collect cyclic garbage at the first quiescent point after this many
#: deliveries (0: never during the run).
DEFAULT_GC_EVERY = 200
#: ... times the number of simulated processes in units of this many, if
#: more than one: a collection walks every process's state (and each knows
#: all its peers), so in a big cluster collecting every ``gc_every``
#: deliveries would cost more than everything else the run does.
GC_PROCESSES_PER_STEP = 100

_COOKIE_ALPHABET = string.ascii_letters + string.digits

_current: ContextVar[Run | None] = ContextVar("sim_run", default=None)


class NotSimulatingError(RuntimeError):
    """Something that needs a simulated run was used outside ``sim.run``."""


class Run:
    """The state one simulated run shares between its clusters."""

    def __init__(self, seed: int, trace: Trace, gc_every: int) -> None:
        self.seed = seed
        self.trace = trace
        self.deliveries = 0
        self.end_ns = 0
        self._gc_every = gc_every
        self._gc_next = gc_every
        self._gc_due = trio.Event()
        self._clusters = itertools.count()
        self._ospids = itertools.count(FIRST_OSPID)
        self._processes: dict[Process, int] = {}
        self.leak_checks: list[LeakCheck] = []
        #: Stops one cluster's simulated processes, for every cluster.
        self.world_stoppers: list[Callable[[], None]] = []

    def stop_worlds(self) -> None:
        """Crash every simulated process of every cluster of the run."""
        for stop in self.world_stoppers:
            stop()

    def rng(self, name: str) -> random.Random:
        """The run's generator for ``name``; the same name, the same draws."""
        return random.Random(f"distref-sim/{self.seed}/{name}")

    def cookie(self, cluster: int) -> str:
        """Cluster ``cluster``'s cookie, drawn from the seed."""
        rng = self.rng(f"cluster{cluster}.cookie")
        size = len(_COOKIE_ALPHABET)
        return "".join(_COOKIE_ALPHABET[int(rng.random() * size)] for _ in range(16))

    def next_cluster(self) -> int:
        return next(self._clusters)

    def next_ospid(self) -> int:
        return next(self._ospids)

    def register_process(self, proc: Process, ospid: int) -> None:
        self._processes[proc] = ospid

    def worker_ospid(self) -> int | None:
        """The simulated OS pid of the calling task's worker process.

        None for a master (pid 1) and for code outside every simulated
        process: what ``MainModules`` gives the real ``__main__``.
        """
        proc = peek_current()
        if proc is None or proc.myid == 1:
            return None
        return self._processes.get(proc)

    def ospid(self) -> int:
        """The simulated OS pid of the process the calling task belongs to."""
        proc = peek_current()
        if proc is None:
            return SIMULATOR_OSPID
        return self._processes.get(proc, SIMULATOR_OSPID)

    def delivered(self) -> None:
        self.deliveries += 1
        if self._gc_every and self.deliveries >= self._gc_next:
            self._gc_next = self.deliveries + self.gc_interval()
            self._gc_due.set()

    def gc_interval(self) -> int:
        """Deliveries from one collection of garbage to the next, for now."""
        steps = max(1, len(self._processes) // GC_PROCESSES_PER_STEP)
        return self._gc_every * steps

    async def collect_garbage(self) -> None:
        """Collect cyclic garbage at quiescent points; runs until cancelled."""
        if not self._gc_every:
            return
        while True:
            await self._gc_due.wait()
            self._gc_due = trio.Event()
            # Every task blocked: nothing is half-way through a step, and
            # the same program state is reached whatever the machine.
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()


def current_run() -> Run:
    """The simulated run the calling task belongs to."""
    run = _current.get()
    if run is None:
        raise NotSimulatingError(
            "no simulated run is active: call this inside sim.run(main, seed=...)"
        )
    return run


@dataclass
class RunResult(Generic[T]):
    """How a simulated run ended, and what it cost in virtual terms."""

    seed: int
    value: T | None
    error: BaseException | None
    virtual_ns: int
    deliveries: int
    trace: Trace
    #: The leak oracle's findings, one per cluster whose block ended cleanly.
    leak_checks: tuple[LeakCheck, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


def simulate(
    main: Callable[[], Awaitable[T]],
    *,
    seed: int,
    trace: str | Path | None = None,
    record: bool = False,
    scenario: str = "main",
    guards: bool = True,
    gc_every: int = DEFAULT_GC_EVERY,
    livelock_after: int = MAX_ITERATIONS_PER_INSTANT,
) -> RunResult[T]:
    """Run ``main()`` in a simulated world; never raises what ``main`` raised.

    ``trace`` names a file to write the trace to (written even when the run
    fails); ``record`` keeps the trace in memory without writing it.
    ``guards=False`` lets the run touch the wall clock, sockets and threads
    (for measuring the guards' cost, not for scenarios).  A run that
    deadlocks, or spends ``livelock_after`` scheduler iterations at one
    virtual instant (once the watchdog watches: ``STANDING_STILL_READS``
    readings of the clock into it), ends with ``SimulationStuck``.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed={seed!r} must be an int")
    recorder = Trace(enabled=trace is not None or record, scenario=scenario, seed=seed)
    run = Run(seed, recorder, gc_every)
    guard = Guards(
        virtual_time=trio.current_time, ospid=run.ospid, cpu_count=SIM_CPU_COUNT
    )
    clock = SimClock()
    watchdog = Watchdog(livelock_after)
    watchdog.on_stuck_again = run.stop_worlds
    watchdog.on_beyond_recovery = clock.abort
    clock.on_standing_still(watchdog.watch)

    mains = MainModules(run.worker_ospid)

    async def root() -> T:
        token = _current.set(run)
        mains.install()
        if guards:
            guard.install()
        try:
            with _api_history(recorder):
                return await _main_with_collector(run, main, guard, watchdog)
        finally:
            run.end_ns = now_ns()
            guard.uninstall()
            mains.uninstall()
            _current.reset(token)

    # Objects from before the run are frozen out of the collector, so a
    # collection inside the run finalizes only the run's own garbage.
    collecting = gc.isenabled()
    gc.disable()
    gc.freeze()
    value: T | None = None
    error: BaseException | None = None
    try:
        with deterministic_scheduling(run.rng("scheduler")):
            value = trio.run(root, clock=clock, strict_exception_groups=True)
    except Exception as exc:
        error = exc
    finally:
        if watchdog.ended_hard is not None:
            # trio.run was ended from its loop: the root task's own cleanup
            # never ran, so undo what it would have undone.
            guard.uninstall()
            mains.uninstall()
            run.end_ns = round(clock.now * 1e9)
            stuck = SimulationStuck(watchdog.ended_hard)
            stuck.add_note(
                "the run was ended from trio's loop: tasks still running then "
                "were abandoned without their cleanup"
            )
            stuck.__context__ = error
            error = stuck
        gc.unfreeze()
        if collecting:
            gc.enable()
        if trace is not None:
            recorder.write(trace)

    if guard.violations:
        violation = guard.violations[0]
        if error is not None and error is not violation:
            violation.add_note(f"the run itself ended with {error!r}")
        error = violation
    return RunResult(
        seed,
        value,
        error,
        run.end_ns,
        run.deliveries,
        recorder,
        tuple(run.leak_checks),
    )


@contextlib.contextmanager
def _api_history(trace: Trace) -> Iterator[None]:
    """With the trace on, record the run's API calls into it.

    Every public API call (``ref._history.recording``) becomes an
    ``api_call`` event, and its answer an ``api_return`` or ``api_raise``
    one, so a trace file alone is enough to check the run against the model
    (``python -m spec.refinement TRACE``).
    """
    if not trace.enabled:
        yield
        return

    def sink(record: dict[str, object]) -> None:
        fields = dict(record)
        kind = fields.pop("kind")
        assert isinstance(kind, str)
        trace.event(kind, **fields)

    with recording(sink):
        yield


async def _main_with_collector(
    run: Run, main: Callable[[], Awaitable[T]], guard: Guards, watchdog: Watchdog
) -> T:
    failure: BaseException | None = None
    value: T | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.collect_garbage)
        try:
            with trio.CancelScope() as watched:
                watchdog.scope = watched
                value = await main()
        except BaseException as exc:
            # Raised after the nursery, so it is not wrapped in a group.
            failure = exc
        watchdog.scope = None
        if watchdog.verdict is not None:
            stuck = SimulationStuck(watchdog.verdict)
            stuck.__context__ = failure
            failure = stuck
        nursery.cancel_scope.cancel()

    outcome = "ok" if failure is None else type(sole(failure)).__name__
    run.trace.event("end", outcome=outcome, violations=len(guard.violations))
    if failure is not None:
        raise failure
    return value  # type: ignore[return-value]  # main returned a T


def run(
    main: Callable[[], Awaitable[T]],
    *,
    seed: int,
    trace: str | Path | None = None,
    scenario: str = "main",
    guards: bool = True,
    gc_every: int = DEFAULT_GC_EVERY,
    livelock_after: int = MAX_ITERATIONS_PER_INSTANT,
) -> T:
    """Run ``main()`` in a simulated world and return what it returns.

    Raises what ``main`` raised, ``SimulationViolation`` if the run used
    the wall clock, a real socket or a thread, or ``SimulationStuck`` if it
    could not make progress.  Same ``main``, seed and package versions:
    same run, and the same trace bytes.
    """
    result = simulate(
        main,
        seed=seed,
        trace=trace,
        scenario=scenario,
        guards=guards,
        gc_every=gc_every,
        livelock_after=livelock_after,
    )
    if result.error is not None:
        raise result.error
    return result.value  # type: ignore[return-value]  # no error: main's value


def sole(error: BaseException) -> BaseException:
    """The one exception inside nested single-member groups, else ``error``."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
