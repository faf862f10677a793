"""Worker pools: WorkerPool, CachingPool, the default pool, ``remote``, and
the remotecall family with a pool as the target.

A pool hands its members out one caller at a time, drops members that are
no longer processes, and works from other processes as a proxy.  What the
scenarios ship to workers lives in ``_parallel`` and ``_shipped``.
"""

from __future__ import annotations

import gc
from typing import Any

import trio

from conformance.registry import scenario
from spec.api import (
    DistributedAPI,
    NoActiveWorkerError,
    ProcessExitedException,
    RemoteException,
    RemoteRef,
)

from ._parallel import (
    Counted,
    alive,
    default_view,
    pmap_here,
    pool_view,
    put_into,
    take_from,
    unpickled,
    wait_on,
)
from ._shipped import (
    PATIENCE,
    ScenarioError,
    eventually,
    new_key,
    open_gate,
    parameters,
    raise_scenario_error,
    records,
    return_value,
    wait_gate,
    whoami,
    within,
)

#: (positional args, keyword args) of each call, and what ``parameters``
#: must then report.
ARGUMENT_CASES: list[tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...]]] = [
    ((1,), {}, (1, 0, 0, 0)),
    ((1, 2), {"kw1": 3}, (1, 2, 3, 0)),
    ((1,), {"v2": 2, "kw2": 4}, (1, 2, 0, 4)),
]

#: A pid no cluster in these scenarios ever allocates.
NEVER_ALLOCATED = 9999


async def _started(d: DistributedAPI, pid: int, key: str) -> None:
    """Wait until ``wait_gate(key)`` has started on ``pid``."""

    async def started() -> bool:
        return "started" in await d.remotecall_fetch(records, pid, key)

    await eventually(started, f"wait_gate({key}) never started on pid {pid}")


# -------------------------------------------------------------- WorkerPool


@scenario(
    "worker_pool.constructors",
    "worker_pool.push-and-put",
    "worker_pool.queries",
)
async def a_worker_pool_counts_lists_and_accepts_its_members(
    d: DistributedAPI,
) -> None:
    a, b = await d.addprocs(2)
    with within(PATIENCE, "queries of new pools"):
        empty = d.WorkerPool()
        assert await pool_view(empty) == ([], 0, False), "WorkerPool() is not empty"
        assert await empty.nworkers() == 0
        full = d.WorkerPool([a, b])
        assert await pool_view(full) == ([a, b], 2, True), "WorkerPool([a, b])"
        ranged = d.WorkerPool(range(a, b + 1))
        assert await ranged.workers() == [a, b], "a pool built from a range"

    with within(PATIENCE, "push, take and put"):
        pool = d.WorkerPool()
        await d.push(pool, a)
        assert await pool_view(pool) == ([a], 1, True), "after push(pool, a)"
        assert await d.take(pool) == a
        busy = await pool_view(pool)
        assert busy == ([a], 1, False), f"a taken member still counts: {busy}"
        assert await pool.nworkers() == 1, "nworkers counts busy members"

        await d.put(pool, b)
        after = await pool_view(pool)
        assert after == ([a], 1, False), f"put of a non-member {b} changed {after}"
        await d.put(pool, a)
        assert await d.isready(pool), "put of a member did not free it"


@scenario("worker_pool.take-and-wait")
async def take_hands_out_members_in_the_order_they_became_free(
    d: DistributedAPI,
) -> None:
    a, b = await d.addprocs(2)
    pool = d.WorkerPool([a, b])
    with within(PATIENCE, "taking every member"):
        assert [await d.take(pool), await d.take(pool)] == [a, b]
    assert not await d.isready(pool), "isready with every member taken"

    got: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            got.append(await d.wait(pool))

        async def taker() -> None:
            got.append(await d.take(pool))

        nursery.start_soon(waiter)
        await trio.sleep(0.1)
        assert got == [], f"wait(pool) returned while all were busy: {got}"
        await d.put(pool, b)
        with within(PATIENCE, "wait(pool) after a put"):
            while not got:
                await trio.sleep(0.01)
        assert got == [None], f"wait(pool) returned {got[0]!r}, expected None"
        assert await d.isready(pool), "wait(pool) took the free member"

        await d.put(pool, a)
        nursery.start_soon(taker)
        with within(PATIENCE, "take after two puts"):
            while len(got) < 2:
                await trio.sleep(0.01)
    assert got[1] == b, f"take gave {got[1]}: b was freed before a"
    assert await d.take(pool) == a


