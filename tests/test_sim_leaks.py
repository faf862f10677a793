"""Round trips leave no trace in the owners' reference tables (on the simulator).

After many ``remotecall_fetch`` calls, which store nothing, and many
``remotecall`` + ``fetch`` round trips, each of which stores its result on
the worker until the fetch lets go of it, every process's table of stored
values (``ref.live_refs()``) is back to the size it had before.  Each
worker's table starts non-empty (a channel the master keeps), so a table
that lost an entry fails as surely as one that kept one.
"""

from __future__ import annotations

import trio

import ref
import sim

#: Virtual seconds one round trip may take on average before the test fails.
PER_ROUND_TRIP = 0.05


async def _table_sizes(pids: list[int]) -> dict[int, int]:
    """How many values each of ``pids`` (and the master) stores."""
    sizes = {1: len(ref.live_refs())}
    for pid in pids:
        sizes[pid] = len(await ref.remotecall_fetch(ref.live_refs, pid))
    return sizes


def _round_trips(fetches: int, futures: int, seed: int) -> None:
    async def main() -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
        async with sim.open_cluster():
            with trio.fail_after((fetches + futures) * PER_ROUND_TRIP + 60):
                pids = await ref.addprocs(2)
                held = [ref.RemoteChannel(pid) for pid in pids]
                for chan in held:
                    await ref.put(chan, "held")
                before = await _table_sizes(pids)

                for i in range(fetches):
                    pid = pids[i % len(pids)]
                    assert await ref.remotecall_fetch(ref.myid, pid) == pid

                # One unfetched result is visible in its owner's table.
                pending = await ref.remotecall(ref.myid, pids[0])
                await ref.wait(pending)
                during = await _table_sizes(pids)
                assert await ref.fetch(pending) == pids[0]

                for i in range(futures):
                    pid = pids[i % len(pids)]
                    assert await ref.fetch(await ref.remotecall(ref.myid, pid)) == pid
                after = await _table_sizes(pids)
                return before, during, after

    result = sim.simulate(main, seed=seed)
    assert result.ok, result.error
    assert result.value is not None
    before, during, after = result.value

    assert before == {1: 0, 2: 1, 3: 1}
    assert during == {1: 0, 2: 2, 3: 1}
    assert after == before
    [check] = result.leak_checks
    assert check.settled and not check.leaked, check


def test_round_trips_leave_every_table_at_its_starting_size() -> None:
    _round_trips(fetches=10_000, futures=1_000, seed=1)


def test_a_hundred_thousand_round_trips_leave_every_table_at_its_starting_size() -> (
    None
):
    _round_trips(fetches=100_000, futures=10_000, seed=2)
