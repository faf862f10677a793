"""The owner's table of remote values and who holds references to them.

Julia keeps, on the process that stores a value (the owner), a table from
RRID to the value's storage and its *client set*: the pids that hold a
reference.  The storage is freed when the client set becomes empty.  This
module is that bookkeeping, generic in the storage type so the shell can keep
trio objects in it while the rules stay here, free of I/O.

Rules (julia-semantics.md, section c):

* an entry is created lazily, at first use, with the client set
  ``{whence}`` (the creator of the reference holds it);
* ``add_client``/``del_client`` change the set; an empty set frees the entry;
* a departed process is removed from every client set;
* a "del client" that arrives before the matching "add client" (the two
  travel on different links when a reference is forwarded to a third
  process) leaves a tombstone that cancels that add, so the value is not
  kept alive for a holder that has already let go;
* holder notices (``announce``) may arrive before the first operation has
  made the value (a reference can be passed on before anyone used it): they
  are counted apart, with the same rules, and the value takes those holders
  over when it is made.  Bookkeeping without a value is not a live value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from spec.api import RRID

S = TypeVar("S")


@dataclass
class Entry(Generic[S]):
    """One remote value: its storage and the pids holding a reference."""

    storage: S
    clients: set[int] = field(default_factory=set)
    tombstones: set[int] = field(default_factory=set)


class RefTable(Generic[S]):
    """RRID -> storage and client set, freeing entries nobody references."""

    def __init__(self) -> None:
        self._entries: dict[RRID, Entry[S]] = {}
        # Holders announced for values not made yet (storage always None).
        self._early: dict[RRID, Entry[None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, rrid: object) -> bool:
        return rrid in self._entries

    def get(self, rrid: RRID) -> Entry[S] | None:
        return self._entries.get(rrid)

    def get_or_create(self, rrid: RRID, make: Callable[[], S]) -> Entry[S]:
        """The entry for ``rrid``, created with clients ``{whence}`` if absent."""
        entry = self._entries.get(rrid)
        if entry is None:
            storage = make()
            early = self._early.pop(rrid, None)
            if early is None:
                entry = Entry(storage, {rrid.whence})
            else:
                entry = Entry(storage, early.clients, early.tombstones)
            self._entries[rrid] = entry
        return entry

    def announce(self, rrid: RRID, pid: int, *, added: bool) -> None:
        """A holder notice: ``pid`` gained (or dropped) a reference to ``rrid``.

        Like ``add_client``/``del_client`` for a value that exists; for one
        not made yet the holders are counted apart (from ``{whence}``) and
        handed to the value when ``get_or_create`` makes it.
        """
        if rrid in self._entries:
            if added:
                self.add_client(rrid, pid)
            else:
                self.del_client(rrid, pid)
            return
        early = self._early.get(rrid)
        if early is None:
            early = self._early[rrid] = Entry(None, {rrid.whence})
        if added:
            _add(early, pid)
        elif _drop(early, pid):
            del self._early[rrid]

    def add_client(self, rrid: RRID, pid: int) -> None:
        """``pid`` now holds a reference; ignored if the value is gone."""
        entry = self._entries.get(rrid)
        if entry is None:
            return
        _add(entry, pid)

    def del_client(self, rrid: RRID, pid: int) -> bool:
        """``pid`` dropped its reference; returns True if that freed the value."""
        entry = self._entries.get(rrid)
        if entry is None or not _drop(entry, pid):
            return False
        del self._entries[rrid]
        return True

    def remove_pid(self, pid: int) -> list[RRID]:
        """Drop a departed process from every client set; returns freed RRIDs."""
        for rrid, early in list(self._early.items()):
            early.tombstones.discard(pid)
            early.clients.discard(pid)
            if not early.clients:
                del self._early[rrid]
        freed = []
        for rrid, entry in list(self._entries.items()):
            entry.tombstones.discard(pid)
            if pid in entry.clients:
                entry.clients.discard(pid)
                if not entry.clients:
                    del self._entries[rrid]
                    freed.append(rrid)
        return freed

    def ids(self) -> list[RRID]:
        """The RRIDs of every live value, sorted."""
        return sorted(self._entries)

    def snapshot(self) -> dict[RRID, frozenset[int]]:
        """Every live value's RRID and client set, sorted by RRID."""
        return {rrid: frozenset(self._entries[rrid].clients) for rrid in self.ids()}

    def clients(self, rrid: RRID) -> frozenset[int]:
        entry = self._entries.get(rrid)
        return frozenset(entry.clients) if entry else frozenset()


def _add(entry: Entry[Any], pid: int) -> None:
    """Count ``pid`` as a holder, unless its drop arrived first."""
    if pid in entry.tombstones:
        entry.tombstones.discard(pid)
    else:
        entry.clients.add(pid)


def _drop(entry: Entry[Any], pid: int) -> bool:
    """Uncount ``pid`` (a tombstone if not counted yet); True if none is left."""
    if pid not in entry.clients:
        entry.tombstones.add(pid)
        return False
    entry.clients.discard(pid)
    return not entry.clients