@scenario(
    "worker_pool.take-drops-dead-members",
    "worker_pool.empty-pool-take-raises",
)
async def a_pool_drops_members_that_left_and_refuses_when_none_is_left(
    d: DistributedAPI,
) -> None:
    me = d.myid()
    pool = d.WorkerPool([NEVER_ALLOCATED, me])
    with within(PATIENCE, "take from a pool listing a pid that never existed"):
        assert await d.take(pool) == me
        view = await pool_view(pool)
    assert view == ([me], 1, False), f"the dead member still counts: {view}"

    (pid,) = await d.addprocs(1)
    removed = d.WorkerPool([pid])
    await d.rmprocs(pid)
    for empty in (removed, d.WorkerPool([NEVER_ALLOCATED]), d.WorkerPool()):
        try:
            with within(PATIENCE, "take from a pool without live members"):
                got = await d.take(empty)
        except NoActiveWorkerError as exc:
            assert "no active worker" in str(exc).lower(), f"message: {exc}"
        else:
            raise AssertionError(f"take from a pool without live members gave {got}")
    assert await removed.length() == 0, "the removed worker is still a member"


@scenario("worker_pool.shared-with-workers")
async def a_pool_sent_to_a_worker_works_there_on_the_masters_pool(
    d: DistributedAPI,
) -> None:
    a, b = await d.addprocs(2)
    pool = d.WorkerPool([a, b])
    with within(PATIENCE, "pool operations from a worker"):
        assert await d.remotecall_fetch(pool_view, a, pool) == ([a, b], 2, True)
        taken = await d.remotecall_fetch(take_from, a, pool)
        assert taken in (a, b), f"a worker took {taken} from the pool"
        assert await pool.length() == 2
        assert await d.take(pool) != taken, "a member was handed out twice"
        assert not await d.isready(pool), "the worker's take did not reach the pool"

        waiting = await d.spawnat(b, wait_on, pool)
        await trio.sleep(0.1)
        assert not await d.isready(waiting), "wait(pool) on a worker returned early"
        await d.remotecall_fetch(put_into, b, pool, taken)
        assert await d.fetch(waiting) == "free"
        assert await d.isready(pool), "the worker's put did not reach the pool"

    with within(PATIENCE, "pmap on a worker over the master's pool"):
        one = d.WorkerPool([b])
        ran_on = await d.remotecall_fetch(pmap_here, a, d, whoami, [d] * 6, one)
    assert ran_on == [b] * 6, f"pmap on worker {a} over pool [{b}] ran on {ran_on}"


