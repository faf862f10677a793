"""Scenarios for distributed reference counting: who keeps a value alive.

The owner of a reference keeps its value while some process holds the
reference, and frees it when the last holder has fetched (for a Future) or
dropped it.  These scenarios drop references with ``del`` and a garbage
collection, then watch the owner's table (``live_refs``, RRID -> holders)
with ``timedwait`` until it shows what the rule requires.  The functions the
workers run are those of :mod:`conformance.scenarios.references`.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from conformance.registry import scenario
from conformance.scenarios.references import (
    PATIENCE,
    PENDING,
    background,
    capture_log,
    captured,
    drop_and_collect,
    drop_kept,
    fetch_kept,
    forward_kept,
    holders,
    keep,
    kept,
    make_and_touch,
    new_key,
    return_value,
    start,
    stop_capture,
    until_holders,
    within,
)
from spec.api import RRID, DistributedAPI


async def _absent(d: DistributedAPI, owner: int, rrid: RRID, what: str) -> None:
    got = await holders(d, owner, rrid)
    assert got is None, f"{what}: process {owner} already stores {tuple(rrid)}: {got}"


async def _stays(
    d: DistributedAPI, owner: int, rrid: RRID, expected: frozenset[int]
) -> None:
    """``owner`` records ``expected`` now and still does a little later."""
    await until_holders(d, owner, rrid, expected)
    await trio.sleep(PENDING)
    got = await holders(d, owner, rrid)
    assert got == expected, (
        f"process {owner} dropped or changed {tuple(rrid)}: {got}, "
        f"expected {sorted(expected)}"
    )


@scenario("remote_ref.storage-created-lazily")
async def storage_created_lazily(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    fut = d.Future(w1)
    rc = d.RemoteChannel(w1)
    await trio.sleep(PENDING)
    with within(PATIENCE, "looking at the owner"):
        await _absent(d, w1, fut.rrid, "Future(p) before any operation")
        await _absent(d, w1, rc.rrid, "RemoteChannel(p) before any operation")
        assert not await d.isready(fut)
    await until_holders(d, w1, fut.rrid, frozenset({1}))
    with within(PATIENCE, "isready"):
        assert not await d.isready(rc)
    await until_holders(d, w1, rc.rrid, frozenset({1}))

    # Each operation that can wait creates the storage while it waits.
    for kind, op in (
        ("Future", "fetch"),
        ("Future", "wait"),
        ("RemoteChannel", "take"),
    ):
        ref: Any = d.Future(w1) if kind == "Future" else d.RemoteChannel(w1)
        async with background() as nursery:
            pending = start(nursery, f"{op} on a fresh {kind}", getattr(d, op), ref)
            await until_holders(d, w1, ref.rrid, frozenset({1}))
            await pending.still_pending(0.05)
            with within(PATIENCE, "put"):
                await d.put(ref, "v")
            await pending.outcome()
    put_rc = d.RemoteChannel(w1)
    with within(PATIENCE, "put"):
        await d.put(put_rc, "v")
    await until_holders(d, w1, put_rc.rrid, frozenset({1}))

    # A reference created on a worker has that worker as its first holder.
    key = new_key()
    with within(PATIENCE, "creating a channel on a worker"):
        rrid = await d.remotecall_fetch(make_and_touch, w2, d, key, w1)
    assert rrid.whence == w2
    await until_holders(d, w1, rrid, frozenset({w2}))


@scenario("future.owner-frees-after-fetch")
async def owner_frees_after_fetch(d: DistributedAPI) -> None:
    [w] = await d.addprocs(1)
    fut = await d.remotecall(return_value, w, "fetched")
    with within(PATIENCE, "wait"):
        await d.wait(fut)
    await _stays(d, w, fut.rrid, frozenset({1}))
    with within(PATIENCE, "fetch"):
        assert await d.fetch(fut) == "fetched"
    await until_holders(d, w, fut.rrid, None)

    dropped = await d.remotecall(return_value, w, "dropped")
    with within(PATIENCE, "wait"):
        await d.wait(dropped)
    rrid = dropped.rrid
    await _stays(d, w, rrid, frozenset({1}))
    del dropped
    drop_and_collect()
    await until_holders(d, w, rrid, None)


@scenario("future.forwarded-keeps-value")
async def forwarded_keeps_value(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)

    # The master fetches first, then the receiving worker.
    key = new_key()
    fut = await d.remotecall(return_value, w1, "first")
    with within(PATIENCE, "forwarding"):
        await d.wait(fut)
        await d.remotecall_fetch(keep, w2, key, fut)
    await until_holders(d, w1, fut.rrid, frozenset({1, w2}))
    with within(PATIENCE, "fetch on the master"):
        assert await d.fetch(fut) == "first"
    await _stays(d, w1, fut.rrid, frozenset({w2}))
    with within(PATIENCE, "fetch on the receiving worker"):
        assert await d.remotecall_fetch(fetch_kept, w2, d, key) == "first"
    await until_holders(d, w1, fut.rrid, None)

    # The master drops its copy unfetched; the worker's fetch still works.
    key = new_key()
    other = await d.remotecall(return_value, w1, "second")
    rrid = other.rrid
    with within(PATIENCE, "forwarding"):
        await d.wait(other)
        await d.remotecall_fetch(keep, w2, key, other)
    del other
    drop_and_collect()
    await _stays(d, w1, rrid, frozenset({w2}))
    with within(PATIENCE, "fetch on the receiving worker"):
        assert await d.remotecall_fetch(fetch_kept, w2, d, key) == "second"
    await until_holders(d, w1, rrid, None)

    # The worker drops its copy unfetched; the master still fetches.
    key = new_key()
    third = await d.remotecall(return_value, w1, "third")
    with within(PATIENCE, "forwarding"):
        await d.wait(third)
        await d.remotecall_fetch(keep, w2, key, third)
    await until_holders(d, w1, third.rrid, frozenset({1, w2}))
    with within(PATIENCE, "drop on the worker"):
        await d.remotecall_fetch(drop_kept, w2, key)
    await _stays(d, w1, third.rrid, frozenset({1}))
    with within(PATIENCE, "fetch on the master"):
        assert await d.fetch(third) == "third"
    await until_holders(d, w1, third.rrid, None)


async def fetch_and_report(d: DistributedAPI, ref: Any) -> Any:
    """Fetch ``ref`` here (on its owner)."""
    return await d.fetch(ref)


@scenario("future.sent-to-owner-and-fetched")
async def sent_to_owner_and_fetched(d: DistributedAPI) -> None:
    [w] = await d.addprocs(1)
    fut = await d.remotecall(return_value, w, [1, 2])
    with within(PATIENCE, "sending the Future to its owner, fetching there"):
        assert await d.remotecall_fetch(fetch_and_report, w, d, fut) == [1, 2]
    await _stays(d, w, fut.rrid, frozenset({1}))
    with within(PATIENCE, "fetch on the master"):
        assert await d.fetch(fut) == [1, 2]
    await until_holders(d, w, fut.rrid, None)


@scenario("remote_channel.kept-until-all-holders-drop")
async def channel_kept_until_all_drop(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    for master_first in (True, False):
        key = new_key()
        rc = d.RemoteChannel(w1)
        rrid = rc.rrid
        with within(PATIENCE, "using and forwarding the channel"):
            await d.put(rc, "kept")
            await d.remotecall_fetch(keep, w2, key, rc)
        await until_holders(d, w1, rrid, frozenset({1, w2}))
        if master_first:
            del rc
            drop_and_collect()
            await _stays(d, w1, rrid, frozenset({w2}))
            with within(PATIENCE, "the worker still takes the value"):
                assert await d.remotecall_fetch(take_kept, w2, d, key) == "kept"
            with within(PATIENCE, "drop on the worker"):
                await d.remotecall_fetch(drop_kept, w2, key)
        else:
            with within(PATIENCE, "drop on the worker"):
                await d.remotecall_fetch(drop_kept, w2, key)
            await _stays(d, w1, rrid, frozenset({1}))
            with within(PATIENCE, "the master still takes the value"):
                assert await d.take(rc) == "kept"
            del rc
            drop_and_collect()
        await until_holders(d, w1, rrid, None)


async def take_kept(d: DistributedAPI, key: str) -> Any:
    return await d.take(kept(key))


@scenario("remote_ref.holders-learned-asynchronously")
async def holders_learned_asynchronously(d: DistributedAPI) -> None:
    w1, w2, w3 = await d.addprocs(3)
    rc = d.RemoteChannel(w1)
    fut = await d.remotecall(return_value, w1, "v")
    with within(PATIENCE, "creating the storage"):
        await d.isready(rc)
        await d.wait(fut)
    for ref in (rc, fut):
        key, key2 = new_key(), new_key()
        with within(PATIENCE, "passing the reference from the master to a worker"):
            await d.remotecall_fetch(keep, w2, key, ref)
        await until_holders(d, w1, ref.rrid, frozenset({1, w2}))
        with within(PATIENCE, "passing the reference between two workers"):
            await d.remotecall_fetch(forward_kept, w2, d, key, w3, key2)
        await until_holders(d, w1, ref.rrid, frozenset({1, w2, w3}))
        with within(PATIENCE, "drop on the workers"):
            await d.remotecall_fetch(drop_kept, w2, key)
            await d.remotecall_fetch(drop_kept, w3, key2)
        await until_holders(d, w1, ref.rrid, frozenset({1}))


@scenario("remote_ref.dead-holder-released")
async def dead_holder_released(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    key = new_key()
    on_worker = d.RemoteChannel(w1)
    on_master = d.RemoteChannel()
    fut = await d.remotecall(return_value, w1, "v")
    watched = [(w1, on_worker.rrid), (1, on_master.rrid), (w1, fut.rrid)]
    with within(PATIENCE, "creating and forwarding"):
        await d.isready(on_worker)
        await d.isready(on_master)
        await d.wait(fut)
        await d.remotecall_fetch(keep, w2, key, [on_worker, on_master, fut])
    for owner, rrid in watched:
        await until_holders(d, owner, rrid, frozenset({1, w2}))
    with within(PATIENCE, "fetch"):
        await d.fetch(fut)
    del on_worker, on_master, fut
    drop_and_collect()
    for owner, rrid in watched:
        await _stays(d, owner, rrid, frozenset({w2}))
    with within(PATIENCE, "removing the holder"):
        await d.rmprocs(w2)
    for owner, rrid in watched:
        await until_holders(d, owner, rrid, None)


@scenario("remote_ref.bookkeeping-for-dead-owner-dropped")
async def bookkeeping_for_dead_owner_dropped(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    fut = await d.remotecall(return_value, w1, "v")
    rc = d.RemoteChannel(w1)
    with within(PATIENCE, "using the references"):
        await d.wait(fut)
        await d.isready(rc)
    with within(PATIENCE, "removing the owner"):
        await d.rmprocs(w1)
    unknown = d.Future(w2 + 1000)

    unraisable: list[str] = []
    previous_hook = sys.unraisablehook

    def hook(info: Any) -> None:
        unraisable.append(repr(info.exc_value))

    sys.unraisablehook = hook
    capture_log(d.log_name)
    try:
        key = new_key()
        with within(PATIENCE, "passing references whose owner is gone"):
            await d.remotecall_fetch(capture_log, w2, d.log_name)
            await d.remotecall_fetch(keep, w2, key, [fut, rc, unknown])
        del fut, rc, unknown
        drop_and_collect()
        with within(PATIENCE, "dropping them on the worker"):
            await d.remotecall_fetch(drop_kept, w2, key)
        await trio.sleep(PENDING)
        with within(PATIENCE, "the cluster still works"):
            assert await d.remotecall_fetch(d.myid, w2) == w2
            assert await d.remotecall_fetch(return_value, w2, "ok") == "ok"
            on_worker = await d.remotecall_fetch(captured, w2)
        on_master = captured()
    finally:
        sys.unraisablehook = previous_hook
        stop_capture(d.log_name)
    assert not unraisable, f"errors while dropping references: {unraisable}"
    assert not on_master, f"logged on the master: {on_master}"
    assert not on_worker, f"logged on worker {w2}: {on_worker}"
    assert w2 in d.workers()
