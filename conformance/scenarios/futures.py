"""Futures: fetch, wait, isready and put on the handle a remote call returns.

A Future is write-once.  ``fetch`` waits for the value and caches it, so a
fetched Future answers ``fetch`` and ``isready`` by itself, even after its
owner has gone; ``wait`` returns the Future; a failed call's
``RemoteException`` is raised by both, whoever owns the Future.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from conformance.registry import scenario
from spec.api import (
    DistributedAPI,
    DistributedError,
    FutureAlreadySetError,
    RemoteException,
    RemoteRef,
)

from ._shipped import (
    PATIENCE,
    ScenarioError,
    eventually,
    new_key,
    open_gate,
    raise_scenario_error,
    records,
    return_value,
    until_gone,
    wait_gate,
    within,
)

#: How long a call must stay unfinished to count as "still blocked".
BLOCKED_FOR = 0.3


async def _blocked_call(d: DistributedAPI, pid: int, key: str, value: Any) -> RemoteRef:
    """A remotecall to ``pid`` that has started and waits for ``key``'s gate."""
    fut = await d.remotecall(wait_gate, pid, key, value)

    async def started() -> bool:
        got: list[Any] = await d.remotecall_fetch(records, pid, key)
        return "started" in got

    await eventually(started, f"the call on pid {pid} never started")
    return fut


async def _remove(d: DistributedAPI, pid: int) -> None:
    with within(PATIENCE, f"rmprocs({pid})"):
        removal = await d.rmprocs(pid)
        await removal.wait()
    await until_gone(d, pid)


# ----------------------------------------------------------------- fetch


