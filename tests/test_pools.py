"""Worker pools: ``ref._pools`` on real worker processes.

The conformance scenarios (``conformance/scenarios/pools.py``) check the
documented behaviours; these tests cover the edges and the machinery:
proxies, the CachingPool's decode-time cache, removal while a pool is in
use, and the synchronous conveniences.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from conftest import OpenTestCluster, run_on

import ref
from ref._pools import PoolProxy

# ------------------------------------------------- functions run on workers

_flaky_seen: set[str] = set()


def _flaky_rebuild(key: str) -> Flaky:
    """Fails the first time ``key`` is unpickled in a process."""
    if key not in _flaky_seen:
        _flaky_seen.add(key)
        raise RuntimeError("first unpickling fails")
    return Flaky(key)


class Flaky:
    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_flaky_rebuild, (self.key,))

    def __call__(self, x: int) -> int:
        return x + 1


async def _take_twice_and_hold(pool: Any, seconds: float) -> list[int]:
    pids = [await pool.take(), await pool.take()]
    await trio.sleep(seconds)
    for pid in pids:
        await pool.put(pid)
    return pids


def _whoami() -> int:
    return ref.myid()


def _ref_count() -> int:
    return len(ref.live_refs())


# ------------------------------------------------------- local semantics


async def test_pool_members_are_handed_out_fifo_and_put_is_idempotent(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(0):
        pool = ref.WorkerPool([1])
        assert await pool.take() == 1
        await pool.put(1)
        await pool.put(1)  # a second put of a free member changes nothing
        assert await pool.take() == 1
        assert not await pool.isready()
        await pool.put(1)
        assert repr(pool) == "WorkerPool(members=[1], free=[1], owner=1)"


async def test_wait_on_a_pool_without_live_members_raises_instead_of_hanging(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(0):
        with trio.fail_after(5), pytest.raises(ref.NoActiveWorkerError):
            await ref.wait(ref.WorkerPool([77]))
        # The default pool lends the master instead.
        with trio.fail_after(5):
            assert await ref.wait(ref.default_worker_pool()) is None


async def test_members_must_be_int_pids(open_test_cluster: OpenTestCluster) -> None:
    async with open_test_cluster(0):
        with pytest.raises(TypeError, match="int pid"):
            ref.WorkerPool(["2"])  # type: ignore[list-item]  # the point
        with pytest.raises(TypeError, match="int pid"):
            await ref.put(ref.WorkerPool(), True)
        with pytest.raises(TypeError, match="int or a worker pool"):
            await ref.remotecall_fetch(_whoami, "2")  # type: ignore[arg-type]


async def test_synchronous_queries_work_only_on_the_owner(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(0):
        pool = ref.WorkerPool([1])
        assert ref.workers(pool) == [1] and ref.nworkers(pool) == 1
        assert ref.workers(ref.default_worker_pool()) == [1]
        proxy = PoolProxy(1, 12345)
        with pytest.raises(TypeError, match=r"await pool\.length"):
            len(proxy)
        with pytest.raises(TypeError, match=r"await pool\.workers"):
            ref.workers(proxy)


async def test_a_pool_unpickled_on_its_owner_is_the_pool_itself(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(0):
        pool = ref.WorkerPool([1])
        assert pickle.loads(pickle.dumps(pool)) is pool
        # Once the owner dropped the pool, a proxy says so clearly.
        orphan = PoolProxy(1, 987654)
        with pytest.raises(ref.RemoteException) as info:
            await orphan.take()
        assert isinstance(info.value.exception, ref.ReferenceNotFoundError)
        assert "no longer exists" in str(info.value.exception)


async def test_a_user_pool_object_with_take_and_put_can_be_a_target(
    open_test_cluster: OpenTestCluster,
) -> None:
    class OnlyMaster:
        def __init__(self) -> None:
            self.puts: list[int] = []

        async def take(self) -> int:
            return 1

        async def put(self, pid: int) -> None:
            self.puts.append(pid)

        async def workers(self) -> list[int]:
            return [1]

    async with open_test_cluster(0):
        pool = OnlyMaster()
        assert await ref.remotecall_fetch(_whoami, pool) == 1  # type: ignore[arg-type]
        assert pool.puts == [1]
        with pytest.raises(TypeError, match="int or a worker pool"):
            await ref.remotecall_fetch(_whoami, ref.Channel(1))  # type: ignore[arg-type]


# -------------------------------------------------------------- proxies


async def test_proxy_operations_run_on_the_owner(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(2):
        a, b = ref.workers()
        pool = ref.WorkerPool([a, b])
        held = await ref.remotecall(_take_twice_and_hold, a, pool, 0.3)
        with trio.fail_after(10):
            while await pool.isready():
                await trio.sleep(0.01)
            # Both members are out with the worker: a take here must wait.
            with trio.move_on_after(0.1) as waited:
                await pool.take()
            assert waited.cancelled_caught
            assert sorted(await ref.fetch(held)) == [a, b]
            assert await pool.length() == 2 and await pool.isready()


async def test_a_workers_default_pool_follows_a_replaced_master_default(
    open_test_cluster: OpenTestCluster,
) -> None:
    async def worker_view(d: Any) -> list[int]:
        return await d.default_worker_pool().workers()

    async with open_test_cluster(2):
        a, b = ref.workers()
        assert await ref.remotecall_fetch(worker_view, a, ref) == [a, b]
        ref.set_default_worker_pool(ref.WorkerPool([b]))
        assert await ref.remotecall_fetch(worker_view, a, ref) == [b]


# ---------------------------------------------------------- CachingPool


async def test_a_failed_first_shipment_is_sent_again(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        (pid,) = ref.workers()
        pool = ref.CachingPool([pid])
        f = Flaky("ship")
        with pytest.raises(ref.RemoteException):
            await ref.remotecall_fetch(f, pool, 1)
        assert pool.cached() == []
        assert await ref.remotecall_fetch(f, pool, 1) == 2
        assert await ref.remotecall_fetch(f, pool, 2) == 3
        assert pool.cached() == [(pid, f)]


async def test_every_call_form_goes_through_the_cache(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        (pid,) = ref.workers()
        pool = ref.CachingPool([pid])
        assert await ref.remotecall_fetch(_whoami, pool) == pid
        fut = await ref.remotecall(_whoami, pool)
        assert await ref.fetch(fut) == pid
        fut = await ref.remotecall_wait(_whoami, pool)
        assert await ref.fetch(fut) == pid
        await ref.remote_do(_whoami, pool)
        assert len(pool.cached()) == 1
        # The cached copy is one stored value on the worker.
        assert await ref.remotecall_fetch(_ref_count, pid) >= 1
        before = await ref.remotecall_fetch(_ref_count, pid)
        ref.clear(pool)
        with trio.fail_after(10):
            while await ref.remotecall_fetch(_ref_count, pid) >= before:
                await trio.sleep(0.02)


async def test_clear_needs_a_caching_pool(open_test_cluster: OpenTestCluster) -> None:
    async with open_test_cluster(0):
        with pytest.raises(TypeError, match="clear_globals"):
            ref.clear(ref.WorkerPool())


async def test_a_caching_pool_calls_the_caller_itself_without_caching(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(0):
        pool = ref.CachingPool([1])
        assert await ref.remotecall_fetch(_whoami, pool) == 1
        assert pool.cached() == []


async def test_a_dead_members_cache_entries_are_dropped(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(2):
        a, b = ref.workers()
        pool = ref.CachingPool([a, b])
        await ref.pmap(_whoami_x, range(4), pool=pool)
        assert {pid for pid, _ in pool.cached()} == {a, b}
        await ref.rmprocs(a)
        assert await pool.workers() == [b]
        assert {pid for pid, _ in pool.cached()} == {b}


def _whoami_x(x: int) -> int:
    return ref.myid()


# -------------------------------------------------------------- removal


async def test_a_pool_never_hands_out_a_worker_being_removed(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(2):
        a, b = ref.workers()
        removal = await ref.rmprocs(a, waitfor=0)
        pool = ref.default_worker_pool()
        assert await pool.workers() == [b]
        taken = [await pool.take()]
        with trio.move_on_after(0.1):
            taken.append(await pool.take())
        assert taken == [b]
        await removal.wait()


async def test_the_default_pool_lends_the_master_after_every_worker_left(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        await ref.rmprocs(ref.workers())
        assert await ref.remote(_whoami)() == 1
        assert await ref.default_worker_pool().nworkers() == 1


async def test_remote_rejects_what_is_not_callable(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(0):
        with pytest.raises(TypeError, match="not callable"):
            ref.remote(42)  # type: ignore[arg-type]
        assert repr(ref.remote(_whoami)).startswith("remote(")


# ------------------------------------- a waiting take when the last member leaves
#
# Field report BR-07: a pool with no live member raises NoActiveWorkerError
# from take (the default pool lends process 1).  A take that is already
# waiting when the last member leaves must be woken to say so.  Each case
# runs on real workers and on the simulator.

Body = Callable[[], Awaitable[None]]


@pytest.fixture(params=["ref", "sim"])
def run_with_workers(
    request: pytest.FixtureRequest, open_test_cluster: OpenTestCluster
) -> Callable[[int, Body], None]:
    """``run_with_workers(n, body)``: run ``body`` as master of ``n`` workers."""

    def run(n: int, body: Body) -> None:
        run_on(request.param, n, body, open_test_cluster)

    return run


async def _leave(how: str, pid: int) -> None:
    if how == "rmprocs":
        await ref.rmprocs(pid)
    else:
        await ref.faults.kill(pid)


async def _outcome_of_waiting_take(
    pool: Any, leave: Callable[[], Awaitable[None]]
) -> Any:
    """Start a take (every member busy), run ``leave``, return what the take did."""
    outcome: list[object] = []

    async def waiting_take() -> None:
        try:
            outcome.append(await pool.take())
        except ref.NoActiveWorkerError as exc:
            outcome.append(exc)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting_take)
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == [], "the take should wait: every member is busy"
            await leave()
    (result,) = outcome
    return result


@pytest.mark.parametrize("how", ["rmprocs", "kill"])
@pytest.mark.parametrize("kind", ["WorkerPool", "CachingPool"])
def test_a_waiting_take_raises_when_the_last_member_leaves(
    run_with_workers: Callable[[int, Body], None], kind: str, how: str
) -> None:
    async def body() -> None:
        (w,) = ref.workers()
        pool = getattr(ref, kind)([w])
        assert await pool.take() == w
        result = await _outcome_of_waiting_take(pool, lambda: _leave(how, w))
        assert isinstance(result, ref.NoActiveWorkerError), result
        with pytest.raises(ref.NoActiveWorkerError):
            await pool.take()

    run_with_workers(1, body)


async def _take_from_proxy(pool: Any) -> str:
    """On a worker: take from a pool owned by the master."""
    try:
        return f"took {await pool.take()}"
    except ref.NoActiveWorkerError:
        return "NoActiveWorkerError"


@pytest.mark.parametrize("how", ["rmprocs", "kill"])
def test_a_waiting_take_through_a_proxy_raises_when_the_last_member_leaves(
    run_with_workers: Callable[[int, Body], None], how: str
) -> None:
    async def body() -> None:
        a, b = ref.workers()
        pool = ref.WorkerPool([a])
        assert await pool.take() == a
        with trio.fail_after(30):
            fut = await ref.remotecall(_take_from_proxy, b, pool)
            # The worker's take waits on the master until a leaves.
            while not _owner_has_waiting_take(pool):
                await trio.sleep(0.01)
            assert not await ref.isready(fut)
            await _leave(how, a)
            assert await ref.fetch(fut) == "NoActiveWorkerError"

    run_with_workers(2, body)


def _owner_has_waiting_take(pool: ref.WorkerPool) -> bool:
    stats = pool._takers.statistics()
    return bool(stats.tasks_waiting)


def test_a_waiting_take_on_the_default_pool_gets_the_master_when_all_left(
    run_with_workers: Callable[[int, Body], None],
) -> None:
    async def body() -> None:
        (w,) = ref.workers()
        pool = ref.default_worker_pool()
        assert await pool.take() == w
        result = await _outcome_of_waiting_take(pool, lambda: _leave("rmprocs", w))
        assert result == 1

    run_with_workers(1, body)


# ------------------------------------------- cancelling a take through a proxy


async def _take_then_cancel(pool: Any, rng: random.Random) -> None:
    """Start a take and cancel it at a point ``rng`` picks; return what came."""
    got: list[int] = []

    async def taker() -> None:
        got.append(await pool.take())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(taker)
        if rng.random() < 0.5:
            for _ in range(rng.randrange(12)):
                await trio.lowlevel.checkpoint()
        else:
            await trio.sleep(rng.uniform(0, 0.005))
        nursery.cancel_scope.cancel()
    for pid in got:
        await pool.put(pid)


async def _cancel_many_takes(pool: Any, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(rounds):
        await _take_then_cancel(pool, rng)


async def _hold_members_now_and_then(pool: ref.WorkerPool, rng: random.Random) -> None:
    """Keep members busy at times, so some cancelled takes were waiting."""
    held: list[int] = []
    try:
        while True:
            for _ in range(rng.randrange(1, 3)):
                held.append(await pool.take())
            await trio.sleep(rng.uniform(0, 0.005))
            while held:
                await pool.put(held.pop())
            await trio.sleep(rng.uniform(0, 0.005))
    finally:
        with trio.CancelScope(shield=True):
            for pid in held:
                await pool.put(pid)


def test_cancelled_takes_through_a_proxy_lose_no_member(
    run_with_workers: Callable[[int, Body], None],
) -> None:
    """A take granted on the owner after its caller gave up is put back."""

    async def body() -> None:
        a, b, c = ref.workers()
        pool = ref.WorkerPool([a, b])
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_hold_members_now_and_then, pool, random.Random(1))
                await ref.remotecall_fetch(_cancel_many_takes, c, pool, 150, 7)
                nursery.cancel_scope.cancel()
            # Members granted to cancelled takes come back on their own.
            while len(pool._free) < 2:
                await trio.sleep(0.01)
        assert sorted(pool._free) == [a, b]
        assert await pool.length() == 2

    run_with_workers(3, body)
