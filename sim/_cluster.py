"""A simulated cluster: the world its processes live in, and how to open one.

``open_cluster`` is ``ref.open_cluster`` with the simulated seams plugged
in: a ``World`` (nodes, network, fault injector) is built around it, the
master runs in the caller's task exactly as under ``ref``, and workers run
``serve_worker`` as tasks of the world.  Inside the block the ordinary
module-level API (``ref.addprocs``, ``ref.remotecall_fetch``, ...) works.

The module-level fault functions (``crash``, ``partition``, ...) act on the
cluster the calling task belongs to, for scenarios that inject faults at a
point of their own choosing rather than from a ``FaultPlan``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TypeVar

import trio

import ref
from ref._context import set_current
from ref._process import Process
from ref._seams import Program
from ref._worker import serve_worker

from ._codec import TracingCodec
from ._config import NetworkConfig
from ._faults import FaultInjector, FaultPlan
from ._launcher import SimLauncher, SimTransport
from ._network import SIM_HOST, Network
from ._node import Node
from ._oracles import check_references
from ._programs import SimProgram, host_program
from ._run import Run, current_run

log = logging.getLogger("sim")

T = TypeVar("T")

_world: ContextVar[World | None] = ContextVar("sim_world", default=None)


class NoSimulatedClusterError(RuntimeError):
    """A fault function was called outside ``sim.open_cluster()``."""


class WorldTasks:
    """Starts the world's tasks in its nursery, out of the master's reach.

    A simulated process is an OS process of its own: cancelling the
    master's task (a deadline around the whole cluster, say) must not
    cancel the workers, the network or the fault timers, or the master's
    shutdown would find nobody to ask to leave.  Their tasks live in the
    world's nursery, which sits inside the caller's cancel scopes, so each
    runs under a shield, until ``stop`` cancels them all when the cluster
    is torn down.  The shield adds no checkpoint: schedules stay as they
    were.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        # Insertion-ordered, so stopping cancels in a deterministic order.
        self._scopes: dict[trio.CancelScope, None] = {}
        self._stopped = False

    def start_soon(
        self,
        fn: Callable[..., Awaitable[object]],
        *args: object,
        name: str | None = None,
    ) -> None:
        self._nursery.start_soon(self._shielded, fn, args, name=name or fn)

    async def _shielded(
        self, fn: Callable[..., Awaitable[object]], args: tuple[object, ...]
    ) -> None:
        with trio.CancelScope(shield=True) as scope:
            if self._stopped:
                scope.cancel()
            self._scopes[scope] = None
            try:
                await fn(*args)
            finally:
                del self._scopes[scope]

    def stop(self) -> None:
        """Cancel every task started here, and any started from now on."""
        self._stopped = True
        for scope in list(self._scopes):
            scope.cancel()