@scenario("worker_pool.worker-death-mid-call", needs=("faults.kill",))
async def a_member_that_dies_during_a_call_fails_the_call_and_leaves_the_pool(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    pool = d.WorkerPool([pid])
    key = new_key()
    outcome: list[BaseException] = []

    async def call() -> None:
        try:
            await d.remotecall_fetch(wait_gate, pool, key)
        except Exception as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await _started(d, pid, key)
        await d.faults.kill(pid)
    assert len(outcome) == 1 and isinstance(outcome[0], ProcessExitedException), (
        f"the call to the killed member ended with {outcome!r}"
    )
    try:
        with within(PATIENCE, "take after the member died"):
            got = await d.take(pool)
    except NoActiveWorkerError:
        pass
    else:
        raise AssertionError(f"take gave the dead member {got}")


# -------------------------------------------------- pool-targeted calls


@scenario("remotecall.pool-target-released-when-done")
async def remotecall_to_a_pool_keeps_the_member_until_the_future_is_done(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    pool = d.WorkerPool([pid])
    key = new_key()
    with within(PATIENCE, "remotecall to a pool"):
        fut = await d.remotecall(wait_gate, pool, key, "done")
    assert isinstance(fut, RemoteRef) and fut.where == pid, f"got {fut!r}"
    await _started(d, pid, key)
    assert not await d.isready(pool), "the member was free while its call ran"

    await d.remotecall_fetch(open_gate, pid, key)
    with within(PATIENCE, "the Future after the gate opened"):
        assert await d.fetch(fut) == "done"

    async def free() -> bool:
        return bool(await d.isready(pool))

    await eventually(free, "the member was not returned after the call finished")


@scenario("remotecall_fetch.pool-target")
async def fetch_and_wait_forms_take_a_member_and_always_give_it_back(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    pool = d.WorkerPool([pid])
    with within(PATIENCE, "remotecall_fetch and remotecall_wait on a pool"):
        for args, kwargs, expected in ARGUMENT_CASES:
            got = await d.remotecall_fetch(parameters, pool, *args, **kwargs)
            assert got == expected, f"remotecall_fetch gave {got}, not {expected}"
            fut = await d.remotecall_wait(parameters, pool, *args, **kwargs)
            assert fut.where == pid, f"remotecall_wait's Future is on {fut.where}"
            assert await d.isready(fut), "remotecall_wait returned before f finished"
            assert await d.fetch(fut) == expected
            assert await d.isready(pool), "the member was not given back"
        assert await d.remotecall_fetch(whoami, pool, d) == pid

        for form in (d.remotecall_fetch, d.remotecall_wait):
            try:
                await form(raise_scenario_error, pool, "boom")
            except RemoteException as exc:
                assert isinstance(exc.exception, ScenarioError), repr(exc)
            else:
                raise AssertionError(f"{form.__name__} did not raise")
            assert await d.isready(pool), "a failing call kept the member"


@scenario("remote_do.pool-target-released-at-once")
async def remote_do_to_a_pool_gives_the_member_back_at_once(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    pool = d.WorkerPool([pid])
    key = new_key()
    with within(PATIENCE, "remote_do to a pool"):
        await d.remote_do(wait_gate, pool, key)
        assert await d.isready(pool), "remote_do kept the member"
    await _started(d, pid, key)
    await d.remotecall_fetch(open_gate, pid, key)


# ---------------------------------------------------------- default pool


@scenario("default_worker_pool.holds-joined-workers")
async def every_joined_worker_is_in_the_default_pool(d: DistributedAPI) -> None:
    first = await d.addprocs(2)
    with within(PATIENCE, "the default pool after addprocs"):
        assert await d.default_worker_pool().workers() == first
        more = await d.addprocs(1)
        members = await d.default_worker_pool().workers()
    assert members == sorted(first + more), f"default pool holds {members}"


@scenario("default_worker_pool.empty-falls-back-to-master")
async def an_empty_default_pool_lends_the_master(d: DistributedAPI) -> None:
    pool = d.default_worker_pool()
    with within(PATIENCE, "the default pool without workers"):
        assert await pool.workers() == [1], "workers(default pool)"
        assert await pool.nworkers() == 1, "nworkers(default pool)"
        assert await d.take(pool) == 1, "take on the empty default pool"
        assert await d.isready(pool), "an empty default pool would lend 1 now"
        assert await d.remote(d.myid)() == 1, "remote(myid)() without workers"


@scenario("default_worker_pool.worker-sees-master-pool")
async def a_workers_default_pool_is_the_masters(d: DistributedAPI) -> None:
    a, b = await d.addprocs(2)
    with within(PATIENCE, "the default pool seen from a worker"):
        assert await d.remotecall_fetch(default_view, a, d) == [a, b]
        master_pool = d.default_worker_pool()
        taken = [await d.take(master_pool), await d.take(master_pool)]
        try:
            seen = await d.remotecall_fetch(pool_view, a, master_pool)
            assert seen == ([a, b], 2, False), f"worker sees {seen}"
        finally:
            for pid in taken:
                await d.put(master_pool, pid)


@scenario("set_default_worker_pool.replaces-default")
async def a_replaced_default_pool_serves_remote_and_pmap(d: DistributedAPI) -> None:
    _, b = await d.addprocs(2)
    for kind in (d.WorkerPool, d.CachingPool):
        pool = kind([b])
        d.set_default_worker_pool(pool)
        with within(PATIENCE, f"remote and pmap over a default {kind.__name__}"):
            assert d.default_worker_pool() is pool
            assert await d.remote(whoami)(d) == b
            assert await d.pmap(whoami, [d] * 5) == [b] * 5


@scenario("remote.calls-through-pool")
async def remote_runs_f_on_a_pool_member_with_its_arguments(
    d: DistributedAPI,
) -> None:
    a, b = await d.addprocs(2)
    with within(PATIENCE, "remote(f) calls"):
        for args, kwargs, expected in ARGUMENT_CASES:
            assert await d.remote(parameters)(*args, **kwargs) == expected
        assert await d.remote(whoami)(d) in (a, b)
        only_b = d.WorkerPool([b])
        assert [await d.remote(whoami, only_b)(d) for _ in range(3)] == [b] * 3


@scenario("remote.occupies-one-worker-per-call")
async def each_unfinished_remote_call_holds_one_member(d: DistributedAPI) -> None:
    a, b = await d.addprocs(2)
    pool = d.WorkerPool([a, b])
    key = new_key()

    async def free() -> bool:
        return bool(await d.isready(pool))

    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(d.remote(wait_gate, pool), key)

        async def one_each() -> bool:
            started = [len(await d.remotecall_fetch(records, p, key)) for p in (a, b)]
            return started == [1, 1]

        await eventually(one_each, "the two calls did not start on one member each")
        assert not await d.isready(pool), "isready with both members busy"
        await d.remotecall_fetch(open_gate, a, key)
        await eventually(free, "a member was not freed after its call finished")
        await d.remotecall_fetch(open_gate, b, key)


# ------------------------------------------------------------ CachingPool


@scenario("caching_pool.pool-semantics")
async def a_caching_pool_takes_and_puts_like_a_worker_pool(
    d: DistributedAPI,
) -> None:
    a, b = await d.addprocs(2)
    pool = d.CachingPool([a, b])
    with within(PATIENCE, "CachingPool take and put"):
        assert await pool_view(pool) == ([a, b], 2, True)
        assert [await d.take(pool), await d.take(pool)] == [a, b]
        assert not await d.isready(pool)
        await d.put(pool, b)
        await d.put(pool, NEVER_ALLOCATED)
        assert await d.take(pool) == b
        await d.put(pool, a)
        assert await d.remotecall_fetch(whoami, pool, d) == a
    try:
        await d.take(d.CachingPool([]))
    except NoActiveWorkerError:
        pass
    else:
        raise AssertionError("take on an empty CachingPool did not raise")


@scenario("caching_pool.function-shipped-once")
async def a_caching_pool_sends_each_function_once_per_worker(
    d: DistributedAPI,
) -> None:
    workers = await d.addprocs(2)
    pool = d.CachingPool(workers)
    key = new_key()
    f = Counted(key, b"x" * 100_000)
    with within(PATIENCE, "calls through a CachingPool"):
        for _ in range(2):
            got = await d.pmap(f, range(10), pool=pool)
            assert got == [(x, 100_000) for x in range(10)]
        for _ in range(4):
            await d.remotecall_fetch(f, pool, 0)
        counts = [await d.remotecall_fetch(unpickled, p, key) for p in workers]
    assert counts == [1, 1], f"the function was unpickled {counts} times per worker"

    twin = Counted(key)
    assert twin == f and twin is not f
    with within(PATIENCE, "an equal but distinct function"):
        for _ in range(3):
            await d.pmap(twin, range(6), pool=pool)
        counts = [await d.remotecall_fetch(unpickled, p, key) for p in workers]
    assert counts == [2, 2], f"an equal function shared the cache: {counts}"


@scenario("caching_pool.not-serialisable")
async def a_caching_pool_cannot_be_sent(d: DistributedAPI) -> None:
    (pid,) = await d.addprocs(1)
    pool = d.CachingPool([pid])
    try:
        with within(PATIENCE, "sending a CachingPool"):
            await d.remotecall_fetch(return_value, pid, pool)
    except Exception as exc:
        text = str(exc) + str(getattr(exc, "exception", ""))
        assert "CachingPool" in text and "serialis" in text.replace("iz", "is"), (
            f"the error does not say CachingPools are not serialisable: {exc!r}"
        )
    else:
        raise AssertionError("a CachingPool was sent to a worker")


async def _cached_everywhere(
    d: DistributedAPI, workers: list[int], key: str, expected: int
) -> None:
    async def settled() -> bool:
        counts = [await d.remotecall_fetch(alive, p, key) for p in workers]
        return counts == [expected] * len(workers)

    await eventually(settled, f"cached copies on the workers are not {expected}")


@scenario("clear.caching-pool-frees-cache")
async def clear_frees_the_cached_copies_and_returns_the_pool(
    d: DistributedAPI,
) -> None:
    workers = await d.addprocs(2)
    pool = d.CachingPool(workers)
    key = new_key()
    f = Counted(key)
    with within(PATIENCE, "calls, then clear"):
        await d.pmap(f, range(8), pool=pool)
        await _cached_everywhere(d, workers, key, 1)
        assert d.clear(pool) is pool, "clear(pool) did not return the pool"
        await _cached_everywhere(d, workers, key, 0)
        await d.pmap(f, range(8), pool=pool)
        counts = [await d.remotecall_fetch(unpickled, p, key) for p in workers]
    assert counts == [2, 2], f"after clear the function was not sent again: {counts}"


@scenario("caching_pool.collected-pool-frees-cache")
async def collecting_a_caching_pool_frees_its_cached_copies(
    d: DistributedAPI,
) -> None:
    workers = await d.addprocs(2)
    key = new_key()
    f = Counted(key)
    pool = d.CachingPool(workers)
    with within(PATIENCE, "calls through a pool that is then dropped"):
        await d.pmap(f, range(8), pool=pool)
        await _cached_everywhere(d, workers, key, 1)
        del pool
        gc.collect()
        await _cached_everywhere(d, workers, key, 0)
