"""A local channel with Julia's semantics: the storage behind RemoteChannel.

``Channel(capacity)`` is a FIFO queue for tasks of one process:

* ``capacity`` 0 is unbuffered: ``put`` waits until a ``take`` has the item;
  a positive int bounds the buffer; ``math.inf`` makes it unbounded;
* ``put`` waits while the channel is full and raises ``InvalidStateError``
  once it is closed; ``take`` waits while it is empty and raises
  ``InvalidStateError`` once it is closed and empty;
* ``fetch`` returns the head without removing it; ``isready`` says whether a
  ``take`` would not wait; ``isempty`` whether nothing is buffered;
* ``close`` wakes every waiter; items already buffered can still be taken.

``async for item in channel`` takes until the channel is closed and empty.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator

import trio

from spec.api import InvalidStateError

_CLOSED_MESSAGE = "Channel is closed."


class Channel:
    """A FIFO channel of Python objects for the tasks of one process."""

    def __init__(self, capacity: float = 1) -> None:
        if capacity != math.inf and (
            not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0
        ):
            raise ValueError(
                f"Channel capacity={capacity!r} must be an int >= 0 or math.inf"
            )
        self.capacity = capacity
        self._items: deque[object] = deque()
        self._open = True
        self._changed = trio.lowlevel.ParkingLot()
        self._taken = 0
        self._put_count = 0

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"Channel(capacity={self.capacity}, {len(self._items)} items, {state})"

    def _wake(self) -> None:
        self._changed.unpark_all()

    def _full(self) -> bool:
        limit = max(self.capacity, 1)
        return len(self._items) >= limit

    async def put(self, value: object) -> object:
        """Append ``value``, waiting while full; returns ``value``."""
        while self._open and self._full():
            await self._changed.park()
        if not self._open:
            raise InvalidStateError(_CLOSED_MESSAGE, "closed")

        self._items.append(value)
        self._put_count += 1
        ticket = self._put_count
        self._wake()

        # Unbuffered: the put completes only when a take has the item.
        if self.capacity == 0:
            while self._taken < ticket and self._open:
                await self._changed.park()
            if self._taken < ticket:
                raise InvalidStateError(_CLOSED_MESSAGE, "closed")
        await trio.lowlevel.checkpoint()
        return value

    async def take(self) -> object:
        """Remove and return the head, waiting while empty."""
        while not self._items:
            if not self._open:
                raise InvalidStateError(_CLOSED_MESSAGE, "closed")
            await self._changed.park()

        value = self._items.popleft()
        self._taken += 1
        self._wake()
        await trio.lowlevel.checkpoint()
        return value

    async def fetch(self) -> object:
        """Return the head without removing it, waiting while empty."""
        while not self._items:
            if not self._open:
                raise InvalidStateError(_CLOSED_MESSAGE, "closed")
            await self._changed.park()
        return self._items[0]

    async def wait(self) -> None:
        """Wait until an item is available (raises if closed and empty)."""
        await self.fetch()

    def isready(self) -> bool:
        """True when a take would not wait."""
        return bool(self._items)

    def isempty(self) -> bool:
        return not self._items

    def isopen(self) -> bool:
        return self._open

    def close(self) -> None:
        """Refuse further puts; wake every waiter."""
        self._open = False
        self._wake()

    def __len__(self) -> int:
        return len(self._items)

    def __aiter__(self) -> AsyncIterator[object]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[object]:
        while True:
            try:
                yield await self.take()
            except InvalidStateError:
                return
