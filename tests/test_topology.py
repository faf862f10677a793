"""Topologies on ``ref`` (and, where time matters, on the simulator).

The conformance scenarios (``conformance/scenarios/topology.py``) cover the
contract through the API.  These tests cover what a scenario cannot stage:

* the TCP connections each worker holds in an eager and in a
  ``master_worker`` cluster (one per linked pair, dialled by the higher pid);

* an eager worker that cannot reach a listed peer logs upstream's line and
  exits with status 1 (a real worker process);
* the two wordings of an eager worker's wait for a peer that never dials,
  which depend on the worker timeout;
* the master's "peer workers did not connect" for a ``custom`` worker whose
  ``connect_idents`` name nobody, run on the simulator's virtual clock;
* the ``addprocs`` keyword checks in ``_topology``.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import pytest
import trio
from conftest import OpenTestCluster

import ref
import sim
from conformance.scenarios._probes import Sockets, tcp_sockets
from ref._context import current_process
from ref._local import LocalLauncher, LocalWorkerHandle
from ref._process import Process
from ref._seams import LaunchedWorker
from ref._topology import settle_topology
from ref.managers import LocalManager
from spec.api import LaunchError

# ------------------------------------------------- functions run on workers


def _set_worker_timeout(seconds: float) -> None:
    current_process().worker_timeout = seconds


async def _call(pid: int) -> int:
    answer: int = await ref.remotecall_fetch(ref.myid, pid)
    return answer


# ---------------------------------------------------- eager peer failure


class _Keeper:
    """A local worker handle whose ``kill`` does nothing (the test reaps)."""

    def __init__(self, inner: LocalWorkerHandle) -> None:
        self.inner = inner

    @property
    def ospid(self) -> int | None:
        return self.inner.ospid

    def start_output_relay(self, pid: int, nursery: trio.Nursery) -> None:
        self.inner.start_output_relay(pid, nursery)

    async def stop(self, grace: float) -> None:
        await self.inner.stop(grace)

    def kill(self) -> None:
        pass

    async def interrupt(self) -> None:
        await self.inner.interrupt()


class _KeepingLauncher(LocalLauncher):
    """The local launcher, keeping every worker's handle for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[_Keeper] = []

    async def launch(
        self,
        n: int,
        *,
        cookie: str,
        timeout: float,
        params: Mapping[str, Any],
        nursery: trio.Nursery,
    ) -> tuple[list[LaunchedWorker], list[BaseException]]:
        started, failed = await super().launch(
            n, cookie=cookie, timeout=timeout, params=params, nursery=nursery
        )
        for worker in started:
            assert isinstance(worker.handle, LocalWorkerHandle)
            keeper = _Keeper(worker.handle)
            worker.handle = keeper
            self.kept.append(keeper)
        return started, failed


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_eager_worker_that_cannot_reach_a_peer_logs_and_exits_1(
    open_test_cluster: OpenTestCluster, worker_ospids: list[int]
) -> None:
    launcher = _KeepingLauncher()
    async with open_test_cluster(launcher=launcher) as cluster:
        [low] = await ref.addprocs(1, lazy=False)
        # The master will tell the next worker to dial `low` where nothing
        # listens, as if `low` had vanished without the master noticing.
        cluster.master.group.peer(low).port = _closed_port()
        with pytest.raises(LaunchError):
            await ref.addprocs(1, lazy=False)

        failed = launcher.kept[-1].inner
        worker_ospids.append(failed.process.pid)
        with trio.fail_after(10):
            assert await failed.process.wait() == 1
            output = []
            while (line := await failed._reader.readline()) is not None:
                output.append(line)
        text = "\n".join(output)
        assert f"Error on {low + 1} while connecting to peer {low}, exiting" in text
        # The cluster is unharmed.
        assert ref.workers() == [low]
        assert await ref.remotecall_fetch(ref.myid, low) == low


# ------------------------------------------------ sockets, as the OS sees them


async def _sockets(pid: int) -> Sockets:
    return Sockets(*await ref.remotecall_fetch(tcp_sockets, pid))


