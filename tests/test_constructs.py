"""Julia's macros as functions: ``ref._constructs``.

The documented behaviours are conformance scenarios
(``conformance/scenarios/constructs.py``); these tests cover the split
rule as a property, and the edges of sync(), everywhere, the globals
helpers and the background loop.
"""

from __future__ import annotations

import gc
import logging
import pickle
import sys
from typing import Any

import pytest
import trio
from conftest import OpenTestCluster
from hypothesis import given
from hypothesis import strategies as st

import ref

# ------------------------------------------------- functions run on workers


def _whoami() -> int:
    return ref.myid()


def _fail(x: Any = None) -> None:
    raise ValueError(f"failed at {x}")


async def _async_double(x: int) -> int:
    await trio.sleep(0)
    return 2 * x


def _read(name: str) -> Any:
    return getattr(sys.modules["__main__"], name, "<undefined>")


_marks: list[str] = []


async def _mark_later(tag: str) -> None:
    await trio.sleep(0.1)
    _marks.append(tag)


# ------------------------------------------------------------ splitrange


@given(st.integers(-50, 50), st.integers(-1, 120), st.integers(1, 20))
def test_splitrange_covers_the_span_in_near_equal_contiguous_chunks(
    lo: int, length: int, np: int
) -> None:
    hi = lo + length - 1
    chunks = ref.splitrange(lo, hi, np)
    n = max(length, 0)
    assert len(chunks) == min(n, np)
    assert [i for c in chunks for i in c] == list(range(lo, hi + 1))
    each, extras = divmod(n, np)
    sizes = [len(c) for c in chunks]
    assert sizes == [each + 1] * extras + [each] * (len(chunks) - extras)


def test_splitrange_needs_a_positive_count() -> None:
    with pytest.raises(ValueError, match="np"):
        ref.splitrange(1, 3, 0)


def test_any_is_one_object_even_after_pickling() -> None:
    assert pickle.loads(pickle.dumps(ref.ANY)) is ref.ANY
    assert repr(ref.ANY) == "ANY"


# ------------------------------------------------------------------ sync


async def test_an_error_in_the_block_body_cancels_its_tasks(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(0):
        finished: list[str] = []

        async def forever() -> None:
            await trio.sleep_forever()
            finished.append("never")

        with pytest.raises(ExceptionGroup) as info:
            async with ref.sync() as block:
                block.start_soon(forever)
                raise KeyError("body")
        assert info.value.subgroup(KeyError) is not None
        assert finished == []


async def test_tasks_of_a_block_register_their_own_spawns(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        (pid,) = ref.workers()
        futures: list[Any] = []

        async def spawner() -> None:
            futures.append(await ref.spawnat(pid, _fail, "inner"))

        with pytest.raises(ExceptionGroup) as info:
            async with ref.sync() as block:
                block.start_soon(spawner)
        (error,) = info.value.exceptions
        assert isinstance(error, ref.RemoteException) and error.pid == pid


async def test_a_spawn_outside_sync_is_not_waited_for(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(0):
        _marks.clear()
        async with ref.sync():
            pass
        fut = await ref.spawnat(1, _mark_later, "late")
        assert _marks == []
        await ref.wait(fut)
        assert _marks == ["late"]


# ------------------------------------------------------------ everywhere


async def test_everywhere_reports_an_unreachable_pid_with_the_others(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        (pid,) = ref.workers()
        with pytest.raises(ExceptionGroup) as info:
            await ref.everywhere(_whoami, procs=[pid, 4242])
        (error,) = info.value.exceptions
        assert isinstance(error, ref.NoSuchProcessError)
        assert await ref.everywhere(_whoami, procs=[]) is None
        with pytest.raises(TypeError, match="procs"):
            await ref.everywhere(_whoami, procs="2")


async def test_define_and_clear_globals_edges(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        (pid,) = ref.workers()
        with pytest.raises(ValueError, match="valid global name"):
            await ref.define_globals({"not a name": 1})
        await ref.define_globals({"distref_t_x": [1]}, procs=pid)
        assert await ref.remotecall_fetch(_read, pid, "distref_t_x") == [1]
        assert _read("distref_t_x") == "<undefined>"
        await ref.clear_globals("distref_t_x")
        assert await ref.remotecall_fetch(_read, pid, "distref_t_x") is None
        await ref.clear_globals([], [])


# ------------------------------------------------------- distributed_for


async def test_a_reducer_loop_accepts_async_bodies(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(2):
        assert await ref.distributed_for(_async_double, range(10), _add) == 90
        assert await ref.distributed_for(_async_double, [7], _add) == 14


def _add(a: int, b: int) -> int:
    return a + b


async def test_unretrieved_loop_errors_are_logged(
    open_test_cluster: OpenTestCluster, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_test_cluster(1):
        task = await ref.distributed_for(_fail, range(2))
        with trio.fail_after(10):
            while not task.done:
                await trio.sleep(0.01)
        assert repr(task) == "DistributedTask(1 chunks, done)"
        with caplog.at_level(logging.ERROR, logger="ref"):
            del task
            gc.collect()
        assert "nobody waited" in caplog.text
