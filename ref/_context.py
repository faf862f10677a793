"""Which process the running code belongs to.

``myid()`` and every other module-level call ask ``current_process()``.  In a
real worker there is one process per interpreter; in the simulator many
simulated processes share one interpreter, each task running under its own
value of the context variable.  A process-wide default serves threads that
enter the runtime from outside trio's task tree (the blocking facade).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

from spec.api import DistributedError

if TYPE_CHECKING:
    from ._process import Process

_current: ContextVar[Process | None] = ContextVar("distref_process", default=None)


class NoClusterError(DistributedError, RuntimeError):
    """A distref call was made outside any cluster."""


def current_process() -> Process:
    """The process the calling task runs in; raises NoClusterError if none."""
    proc = _current.get()
    if proc is None:
        raise NoClusterError(
            "no distref cluster is active in this task: run the call inside "
            "'async with ref.open_cluster():' (or use ref.blocking)"
        )
    return proc


def set_current(proc: Process | None) -> object:
    """Make ``proc`` current in this context; returns a token for reset."""
    return _current.set(proc)


def reset_current(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]  # token came from set_current


def peek_current() -> Process | None:
    return _current.get()
