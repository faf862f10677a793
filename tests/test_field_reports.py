"""Field reports about pools, pmap, distributed_for and everywhere, as tests.

Each test's docstring names the report (``/work/shared/field-reports.md``)
and the behaviour it encodes.  Functions sent to workers are defined at
module level here; the workers import this module by name.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from conftest import OpenTestCluster, run_on

import ref
from ref import _constructs

# ------------------------------------------------- functions run on workers


def _exit_on(target: int, x: int) -> int:
    """Terminate this process if it is ``target``; otherwise return x."""
    if ref.myid() == target:
        os._exit(1)
    return x


def _raise_on(target: int, x: int) -> int:
    if ref.myid() == target:
        raise ValueError(f"ordinary error at {x}")
    return x


def _same(x: Any) -> Any:
    return x


def _always_raise(x: float) -> float:
    raise ValueError("cannot")


async def _slow_square(x: int) -> int:
    await trio.sleep(0.04)
    return x * x


def _inner(t: int) -> int:
    return t * t


async def _outer(j: int) -> list[int]:
    return await ref.pmap(_inner, [1, 2])


_active = 0
_peak = 0


async def _probe(x: int) -> int:
    global _active, _peak
    _active += 1
    _peak = max(_peak, _active)
    try:
        await trio.sleep(0.01)
    finally:
        _active -= 1
    return ref.myid()


_unpickled = 0


def _arrive(payload: bytes) -> BigClosure:
    global _unpickled
    _unpickled += 1
    return BigClosure(payload)


def _unpickled_here() -> int:
    return _unpickled


class BigClosure:
    """Stands for ``x -> f(x, big)``: a callable carrying a large array."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self) -> tuple[Any, ...]:
        return (_arrive, (self.payload,))

    def __call__(self, x: int) -> int:
        return x + len(self.payload)


def _boom() -> None:
    raise RuntimeError("boom")


def _call_main_global(name: str, x: int) -> Any:
    return getattr(sys.modules["__main__"], name)(x)


def _plus_one(x: int) -> int:
    return x + 1


def _record_sum(pair: tuple[int, int]) -> int:
    return pair[0] + pair[1]


# ---------------------------------------------------------------- reports


async def test_br01_on_error_receives_the_death_of_the_worker(
    open_test_cluster: OpenTestCluster,
) -> None:
    """BR-01 (JuliaLang/julia#44465): when the worker running an element
    exits, pmap does not throw; that slot holds on_error(ProcessExitedException)
    and the others their values; an ordinary error reaches on_error raw."""
    async with open_test_cluster(3):
        first, second, _ = ref.workers()
        got = await ref.pmap(_raise_on, [second] * 5, range(1, 6), on_error=_same)
        raised = [v for v in got if isinstance(v, BaseException)]
        assert raised, "no element ran on the failing worker"
        assert all(type(e) is ValueError for e in raised), raised
        assert [v for v in got if isinstance(v, int)] == [
            i for i, v in enumerate(got, 1) if isinstance(v, int)
        ]

        got = await ref.pmap(_exit_on, [first] * 5, range(1, 6), on_error=_same)
        died = [v for v in got if isinstance(v, ref.ProcessExitedException)]
        assert [e.worker_id for e in died] == [first], got
        assert [v for v in got if v not in died] == [
            i for i, v in enumerate(got, 1) if v not in died
        ]
        assert first not in ref.workers()
        assert first not in await ref.default_worker_pool().workers()


async def test_br02_batched_on_error_values_replace_failed_elements(
    open_test_cluster: OpenTestCluster,
) -> None:
    """BR-02 (JuliaLang/julia#32285): with batch_size 2 an on_error value
    is stored per element, as with batch_size 1; a rethrowing handler makes
    pmap raise that error."""
    async with open_test_cluster(2):
        got = await ref.pmap(
            _always_raise, [0.0, 0.0], on_error=lambda e: 0.0, batch_size=2
        )
        assert got == [0.0, 0.0]
        assert await ref.pmap(_always_raise, [0.0, 0.0], on_error=lambda e: 0.0) == [
            0.0,
            0.0,
        ]

        def rethrow(exc: Exception) -> Any:
            raise KeyError("handler") from exc

        with pytest.raises(KeyError, match="handler"):
            await ref.pmap(_always_raise, [0.0, 0.0], on_error=rethrow, batch_size=2)


