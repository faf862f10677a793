"""Custom transports on the simulator: ``init_worker`` and ``process_messages``.

The simulator's counterpart of the custom-transport tests of
``test_transports.py``; the catalogue names these for
``init_worker.initialises-worker`` and
``process_messages.incoming-validates-cookie`` on ``sim``.

A custom-transport worker here is a simulated process of its own (a node
of the world) that does what ``examples/pipe_cluster.py``'s worker does:
``init_worker(cookie, connector)``, then ``process_messages`` for every
connection its transport delivers.  Its transport is the simulated network:
it listens on a simulated port, ``SimCustomManager.connect`` opens the
master's connection to it, and ``SimPeers`` (the ``init_worker`` connector)
the workers' connections to each other.  No ``serve_worker``, no TCP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import trio

import ref
import sim
from ref._context import peek_current, set_current
from ref.managers import ClusterManager, WorkerConfig
from ref.protocol.wire import PROTOCOL_VERSION, pad_version
from sim._network import SIM_HOST, SimStream
from sim._node import Node
from spec.api import COOKIE_LENGTH

HELLO = 2 * COOKIE_LENGTH


class SimPeers:
    """The workers' ``init_worker`` connector: a simulated connection from
    the dialling worker's node to where the peer listens."""

    def __init__(self, world: sim.World) -> None:
        self.world = world

    def node_of_caller(self) -> Node:
        proc = peek_current()
        return next(n for n in self.world.nodes if n.proc is proc)

    async def open(self, host: str, port: int) -> SimStream:
        return await self.world.network.connect(self.node_of_caller(), host, port)

    async def connect(self, pid: int, config: ref.PeerConfig) -> tuple[Any, Any]:
        stream = await self.open(*config.connect_at)
        return stream, stream


async def host_custom_worker(
    world: sim.World, node: Node, cookie: str, peers: SimPeers
) -> None:
    """The life of one custom-transport worker process, from exec to exit."""
    # Spawned from the master's task: become a fresh process first.
    set_current(None)
    try:
        with node.cancel_scope:
            ref.init_worker(cookie, peers, handle_sigint=False)
            proc = peek_current()
            assert proc is not None
            world.attach(node, proc, make_current=False)
            async with trio.open_nursery() as nursery:

                async def serve(stream: trio.abc.Stream) -> None:
                    # The first connection hosts the worker and returns its
                    # exit status; the others return None when they end.
                    status = await ref.process_messages(stream, stream)
                    if status is not None:
                        node.exit_code = status
                        nursery.cancel_scope.cancel()

                host, port = await world.network.listen(node, SIM_HOST, serve, nursery)
                node.announce(host, port)
    finally:
        world.network.node_exited(node)
        node.done.set()


def start_custom_worker(world: sim.World, cookie: str, peers: SimPeers) -> Node:
    node = world.add_node()
    world.tasks.start_soon(
        host_custom_worker, world, node, cookie, peers, name=node.name
    )
    return node


class SimCustomManager(ClusterManager):
    """Starts ``count`` custom-transport workers as simulated processes."""

    def __init__(self, world: sim.World, count: int) -> None:
        self.world = world
        self.count = count
        self.peers = SimPeers(world)
        self.nodes: list[Node] = []

    async def launch(
        self,
        params: Mapping[str, Any],
        launched: list[WorkerConfig],
        notify: Callable[[], None],
    ) -> None:
        for _ in range(self.count):
            node = start_custom_worker(self.world, ref.cluster_cookie(), self.peers)
            self.nodes.append(node)
            await node.announced.wait()
            assert node.address is not None
            host, port = node.address
            launched.append(WorkerConfig(host=host, port=port))
            notify()

    async def connect(self, pid: int, config: WorkerConfig) -> tuple[Any, Any]:
        """The master's connection: from its node to the worker's port."""
        stream = await self.peers.open(config.host, config.port)
        return stream, stream

    def node_of(self, pid: int) -> Node:
        return next(n for n in self.nodes if n.pid == pid)


