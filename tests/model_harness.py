"""Run ``spec.model`` operations against a live ``ref`` cluster and check them.

``Driver`` hosts a master (``ref.open_cluster``) in a trio loop on a helper
thread.  Why a thread: Hypothesis's ``RuleBasedStateMachine`` calls its
rules synchronously, one at a time, and may stop after any of them, while
the cluster must keep running between rules (a call started in one rule
answers in a later one).  So the cluster lives for a whole test in its own
``trio.run``, and every rule hands it an operation through a memory channel
and waits, with a bound, for the answers the model says must come.  The
operations run as tasks spawned by one dispatcher task inside the cluster
block, so they see the master as their current process.

``Harness`` is what rules call: ``step(op)`` records the invocation in a
``spec.refinement.Checker`` *before* starting the operation, then waits for
every call the model says must answer (bounded) and feeds each answer to the
checker, which raises ``Refuted`` when the model does not allow it.  Calls
the model says may block (a take on an empty channel) keep running in the
background and are checked whenever they answer.  ``finish()`` gives late
answers a moment and then checks that the calls still unanswered were
allowed to be.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import gc
import itertools
import math
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import model_fns as fns
import model_mistakes
import trio

import ref
from spec import model as m
from spec.api import NoSuchProcessError, ProcessExitedException, RemoteException
from spec.refinement import Checker, Refuted

#: How long a call the model says must answer may take, in seconds.
ANSWER_BOUND = 15.0
#: How long to wait for a killed worker to be noticed.
NOTICE_BOUND = 10.0
#: How long a client set may take to converge on its owner.
CLIENTS_BOUND = 5.0

Factory = Callable[[], Awaitable[Any]]


# ---------------------------------------------------------- observations


def observe_value(value: Any) -> m.Value:
    """A runtime value as the model sees it."""
    if isinstance(value, ref.Future):
        return ("future", value.where)
    if isinstance(value, ref.RemoteChannel):
        return ("channel", value.where)
    if isinstance(value, ref.Removal):
        return None
    if isinstance(value, list | tuple):
        return tuple(observe_value(v) for v in value)
    if isinstance(value, frozenset | set):
        return tuple(sorted(value))
    if value is None or isinstance(value, bool | int | str):
        return value
    return repr(value)


def observe_error(error: BaseException) -> m.Raised:
    """A raised exception as the model sees it."""
    if isinstance(error, RemoteException):
        return m.Raised("RemoteException", error.pid, type(error.exception).__name__)
    if isinstance(error, ProcessExitedException):
        return m.Raised("ProcessExitedException", error.worker_id)
    if isinstance(error, NoSuchProcessError):
        return m.Raised("NoSuchProcessError", error.pid)
    return m.Raised(type(error).__name__)


# ----------------------------------------------------------------- driver


class Driver:
    """A ref master in a trio loop on a helper thread, running operations.

    ``submit`` starts an operation as a task; its outcome arrives on
    ``results`` as ``(cid, Outcome)``, exactly once.  ``call`` runs a
    coroutine function to completion and returns its value (for the test's
    own bookkeeping, not checked against the model).
    """

    #: OS pids of every worker any Driver launched, for leftover checks.
    all_ospids: ClassVar[list[int]] = []
    #: Answers take real time (the simulator's driver says True).
    virtual = False

    def __init__(self, workers: int = 2, *, mistake: str | None = None) -> None:
        self.mistake = mistake
        self.results: queue.Queue[tuple[int, m.Outcome]] = queue.Queue()
        self.ospids: list[int] = []
        self.allocated: list[int] = []
        self._answered: set[int] = set()
        self.duplicates: list[int] = []
        self._cids = itertools.count()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._send: trio.MemorySendChannel[tuple[int, Factory, Any]] | None = None
        self._cluster: ref.Cluster | None = None
        self._initial = workers
        self._thread = threading.Thread(target=self._thread_main, daemon=True)
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise RuntimeError(f"the test cluster did not start: {self._error!r}")

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        send, receive = trio.open_memory_channel[tuple[int, Factory, Any]](math.inf)
        async with ref.open_cluster() as cluster:
            self._cluster = cluster
            try:
                if self._initial:
                    await self.added(await ref.addprocs(self._initial))
                self._send = send
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set()
                async with trio.open_nursery() as nursery:
                    async for cid, factory, box in receive:
                        nursery.start_soon(self._run, cid, factory, box)
                    nursery.cancel_scope.cancel()
            finally:
                self.ospids += [h.ospid for h in cluster.master.all_handles if h.ospid]
                Driver.all_ospids += self.ospids

    async def _run(self, cid: int, factory: Factory, box: Any) -> None:
        outcome: m.Outcome
        try:
            value = await factory()
        except trio.Cancelled:
            raise
        except BaseException as exc:
            if box is not None:
                box.set_exception(exc)
                return
            outcome = observe_error(exc)
        else:
            if box is not None:
                box.set_result(value)
                return
            outcome = m.Returned(observe_value(value))
        if cid in self._answered:
            self.duplicates.append(cid)  # checked by the harness
            return
        self._answered.add(cid)
        self.results.put((cid, outcome))

    def _enqueue(self, cid: int, factory: Factory, box: Any) -> None:
        assert self._send is not None and self._token is not None
        trio.from_thread.run_sync(
            self._send.send_nowait, (cid, factory, box), trio_token=self._token
        )

    async def added(self, pids: list[int]) -> list[int]:
        """Record new workers; make the driver's mistake on them too."""
        self.allocated += pids
        if self.mistake is not None:
            for pid in pids:
                await ref.remotecall_fetch(
                    model_mistakes.apply_remote, pid, self.mistake
                )
        return pids

    def new_cid(self) -> int:
        """A call id never used before on this driver."""
        return next(self._cids)

    def submit(self, cid: int, factory: Factory) -> None:
        """Start ``factory()`` as call ``cid``."""
        self._enqueue(cid, factory, None)

    def call(self, factory: Factory, timeout: float = ANSWER_BOUND) -> Any:
        """Run ``factory()`` in the cluster and return its value."""
        box: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._enqueue(-1, factory, box)
        return box.result(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    def close(self, timeout: float = 60.0) -> None:
        """Stop every operation and worker; waits for the thread."""
        if self._send is not None and self._token is not None and self.alive():
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._send.close, trio_token=self._token)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the test cluster did not shut down in time")

    def live_workers(self) -> list[int]:
        async def ask() -> list[int]:
            return [p for p in ref.procs() if p != 1]

        workers: list[int] = self.call(ask)
        return workers

    def reset_workers(self, n: int) -> list[int]:
        """Add or remove workers until exactly ``n`` run; returns them.

        Examples start from the same shape of cluster, so Hypothesis sees the
        same choices behave the same way (pids differ, counts do not).
        """

        async def adjust() -> list[int]:
            live = [p for p in ref.procs() if p != 1]
            if len(live) > n:
                await ref.rmprocs(*live[: len(live) - n])
            elif len(live) < n:
                await self.added(await ref.addprocs(n - len(live)))
            return [p for p in ref.procs() if p != 1]

        workers: list[int] = self.call(adjust, timeout=60)
        return workers

    @property
    def next_pid(self) -> int:
        return max([1, *self.allocated]) + 1


