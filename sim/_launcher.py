"""The runtime's seams, simulated: a transport, a launcher, worker handles.

``SimTransport`` gives one node's process streams on the simulated network.
``SimLauncher`` starts each worker as a task of the simulation that runs
``ref._worker.serve_worker``, the same function a real worker process runs,
over the simulated transport.  It keeps the contract of ``ref``'s local
launcher: a worker that fails before announcing its address, or does not
announce it within the worker timeout, becomes a ``LaunchError``; the
others start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from ref._seams import LaunchedWorker, Program, StreamHandler
from spec.api import HeldConnection, LaunchError

from ._network import Network, SimStream
from ._node import Node

if TYPE_CHECKING:
    from ._cluster import World
    from ._programs import SimProgram


class SimTransport:
    """Streams for the process running on ``node``."""

    def __init__(self, network: Network, node: Node) -> None:
        self._network = network
        self._node = node

    async def listen(
        self, host: str, handler: StreamHandler, nursery: trio.Nursery
    ) -> tuple[str, int]:
        return await self._network.listen(self._node, host, handler, nursery)

    async def connect(self, host: str, port: int) -> SimStream:
        return await self._network.connect(self._node, host, port)

    def held_connections(
        self,
        ospid: int,
        listening: tuple[str, int] | None,
        cluster: Mapping[int, int],
    ) -> list[HeldConnection]:
        """The simulated network's connections of the process ``ospid``.

        ``listening`` needs no check: every simulated process is on this
        simulated machine, and its OS pid names it alone.
        """
        return [
            HeldConnection(
                None if peer is None else cluster.get(peer.ospid),
                dialled,
                f"sim conn {conn.id}",
            )
            for conn, dialled, peer in self._network.held_by(ospid)
        ]


class SimWorkerHandle:
    """The launcher's grip on one simulated worker."""

    def __init__(self, world: World, node: Node) -> None:
        self._world = world
        self._node = node

    @property
    def ospid(self) -> int | None:
        return self._node.ospid

    def start_output_relay(self, pid: int, nursery: trio.Nursery) -> None:
        """Nothing to relay: simulated workers write no output."""

    async def stop(self, grace: float) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(grace):
                await self._node.done.wait()
            if not self._node.done.is_set():
                self.kill()
                await self._node.done.wait()

    def kill(self) -> None:
        self._world.kill(self._node)

    def suspend(self) -> None:
        """What SIGSTOP does to a real worker: the simulated process hangs."""
        self._world.hang(self._node.pid, duration=None)

    def resume(self) -> None:
        """What SIGCONT does: a hung simulated process carries on."""
        self._world.resume(self._node.pid)

    async def interrupt(self) -> None:
        """What SIGINT does to a real worker: interrupt the calls it runs."""
        self._world.interrupt(self._node)
        await trio.lowlevel.checkpoint()


class SimLauncher:
    """Starts simulated workers in ``world``."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._launches = 0

    async def run_program(self, program: Program, nursery: trio.Nursery) -> SimProgram:
        """Start ``program`` on a new node of the world (see ``sim._programs``).

        The node lives in the world's nursery, like every simulated process.
        """
        running = self._world.start_program(program)
        await trio.lowlevel.checkpoint()
        return running

    async def launch(
        self,
        n: int,
        *,
        cookie: str,
        timeout: float,
        params: Mapping[str, Any],
        nursery: trio.Nursery,
    ) -> tuple[list[LaunchedWorker], list[BaseException]]:
        started: list[LaunchedWorker] = []
        failures: list[BaseException] = []

        async def one(number: int) -> None:
            try:
                started.append(await self._launch_one(number, cookie, timeout))
            except LaunchError as exc:
                failures.append(exc)

        async with trio.open_nursery() as group:
            for _ in range(n):
                self._launches += 1
                group.start_soon(one, self._launches)
        return started, failures

    async def _launch_one(
        self, number: int, cookie: str, timeout: float
    ) -> LaunchedWorker:
        world = self._world
        fail, delay = world.faults.launch(number, timeout)
        node = world.start_worker(number, cookie, timeout, fail=fail, delay=delay)

        with trio.move_on_after(timeout):
            await node.announced.wait()
        if node.launch_failed:
            raise LaunchError(
                f"simulated launch {number} failed: unable to read host:port string "
                "from worker. Launch command exited with error?"
            )
        if node.address is None:
            world.kill(node)
            raise LaunchError(
                "Timed out waiting to read host:port string from worker "
                f"(waited {timeout:g} s; raise DISTREF_WORKER_TIMEOUT if needed)."
            )
        host, port = node.address
        return LaunchedWorker(host, port, SimWorkerHandle(world, node), local=True)
