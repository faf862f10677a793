"""The functions model-based tests send to workers.

Each is the runtime counterpart of one ``spec.model`` function (``Const``,
``Fail``, ``MyId``, ``TakeFrom``, ``PutInto``, ``Sleep``, and the mapped
``Plus``, ``FailOn``, ``MapMyId``, and the pmap handler ``on_error=Const``),
so the model knows what it does.  They
live in their own small module because workers import it by name to
unpickle them, and should not pull in Hypothesis or the model to do so.

``stash``/``unstash`` let a worker hold on to a reference, so tests can
check the owner's client set against who holds what.
"""

from __future__ import annotations

from typing import Any

import trio

import ref

#: References workers keep for the test, by (pid, the test's name for them):
#: keyed by pid too, since simulated processes share one interpreter.
_STASH: dict[tuple[int, str], Any] = {}


def const(value: Any) -> Any:
    return value


def fail() -> None:
    raise ValueError("model_fns.fail")


def my_id() -> int:
    return ref.myid()


async def take_from(chan: Any) -> Any:
    return await ref.take(chan)


async def put_into(chan: Any, value: Any) -> None:
    await ref.put(chan, value)


async def sleep_forever() -> None:
    await trio.sleep_forever()


def plus(k: int, x: int) -> int:
    return x + k


def fail_on(bad: int, x: int) -> int:
    if x == bad:
        raise ValueError(f"model_fns.fail_on({bad})")
    return x


def map_my_id(x: int) -> int:
    return ref.myid()


def const_on_error(value: Any, error: Exception) -> Any:
    """A pmap ``on_error`` handler (bound with ``functools.partial``)."""
    return value


def stash(name: str, reference: Any) -> None:
    """Keep ``reference`` on this process until ``unstash(name)``."""
    _STASH[ref.myid(), name] = reference


def unstash(name: str) -> None:
    """Let go of the reference kept as ``name`` (the GC tells its owner)."""
    _STASH.pop((ref.myid(), name), None)


def live_refs() -> dict[Any, frozenset[int]]:
    return ref.live_refs()
