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
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from spec.api import RRID, FutureAlreadySetError, InvalidStateError, RemoteException

from ._context import current_process, peek_current

if TYPE_CHECKING:
    from ._process import Process

#: The pid a message being encoded is addressed to, so references can tell
#: the owner who will hold them.  Unset outside the runtime's own encoding.
sending_to: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "distref_sending_to", default=None
)


class _Missing:
    """The "no value yet" marker; it unpickles as the same singleton."""

    def __repr__(self) -> str:
        return "<missing>"

    def __reduce__(self) -> str:
        return "MISSING"


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


class RemoteRef:
    """What Future and RemoteChannel share: an owner, an identity, tracking.

    Equality and hashing use the RRID alone.  Pickling for another process
    tells the owner (through the sending process) that the receiver now
    holds the reference; unpickling returns the receiving process's one
    local object for the RRID.
    """

    __slots__ = ("__weakref__", "_home", "_where", "rrid")

    _where: int
    rrid: RRID
    _home: weakref.ref[Any] | None

    def belongs_to(self, proc: object) -> bool:
        """Whether this object was made or received by process ``proc``.

        A reference is only meaningful in the cluster that created it; one
        kept past the end of its cluster must not be confused with a new
        cluster's reference that happens to have the same RRID.
        """
        return self._home is None or self._home() is proc

    @property
    def where(self) -> int:
        return self._where

    @property
    def tracked(self) -> bool:
        """Whether the owner must count this holder (False once fetched)."""
        return True

    def _payload(self) -> object:
        return MISSING

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteRef) and (
            type(other) is type(self) and other.rrid == self.rrid
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.rrid))

    def __reduce__(self) -> tuple[Any, ...]:
        target = sending_to.get()
        proc = peek_current()
        kind = type(self)
        if target is None or proc is None:
            # Outside the runtime's own encoding the reference cannot be
            # tracked, so it travels zeroed and is unusable, as upstream.
            return (_rebuild, (kind, 0, RRID(0, 0), MISSING, False))

        if self.tracked and target != self._where:
            proc.note_client(self.rrid, self._where, target, added=True)
        return (_rebuild, (kind, self._where, self.rrid, self._payload(), True))


class Future(RemoteRef):
    """A handle on the result of a remote call, stored on process ``where``.

    Create one with ``remotecall`` or ``Future(pid)``; read it with
    ``fetch``, ``wait`` and ``isready``; set it once with ``put``.
    """

    __slots__ = ("_lock", "_release_deferred", "_value", "_waits")

    _value: object
    _lock: trio.Lock | None
    #: Waits on the owner in flight from this process; while there are any,
    #: dropping this holder is deferred so the owner keeps what they wait on.
    _waits: int
    _release_deferred: bool

    def __new__(cls, pid: int | None = None) -> Future:
        """A new, unset Future whose value will be stored on ``pid``.

        ``pid`` defaults to the calling process.  Nothing is created on the
        owner until the Future is first used there.
        """
        proc = current_process()
        where = proc.myid if pid is None else pid
        return proc.adopt(Future, where, proc.group.next_rrid(), MISSING)

    @classmethod
    def _make(cls, where: int, rrid: RRID, value: object = MISSING) -> Future:
        """Build the object itself; the runtime's constructor."""
        fut = object.__new__(cls)
        fut._where = where
        fut.rrid = rrid
        fut._value = value
        fut._lock = None
        fut._home = None
        fut._waits = 0
        fut._release_deferred = False
        return fut

    @property
    def lock(self) -> trio.Lock:
        """Serialises fetches, so concurrent fetchers all see the value."""
        if self._lock is None:
            self._lock = trio.Lock()
        return self._lock

    @property
    def tracked(self) -> bool:
        return not self.has_value

    def _payload(self) -> object:
        return self._value

    @property
    def has_value(self) -> bool:
        """True once this process has fetched (or put) the value."""
        return self._value is not MISSING

    @property
    def cached(self) -> object:
        return self._value

    def cache(self, value: object) -> None:
        self._value = value

    def __repr__(self) -> str:
        state = "fetched" if self.has_value else "unfetched"
        return f"Future(where={self._where}, rrid={tuple(self.rrid)}, {state})"


ChannelFactory = Callable[[], Any]


class RemoteChannel(RemoteRef):
    """A handle on a channel stored on process ``where``.

    ``RemoteChannel(pid)`` names a channel of capacity 1 on ``pid``;
    ``RemoteChannel(factory, pid)`` one made by calling ``factory()`` on
    ``pid`` (e.g. ``lambda: ref.Channel(10)``).  The channel is created on the
    owner at the first operation, which carries the factory there.
    """

    __slots__ = ("factory",)

    factory: ChannelFactory | None

    def __new__(
        cls, factory: ChannelFactory | int | None = None, pid: int | None = None
    ) -> RemoteChannel:
        if isinstance(factory, int) and not isinstance(factory, bool):
            if pid is not None:
                raise TypeError(
                    f"RemoteChannel({factory!r}, {pid!r}): give a pid once, either "
                    "RemoteChannel(pid) or RemoteChannel(factory, pid)"
                )
            factory, pid = None, factory
        if factory is not None and not callable(factory):
            raise TypeError(
                f"RemoteChannel: factory={factory!r} must be a callable that "
                "returns a Channel"
            )
        proc = current_process()
        where = proc.myid if pid is None else pid
        chan = proc.adopt(RemoteChannel, where, proc.group.next_rrid(), factory)
        return chan

    @classmethod
    def _make(cls, where: int, rrid: RRID, value: object = MISSING) -> RemoteChannel:
        chan = object.__new__(cls)
        chan._where = where
        chan.rrid = rrid
        chan.factory = value if callable(value) else None
        chan._home = None
        return chan

    def _payload(self) -> object:
        return self.factory if self.factory is not None else MISSING

    def __repr__(self) -> str:
        return f"RemoteChannel(where={self._where}, rrid={tuple(self.rrid)})"

    def __aiter__(self) -> AsyncIterator[object]:
        return _iterate_remote(self)


async def _iterate_remote(chan: RemoteChannel) -> AsyncIterator[object]:
    """Take until the channel is closed and empty, wherever it lives."""
    from ._context import current_process as _cp

    proc = _cp()
    while True:
        try:
            yield await proc.channel_op(chan, "take")
        except InvalidStateError:
            return
        except RemoteException as exc:
            if isinstance(exc.exception, InvalidStateError):
                return
            raise


def _rebuild(
    kind: type[RemoteRef], where: int, rrid: RRID, value: object, tracked: bool
) -> RemoteRef:
    """Unpickle a reference: the one local object per RRID on this process."""
    if not tracked:
        if kind is Future:
            return Future._make(where, rrid, value)
        return RemoteChannel._make(where, rrid, value)
    proc: Process = current_process()
    return proc.adopt(kind, where, rrid, value)