class World:
    """Everything simulated about one cluster: nodes, network, faults."""

    def __init__(
        self,
        run: Run,
        index: int,
        config: NetworkConfig,
        plan: FaultPlan,
        nursery: trio.Nursery,
    ) -> None:
        self.run = run
        self.index = index
        self.config = config
        self.trace = run.trace
        self.tasks = WorldTasks(nursery)
        self._nursery = self.tasks
        run.world_stoppers.append(self.tasks.stop)
        self._launch_rng = run.rng(f"cluster{index}.launch")
        # Apart from launches, so that a scenario starting programs leaves
        # the draws of its addprocs launches where they were.
        self.program_rng = run.rng(f"cluster{index}.programs")
        self.nodes: list[Node] = []
        self.network = Network(
            config=config,
            rng=run.rng(f"cluster{index}.network"),
            trace=run.trace,
            on_delivery=self._delivered,
        )
        self.faults = FaultInjector(self, plan, run.rng(f"cluster{index}.faults"))

    def start(self) -> None:
        self._nursery.start_soon(self.network.pump)
        self.faults.start(self._nursery)

    def _delivered(self) -> None:
        self.faults.delivered(self.network.deliveries)
        self.run.delivered()

    # --------------------------------------------------------------- nodes

    def add_node(self, *, master: bool = False) -> Node:
        index = len(self.nodes)
        name = "master" if master else f"w{index}"
        node = Node(index, name, self.run.next_ospid(), fixed_pid=1 if master else 0)
        self.nodes.append(node)
        return node

    def attach(self, node: Node, proc: Process, *, make_current: bool) -> None:
        """``proc`` runs on ``node`` from now on."""
        node.attach(proc, make_current=make_current)
        self.run.register_process(proc, node.ospid)

    def _started(self, node: Node, proc: Process) -> None:
        self.attach(node, proc, make_current=True)

    def node_for_pid(self, pid: int) -> Node | None:
        """The live node whose process has distref pid ``pid``."""
        for node in self.nodes:
            if node.pid == pid and not node.dead and not node.done.is_set():
                return node
        return None

    def live_workers(self) -> list[int]:
        """Pids of the workers that joined and are alive, ascending."""
        return sorted(
            node.pid
            for node in self.nodes
            if node.pid > 1 and not node.dead and not node.done.is_set()
        )

    def start_worker(
        self,
        number: int,
        cookie: str,
        timeout: float,
        *,
        fail: bool,
        delay: float | None,
    ) -> Node:
        """Start launch ``number`` as a new node; returns it at once."""
        node = self.add_node()
        if delay is None:
            delay = self.config.launch_delay.draw(self._launch_rng)
        self.trace.event(
            "launch",
            node=node.name,
            launch=number,
            ospid=node.ospid,
            delay=round(delay * 1e9),
            fail=fail,
        )
        self._nursery.start_soon(
            self._host_worker, node, cookie, timeout, fail, delay, name=node.name
        )
        return node

    def start_program(self, program: Program) -> SimProgram:
        """Start ``program`` on a new node, as if by hand; returns at once."""
        node = self.add_node()
        running = SimProgram(self, node)
        self.trace.event(
            "program", node=node.name, program=program.kind, ospid=node.ospid
        )
        self._nursery.start_soon(host_program, self, program, running, name=node.name)
        return running

    async def _host_worker(
        self, node: Node, cookie: str, timeout: float, fail: bool, delay: float
    ) -> None:
        """The life of one simulated worker process, from exec to exit."""
        # This task was spawned from the master's task: until the worker's
        # own Process exists, it must not act as the master.
        set_current(None)
        try:
            with node.cancel_scope:
                await trio.sleep(delay)
                if fail:
                    node.launch_failed = True
                    node.announced.set()
                    node.exit_code = 1
                    return
                node.exit_code = await serve_worker(
                    cookie=cookie,
                    transport=SimTransport(self.network, node),
                    host=SIM_HOST,
                    announce=node.announce,
                    worker_timeout=timeout,
                    codec=TracingCodec(node, enabled=self.trace.enabled),
                    started=lambda proc: self._started(node, proc),
                )
        finally:
            self.network.node_exited(node)
            node.done.set()
            self.trace.event(
                "exit",
                node=node.name,
                pid=node.pid,
                code=node.exit_code,
                killed=node.dead,
            )

    # -------------------------------------------------------------- faults

    def _fault(self, kind: str, **fields: object) -> None:
        self.trace.event("fault", fault=kind, **fields)
        log.debug("fault %s %s", kind, fields)
        if fields.get("skipped"):
            log.warning(
                "fault %s on pid %s at %.6f s hit nothing: %s",
                kind,
                fields.get("pid"),
                trio.current_time(),
                self._why_missing(fields.get("pid")),
            )

    def warn_unfired(self) -> None:
        """Warn about each planned fault the cluster ended before injecting.

        A fault timed after the end of the run does nothing, and would
        otherwise go unnoticed: the run looks as if it survived the fault.
        Only logged: a trace event for it would change the trace format.
        """
        for fault in self.faults.unfired():
            log.warning(
                "fault %s was never injected: cluster %d ended at %.6f s first",
                fault,
                self.index,
                trio.current_time(),
            )

    def _why_missing(self, pid: object) -> str:
        # A fault that hits nothing is usually a mistake in the plan (a pid
        # that was never added), so the warning says which case it is.
        if pid == 1:
            return "the master cannot be faulted this way"
        if any(node.pid == pid for node in self.nodes):
            return "that process has already exited"
        return f"no process has that pid (live workers: {self.live_workers()})"

    def kill(self, node: Node, *, fault: str = "kill") -> None:
        """Kill ``node`` like ``kill -9``: silence it, then cancel its tasks."""
        if node.dead or node.done.is_set():
            return
        self._fault(fault, node=node.name, pid=node.pid)
        self.network.crash(node)
        node.cancel_scope.cancel()

    def interrupt(self, node: Node) -> None:
        """Deliver SIGINT to ``node``: the runtime interrupts its calls.

        A stopped (hung) process gets the signal when it resumes.
        """
        if node.dead or node.done.is_set() or node.proc is None:
            return
        self._fault("interrupt", node=node.name, pid=node.pid)
        if node.hung:
            self._nursery.start_soon(self._interrupt_when_resumed, node)
        else:
            node.proc.interrupt_calls()

    async def _interrupt_when_resumed(self, node: Node) -> None:
        await node.step()
        if node.proc is not None and not node.dead:
            node.proc.interrupt_calls()

    def crash(self, pid: int) -> bool:
        """Crash the worker with ``pid``; False if there is none alive."""
        node = self.node_for_pid(pid)
        if node is None or pid == 1:
            self._fault("crash", pid=pid, skipped=True)
            return False
        self.kill(node, fault="crash")
        return True

    def reset(self, a: int, b: int) -> int:
        """Reset the connections between ``a`` and ``b``; returns how many."""
        conns = list(self.network.connections_of(a, b))
        self._fault("reset", a=a, b=b, connections=len(conns))
        for conn in conns:
            self.network.reset(conn, why="fault")
        return len(conns)

    def partition(
        self, pids: tuple[int, ...], *, heal: float | None, break_after: float
    ) -> frozenset[int]:
        """Cut ``pids`` off from the rest; heal and break on their own timers."""
        side = frozenset(pids)
        self._fault(
            "partition",
            pids=sorted(side),
            heal=None if heal is None else round(heal * 1e9),
            break_after=round(break_after * 1e9),
        )
        self.network.add_partition(side)
        self._nursery.start_soon(self._partition_timers, side, heal, break_after)
        return side

    async def _partition_timers(
        self, side: frozenset[int], heal: float | None, break_after: float
    ) -> None:
        began = trio.current_time()
        if heal is None or break_after < heal:
            await trio.sleep_until(began + break_after)
            self._break_across(side)
        if heal is not None:
            await trio.sleep_until(began + heal)
            self.heal(side)

    def _break_across(self, side: frozenset[int]) -> None:
        """Keep-alive expired: reset every connection the partition cuts."""
        if not self.network.has_partition(side):
            return
        self._fault("partition_break", pids=sorted(side))
        for conn in self.network.connections:
            if (conn.initiator.pid in side) != (conn.acceptor.pid in side):
                self.network.reset(conn, why="partition")

    def heal(self, side: frozenset[int] | None = None) -> None:
        """End one partition, or all of them."""
        sides = self.network.partitions() if side is None else [side]
        for each in sides:
            if self.network.has_partition(each):
                self._fault("heal", pids=sorted(each))
                self.network.remove_partition(each)

    def hang(self, pid: int, *, duration: float | None) -> bool:
        node = self.node_for_pid(pid)
        self._fault(
            "hang",
            pid=pid,
            duration=None if duration is None else round(duration * 1e9),
            skipped=node is None,
        )
        if node is None:
            return False
        node.hang()
        if duration is not None:
            self._nursery.start_soon(self._later, duration, self.resume, pid)
        return True

    def resume(self, pid: int) -> None:
        node = self.node_for_pid(pid)
        if node is not None and node.hung:
            self._fault("resume", pid=pid)
            node.resume()

    def slow(self, pid: int, step: float, *, duration: float | None) -> bool:
        node = self.node_for_pid(pid)
        self._fault(
            "slow",
            pid=pid,
            step=round(step * 1e9),
            duration=None if duration is None else round(duration * 1e9),
            skipped=node is None,
        )
        if node is None:
            return False
        node.step_delay = step
        if duration is not None:
            self._nursery.start_soon(self._later, duration, self._unslow, node)
        return True

    def _unslow(self, node: Node) -> None:
        self._fault("slow_end", pid=node.pid)
        node.step_delay = 0.0

    async def _later(self, delay: float, action: Callable[[T], None], arg: T) -> None:
        await trio.sleep(delay)
        action(arg)

    def describe(self, plan: FaultPlan) -> dict[str, object]:
        return {"network": self.config.describe(), "faults": plan.describe()}


