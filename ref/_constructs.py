"""Julia's macros as functions: spawnat, fetch_any, fetchfrom, everywhere,
clear_globals, distributed_for, and ``sync`` for ``@sync``.

Mirrors Julia's ``macros.jl`` (``@spawnat``, ``@fetch``, ``@fetchfrom``,
``@everywhere``, ``@distributed``, ``splitrange``, ``preduce``, ``pfor``),
``remotecall.jl`` (``clear!``) and Base's ``@sync``/``@async``.

How the macros map:

* ``@spawnat p expr`` is ``await spawnat(p, f, *args)``: Python has no
  expression capture, so the work is a function and its arguments.
  ``spawnat(ANY, ...)``, ``fetch_any`` and ``distributed_for`` without a
  reducer draw targets from one round-robin counter per process over
  ``workers()``.
* ``@sync`` is ``async with sync() as block``.  It waits for every
  ``spawnat`` and reducer-less ``distributed_for`` made inside it (they
  find the block through a context variable) and for every task started
  with ``block.start_soon`` (Julia's ``@async``), then raises one
  ExceptionGroup of their errors.  Unlike a bare trio nursery, one failure
  does not cancel the others: Julia's ``@sync`` waits for all.
* ``@everywhere expr`` is ``await everywhere(f, *args)``: a function run on
  every process, master last.  ``define_globals`` is the common use of
  ``@everywhere x = value``: names set in each process's ``__main__``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import trio

from spec.api import RemoteRef

from . import _api
from ._context import current_process

if TYPE_CHECKING:
    from ._process import Process

log = logging.getLogger("ref")


async def _call(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    result = f(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


# ----------------------------------------------------------------- sync


class SyncBlock:
    """An ``async with sync()`` block: what it waits for, and their errors."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.errors: list[Exception] = []

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Julia's ``@async``: run ``fn(*args)`` in a task the block waits
        for; its error joins the block's ExceptionGroup."""
        self._nursery.start_soon(self._collect, fn, args)

    def register(self, waiter: Callable[[], Awaitable[Any]]) -> None:
        """Have the block await ``waiter()`` before it exits."""
        self._nursery.start_soon(self._collect, waiter, ())

    async def _collect(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            self.errors.append(exc)


_current_sync: ContextVar[SyncBlock | None] = ContextVar("distref_sync", default=None)


@asynccontextmanager
async def sync() -> AsyncIterator[SyncBlock]:
    """Julia's ``@sync``: wait for everything started inside the block.

    On exit it waits for every spawnat, reducer-less distributed_for and
    ``block.start_soon`` task begun inside, then, if any failed, raises an
    ExceptionGroup of their exceptions (RemoteExceptions as they are).  An
    error of the block's own body cancels those tasks and propagates.
    """
    async with trio.open_nursery() as nursery:
        block = SyncBlock(nursery)
        token = _current_sync.set(block)
        try:
            yield block
        finally:
            _current_sync.reset(token)
    if block.errors:
        raise ExceptionGroup(
            f"{len(block.errors)} operations in a sync() block failed", block.errors
        )


def _enclosing_sync() -> SyncBlock | None:
    return _current_sync.get()


# ------------------------------------------------------- round robin


class _AnyTarget:
    """The ``spawnat`` target meaning "the next worker in turn"."""

    def __repr__(self) -> str:
        return "ANY"

    def __reduce__(self) -> str:
        return "ANY"


ANY: Final = _AnyTarget()


@dataclass
class _Counter:
    value: int = 0


_counters: weakref.WeakKeyDictionary[Process, _Counter] = weakref.WeakKeyDictionary()


def next_target() -> int:
    """The k-th call returns ``workers()[k % nworkers()]`` (1 with no workers)."""
    proc = current_process()
    counter = _counters.setdefault(proc, _Counter())
    pids = proc.group.workers()
    k = counter.value
    counter.value += 1
    return pids[k % len(pids)]


async def spawnat(
    pid: Any, f: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> RemoteRef:
    """Julia's ``@spawnat``: start ``f(*args, **kwargs)`` on ``pid`` (or on
    the next worker in turn for ``ANY``) and return its Future at once.

    Inside ``sync()`` the block waits for the Future.
    """
    target = next_target() if pid is ANY else pid
    fut = await _api.remotecall(f, target, *args, **kwargs)
    block = _enclosing_sync()
    if block is not None:
        block.register(functools.partial(_api.wait, fut))
    return fut


async def fetch_any(f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Julia's ``@fetch``: run ``f`` on the next worker in turn, return its value."""
    return await _api.remotecall_fetch(f, next_target(), *args, **kwargs)


async def fetchfrom(
    pid: int, f: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Any:
    """Julia's ``@fetchfrom``: run ``f`` on ``pid`` and return its value."""
    return await _api.remotecall_fetch(f, pid, *args, **kwargs)


# --------------------------------------------------------- everywhere


async def everywhere(
    f: Callable[..., Any],
    /,
    *args: Any,
    procs: int | Iterable[int] | None = None,
    **kwargs: Any,
) -> Any:
    """Julia's ``@everywhere``: run ``f(*args, **kwargs)`` on processes.

    ``procs`` defaults to ``procs()`` (the caller included).  Given a
    collection, remote runs start first, concurrently; the caller's own
    runs (one per occurrence of its pid) follow, locally; returns None
    after all finished, or raises an ExceptionGroup of RemoteExceptions
    (remote runs) and raw exceptions (local runs).  Given one pid, returns
    ``f``'s value and raises RemoteException, even for the caller's pid.
    """
    if isinstance(procs, int) and not isinstance(procs, bool):
        return await _api.remotecall_fetch(f, procs, *args, **kwargs)

    proc = current_process()
    targets = proc.group.procs() if procs is None else list(_pids(procs))
    here = sum(1 for pid in targets if pid == proc.myid)
    errors: list[Exception] = []

    async def settle(fut: Any) -> None:
        try:
            await _api.wait(fut)
        except Exception as exc:
            errors.append(exc)

    async def locally() -> None:
        try:
            await _call(f, *args, **kwargs)
        except Exception as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        # Every remote call is on its way before the local runs start.
        for pid in targets:
            if pid == proc.myid:
                continue
            try:
                fut = await _api.remotecall(f, pid, *args, **kwargs)
            except Exception as exc:
                errors.append(exc)
            else:
                nursery.start_soon(settle, fut)
        for _ in range(here):
            nursery.start_soon(locally)

    if errors:
        raise ExceptionGroup(
            f"everywhere: {len(errors)} of {len(targets)} runs failed", errors
        )
    return None


def _pids(procs: Any) -> Iterable[int]:
    if isinstance(procs, bool | str | bytes) or not isinstance(procs, Iterable):
        raise TypeError(f"procs={procs!r} must be a pid or a collection of pids")
    return procs


def _module(name: str) -> Any:
    # Under the simulator, sys.modules["__main__"] is the calling simulated
    # process's own (sim/_mains.py).
    return sys.modules.get(name) or importlib.import_module(name)


def _set_globals(values: Mapping[str, Any], module: str) -> None:
    target = _module(module)
    for name, value in values.items():
        setattr(target, name, value)


async def define_globals(
    values: Mapping[str, Any],
    procs: int | Iterable[int] | None = None,
    module: str = "__main__",
) -> None:
    """``@everywhere name = value``: bind each name in ``module`` (default
    ``__main__``) on every process of ``procs`` (default ``procs()``).

    Only processes present now get the names; add them to later workers by
    calling this again with those pids.
    """
    for name in values:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"define_globals: {name!r} is not a valid global name")
    await everywhere(_set_globals, dict(values), module, procs=procs)


def _clear_names(names: list[str], module: str) -> None:
    target = _module(module)
    for name in names:
        if hasattr(target, name):
            setattr(target, name, None)


async def clear_globals(
    names: str | Iterable[str],
    pids: int | Iterable[int] | None = None,
    module: str = "__main__",
) -> None:
    """Julia's ``clear!(syms, pids)``: rebind each of ``names`` that exists
    in ``module`` to None on each of ``pids`` (default ``workers()``).

    Names that are not defined are skipped.  All targets run concurrently;
    failures are raised together as an ExceptionGroup of RemoteExceptions.
    """
    listed = [names] if isinstance(names, str) else list(names)
    if pids is None:
        targets = current_process().group.workers()
    elif isinstance(pids, int):
        targets = [pids]
    else:
        targets = list(pids)
    errors: list[Exception] = []

    async def clear_on(pid: int) -> None:
        try:
            await _api.remotecall_fetch(_clear_names, pid, listed, module)
        except Exception as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for pid in targets:
            nursery.start_soon(clear_on, pid)
    if errors:
        raise ExceptionGroup(
            f"clear_globals: {len(errors)} of {len(targets)} processes failed",
            errors,
        )


# --------------------------------------------------- distributed_for


def splitrange(lo: int, hi: int, np: int) -> list[range]:
    """Split ``lo..hi`` (inclusive) into ``min(n, np)`` contiguous ranges.

    The first ``n % np`` ranges hold one element more than the others, so
    any two sizes differ by at most one; an empty span gives no ranges.
    """
    if not isinstance(np, int) or np < 1:
        raise ValueError(f"splitrange: np={np!r} must be a positive int")
    n = hi - lo + 1
    if n <= 0:
        return []

    each, extras = divmod(n, np)
    chunks = []
    start = lo
    for i in range(np if each > 0 else extras):
        size = each + 1 if i < extras else each
        chunks.append(range(start, start + size))
        start += size
    return chunks


def _as_sequence(iterable: Any) -> Any:
    """The loop's values, which must support len() and integer indexing."""
    indexable = hasattr(iterable, "__len__") and hasattr(iterable, "__getitem__")
    if indexable and not isinstance(iterable, Mapping):
        return iterable
    raise TypeError(
        f"distributed_for: cannot split {type(iterable).__name__!r} into chunks; "
        "give a range, list or tuple (e.g. list(iterable))"
    )


def _chunk(seq: Any, span: range) -> Any:
    if isinstance(seq, range):
        return seq[span.start : span.stop]
    return [seq[i] for i in span]


async def run_chunk(
    body: Callable[[Any], Any],
    items: Iterable[Any],
    reducer: Callable[[Any, Any], Any] | None = None,
) -> Any:
    """On a worker: the body for each item, folded with ``reducer`` (the
    first value seeds it; without a reducer the values are dropped)."""
    values = iter(items)
    if reducer is None:
        for item in values:
            await _call(body, item)
        return None

    acc = await _call(body, next(values))
    for item in values:
        acc = await _call(reducer, acc, await _call(body, item))
    return acc


class DistributedTask:
    """What reducer-less ``distributed_for`` returns: the running loop.

    ``await task.wait()`` waits for every chunk and raises an ExceptionGroup
    of the failed chunks' errors.  Errors nobody retrieved are logged when
    the handle is collected.
    """

    def __init__(self, nchunks: int) -> None:
        self.nchunks = nchunks
        self.errors: list[Exception] = []
        self._finished = trio.Event()
        self._retrieved = False

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"DistributedTask({self.nchunks} chunks, {state})"

    async def wait(self) -> None:
        await self._finished.wait()
        self._retrieved = True
        if self.errors:
            raise ExceptionGroup(
                f"distributed_for: {len(self.errors)} of {self.nchunks} chunks failed",
                list(self.errors),
            )

    async def _run(
        self, calls: list[tuple[int, Any]], body: Callable[..., Any]
    ) -> None:
        try:
            futures = []
            for pid, items in calls:
                try:
                    futures.append(await _api.remotecall(run_chunk, pid, body, items))
                except Exception as exc:
                    self.errors.append(exc)
            for fut in futures:
                try:
                    await _api.wait(fut)
                except Exception as exc:
                    self.errors.append(exc)
        finally:
            self._finished.set()

    def __del__(self) -> None:
        if self.errors and not self._retrieved:
            log.error(
                "distributed_for: %d chunks failed and nobody waited for the loop: %r",
                len(self.errors),
                self.errors,
            )


async def distributed_for(
    body: Callable[[Any], Any],
    iterable: Any,
    reducer: Callable[[Any, Any], Any] | None = None,
) -> Any:
    """Julia's ``@distributed [reducer] for x in iterable; body(x); end``.

    The values are split with ``splitrange`` over ``workers()``.  With a
    reducer, chunk i runs on ``workers()[i]``, is folded there, and the
    chunk results are folded here in chunk order; the value is returned.
    Without one, the chunks are sent round-robin in the background and a
    ``DistributedTask`` is returned at once (an enclosing ``sync()`` waits
    for it).
    """
    seq = _as_sequence(iterable)
    proc = current_process()
    pids = proc.group.workers()
    spans = splitrange(0, len(seq) - 1, len(pids))
    if reducer is not None:
        return await _reduce_chunks(body, reducer, seq, spans, pids)

    # Targets come from the shared round-robin counter now, in order, so
    # the choice does not depend on when the background task runs.
    calls = [(next_target(), _chunk(seq, span)) for span in spans]
    task = DistributedTask(len(calls))
    proc.spawn(task._run, calls, body)
    block = _enclosing_sync()
    if block is not None:
        block.register(task.wait)
    return task


async def _reduce_chunks(
    body: Callable[[Any], Any],
    reducer: Callable[[Any, Any], Any],
    seq: Any,
    spans: list[range],
    pids: list[int],
) -> Any:
    if not spans:
        raise ValueError(
            "distributed_for: cannot reduce an empty range: there is no first "
            "value to start from"
        )
    results: list[Any] = [None] * len(spans)
    errors: dict[int, Exception] = {}

    async def chunk(i: int) -> None:
        try:
            results[i] = await _api.remotecall_fetch(
                run_chunk, pids[i], body, _chunk(seq, spans[i]), reducer
            )
        except Exception as exc:
            errors[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(len(spans)):
            nursery.start_soon(chunk, i)
    if errors:
        raise errors[min(errors)]

    acc = results[0]
    for value in results[1:]:
        acc = await _call(reducer, acc, value)
    return acc
