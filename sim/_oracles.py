"""Oracles: what must hold at the end of every simulated cluster.

The reference-leak oracle checks the distributed garbage collector, the
``add_client``/``del_client`` accounting behind Julia's remote references:
**every remote value that no live process references has been freed.**

It runs when a ``sim.open_cluster()`` block ends without an error, before
the runtime shuts the cluster down (after that no process is alive, and
nothing is left to check).  First it lets the cluster *settle*: it
collects garbage (so references nobody holds are finalized and their "del
client" notices queued) and waits, in virtual time, until no process has a
notice queued, no byte is in flight or held on the network and no live
process has unread input.  Then it looks at every live process:

* a value is *stored* on its owner while its RRID is in the owner's table
  (``Process.refs``, what ``ref.live_refs()`` shows);
* a process *references* it while it keeps a tracked local reference
  object for that RRID: alive in its table of local references, with the
  finalizer that will tell the owner when it goes (a Future whose value
  was fetched no longer needs the owner, so it does not count).

A stored value that no live process references is a leak; the oracle
raises ``ReferenceLeak`` naming each owner and RRID.  A cluster that does
not settle within ``SETTLE_LIMIT`` virtual seconds (a hung worker, a
partition that never heals, traffic that never stops) cannot be judged:
the check is skipped and says so in the trace and in the run's
``leak_checks``, rather than blaming the runtime for a message the fault
held back.

The oracle reads the runtime's state from outside, as the simulator's
nodes do; it changes nothing but the garbage collector's timing, and it
collects only when every task is blocked, so runs stay deterministic.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
import trio.testing

from spec.api import RRID

if TYPE_CHECKING:
    from ref._process import Process

    from ._cluster import World

#: Virtual seconds a cluster may take to settle before the check is skipped.
SETTLE_LIMIT = 30.0

#: Virtual seconds between two looks at a cluster that has not settled yet.
SETTLE_POLL = 0.01


class ReferenceLeak(AssertionError):
    """Remote values that no live process references were not freed.

    ``leaked`` maps each owner's pid to the RRIDs it still stores, sorted.
    """

    def __init__(self, leaked: Mapping[int, Iterable[RRID]]) -> None:
        self.leaked = {pid: tuple(sorted(leaked[pid])) for pid in sorted(leaked)}
        where = "; ".join(
            f"on pid {pid}: " + ", ".join(_show(rrid) for rrid in rrids)
            for pid, rrids in self.leaked.items()
        )
        count = sum(len(rrids) for rrids in self.leaked.values())
        super().__init__(
            f"{count} remote value(s) that no live process references were not "
            f"freed ({where})"
        )


@dataclass(frozen=True)
class LeakCheck:
    """One run of the leak oracle over one cluster.

    ``settled`` is False when the cluster did not settle in time and the
    check was skipped.  ``stored`` counts the values the live processes
    stored when checked, per owner; ``leaked`` those nobody referenced.
    """

    cluster: int
    settled: bool
    stored: dict[int, int] = field(default_factory=dict)
    leaked: dict[int, tuple[RRID, ...]] = field(default_factory=dict)

    def raise_if_leaked(self) -> None:
        """Raise ``ReferenceLeak`` if the check found a leak."""
        if self.leaked:
            raise ReferenceLeak(self.leaked)


async def check_references(world: World) -> LeakCheck:
    """Settle ``world``'s cluster, then look for leaks in it."""
    settled = await settle(world, SETTLE_LIMIT)
    if not settled:
        world.trace.event("leak_check", settled=False)
        return LeakCheck(world.index, settled=False)

    procs = live_processes(world)
    stored = {proc.myid: len(proc.refs) for proc in sorted(procs, key=_pid)}
    leaked = find_leaks(procs)
    world.trace.event(
        "leak_check",
        settled=True,
        stored=sum(stored.values()),
        leaked=[[pid, *rrid] for pid, rrids in leaked.items() for rrid in rrids],
    )
    return LeakCheck(world.index, settled=True, stored=stored, leaked=leaked)


def live_processes(world: World) -> list[Process]:
    """The runtime processes of ``world`` that are alive, in node order."""
    procs = []
    for node in world.nodes:
        proc = node.proc
        if proc is None or node.dead or node.done.is_set() or proc.stopped.is_set():
            continue
        procs.append(proc)
    return procs


def find_leaks(procs: Iterable[Process]) -> dict[int, tuple[RRID, ...]]:
    """Per owner among ``procs``, the stored RRIDs none of ``procs`` references."""
    procs = list(procs)
    referenced: set[RRID] = set()
    for proc in procs:
        referenced.update(_referenced_by(proc))
    leaked = {}
    for proc in procs:
        orphans = tuple(rrid for rrid in proc.refs.ids() if rrid not in referenced)
        if orphans:
            leaked[proc.myid] = orphans
    return leaked


async def settle(world: World, limit: float) -> bool:
    """Wait until ``world`` is quiet after a garbage collection; False on timeout.

    Quiet: no process has a reference-count notice queued, and nothing is
    in flight, held or unread on the network.  Garbage is collected only
    when every task is blocked, so the same run collects at the same point
    on every machine.
    """
    with trio.move_on_after(limit):
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if _quiet(world):
                # Finalizers run here queue "del client" notices, which
                # make the cluster busy again until they are delivered.
                gc.collect()
                if _quiet(world):
                    return True
            await trio.sleep(SETTLE_POLL)
    return False


def _quiet(world: World) -> bool:
    if world.network.busy():
        return False
    return not any(_notices_queued(proc) for proc in live_processes(world))


# The runtime offers no public view of these two; they are read, never
# changed.


def _referenced_by(proc: Process) -> set[RRID]:
    """RRIDs ``proc`` holds a tracked local reference object for."""
    tracked = set(proc._finalizers)
    return {rrid for rrid in list(proc._local_refs) if rrid in tracked}


def _notices_queued(proc: Process) -> bool:
    return any(proc._client_notices.values())


def _show(rrid: RRID) -> str:
    return f"RRID({rrid.whence}, {rrid.id})"


def _pid(proc: Process) -> int:
    return proc.myid