# ---------------------------------------------------------------- harness


class Harness:
    """Steps of model operations on a Driver, each checked by the model."""

    def __init__(
        self,
        driver: Driver,
        *,
        seen: set[tuple[str, str, str]] | None = None,
        bound: float = ANSWER_BOUND,
        workers: int | None = None,
    ) -> None:
        self.driver = driver
        if workers is None:
            live = driver.live_workers()
        else:
            live = driver.reset_workers(workers)
        self.initial = m.Model.start(live, next_pid=driver.next_pid, seen=seen)
        self.checker = Checker(self.initial)
        self.objects: dict[str, Any] = {}
        self.pending: set[int] = set()
        self.responses: dict[int, m.Outcome] = {}
        self.bound = bound
        # Drain answers left over from an earlier harness on this driver.
        while True:
            try:
                driver.results.get_nowait()
            except queue.Empty:
                break

    # ----------------------------------------------------------- stepping

    def start(self, op: m.Op) -> int:
        """Start ``op`` without waiting for anything; returns its call id."""
        cid = self.driver.new_cid()
        self.checker.invoke(cid, op)
        self.pending.add(cid)
        self.driver.submit(cid, self._factory(cid, op))
        return cid

    def step(self, op: m.Op) -> m.Outcome | None:
        """Run ``op``; returns its outcome if it answered within the step."""
        cid = self.start(op)
        self.settle()
        return self.responses.get(cid)

    def settle(self) -> None:
        """Feed answers until no unanswered call is one that must answer."""
        deadline = time.monotonic() + self.bound
        while True:
            self._drain(block=False)
            must = self.checker.must_resolve() & self.pending
            if not must:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                named = ", ".join(f"[{c}] {self.checker.ops[c]}" for c in sorted(must))
                raise Refuted(
                    f"no answer within {self.bound:g} s from calls that must "
                    f"answer: {named}",
                    list(self.checker.history),
                )
            self._drain(block=True, timeout=min(remaining, 0.5))

    def _drain(self, *, block: bool, timeout: float = 0.0) -> None:
        if block and self.driver.virtual:
            # A simulated world moves only when told: let it run a while.
            self.driver.wait_for_results(timeout)
            block = False
        while True:
            try:
                cid, outcome = self.driver.results.get(block=block, timeout=timeout)
            except queue.Empty:
                return
            block = False
            if cid not in self.pending:
                continue  # an answer for an earlier harness's call
            self.pending.discard(cid)
            self.responses[cid] = outcome
            self.checker.respond(cid, outcome)

    def finish(self, quiet: float = 0.3) -> None:
        """Let late answers arrive, then check no unanswered call had to."""
        self.settle()
        assert not self.driver.duplicates, (
            f"calls answered twice: {self.driver.duplicates}"
        )
        deadline = time.monotonic() + quiet
        while self.pending and time.monotonic() < deadline:
            self._drain(block=True, timeout=max(0.0, deadline - time.monotonic()))
        self.checker.check_quiet(self.pending)

    # ------------------------------------------------------ model queries

    def models(self) -> list[m.Model]:
        return self.checker.candidates

    def any_model(self) -> m.Model:
        return self.checker.candidates[0]

    # ---------------------------------------------------------- executing

    def _fn(self, fn: m.Fn) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if isinstance(fn, m.Const):
            return fns.const, (fn.value,)
        if isinstance(fn, m.Fail):
            return fns.fail, ()
        if isinstance(fn, m.MyId):
            return fns.my_id, ()
        if isinstance(fn, m.TakeFrom):
            return fns.take_from, (self.objects[fn.ref],)
        if isinstance(fn, m.PutInto):
            return fns.put_into, (self.objects[fn.ref], fn.value)
        return fns.sleep_forever, ()

    @staticmethod
    def _map_fn(fn: m.MapFn) -> Callable[[int], int]:
        if isinstance(fn, m.Plus):
            return functools.partial(fns.plus, fn.k)
        if isinstance(fn, m.FailOn):
            return functools.partial(fns.fail_on, fn.bad)
        return fns.map_my_id

    def _pool(self, name: str) -> Any:
        if name == "default":
            return ref.default_worker_pool()
        return self.objects[name]

    def _factory(self, cid: int, op: m.Op) -> Factory:
        """The coroutine function that performs ``op`` on the cluster."""
        objects = self.objects

        async def run() -> Any:
            if isinstance(op, m.AddProcs):
                return await self.driver.added(await ref.addprocs(op.n))
            if isinstance(op, m.RmProcs):
                return await ref.rmprocs(*op.pids)
            if isinstance(op, m.Kill):
                await ref.faults.kill(op.pid)
                with trio.fail_after(NOTICE_BOUND):
                    while op.pid in ref.procs():
                        await trio.sleep(0.01)
                return None
            if isinstance(op, m.Interrupt):
                return await ref.interrupt(*op.pids)
            if isinstance(op, m.Procs | m.Workers | m.NProcs | m.NWorkers):
                query = {
                    m.Procs: ref.procs,
                    m.Workers: ref.workers,
                    m.NProcs: ref.nprocs,
                    m.NWorkers: ref.nworkers,
                }[type(op)]
                return query()
            if isinstance(op, m.RemoteCall | m.RemoteCallWait):
                f, args = self._fn(op.fn)
                call = (
                    ref.remotecall
                    if isinstance(op, m.RemoteCall)
                    else ref.remotecall_wait
                )
                # remotecall_wait gives no Future when the call raised: the
                # model still has its record, but no rule can name it.
                fut = await call(f, op.pid, *args)
                objects[op.ref] = fut
                return fut
            if isinstance(op, m.RemoteCallFetch):
                f, args = self._fn(op.fn)
                return await ref.remotecall_fetch(f, op.pid, *args)
            if isinstance(op, m.RemoteDo):
                f, args = self._fn(op.fn)
                return await ref.remote_do(f, op.pid, *args)
            if isinstance(op, m.NewFuture):
                objects[op.ref] = ref.Future(op.pid)
                return objects[op.ref]
            if isinstance(op, m.NewChannel):
                capacity = math.inf if op.capacity is None else op.capacity
                factory = functools.partial(ref.Channel, capacity)
                objects[op.ref] = ref.RemoteChannel(factory, op.pid)
                return objects[op.ref]
            return await self._ref_op(cid, op)

        return run

    async def _ref_op(self, cid: int, op: m.Op) -> Any:
        objects = self.objects
        if isinstance(op, m.Fetch):
            return await ref.fetch(objects[op.ref])
        if isinstance(op, m.Wait):
            return await ref.wait(objects[op.ref])
        if isinstance(op, m.IsReady):
            return await ref.isready(objects[op.ref])
        if isinstance(op, m.Put):
            return await ref.put(objects[op.ref], op.value)
        if isinstance(op, m.Take):
            return await ref.take(objects[op.ref])
        if isinstance(op, m.Close):
            return await ref.close(objects[op.ref])
        if isinstance(op, m.IsOpen):
            return await ref.isopen(objects[op.ref])
        if isinstance(op, m.IsEmpty):
            return await ref.isempty(objects[op.ref])
        if isinstance(op, m.Forward):
            return await ref.remotecall_fetch(
                fns.stash, op.pid, op.ref, objects[op.ref]
            )
        if isinstance(op, m.Drop):
            if op.pid == 1:
                del objects[op.ref]
                gc.collect()
                return None
            return await ref.remotecall_fetch(fns.unstash, op.pid, op.ref)
        if isinstance(op, m.Clients):
            return await self._clients(cid, op)
        return await self._pool_op(op)

    async def _clients(self, cid: int, op: m.Clients) -> Any:
        """Poll the owner's client set until the model accepts it (bounded).

        The owner learns of holders asynchronously, so a single look could
        catch it mid-update; what is checked is the value it settles on.
        """
        handle = self.objects[op.ref]
        rrid = ref.remoteref_id(handle)
        owner = handle.where
        expects = self.checker.expectations(cid)
        seen: Any = None
        with trio.move_on_after(CLIENTS_BOUND):
            while True:
                if owner == 1:
                    table = ref.live_refs()
                else:
                    table = await ref.remotecall_fetch(fns.live_refs, owner)
                clients = table.get(rrid)
                seen = None if clients is None else tuple(sorted(clients))
                if any(m.admits(e, m.Returned(seen)) for e in expects):
                    return seen
                await trio.sleep(0.02)
        return seen

    async def _pool_op(self, op: m.Op) -> Any:
        if isinstance(op, m.NewPool):
            self.objects[op.pool] = ref.WorkerPool(list(op.pids))
            return None
        if isinstance(op, m.PoolTake):
            return await self._pool(op.pool).take()
        if isinstance(op, m.PoolPut):
            return await self._pool(op.pool).put(op.pid)
        if isinstance(op, m.PoolPush):
            return await ref.push(self._pool(op.pool), op.pid)
        if isinstance(op, m.PoolLength):
            return await self._pool(op.pool).length()
        if isinstance(op, m.PoolIsReady):
            return await self._pool(op.pool).isready()
        if isinstance(op, m.PoolWorkers):
            return await self._pool(op.pool).workers()
        if isinstance(op, m.PoolCall):
            f, args = self._fn(op.fn)
            return await ref.remotecall_fetch(f, self._pool(op.pool), *args)
        if isinstance(op, m.PoolRemoteCall):
            f, args = self._fn(op.fn)
            fut = await ref.remotecall(f, self._pool(op.pool), *args)
            self.objects[op.ref] = fut
            return fut
        if isinstance(op, m.PMap):
            pool = None if op.pool is None else self._pool(op.pool)
            options: dict[str, Any] = {"pool": pool}
            if op.on_error is not None:
                options["on_error"] = functools.partial(
                    fns.const_on_error, op.on_error.value
                )
            if op.retries:
                options["retry_delays"] = [0.01] * op.retries
            return await ref.pmap(self._map_fn(op.fn), list(op.items), **options)
        raise AssertionError(f"no runtime counterpart for {op!r}")