async def _ask(pid: int) -> int:
    answer: int = await ref.remotecall_fetch(ref.myid, pid)
    return answer


def test_on_sim_a_cluster_runs_over_init_worker_and_process_messages() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            manager = SimCustomManager(sim.current_world(), 2)
            low, high = await ref.addprocs(manager)
            assert await ref.remotecall_fetch(ref.myid, low) == low
            assert await ref.fetch(await ref.remotecall(pow, high, 2, 10)) == 1024
            # Worker to worker, through the connector given to init_worker.
            assert await ref.remotecall_fetch(_ask, high, low) == low
            assert await ref.remotecall_fetch(_ask, low, high) == high
            # The connections are simulated ones, dialled by the higher pid.
            held = await ref.probes.connections(low)
            assert sorted((h.peer, h.dialled) for h in held) == [
                (1, False),
                (high, False),
            ]

            await ref.rmprocs(high)
            assert ref.workers() == [low]
            node = manager.node_of(high)
            with trio.fail_after(5):
                await node.done.wait()
            assert node.exit_code == 0, "a worker told to exit exits with 0"

    sim.run(main, seed=1)


def test_on_sim_init_worker_wants_a_pristine_process() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            await ref.addprocs(1)
            with pytest.raises(RuntimeError, match="init_worker"):
                ref.init_worker("cookie")
        async with sim.open_cluster():
            fut = ref.Future()
            with pytest.raises(RuntimeError, match="init_worker"):
                ref.init_worker("cookie")
            del fut

    sim.run(main, seed=2)


def test_on_sim_an_incoming_connection_with_a_wrong_cookie_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # init_worker reads DISTREF_WORKER_TIMEOUT, for the wait for a master.
    monkeypatch.setenv("DISTREF_WORKER_TIMEOUT", "2.5")

    async def main() -> tuple[bytes, int | None, float]:
        async with sim.open_cluster():
            world = sim.current_world()
            node = start_custom_worker(world, "the right one", SimPeers(world))
            await node.announced.wait()
            assert node.address is not None
            began = trio.current_time()
            stream = await ref.probes.connect(*node.address)
            async with stream:
                await stream.send_all(b"the wrong one!!!" + pad_version("test"))
                with trio.fail_after(10):
                    answer = await stream.receive_some()
                    await node.done.wait()
            return answer, node.exit_code, trio.current_time() - began

    answer, status, took = sim.run(main, seed=3)
    assert answer == b"", "a refused peer must get nothing"
    # Refused, the worker still had no master: it gave up after its timeout.
    assert status == 1
    assert took == pytest.approx(2.5, abs=0.1)


async def _dial_raw(host: str, port: int) -> None:
    """On a custom worker: open a connection to ``host:port`` as to pid 50."""
    stream = await _PEERS[0].open(host, port)
    await ref.process_messages(stream, stream, incoming=False, peer=50)


_PEERS: list[SimPeers] = []


def test_on_sim_an_outgoing_connection_sends_the_cookie_and_version_first() -> None:
    async def main() -> tuple[bytes, str]:
        async with sim.open_cluster():
            manager = SimCustomManager(sim.current_world(), 1)
            _PEERS[:] = [manager.peers]
            [pid] = await ref.addprocs(manager)
            async with ref.probes.listen() as listener, trio.open_nursery() as n:
                n.start_soon(ref.remotecall_fetch, _dial_raw, pid, *listener.address)
                stream = await listener.accept()
                data = b""
                with trio.fail_after(5):
                    while len(data) < HELLO:
                        data += await stream.receive_some()
                await stream.aclose()
            assert await ref.remotecall_fetch(ref.myid, pid) == pid
            return data, ref.cluster_cookie()

    try:
        data, cookie = sim.run(main, seed=4)
    finally:
        _PEERS.clear()
    assert data[:COOKIE_LENGTH] == cookie.encode("ascii")
    assert data[COOKIE_LENGTH:HELLO] == pad_version(PROTOCOL_VERSION)
