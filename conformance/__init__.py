"""The distref conformance suite: every documented behaviour, executable.

Scenarios (in :mod:`conformance.scenarios`) are async functions written
against :mod:`spec.api`, each registered with :func:`scenario` under the
behaviour IDs of ``spec/behaviours.toml`` that it demonstrates.  Backends
(:class:`Backend`: ``ref``, ``sim`` and any registered under the
``distref.backends`` entry-point group) run them; the runner judges each
behaviour on each backend and writes a table, JSON and JUnit XML.

Run it with ``python -m conformance``; ``--help`` lists the options.
"""

from conformance.backends import Backend, ScenarioTimeout
from conformance.registry import Registry, ScenarioSpec, all_scenarios, scenario

__all__ = [
    "Backend",
    "Registry",
    "ScenarioSpec",
    "ScenarioTimeout",
    "all_scenarios",
    "scenario",
]
