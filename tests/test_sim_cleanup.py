"""No simulated worker outlives its cluster, however ``sim.open_cluster`` ends.

The simulator's counterpart of ``test_cleanup.py`` and of the close
escalation test in ``test_launch_contract.py``: the catalogue names these
tests for ``open_cluster.close-removes-workers`` and
``open_cluster.close-escalates`` on ``sim``.

``sim.open_cluster`` cancels whatever still runs in its world once the
runtime has shut down, so "the node is done afterwards" would prove
nothing.  What proves the runtime removed a worker is how its simulated
process ended: an exit code means ``serve_worker`` returned (0: the worker left when
asked; 1: it left on losing its master); ``dead`` means the launcher
killed it.  A node cut short by the world's own teardown has neither.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

import ref
import sim
from ref._api import CLOSE_GRACE
from sim._node import Node


def _workers(world: sim.World) -> list[Node]:
    return [node for node in world.nodes if node.pid != 1]


def _how_each_ended(nodes: list[Node]) -> dict[int, str]:
    """Per pid: "exited" (left when asked), "killed", or what else it is."""
    ended = {}
    for node in nodes:
        if not node.done.is_set():
            ended[node.pid] = "still running"
        elif node.dead:
            ended[node.pid] = "killed"
        elif node.exit_code is None:
            ended[node.pid] = "cut short by the world's teardown"
        elif node.exit_code == 0:
            ended[node.pid] = "exited"
        else:
            ended[node.pid] = f"exited with status {node.exit_code}"
    return ended


def test_normal_exit_leaves_no_simulated_worker() -> None:
    async def main() -> dict[int, str]:
        async with sim.open_cluster():
            pids = await ref.addprocs(2)
            world = sim.current_world()
            nodes = _workers(world)
            assert sorted(n.pid for n in nodes) == pids
            assert _how_each_ended(nodes) == dict.fromkeys(pids, "still running")
        return _how_each_ended(nodes)

    assert sim.run(main, seed=1) == {2: "exited", 3: "exited"}


def test_exit_by_exception_leaves_no_simulated_worker() -> None:
    """The block's own exception comes out unwrapped, after the cleanup."""
    nodes: list[Node] = []

    async def main() -> None:
        async with sim.open_cluster():
            await ref.addprocs(2)
            nodes.extend(_workers(sim.current_world()))
            raise RuntimeError("the block failed")

    with pytest.raises(RuntimeError, match="the block failed"):
        sim.run(main, seed=2)
    assert _how_each_ended(nodes) == {2: "exited", 3: "exited"}


def test_cancelled_block_with_a_pending_call_leaves_no_simulated_worker() -> None:
    async def main() -> tuple[bool, dict[int, str]]:
        nodes: list[Node] = []
        with trio.CancelScope() as scope:
            async with sim.open_cluster():
                await ref.addprocs(2)
                nodes.extend(_workers(sim.current_world()))
                scope.deadline = trio.current_time() + 0.3
                await ref.remotecall_fetch(trio.sleep, 2, 60)
        return scope.cancelled_caught, _how_each_ended(nodes)

    cancelled, ended = sim.run(main, seed=3)
    assert cancelled
    # The cancelled master closes its links without asking first (as under
    # ref): the workers leave on losing their master, with status 1.  That
    # they left at all shows the cancellation did not reach them as it
    # reaches the master: simulated processes are processes of their own.
    assert ended == {2: "exited with status 1", 3: "exited with status 1"}


def test_close_kills_simulated_workers_that_do_not_exit_within_the_grace(
    tmp_path: Path,
) -> None:
    """Stopped workers cannot answer the exit request: after one grace
    period for all, the launcher kills them; the free one leaves at once."""

    async def main() -> tuple[int, dict[int, str]]:
        # No leak check: stopped workers never settle, and the oracle would
        # wait for them before the cluster even starts closing.
        async with sim.open_cluster(check_leaks=False):
            pids = await ref.addprocs(3)
            nodes = _workers(sim.current_world())
            for stuck in pids[:2]:
                await ref.faults.suspend(stuck)
            closing = trio.current_time()
        return round(closing * 1e9), _how_each_ended(nodes)

    trace = tmp_path / "trace.jsonl"
    closing, ended = sim.run(main, seed=4, trace=trace)
    assert ended == {2: "killed", 3: "killed", 4: "exited"}

    # When each process ended, in virtual seconds after the close began.
    lines = trace.read_text().splitlines()[1:]
    exits = [e for e in map(json.loads, lines) if e["kind"] == "exit"]
    after = {e["pid"]: (e["t"] - closing) / 1e9 for e in exits}
    # The grace is one for all, waited out in full (virtual time, so the
    # bound is exact up to the network's latency), then both are killed.
    for stuck in (2, 3):
        assert CLOSE_GRACE <= after[stuck] < CLOSE_GRACE + 1.0, after
    assert after[4] < 1.0, after
