"""The blocking facade: distref from plain scripts and the REPL.

``from ref import blocking as d`` gives ``ref``'s calls without
``await``.  The first call starts a master cluster whose trio loop runs in a
background thread; every call is carried into that loop and waits for its
answer.  ``d.close()`` stops the workers and the thread; it also runs at
interpreter exit, so a script that forgets it leaves no worker behind
(``d.close(channel)`` closes a channel, as ``ref.close`` does).

Constructors that need the master (``RemoteChannel``, ``Future``,
``WorkerPool``, ``CachingPool``) are functions here that build the object
inside the loop; ``remote(f)`` returns a plain callable; ``timedwait``
polls in the caller's thread.  ``sync()`` has no blocking form: in a
script, collect the Futures ``spawnat`` returns and ``wait`` for them.

Use either this facade or the async API in one program, not both at once.

Callbacks the runtime calls itself (pmap's ``on_error``, ``retry_check``
and ``progress``, a reducer, a function ``everywhere`` runs on process 1)
run inside that loop, so they must not call this facade; ``timedwait``'s
test callback, by contrast, runs in the caller's thread and may.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import trio

from spec.api import RRID, WorkerPoolAPI

from . import _api, _constructs, _interrupt, _pmap, _pools
from ._channel import Channel
from ._constructs import ANY, DistributedTask, splitrange
from ._context import reset_current, set_current
from ._pmap import ExponentialBackOff
from ._process import Process
from ._refs import Future as _Future
from ._refs import RemoteChannel as _RemoteChannel

T = TypeVar("T")


class _Loop:
    """A trio loop in a daemon thread that hosts the master process."""

    def __init__(self, **cluster_options: Any) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._master: Process | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._options = cluster_options
        self._thread = threading.Thread(
            target=self._run, name="distref-blocking", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with _api.open_cluster(**self._options) as cluster:
            self._master = cluster.master
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async def inside() -> T:
            token = set_current(self._master)
            try:
                return await fn(*args, **kwargs)
            finally:
                reset_current(token)

        return trio.from_thread.run(inside, trio_token=self._token)

    def call_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def inside() -> T:
            token = set_current(self._master)
            try:
                return fn(*args, **kwargs)
            finally:
                reset_current(token)

        return trio.from_thread.run_sync(inside, trio_token=self._token)

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            stop = self._stop
            trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join()


_lock = threading.Lock()
_loop: _Loop | None = None


def start(**cluster_options: Any) -> None:
    """Start the background cluster now (with options for ``open_cluster``)."""
    global _loop
    with _lock:
        if _loop is None:
            _loop = _Loop(**cluster_options)


def _get() -> _Loop:
    _refuse_inside_trio()
    start()
    assert _loop is not None
    return _loop


def _refuse_inside_trio() -> None:
    """The blocking facade is for code outside trio; say what to use inside."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return
    raise RuntimeError(
        "ref.blocking was called from inside trio.run, where it would block "
        "the event loop: in async code use the async API instead (for "
        "example `await ref.addprocs(2)` inside `async with ref.open_cluster()`)"
    )


_STOP_CLUSTER: Any = object()


def close(ref: Any = _STOP_CLUSTER) -> None:
    """``close()`` stops every worker and the background loop (safe to call
    twice); ``close(channel)`` is ``ref.close(channel)``."""
    global _loop
    if ref is not _STOP_CLUSTER:
        _get().call(_api.close, ref)
        return
    with _lock:
        loop, _loop = _loop, None
    if loop is not None:
        loop.close()


atexit.register(close)


def myid() -> int:
    return _get().call_sync(_api.myid)


def nprocs() -> int:
    return _get().call_sync(_api.nprocs)


def nworkers(pool: Any = None) -> int:
    return _get().call_sync(_api.nworkers, pool)


def procs(pid: int | None = None) -> list[int]:
    return _get().call_sync(_api.procs, pid)


def workers(pool: Any = None) -> list[int]:
    return _get().call_sync(_api.workers, pool)


