"""The simulator's virtual clock: time moves only when every task waits.

It does what ``trio.testing.MockClock(autojump_threshold=0)`` did for the
simulator, a pass of trio's run loop sooner and for less.  MockClock jumps
from inside a pass of the run loop, after that pass has expired its
deadlines, so every jump costs a pass in which nothing runs; and it turns a
real clock reading into virtual time each time it is asked the time, which
the runtime and the network do many times per message.

This clock keeps virtual time as a number.  trio asks it how long to sleep
(``deadline_to_sleep_time``) only when no task is runnable; if the run loop
is then idle in trio's sense as well (no task in ``wait_all_tasks_blocked``,
no ``run_sync_soon`` callback queued: ``_determinism.idle_probe``), the
clock moves to the next deadline on the spot and answers "do not sleep",
so the same pass expires that deadline and runs what it woke.  A task in
``wait_all_tasks_blocked`` is woken first, as under MockClock, and a
queued callback runs first, at the instant it was queued.  The order in
which tasks run is unchanged: the tasks a jump wakes form one batch either
way, and it is shuffled by the same seeded generator.

With nothing scheduled at all it answers "do not sleep" without moving,
as MockClock did: the run loop spins at that instant and the watchdog calls
it a deadlock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import final

import trio

from ._determinism import IDLE, WAITING_FOR_IDLE, idle_probe

#: Readings of the clock at one virtual instant after which it calls its
#: ``on_standing_still`` callback (the watchdog starts watching then).  A
#: pass of trio's loop reads the clock at least once, so a run that spins at
#: one instant, deadlocked or livelocked, gets there within this many passes.
STANDING_STILL_READS = 4096

#: What the clock answers while a task waits for the run to go idle: sleep
#: "for ever", so that trio's own idle cushion decides when the loop wakes
#: (MockClock answers the same when its rate is zero).
_WAIT_FOR_IDLE = 999_999_999.0


def _not_started() -> int:
    return WAITING_FOR_IDLE


def _nothing() -> None:
    pass


@final
class SimClock(trio.abc.Clock):
    """Virtual seconds, jumped to the next deadline whenever the run is idle."""

    __slots__ = (
        "_dues",
        "_idle",
        "_listeners",
        "_reads",
        "_still",
        "_still_after",
        "now",
    )

    def __init__(self, standing_still_after: int = STANDING_STILL_READS) -> None:
        #: Virtual seconds since the run began.
        self.now = 0.0
        self._idle: Callable[[], int] = _not_started
        self._listeners: list[Callable[[], None]] = []
        self._dues: list[Callable[[], float]] = []
        # Readings at this instant, and what to call at the threshold.
        self._reads = 0
        self._still_after = standing_still_after
        self._still: Callable[[], None] = _nothing

    def on_standing_still(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once per instant that is read very often.

        That is ``standing_still_after`` readings without the clock moving:
        a cheap sign, counted without hooking every pass of the run loop,
        that the run may be stuck; the watchdog then looks closer.
        """
        self._still = callback

    def __repr__(self) -> str:
        return f"<SimClock, time={self.now:.9f}>"

    def add_listener(
        self, listener: Callable[[], None], due: Callable[[], float] | None = None
    ) -> None:
        """Call ``listener()`` each time the clock has jumped.

        It runs from the run loop, before the deadlines the jump reached
        expire and before any task runs: the simulated network delivers
        the chunks due then, so their readers run in that same pass.
        ``due()``, if given, says when the listener next wants to run (in
        virtual seconds, ``math.inf`` for never): the clock jumps there
        as to a trio deadline, without the cost of keeping one.
        """
        self._listeners.append(listener)
        if due is not None:
            self._dues.append(due)

    def remove_listener(
        self, listener: Callable[[], None], due: Callable[[], float] | None = None
    ) -> None:
        self._listeners.remove(listener)
        if due is not None:
            self._dues.remove(due)

    def start_clock(self) -> None:
        self._idle = idle_probe()

    def current_time(self) -> float:
        self._reads += 1
        if self._reads == self._still_after:
            self._still()
        return self.now

    def abort(self, error: BaseException) -> None:
        """End the run from its loop: ``trio.run`` fails at its next pass.

        For a run stuck beyond recovery (a task spinning under a shield):
        trio's own ways of stopping a run all wait for every task to
        finish, and this one does not.  Every reading of the clock raises
        ``error`` from now on, and the run loop reads it on every pass, so
        the loop ends there and then (``trio.run`` raises a
        ``TrioInternalError``).  Done through the standing-still hook, so
        that the clock's hot path pays nothing for it.
        """

        def fail() -> None:
            self._reads = self._still_after - 1
            raise error

        self._still = fail
        self._reads = self._still_after - 1

    def deadline_to_sleep_time(self, deadline: float) -> float:
        for due in self._dues:
            when = due()
            if when < deadline:
                deadline = when
        if deadline <= self.now:
            return 0.0
        idle = self._idle()
        if idle == IDLE:
            if deadline != math.inf:
                self.now = deadline
                self._reads = 0
                for listener in self._listeners:
                    listener()
            return 0.0
        if idle == WAITING_FOR_IDLE:
            return _WAIT_FOR_IDLE
        # A queued callback: the loop finds it without sleeping, at this
        # same instant.
        return 0.0
