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
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import trio
import trio._core._run

_FLAG = "_ALLOW_DETERMINISTIC_SCHEDULING"
_RANDOM = "_r"


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