def addprocs(n: int, **params: Any) -> list[int]:
    return _get().call(_api.addprocs, n, **params)


def rmprocs(*pids: int, waitfor: float = float("inf")) -> _api.Removal:
    return _get().call(_api.rmprocs, *pids, waitfor=waitfor)


def remotecall(
    f: Callable[..., Any], pid: int, /, *args: Any, **kwargs: Any
) -> _Future:
    return _get().call(_api.remotecall, f, pid, *args, **kwargs)


def remotecall_fetch(
    f: Callable[..., Any], pid: int, /, *args: Any, **kwargs: Any
) -> Any:
    return _get().call(_api.remotecall_fetch, f, pid, *args, **kwargs)


def remotecall_wait(
    f: Callable[..., Any], pid: int, /, *args: Any, **kwargs: Any
) -> _Future:
    return _get().call(_api.remotecall_wait, f, pid, *args, **kwargs)


def remote_do(f: Callable[..., Any], pid: int, /, *args: Any, **kwargs: Any) -> None:
    _get().call(_api.remote_do, f, pid, *args, **kwargs)


def fetch(ref: Any) -> Any:
    return _get().call(_api.fetch, ref)


def wait(ref: Any) -> Any:
    """Wait for a Future, channel or pool; or for a reducer-less
    ``distributed_for`` loop (raising its ExceptionGroup)."""
    if isinstance(ref, DistributedTask):
        return _get().call(ref.wait)
    return _get().call(_api.wait, ref)


def isready(ref: Any) -> bool:
    return _get().call(_api.isready, ref)


def put(ref: Any, value: Any) -> Any:
    return _get().call(_api.put, ref, value)


def Future(pid: int | None = None) -> _Future:
    """A new unset Future stored on ``pid`` (``ref.Future(pid)`` without a loop)."""

    async def make() -> _Future:
        return _Future(pid)

    return _get().call(make)


# ------------------------------------------------------------- channels


def RemoteChannel(
    factory: Callable[[], Channel] | int | None = None, pid: int | None = None
) -> _RemoteChannel:
    """``ref.RemoteChannel(factory, pid)`` (or ``(pid)``) from a script."""
    return _get().call_sync(_RemoteChannel, factory, pid)


def take(ref: Any) -> Any:
    return _get().call(_api.take, ref)


def isopen(ref: Any) -> bool:
    return _get().call(_api.isopen, ref)


def isempty(ref: Any) -> bool:
    return _get().call(_api.isempty, ref)


def getindex(ref: Any, key: Any) -> Any:
    return _get().call(_api.getindex, ref, key)


def channel_from_id(rrid: RRID) -> Channel:
    return _get().call_sync(_api.channel_from_id, rrid)


def live_refs() -> dict[RRID, frozenset[int]]:
    return _get().call_sync(_api.live_refs)


def timedwait(testcb: Callable[[], Any], secs: float, *, pollint: float = 0.1) -> str:
    """Poll ``testcb()`` every ``pollint`` s, in the calling thread, until it
    is true: ``"ok"``, or after ``secs`` seconds ``"timed_out"``.

    Unlike the async ``ref.timedwait`` it runs in the caller's thread, so
    ``testcb`` may call this facade (``lambda: d.isready(fut)``).
    """
    if pollint < 0.001:
        raise ValueError(f"timedwait: pollint={pollint!r} must be >= 1 millisecond")
    if not secs >= 0:
        raise ValueError(f"timedwait: secs={secs!r} must be >= 0")
    deadline = time.monotonic() + secs
    while True:
        if testcb():
            return "ok"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timed_out"
        time.sleep(min(pollint, remaining))


# ---------------------------------------------------------------- pools


def WorkerPool(pids: Iterable[int] = ()) -> _pools.WorkerPool:
    """``ref.WorkerPool(pids)``, owned by the master."""
    return _get().call_sync(_pools.WorkerPool, list(pids))


def CachingPool(pids: Iterable[int] = ()) -> _pools.CachingPool:
    """``ref.CachingPool(pids)``, owned by the master."""
    return _get().call_sync(_pools.CachingPool, list(pids))


