"""Process ids and membership: myid, nprocs, nworkers, procs, workers, addprocs.

What the counting functions answer with and without workers, what
``addprocs`` returns (how many pids, which, in what order), that new workers
serve calls at once from a fresh interpreter, that every worker sees the
master's membership, and how the default lazy all-to-all topology opens
worker-to-worker connections only when first needed, always dialled by the
higher pid.
"""

from __future__ import annotations

import uuid

from conformance.registry import scenario
from spec.api import DistributedAPI, HeldConnection

from ._probes import (
    PATIENCE,
    forget_state,
    get_state,
    membership_view,
    myid_of,
    ospid,
    set_state,
    within,
)


@scenario(
    "myid.master-is-one",
    "nprocs.no-workers-is-one",
    "nworkers.no-workers-is-one",
    "procs.no-workers-is-master-only",
    "workers.no-workers-is-master",
)
async def without_workers_the_master_counts_alone_and_works(d: DistributedAPI) -> None:
    assert d.myid() == 1, f"myid() on the master is {d.myid()}, not 1"
    assert d.procs() == [1], f"procs() with no workers is {d.procs()}, not [1]"
    assert d.nprocs() == 1, f"nprocs() with no workers is {d.nprocs()}, not 1"
    assert d.workers() == [1], f"workers() with no workers is {d.workers()}, not [1]"
    assert d.nworkers() == 1, f"nworkers() with no workers is {d.nworkers()}, not 1"