async def test_eager_workers_dial_every_lower_worker_before_joining(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster():
        pids = await ref.addprocs(3, lazy=False)
        for pid in pids:
            found = await _sockets(pid)
            lower = [p for p in pids if p < pid]
            higher = [p for p in pids if p > pid]
            # One dialled to each lower worker; accepted: the master's and
            # one from each higher worker.
            assert len(found.dialed()) == len(lower), (pid, found)
            assert len(found.accepted()) == 1 + len(higher), (pid, found)


async def test_master_worker_workers_hold_no_connection_between_them(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster():
        pids = await ref.addprocs(3, topology="master_worker")
        for caller in pids:
            for callee in pids:
                if callee != caller:
                    with pytest.raises(ref.RemoteException) as caught:
                        await ref.remotecall_fetch(_call, caller, callee)
                    assert isinstance(caught.value.exception, ref.TopologyError)
        for pid in pids:
            found = await _sockets(pid)
            assert len(found.connected) == 1, (pid, found)
            assert found.accepted() == found.connected, (pid, found)


# --------------------------------------------------- eager peer timeouts


async def test_an_eager_worker_waits_the_worker_timeout_for_a_peer_to_dial(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster():
        low, _high = await ref.addprocs(2, lazy=False)
        await ref.remotecall_fetch(_set_worker_timeout, low, 0.5)
        # Pid 97 never dials: the wait ends after the worker timeout...
        with pytest.raises(ref.RemoteException) as caught, trio.fail_after(10):
            await ref.remotecall_fetch(_call, low, 97)
        first = str(caught.value.exception)
        assert first.startswith(f"peer 97 didn't connect to {low} within 0."), first
        assert first.endswith(" seconds"), first
        # ...counted from when the stub appeared: now it is already past.
        with pytest.raises(ref.RemoteException) as caught, trio.fail_after(2):
            await ref.remotecall_fetch(_call, low, 97)
        assert str(caught.value.exception) == f"peer 97 has not connected to {low}"


# ------------------------------------------------------------------ custom


class _IdentManager:
    """Gives the k-th worker ``inner`` reports the k-th (ident, idents)."""

    def __init__(self, inner: Any, plan: list[tuple[str, tuple[str, ...]]]) -> None:
        self.inner = inner
        self.plan = plan

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


def test_a_custom_worker_whose_peers_never_appear_fails_after_the_timeout() -> None:
    async def main() -> tuple[str, list[int], float]:
        async with sim.open_cluster(timeout=7.0):
            await ref.addprocs(
                _IdentManager(LocalManager(1), [("a", ())]), topology="custom"
            )
            began = trio.current_time()
            manager = _IdentManager(LocalManager(1), [("b", ("a", "nobody"))])
            with pytest.raises(LaunchError) as caught:
                await ref.addprocs(manager, topology="custom")
            waited = trio.current_time() - began
            return str(caught.value), ref.workers(), waited

    message, workers, waited = sim.run(main, seed=3)
    assert "peer workers did not connect within 7 seconds" in message
    assert workers == [2]
    assert 7.0 <= waited < 9.0


# ----------------------------------------------------------- keyword checks


def _fresh_master() -> Process:
    return Process(
        myid=1,
        cookie="k" * 16,
        transport=ref._seams.TcpTransport(),
        worker_timeout=60.0,
    )


def test_the_first_addprocs_fixes_topology_and_lazy() -> None:
    proc = _fresh_master()
    assert settle_topology(proc, {}) == ("all_to_all", True)
    assert settle_topology(proc, {"lazy": False}) == ("all_to_all", False)
    assert settle_topology(proc, {"topology": "custom", "lazy": True}) == (
        "custom",
        False,
    )
    with pytest.raises(ValueError, match="topology='ring'"):
        settle_topology(proc, {"topology": "ring"})
    with pytest.raises(ValueError, match="lazy=1"):
        settle_topology(proc, {"lazy": 1})
    # A rejected request leaves the cluster's choice alone.
    assert (proc.group.topology, proc.group.lazy) == ("custom", False)
