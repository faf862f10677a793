"""The process group as one process sees it: peers, pids, reference ids.

``ProcessGroup`` is pure bookkeeping, mirroring Julia's ``PGRP``: the
ordered table of known processes with their states, the set of pids that
have left, the master's pid counter and this process's reference-id
counter.  It answers ``procs()``, ``workers()`` and friends with the
upstream edge cases, and decides what a lookup of an unknown or departed
pid means.  It performs no I/O; the shell changes it only through these
methods.

Peer states (Julia's ``W_CREATED`` ... ``W_TERMINATED``)::

    CREATED --connected--> CONNECTED --rmprocs--> TERMINATING
    CREATED | CONNECTED | TERMINATING --link lost / deregister--> (deleted)
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from spec.api import RRID, NoSuchProcessError, ProcessExitedException

MASTER = 1


class PeerState(enum.Enum):
    CREATED = "created"
    CONNECTED = "connected"
    TERMINATING = "terminating"


@dataclass
class Peer:
    """What a process knows of another: where it listens and its state."""

    pid: int
    host: str
    port: int
    state: PeerState = PeerState.CREATED
    ospid: int | None = None


@dataclass
class ProcessGroup:
    """The process table of one process, with Julia's query semantics.

    ``lazy`` and ``topology`` follow the cluster; ``myid`` is 0 on a worker
    until the master assigns its pid.
    """

    myid: int
    topology: str = "all_to_all"
    lazy: bool = True
    _peers: dict[int, Peer] = field(default_factory=dict)
    _deleted: set[int] = field(default_factory=set)
    _next_pid: int = 2
    _next_ref: int = 1

    @property
    def is_master(self) -> bool:
        return self.myid == MASTER

    def allocate_pid(self) -> int:
        """A fresh pid for a new worker; pids are never reused."""
        pid = self._next_pid
        self._next_pid += 1
        return pid

    def next_rrid(self) -> RRID:
        """A fresh reference id created by this process."""
        rrid = RRID(self.myid, self._next_ref)
        self._next_ref += 1
        return rrid

    def add_peer(self, peer: Peer) -> Peer:
        """Record a peer (or return the one already known under its pid)."""
        known = self._peers.get(peer.pid)
        if known is not None:
            return known
        self._peers[peer.pid] = peer
        return peer

    def peer(self, pid: int) -> Peer:
        """Look ``pid`` up the way Julia's ``worker_from_id`` does.

        A departed pid raises ``ProcessExitedException``; an unknown pid
        raises ``NoSuchProcessError`` on the master, while a worker answers
        with a stub (a peer it has not heard of yet, address unknown).
        """
        known = self._peers.get(pid)
        if known is not None:
            return known
        if pid in self._deleted:
            raise ProcessExitedException(pid)
        if self.is_master or pid == MASTER:
            raise NoSuchProcessError(pid, known=self.procs())
        return self.add_peer(Peer(pid, "", 0))

    def has_left(self, pid: int) -> bool:
        return pid in self._deleted

    def is_known(self, pid: int) -> bool:
        return pid in self._peers

    def remove(self, pid: int) -> Peer | None:
        """Forget ``pid`` for good; later lookups raise ProcessExited."""
        self._deleted.add(pid)
        return self._peers.pop(pid, None)

    def peers(self) -> Iterator[Peer]:
        """Every known peer, in registration order."""
        return iter(list(self._peers.values()))

    def procs(self) -> list[int]:
        """This process plus the peers a user should see, ordered.

        The master, and a worker in an eager all-to-all cluster, list only
        connected peers; otherwise every known peer counts, stubs included.
        """
        connected_only = self.is_master or (
            self.topology == "all_to_all" and not self.lazy
        )
        pids = [
            p.pid
            for p in self._peers.values()
            if not connected_only or p.state is PeerState.CONNECTED
        ]
        return sorted({self.myid, *pids})

    def workers(self) -> list[int]:
        """``procs()`` without pid 1, but ``[1]`` when there is nothing else."""
        pids = self.procs()
        if len(pids) == 1:
            return pids
        return [p for p in pids if p != MASTER]

    def nprocs(self) -> int:
        return len(self.procs())

    def nworkers(self) -> int:
        n = self.nprocs()
        return 1 if n == 1 else n - 1
