"""What the call, future and error scenarios ship to other processes.

Functions sent to a worker travel by reference, so they must live at module
level in an importable module: this one.  Its state (gates,
records, captured log lines) is kept per process (``PerProcess``), so a
scenario reads a worker's state by calling ``records`` or ``logged`` *on
that worker*.  Keys are fresh per scenario (``new_key``) because the master
keeps this module loaded from one scenario to the next.

Nothing here imports a backend: a function that must call back into the
cluster receives the API object ``d`` as an argument.

It also holds the small waiting helpers the scenarios share, which turn a
wait that runs out into an ``AssertionError`` so that a hang counts as a
failed behaviour rather than a crash.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
import types
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

import trio

from spec.api import DistributedAPI, RemoteException

#: Seconds a wait that should succeed may take before the scenario fails.
PATIENCE = 10.0

T = TypeVar("T")

# ------------------------------------------------------- per-process state


class PerProcess(Generic[T]):
    """One ``T`` for each process of the cluster, made on first use.

    Module-level state in a module that workers import is per process when
    every process is an OS process of its own (``ref``), but a simulator
    may run all of them in one interpreter, sharing the module.  Keying
    the state by ``os.getpid()`` keeps it per process on both: a simulator
    answers ``os.getpid()`` with the pid of the simulated process whose
    task asks.  A simulator may reuse a pid in a later run, so what is
    kept here must still be keyed by something fresh per scenario.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._by_process: dict[int, T] = {}

    def here(self) -> T:
        """The ``T`` of the process this runs on."""
        pid = os.getpid()
        value = self._by_process.get(pid)
        if value is None:
            value = self._by_process[pid] = self._factory()
        return value


# ------------------------------------------------------------------ waiting


def new_key() -> str:
    """A key no other scenario (or earlier run) has used."""
    return uuid.uuid4().hex


@contextlib.contextmanager
def within(seconds: float, what: str) -> Iterator[None]:
    """Run the block under a deadline; running out is an assertion failure."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise AssertionError(f"{what}: not done within {seconds:g} s") from None


async def eventually(
    probe: Callable[[], Awaitable[bool]], what: str, timeout: float = PATIENCE
) -> None:
    """Poll ``probe`` until it returns True; fail with ``what`` otherwise."""
    with trio.move_on_after(timeout):
        while not await probe():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"{what}: still not so after {timeout:g} s")


async def until_gone(d: DistributedAPI, pid: int) -> None:
    """Wait until the caller no longer lists ``pid`` among its processes."""

    async def gone() -> bool:
        return pid not in d.procs()

    await eventually(gone, f"pid {pid} is still listed by procs()")


# ------------------------------------------------------------------- gates

_gates: PerProcess[dict[str, trio.Event]] = PerProcess(dict)


def _gate(key: str) -> trio.Event:
    gates = _gates.here()
    event = gates.get(key)
    if event is None:
        event = gates[key] = trio.Event()
    return event


async def wait_gate(key: str, value: Any = None) -> Any:
    """Block until ``open_gate(key)`` ran in this process; return ``value``."""
    record(key, "started")
    await _gate(key).wait()
    return value


def open_gate(key: str) -> None:
    """Release every ``wait_gate(key)`` of this process, now and later."""
    _gate(key).set()


# ----------------------------------------------------------------- records

_records: PerProcess[dict[str, list[Any]]] = PerProcess(dict)


def record(key: str, item: Any) -> None:
    """Append ``item`` to this process's list under ``key``."""
    _records.here().setdefault(key, []).append(item)


def records(key: str) -> list[Any]:
    """A copy of this process's list under ``key``."""
    return list(_records.here().get(key, []))


# ------------------------------------------------------------- arguments


def parameters(
    v1: Any, v2: Any = 0, *, kw1: Any = 0, kw2: Any = 0
) -> tuple[Any, Any, Any, Any]:
    """Report how the arguments arrived, defaults included."""
    return (v1, v2, kw1, kw2)


def record_parameters(
    key: str, v1: Any, v2: Any = 0, *, kw1: Any = 0, kw2: Any = 0
) -> None:
    """Like ``parameters``, but record the result instead of returning it."""
    record(key, (v1, v2, kw1, kw2))


def append_and_return(items: list[Any], item: Any) -> list[Any]:
    """Change the argument in place and hand it back."""
    items.append(item)
    return items


async def append_after_gate(key: str, items: list[Any], item: Any) -> None:
    """Wait for the gate, then change the argument in place."""
    await wait_gate(key)
    items.append(item)


def same_object(a: object, b: object) -> bool:
    """Whether the two arguments arrived as one object."""
    return a is b


def return_value(value: Any) -> Any:
    """Return the argument (a value travelling back to the caller)."""
    return value


