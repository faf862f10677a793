"""``interrupt`` on real workers: SIGINT cancels the running calls only.

The conformance scenarios (``conformance/scenarios/interrupt.py``) cover
the contract; these tests pin what is particular to ``ref``: the worker
process really receives SIGINT and survives it, a plain (non-async)
function computing without awaiting is cut short too, and the runtime's
own work for other processes (serving a Future's value) is never
interrupted.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import trio
from conftest import OpenTestCluster

import ref
from ref._context import current_process

# ------------------------------------------------- functions run on workers


async def _announce_and_sleep(started: ref.RemoteChannel, seconds: float) -> str:
    await ref.put(started, ref.myid())
    await trio.sleep(seconds)
    return "slept"


async def _running_calls() -> int:
    """How many calls interrupt() may cancel, counting this one.

    Async on purpose: a plain function is interrupted by the signal handler
    raising inside it, not through a registered cancel scope.
    """
    return len(current_process()._running_calls)


def _running_calls_seen_by_a_plain_function() -> int:
    return len(current_process()._running_calls)


def _stores(rrid: ref.RRID) -> bool:
    return rrid in current_process().refs


def _kill_self_with_sigint() -> int:
    os.kill(os.getpid(), signal.SIGINT)
    return os.getpid()


async def _start(
    pid: int, started: ref.RemoteChannel, seconds: float = 300.0
) -> ref.Future:
    fut = await ref.remotecall(_announce_and_sleep, pid, started, seconds)
    with trio.fail_after(10):
        assert await ref.take(started) == pid
    return fut


async def _interrupted(fut: ref.Future) -> None:
    with pytest.raises(ref.RemoteException) as caught, trio.fail_after(10):
        await ref.fetch(fut)
    assert isinstance(caught.value.exception, KeyboardInterrupt)
    assert caught.value.pid == fut.where


async def test_sigint_fails_the_running_calls_and_the_worker_survives(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(2):
        started = ref.RemoteChannel(lambda: ref.Channel(8))
        futs = [await _start(2, started) for _ in range(3)]
        ospid = await ref.remotecall_fetch(os.getpid, 2)
        await ref.interrupt(2)
        for fut in futs:
            await _interrupted(fut)
        assert "interrupt()" in str((await _error_of(futs[0])).remote_traceback), (
            "the remote traceback should say the call was interrupted"
        )
        assert await ref.remotecall_fetch(os.getpid, 2) == ospid
        assert await ref.remotecall_fetch(_running_calls, 2) == 1  # this one
        # A plain function takes no cancel scope (a signal interrupts it).
        assert (
            await ref.remotecall_fetch(_running_calls_seen_by_a_plain_function, 2) == 0
        )

        # A SIGINT from anywhere (not only interrupt()) is handled the same:
        # here it lands in the plain function that sent it.
        with pytest.raises(ref.RemoteException) as caught, trio.fail_after(10):
            await ref.remotecall_fetch(_kill_self_with_sigint, 3)
        assert isinstance(caught.value.exception, KeyboardInterrupt)
        assert await ref.remotecall_fetch(ref.myid, 3) == 3


async def _error_of(fut: ref.Future) -> ref.RemoteException:
    try:
        await ref.fetch(fut)
    except ref.RemoteException as exc:
        return exc
    raise AssertionError("the future did not fail")


def _mark_then_busy_for(marker: str, seconds: float) -> str:
    """A plain function that says it has started, then holds the loop."""
    Path(marker).write_text("started")
    time.sleep(seconds)
    return "finished"


async def test_a_plain_function_that_never_awaits_is_interrupted_too(
    open_test_cluster: OpenTestCluster, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    async with open_test_cluster(1):
        # A minute of holding the worker's loop: only the signal handler
        # raising inside it can end it within the bound below.
        fut = await ref.remotecall(_mark_then_busy_for, 2, str(marker), 60.0)
        # An interrupt only reaches calls already running (the signal is not
        # kept for later ones), so wait until this one is.
        with trio.fail_after(30):
            while not marker.exists():
                await trio.sleep(0.02)
        await ref.interrupt(2)
        await _interrupted(fut)

        # The worker goes on serving, and later calls are unaffected.
        started = ref.RemoteChannel(lambda: ref.Channel(2))
        later = await _start(2, started, 0.2)
        with trio.fail_after(10):
            assert await ref.fetch(later) == "slept"


async def test_serving_a_future_to_another_process_is_not_interrupted(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        fut = ref.Future(2)
        async with trio.open_nursery() as nursery:
            got: list[object] = []

            async def fetch_it() -> None:
                got.append(await ref.fetch(fut))

            nursery.start_soon(fetch_it)
            with trio.fail_after(10):
                while not await ref.remotecall_fetch(_stores, 2, fut.rrid):
                    await trio.sleep(0.02)
            # The fetch is being served on worker 2 now; only the probe
            # counts as a call that interrupt() may cancel.
            assert await ref.remotecall_fetch(_running_calls, 2) == 1
            await ref.interrupt(2)
            await trio.sleep(0.5)
            await ref.put(fut, 42)
        assert got == [42]


async def test_interrupt_is_for_the_master_and_its_workers_only(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        with pytest.raises(ref.NoSuchProcessError, match="pid=7 is not a worker") as no:
            await ref.interrupt(7)
        assert no.value.pid == 7 and isinstance(no.value, KeyError)
        # The master is a process, but not a worker.
        with pytest.raises(ref.NoSuchProcessError, match="pid=1 is not a worker"):
            await ref.interrupt(2, 1)
        with pytest.raises(ref.RemoteException) as caught:
            await ref.remotecall_fetch(ref.interrupt, 2)
        assert isinstance(caught.value.exception, ref.NotMasterError)
        await ref.interrupt()  # every worker; none is running anything
        await trio.sleep(0.3)
        assert await ref.remotecall_fetch(ref.myid, 2) == 2


@pytest.mark.parametrize("bad", ["2", 2.0, True, [2, "3"]])
async def test_interrupt_refuses_what_is_not_a_pid(bad: object) -> None:
    async with ref.open_cluster():
        with pytest.raises(TypeError, match=r"interrupt: pid .* is not an int"):
            await ref.interrupt(bad)  # type: ignore[arg-type]  # the point