@asynccontextmanager
async def open_cluster(
    *,
    network: NetworkConfig | None = None,
    faults: FaultPlan | None = None,
    timeout: float | None = None,
    check_leaks: bool = True,
) -> AsyncIterator[ref.Cluster]:
    """Become the master of a new simulated cluster for the block's duration.

    Must run inside ``sim.run``.  ``timeout`` is the worker timeout
    (``DISTREF_WORKER_TIMEOUT`` by default, as for ``ref``).  When the
    block ends without an error, the leak oracle checks that every remote
    value no live process references has been freed, and raises
    ``sim.ReferenceLeak`` otherwise (``check_leaks=False`` skips it).  On
    exit the runtime shuts its workers down as under ``ref``; whatever
    still runs afterwards (a hung worker) is cancelled with the world.  An
    error from the block propagates as raised, as from ``ref.open_cluster``.
    """
    run = current_run()
    config = network or NetworkConfig()
    plan = faults or FaultPlan()
    index = run.next_cluster()

    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            world = World(run, index, config, plan, nursery)
            run.trace.clusters.append(world.describe(plan))
            run.trace.event("cluster", index=index)
            world.start()
            master = world.add_node(master=True)
            token = _world.set(world)
            try:
                async with ref.open_cluster(
                    launcher=SimLauncher(world),
                    transport=SimTransport(world.network, master),
                    cookie=run.cookie(index),
                    codec=TracingCodec(master, enabled=run.trace.enabled),
                    timeout=timeout,
                ) as cluster:
                    world.attach(master, cluster.master, make_current=False)
                    yield cluster
                    # Reached only when the block ended without an error.
                    if check_leaks:
                        check = await check_references(world)
                        run.leak_checks.append(check)
                        check.raise_if_leaked()
            finally:
                _world.reset(token)
                world.warn_unfired()
                world.tasks.stop()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Like ref.open_cluster: the block's own error arrives as raised,
        # not wrapped by the world's nursery.
        if len(group.exceptions) != 1:
            raise
        failure = group.exceptions[0]
    # Raised outside the handler, so that its cause and context survive.
    if failure is not None:
        raise failure


