"""The runner: judge every behaviour of the catalogue on every backend.

For one backend and one behaviour the status is, in this order of checks:

* ``not-implemented`` when the behaviour lists the backend in its
  ``not_implemented`` set.  Its scenarios are not run, so a known gap can
  never be reported as a pass;
* when no scenario covers the behaviour but the catalogue names pytest
  tests for it (``tests``, for what the API cannot observe), those tests
  decide on each backend they are named for (a plain list names ``ref``'s,
  a table each backend's), and the behaviour is ``skip`` elsewhere;
* ``error`` when no scenario covers the behaviour: that is a hole in the
  suite whatever the backend, so it is reported even on a backend that
  cannot run;
* ``skip`` when the backend is unavailable, or lacks a capability that one
  of the covering scenarios needs (unless the catalogue names tests for
  that backend, which then decide, as above);
* otherwise every covering scenario runs and the behaviour is ``pass`` if
  all passed, ``error`` if any raised something other than an
  ``AssertionError`` (or timed out), else ``fail``.

Each scenario runs at most once per backend, in this process, one after
another; its outcome is shared by every behaviour it covers.  A scenario
that names a behaviour ID the catalogue does not know is a
:class:`CatalogueMismatch`: it makes the run fail but does not stop it.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Protocol

from conformance.backends import Backend, ScenarioTimeout
from conformance.pytest_verifier import SKIPPED_MARK, TESTED_BACKEND, PytestVerifier
from conformance.registry import ScenarioSpec

__all__ = [
    "DEFAULT_TIMEOUT",
    "NO_SCENARIO",
    "BehaviourLike",
    "CatalogueMismatch",
    "Outcome",
    "Result",
    "RunReport",
    "Status",
    "find_mismatches",
    "named_tests",
    "run_scenario",
    "run_suite",
]

logger = logging.getLogger("conformance")

#: Seconds a scenario may run before it is reported as an error.
DEFAULT_TIMEOUT = 60.0

#: The detail of a behaviour that no scenario covers.
NO_SCENARIO = "no scenario covers this behaviour"

#: Traceback lines kept in an error's detail: this many from each end.
TRACEBACK_EDGE = 8


class Status(StrEnum):
    """How one behaviour fared on one backend."""

    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    NOT_IMPLEMENTED = "not-implemented"
    SKIP = "skip"


class BehaviourLike(Protocol):
    """What the runner needs of a catalogue entry (``spec.catalogue.Behaviour``).

    Written as a Protocol so the runner depends on the shape of the
    catalogue, not on its module, and tests can pass light stand-ins.
    """

    @property
    def id(self) -> str: ...

    @property
    def not_implemented(self) -> frozenset[str]: ...


@dataclass(frozen=True)
class Result:
    """The verdict on ``behaviour`` for ``backend``, with a human detail."""

    behaviour: str
    backend: str
    status: Status
    detail: str


@dataclass(frozen=True)
class Outcome:
    """How one scenario run ended: pass, fail or error, and why."""

    status: Status
    detail: str = ""


@dataclass(frozen=True)
class CatalogueMismatch:
    """Scenario ``scenario`` names behaviour IDs the catalogue lacks."""

    scenario: str
    unknown: tuple[str, ...]

    def __str__(self) -> str:
        ids = ", ".join(self.unknown)
        return f"scenario {self.scenario} names unknown behaviour IDs: {ids}"


@dataclass(frozen=True)
class RunReport:
    """Everything a conformance run found, ready for the report writers.

    ``results`` holds one entry per (backend, behaviour), backends in the
    order given and behaviours in catalogue order.  ``unavailable`` maps the
    name of each backend that could not run to its reason.
    """

    backends: tuple[str, ...]
    behaviours: tuple[str, ...]
    results: tuple[Result, ...]
    mismatches: tuple[CatalogueMismatch, ...] = ()
    unavailable: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0

    def result(self, behaviour: str, backend: str) -> Result:
        """The result for one cell of the behaviour-by-backend table."""
        for result in self.results:
            if result.behaviour == behaviour and result.backend == backend:
                return result
        raise KeyError((behaviour, backend))

    def counts(self, backend: str) -> dict[Status, int]:
        """How many behaviours got each status on ``backend`` (zeros included)."""
        tally = Counter(r.status for r in self.results if r.backend == backend)
        return {status: tally[status] for status in Status}

    @property
    def ok(self) -> bool:
        """True when nothing failed or errored and the catalogue matched."""
        bad = (Status.FAIL, Status.ERROR)
        return not self.mismatches and all(r.status not in bad for r in self.results)


def run_suite(
    behaviours: Sequence[BehaviourLike],
    scenarios: Sequence[ScenarioSpec],
    backends: Sequence[Backend],
    *,
    seed: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    only: str | None = None,
) -> RunReport:
    """Judge each behaviour (whose ID contains ``only``, if given) on each backend."""
    selected = [b for b in behaviours if only is None or only in b.id]
    coverage = _coverage(scenarios)
    results: list[Result] = []
    unavailable: dict[str, str] = {}

    for backend in backends:
        reason = _unavailability(backend)
        if reason is not None:
            logger.warning("backend %s is unavailable: %s", backend.name, reason)
            unavailable[backend.name] = reason

        outcomes: dict[str, Outcome] = {}
        for behaviour in selected:
            covering = coverage.get(behaviour.id, ())
            status, detail = _judge(
                behaviour, backend, covering, reason, outcomes, seed, timeout
            )
            results.append(Result(behaviour.id, backend.name, status, detail))

    return RunReport(
        backends=tuple(b.name for b in backends),
        behaviours=tuple(b.id for b in selected),
        results=tuple(results),
        mismatches=find_mismatches(behaviours, scenarios),
        unavailable=unavailable,
        seed=seed,
    )


def find_mismatches(
    behaviours: Iterable[BehaviourLike], scenarios: Iterable[ScenarioSpec]
) -> tuple[CatalogueMismatch, ...]:
    """Every scenario that names a behaviour ID missing from the catalogue."""
    known = {b.id for b in behaviours}
    found = []
    for spec in scenarios:
        unknown = tuple(i for i in spec.behaviours if i not in known)
        if unknown:
            found.append(CatalogueMismatch(spec.name, unknown))
    return tuple(found)


def run_scenario(
    backend: Backend, spec: ScenarioSpec, *, seed: int, timeout: float
) -> Outcome:
    """Run one scenario on one backend and classify how it ended."""
    logger.info("%s: running %s", backend.name, spec.name)
    try:
        backend.run(spec.func, seed=seed, timeout=max(timeout, spec.min_timeout))
    except Exception as exc:
        outcome = _classify(exc, spec)
    else:
        outcome = Outcome(Status.PASS)
    logger.info("%s: %s %s", backend.name, spec.name, outcome.status)
    return outcome


def _coverage(scenarios: Iterable[ScenarioSpec]) -> dict[str, list[ScenarioSpec]]:
    coverage: dict[str, list[ScenarioSpec]] = {}
    for spec in scenarios:
        for behaviour_id in spec.behaviours:
            coverage.setdefault(behaviour_id, []).append(spec)
    return coverage


def _unavailability(backend: Backend) -> str | None:
    try:
        return backend.available()
    except Exception as exc:
        return f"available() raised {type(exc).__name__}: {exc}"


def _judge(
    behaviour: BehaviourLike,
    backend: Backend,
    covering: Sequence[ScenarioSpec],
    unavailable: str | None,
    outcomes: dict[str, Outcome],
    seed: int,
    timeout: float,
) -> tuple[Status, str]:
    if backend.name in behaviour.not_implemented:
        return Status.NOT_IMPLEMENTED, f"marked not implemented on {backend.name}"
    named = named_tests(behaviour)
    if not covering and named:
        return _judge_by_tests(backend, named, unavailable)
    if not covering:
        return Status.ERROR, NO_SCENARIO
    if unavailable is not None:
        return Status.SKIP, f"backend unavailable: {unavailable}"

    missing = _missing_capabilities(backend, covering)
    if missing and named.get(backend.name):
        # A scenario that needs, say, virtual time cannot run here, but the
        # catalogue's own tests check the behaviour on this backend.
        return _judge_by_tests(backend, named, unavailable)
    if missing:
        return Status.SKIP, missing

    # Shared across behaviours so each scenario runs once per backend.
    for spec in covering:
        if spec.name not in outcomes:
            outcomes[spec.name] = run_scenario(
                backend, spec, seed=seed, timeout=timeout
            )
    return _combine([(spec.name, outcomes[spec.name]) for spec in covering])


def named_tests(behaviour: BehaviourLike) -> dict[str, tuple[str, ...]]:
    """The pytest nodes a catalogue entry names, per backend.

    ``tests_by_backend`` where the entry has it (``spec.catalogue``); an
    entry with a plain ``tests`` sequence names tests of ``ref``.
    """
    by_backend = getattr(behaviour, "tests_by_backend", None)
    if by_backend is not None:
        return {name: tuple(nodes) for name, nodes in by_backend.items() if nodes}
    tests = tuple(getattr(behaviour, "tests", ()))
    return {TESTED_BACKEND: tests} if tests else {}


def _judge_by_tests(
    backend: Backend, named: Mapping[str, tuple[str, ...]], unavailable: str | None
) -> tuple[Status, str]:
    tests = named.get(backend.name, ())
    if not tests:
        owners = "; ".join(
            f"{name}'s {', '.join(nodes)}" for name, nodes in sorted(named.items())
        )
        return Status.SKIP, f"observable only by other backends' tests: {owners}"
    if unavailable is not None:
        return Status.SKIP, f"backend unavailable: {unavailable}"

    verifier = PytestVerifier()
    missing = verifier.available()
    if missing is not None:
        return Status.SKIP, missing
    passed, detail = verifier.verify(tests)
    if detail.startswith(SKIPPED_MARK):
        return Status.SKIP, detail
    return (Status.PASS if passed else Status.FAIL), detail


def _missing_capabilities(backend: Backend, covering: Sequence[ScenarioSpec]) -> str:
    gaps = []
    for spec in covering:
        lacking = [need for need in spec.needs if need not in backend.capabilities]
        if lacking:
            gaps.append(f"{', '.join(lacking)} (needed by {spec.name})")
    if not gaps:
        return ""
    return f"{backend.name} lacks capability " + "; ".join(gaps)


def _combine(outcomes: Sequence[tuple[str, Outcome]]) -> tuple[Status, str]:
    bad = [(name, o) for name, o in outcomes if o.status is not Status.PASS]
    if not bad:
        return Status.PASS, ""

    errored = any(o.status is Status.ERROR for _, o in bad)
    detail = "\n".join(f"{name}: {o.detail}" for name, o in bad)
    return (Status.ERROR if errored else Status.FAIL), detail


def _classify(exc: Exception, spec: ScenarioSpec) -> Outcome:
    assertions = _assertions(exc)
    if assertions is not None:
        return Outcome(Status.FAIL, "; ".join(_assertion_text(a) for a in assertions))
    if isinstance(exc, ScenarioTimeout):
        return Outcome(Status.ERROR, f"{type(exc).__name__}: {exc}")
    return Outcome(Status.ERROR, _error_text(exc, spec))


def _assertions(exc: BaseException) -> list[AssertionError] | None:
    """The assertion failures ``exc`` consists of, or None if it is not only that.

    A trio nursery may deliver a scenario's assertion inside an
    ExceptionGroup; a group made only of assertions is still a failure.
    """
    if isinstance(exc, AssertionError):
        return [exc]
    if not isinstance(exc, BaseExceptionGroup):
        return None

    leaves: list[AssertionError] = []
    for inner in exc.exceptions:
        found = _assertions(inner)
        if found is None:
            return None
        leaves.extend(found)
    return leaves


def _assertion_text(exc: AssertionError) -> str:
    message = str(exc)
    if message:
        return message

    # A bare ``assert x`` has no message: say where it was instead.
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "assertion failed"
    last = frames[-1]
    return f"assertion failed at {last.filename}:{last.lineno}: {last.line}"


def _error_text(exc: Exception, spec: ScenarioSpec) -> str:
    head = f"{type(exc).__name__}: {exc}"
    tb = _from_scenario_frame(exc.__traceback__, spec)
    lines = "".join(traceback.format_tb(tb)).splitlines()
    if len(lines) > 2 * TRACEBACK_EDGE:
        lines = [*lines[:TRACEBACK_EDGE], "  ...", *lines[-TRACEBACK_EDGE:]]
    return "\n".join([head, *lines])


def _from_scenario_frame(
    tb: TracebackType | None, spec: ScenarioSpec
) -> TracebackType | None:
    """Drop the runner's and the backend's frames above the scenario's own.

    When the scenario's frame is not in the traceback (a backend that
    re-raises a copy, say) the whole traceback is kept.
    """
    code = getattr(spec.func, "__code__", None)
    cursor = tb
    while cursor is not None:
        if cursor.tb_frame.f_code is code:
            return cursor
        cursor = cursor.tb_next
    return tb
