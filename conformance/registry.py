"""The scenario registry: which scenario covers which behaviour.

A scenario is an ``async def name(d: DistributedAPI) -> None`` that sets up
what it needs through ``d``, acts, and asserts.  Decorating it with
:func:`scenario` records the behaviour IDs it covers (from
``spec/behaviours.toml``) and the backend capabilities it needs
(``faults.kill``, ``faults.partition``, ``virtual_time``...), so the runner
can judge each behaviour on each backend.

Scenarios are written against :mod:`spec.api` only; they never import
``ref`` or ``sim``, so any backend can run them.

Registration goes into a :class:`Registry`.  Scenario modules use the
module-level :func:`scenario`, which writes into :data:`DEFAULT`; tests build
their own ``Registry()`` so that fake scenarios never leak into a real run.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from spec.api import Scenario

__all__ = [
    "DEFAULT",
    "SCENARIO_PACKAGE",
    "Registry",
    "ScenarioImportError",
    "ScenarioSpec",
    "all_scenarios",
    "scenario",
]

#: The package whose modules hold the scenarios of a real run.
SCENARIO_PACKAGE = "conformance.scenarios"

S = TypeVar("S", bound=Scenario)


@dataclass(frozen=True)
class ScenarioSpec:
    """One registered scenario and what it claims.

    ``name`` is unique within a registry (module path below
    ``conformance.scenarios`` plus the function's qualified name),
    ``behaviours`` the behaviour IDs it covers, in declaration order,
    ``needs`` the capabilities a backend must have to run it, and
    ``min_timeout`` the seconds it is given at least, whatever the run's
    timeout (one that waits out the 60 s worker timeout on virtual time).
    """

    name: str
    func: Scenario
    behaviours: tuple[str, ...]
    needs: tuple[str, ...]
    min_timeout: float = 0.0


class ScenarioImportError(Exception):
    """A module of the scenario package could not be imported."""


class Registry:
    """A set of scenarios, keyed by name.

    Registering the same function again with the same claims is harmless
    (a module imported again re-runs its decorators).  A *different*
    function under a name already taken, or the same one with other claims,
    is an error: one of them would silently never count.
    """

    def __init__(self) -> None:
        self._scenarios: dict[str, ScenarioSpec] = {}

    def scenario(
        self,
        *behaviour_ids: str,
        needs: tuple[str, ...] = (),
        min_timeout: float = 0.0,
    ) -> Callable[[S], S]:
        """Decorate an async scenario so it is registered here, unchanged."""
        if not behaviour_ids:
            raise TypeError("a scenario must name at least one behaviour ID")
        _check_names("behaviour_ids", behaviour_ids)
        if isinstance(needs, str):
            # A bare string would be taken apart letter by letter.
            raise TypeError(
                f"needs={needs!r} must be a tuple of capability names, "
                f"e.g. needs=({needs!r},)"
            )
        _check_names("needs", needs)
        if isinstance(min_timeout, bool) or not isinstance(min_timeout, int | float):
            raise TypeError(f"min_timeout={min_timeout!r} must be a number of seconds")
        if not 0 <= min_timeout < float("inf"):
            raise ValueError(f"min_timeout={min_timeout!r} must be finite and >= 0")

        def register(func: S) -> S:
            self.add(
                ScenarioSpec(
                    name=_scenario_name(func),
                    func=func,
                    behaviours=tuple(behaviour_ids),
                    needs=tuple(needs),
                    min_timeout=float(min_timeout),
                )
            )
            return func

        return register

    def add(self, spec: ScenarioSpec) -> None:
        """Register ``spec``, refusing a second, different scenario of its name."""
        if not inspect.iscoroutinefunction(spec.func):
            raise TypeError(
                f"scenario {spec.name!r} must be an 'async def' function, "
                f"got {spec.func!r}"
            )

        existing = self._scenarios.get(spec.name)
        if existing is not None and existing.func is not spec.func:
            raise ValueError(
                f"two scenarios are named {spec.name!r}; rename one of them"
            )
        if existing is not None and existing != spec:
            # Stacked decorators would otherwise drop the outer one's claims.
            raise ValueError(
                f"scenario {spec.name!r} is registered twice with different "
                "claims; name every behaviour and need in one @scenario(...)"
            )

        self._scenarios[spec.name] = spec

    def scenarios(self) -> tuple[ScenarioSpec, ...]:
        """Every registered scenario, sorted by name."""
        return tuple(self._scenarios[name] for name in sorted(self._scenarios))


#: The registry that scenario modules and real runs use.
DEFAULT = Registry()


def scenario(
    *behaviour_ids: str, needs: tuple[str, ...] = (), min_timeout: float = 0.0
) -> Callable[[S], S]:
    """Register an ``async def name(d: DistributedAPI) -> None`` scenario.

    ``behaviour_ids`` are the IDs from ``spec/behaviours.toml`` that the
    scenario demonstrates (at least one); ``needs`` are the capabilities a
    backend must offer for it to run; ``min_timeout`` raises the run's
    timeout for this scenario to at least that many seconds.  The function
    is returned unchanged.
    """
    # Looked up at call time so tests can swap in a fresh DEFAULT.
    return DEFAULT.scenario(*behaviour_ids, needs=needs, min_timeout=min_timeout)


def all_scenarios(package: str = SCENARIO_PACKAGE) -> tuple[ScenarioSpec, ...]:
    """Import every module below ``package`` and return DEFAULT's scenarios.

    Subpackages are walked too.  A module that fails to import raises
    :class:`ScenarioImportError` naming it, rather than silently dropping
    the scenarios it holds.
    """
    root = _import(package)
    paths = getattr(root, "__path__", None)
    if paths is not None:
        for info in pkgutil.walk_packages(paths, prefix=f"{package}."):
            _import(info.name)

    return DEFAULT.scenarios()


def _import(module: str) -> object:
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise ScenarioImportError(
            f"cannot import scenario module {module!r}: {type(exc).__name__}: {exc}"
        ) from exc


def _scenario_name(func: Callable[..., object]) -> str:
    module = func.__module__.removeprefix(f"{SCENARIO_PACKAGE}.")
    return f"{module}.{func.__qualname__}"


def _check_names(what: str, values: tuple[str, ...]) -> None:
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise TypeError(f"{what} must be non-empty strings, got {value!r}")
