"""The one place that switches trio's scheduler into deterministic mode.

trio shuffles each batch of runnable tasks.  Normally it keeps or reverses
the batch at random; with the private module flag
``trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING`` set, it sorts the batch
by task creation order and calls ``_r.shuffle(batch)`` on the private
module-level ``random.Random`` ``trio._core._run._r``.  Replacing ``_r`` with
a generator seeded from the run's seed makes the interleaving a function of
that seed alone.

Both names are private to trio, so this module is the only code that
touches them, ``check_trio_internals`` says loudly when a trio release moves
them, and a test calls it.  Importing Hypothesis switches the flag on
globally and reseeds the *original* ``_r`` per example; we install our own
generator for each run and put back whatever was there before.

The simulator's clock (``_clock``) needs one more private look, also taken
here: whether the run loop, finding no task runnable, is truly idle, that
is no task waits in ``wait_all_tasks_blocked`` (those must wake before
virtual time moves) and no ``run_sync_soon`` callback is queued (a weakref
finalizer queues one; it must run at the instant it was queued).  trio
keeps both on its ``Runner``: ``waiting_for_idle`` and ``entry_queue``.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import trio
import trio._core._run

_FLAG = "_ALLOW_DETERMINISTIC_SCHEDULING"
_RANDOM = "_r"
# What the run loop consults before it lets a MockClock autojump, and what
# holds queued run_sync_soon callbacks.
_IDLE_WAITERS = "runner.waiting_for_idle"
_ENTRY_QUEUE_FIELDS = ("queue", "idempotent_queue")


class TrioInternalsChanged(RuntimeError):
    """trio no longer has the private scheduler hooks the simulator needs."""


def _run_module() -> ModuleType:
    return trio._core._run


def check_trio_internals() -> None:
    """Raise ``TrioInternalsChanged`` unless trio still has both hooks.

    Checks that the flag and the generator exist with the expected types and
    that the run loop still consults them when it orders a batch.
    """
    module = _run_module()
    flag = getattr(module, _FLAG, None)
    rng = getattr(module, _RANDOM, None)
    if not isinstance(flag, bool):
        raise TrioInternalsChanged(
            f"trio {trio.__version__}: trio._core._run.{_FLAG} is missing or not "
            "a bool; update sim/_determinism.py for this trio release"
        )
    if not isinstance(rng, random.Random):
        raise TrioInternalsChanged(
            f"trio {trio.__version__}: trio._core._run.{_RANDOM} is missing or not "
            "a random.Random; update sim/_determinism.py for this trio release"
        )

    # The names could survive while the run loop stops using them.
    source = inspect.getsource(module)
    if f"if {_FLAG}:" not in source or f"{_RANDOM}.shuffle(batch)" not in source:
        raise TrioInternalsChanged(
            f"trio {trio.__version__}: the run loop no longer shuffles batches "
            f"with {_RANDOM}.shuffle under {_FLAG}; update sim/_determinism.py"
        )
    if f"if {_IDLE_WAITERS}:" not in source:
        raise TrioInternalsChanged(
            f"trio {trio.__version__}: the run loop no longer checks "
            f"{_IDLE_WAITERS} before it goes idle; update sim/_determinism.py"
        )
    entry_queue = getattr(module, "EntryQueue", None)
    fields = getattr(entry_queue, "__attrs_attrs__", ())
    names = {field.name for field in fields}
    if not all(name in names for name in _ENTRY_QUEUE_FIELDS):
        raise TrioInternalsChanged(
            f"trio {trio.__version__}: trio's EntryQueue no longer has the fields "
            f"{_ENTRY_QUEUE_FIELDS}; update sim/_determinism.py"
        )


#: What ``idle_probe``'s function answers: the loop is idle, ...
IDLE = 0
#: ... a task waits in ``wait_all_tasks_blocked`` (it goes first), ...
WAITING_FOR_IDLE = 1
#: ... or a ``run_sync_soon`` callback is queued (it runs first).
CALLBACK_QUEUED = 2


def idle_probe() -> Callable[[], int]:
    """A function telling whether the running loop may move virtual time now.

    Call it from inside ``trio.run`` (the clock's ``start_clock`` does).  The
    function it returns answers ``IDLE``, ``WAITING_FOR_IDLE`` or
    ``CALLBACK_QUEUED``; trio's own autojump holds back in the last two
    cases too.
    """
    runner = trio._core._run.GLOBAL_RUN_CONTEXT.runner
    entries = runner.entry_queue

    def probe() -> int:
        if runner.waiting_for_idle:
            return WAITING_FOR_IDLE
        if entries.queue or entries.idempotent_queue:
            return CALLBACK_QUEUED
        return IDLE

    return probe


@contextmanager
def deterministic_scheduling(rng: random.Random) -> Iterator[None]:
    """Order every batch of runnable tasks by ``rng`` while the block runs.

    Must be entered before ``trio.run`` starts and left after it returns;
    the previous flag and generator are restored whatever happens.
    """
    check_trio_internals()
    module = _run_module()
    saved_flag = getattr(module, _FLAG)
    saved_rng = getattr(module, _RANDOM)
    setattr(module, _FLAG, True)
    setattr(module, _RANDOM, rng)
    try:
        yield
    finally:
        setattr(module, _FLAG, saved_flag)
        setattr(module, _RANDOM, saved_rng)
