"""Worker pools: WorkerPool, CachingPool, the default pool and ``remote``.

A pool is a set of member pids plus a FIFO queue of the members that are
free.  ``take`` hands out the member that became free first and ``put``
returns it; calls that target a pool (``remotecall_fetch(f, pool)`` and
friends, ``remote``, ``pmap``) take a member for the duration of one call.
This mirrors Julia's ``workerpool.jl`` (``WorkerPool``, ``CachingPool``,
``default_worker_pool``, ``remote``, ``remotecall_pool``).

Rules of this file:

* A pool lives on the process that created it (its *owner*).  Pickling a
  pool for another process sends only ``(owner pid, key)``; the receiver
  gets a ``PoolProxy`` whose every operation runs on the owner through
  ``remotecall_fetch``.  The owner keeps its pools in a weak table, so a
  proxy of a pool that the owner dropped fails with a clear error, as in
  Julia, where the owner's channel holds only a weak reference.
* Liveness is judged on the owner: a member that is no longer in the
  owner's ``procs()`` (exited, removed, or being removed) is dropped the
  next time the pool is consulted, so a pool never hands out a removed
  worker, and ``isready``, ``length`` and ``workers`` agree with what
  ``take`` would do (field report BR-07).
* An empty pool raises ``NoActiveWorkerError`` on ``take``, except the
  current default pool, which falls back to process 1 (the master works
  when there are no workers).
* A CachingPool sends each function object to each worker once.  The first
  call carries the function inside a ``_Shipment``, which stores it in the
  worker's reference table *while the message is decoded*; later calls
  carry a ``_CacheHit`` that decodes to the stored function.  Doing both at
  decode time makes the cache immune to the order in which the worker's
  tasks happen to run.  The storage is owned by a ``Future`` the pool holds,
  so ``clear(pool)`` or collecting the pool frees the copies through the
  ordinary reference counting.

Per-process state (the pool table, the default pool) is kept per
``Process`` object, so simulated processes sharing one interpreter each
have their own.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

from spec.api import (
    RRID,
    DistributedError,
    NoActiveWorkerError,
    ReferenceNotFoundError,
    WorkerPoolAPI,
)

from ._context import current_process
from ._refs import MISSING, Future, Slot

if TYPE_CHECKING:
    from ._process import Process

log = logging.getLogger("ref")

MASTER: Final = 1

#: The key a worker's proxy uses for "the master's current default pool".
DEFAULT_KEY: Final = "default"

NO_ACTIVE_WORKER = "No active worker available in pool"


@dataclass
class _PoolState:
    """What one process knows about pools."""

    pools: weakref.WeakValueDictionary[int, WorkerPool] = field(
        default_factory=weakref.WeakValueDictionary
    )
    serial: int = 0
    default: WorkerPoolAPI | None = None
    replaced: bool = False
    proxy: PoolProxy | None = None


_states: weakref.WeakKeyDictionary[Process, _PoolState] = weakref.WeakKeyDictionary()


def _state(proc: Process) -> _PoolState:
    state = _states.get(proc)
    if state is None:
        state = _states[proc] = _PoolState()
    return state


def is_pool(obj: object) -> bool:
    """Whether ``obj`` can stand where a pid is expected.

    Besides distref's own pools, any object with ``take``, ``put`` and
    ``workers`` methods (Julia's AbstractWorkerPool contract) qualifies; a
    channel, which has only the first two, does not.
    """
    if isinstance(obj, WorkerPool | PoolProxy):
        return True
    return all(
        callable(getattr(obj, name, None)) for name in ("take", "put", "workers")
    )


# ------------------------------------------------------------- WorkerPool


class WorkerPool:
    """A pool of worker pids, owned by the process that created it.

    ``WorkerPool()`` is empty; ``WorkerPool(pids)`` has those members, all
    free, handed out in the given order.  Operations are ``async`` (see
    ``WorkerPoolAPI``); ``len(pool)`` and ``ref.workers(pool)`` also work
    synchronously on the owner.
    """

    def __init__(self, pids: Iterable[int] = ()) -> None:
        self._setup(current_process(), pids)

    def _setup(self, proc: Process, pids: Iterable[int]) -> None:
        state = _state(proc)
        state.serial += 1
        self._proc = proc
        self._owner = proc.myid
        self._key = state.serial
        self._members: dict[int, None] = {}
        self._free: deque[int] = deque()
        # Takers wait in their own lot, woken one per freed member: waking
        # them all (pmap keeps one taker per member waiting once members
        # died) would have all but one find nothing and park again.
        # ``wait`` and departures use ``_changed``.
        self._takers = trio.lowlevel.ParkingLot()
        self._changed = trio.lowlevel.ParkingLot()
        state.pools[self._key] = self
        for pid in pids:
            self._push_now(_check_pid(pid))

    @classmethod
    def _create(cls, proc: Process, pids: Iterable[int] = ()) -> WorkerPool:
        """A pool owned by ``proc`` (for code that runs outside its context)."""
        pool = cls.__new__(cls)
        pool._setup(proc, pids)
        return pool

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(members={sorted(self._members)}, "
            f"free={list(self._free)}, owner={self._owner})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_pool, (self._owner, self._key))

    # The synchronous core; the async API adds checkpoints around it.

    def _is_default(self) -> bool:
        return _state(self._proc).default is self

    def _prune(self) -> None:
        """Forget members that are no longer live processes of the owner."""
        alive = set(self._proc.group.procs())
        dead = [pid for pid in self._members if pid not in alive]
        if not dead:
            return
        for pid in dead:
            del self._members[pid]
            self._dropped(pid)
        self._free = deque(pid for pid in self._free if pid in self._members)
        log.debug("pool %r dropped departed workers %s", self._key, dead)

    def _dropped(self, pid: int) -> None:
        """Hook: ``pid`` left the pool because it is no longer alive."""

    def _push_now(self, pid: int) -> None:
        if pid not in self._members:
            self._members[pid] = None
        if pid not in self._free:
            self._free.append(pid)
            self._takers.unpark()
        self._changed.unpark_all()

    def _put_now(self, pid: int) -> None:
        # A pid that is not a member (the master lent by an empty default
        # pool, or one dropped meanwhile) is not queued.
        if pid in self._members and pid not in self._free:
            self._free.append(pid)
            self._takers.unpark()
            self._changed.unpark_all()

    def _empty_fallback(self) -> int:
        """With no live member: 1 for the default pool, else an error."""
        if self._is_default():
            return MASTER
        raise NoActiveWorkerError(NO_ACTIVE_WORKER)

    def _length_now(self) -> int:
        self._prune()
        return len(self._members)

    def _workers_now(self) -> list[int]:
        self._prune()
        if not self._members and self._is_default():
            return [MASTER]
        return sorted(self._members)

    def _isready_now(self) -> bool:
        self._prune()
        return bool(self._free) or (not self._members and self._is_default())

    def __len__(self) -> int:
        """Live members, busy and free."""
        return self._length_now()

    # The public, async operations (the same on a proxy).

    async def take(self) -> int:
        """Remove and return the free member that became free first.

        Waits while every live member is busy; with no live member at all,
        returns 1 for the default pool and raises NoActiveWorkerError for
        any other pool.
        """
        # A cancellation point that yields to the scheduler only when it
        # must wait: pmap takes once an element, and whoever takes a member
        # goes on to await a call on it anyway.
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._prune()
            if self._free:
                return self._free.popleft()
            if not self._members:
                return self._empty_fallback()
            await self._takers.park()

    async def put(self, pid: int) -> None:
        """Make member ``pid`` free again; a non-member is ignored."""
        self._put_now(_check_pid(pid))
        await trio.lowlevel.checkpoint()

    async def push(self, pid: int) -> None:
        """Add ``pid`` as a member, free."""
        self._push_now(_check_pid(pid))
        await trio.lowlevel.checkpoint()

    async def wait(self) -> None:
        """Wait until a member is free, without taking it."""
        await trio.lowlevel.checkpoint()
        while not self._isready_now():
            if not self._members:
                self._empty_fallback()
            await self._changed.park()

    async def isready(self) -> bool:
        """Whether ``take`` would return at once."""
        await trio.lowlevel.checkpoint()
        return self._isready_now()

    async def length(self) -> int:
        """How many live members, busy and free."""
        await trio.lowlevel.checkpoint()
        return self._length_now()

    async def workers(self) -> list[int]:
        """The live members, sorted; ``[1]`` for an empty default pool."""
        await trio.lowlevel.checkpoint()
        return self._workers_now()

    async def nworkers(self) -> int:
        """The number of live members; 1 for an empty default pool."""
        return len(await self.workers())

    # What a pool-targeted call sends as the function (CachingPool caches).

    def _route(self, pid: int, f: Callable[..., Any]) -> tuple[Any, bool]:
        """The function object to send to ``pid``, and whether it is a
        first shipment that must be forgotten if the call fails."""
        return f, False

    def _forget(self, pid: int, f: Callable[..., Any]) -> None:
        """A first shipment of ``f`` to ``pid`` may not have arrived."""


def _check_pid(pid: object) -> int:
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise TypeError(f"a pool member must be an int pid, got {pid!r}")
    return pid


# ------------------------------------------------------------ CachingPool


class CachingPool(WorkerPool):
    """A WorkerPool that sends each function to each worker only once.

    Functions are keyed by object identity: two distinct closures are
    cached separately even when they compare equal.  ``clear(pool)`` frees
    the cached copies on the workers; so does collecting the pool.  A
    CachingPool cannot be sent to another process.
    """

    def _setup(self, proc: Process, pids: Iterable[int]) -> None:
        # (pid, id(f)) -> (f, owner of the cached copy).  Holding f keeps
        # its id from being reused by another object while cached.
        self._cache: dict[tuple[int, int], tuple[object, Future]] = {}
        super()._setup(proc, pids)

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            "CachingPool objects are not serialisable: a CachingPool works only "
            "on the process that created it; send a WorkerPool instead"
        )

    def _route(self, pid: int, f: Callable[..., Any]) -> tuple[Any, bool]:
        if pid == self._proc.myid:
            return f, False
        cached = self._cache.get((pid, id(f)))
        if cached is not None:
            return _CacheHit(cached[1].rrid), False

        # The Future names storage on ``pid``; nothing exists there until
        # the shipment is decoded.
        holder = self._proc.adopt(Future, pid, self._proc.group.next_rrid(), MISSING)
        self._cache[(pid, id(f))] = (f, holder)
        return _Shipment(holder.rrid, f), True

    def _forget(self, pid: int, f: Callable[..., Any]) -> None:
        entry = self._cache.pop((pid, id(f)), None)
        if entry is not None:
            self._proc.forget_holder(entry[1])

    def _dropped(self, pid: int) -> None:
        for key in [k for k in self._cache if k[0] == pid]:
            self._proc.forget_holder(self._cache.pop(key)[1])

    def clear(self) -> CachingPool:
        """Free every cached function on the workers; returns the pool."""
        entries, self._cache = self._cache, {}
        for _, holder in entries.values():
            self._proc.forget_holder(holder)
        return self

    def cached(self) -> list[tuple[int, object]]:
        """``(pid, function)`` for every cached copy, for inspection."""
        return [(pid, f) for (pid, _), (f, _) in self._cache.items()]


def clear(pool: Any) -> Any:
    """Julia's ``clear!(pool)``: free a CachingPool's cached functions.

    Returns the pool.  For clearing globals on workers see
    ``clear_globals``.
    """
    if not isinstance(pool, CachingPool):
        raise TypeError(
            f"clear: expected a CachingPool, got {type(pool).__name__}; "
            "use clear_globals to clear global names"
        )
    return pool.clear()


class _Shipment:
    """A function on its first trip to a worker; decodes to the function.

    Decoding stores the function in the receiver's reference table under
    ``rrid`` (owned by the sender's Future), so later ``_CacheHit``s find it.
    """

    def __init__(self, rrid: RRID, f: Callable[..., Any]) -> None:
        self.rrid = rrid
        self.f = f

    def __reduce__(self) -> tuple[Any, ...]:
        return (_arrive, (tuple(self.rrid), self.f))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.f(*args, **kwargs)


class _CacheHit:
    """A reference to a function already shipped; decodes to the function."""

    def __init__(self, rrid: RRID) -> None:
        self.rrid = rrid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_resolve, (tuple(self.rrid),))


def _arrive(rrid: tuple[int, int], f: Callable[..., Any]) -> Callable[..., Any]:
    """Unpickling a _Shipment, on the worker: keep ``f`` and return it."""
    entry = current_process().refs.get_or_create(RRID(*rrid), Slot)
    if isinstance(entry.storage, Slot) and not entry.storage.is_set:
        entry.storage.set(f)
    return f


def _resolve(rrid: tuple[int, int]) -> Callable[..., Any]:
    """Unpickling a _CacheHit, on the worker: the stored function."""
    proc = current_process()
    entry = proc.refs.get(RRID(*rrid))
    if entry is not None and isinstance(entry.storage, Slot) and entry.storage.is_set:
        f = entry.storage.peek()
        assert callable(f)
        return f
    return _MissingCached(tuple(rrid), proc.myid)


class _MissingCached:
    """Stands in for a cached function that is not on this worker."""

    def __init__(self, rrid: tuple[int, ...], pid: int) -> None:
        self.rrid = rrid
        self.pid = pid

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise DistributedError(
            f"the function cached as {self.rrid} is not on process {self.pid}: "
            "it was cleared while a call was in flight, or its first shipment "
            "failed; call clear(pool) and retry"
        )


# ------------------------------------------------------------ proxies


class _PoolFailure:
    """A pool operation's own error, carried back to a proxy unwrapped."""

    def __init__(self, error: DistributedError) -> None:
        self.error = error


class PoolProxy:
    """A pool seen from a process other than its owner.

    Every operation is carried out on the owner's pool with
    ``remotecall_fetch``; errors of the pool itself (NoActiveWorkerError)
    are raised as they are, not wrapped.
    """

    def __init__(self, owner: int, key: int | str) -> None:
        self.owner = owner
        self.key = key

    def __repr__(self) -> str:
        return f"PoolProxy(owner={self.owner}, key={self.key!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_pool, (self.owner, self.key))

    def __len__(self) -> int:
        raise TypeError(
            "len() of a pool owned by another process would need a remote "
            "call; use 'await pool.length()'"
        )

    async def _op(self, op: str, *args: Any) -> Any:
        proc = current_process()
        # A take cancelled after its request went out may still be granted
        # on the owner: the member that then arrives goes straight back,
        # or the pool would lose it for good.
        orphan = self._put_back if op == "take" else None
        answer = await proc.remotecall_fetch(
            _pool_op, self.owner, (self.key, op, args), {}, on_orphan=orphan
        )
        if isinstance(answer, _PoolFailure):
            raise answer.error
        return answer

    async def _put_back(self, answer: object) -> None:
        if isinstance(answer, int):
            log.debug("returning worker %d, taken for a cancelled caller", answer)
            await _give_back(self, answer)

    async def take(self) -> int:
        """Remove and return a free member, on the owner.

        Cancel-safe: a member the owner grants after the caller was
        cancelled is put back, never lost.
        """
        pid: int = await self._op("take")
        return pid

    async def put(self, pid: int) -> None:
        await self._op("put", _check_pid(pid))

    async def push(self, pid: int) -> None:
        await self._op("push", _check_pid(pid))

    async def wait(self) -> None:
        await self._op("wait")

    async def isready(self) -> bool:
        return bool(await self._op("isready"))

    async def length(self) -> int:
        n: int = await self._op("length")
        return n

    async def workers(self) -> list[int]:
        pids: list[int] = await self._op("workers")
        return pids

    async def nworkers(self) -> int:
        n: int = await self._op("nworkers")
        return n

    def _route(self, pid: int, f: Callable[..., Any]) -> tuple[Any, bool]:
        return f, False

    def _forget(self, pid: int, f: Callable[..., Any]) -> None:
        pass


_PROXY_OPS: Final = frozenset(
    {"take", "put", "push", "wait", "isready", "length", "workers", "nworkers"}
)


def _lookup(proc: Process, key: int | str) -> WorkerPoolAPI:
    if key == DEFAULT_KEY:
        return default_worker_pool()
    pool = _state(proc).pools.get(key) if isinstance(key, int) else None
    if pool is None:
        raise ReferenceNotFoundError(
            f"worker pool {key!r} no longer exists on process {proc.myid}; "
            "keep a reference to a pool on its owner while others use it"
        )
    return pool


async def _pool_op(key: int | str, op: str, args: tuple[Any, ...]) -> Any:
    """Run on a pool's owner: one operation for a proxy."""
    if op not in _PROXY_OPS:
        raise ValueError(f"unknown pool operation {op!r}")
    pool = _lookup(current_process(), key)
    try:
        return await getattr(pool, op)(*args)
    except NoActiveWorkerError as exc:
        return _PoolFailure(exc)


def _rebuild_pool(owner: int, key: int | str) -> WorkerPoolAPI:
    """Unpickle a pool: the pool itself on its owner, a proxy elsewhere."""
    proc = current_process()
    if proc.myid == owner:
        try:
            return _lookup(proc, key)
        except ReferenceNotFoundError:
            pass
    return PoolProxy(owner, key)


# ---------------------------------------------------------- default pool


def default_worker_pool() -> WorkerPoolAPI:
    """The pool ``remote(f)`` and pool-less calls use.

    On the master it holds every worker from the moment it joins; dead
    workers are dropped lazily.  On a worker it is a proxy of the master's
    current default pool, unless ``set_default_worker_pool`` was called
    there.
    """
    proc = current_process()
    state = _state(proc)
    if state.default is not None:
        return state.default
    if proc.group.is_master:
        state.default = WorkerPool._create(proc)
        return state.default
    if state.proxy is None:
        state.proxy = PoolProxy(MASTER, DEFAULT_KEY)
    return state.proxy


def set_default_worker_pool(pool: WorkerPoolAPI) -> None:
    """Make ``pool`` (any kind, a CachingPool too) this process's default.

    From then on ``remote(f)`` and ``pmap`` without a pool use it here.
    """
    if not is_pool(pool):
        raise TypeError(f"set_default_worker_pool: {pool!r} is not a worker pool")
    state = _state(current_process())
    state.default = pool
    state.replaced = True


def replaced_default(proc: Process) -> WorkerPoolAPI | None:
    """The default pool if ``set_default_worker_pool`` chose it, else None."""
    state = _states.get(proc)
    if state is None or not state.replaced:
        return None
    return state.default


def worker_joined(proc: Process, pid: int) -> None:
    """Master side of JoinComplete: the new worker joins the default pool."""
    state = _state(proc)
    if state.default is None:
        state.default = WorkerPool._create(proc)
    if isinstance(state.default, WorkerPool):
        state.default._push_now(pid)


def membership_changed(proc: Process) -> None:
    """A process left ``proc``'s view of the cluster (or is on its way out).

    Wakes every take and wait parked on a pool ``proc`` owns, so each
    re-judges liveness: a pool whose last member left raises
    NoActiveWorkerError (the default pool lends process 1) instead of
    waiting for a put that can never come (field report BR-07).
    """
    state = _states.get(proc)
    if state is None:
        return
    for pool in list(state.pools.values()):
        pool._takers.unpark_all()
        pool._changed.unpark_all()


async def push(pool: WorkerPoolAPI, pid: int) -> None:
    """Julia's ``push!(pool, pid)``: add a free member."""
    await pool.push(pid)


def pool_workers(pool: object) -> list[int]:
    """``workers(pool)`` for a pool owned by the caller (no remote call)."""
    if isinstance(pool, WorkerPool):
        return pool._workers_now()
    raise TypeError(
        f"workers(pool) needs a pool owned by this process, got {pool!r}; "
        "use 'await pool.workers()'"
    )


# ------------------------------------------------- pool-targeted calls


async def call_on_pool(
    kind: str,
    f: Callable[..., Any],
    pool: WorkerPoolAPI,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Take a member, make the call ``kind`` on it, give the member back.

    ``kind`` is "fetch", "wait" or "do" (the member is returned when the
    call returns) or "call" (returned when the Future is done).
    """
    if not is_pool(pool):
        raise TypeError(f"pid must be an int or a worker pool, got {pool!r}")
    proc = current_process()
    pid = await pool.take()
    route = getattr(pool, "_route", None)
    fn, fresh = route(pid, f) if route is not None else (f, False)
    forget = getattr(pool, "_forget", None)
    handed_off = False
    try:
        if kind == "fetch":
            return await proc.remotecall_fetch(fn, pid, args, kwargs)
        if kind == "wait":
            return await proc.remotecall_wait(fn, pid, args, kwargs)
        if kind == "do":
            await proc.remote_do(fn, pid, args, kwargs)
            return None
        fut = await proc.remotecall(fn, pid, args, kwargs)
        proc.spawn(_release_when_done, pool, pid, fut)
        handed_off = True
        return fut
    except BaseException:
        # Perhaps the function never reached the worker: ship it again
        # next time rather than trust a copy that may not exist.
        if fresh and forget is not None:
            forget(pid, f)
        raise
    finally:
        if not handed_off:
            await _give_back(pool, pid)


async def _release_when_done(pool: WorkerPoolAPI, pid: int, fut: Future) -> None:
    try:
        await current_process().wait_future(fut)
    except Exception:
        pass  # the caller sees the outcome through the Future
    finally:
        await _give_back(pool, pid)


async def _give_back(pool: WorkerPoolAPI, pid: int) -> None:
    """Return ``pid`` even when the caller is being cancelled."""
    proc = current_process()
    if isinstance(pool, WorkerPool) and pool._proc is proc:
        # Our own pool: returning is synchronous, so nothing can cancel it
        # (and pmap, which does this once an element, skips two cancel
        # scopes and a trip through the scheduler).
        pool._put_now(pid)
        return
    with trio.CancelScope(shield=True), trio.move_on_after(proc.worker_timeout):
        try:
            await pool.put(pid)
        except DistributedError as exc:
            log.debug("could not return worker %d to %r: %s", pid, pool, exc)


class Remote:
    """What ``remote(f, pool)`` returns: ``await r(*args)`` runs ``f`` on a
    pool member (the default pool when ``pool`` is None, looked up at each
    call) and returns its value."""

    def __init__(self, f: Callable[..., Any], pool: WorkerPoolAPI | None) -> None:
        self.f = f
        self.pool = pool

    def __repr__(self) -> str:
        return f"remote({self.f!r}, pool={self.pool!r})"

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        pool = self.pool if self.pool is not None else default_worker_pool()
        return await call_on_pool("fetch", self.f, pool, args, kwargs)


def remote(f: Callable[..., Any], pool: WorkerPoolAPI | None = None) -> Remote:
    """An async callable running ``remotecall_fetch(f, pool, ...)``."""
    if not callable(f):
        raise TypeError(f"remote: f={f!r} is not callable")
    return Remote(f, pool)
