"""Topologies: how workers connect to each other, and who may choose it.

``addprocs``'s ``topology`` and ``lazy`` keywords: the accepted topology
names, the errors for changing either while workers exist, ``lazy`` being
forced off outside ``all_to_all``, the eager full mesh, the refusal of a
``master_worker`` worker to reach another worker, and what workers list in
``procs()`` (every peer they know, connected or not, except in an eager
all-to-all cluster where they list connected ones, which is everyone once
``addprocs`` has returned).  The ``custom`` topology is staged with a
cluster manager that wraps ``LocalManager`` and sets each reported
worker's ``ident`` and ``connect_idents``.  pytest checks what needs a
real worker process or a short worker timeout: the sockets each worker
holds, an eager worker's failure to reach a peer, the timeouts' wording.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from conformance.registry import scenario
from spec.api import (
    DistributedAPI,
    NoSuchProcessError,
    RemoteException,
)

from ._probes import (
    PATIENCE,
    eventually,
    membership_view,
    myid_of,
    within,
)

#: A pid no cluster in a scenario ever reaches.
UNKNOWN_PID = 97


async def _views_agree(d: DistributedAPI, pids: list[int], when: str) -> None:
    """Every worker's procs()/workers() must equal the master's."""
    mine = membership_view(d)
    for pid in pids:
        with within(PATIENCE, f"asking worker {pid} for its view"):
            theirs = await d.remotecall_fetch(membership_view, pid, d)
        assert tuple(theirs) == mine, (
            f"{when}: worker {pid} sees (procs, workers, nprocs, nworkers) = "
            f"{tuple(theirs)}, the master {mine}"
        )


async def _remove_all(d: DistributedAPI) -> None:
    with within(PATIENCE, "removing every worker"):
        await d.rmprocs(d.workers())
    assert d.nprocs() == 1, f"after removing every worker procs() is {d.procs()}"


async def _error_of_call(d: DistributedAPI, caller: int, callee: int) -> BaseException:
    """What worker ``caller`` raises calling ``callee``, as the master sees it."""
    try:
        with within(PATIENCE, f"worker {caller} calling worker {callee}"):
            answer = await d.remotecall_fetch(myid_of, caller, d, callee)
    except RemoteException as exc:
        assert exc.pid == caller, (
            f"the failed call on worker {caller} came back naming pid {exc.pid}"
        )
        return exc.exception
    raise AssertionError(f"worker {caller} reached worker {callee}: {answer!r}")


@scenario("addprocs.topology-values")
async def only_the_three_topologies_are_accepted(d: DistributedAPI) -> None:
    for wrong in ("star", "All_to_all", "", 3):
        try:
            with within(PATIENCE, f"addprocs(1, topology={wrong!r})"):
                pids = await d.addprocs(1, topology=wrong)
        except ValueError as exc:
            assert "topology" in str(exc), (
                f"addprocs(topology={wrong!r}) raised ValueError({exc!r}), "
                "which does not name the keyword"
            )
        else:
            raise AssertionError(f"addprocs(topology={wrong!r}) started {pids}")
        assert d.procs() == [1], (
            f"a rejected addprocs(topology={wrong!r}) left procs() = {d.procs()}"
        )
    for good in ("master_worker", "custom", "all_to_all"):
        with within(PATIENCE, f"addprocs(1, topology={good!r})"):
            [pid] = await d.addprocs(1, topology=good)
        assert await d.remotecall_fetch(d.myid, pid) == pid
        await _remove_all(d)


@scenario(
    "addprocs.topology-master-worker",
    "procs.worker-view-lists-known-peers",
    "remotecall.worker-unknown-pid-treated-as-peer",
)
async def master_worker_workers_reach_only_the_master(d: DistributedAPI) -> None:
    with within(PATIENCE, "addprocs(3, topology='master_worker')"):
        low, mid, high = await d.addprocs(3, topology="master_worker")
    # Workers know of each other, connected or not, and agree with the master.
    await _views_agree(d, [low, mid, high], "after addprocs(topology='master_worker')")

    for caller, callee in ((low, high), (high, low)):
        error = await _error_of_call(d, caller, callee)
        expected = (
            f"peer {callee} is not connected to {caller}. Topology : master_worker"
        )
        assert isinstance(error, RuntimeError) and str(error) == expected, (
            f"worker {caller} calling worker {callee} raised {error!r}, "
            f"not a RuntimeError {expected!r}"
        )
    # A pid the worker never heard of is taken for an unconnected peer.
    error = await _error_of_call(d, mid, UNKNOWN_PID)
    assert not isinstance(error, NoSuchProcessError), (
        f"a worker calling unknown pid {UNKNOWN_PID} raised {error!r}: on a worker "
        "an unknown pid is a peer not yet connected, not a missing process"
    )
    assert f"peer {UNKNOWN_PID} is not connected to {mid}" in str(error), error
    # The master still reaches everyone, and the workers still serve.
    for pid in (low, mid, high):
        with within(PATIENCE, f"calling worker {pid}"):
            assert await d.remotecall_fetch(d.myid, pid) == pid


@scenario("procs.worker-view-lists-known-peers")
async def lazy_workers_list_peers_they_never_spoke_to(d: DistributedAPI) -> None:
    with within(PATIENCE, "addprocs(3)"):
        pids = await d.addprocs(3)
    # No worker has spoken to another yet, so none is connected to another.
    await _views_agree(d, pids, "in a lazy cluster right after addprocs")


@scenario(
    "remotecall.worker-unknown-pid-treated-as-peer", "addprocs.peer-connect-timeout"
)
async def a_lazy_worker_takes_an_unknown_pid_for_a_peer_and_remembers_failing(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(1)"):
        [pid] = await d.addprocs(1)
    first = await _error_of_call(d, pid, UNKNOWN_PID)
    assert not isinstance(first, NoSuchProcessError), (
        f"worker {pid} calling unknown pid {UNKNOWN_PID} raised {first!r}: on a "
        "worker an unknown pid is a peer not yet connected, not a missing process"
    )
    assert f"peer {UNKNOWN_PID} didn't connect to {pid}" in str(first), first
    # The failed lazy connection is remembered: a second try fails the same.
    again = await _error_of_call(d, pid, UNKNOWN_PID)
    assert type(again) is type(first) and str(again) == str(first), (
        f"a second call to {UNKNOWN_PID} raised {again!r}, the first {first!r}"
    )
    assert await d.remotecall_fetch(d.myid, pid) == pid


@scenario("addprocs.topology-fixed-while-workers")
async def the_topology_cannot_change_while_workers_exist(d: DistributedAPI) -> None:
    with within(PATIENCE, "addprocs(1)"):
        before = await d.addprocs(1)
    for wanted in ("master_worker", "custom"):
        try:
            with within(PATIENCE, f"addprocs(1, topology={wanted!r})"):
                pids = await d.addprocs(1, topology=wanted)
        except RuntimeError as exc:
            expected = (
                "Workers with Topology all_to_all already exist. "
                f"Requested Topology {wanted} cannot be set."
            )
            assert str(exc) == expected, f"the error says {str(exc)!r}"
        else:
            raise AssertionError(
                f"addprocs(topology={wanted!r}) added {pids} to an all_to_all cluster"
            )
        assert d.workers() == before, (
            f"a refused addprocs changed workers() to {d.workers()}"
        )
    # Once every worker is gone the next addprocs chooses again.
    await _remove_all(d)
    with within(PATIENCE, "addprocs(2, topology='master_worker')"):
        low, high = await d.addprocs(2, topology="master_worker")
    error = await _error_of_call(d, high, low)
    assert "Topology : master_worker" in str(error), error


@scenario("addprocs.lazy-fixed-while-workers")
async def the_lazy_flag_cannot_change_while_workers_exist(d: DistributedAPI) -> None:
    with within(PATIENCE, "addprocs(1, lazy=False)"):
        before = await d.addprocs(1, lazy=False)
    # Leaving the keyword out asks for the default, lazy=True.
    for params in ({"lazy": True}, {}):
        try:
            with within(PATIENCE, f"addprocs(1, **{params})"):
                pids = await d.addprocs(1, **params)
        except ValueError as exc:
            expected = "Active workers with lazy=False. Cannot set lazy=True"
            assert expected in str(exc), f"the error says {str(exc)!r}"
        else:
            raise AssertionError(f"addprocs(1, **{params}) added {pids}")
        assert d.workers() == before, f"workers() became {d.workers()}"
    with within(PATIENCE, "addprocs(1, lazy=False)"):
        more = await d.addprocs(1, lazy=False)
    assert d.workers() == before + more
    await _remove_all(d)
    with within(PATIENCE, "addprocs(1) after removing every worker"):
        await d.addprocs(1)


@scenario("addprocs.lazy-only-all-to-all")
async def lazy_is_off_outside_all_to_all(d: DistributedAPI) -> None:
    with within(PATIENCE, "addprocs(1, topology='master_worker', lazy=True)"):
        first = await d.addprocs(1, topology="master_worker", lazy=True)
    # Had lazy=True been kept, lazy=False would now be refused; it is not,
    # and neither is the default (True, forced off again).
    for params in ({"lazy": False}, {"lazy": True}, {}):
        with within(PATIENCE, f"addprocs(1, topology='master_worker', **{params})"):
            more = await d.addprocs(1, topology="master_worker", **params)
        first += more
    assert d.workers() == first, f"workers() is {d.workers()}, expected {first}"
    await _remove_all(d)
    with within(PATIENCE, "addprocs(1, topology='custom', lazy=True)"):
        await d.addprocs(1, topology="custom", lazy=True)
    with within(PATIENCE, "addprocs(1, topology='custom', lazy=False)"):
        await d.addprocs(1, topology="custom", lazy=False)


@scenario("addprocs.eager-full-mesh", "workers.views-agree-after-addprocs")
async def an_eager_cluster_is_a_full_mesh_when_addprocs_returns(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(3, lazy=False)"):
        pids = await d.addprocs(3, lazy=False)
    # An eager all-to-all worker lists only the processes it is connected
    # to; right after addprocs that must be every one of them.
    await _views_agree(d, pids, "in an eager cluster right after addprocs")
    with within(PATIENCE, "addprocs(1, lazy=False) again"):
        pids += await d.addprocs(1, lazy=False)
    await _views_agree(d, pids, "after a second eager addprocs")
    for caller in pids:
        for callee in pids:
            with within(PATIENCE, f"worker {caller} calling worker {callee}"):
                answer = await d.remotecall_fetch(myid_of, caller, d, callee)
            assert answer == callee, f"worker {caller} asked {callee}, got {answer}"


@scenario("workers.removal-propagated")
async def removals_reach_the_other_workers(d: DistributedAPI) -> None:
    for topology in ("master_worker", "custom"):
        with within(PATIENCE, f"addprocs(3, topology={topology!r})"):
            low, mid, high = await d.addprocs(3, topology=topology)
        with within(PATIENCE, f"rmprocs({mid})"):
            await d.rmprocs(mid)

        for pid in (low, high):
            await eventually(
                functools.partial(_forgot, d, pid, mid),
                f"worker {pid} dropping removed worker {mid} from procs()",
            )
        await _views_agree(d, [low, high], f"after rmprocs({mid}), {topology}")
        await _remove_all(d)


async def _forgot(d: DistributedAPI, pid: int, gone: int) -> bool:
    """Whether worker ``pid`` no longer lists ``gone`` in procs()."""
    seen: list[int] = await d.remotecall_fetch(d.procs, pid)
    return gone not in seen


# ------------------------------------------------------------------ custom


class _IdentManager:
    """Wraps a manager, giving the k-th worker it reports ``plan[k]``.

    ``plan`` holds ``(ident, connect_idents)`` pairs.  Workers are given
    pids in the order they are reported, so the k-th new pid is the worker
    with the k-th ident.
    """

    def __init__(self, inner: Any, plan: list[tuple[str, tuple[str, ...]]]) -> None:
        self.inner = inner
        self.plan = list(plan)

    async def launch(
        self, params: Mapping[str, Any], launched: list[Any], notify: Any
    ) -> None:
        plan = self.plan

        class Tagging(list[Any]):
            def append(self, config: Any) -> None:
                config.ident, config.connect_idents = plan.pop(0)
                launched.append(config)

        await self.inner.launch(params, Tagging(), notify)

    async def manage(self, pid: int, config: Any, op: str) -> None:
        await self.inner.manage(pid, config, op)

    async def connect(self, pid: int, config: Any) -> Any:
        return await self.inner.connect(pid, config)

    async def kill(self, pid: int, config: Any) -> None:
        await self.inner.kill(pid, config)


@scenario("addprocs.topology-custom", "procs.worker-view-lists-known-peers")
async def custom_workers_connect_as_their_connect_idents_say(
    d: DistributedAPI,
) -> None:
    # A ring a <- b <- c <- a (each dials the one it names), and d alone.
    plan = [("a", ("c",)), ("b", ("a",)), ("c", ("b",)), ("d", ())]
    manager = _IdentManager(d.LocalManager(len(plan)), plan)
    with within(PATIENCE, "addprocs(manager, topology='custom')"):
        pids = await d.addprocs(manager, topology="custom")
    assert len(pids) == len(plan), f"addprocs started {pids}"
    a, b, c, alone = pids
    await _views_agree(d, pids, "after addprocs(topology='custom')")
    for x, y in ((a, b), (b, c), (c, a)):
        for caller, callee in ((x, y), (y, x)):
            with within(PATIENCE, f"worker {caller} calling worker {callee}"):
                answer = await d.remotecall_fetch(myid_of, caller, d, callee)
            assert answer == callee, f"worker {caller} asked {callee}, got {answer}"
    for other in (a, b, c):
        for caller, callee in ((alone, other), (other, alone)):
            error = await _error_of_call(d, caller, callee)
            expected = f"peer {callee} is not connected to {caller}. Topology : custom"
            assert isinstance(error, RuntimeError) and str(error) == expected, (
                f"worker {caller} calling worker {callee} raised {error!r}, "
                f"not a RuntimeError {expected!r}"
            )
