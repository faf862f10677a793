"""The leak oracle: at the end of a simulated cluster, unreferenced values are gone.

A leak is planted the way a runtime bug would make one: a process stops
tracking its reference object (its finalizer is detached, so no "del
client" notice will ever reach the owner) and drops it.  The owner then
stores a value that no live process references.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

import ref
import sim
from ref._context import current_process
from spec.api import RRID, DistributedAPI

#: Virtual seconds any one scenario below may take.
BOUND = 60.0

#: What a worker keeps for a test, by key (module level: it travels by name).
_kept: dict[str, Any] = {}


def keep(key: str, value: Any) -> None:
    _kept[key] = value


def _leak(obj: ref.Future | ref.RemoteChannel) -> RRID:
    """Make this process forget ``obj`` without telling its owner."""
    finalizer = current_process()._finalizers.pop(obj.rrid)
    finalizer.detach()
    return obj.rrid


async def _stored_future(pid: int) -> ref.Future:
    """A Future whose value is stored on ``pid``, unfetched here."""
    fut: ref.Future = await ref.remotecall(ref.myid, pid)
    await ref.wait(fut)
    return fut


async def _stored_channel(pid: int) -> ref.RemoteChannel:
    """A RemoteChannel whose channel exists on ``pid``."""
    chan = ref.RemoteChannel(pid)
    await ref.put(chan, "item")
    return chan


def test_a_value_nobody_references_is_reported_by_owner_and_rrid() -> None:
    planted: dict[int, list[RRID]] = {}

    async def main() -> None:
        async with sim.open_cluster():
            with trio.fail_after(BOUND):
                w2, w3 = await ref.addprocs(2)
                kept = await _stored_future(w3)
                planted[w3] = [_leak(await _stored_future(w3))]
                planted[w2] = [
                    _leak(await _stored_channel(w2)),
                    _leak(await _stored_future(w2)),
                ]
                assert await ref.fetch(kept) == w3

    result = sim.simulate(main, seed=1)

    assert isinstance(result.error, sim.ReferenceLeak), result.error
    assert isinstance(result.error, AssertionError)
    assert result.error.leaked == {p: tuple(sorted(r)) for p, r in planted.items()}
    message = str(result.error)
    for pid, rrids in planted.items():
        for rrid in rrids:
            assert f"RRID({rrid.whence}, {rrid.id})" in message
        assert f"on pid {pid}" in message
    [check] = result.leak_checks
    assert check.settled
    assert check.leaked == result.error.leaked


def test_values_still_referenced_anywhere_are_not_leaks() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            with trio.fail_after(BOUND):
                w2, w3 = await ref.addprocs(2)
                # Held by the master: an unfetched Future and a channel.
                held = [await _stored_future(w2), await _stored_channel(w3)]
                # Held only by another worker, which keeps what it was sent.
                forwarded = await _stored_future(w3)
                await ref.remotecall_fetch(keep, w2, "forwarded", forwarded)
                del forwarded
                # Owned by the master and held by a worker.
                mine = await _stored_channel(1)
                await ref.remotecall_fetch(keep, w3, "mine", mine)
                del mine
                assert len(held) == 2

    result = sim.simulate(main, seed=2)

    assert result.ok, result.error
    [check] = result.leak_checks
    assert check.settled and not check.leaked
    assert check.stored == {1: 1, 2: 1, 3: 2}


def test_values_whose_references_were_dropped_or_fetched_are_freed() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            with trio.fail_after(BOUND):
                pids = await ref.addprocs(3)
                for pid in pids:
                    assert await ref.fetch(await ref.remotecall(ref.myid, pid)) == pid
                    dropped = await _stored_channel(pid)
                    del dropped

    result = sim.simulate(main, seed=3)

    assert result.ok, result.error
    [check] = result.leak_checks
    assert check.settled
    assert check.stored == {1: 0, 2: 0, 3: 0, 4: 0}


def test_the_oracle_reports_to_the_trace() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            with trio.fail_after(BOUND):
                [pid] = await ref.addprocs(1)
                _leak(await _stored_future(pid))

    result = sim.simulate(main, seed=4, record=True)

    assert isinstance(result.error, sim.ReferenceLeak)
    events = [json.loads(line) for line in result.trace.text().splitlines()[1:]]
    [check] = [e for e in events if e["kind"] == "leak_check"]
    assert check["settled"] is True
    assert check["leaked"] == [[2, 1, 1]]


def test_a_cluster_that_does_not_settle_is_not_judged() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            with trio.fail_after(BOUND):
                w2, w3 = await ref.addprocs(2)
                _leak(await _stored_future(w2))
                # A stopped worker with input waiting: never quiet.
                sim.hang(w3)
                await ref.remote_do(ref.myid, w3)

    result = sim.simulate(main, seed=5)

    assert result.ok, result.error
    [check] = result.leak_checks
    assert not check.settled
    assert not check.leaked


def test_check_leaks_false_turns_the_oracle_off() -> None:
    async def main() -> None:
        async with sim.open_cluster(check_leaks=False):
            with trio.fail_after(BOUND):
                [pid] = await ref.addprocs(1)
                _leak(await _stored_future(pid))

    result = sim.simulate(main, seed=6)

    assert result.ok, result.error
    assert result.leak_checks == ()


def test_a_failing_block_is_not_judged() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            _leak(await _stored_future(pid))
            raise KeyError("the block's own error")

    result = sim.simulate(main, seed=7)

    assert isinstance(result.error, KeyError)
    assert result.leak_checks == ()


async def _leaky_scenario(api: DistributedAPI) -> None:
    [pid] = await api.addprocs(1)
    _leak(await _stored_future(pid))


def test_a_leaking_conformance_scenario_fails() -> None:
    with pytest.raises(sim.ReferenceLeak, match=r"on pid 2: RRID\(1, 1\)"):
        sim.run_scenario(_leaky_scenario, seed=8, timeout=BOUND)