@scenario("fetch.future-blocks-until-ready")
async def fetch_waits_for_an_unfinished_call_then_returns_its_value(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    for target in (pid, d.myid()):
        value = ["value", target]
        _, got = await _blocks_until_released(d, target, value, d.fetch, "fetch")
        assert got == value, f"fetch returned {got!r}, the call returned {value!r}"


async def _blocks_until_released(
    d: DistributedAPI,
    target: int,
    value: Any,
    op: Callable[[Any], Awaitable[Any]],
    name: str,
) -> tuple[RemoteRef, Any]:
    """Check ``op(fut)`` waits while a call on ``target`` runs; return its result."""
    key = new_key()
    fut = await _blocked_call(d, target, key, value)
    got: list[Any] = []

    async def call() -> None:
        got.append(await op(fut))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await trio.sleep(BLOCKED_FOR)
        assert not got, f"{name} returned {got!r} before the call on {target} ended"
        await d.remotecall_fetch(open_gate, target, key)
        with within(PATIENCE, f"{name} once the call on {target} ended"):
            while not got:
                await trio.sleep(0.01)
    return fut, got[0]


@scenario("fetch.future-caches-value")
async def a_fetched_future_gives_its_value_again_without_asking_the_owner(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    with within(PATIENCE, "fetching a Future twice"):
        fut = await d.remotecall(return_value, pid, ["mutable", "value"])
        first = await d.fetch(fut)
        second = await d.fetch(fut)
    assert first == ["mutable", "value"], f"fetch returned {first!r}"
    # A second trip to the owner would bring back a fresh copy.
    assert second is first, "the second fetch brought a new copy from the owner"


@scenario("fetch.future-cache-survives-owner-exit", "isready.future-true-when-cached")
async def a_fetched_future_keeps_its_value_after_the_owner_left(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    with within(PATIENCE, "fetching before the owner leaves"):
        fut = await d.remotecall(return_value, pid, {"kept": True})
        assert await d.fetch(fut) == {"kept": True}
    await _remove(d, pid)
    try:
        with within(PATIENCE, "fetch and isready after the owner left"):
            got = await d.fetch(fut)
            ready = await d.isready(fut)
    except DistributedError as exc:
        raise AssertionError(
            f"a fetched Future whose owner left asked the owner again: {exc!r}"
        ) from exc
    assert got == {"kept": True}, f"fetch after the owner left gave {got!r}"
    assert ready is True, f"isready of a fetched Future whose owner left is {ready!r}"


@scenario("fetch.future-raises-remote-exception")
async def fetch_raises_the_failed_calls_remote_exception_for_any_owner(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    for owner in (pid, d.myid()):
        fut = await d.remotecall(raise_scenario_error, owner, "fetched", owner)
        for attempt in ("first", "second"):
            try:
                with within(PATIENCE, f"fetch of a failed call on {owner}"):
                    got = await d.fetch(fut)
            except RemoteException as exc:
                assert exc.pid == owner, f"RemoteException.pid {exc.pid}, not {owner}"
                assert isinstance(exc.exception, ScenarioError), f"{exc.exception!r}"
                assert exc.exception.args == ("fetched", owner), (
                    f"args {exc.exception.args!r}"
                )
            else:
                raise AssertionError(
                    f"{attempt} fetch of a failed call owned by {owner} gave {got!r}"
                )


# ------------------------------------------------------------------ wait


@scenario("wait.future-returns-future")
async def wait_blocks_until_the_value_is_stored_and_returns_the_future(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    for target in (pid, d.myid()):
        fut, got = await _blocks_until_released(d, target, "waited", d.wait, "wait")
        assert got is fut, f"wait returned {got!r}, not the Future {fut!r}"
        with within(PATIENCE, "fetch after wait"):
            assert await d.fetch(fut) == "waited", "the Future's value after wait"


@scenario("wait.future-raises-remote-exception")
async def wait_raises_the_failed_calls_remote_exception(d: DistributedAPI) -> None:
    (pid,) = await d.addprocs(1)
    for owner in (pid, d.myid()):
        fut = await d.remotecall(raise_scenario_error, owner, "waited", owner)
        try:
            with within(PATIENCE, f"wait on a failed call on {owner}"):
                got = await d.wait(fut)
        except RemoteException as exc:
            assert exc.pid == owner, f"RemoteException.pid {exc.pid}, not {owner}"
            assert isinstance(exc.exception, ScenarioError), f"{exc.exception!r}"
        else:
            raise AssertionError(f"wait on a failed call on {owner} gave {got!r}")


# --------------------------------------------------------------- isready


@scenario("isready.future-false-then-true")
async def isready_is_false_while_the_call_runs_and_true_once_stored(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    for target in (pid, d.myid()):
        key = new_key()
        fut = await _blocked_call(d, target, key, "ready")
        with within(PATIENCE, "isready while the call runs"):
            early = await d.isready(fut)
        assert early is False, f"isready was {early!r} while the call ran on {target}"
        await d.remotecall_fetch(open_gate, target, key)

        async def ready(fut: RemoteRef = fut) -> bool:
            answer = await d.isready(fut)
            assert answer in (True, False), f"isready answered {answer!r}"
            return answer

        await eventually(ready, f"isready never became True for the call on {target}")


# ------------------------------------------------------------------- put


@scenario("put.future-then-fetch")
async def put_stores_the_value_and_returns_the_future(d: DistributedAPI) -> None:
    fut = d.Future()
    assert fut.where == d.myid(), f"Future() is stored on {fut.where}, not the caller"
    value = {"put": [1, 2]}
    with within(PATIENCE, "put then fetch"):
        returned = await d.put(fut, value)
        got = await d.fetch(fut)
    assert returned is fut, f"put returned {returned!r}, not the Future"
    assert got == value, f"fetch after put gave {got!r}"


@scenario("put.future-write-once")
async def a_second_put_on_a_future_is_refused_and_keeps_the_first_value(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    for owner in (d.myid(), pid):
        fut = d.Future(owner)
        with within(PATIENCE, f"the first put on a Future owned by {owner}"):
            await d.put(fut, "first")
        try:
            with within(PATIENCE, f"the second put on a Future owned by {owner}"):
                await d.put(fut, "second")
        except FutureAlreadySetError:
            pass
        else:
            raise AssertionError(f"a second put on a Future owned by {owner} worked")
        with within(PATIENCE, "fetch after the refused put"):
            got = await d.fetch(fut)
        assert got == "first", f"the Future owned by {owner} now holds {got!r}"


@scenario("put.future-from-call-refused")
async def put_on_a_finished_calls_future_is_refused_by_its_owner(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    fut = await d.remotecall(return_value, pid, "computed")

    async def completed() -> bool:
        return await d.isready(fut)

    await eventually(completed, "the call never completed")
    try:
        with within(PATIENCE, "put on the unfetched Future of a finished call"):
            await d.put(fut, "overwritten")
    except RemoteException as exc:
        assert exc.pid == pid, f"RemoteException.pid {exc.pid}, expected {pid}"
        assert isinstance(exc.exception, FutureAlreadySetError), (
            f"the owner refused with {exc.exception!r}"
        )
    else:
        raise AssertionError("put on a finished call's Future was accepted")
    with within(PATIENCE, "fetch after the refused put"):
        got = await d.fetch(fut)
    assert got == "computed", f"the call's Future now holds {got!r}"
