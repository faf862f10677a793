"""Backends: the implementations a conformance run checks.

A backend runs one scenario at a time in a fresh cluster and reports how it
ended by raising (or not).  It also says which capabilities it has, so that
scenarios needing, say, network partitions are skipped where they cannot be
staged, and whether it can run at all on this machine.

Two backends ship with distref: :class:`RefBackend` (the real runtime) and
:class:`SimBackend` (the simulator).  Each imports its package only when
asked, so a broken or unfinished ``ref`` makes its own column skip instead of
stopping the whole run.  Other implementations plug in through the
``distref.backends`` entry-point group; see :func:`discover_backends`.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Protocol, cast, runtime_checkable

import trio

from spec.api import DistributedAPI, Scenario

__all__ = [
    "BUILTIN_BACKENDS",
    "ENTRY_POINT_GROUP",
    "Backend",
    "BrokenBackend",
    "RefBackend",
    "ScenarioTimeout",
    "SimBackend",
    "discover_backends",
]

logger = logging.getLogger("conformance")

#: The entry-point group third-party backends register under.
ENTRY_POINT_GROUP = "distref.backends"

#: Names of the backends that ship with distref.
BUILTIN_BACKENDS = ("ref", "sim")

#: Extra time, beyond the scenario's own limit, for ``ref`` to start and tear
#: down its cluster: without a bound a hung shutdown would stall the run.
CLUSTER_GRACE = 30.0


class ScenarioTimeout(Exception):
    """A scenario (or its cluster) did not finish within its time limit."""

    def __init__(self, timeout: float, what: str = "scenario") -> None:
        super().__init__(f"{what} did not finish within {timeout:g} s")
        self.timeout = timeout


@runtime_checkable
class Backend(Protocol):
    """An implementation the conformance suite can run scenarios against.

    ``run`` is synchronous: it builds a fresh cluster, awaits the scenario
    against it with ``seed`` (backends without randomness ignore it), tears
    the cluster down, and raises whatever the scenario raised, or
    :class:`ScenarioTimeout` when ``timeout`` seconds pass first.
    """

    @property
    def name(self) -> str:
        """The backend's column name in reports, e.g. ``"ref"``."""
        ...

    @property
    def capabilities(self) -> frozenset[str]:
        """The capabilities scenarios may ask for, e.g. ``"faults.kill"``."""
        ...

    def available(self) -> str | None:
        """None if the backend can run here, else why it cannot."""
        ...

    def run(self, scenario: Scenario, *, seed: int, timeout: float) -> None:
        """Run ``scenario`` once in a fresh cluster; raise what it raised."""
        ...


class RefBackend:
    """The reference runtime: real worker processes on this machine.

    Scenarios receive the ``ref`` module itself as their ``DistributedAPI``.
    The runtime is not seeded, so ``seed`` is ignored.
    """

    name = "ref"
    capabilities = frozenset(
        {
            "blocking_calls",
            "faults.kill",
            "faults.suspend",
            "probes.connections",
            "probes.programs",
            "probes.raw_streams",
            "real_processes",
        }
    )

    def available(self) -> str | None:
        """Import ``ref`` and check it offers ``open_cluster``."""
        return _missing(_try_import("ref"), "ref", "open_cluster")

    def run(self, scenario: Scenario, *, seed: int, timeout: float) -> None:
        """``trio.run`` the scenario inside ``ref.open_cluster()``."""
        ref = importlib.import_module("ref")
        api = cast(DistributedAPI, ref)
        failures: list[Exception] = []
        timed_out = False

        async def main() -> None:
            nonlocal timed_out
            with trio.fail_after(timeout + CLUSTER_GRACE):
                async with ref.open_cluster():
                    with trio.move_on_after(timeout) as scope:
                        # Caught here, inside the cluster, so that its
                        # nursery does not wrap the error in an ExceptionGroup
                        # and turn a plain assertion failure into a group.
                        try:
                            await scenario(api)
                        except Exception as exc:
                            failures.append(exc)
                    timed_out = scope.cancelled_caught

        try:
            trio.run(main)
        except Exception as exc:
            # The scenario's own failure is the news; a cluster that then
            # failed to close in time is a footnote to it.
            if failures:
                failures[0].add_note(f"closing the cluster then raised {exc!r}")
            elif isinstance(exc, trio.TooSlowError):
                raise ScenarioTimeout(timeout + CLUSTER_GRACE, "cluster") from exc
            else:
                raise

        if failures:
            raise failures[0]
        if timed_out:
            raise ScenarioTimeout(timeout)


