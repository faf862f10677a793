"""Deliberate mistakes in the runtime, for proving the model-based tests bite.

Each mistake is a small monkeypatch of ``ref`` that breaks one promise:

* ``future_second_put``: a Future accepts a second put (the write-once
  check is gone on the holder and on the owner);
* ``channel_reorders``: a channel hands out its newest item first;
* ``clients_forget_holder``: an owner ignores "add client" notices, so a
  holder the reference was sent to is forgotten;
* ``pool_hands_out_removed``: a pool never drops members that left;
* ``pending_call_unresolved``: a call waiting on a worker that dies is
  never failed;
* ``unbuffered_put_returns_early``: a put into an unbuffered channel
  returns as soon as its item is in, without waiting for a take.

``apply(name)`` patches the current process and returns an undo function.
Workers are separate processes, so the test driver also runs ``apply`` on
every worker it starts (a remote call); module-level so workers can import
it by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ref._channel import Channel
from ref._pools import WorkerPool
from ref._process import Process
from ref._refs import MISSING, Slot
from ref.protocol.refs import RefTable

Undo = Callable[[], None]


def _patch(owner: type, name: str, replacement: Any) -> Undo:
    original = owner.__dict__[name]
    setattr(owner, name, replacement)

    def undo() -> None:
        setattr(owner, name, original)

    return undo


def _future_second_put() -> list[Undo]:
    original_put = Process.put_future

    def set_again(self: Slot, value: object) -> None:
        self._value = value
        self._event.set()

    async def put_again(self: Process, fut: Any, value: object) -> Any:
        fut._value = MISSING  # forget the holder's own "already set"
        return await original_put(self, fut, value)

    return [_patch(Slot, "set", set_again), _patch(Process, "put_future", put_again)]


def _channel_reorders() -> list[Undo]:
    original_take = Channel.take

    async def take_newest(self: Channel) -> object:
        if len(self._items) > 1:
            self._items.appendleft(self._items.pop())
        return await original_take(self)

    return [_patch(Channel, "take", take_newest)]


def _clients_forget_holder() -> list[Undo]:
    def ignore(self: RefTable[Any], rrid: Any, pid: int, *, added: bool) -> None:
        if not added:
            original_announce(self, rrid, pid, added=added)

    original_announce = RefTable.announce
    undo = [_patch(RefTable, "announce", ignore)]

    def ignore_add(self: RefTable[Any], rrid: Any, pid: int) -> None:
        return None

    undo.append(_patch(RefTable, "add_client", ignore_add))
    return undo


def _pool_hands_out_removed() -> list[Undo]:
    def keep_everyone(self: WorkerPool) -> None:
        return None

    return [_patch(WorkerPool, "_prune", keep_everyone)]


def _pending_call_unresolved() -> list[Undo]:
    def never(self: Slot, error: BaseException) -> None:
        return None

    return [_patch(Slot, "fail", never)]


def _unbuffered_put_returns_early() -> list[Undo]:
    original_put = Channel.put

    async def put_and_go(self: Channel, value: object) -> object:
        if self.capacity != 0:
            return await original_put(self, value)
        # Room for one item, as unbuffered has, but no wait for the take.
        self.capacity = 1
        try:
            return await original_put(self, value)
        finally:
            self.capacity = 0

    return [_patch(Channel, "put", put_and_go)]


MISTAKES: dict[str, Callable[[], list[Undo]]] = {
    "future_second_put": _future_second_put,
    "channel_reorders": _channel_reorders,
    "clients_forget_holder": _clients_forget_holder,
    "pool_hands_out_removed": _pool_hands_out_removed,
    "pending_call_unresolved": _pending_call_unresolved,
    "unbuffered_put_returns_early": _unbuffered_put_returns_early,
}


def apply(name: str) -> Undo:
    """Make mistake ``name`` in this process; returns the undo."""
    undos = MISTAKES[name]()

    def undo() -> None:
        for step in reversed(undos):
            step()

    return undo


def apply_remote(name: str) -> None:
    """``apply`` for a worker, which keeps the mistake until it exits."""
    apply(name)
