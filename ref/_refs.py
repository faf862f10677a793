"""Remote references: the ``Future`` handle and the owner's write-once slot.

A ``Future`` names a value stored on process ``where`` under the RRID
``rrid``.  The value lives in a ``Slot`` in the owner's ``RefTable``; holders
elsewhere fetch it with a remote call and then cache it, so a later fetch
sends nothing.

Identity: one live local object per RRID on each process (a weak table), so
two handles received for the same reference are the same object, and
equality and hashing use the RRID alone.

Reference counting (julia-semantics.md section c): pickling an unfetched
Future for another process queues "add client" for the owner; fetching, or
the local object being garbage-collected unfetched, queues "del client".
The owner frees the slot when no process holds the reference any more.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Final

import trio

from spec.api import RRID, FutureAlreadySetError

from ._context import current_process, peek_current

if TYPE_CHECKING:
    from ._process import Process

#: The pid a message being encoded is addressed to, so references can tell
#: the owner who will hold them.  Unset outside the runtime's own encoding.
sending_to: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "distref_sending_to", default=None
)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()


class Slot:
    """Write-once storage for one value, with waiting.

    ``fail`` stores an exception that ``wait`` raises (a process the value
    depended on has exited); ``set`` stores a value, which may itself be a
    ``RemoteException`` to be raised by whoever reads it at the API level.
    """

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: object = MISSING
        self._error: BaseException | None = None

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, value: object) -> None:
        if self._event.is_set():
            raise FutureAlreadySetError("Future can be set only once")
        self._value = value
        self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    def peek(self) -> object:
        """The value if set (``MISSING`` otherwise); raises a stored failure."""
        if self._error is not None:
            raise self._error
        return self._value

    async def wait(self) -> object:
        await self._event.wait()
        return self.peek()


class Future:
    """A handle on the result of a remote call, stored on process ``where``.

    Create one with ``remotecall`` or ``Future(pid)``; read it with
    ``fetch``, ``wait`` and ``isready``; set it once with ``put``.
    """

    __slots__ = ("__weakref__", "_value", "_where", "rrid")

    _where: int
    rrid: RRID
    _value: object

    def __new__(cls, pid: int | None = None) -> Future:
        """A new, unset Future whose value will be stored on ``pid``.

        ``pid`` defaults to the calling process.  Nothing is created on the
        owner until the Future is first used there.
        """
        proc = current_process()
        where = proc.myid if pid is None else pid
        return proc.adopt_future(where, proc.group.next_rrid(), MISSING)

    @classmethod
    def _make(cls, where: int, rrid: RRID, value: object = MISSING) -> Future:
        """Build the object itself; the runtime's constructor."""
        fut = object.__new__(cls)
        fut._where = where
        fut.rrid = rrid
        fut._value = value
        return fut

    @property
    def where(self) -> int:
        return self._where

    @property
    def has_value(self) -> bool:
        """True once this process has fetched (or put) the value."""
        return self._value is not MISSING

    @property
    def cached(self) -> object:
        return self._value

    def cache(self, value: object) -> None:
        self._value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Future) and other.rrid == self.rrid

    def __hash__(self) -> int:
        return hash(("Future", self.rrid))

    def __repr__(self) -> str:
        state = "fetched" if self.has_value else "unfetched"
        return f"Future(where={self._where}, rrid={tuple(self.rrid)}, {state})"

    def __reduce__(self) -> tuple[Any, ...]:
        target = sending_to.get()
        proc = peek_current()
        if target is None or proc is None:
            # Outside the runtime's own encoding the reference cannot be
            # tracked, so it travels zeroed and is unusable, as upstream.
            return (_rebuild_future, (0, RRID(0, 0), MISSING, False))

        if not self.has_value and target != self._where:
            proc.note_client(self.rrid, self._where, target, added=True)
        return (_rebuild_future, (self._where, self.rrid, self._value, True))


def _rebuild_future(where: int, rrid: RRID, value: object, tracked: bool) -> Future:
    """Unpickle a Future: the one local object per RRID on this process."""
    if not tracked:
        return Future._make(where, rrid, value)
    proc: Process = current_process()
    return proc.adopt_future(where, rrid, value)
