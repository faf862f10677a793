"""Guards that fail a simulated run which touches the real world.

A simulated run is deterministic only if every input comes from the seed.
While a run is active these guards replace the ways code usually reaches
outside it, so that the mistake is reported where it happens instead of
showing up later as a trace that differs between two machines:

* the wall clock: ``time.time``, ``time.monotonic``, ``time.perf_counter``
  and their ``_ns`` variants raise (trio's ``MockClock`` captured its own
  reference to ``perf_counter`` when it was built, and ``trio.current_time``
  reads only that clock, so trio is unaffected), and so does ``time.sleep``,
  which would freeze every simulated process while virtual time stood still;
* real sockets: ``socket.socket``, ``socket.socketpair`` and
  ``socket.create_connection`` raise (trio's wake-up socket pair exists
  before the guards go up);
* threads: ``threading.Thread.start`` and ``trio.to_thread.run_sync`` raise;
* real processes: ``subprocess.Popen`` (which ``trio.run_process`` and
  ``ref``'s local launcher use) and ``os.fork``/``os.posix_spawn`` raise.

Each violation is also recorded, so ``sim.run`` fails even when the code
under test catches the exception and carries on.

One caller may read the clock: the ``logging`` module stamps every record
with ``time.time()``.  It gets virtual time instead (a fixed epoch plus the
run's virtual seconds), so log lines are as reproducible as the trace.

The guards also stand in for two facts about the machine that the runtime
reports to its peers in ``JoinCompleteMsg``: ``os.getpid()`` answers the
simulated OS pid of the simulated process whose task asks, and
``os.cpu_count()`` a fixed number.  Without that, the bytes on the
simulated wire (and so the trace) would depend on the real machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

#: Where log timestamps start: 2000-01-01T00:00:00Z, an arbitrary fixed instant.
LOG_EPOCH = 946_684_800.0

#: Modules allowed to read ``time.time``; they see virtual time instead.
_CLOCK_READERS = frozenset({"logging"})


class SimulationViolation(RuntimeError):
    """Code inside a simulated run used the wall clock, a socket or a thread."""


# The guards of the run in progress.  Tripwires find them here rather than
# holding a reference, so a tripwire that was pickled and sent to a
# simulated worker still reports to the run.
_active: Guards | None = None


class _Tripwire:
    """Stands in for one guarded function; calling it is a violation.

    ``clock`` tripwires let the modules in ``_CLOCK_READERS`` read virtual
    time instead; ``nanoseconds`` says which unit they answer in.
    """

    def __init__(
        self,
        what: str,
        resource: str,
        *,
        clock: bool = False,
        nanoseconds: bool = False,
    ) -> None:
        self.what = what
        self.resource = resource
        self.clock = clock
        self.nanoseconds = nanoseconds

    def __call__(self, *args: object, **kwargs: object) -> Any:
        guards = _active
        if self.clock and guards is not None:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller in _CLOCK_READERS:
                seconds = LOG_EPOCH + guards.virtual_time()
                return int(seconds * 1e9) if self.nanoseconds else seconds
        raise _violation(self.what, self.resource)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # Patched onto a class (Thread.start), it must bind like a method.
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _Tripwire,
            (self.what, self.resource),
            {"clock": self.clock, "nanoseconds": self.nanoseconds},
        )


def _violation(what: str, resource: str) -> SimulationViolation:
    error = SimulationViolation(
        f"{what} was called inside a simulated run: simulated code must not "
        f"use {resource}; use trio's clock and the simulated network instead"
    )
    if _active is not None:
        _active.violations.append(error)
    return error


class _GuardedSocket(socket.socket):
    """Stands in for ``socket.socket`` during a run; cannot be built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise _violation("socket.socket", "a real socket")


class Guards:
    """Patches that keep a simulated run inside the simulation.

    ``install`` and ``uninstall`` must be called from inside the run's
    ``trio.run`` (trio itself needs a real socket pair to start); one set
    of guards can be installed at a time.  ``violations`` lists every
    attempt, in order.
    """

    def __init__(
        self,
        *,
        virtual_time: Callable[[], float],
        ospid: Callable[[], int],
        cpu_count: int,
    ) -> None:
        self.violations: list[SimulationViolation] = []
        self.virtual_time = virtual_time
        self._ospid = ospid
        self._cpu_count = cpu_count
        self._saved: list[tuple[object, str, object]] = []

    def install(self) -> None:
        """Put every patch in place."""
        global _active
        if _active is not None:
            raise RuntimeError("another simulated run's guards are installed")
        _active = self

        for name in ("time", "monotonic", "perf_counter"):
            self._patch(time, name, _Tripwire(f"time.{name}", _CLOCK, clock=True))
            self._patch(
                time,
                f"{name}_ns",
                _Tripwire(f"time.{name}_ns", _CLOCK, clock=True, nanoseconds=True),
            )

        # A blocking sleep would stop every simulated process at once while
        # virtual time stands still: nothing real can be modelled by it.
        self._patch(time, "sleep", _Tripwire("time.sleep", _BLOCKING))

        self._patch(socket, "socket", _GuardedSocket)
        for name in ("socketpair", "create_connection", "create_server"):
            self._patch(socket, name, _Tripwire(f"socket.{name}", _SOCKET))

        self._patch(
            threading.Thread, "start", _Tripwire("threading.Thread.start", _THREAD)
        )
        self._patch(
            trio.to_thread, "run_sync", _Tripwire("trio.to_thread.run_sync", _THREAD)
        )

        # A real process would run outside the simulation altogether.
        self._patch(
            subprocess.Popen,
            "_execute_child",
            _Tripwire("subprocess.Popen", _PROCESS),
        )
        for name in ("fork", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                self._patch(os, name, _Tripwire(f"os.{name}", _PROCESS))

        self._patch(os, "getpid", _simulated_getpid)
        self._patch(os, "cpu_count", _simulated_cpu_count)

    def uninstall(self) -> None:
        """Restore every patched name, newest first."""
        global _active
        while self._saved:
            owner, name, original = self._saved.pop()
            setattr(owner, name, original)
        if _active is self:
            _active = None

    def _patch(self, owner: object, name: str, replacement: object) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    def ospid(self) -> int:
        return self._ospid()

    def cpu_count(self) -> int:
        return self._cpu_count


# The machine facts, as module-level functions: a scenario that sends
# ``os.getpid`` to a worker pickles them by reference, and the worker's copy
# answers for the worker.
_real_getpid = os.getpid
_real_cpu_count = os.cpu_count


def _simulated_getpid() -> int:
    """The simulated OS pid of the calling task's simulated process."""
    return _real_getpid() if _active is None else _active.ospid()


def _simulated_cpu_count() -> int | None:
    """The simulated machine's CPU count."""
    return _real_cpu_count() if _active is None else _active.cpu_count()


_CLOCK = "the wall clock"
_SOCKET = "a real socket"
_THREAD = "a thread"
_PROCESS = "a real OS process (simulated workers come from sim.open_cluster)"
_BLOCKING = "a blocking sleep (it stops every simulated process; use trio.sleep)"