@scenario(
    "addprocs.returns-requested-count",
    "addprocs.returns-sorted-new-pids",
    "addprocs.first-worker-is-two",
    "nprocs.counts-master-and-workers",
    "nworkers.one-less-than-nprocs",
    "procs.master-first",
    "workers.excludes-master",
)
async def addprocs_returns_n_sorted_pids_from_two_and_the_counts_follow(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(3)"):
        pids = await d.addprocs(3)
    assert len(pids) == 3, f"addprocs(3) returned {len(pids)} pids: {pids}"
    assert len(set(pids)) == 3, f"addprocs(3) returned a pid twice: {pids}"
    assert pids == sorted(pids), f"addprocs returned {pids}, not in ascending order"
    assert pids[0] == 2, f"the first worker of a new cluster got pid {pids[0]}, not 2"

    procs = d.procs()
    assert procs[0] == 1, f"procs() does not start with 1: {procs}"
    assert len(procs) == len(set(procs)), f"procs() lists a pid twice: {procs}"
    assert set(procs) == {1, *pids}, f"procs() is {procs} after adding {pids}"
    workers = d.workers()
    assert workers == [p for p in procs if p != 1], (
        f"workers() is {workers}, not procs() {procs} without 1 in the same order"
    )
    assert set(workers) == set(pids), f"workers() {workers} != the new pids {pids}"
    assert d.nprocs() == len(procs) == 4, (
        f"nprocs() is {d.nprocs()} with procs() {procs} (master + 3 workers)"
    )
    assert d.nworkers() == d.nprocs() - 1 == 3, (
        f"nworkers() is {d.nworkers()} while nprocs() is {d.nprocs()}"
    )
    assert d.myid() == 1, f"myid() on the master became {d.myid()}"


@scenario("myid.worker-returns-own-pid", "addprocs.workers-usable-on-return")
async def new_workers_answer_calls_at_once_with_their_own_pid(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        pids = await d.addprocs(2)
    # No wait of any kind between addprocs returning and the first calls.
    for pid in pids:
        with within(PATIENCE, f"the first call to new worker {pid}"):
            answer = await d.remotecall_fetch(d.myid, pid)
        assert answer == pid, f"myid() evaluated on worker {pid} returned {answer}"
    with within(PATIENCE, "calls shipping a function of the scenario module"):
        ospids = [await d.remotecall_fetch(ospid, pid) for pid in pids]
    assert len(set(ospids)) == len(pids), (
        f"workers {pids} did not run as distinct processes: {ospids}"
    )


@scenario("addprocs.pids-increase-across-calls", "addprocs.pids-never-reused")
async def later_addprocs_give_higher_pids_never_reusing_removed_ones(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "three rounds of addprocs with a removal between"):
        first = await d.addprocs(2)
        # Remove the highest pid so far: a counter that restarts from the
        # highest live pid would hand it out again.
        await d.rmprocs(first[-1])
        second = await d.addprocs(1)
        third = await d.addprocs(2)

    assert min(second) > max(first), (
        f"addprocs after {first} returned {second}: not above every earlier pid"
    )
    assert first[-1] not in second, (
        f"pid {first[-1]} was removed by rmprocs and then given out again"
    )
    assert min(third) > max(first + second), (
        f"addprocs after {first} and {second} returned {third}"
    )
    assert set(d.workers()) == {first[0], *second, *third}, (
        f"workers() is {d.workers()} after adding {first}, {second}, {third} "
        f"and removing {first[-1]}"
    )


@scenario("addprocs.worker-state-isolated")
async def a_new_worker_starts_without_state_set_elsewhere(d: DistributedAPI) -> None:
    key = uuid.uuid4().hex
    set_state(key, "set on the master")
    try:
        with within(PATIENCE, "adding the first worker"):
            [first] = await d.addprocs(1)
        seen = await d.remotecall_fetch(get_state, first, key)
        assert seen is None, (
            f"state set on the master appeared on worker {first}: {seen!r}"
        )

        await d.remotecall_fetch(set_state, first, key, "set on the first worker")
        seen = await d.remotecall_fetch(get_state, first, key)
        assert seen == "set on the first worker", (
            f"worker {first} did not keep its own module state: {seen!r}"
        )
        assert get_state(key) == "set on the master", (
            f"state set on worker {first} changed the master's: {get_state(key)!r}"
        )

        with within(PATIENCE, "adding the second worker"):
            [second] = await d.addprocs(1)
        seen = await d.remotecall_fetch(get_state, second, key)
        assert seen is None, (
            f"new worker {second} started with state set elsewhere: {seen!r}"
        )
    finally:
        forget_state(key)


@scenario("procs.pid-local-host", "procs.pid-from-worker-matches-master")
async def procs_of_a_local_pid_is_the_master_and_every_local_worker(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        pids = await d.addprocs(2)
    local = {1, *pids}
    for pid in [1, *pids]:
        here = d.procs(pid)
        assert len(here) == len(set(here)), f"procs({pid}) lists a pid twice: {here}"
        assert set(here) == local, (
            f"procs({pid}) on the master is {here}; the local manager started {pids}"
        )
        for worker in pids:
            there = await d.remotecall_fetch(d.procs, worker, pid)
            assert sorted(there) == sorted(here), (
                f"procs({pid}) is {there} on worker {worker} but {here} on the master"
            )


async def _views_agree(d: DistributedAPI, when: str) -> None:
    procs, workers = set(d.procs()), set(d.workers())
    nprocs, nworkers = d.nprocs(), d.nworkers()
    for pid in d.workers():
        with within(PATIENCE, f"asking worker {pid} for its view"):
            view = await d.remotecall_fetch(membership_view, pid, d)
        there = (set(view[0]), set(view[1]), view[2], view[3])
        here = (procs, workers, nprocs, nworkers)
        assert there == here, (
            f"{when}: worker {pid} sees (procs, workers, nprocs, nworkers) = "
            f"{there}, the master {here}"
        )


@scenario("workers.views-agree-after-addprocs")
async def every_worker_sees_the_masters_membership_after_addprocs(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        first = await d.addprocs(2)
    await _views_agree(d, f"after addprocs returned {first}")
    # The earlier workers must also learn about the later ones.
    with within(PATIENCE, "addprocs(1)"):
        second = await d.addprocs(1)
    await _views_agree(d, f"after a second addprocs returned {second}")


# ------------------------------------------------------ lazy connections


def _shape(held: list[HeldConnection]) -> list[tuple[int | None, bool]]:
    """Who is at the other end of each connection, and whether it was dialled."""
    return sorted(((h.peer, h.dialled) for h in held), key=str)


async def _held(
    d: DistributedAPI, pids: tuple[int, ...]
) -> dict[int, list[HeldConnection]]:
    with within(PATIENCE, f"listing the connections of {pids}"):
        return {pid: await d.probes.connections(pid) for pid in pids}


@scenario(
    "addprocs.default-topology-lazy-all-to-all",
    "addprocs.lazy-no-peer-links-at-start",
    "addprocs.lazy-link-on-first-call",
    "addprocs.lazy-link-opened-by-higher-pid",
    needs=("probes.connections",),
)
async def worker_links_open_on_first_use_dialled_by_the_higher_pid(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(3)"):
        low, mid, high = await d.addprocs(3)
    workers = (low, mid, high)

    held = await _held(d, workers)
    for pid in workers:
        assert _shape(held[pid]) == [(1, False)], (
            f"right after addprocs worker {pid} holds {held[pid]}, not only "
            "the connection the master dialled to it"
        )
    # Only the cluster's own: the master's process may hold other sockets.
    master = [s for s in _shape(await d.probes.connections(1)) if s[0] is not None]
    assert master == [(pid, True) for pid in workers], (
        f"right after addprocs the master holds {master}, not one dialled "
        f"connection to each of {workers}"
    )

    # The lower pid speaks first: the higher one must be the one to dial.
    with within(PATIENCE, f"worker {low} calling worker {mid}"):
        answer = await d.remotecall_fetch(myid_of, low, d, mid)
    assert answer == mid, f"worker {low} asked worker {mid} for myid() and got {answer}"
    # The higher pid speaks first: it dials.
    with within(PATIENCE, f"worker {high} calling worker {low}"):
        answer = await d.remotecall_fetch(myid_of, high, d, low)
    assert answer == low, (
        f"worker {high} asked worker {low} for myid() and got {answer}"
    )

    held = await _held(d, workers)
    expected = {
        low: [(1, False), (mid, False), (high, False)],
        mid: [(1, False), (low, True)],
        high: [(1, False), (low, True)],
    }
    for pid in workers:
        assert _shape(held[pid]) == sorted(expected[pid], key=str), (
            f"after calls {low}->{mid} and {high}->{low}, worker {pid} holds "
            f"{held[pid]}; expected (peer, dialled) {expected[pid]}: one "
            "connection per pair that spoke, dialled by the higher pid"
        )
    # One connection per pair: both ends name the same one.
    for a, b in ((low, mid), (low, high)):
        ends_a = {h.ident for h in held[a] if h.peer == b}
        ends_b = {h.ident for h in held[b] if h.peer == a}
        assert ends_a == ends_b and len(ends_a) == 1, (
            f"workers {a} and {b} do not hold the two ends of one connection: "
            f"{a} holds {ends_a}, {b} holds {ends_b}"
        )

    # Later messages, in either direction, reuse the same connections.
    with within(PATIENCE, "more worker-to-worker calls"):
        for caller, callee in ((low, mid), (mid, low), (low, high), (high, low)) * 2:
            answer = await d.remotecall_fetch(myid_of, caller, d, callee)
            assert answer == callee, f"worker {caller} asked {callee}, got {answer}"
    before = held
    held = await _held(d, workers)
    for pid in workers:
        assert held[pid] == before[pid], (
            f"worker {pid}'s connections changed on reuse: {before[pid]} -> {held[pid]}"
        )
