"""The model-based harness on the simulator: ``SimDriver``.

``SimDriver`` offers what ``model_harness.Driver`` offers, for a simulated
cluster: ``sim.run`` on a helper thread, one world per driver.  Between
steps the simulated world is frozen: its dispatcher task waits for the next
job with a *blocking* ``queue.get``, which holds the whole trio loop, so
nothing runs and virtual time stands still while Hypothesis decides the next
rule.  Each job runs, then virtual time advances a little so messages in
flight are delivered; when the harness waits for answers it asks the world
to advance again.  Same jobs, same seed: same run, so a failure found on the
simulator replays and shrinks deterministically.

The guards of ``sim.run`` are off (``guards=False``): they forbid threads,
and this driver is one.  The world itself still runs on virtual time with
seeded scheduling.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import trio
import trio.testing
from model_harness import Factory, observe_error, observe_value

import ref
from spec import model as m

#: Virtual seconds a job lets the world run after it starts.
AFTER_JOB = 0.5
#: Virtual seconds one wait of the harness lets the world run.
PER_WAIT = 2.0


class SimDriver:
    """A simulated cluster driven one job at a time (see the module doc)."""

    all_ospids: ClassVar[list[int]] = []
    #: The harness advances virtual time instead of waiting on the clock.
    virtual = True

    def __init__(self, workers: int = 2, *, seed: int = 0) -> None:
        import sim  # only when the simulator is wanted

        self._sim = sim
        self.seed = seed
        self.results: queue.Queue[tuple[int, m.Outcome]] = queue.Queue()
        self.allocated: list[int] = []
        self.duplicates: list[int] = []
        self.ospids: list[int] = []
        self.mistake: str | None = None  # made in-process by the caller
        self._answered: set[int] = set()
        self._cids = itertools.count()
        self._jobs: queue.Queue[tuple[str, Any, Any] | None] = queue.Queue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._initial = workers
        self._thread = threading.Thread(target=self._thread_main, daemon=True)
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise RuntimeError(f"the simulated cluster did not start: {self._error!r}")

    # ------------------------------------------------------------ the world

    def _thread_main(self) -> None:
        try:
            self._sim.run(self._main, seed=self.seed, guards=False)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with self._sim.open_cluster(check_leaks=False):
            if self._initial:
                self.allocated += await ref.addprocs(self._initial)
            self._ready.set()
            async with trio.open_nursery() as nursery:
                while True:
                    job = self._jobs.get()  # blocks the world: time stands still
                    if job is None:
                        break
                    kind, payload, box = job
                    if kind == "submit":
                        nursery.start_soon(self._run, *payload)
                        await self._advance(AFTER_JOB)
                    elif kind == "call":
                        nursery.start_soon(self._call, payload, box)
                        await self._advance(AFTER_JOB)
                    else:
                        await self._advance(payload)
                        box.set_result(None)
                nursery.cancel_scope.cancel()

    async def _advance(self, seconds: float) -> None:
        await trio.sleep(seconds)
        await trio.testing.wait_all_tasks_blocked()

    async def _run(self, cid: int, factory: Factory) -> None:
        outcome: m.Outcome
        try:
            outcome = m.Returned(observe_value(await factory()))
        except trio.Cancelled:
            raise
        except BaseException as exc:
            outcome = observe_error(exc)
        if cid in self._answered:
            self.duplicates.append(cid)
            return
        self._answered.add(cid)
        self.results.put((cid, outcome))

    async def _call(self, factory: Factory, box: Any) -> None:
        try:
            box.set_result(await factory())
        except BaseException as exc:
            box.set_exception(exc)

    # -------------------------------------------------- the Driver interface

    async def added(self, pids: list[int]) -> list[int]:
        self.allocated += pids
        return pids

    def new_cid(self) -> int:
        return next(self._cids)

    def submit(self, cid: int, factory: Factory) -> None:
        self._jobs.put(("submit", (cid, factory), None))

    def call(self, factory: Callable[[], Awaitable[Any]], timeout: float = 60) -> Any:
        box: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put(("call", factory, box))
        return box.result(timeout)

    def wait_for_results(self, timeout: float) -> None:
        """Let the world run ``PER_WAIT`` virtual seconds (not ``timeout``)."""
        if self.results.empty() and self.alive():
            box: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._jobs.put(("advance", PER_WAIT, box))
            box.result(60)

    def alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    def close(self, timeout: float = 60.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the simulated cluster did not shut down in time")

    def live_workers(self) -> list[int]:
        async def ask() -> list[int]:
            return [p for p in ref.procs() if p != 1]

        workers: list[int] = self.call(ask)
        return workers

    def reset_workers(self, n: int) -> list[int]:
        async def adjust() -> list[int]:
            live = [p for p in ref.procs() if p != 1]
            if len(live) > n:
                await ref.rmprocs(*live[: len(live) - n])
            elif len(live) < n:
                self.allocated += await ref.addprocs(n - len(live))
            return [p for p in ref.procs() if p != 1]

        workers: list[int] = self.call(adjust)
        return workers

    @property
    def next_pid(self) -> int:
        return max([1, *self.allocated]) + 1
