"""The blocking facade: distref from plain scripts and the REPL.

``from ref import blocking as d`` gives the same names as ``ref`` without
``await``.  The first call starts a master cluster whose trio loop runs in a
background thread; every call is carried into that loop and waits for its
answer.  ``d.close()`` stops the workers and the thread; it also runs at
interpreter exit, so a script that forgets it leaves no worker behind.

Use either this facade or the async API in one program, not both at once.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from . import _api
from ._context import reset_current, set_current
from ._process import Process
from ._refs import Future as _Future

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

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        def inside() -> T:
            token = set_current(self._master)
            try:
                return fn(*args)
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
    start()
    assert _loop is not None
    return _loop


def close() -> None:
    """Stop every worker and the background loop; safe to call twice."""
    global _loop
    with _lock:
        loop, _loop = _loop, None
    if loop is not None:
        loop.close()


atexit.register(close)


def myid() -> int:
    return _get().call_sync(_api.myid)


def nprocs() -> int:
    return _get().call_sync(_api.nprocs)


def nworkers() -> int:
    return _get().call_sync(_api.nworkers)


def procs(pid: int | None = None) -> list[int]:
    return _get().call_sync(_api.procs, pid)


def workers() -> list[int]:
    return _get().call_sync(_api.workers)


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
