"""A ``__main__`` module for each simulated worker process.

On ``ref`` every worker is an OS process with a ``__main__`` of its own, and
``everywhere``/``define_globals``/``clear_globals`` bind names there: what
one worker defines, another (and a worker added later) does not see.  The
simulator runs every process in one interpreter, so they would all share
the interpreter's single ``sys.modules["__main__"]``.

While a run is active, ``sys.modules["__main__"]`` is therefore a stand-in
module that forwards every attribute read, write and deletion to the
``__main__`` of the simulated process whose task asks: a fresh, empty module
for each worker (made on first use, dropped with the run), and the real
``__main__`` for a master (pid 1) and for code outside any simulated
process.  Code that looks the module up by name (``sys.modules``,
``importlib.import_module("__main__")``) sees its own process's; an object
that imported ``__main__`` before the run keeps the real one.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

#: The name of the module each simulated worker has a copy of.
MAIN = "__main__"

# The namespaces of the run in progress; the stand-in finds them here.
_active: MainModules | None = None


class _MainOfCaller(types.ModuleType):
    """Stands in for ``__main__``: every attribute is the caller's process's."""

    def __getattribute__(self, name: str) -> object:
        return getattr(_target(), name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(_target(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(_target(), name)

    def __dir__(self) -> list[str]:
        return dir(_target())

    def __repr__(self) -> str:
        return f"<simulated per-process {MAIN}: {_target()!r}>"


def _target() -> types.ModuleType:
    modules = _active
    if modules is None:
        # Outlived its run (someone kept a reference): the real one.
        real = sys.modules.get(MAIN)
        if real is None or isinstance(real, _MainOfCaller):
            raise RuntimeError(f"no real {MAIN} module to stand in for")
        return real
    return modules.current()


class MainModules:
    """The ``__main__`` of each simulated worker of one run.

    ``worker_key`` returns a key naming the simulated worker process the
    calling task belongs to (its simulated OS pid), or None for a master
    or code outside every simulated process; those use the real module.
    ``install`` and ``uninstall`` bracket the run.
    """

    def __init__(self, worker_key: Callable[[], int | None]) -> None:
        self._worker_key = worker_key
        self._real: types.ModuleType | None = None
        self._by_worker: dict[int, types.ModuleType] = {}

    def install(self) -> None:
        """Put the stand-in in ``sys.modules`` for the run."""
        global _active
        if _active is not None:
            raise RuntimeError("another simulated run's __main__ modules are in place")
        self._real = sys.modules[MAIN]
        _active = self
        sys.modules[MAIN] = _MainOfCaller(MAIN)

    def uninstall(self) -> None:
        """Give ``sys.modules`` its real ``__main__`` back; forget the copies."""
        global _active
        if _active is self:
            _active = None
        if self._real is not None and isinstance(sys.modules.get(MAIN), _MainOfCaller):
            sys.modules[MAIN] = self._real
        self._by_worker.clear()

    def current(self) -> types.ModuleType:
        """The ``__main__`` of the calling task's simulated process."""
        key = self._worker_key()
        real = self._real
        if key is None or real is None:
            assert real is not None, "MainModules.current() before install()"
            return real
        module = self._by_worker.get(key)
        if module is None:
            module = self._by_worker[key] = types.ModuleType(MAIN)
        return module
