"""Raw byte streams into and out of a cluster, for wire-level scenarios.

A scenario that checks the handshake must speak bytes to a process, or
read the bytes a process sends, without the runtime's own handshake and
framing in the way.  These probes open such streams through the master's
``Transport`` seam, the one its links use: real loopback TCP under ``ref``,
simulated links under ``sim``.  So the same scenario runs on both, and on
the simulator the raw connection is an ordinary simulated connection of the
master's node, with its latency, trace and faults.

Two more stand in for what a scenario cannot do through the API:
``run_program`` starts a worker "by other means" (the launcher's
``ProgramRunner`` seam: a child process under ``ref``, a new simulated node
under ``sim``), and ``sever`` breaks the master's link to a worker the way
a lost connection would.

And ``connections`` says which connections a process holds and who
dialled each, as the transport knows them: the OS's sockets of a worker's
process under ``ref``, the simulated network's table under ``sim``.

Only the master may use them: it is the process that knows where every
worker listens and whose transport and launcher the scenario runs with.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from spec.api import HeldConnection, NoSuchProcessError, ProcessExitedException

from ._context import current_process
from ._seams import ConnectionTable, Program, ProgramRunner, RunningProgram

if TYPE_CHECKING:
    from ._process import Process

__all__ = [
    "RawListener",
    "connect",
    "connections",
    "listen",
    "open_stream",
    "run_program",
    "sever",
]


async def open_stream(pid: int) -> trio.abc.HalfCloseableStream:
    """A new raw connection from the master to where worker ``pid`` listens."""
    proc = current_process()
    proc.require_master("probes.open_stream")
    if pid == proc.myid:
        raise ValueError(
            f"probes.open_stream: pid={pid!r} is the master, which listens "
            "nowhere; name a worker"
        )
    # Raises ProcessExitedException or NoSuchProcessError for a bad pid.
    peer = proc.group.peer(pid)
    return await connect(peer.host, peer.port)


async def connect(host: str, port: int) -> trio.abc.HalfCloseableStream:
    """A new raw connection from the master to ``host:port``."""
    proc = current_process()
    proc.require_master("probes.connect")
    stream = await proc.transport.connect(host, port)
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        # Every transport distref ships gives half-closeable streams; a
        # scenario needs send_eof to say "that is all I send".
        await stream.aclose()
        raise TypeError(
            f"the transport gave {type(stream).__name__}, which cannot send "
            "end-of-file; raw probes need a half-closeable stream"
        )
    return stream


class RawListener:
    """An address on the master's transport whose connections come out raw."""

    def __init__(
        self,
        address: tuple[str, int],
        arrivals: trio.MemoryReceiveChannel[trio.abc.Stream],
    ) -> None:
        self._address = address
        self._arrivals = arrivals

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    async def accept(self) -> trio.abc.HalfCloseableStream:
        """The next connection made to ``address``."""
        stream = await self._arrivals.receive()
        if not isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.aclose()
            raise TypeError(
                f"the transport accepted a {type(stream).__name__}, which "
                "cannot send end-of-file; raw probes need a half-closeable stream"
            )
        return stream


@asynccontextmanager
async def listen() -> AsyncIterator[RawListener]:
    """Listen on the master's transport until the block ends.

    Connections are handed over untouched, in the order they arrive; the
    caller closes those it accepts.  Leaving the block stops the listener
    and closes the connections nobody accepted.
    """
    proc = current_process()
    proc.require_master("probes.listen")
    send, receive = trio.open_memory_channel[trio.abc.Stream](math.inf)

    async def arrived(stream: trio.abc.Stream) -> None:
        try:
            send.send_nowait(stream)
        except trio.ClosedResourceError:
            # The block has ended: nobody will accept this one.
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        # A TCP listener closes each stream once its handler returns, so
        # the handler lives as long as the block (which then cancels it).
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        address = await proc.transport.listen(proc.host, arrived, nursery)
        try:
            yield RawListener(address, receive)
        finally:
            send.close()
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                async for stream in receive:
                    await stream.aclose()


@asynccontextmanager
async def run_program(
    kind: str,
    *args: str,
    stdin: str = "",
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[RunningProgram]:
    """Start a ``kind`` program (``"worker"`` or ``"elastic"``) for the block.

    It runs as the cluster's launcher would run it: ``python -m ref.worker``
    or ``python -m ref.elastic`` under ``ref``, a simulated process under
    ``sim``.  Leaving the block kills it if it still runs, and reaps it.
    """
    proc = current_process()
    proc.require_master("probes.run_program")
    program = Program(kind, tuple(args), stdin, dict(environ or {}))
    launcher = proc.launcher
    if not isinstance(launcher, ProgramRunner):
        raise TypeError(
            f"the cluster's launcher {type(launcher).__name__} cannot start "
            "programs on its own (it has no run_program)"
        )
    async with trio.open_nursery() as nursery:
        running = await launcher.run_program(program, nursery)
        try:
            yield running
        finally:
            running.kill()
            with trio.CancelScope(shield=True):
                await running.wait()
            nursery.cancel_scope.cancel()


async def sever(pid: int) -> None:
    """Close the master's link to worker ``pid`` abruptly, saying nothing.

    To the worker this is its connection to pid 1 lost; the master handles
    the loss as for any link that breaks.
    """
    proc = current_process()
    proc.require_master("probes.sever")
    if proc.group.has_left(pid):
        raise ProcessExitedException(pid)
    link = proc.links.get(pid)
    if link is None:
        raise NoSuchProcessError(pid)
    await link.aclose()


async def connections(pid: int) -> list[HeldConnection]:
    """The connections process ``pid`` holds open, from the transport's view.

    Asked of the master's transport, which under ``ref`` reads the kernel's
    sockets of the worker's OS process (so the worker must run on this
    machine) and under ``sim`` the simulated network's connection table.
    Sorted by peer (None last), then ``dialled``, then ``ident``.
    """
    proc = current_process()
    proc.require_master("probes.connections")
    transport = proc.transport
    if not isinstance(transport, ConnectionTable):
        raise NotImplementedError(
            f"probes.connections: the cluster's transport "
            f"{type(transport).__name__} cannot list a process's connections "
            "(it has no held_connections)"
        )

    cluster = _ospids(proc)
    if pid == proc.myid:
        ospid: int | None = os.getpid()
        listening = None
    else:
        # Raises ProcessExitedException or NoSuchProcessError for a bad pid.
        peer = proc.group.peer(pid)
        ospid = next((o for o, p in cluster.items() if p == pid), None)
        listening = (peer.host, peer.port)
    if ospid is None:
        raise LookupError(
            f"probes.connections: worker {pid}'s OS pid is not known yet, so "
            "its connections cannot be looked up"
        )

    held = transport.held_connections(ospid, listening, cluster)
    await trio.lowlevel.checkpoint()
    return sorted(held, key=_order)


def _ospids(proc: Process) -> dict[int, int]:
    """OS pid to distref pid, for the master and every worker still a member."""
    found = {os.getpid(): proc.myid}
    for pid in proc.group.workers():
        if pid == proc.myid:
            continue
        ospid = proc.group.peer(pid).ospid
        handle = proc.handles.get(pid)
        if ospid is None and handle is not None:
            ospid = handle.ospid
        if ospid is not None:
            found[ospid] = pid
    return found


def _order(held: HeldConnection) -> tuple[bool, int, bool, str]:
    return held.peer is None, held.peer or 0, held.dialled, held.ident
