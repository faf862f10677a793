"""Stop a simulated run that can no longer make progress.

On virtual time that jumps whenever every task waits, a run has two ways
to get stuck that a real run would show as a hang:

* deadlock: every task waits, and nothing is scheduled (no deadline, no
  callback), even after a garbage collection (whose finalizers could queue
  work): virtual time cannot advance, and trio would spin at the same
  instant for ever;
* livelock: tasks keep running (say, a loop around ``trio.sleep(0)``) but
  virtual time never advances, so no timeout can ever fire.

``Watchdog`` is a trio instrument that looks at the scheduler after every
I/O wait.  A simulated run installs it only once the clock has been read
``STANDING_STILL_READS`` times at one instant (``SimClock``'s
``on_standing_still``), and it removes itself when time moves again: a run
that keeps advancing never pays for an instrument on every pass.  When it
sees either condition it records a verdict, with the tasks and where each
waits, and cancels the run's main scope; ``sim.run`` then raises
``SimulationStuck``.  If the run is stuck again after that (cleanup under
a shield waits on a worker whose task spins, so no timeout can expire),
it crashes every simulated process (``on_stuck_again``); if even that does
not help, it ends ``trio.run`` itself (``on_beyond_recovery``), so that a
stuck run always ends with an error rather than a hang.  It observes only trio's public
statistics, so it cannot change what the run does.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable

import trio

log = logging.getLogger("sim")

#: Loop iterations that may pass at one virtual instant before the run is
#: called a livelock.  A sleep(0) loop reaches it in a few wall seconds.
MAX_ITERATIONS_PER_INSTANT = 1_000_000

#: Consecutive idle iterations with nothing scheduled that make a deadlock.
#: More than one, because a task in ``wait_all_tasks_blocked`` is woken
#: only by the iteration that finds everything idle.
_IDLE_ITERATIONS = 3

#: Iterations at one instant before the scheduler's statistics are read:
#: busy instants are common, stuck ones are not.
_QUIET_ITERATIONS = 64

#: At most this many tasks are listed in a verdict.
_MAX_TASKS_SHOWN = 25


class SimulationStuck(RuntimeError):
    """The simulated run deadlocked or stopped advancing virtual time."""


class Watchdog(trio.abc.Instrument):
    """Watches one run's scheduler for deadlock and livelock."""

    def __init__(self, max_iterations: int = MAX_ITERATIONS_PER_INSTANT) -> None:
        self.scope: trio.CancelScope | None = None
        self.verdict: str | None = None
        self._max_iterations = max_iterations
        self._idle = 0
        self._instant = -math.inf
        self._iterations = 0
        self._collected = False
        self._gave_up = False
        #: Called once if the run is stuck again after its main was
        #: cancelled: ``sim.run`` stops every simulated process with it.
        self.on_stuck_again: Callable[[], None] | None = None
        self._stopped_all = False
        #: Called if even that did not help: it must end trio.run.
        self.on_beyond_recovery: Callable[[BaseException], None] | None = None
        #: The verdict, once the run was ended that way.
        self.ended_hard: str | None = None
        self._now: Callable[[], float] = trio.current_time
        # Installed by ``watch`` (rather than passed to trio.run).
        self._installed = False

    def before_run(self) -> None:
        # The clock's own method answers what trio.current_time would,
        # without two layers of lookups on every pass of the run loop.
        self._now = trio.lowlevel.current_clock().current_time

    @property
    def watching(self) -> bool:
        """Whether ``watch`` installed it and time has not moved since."""
        return self._installed

    def watch(self) -> None:
        """Start looking at every pass of the run loop, until time moves."""
        if self._installed:
            return
        self._now = trio.lowlevel.current_clock().current_time
        self._instant = self._now()
        self._iterations = 0
        self._idle = 0
        self._collected = False
        self._installed = True
        trio.lowlevel.add_instrument(self)

    def after_io_wait(self, timeout: float) -> None:
        if self._gave_up:
            return
        now = self._now()
        if now != self._instant:
            self._instant = now
            self._iterations = 0
            self._idle = 0
            self._collected = False
            if self._installed:
                # Time moves again: back to watching through the clock.
                self._installed = False
                trio.lowlevel.remove_instrument(self)
            return

        # Time stands still: only then can the run be stuck, and only then
        # is it worth asking the scheduler for its statistics.
        self._iterations += 1
        if self._iterations < _QUIET_ITERATIONS:
            return
        if self._iterations > self._max_iterations:
            self._trip(
                f"livelock: {self._iterations} scheduler iterations at virtual "
                f"time {now:.9f} s without time advancing (a task loops without "
                "waiting for anything?)"
            )
            return

        stats = trio.lowlevel.current_statistics()
        stalled = (
            stats.tasks_runnable == 0
            and stats.run_sync_soon_queue_size == 0
            and stats.seconds_to_next_deadline == math.inf
        )
        self._idle = self._idle + 1 if stalled else 0
        if self._idle >= _IDLE_ITERATIONS and not self._collected:
            # A real process would collect its garbage some time, and a
            # finalizer may be what everyone waits for (a reference freed,
            # a notice sent): give it that chance before calling it stuck.
            self._collected = True
            self._idle = 0
            gc.collect()
        elif self._idle >= _IDLE_ITERATIONS:
            self._trip(
                f"deadlock at virtual time {now:.9f} s: every task is waiting "
                "and nothing is scheduled to wake any of them"
            )

    def _trip(self, verdict: str) -> None:
        report = f"{verdict}\n{_task_report()}"
        # Each stage below gets a full budget of iterations of its own.
        self._iterations = 0
        self._idle = 0
        if self.verdict is None and self.scope is not None:
            self.verdict = report
            self.scope.cancel()
            return

        if not self._stopped_all and self.on_stuck_again is not None:
            # Stuck again after the run was cancelled: cleanup shielded from
            # cancellation waits on a process that spins or never answers
            # (a worker's task looping at one instant keeps virtual time,
            # and so every timeout, from moving).  Crash every simulated
            # process, as an operator would kill them, and let cleanup go on.
            self._stopped_all = True
            log.error(
                "simulated run stuck after it was cancelled, stopping every "
                "simulated process: %s",
                report,
            )
            self.on_stuck_again()
            return

        # Nothing left to try inside the run: end trio.run itself, so that
        # the caller gets an error instead of a hang.
        self._gave_up = True
        self.ended_hard = report
        if self.on_beyond_recovery is None:
            log.error("simulated run stuck beyond recovery: %s", report)
            return
        log.error("simulated run stuck beyond recovery, ending it: %s", report)
        self.on_beyond_recovery(SimulationStuck(report))


def _task_report() -> str:
    """The run's tasks, each with the innermost place it waits."""
    lines: list[str] = []
    root = trio.lowlevel.current_root_task()
    stack = [] if root is None else [root]
    while stack and len(lines) < _MAX_TASKS_SHOWN:
        task = stack.pop(0)
        # The innermost frame outside trio says what the task waits for.
        where = "?"
        for frame, lineno in task.iter_await_frames():
            module = str(frame.f_globals.get("__name__", "?"))
            if module != "trio" and not module.startswith("trio."):
                where = f"{module}.{frame.f_code.co_name}:{lineno}"
        lines.append(f"  {task.name}  waiting in {where}")
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return "tasks:\n" + "\n".join(lines)
