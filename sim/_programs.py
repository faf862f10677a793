"""Programs started by other means: a simulated ``python -m ref.worker`` or
``python -m ref.elastic``.

``ref.probes.run_program`` asks the cluster's launcher to start a worker
that ``addprocs`` did not launch: one that waits for a master nobody tells
about it, or one that dials an ElasticManager.  Under ``ref`` that is a
child process; here it is a new node of the world whose task runs what the
real program's ``main`` runs: the cookie from the first line of its stdin,
the worker timeout from its environment (with ``ref``'s own parser), then
``serve_worker`` or ``serve_elastic_worker`` over the simulated transport.
Only that thin glue is repeated; the worker itself is the runtime's.

What the program prints is kept as its output: the address line a worker
announces, and what it logs, rendered as the real program's logging
configuration renders it on stderr (``name: message``, WARNING and up).
A line ``ref.worker: ...`` or ``ref.elastic: ...`` and exit status 2 stand
for a bad cookie, timeout or address, as in the real programs.  A record
is the program's when the task that logged it acts as the program's
process; a task started before that process existed (the elastic worker's
watch on its dialled connection) is not attributed, so its one line ("the
master closed the connection") is missing from the simulated output.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ref._config import ADDRESS_PREFIX
from ref._config import worker_timeout as parse_worker_timeout
from ref._context import set_current
from ref._process import Process
from ref._seams import Program
from ref._transports import pad_cookie
from ref._worker import serve_worker
from ref.elastic import serve_elastic_worker, split_address

from ._codec import TracingCodec
from ._launcher import SimTransport
from ._network import SIM_HOST
from ._node import Node

if TYPE_CHECKING:
    from ._cluster import World

#: The exit status ``run_program`` reports for a program killed like
#: ``kill -9`` (what ``trio.Process.returncode`` says for SIGKILL).
KILLED = -9
#: The exit status of a program that refused its arguments or environment.
USAGE_ERROR = 2


class SimProgram:
    """A ``Program`` running on a simulated node: its output and its exit."""

    def __init__(self, world: World, node: Node) -> None:
        self._world = world
        self.node = node
        self._lines: list[str] = []
        self._read = 0
        self._more = trio.Event()

    @property
    def ospid(self) -> int | None:
        return self.node.ospid

    def write(self, line: str) -> None:
        """The program printed ``line``."""
        self._lines.append(line)
        self._more.set()
        self._more = trio.Event()

    def ended(self) -> None:
        """The program's process is gone: readers see the end of its output."""
        self._more.set()

    async def readline(self) -> str | None:
        while self._read == len(self._lines):
            if self.node.done.is_set():
                await trio.lowlevel.checkpoint()
                return None
            await self._more.wait()
        self._read += 1
        await trio.lowlevel.checkpoint()
        return self._lines[self._read - 1]

    async def wait(self) -> int:
        await self.node.done.wait()
        code = self.node.exit_code
        return KILLED if code is None else code

    def kill(self) -> None:
        self._world.kill(self.node)


class _Stderr(logging.Handler):
    """Copies what one simulated process logs into its program's output."""

    def __init__(self, world: World, running: SimProgram) -> None:
        super().__init__(logging.WARNING)
        self._world = world
        self._running = running

    def emit(self, record: logging.LogRecord) -> None:
        # Every simulated process shares the logger; the record is this
        # program's if the task that logged it belongs to its process.
        if self._world.run.ospid() == self._running.node.ospid:
            self._running.write(f"{record.name}: {record.getMessage()}")


async def run_program(world: World, program: Program, running: SimProgram) -> int:
    """What the program's ``main`` does, on ``running``'s node; its status."""
    node = running.node
    name = "ref.worker" if program.kind == "worker" else "ref.elastic"
    cookie = program.stdin.split("\n", 1)[0]
    try:
        timeout = parse_worker_timeout(program.environ)
        if program.kind == "worker":
            padded = pad_cookie(cookie)
        else:
            if len(program.args) != 1:
                raise ValueError(f"expected one HOST:PORT, got {program.args!r}")
            master = split_address(program.args[0])
    except ValueError as exc:
        running.write(f"{name}: {exc}")
        return USAGE_ERROR

    def started(proc: Process) -> None:
        world.attach(node, proc, make_current=True)

    logger = logging.getLogger("ref")
    handler = _Stderr(world, running)
    logger.addHandler(handler)
    try:
        if program.kind == "worker":
            return await serve_worker(
                cookie=padded,
                transport=SimTransport(world.network, node),
                host=SIM_HOST,
                announce=lambda host, port: running.write(
                    f"{ADDRESS_PREFIX}{port}#{host}"
                ),
                worker_timeout=timeout,
                codec=TracingCodec(node, enabled=world.trace.enabled),
                started=started,
            )
        try:
            return await serve_elastic_worker(
                cookie=cookie,
                master=master,
                bind_to=SIM_HOST,
                transport=SimTransport(world.network, node),
                worker_timeout=timeout,
                started=started,
            )
        except (OSError, ValueError) as exc:
            running.write(f"{name}: {exc}")
            return USAGE_ERROR
    finally:
        logger.removeHandler(handler)


async def host_program(world: World, program: Program, running: SimProgram) -> None:
    """The life of the program's simulated process, from exec to exit."""
    node = running.node
    # Spawned from the master's task: until the program's own Process
    # exists, this task must not act as the master.
    set_current(None)
    try:
        with node.cancel_scope:
            await trio.sleep(world.config.launch_delay.draw(world.program_rng))
            node.exit_code = await run_program(world, program, running)
    finally:
        world.network.node_exited(node)
        node.done.set()
        running.ended()
        world.trace.event(
            "exit", node=node.name, pid=node.pid, code=node.exit_code, killed=node.dead
        )