def current_world() -> World:
    """The simulated cluster of the calling task."""
    world = _world.get()
    if world is None:
        raise NoSimulatedClusterError(
            "no simulated cluster is active in this task: call this inside "
            "'async with sim.open_cluster():' within sim.run()"
        )
    return world


# The fault functions scenarios call directly.


def crash(pid: int) -> bool:
    """Crash worker ``pid`` now (see ``sim.Crash``); False if it is gone."""
    return current_world().crash(pid)


def reset(a: int, b: int) -> int:
    """Reset the connections between pids ``a`` and ``b``; returns how many."""
    return current_world().reset(a, b)


def partition(
    *pids: int, heal: float | None = None, break_after: float = 30.0
) -> frozenset[int]:
    """Cut ``pids`` off from the rest (see ``sim.Partition``)."""
    return current_world().partition(pids, heal=heal, break_after=break_after)


def heal(side: frozenset[int] | None = None) -> None:
    """End the partition ``side`` returned by ``partition``, or all of them."""
    current_world().heal(side)


def hang(pid: int, duration: float | None = None) -> bool:
    """Stop ``pid`` for ``duration`` seconds, or until ``resume``."""
    return current_world().hang(pid, duration=duration)


def resume(pid: int) -> None:
    """Let a hung ``pid`` run again."""
    current_world().resume(pid)


def slow(pid: int, step: float, duration: float | None = None) -> bool:
    """Make each I/O step of ``pid`` cost ``step`` seconds."""
    return current_world().slow(pid, step, duration=duration)
