"""Traces: random programs recorded by the runtime, checked by the model.

``random_program`` is an async program of user operations drawn from a
``random.Random``: it runs unchanged under ``trio.run`` on ``ref`` and under
``sim.run``, with blocking operations started in background tasks so calls
overlap.  It uses only the functions of ``model_fns``, so the model knows
what each remote call does.

``translate`` and ``check_records`` are ``spec.records``'s, with the
defaults these tests use: the records of ``ref._history.recording`` (or of
a simulator trace) become a model history, which the checker runs,
including the final check that no call left unanswered had to answer.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
from collections.abc import Iterable
from typing import Any

import model_fns as fns
import trio

import ref
from spec import records as records_mod
from spec.refinement import Checker, HistoryEvent

Record = dict[str, Any]

#: How many calls of a random program may wait in the background at once.
MAX_OVERLAP = 3


def translate(records: Iterable[Record]) -> list[HistoryEvent]:
    """The model history of the master's top-level calls in ``records``."""
    return records_mod.translate(records).history


def check_records(records: list[Record], workers: Iterable[int] = ()) -> Checker:
    """Check a recorded run against the model; raises Refuted if refuted."""
    return records_mod.check_records(records, workers)


# --------------------------------------------------------------- programs


async def random_program(rng: random.Random, steps: int = 30) -> None:
    """A random user program on the current cluster (recorded by the caller).

    Operations that may block run in background tasks; after the last step
    the program waits a while, then cancels whatever still waits.
    """
    channels: list[Any] = []
    futures: list[Any] = []
    pools: list[Any] = []
    fetching: set[Any] = set()
    counter = iter(range(1000, 10**9))

    def live() -> list[int]:
        return [p for p in ref.procs() if p != 1]

    def some_fn(target: int) -> tuple[Any, tuple[Any, ...]]:
        kind = rng.randrange(6)
        if kind == 3 and channels:
            return fns.take_from, (rng.choice(channels),)
        if kind == 4 and channels:
            return fns.put_into, (rng.choice(channels), next(counter))
        if kind == 5 and target != 1:
            return fns.sleep_forever, ()
        return [
            (fns.const, (rng.randrange(4),)),
            (fns.fail, ()),
            (fns.my_id, ()),
        ][kind % 3]

    async def quietly(afn: Any, *args: Any) -> None:
        # The recording has the error; the checker judges it.
        with contextlib.suppress(Exception):
            await afn(*args)

    # At most a few calls overlap: every waiting call multiplies the states
    # the checker must consider.
    outstanding = 0

    async def background(afn: Any, *args: Any) -> None:
        nonlocal outstanding
        try:
            await quietly(afn, *args)
        finally:
            outstanding -= 1

    def spawn(afn: Any, *args: Any) -> None:
        nonlocal outstanding
        if outstanding < MAX_OVERLAP:
            outstanding += 1
            nursery.start_soon(background, afn, *args)

    async with trio.open_nursery() as nursery:
        await quietly(ref.addprocs, 2)
        for _ in range(steps):
            workers = live()
            targets = [1, *workers]
            choice = rng.randrange(15)
            if choice == 0 and len(workers) < 4:
                await quietly(ref.addprocs, 1)
            elif choice == 1 and len(workers) >= 2:
                how = rng.randrange(2)
                pid = rng.choice(workers)
                if how:
                    await quietly(ref.rmprocs, pid)
                else:
                    await quietly(ref.faults.kill, pid)
                    with trio.move_on_after(10):
                        while pid in ref.procs():
                            await trio.sleep(0.01)
            elif choice == 2:
                target = rng.choice(targets)
                f, args = some_fn(target)
                api = rng.choice([ref.remotecall, ref.remotecall_fetch, ref.remote_do])
                if api is ref.remotecall:
                    with contextlib.suppress(Exception):
                        futures.append(await ref.remotecall(f, target, *args))
                else:
                    spawn(api, f, target, *args)
            elif choice == 3:
                capacity = rng.choice([0, 1, 2, math.inf])
                factory = functools.partial(ref.Channel, capacity)
                channels.append(ref.RemoteChannel(factory, rng.choice(targets)))
            elif choice in (4, 5) and channels:
                chan = rng.choice(channels)
                if choice == 4:
                    spawn(ref.put, chan, next(counter))
                else:
                    spawn(ref.take, chan)
            elif choice == 6 and channels:
                chan = rng.choice(channels)
                op = rng.choice([ref.isready, ref.isempty, ref.isopen, ref.close])
                await quietly(op, chan)
            elif choice == 7:
                futures.append(ref.Future(rng.choice(targets)))
            elif choice == 8 and futures:
                fut = rng.choice(futures)
                if rng.randrange(2):
                    fetching.add(fut)
                    spawn(ref.fetch, fut)
                elif fut not in fetching:
                    # A put overtaking a pending fetch of the same Future
                    # strands the fetch (test_trace_refinement.
                    # test_fetch_overtaken_by_own_put_answers).
                    await quietly(ref.put, fut, next(counter))
            elif choice == 9:
                pools.append(ref.WorkerPool(rng.sample(workers, k=len(workers) // 2)))
            elif choice == 10 and pools:
                # Only takes that will not wait: a take waiting on a pool
                # whose last member then leaves never wakes in ref (see
                # test_waiting_take_fails_when_last_member_leaves).
                pool = rng.choice(pools)
                if await pool.isready():
                    await quietly(pool.take)
            elif choice == 11:
                items = list(range(rng.randrange(1, 4)))
                await quietly(ref.pmap, functools.partial(fns.plus, 1), items)
            elif choice == 12 and pools:
                # remotecall on a pool: the member comes back when it is done.
                pool = rng.choice(pools)
                if await pool.isready():
                    f, args = some_fn(2)
                    with contextlib.suppress(Exception):
                        futures.append(await ref.remotecall(f, pool, *args))
            elif choice == 13 and workers:
                await quietly(ref.interrupt, rng.choice(workers))
            elif choice == 14:
                items = list(range(rng.randrange(1, 4)))
                mapped = rng.choice([functools.partial(fns.fail_on, 1), fns.map_my_id])
                options: dict[str, Any] = rng.choice(
                    [
                        {"on_error": functools.partial(fns.const_on_error, -1)},
                        {"retry_delays": [0.01]},
                        {},
                    ]
                )
                await quietly(functools.partial(ref.pmap, **options), mapped, items)
            await trio.sleep(0)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