def default_worker_pool() -> WorkerPoolAPI:
    return _get().call_sync(_pools.default_worker_pool)


def set_default_worker_pool(pool: WorkerPoolAPI) -> None:
    _get().call_sync(_pools.set_default_worker_pool, pool)


def push(pool: WorkerPoolAPI, pid: int) -> None:
    _get().call(_pools.push, pool, pid)


def clear(pool: Any) -> Any:
    """Julia's ``clear!(pool)`` for a CachingPool; returns the pool."""
    return _get().call_sync(_pools.clear, pool)


class Remote:
    """What ``remote(f, pool)`` returns here: calling it blocks until ``f``
    has run on a pool member and returns its value."""

    def __init__(self, inner: _pools.Remote) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return repr(self.inner)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _get().call(self.inner, *args, **kwargs)


def remote(f: Callable[..., Any], pool: WorkerPoolAPI | None = None) -> Remote:
    return Remote(_pools.remote(f, pool))


def pmap(f: Callable[..., Any], *iterables: Iterable[Any], **options: Any) -> list[Any]:
    """``ref.pmap`` (same keywords); callbacks run inside the loop."""
    return _get().call(_pmap.pmap, f, *iterables, **options)


# ----------------------------------------------------- Julia's macros


def spawnat(pid: Any, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``@spawnat``: start ``f`` on ``pid`` (or ``ANY``); returns its Future."""
    return _get().call(_constructs.spawnat, pid, f, *args, **kwargs)


def fetchfrom(pid: int, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return _get().call(_constructs.fetchfrom, pid, f, *args, **kwargs)


def fetch_any(f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return _get().call(_constructs.fetch_any, f, *args, **kwargs)


def everywhere(
    f: Callable[..., Any],
    /,
    *args: Any,
    procs: int | Iterable[int] | None = None,
    **kwargs: Any,
) -> Any:
    return _get().call(_constructs.everywhere, f, *args, procs=procs, **kwargs)


def define_globals(
    values: Mapping[str, Any],
    procs: int | Iterable[int] | None = None,
    module: str = "__main__",
) -> None:
    _get().call(_constructs.define_globals, values, procs, module)


def clear_globals(
    names: str | Iterable[str],
    pids: int | Iterable[int] | None = None,
    module: str = "__main__",
) -> None:
    _get().call(_constructs.clear_globals, names, pids, module)


def distributed_for(
    body: Callable[[Any], Any],
    iterable: Any,
    reducer: Callable[[Any, Any], Any] | None = None,
) -> Any:
    """``@distributed``: the reduced value, or (without a reducer) the
    running loop, which ``wait(task)`` waits for."""
    return _get().call(_constructs.distributed_for, body, iterable, reducer)


# ---------------------------------------------------------- the rest


def interrupt(*pids: int | Iterable[int]) -> None:
    _get().call(_interrupt.interrupt, *pids)


def cluster_cookie(cookie: str | None = None) -> str:
    return _get().call_sync(_api.cluster_cookie, cookie)


__all__ = [
    "ANY",
    "CachingPool",
    "Channel",
    "ExponentialBackOff",
    "Future",
    "Remote",
    "RemoteChannel",
    "WorkerPool",
    "addprocs",
    "channel_from_id",
    "clear",
    "clear_globals",
    "close",
    "cluster_cookie",
    "default_worker_pool",
    "define_globals",
    "distributed_for",
    "everywhere",
    "fetch",
    "fetch_any",
    "fetchfrom",
    "getindex",
    "interrupt",
    "isempty",
    "isopen",
    "isready",
    "live_refs",
    "myid",
    "nprocs",
    "nworkers",
    "pmap",
    "procs",
    "push",
    "put",
    "remote",
    "remote_do",
    "remotecall",
    "remotecall_fetch",
    "remotecall_wait",
    "rmprocs",
    "set_default_worker_pool",
    "spawnat",
    "splitrange",
    "start",
    "take",
    "timedwait",
    "wait",
    "workers",
]