async def test_br04_batched_retries_survive_workers_being_killed(
    open_test_cluster: OpenTestCluster,
) -> None:
    """BR-04 (JuliaLang/julia#36709): a batched pmap over a CachingPool
    whose retry_check accepts ProcessExitedException completes with every
    result while workers are killed; every death goes through retry_check;
    killed workers leave the pool."""
    async with open_test_cluster(4, bound=60):
        pids = ref.workers()
        pool = ref.CachingPool(pids)
        checked: list[BaseException] = []

        def check(state: Any, exc: Exception) -> tuple[Any, bool]:
            checked.append(exc)
            return state, isinstance(exc, ref.ProcessExitedException)

        results: list[int] = []

        async def run() -> None:
            results.extend(
                await ref.pmap(
                    _slow_square,
                    range(200),
                    pool=pool,
                    batch_size=4,
                    retry_delays=[0.0] * 10,
                    retry_check=check,
                )
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            # The map takes about half a second; kill during its first half.
            for victim in pids[:3]:
                await trio.sleep(0.05)
                await ref.faults.kill(victim)

        assert results == [x * x for x in range(200)]
        assert checked, "no worker death reached retry_check"
        assert all(isinstance(e, ref.ProcessExitedException) for e in checked)
        assert await pool.workers() == pids[3:]


async def test_br05_a_nested_pmap_does_not_hang(
    open_test_cluster: OpenTestCluster,
) -> None:
    """BR-05 (JuliaLang/julia#32293): pmap(outer, 1..10) where outer itself
    calls pmap returns ten [1, 4], with one worker and with two."""
    async with open_test_cluster(1):
        with trio.fail_after(20):
            assert await ref.pmap(_outer, range(10)) == [[1, 4]] * 10
        await ref.addprocs(1)
        with trio.fail_after(20):
            assert await ref.pmap(_outer, range(10)) == [[1, 4]] * 10


async def test_br06_after_rmprocs_pmap_runs_serially_on_the_master(
    open_test_cluster: OpenTestCluster,
) -> None:
    """BR-06 (JuliaLang/julia#37198): once rmprocs has returned, workers()
    is [1], the pool pmap uses holds no removed pid, and both later maps run
    one element at a time on the master."""
    global _peak
    async with open_test_cluster(3):
        assert set(await ref.pmap(_probe, range(10))) == set(ref.workers())
        await ref.rmprocs(ref.workers())
        assert ref.workers() == [1]
        for _ in range(2):
            _peak = 0
            assert await ref.pmap(_probe, range(10)) == [1] * 10
            assert _peak == 1


async def test_br07_isready_agrees_with_take_about_dead_members(
    open_test_cluster: OpenTestCluster,
) -> None:
    """BR-07 (JuliaLang/julia#48255): with WorkerPool([1, 2]) where 2 is not
    a process, take gives 1, then isready is False, length and nworkers
    count only 1, a blocked take gets 1 once it is put back, and a pool with
    no live member raises instead of blocking."""
    async with open_test_cluster(0):
        pool = ref.WorkerPool([1, 2])
        assert await ref.take(pool) == 1
        assert not await ref.isready(pool)
        assert len(pool) == 1 and ref.nworkers(pool) == 1
        got: list[int] = []
        async with trio.open_nursery() as nursery:

            async def taker() -> None:
                got.append(await ref.take(pool))

            nursery.start_soon(taker)
            await trio.sleep(0.2)
            assert got == []
            await ref.put(pool, 1)
        assert got == [1]
        with pytest.raises(ref.NoActiveWorkerError, match="No active worker"):
            await ref.take(ref.WorkerPool([2]))


async def test_br09_closures_are_shipped_once_per_worker(
    open_test_cluster: OpenTestCluster,
) -> None:
    """BR-09 (JuliaLang/julia#28949): plain pmap ships a closure's captured
    data at most once per worker per call; an explicit CachingPool ships it
    once over several calls; after clear! it ships once per worker again;
    results always equal map."""
    async with open_test_cluster(2):
        pids = ref.workers()
        g = BigClosure(b"x" * 1_000_000)
        expected = [g(x) for x in range(20)]

        async def shipped() -> list[int]:
            return [await ref.remotecall_fetch(_unpickled_here, p) for p in pids]

        assert await ref.pmap(g, range(20)) == expected
        assert await shipped() == [1, 1]
        pool = ref.CachingPool(pids)
        for _ in range(2):
            assert await ref.pmap(g, range(20), pool=pool) == expected
        assert await shipped() == [2, 2]
        ref.clear(pool)
        assert await ref.pmap(g, range(20), pool=pool) == expected
        assert await shipped() == [3, 3]


@pytest.mark.parametrize("nworkers", [0, 1])
async def test_br11_a_failing_call_through_the_default_pool_always_raises(
    open_test_cluster: OpenTestCluster, nworkers: int
) -> None:
    """BR-11 (JuliaLang/Distributed.jl#63): fetch(remotecall(f, default
    pool)) of a failing f raises RemoteException wrapping "boom" whether
    the call ran on the master (captured on pid 1) or on a worker; so does
    remotecall_fetch."""
    async with open_test_cluster(nworkers):
        expected_pid = 1 if nworkers == 0 else ref.workers()[0]
        fut = await ref.remotecall(_boom, ref.default_worker_pool())
        with pytest.raises(ref.RemoteException) as info:
            await ref.fetch(fut)
        assert info.value.pid == expected_pid
        assert str(info.value.exception) == "boom"
        with pytest.raises(ref.RemoteException):
            await ref.remotecall_fetch(_boom, ref.default_worker_pool())


async def test_br17_an_unsplittable_loop_fails_at_once_and_errors_surface(
    open_test_cluster: OpenTestCluster,
) -> None:
    """BR-17 (JuliaLang/Distributed.jl#66): a reducer-less distributed_for
    over a product iterator is rejected straight away, and an error in the
    body is not lost: waiting for the loop, or sync() around it, raises it."""
    async with open_test_cluster(2):
        product = itertools.product([1, 2], [3, 4])
        with pytest.raises(TypeError, match="cannot split"):
            await ref.distributed_for(_record_sum, product)

        pairs = list(itertools.product([1, 2], [3, 4]))
        loop = await ref.distributed_for(_record_sum, pairs)
        await loop.wait()
        failing = await ref.distributed_for(_always_raise, [1.0, 2.0])
        with pytest.raises(ExceptionGroup) as info:
            await failing.wait()
        assert all(isinstance(e, ref.RemoteException) for e in info.value.exceptions)
        with pytest.raises(ExceptionGroup):
            async with ref.sync():
                await ref.distributed_for(_always_raise, [1.0, 2.0])


async def test_br18_everywhere_covers_only_the_processes_present(
    open_test_cluster: OpenTestCluster,
) -> None:
    """BR-18 (JuliaLang/julia#19434): a definition made everywhere is
    missing on a worker added later, where calling it raises RemoteException
    wrapping the undefined-name error; defining it there again fixes it."""
    async with open_test_cluster(2):
        await ref.define_globals({"distref_br18_g": _plus_one})
        (late,) = await ref.addprocs(1)
        with pytest.raises(ref.RemoteException) as info:
            await ref.remotecall_fetch(_call_main_global, late, "distref_br18_g", 1)
        assert isinstance(info.value.exception, AttributeError)
        await ref.define_globals({"distref_br18_g": _plus_one}, procs=[late])
        assert (
            await ref.remotecall_fetch(_call_main_global, late, "distref_br18_g", 1)
            == 2
        )


# ------------------------------------------------------------ BR-29

#: The global of the report's scenario (``a`` there), named so it cannot
#: clash with anything in the test runner's ``__main__``.
BR29_NAME = "distref_br29_a"


def _main_value(name: str) -> Any:
    """On the process that runs it: ``name`` in its ``__main__``, or None."""
    return getattr(_constructs._module("__main__"), name, None)


def _set_main_to_own_pid(name: str) -> None:
    setattr(_constructs._module("__main__"), name, ref.myid())


@pytest.fixture
def br29_getters() -> Iterator[tuple[Any, Any]]:
    """Functions defined in the caller's ``__main__``: one reads the global,
    the other calls the first.

    Defined by exec in ``__main__``'s namespace, as a script or the REPL
    would, so they travel by value; the fixture removes the names after.
    """
    main = vars(sys.modules["__main__"])
    source = (
        f"def distref_br29_get():\n    return {BR29_NAME}\n"
        "def distref_br29_via():\n    return distref_br29_get()\n"
    )
    exec(source, main)
    yield main["distref_br29_get"], main["distref_br29_via"]
    for name in ("distref_br29_get", "distref_br29_via", BR29_NAME):
        main.pop(name, None)


@pytest.mark.parametrize("backend", ["ref", "sim"])
def test_br29_a_shipped_function_carries_the_callers_main_globals(
    backend: str,
    br29_getters: tuple[Any, Any],
    open_test_cluster: OpenTestCluster,
) -> None:
    """BR-29 (JuliaLang/julia#52969): a function shipped from the caller's
    ``__main__`` looks up, on the target, a global the caller does not
    define; once the caller defines it, the function carries the caller's
    value and redefines the target's global with it.  The same holds for a
    ``__main__`` function it calls."""
    main = sys.modules["__main__"]
    get, via = br29_getters

    async def body() -> None:
        _, w3, w4 = ref.workers()
        await ref.everywhere(_set_main_to_own_pid, BR29_NAME, procs=[w3, w4])
        assert not hasattr(main, BR29_NAME)
        assert await ref.fetchfrom(w3, get) == w3
        assert await ref.fetchfrom(w4, via) == w4

        setattr(main, BR29_NAME, 1)
        assert await ref.fetchfrom(w3, get) == 1
        assert await ref.fetchfrom(w3, _main_value, BR29_NAME) == 1
        # Only the target was redefined.
        assert await ref.fetchfrom(w4, _main_value, BR29_NAME) == w4
        assert await ref.fetchfrom(w4, via) == 1
        assert await ref.fetchfrom(w4, _main_value, BR29_NAME) == 1
        assert getattr(main, BR29_NAME) == 1

    run_on(backend, 3, body, open_test_cluster)
