"""The seams between the runtime and the world: transport and launcher.

The runtime (``_process``) never opens a socket or starts a process itself;
it asks a ``Transport`` for byte streams and a ``Launcher`` for workers.
``ref`` plugs in TCP and OS processes; ``sim`` plugs in simulated links and
in-process workers.  Everything else, the protocol core included, is shared.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import trio

from spec.api import HeldConnection

from ._sockets import os_connections

StreamHandler = Callable[[trio.abc.Stream], Awaitable[None]]


class Transport(Protocol):
    """Opens and accepts byte streams between processes."""

    async def listen(
        self, host: str, handler: StreamHandler, nursery: trio.Nursery
    ) -> tuple[str, int]:
        """Serve ``handler`` for every incoming stream; return the address."""
        ...

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        """Open a stream to ``host:port``."""
        ...


@runtime_checkable
class ConnectionTable(Protocol):
    """A transport that can say which connections a process holds.

    What ``probes.connections`` asks: the answer comes from where the
    transport's connections really live (the operating system's sockets for
    TCP, the simulated network's table for ``sim``), not from the runtime's
    own idea of its links.  Optional: a transport without it just cannot
    be asked.
    """

    def held_connections(
        self,
        ospid: int,
        listening: tuple[str, int] | None,
        cluster: Mapping[int, int],
    ) -> list[HeldConnection]:
        """The connections OS process ``ospid`` holds open.

        ``listening`` is the address it announced, if it listens: a check
        that ``ospid`` is the process meant.  ``cluster`` maps the OS pid
        of every process of the cluster to its distref pid, which names
        each connection's ``peer``.
        """
        ...


#: An optional capability of a transport's streams, found as the stream's
#: ``send_all_shielded`` method: ``await send_all_shielded(data, deadline)``
#: must do exactly what ``send_all(data)`` inside
#: ``trio.CancelScope(shield=True, deadline=deadline)`` does, same schedule
#: points included, and answer False where that scope would have caught the
#: deadline's cancellation (True once ``data`` is written).  The runtime
#: writes every message that way; a stream that can often finish without a
#: cancel scope (the simulator's) saves the cost of one per message.
ShieldedSend = Callable[[bytes, float], Awaitable[bool]]


class WorkerHandle(Protocol):
    """The launcher's grip on one started worker, to stop and reap it."""

    @property
    def ospid(self) -> int | None: ...

    def start_output_relay(self, pid: int, nursery: trio.Nursery) -> None:
        """Relay the worker's further output, prefixed with its pid."""
        ...

    async def stop(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for a clean exit, then force it."""
        ...

    def kill(self) -> None:
        """Stop the worker at once (like kill -9)."""
        ...

    async def interrupt(self) -> None:
        """Interrupt the calls running on the worker (``ref.interrupt``).

        A real worker gets SIGINT; either way the worker turns it into the
        cancellation of the calls it is running for callers and keeps
        serving.  Returns once the interrupt is sent.
        """
        ...


@runtime_checkable
class SuspendableHandle(Protocol):
    """A ``WorkerHandle`` that can also stop and continue its worker.

    What ``faults.suspend`` and ``faults.resume`` need: a stopped worker
    (SIGSTOP on a real one) reads, runs and sends nothing until it is
    continued, but keeps its connections and state.  Optional: a handle
    without these methods just cannot be suspended.
    """

    def suspend(self) -> None:
        """Stop the worker where it stands."""
        ...

    def resume(self) -> None:
        """Let a stopped worker run again; nothing if it is running."""
        ...


class ManagedWorker(Protocol):
    """The master's per-worker link to the cluster manager that added it."""

    async def kill(self) -> None:
        """Make the worker exit (``rmprocs``): the manager's ``kill``."""
        ...

    async def deregister(self) -> None:
        """The worker has left the cluster: tell its manager."""
        ...


@dataclass
class LaunchedWorker:
    """Where a started worker listens, and how to stop it.

    ``ident`` and ``connect_idents`` are Julia's ``WorkerConfig`` fields of
    the same names, used by the ``custom`` topology: the worker dials every
    worker whose ``ident`` is in its ``connect_idents``.  ``connect``, when
    given, opens the master's stream to the worker (whose new pid it
    receives) instead of TCP to ``host:port``: a custom transport.
    """

    host: str
    port: int
    handle: WorkerHandle
    local: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)
    ident: object = None
    connect_idents: tuple[object, ...] = ()
    connect: Callable[[int], Awaitable[trio.abc.Stream]] | None = None


class Launcher(Protocol):
    """Starts workers and reports each one's address as it comes up."""

    async def launch(
        self,
        n: int,
        *,
        cookie: str,
        timeout: float,
        params: Mapping[str, Any],
        nursery: trio.Nursery,
    ) -> tuple[list[LaunchedWorker], list[BaseException]]:
        """Start ``n`` workers; return those that started and the failures."""
        ...


#: The programs a ``ProgramRunner`` can start: a worker that waits for its
#: master to connect (``python -m ref.worker``) and one that dials the
#: master's ElasticManager (``python -m ref.elastic HOST:PORT``).
PROGRAMS = ("worker", "elastic")


@dataclass(frozen=True)
class Program:
    """A distref program started by other means than ``addprocs``.

    ``kind`` is one of ``PROGRAMS``; ``args`` its command-line arguments;
    ``stdin`` what it finds on its standard input (which stays open while
    it runs, as a launcher's pipe would); ``environ`` variables added to
    its environment.
    """

    kind: str
    args: tuple[str, ...] = ()
    stdin: str = ""
    environ: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in PROGRAMS:
            raise ValueError(
                f"Program: kind={self.kind!r} is not one of {', '.join(PROGRAMS)}"
            )


class RunningProgram(Protocol):
    """A started ``Program``: its output, its exit status, a way to stop it."""

    @property
    def ospid(self) -> int | None: ...

    async def readline(self) -> str | None:
        """Its next line of output (stdout and stderr), None once it ended."""
        ...

    async def wait(self) -> int:
        """Wait until it has exited; its exit status."""
        ...

    def kill(self) -> None:
        """Stop it at once (like kill -9) if it still runs."""
        ...


@runtime_checkable
class ProgramRunner(Protocol):
    """A launcher that can also start a ``Program`` on its own."""

    async def run_program(
        self, program: Program, nursery: trio.Nursery
    ) -> RunningProgram:
        """Start ``program``; its tasks, if any, run in ``nursery``."""
        ...


class TcpTransport:
    """Streams over TCP; listeners bind to the host given (loopback default)."""

    async def listen(
        self, host: str, handler: StreamHandler, nursery: trio.Nursery
    ) -> tuple[str, int]:
        listeners = await trio.open_tcp_listeners(0, host=host)
        port = int(listeners[0].socket.getsockname()[1])
        nursery.start_soon(_serve, handler, listeners)
        return host, port

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    def held_connections(
        self,
        ospid: int,
        listening: tuple[str, int] | None,
        cluster: Mapping[int, int],
    ) -> list[HeldConnection]:
        """The OS's TCP sockets of ``ospid``, a process on this machine."""
        return os_connections(ospid, listening, cluster)


async def _serve(handler: StreamHandler, listeners: list[trio.SocketListener]) -> None:
    await trio.serve_listeners(handler, listeners)