class SimBackend:
    """The deterministic simulator, driven through ``sim.run_scenario``.

    The simulator owns its ``trio.run`` (virtual clock, seeded scheduling),
    so this backend only forwards the scenario, the seed and the timeout.
    """

    name = "sim"
    capabilities = frozenset(
        {
            "faults.kill",
            "faults.partition",
            "faults.suspend",
            "probes.connections",
            "probes.programs",
            "probes.raw_streams",
            "virtual_time",
            "deterministic",
        }
    )

    def available(self) -> str | None:
        """Import ``sim`` and check it offers ``run_scenario``."""
        return _missing(_try_import("sim"), "sim", "run_scenario")

    def run(self, scenario: Scenario, *, seed: int, timeout: float) -> None:
        """Hand the scenario to ``sim.run_scenario``.

        ``timeout`` is in virtual seconds.  The simulator's own timeout
        (``sim.ScenarioTooSlow``) becomes :class:`ScenarioTimeout`; a
        ``trio.TooSlowError`` of the scenario's own stays what it is.
        """
        sim = importlib.import_module("sim")
        try:
            sim.run_scenario(scenario, seed=seed, timeout=timeout)
        except sim.ScenarioTooSlow as exc:
            raise ScenarioTimeout(exc.timeout, exc.what) from exc


class BrokenBackend:
    """Stands in for a third-party backend that could not be loaded.

    It is never available, so its column shows every behaviour as skipped
    with ``reason``, instead of the whole run crashing.
    """

    capabilities: frozenset[str] = frozenset()

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def available(self) -> str | None:
        """Always the reason loading failed."""
        return self.reason

    def run(self, scenario: Scenario, *, seed: int, timeout: float) -> None:
        """Never called by the runner; refuses loudly if it is."""
        raise RuntimeError(f"backend {self.name!r} is unavailable: {self.reason}")


def discover_backends() -> tuple[Backend, ...]:
    """The built-in backends, then every entry point of a new name.

    Entry points named like a backend already found are not loaded (the
    ``distref`` distribution itself declares ``ref`` and ``sim``, which are
    already here).  An entry point names a backend class (instantiated with
    no arguments) or a backend instance; one that cannot be loaded becomes a
    :class:`BrokenBackend` carrying the reason.
    """
    found: list[Backend] = [RefBackend(), SimBackend()]
    names = {backend.name for backend in found}

    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=_by_name):
        if point.name in names:
            continue

        backend = _load(point)
        if backend.name in names:
            logger.warning(
                "entry point %r gives backend %r, already loaded; ignoring it",
                point.name,
                backend.name,
            )
            continue

        found.append(backend)
        names.add(backend.name)

    return tuple(found)


def _by_name(point: EntryPoint) -> str:
    return point.name


def _load(point: EntryPoint) -> Backend:
    try:
        loaded: object = point.load()
        obj: object = loaded() if isinstance(loaded, type) else loaded
    except Exception as exc:
        reason = f"cannot load {point.value!r}: {type(exc).__name__}: {exc}"
        return BrokenBackend(point.name, reason)

    if not isinstance(obj, Backend):
        reason = f"entry point {point.value!r} gave {obj!r}, which is not a Backend"
        return BrokenBackend(point.name, reason)

    return obj


def _try_import(name: str) -> ModuleType | str:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        return f"cannot import {name}: {type(exc).__name__}: {exc}"


def _missing(module: ModuleType | str, name: str, attribute: str) -> str | None:
    if isinstance(module, str):
        return module
    if not hasattr(module, attribute):
        return f"{name} has no {attribute}() yet"
    return None
