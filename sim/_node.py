"""A simulated operating-system process: one runtime ``Process`` and its I/O.

A ``Node`` is what a real machine would call a process: it has an OS pid,
sockets (here, simulated stream ends), listening ports, and can be killed,
stopped (hung) or slowed down.  The runtime's own ``Process`` object runs
inside it and knows nothing of this; the node only watches from outside,
the way an operating system would.

The distref pid of a node is the runtime's ``myid``: ``1`` for the master,
``0`` for a worker until the master has assigned it one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ref._context import set_current

if TYPE_CHECKING:
    from ref._process import Process

    from ._network import Listener, SimStream


@dataclass(frozen=True, slots=True)
class MessageNote:
    """What the codec last encoded for a node, for the trace.

    The simulated stream matches it to the next frame the node writes (by
    length), so the trace can name the message a chunk carries without
    decoding anything.
    """

    kind: str
    function: str | None
    mode: str | None
    outcome: str | None
    body_len: int


class Node:
    """One simulated OS process, master or worker."""

    def __init__(self, index: int, name: str, ospid: int, fixed_pid: int = 0) -> None:
        self.index = index
        self.name = name
        self.ospid = ospid
        # The pid once known: a process's pid changes only once, from 0.
        self._pid = fixed_pid
        self.proc: Process | None = None

        self.dead = False
        self.hung = False
        self._resumed = trio.Event()
        self.step_delay = 0.0

        self.cancel_scope = trio.CancelScope()
        self.done = trio.Event()
        self.announced = trio.Event()
        self.address: tuple[str, int] | None = None
        self.launch_failed = False
        self.exit_code: int | None = None

        self.endpoints: list[SimStream] = []
        self.listeners: list[Listener] = []
        self.pending_note: MessageNote | None = None

    def __repr__(self) -> str:
        return f"<Node {self.name} pid={self.pid} ospid={self.ospid}>"

    @property
    def pid(self) -> int:
        """The distref pid, or 0 while a worker has not been given one."""
        if self._pid:
            return self._pid
        if self.proc is not None:
            self._pid = self.proc.myid
        return self._pid

    def attach(self, proc: Process, *, make_current: bool) -> None:
        """Adopt the runtime process that runs here.

        A worker's node attaches from ``serve_worker``'s ``started``
        callback, in the node's host task, which from then on acts as that
        process (``make_current``); the master is current already.
        """
        self.proc = proc
        if make_current:
            set_current(proc)

    def announce(self, host: str, port: int) -> None:
        """The worker is listening: what ``ref.worker`` prints on stdout."""
        self.address = (host, port)
        self.announced.set()

    # ------------------------------------------------------------ faults

    def hang(self) -> None:
        self.hung = True

    def resume(self) -> None:
        if self.hung:
            self.hung = False
            self._resumed.set()
            self._resumed = trio.Event()

    async def step(self) -> None:
        """One I/O step of this process: a checkpoint, plus the node's faults.

        A hung node's step waits until it is resumed; a slow node's step
        costs ``step_delay`` seconds of virtual time.
        """
        if self.step_delay > 0:
            await trio.sleep(self.step_delay)
        else:
            await trio.lowlevel.checkpoint()
        while self.hung:
            await self._resumed.wait()

    async def wait_resumed(self) -> None:
        """Return once this node is not hung (at once if it is not)."""
        while self.hung:
            await self._resumed.wait()

    def take_note(self, frame_len: int, overhead: int) -> MessageNote | None:
        """The codec's note, if it describes a frame of ``frame_len`` bytes."""
        note, self.pending_note = self.pending_note, None
        if note is None or note.body_len + overhead != frame_len:
            return None
        return note