async def slow_then_mark(key: str, seconds: float, value: Any) -> Any:
    """Record ``"done"`` under ``key`` after ``seconds``; return ``value``."""
    await trio.sleep(seconds)
    record(key, "done")
    return value


# -------------------------------------------------------------- errors


class ScenarioError(Exception):
    """A distinctive exception type the scenarios raise remotely."""


class UnpicklableError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class UnloadableError(Exception):
    """An exception that pickles but cannot be rebuilt from its pickle.

    Its ``args`` hold one combined message while ``__init__`` wants two
    parts, so unpickling calls ``UnloadableError(message)`` and fails.
    """

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} and {second}")


def raise_scenario_error(*args: Any) -> None:
    """Raise ``ScenarioError(*args)`` wherever this runs."""
    raise ScenarioError(*args)


def raise_unpicklable(message: str) -> None:
    raise UnpicklableError(message)


def raise_unloadable(first: str, second: str) -> None:
    raise UnloadableError(first, second)


#: A module that only a process which ran ``raise_worker_only`` has.
WORKER_ONLY_MODULE = "distref_conformance_worker_only"

#: The ``WorkerOnlyError`` class each process made, by name.
_worker_only: PerProcess[dict[str, type[Exception]]] = PerProcess(dict)


def _worker_only_attribute(name: str) -> type[Exception]:
    """The worker-only module's attributes: those of the asking process.

    Where processes share an interpreter (a simulator) they share the
    module too; looking its class up per process keeps it unknown to every
    process but the one that made it.
    """
    found = _worker_only.here().get(name)
    if found is None:
        raise AttributeError(
            f"module {WORKER_ONLY_MODULE!r} has no attribute {name!r} here"
        )
    return found


def raise_worker_only(message: str) -> None:
    """Raise an exception whose class only this process can import.

    The class lives in a module made here at run time, so the exception
    pickles (by reference, like any importable class) but a process without
    the module, or without its own copy of the class, cannot load it.
    """
    if WORKER_ONLY_MODULE not in sys.modules:
        module = types.ModuleType(WORKER_ONLY_MODULE)
        module.__dict__["__getattr__"] = _worker_only_attribute
        sys.modules[WORKER_ONLY_MODULE] = module
    classes = _worker_only.here()
    if "WorkerOnlyError" not in classes:
        classes["WorkerOnlyError"] = type(
            "WorkerOnlyError", (Exception,), {"__module__": WORKER_ONLY_MODULE}
        )
    raise classes["WorkerOnlyError"](message)


def return_exception(message: str) -> ScenarioError:
    """Return, not raise, an exception object."""
    return ScenarioError(message)


def return_remote_exception(pid: int, message: str) -> RemoteException:
    """Return a RemoteException that claims to come from ``pid``."""
    return RemoteException(pid, ScenarioError(message), "")


def return_unpicklable() -> object:
    """Return a value no serialiser can carry: a lock."""
    return threading.Lock()


class NeedsAbsentModule:
    """A callable whose pickle can only be loaded where a module exists.

    Unpickling it imports ``distref_conformance_absent_module``, which no
    process has, so a process receiving it cannot decode the call.
    """

    def __call__(self) -> str:
        return "ran"

    def __reduce__(self) -> tuple[Any, ...]:
        return (importlib.import_module, ("distref_conformance_absent_module",))


# ---------------------------------------------------- calling onwards


async def call_onwards(
    d: DistributedAPI, f: Callable[..., Any], pid: int, *args: Any
) -> Any:
    """From wherever this runs, ``remotecall_fetch(f, pid, *args)``."""
    return await d.remotecall_fetch(f, pid, *args)


def whoami(d: DistributedAPI) -> int:
    """``myid()`` of the process this runs on."""
    return d.myid()


# --------------------------------------------------------- log capture

_logged: PerProcess[list[str]] = PerProcess(list)
_capturing: set[int] = set()


class _Collector(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        # One handler may serve several processes sharing an interpreter:
        # the line belongs to the process whose task logged it.
        if os.getpid() in _capturing:
            _logged.here().append(f"{record.levelname}: {self.format(record)}")


_collector = _Collector()


def capture_log(log_name: str) -> None:
    """Collect, in this process, what is logged on ``log_name`` from now on.

    What an earlier ``capture_log`` in this process collected is dropped.
    """
    _logged.here().clear()
    _capturing.add(os.getpid())
    logger = logging.getLogger(log_name)
    if _collector not in logger.handlers:
        logger.addHandler(_collector)
    if logger.getEffectiveLevel() > logging.ERROR:
        logger.setLevel(logging.ERROR)


def logged() -> list[str]:
    """Everything collected in this process since its ``capture_log``."""
    return list(_logged.here())
