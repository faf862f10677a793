"""Recording the API-level history of a run, for checking against the model.

``recording(sink)`` makes every call of ``ref``'s public API functions
(``ref.remotecall_fetch``, ``ref.take``, ...) report two records to
``sink``: one when the call starts and one when it returns or raises, with
the calling process's pid, so a checker (``spec.refinement``) can decide
whether the model admits what happened.  Calls made through ``ref``'s
module attributes are seen, on every process of the interpreter (the
simulator runs them all in one); calls on pool objects are seen too.

Off by default, and free when off: nothing in the runtime tests a flag.
``recording`` swaps wrappers into the ``ref`` namespace for the duration of
its block and puts the originals back afterwards, so a name imported with
``from ref import fetch`` before the block is not recorded.

Records are plain JSON data: ``{"kind": "api_call", "call": n, "pid": p,
"api": name, "args": [...], "kwargs": {...}, "nested": bool}``, then
``{"kind": "api_return", "call": n, "value": ...}`` or ``{"kind":
"api_raise", "call": n, "error": class name, "error_pid": pid or null,
"inner": class name or null}``.  References are ``{"ref": "future"|"channel",
"where": w, "rrid": [whence, id]}``, functions ``{"fn": "module.qualname",
"args": [...]}`` (bound ``functools.partial`` arguments included), pools
``{"pool": serial}`` (numbered from 0 in the order the recording first saw
them), infinities and NaN ``{"float": "inf"|"-inf"|"nan"}``; anything else
is its ``repr`` with memory addresses blanked.  So the same run gives the
same records, which the simulator's trace relies on: with a trace on, it
writes them as events (``sim/_trace.py``).

Recordings nest: a block opened inside another adds its sink to the active
ones, so every sink sees the same calls with the same numbers.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import itertools
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from spec.api import NoSuchProcessError, ProcessExitedException, RemoteException
from spec.records import RECORDED_FUNCTIONS, RECORDED_POOL_METHODS

from ._context import peek_current

#: The public functions a recording wraps, and the pool methods it wraps
#: (recorded as "pool.<name>"): the reader in ``spec.records`` owns the
#: lists, so that both sides agree.
RECORDED = RECORDED_FUNCTIONS
POOL_METHODS = RECORDED_POOL_METHODS

Record = dict[str, Any]
Sink = Callable[[Record], None]

#: The recorded call the current task is inside, if any: calls the API
#: makes on its own behalf (pmap taking pool members) are marked nested.
_inside: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "distref_recorded_call", default=None
)

#: A repr's memory address, which differs from run to run.
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


class _Active:
    """The recording in force: its sinks, call numbers and pool serials.

    Pools are numbered in the order first seen, and kept alive until the
    recording ends so that no later object can reuse a numbered one's id.
    """

    def __init__(self) -> None:
        self.sinks: list[Sink] = []
        self.counter = itertools.count()
        self.pools: dict[int, tuple[int, object]] = {}

    def emit(self, record: Record) -> None:
        for sink in list(self.sinks):
            sink(record)

    def pool(self, pool: object) -> int:
        entry = self.pools.setdefault(id(pool), (len(self.pools), pool))
        return entry[0]


_active: _Active | None = None


def encode(value: object) -> Any:
    """``value`` as JSON data (see the module docstring)."""
    from . import _pools
    from ._refs import Future, RemoteChannel

    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, Future | RemoteChannel):
        kind = "future" if isinstance(value, Future) else "channel"
        return {"ref": kind, "where": value.where, "rrid": list(value.rrid)}
    if isinstance(value, _pools.WorkerPool | _pools.PoolProxy):
        serial = _active.pool(value) if _active is not None else id(value)
        return {"pool": serial}
    if isinstance(value, functools.partial):
        return {"fn": _name(value.func), "args": [encode(a) for a in value.args]}
    if callable(value):
        return {"fn": _name(value), "args": []}
    return {"repr": _ADDRESS.sub("0x?", repr(value))}


def _name(fn: object) -> str:
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def encode_error(error: BaseException) -> Record:
    """The fields of an ``api_raise`` record for ``error``."""
    pid: int | None = None
    inner: str | None = None
    if isinstance(error, RemoteException):
        pid, inner = error.pid, type(error.exception).__name__
    elif isinstance(error, ProcessExitedException):
        pid = error.worker_id
    elif isinstance(error, NoSuchProcessError):
        pid = error.pid
    return {"error": type(error).__name__, "error_pid": pid, "inner": inner}


def _wrap(api: str, fn: Callable[..., Any], sink: Sink, counter: Iterator[int]) -> Any:
    def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, Any]:
        call = next(counter)
        proc = peek_current()
        sink(
            {
                "kind": "api_call",
                "call": call,
                "pid": proc.myid if proc is not None else None,
                "api": api,
                "args": [encode(a) for a in args],
                "kwargs": {k: encode(v) for k, v in sorted(kwargs.items())},
                "nested": _inside.get() is not None,
            }
        )
        return call, _inside.set(call)

    def finish(call: int, token: Any, value: object, error: Exception | None) -> None:
        _inside.reset(token)
        if error is not None:
            sink({"kind": "api_raise", "call": call, **encode_error(error)})
        else:
            sink({"kind": "api_return", "call": call, "value": encode(value)})

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def recorded_async(*args: Any, **kwargs: Any) -> Any:
            call, token = start(args, kwargs)
            try:
                value = await fn(*args, **kwargs)
            except Exception as exc:
                finish(call, token, None, exc)
                raise
            finish(call, token, value, None)
            return value

        return recorded_async

    @functools.wraps(fn)
    def recorded(*args: Any, **kwargs: Any) -> Any:
        call, token = start(args, kwargs)
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            finish(call, token, None, exc)
            raise
        finish(call, token, value, None)
        return value

    return recorded


def _constructor(
    kind: type, name: str, sink: Sink, counter: Iterator[int]
) -> Callable[..., Any]:
    """A ``__new__`` for ``kind`` that records the construction."""
    original = kind.__dict__["__new__"].__func__

    def record_new(cls: type, *args: Any, **kwargs: Any) -> Any:
        recorded = _wrap(name, functools.partial(original, cls), sink, counter)
        return recorded(*args, **kwargs)

    return record_new


@contextmanager
def recording(sink: Sink) -> Iterator[None]:
    """Report every public API call made during the block to ``sink``."""
    global _active
    if _active is not None:
        # Already wrapped: wrapping again would make the outer recording
        # see every call as nested inside the inner one's wrapper.
        _active.sinks.append(sink)
        try:
            yield
        finally:
            _active.sinks.remove(sink)
        return
    active = _active = _Active()
    active.sinks.append(sink)
    try:
        with _swapped(active.emit, active.counter):
            yield
    finally:
        _active = None


@contextmanager
def _swapped(sink: Sink, counter: Iterator[int]) -> Iterator[None]:
    """Recording wrappers in place of the API functions, for the block."""
    import ref

    from . import faults
    from ._pools import WorkerPool
    from ._refs import Future, RemoteChannel

    saved: list[tuple[object, str, object]] = []

    def swap(owner: object, name: str, replacement: object) -> None:
        saved.append((owner, name, vars(owner)[name]))
        setattr(owner, name, replacement)

    for name in RECORDED:
        swap(ref, name, _wrap(name, getattr(ref, name), sink, counter))
    swap(faults, "kill", _wrap("kill", faults.kill, sink, counter))
    for name in POOL_METHODS:
        method = WorkerPool.__dict__[name]
        swap(WorkerPool, name, _wrap(f"pool.{name}", method, sink, counter))
    swap(
        WorkerPool, "__init__", _wrap("WorkerPool", WorkerPool.__init__, sink, counter)
    )
    for kind in (Future, RemoteChannel):
        swap(kind, "__new__", _constructor(kind, kind.__name__, sink, counter))
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)
