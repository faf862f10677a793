"""Tests of the conformance runner, its registry, backends, reports and CLI.

Everything here runs fake scenarios, registered into a fresh ``Registry``,
on fake backends, so the runner's verdicts are checked without ``ref`` or
``sim``.  The last tests look at the real catalogue and scenario package.
"""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import types
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

import conformance.backends as backends_module
import conformance.registry as registry_module
from conformance.backends import (
    BUILTIN_BACKENDS,
    ENTRY_POINT_GROUP,
    Backend,
    BrokenBackend,
    RefBackend,
    ScenarioTimeout,
    SimBackend,
    discover_backends,
)
from conformance.cli import load_catalogue, main
from conformance.registry import (
    Registry,
    ScenarioImportError,
    ScenarioSpec,
    all_scenarios,
)
from conformance.report import (
    format_details,
    format_summary,
    format_table,
    summary_line,
    to_json,
    write_json,
    write_junit,
)
from conformance.runner import (
    NO_SCENARIO,
    Result,
    RunReport,
    Status,
    named_tests,
    run_suite,
)
from spec.api import DistributedAPI, Scenario

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE_FILE = ROOT / "spec" / "catalogue.py"
SCENARIO_DIR = ROOT / "conformance" / "scenarios"


# --- fakes -----------------------------------------------------------------


@dataclass(frozen=True)
class FakeBehaviour:
    """A catalogue entry with just what the runner reads."""

    id: str
    not_implemented: frozenset[str] = frozenset()


@dataclass
class FakeBackend:
    """Runs scenarios under trio on a virtual clock and records each run.

    The scenario receives a sentinel object as its API: the fake scenarios
    here never call it.  Virtual time makes timeouts instant.
    """

    name: str
    capabilities: frozenset[str] = frozenset()
    reason: str | None = None
    runs: list[str] = field(default_factory=list)

    def available(self) -> str | None:
        return self.reason

    def run(self, scenario: Scenario, *, seed: int, timeout: float) -> None:
        self.runs.append(getattr(scenario, "__name__", repr(scenario)))

        async def main() -> None:
            with trio.move_on_after(timeout) as scope:
                await scenario(cast(DistributedAPI, object()))
            if scope.cancelled_caught:
                raise ScenarioTimeout(timeout)

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.fixture
def registry() -> Registry:
    return Registry()


def specs(registry: Registry) -> tuple[ScenarioSpec, ...]:
    return registry.scenarios()


def one_result(
    report: RunReport, behaviour: str = "b.one", backend: str = "fake"
) -> Result:
    return report.result(behaviour, backend)


def mixed_report(registry: Registry) -> tuple[RunReport, list[FakeBackend]]:
    """A run that produces every status at least once on backend ``a``."""

    @registry.scenario("b.pass")
    async def passes(d: DistributedAPI) -> None:
        pass

    @registry.scenario("b.fail")
    async def fails(d: DistributedAPI) -> None:
        raise AssertionError("expected 2, got 3")

    @registry.scenario("b.error")
    async def errors(d: DistributedAPI) -> None:
        raise ValueError("boom")

    @registry.scenario("b.skip", needs=("faults.partition",))
    async def partitions(d: DistributedAPI) -> None:
        pass

    @registry.scenario("b.ni")
    async def unimplemented(d: DistributedAPI) -> None:
        raise AssertionError("must never run on a")

    behaviours = [
        FakeBehaviour("b.pass"),
        FakeBehaviour("b.fail"),
        FakeBehaviour("b.error"),
        FakeBehaviour("b.skip"),
        FakeBehaviour("b.ni", frozenset({"a"})),
        FakeBehaviour("b.none"),
    ]
    fakes = [FakeBackend("a"), FakeBackend("bb", frozenset({"faults.partition"}))]
    report = run_suite(behaviours, specs(registry), fakes)
    return report, fakes


# --- statuses --------------------------------------------------------------


def test_a_scenario_that_returns_passes(registry: Registry) -> None:
    @registry.scenario("b.one")
    async def fine(d: DistributedAPI) -> None:
        await trio.sleep(0)

    report = run_suite([FakeBehaviour("b.one")], specs(registry), [FakeBackend("fake")])

    assert one_result(report).status is Status.PASS
    assert report.ok


def test_an_assertion_error_is_a_fail_with_its_message(registry: Registry) -> None:
    @registry.scenario("b.one")
    async def wrong(d: DistributedAPI) -> None:
        raise AssertionError("fetch returned 3, expected 2")

    report = run_suite([FakeBehaviour("b.one")], specs(registry), [FakeBackend("fake")])

    result = one_result(report)
    assert result.status is Status.FAIL
    assert "fetch returned 3, expected 2" in result.detail
    assert not report.ok


def test_a_bare_assert_fail_says_where_it_failed(
    scenario_package: str, tmp_path: Path
) -> None:
    # Written to a module of its own: pytest rewrites the asserts of test
    # modules, which would hide what a bare assert looks like in real use.
    root = tmp_path / scenario_package
    (root / "__init__.py").write_text("")
    (root / "bare.py").write_text(BARE_ASSERT)
    scenarios = all_scenarios(scenario_package)

    report = run_suite([FakeBehaviour("b.one")], scenarios, [FakeBackend("fake")])

    result = one_result(report)
    assert result.status is Status.FAIL
    assert "assert value == 2" in result.detail
    assert "bare.py:7" in result.detail


BARE_ASSERT = """
from conformance.registry import scenario

@scenario("b.one")
async def bare(d):
    value = 3
    assert value == 2
"""


def test_any_other_exception_is_an_error_with_type_and_traceback(
    registry: Registry,
) -> None:
    @registry.scenario("b.one")
    async def broken_scenario(d: DistributedAPI) -> None:
        raise KeyError("missing-key")

    report = run_suite([FakeBehaviour("b.one")], specs(registry), [FakeBackend("fake")])

    result = one_result(report)
    assert result.status is Status.ERROR
    assert "KeyError: 'missing-key'" in result.detail
    assert "in broken_scenario" in result.detail
    # The runner's own frames are noise: the traceback starts at the scenario.
    assert "in run_scenario" not in result.detail
    assert "in run_suite" not in result.detail


def test_a_timeout_is_an_error(registry: Registry) -> None:
    @registry.scenario("b.one")
    async def hangs(d: DistributedAPI) -> None:
        await trio.sleep_forever()

    report = run_suite(
        [FakeBehaviour("b.one")], specs(registry), [FakeBackend("fake")], timeout=5
    )

    result = one_result(report)
    assert result.status is Status.ERROR
    assert "ScenarioTimeout" in result.detail
    assert "5 s" in result.detail


def test_a_scenarios_min_timeout_raises_the_runs_timeout(registry: Registry) -> None:
    @registry.scenario("b.one", min_timeout=100)
    async def waits_long(d: DistributedAPI) -> None:
        await trio.sleep(90)

    @registry.scenario("b.two", min_timeout=100)
    async def waits_too_long(d: DistributedAPI) -> None:
        await trio.sleep(110)

    behaviours = [FakeBehaviour("b.one"), FakeBehaviour("b.two")]
    report = run_suite(behaviours, specs(registry), [FakeBackend("fake")], timeout=5)

    assert one_result(report).status is Status.PASS
    late = one_result(report, "b.two")
    assert late.status is Status.ERROR and "100 s" in late.detail


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan")])
def test_a_min_timeout_must_be_finite_and_not_negative(
    registry: Registry, bad: float
) -> None:
    with pytest.raises(ValueError, match="min_timeout"):
        registry.scenario("b.one", min_timeout=bad)


def test_a_group_of_assertions_is_a_fail_but_a_mixed_group_an_error(
    registry: Registry,
) -> None:
    @registry.scenario("b.one")
    async def grouped_assertions(d: DistributedAPI) -> None:
        raise ExceptionGroup("g", [AssertionError("first"), AssertionError("second")])

    @registry.scenario("b.two")
    async def grouped_mixture(d: DistributedAPI) -> None:
        raise ExceptionGroup("g", [AssertionError("first"), OSError("reset")])

    behaviours = [FakeBehaviour("b.one"), FakeBehaviour("b.two")]
    report = run_suite(behaviours, specs(registry), [FakeBackend("fake")])

    assert one_result(report, "b.one").status is Status.FAIL
    assert "first" in one_result(report, "b.one").detail
    assert "second" in one_result(report, "b.one").detail
    assert one_result(report, "b.two").status is Status.ERROR


def test_a_not_implemented_behaviour_is_never_run(registry: Registry) -> None:
    @registry.scenario("b.one")
    async def would_fail(d: DistributedAPI) -> None:
        raise AssertionError("ran")

    skipped, judged = FakeBackend("skipped"), FakeBackend("judged")
    behaviours = [FakeBehaviour("b.one", frozenset({"skipped"}))]
    report = run_suite(behaviours, specs(registry), [skipped, judged])

    assert one_result(report, backend="skipped").status is Status.NOT_IMPLEMENTED
    assert skipped.runs == []
    # The same scenario does run, and fail, where it is not marked.
    assert one_result(report, backend="judged").status is Status.FAIL
    assert judged.runs == ["would_fail"]


def test_a_behaviour_without_a_scenario_is_an_error(registry: Registry) -> None:
    unavailable = FakeBackend("gone", reason="not installed")
    behaviours = [FakeBehaviour("b.one"), FakeBehaviour("b.two", frozenset({"fake"}))]
    report = run_suite(behaviours, specs(registry), [FakeBackend("fake"), unavailable])

    assert one_result(report).status is Status.ERROR
    assert one_result(report).detail == NO_SCENARIO
    # A hole in the suite shows even where the backend cannot run.
    assert one_result(report, backend="gone").status is Status.ERROR
    # Marking it not implemented is the only way to leave it uncovered.
    assert one_result(report, "b.two").status is Status.NOT_IMPLEMENTED
    assert one_result(report, "b.two", "gone").status is Status.ERROR


def test_an_unavailable_backend_skips_with_its_reason(registry: Registry) -> None:
    @registry.scenario("b.one")
    async def fine(d: DistributedAPI) -> None:
        pass

    gone = FakeBackend("fake", reason="cannot import fake: no module")
    report = run_suite([FakeBehaviour("b.one")], specs(registry), [gone])

    result = one_result(report)
    assert result.status is Status.SKIP
    assert "cannot import fake: no module" in result.detail
    assert gone.runs == []
    assert report.unavailable == {"fake": "cannot import fake: no module"}
    assert report.ok


def test_a_missing_capability_skips_and_names_it(registry: Registry) -> None:
    @registry.scenario("b.one")
    async def plain(d: DistributedAPI) -> None:
        pass

    @registry.scenario("b.one", needs=("faults.partition",))
    async def partitioned(d: DistributedAPI) -> None:
        pass

    lacking = FakeBackend("fake", frozenset({"faults.kill"}))
    able = FakeBackend("able", frozenset({"faults.partition"}))
    report = run_suite([FakeBehaviour("b.one")], specs(registry), [lacking, able])

    result = one_result(report)
    assert result.status is Status.SKIP
    assert "faults.partition" in result.detail
    assert "partitioned" in result.detail
    assert lacking.runs == []
    assert one_result(report, backend="able").status is Status.PASS
    assert sorted(able.runs) == ["partitioned", "plain"]


@dataclass(frozen=True)
class BehaviourWithTests:
    """A catalogue entry that also names pytest nodes checking it on ref."""

    id: str
    tests: tuple[str, ...]
    not_implemented: frozenset[str] = frozenset()


def test_refs_own_tests_decide_where_its_scenario_cannot_run(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scenario needing virtual time skips on ref; the named tests judge."""
    asked: list[tuple[str, ...]] = []

    def verify(self: object, nodes: tuple[str, ...]) -> tuple[bool, str]:
        asked.append(tuple(nodes))
        return False, "pytest tests/test_x.py::test_y: 1 failed"

    monkeypatch.setattr("conformance.runner.PytestVerifier.verify", verify)

    @registry.scenario("b.one", needs=("virtual_time",))
    async def timed(d: DistributedAPI) -> None:
        pass

    ref = FakeBackend("ref")
    other = FakeBackend("other")
    simulated = FakeBackend("sim", frozenset({"virtual_time"}))
    behaviour = BehaviourWithTests("b.one", ("tests/test_x.py::test_y",))
    report = run_suite([behaviour], specs(registry), [ref, other, simulated])

    # The verifier's verdict (a failure here) is the ref column's status.
    assert one_result(report, backend="ref").status is Status.FAIL
    assert asked == [("tests/test_x.py::test_y",)]
    assert ref.runs == []
    assert one_result(report, backend="other").status is Status.SKIP
    assert one_result(report, backend="sim").status is Status.PASS


@dataclass(frozen=True)
class BehaviourWithTestsPerBackend:
    """A catalogue entry naming pytest nodes for each of several backends."""

    id: str
    tests_by_backend: dict[str, tuple[str, ...]]
    not_implemented: frozenset[str] = frozenset()


def test_tests_named_per_backend_judge_each_backend_with_its_own(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No scenario: ref and sim each run their own nodes; others skip."""
    asked: list[tuple[str, ...]] = []

    def verify(self: object, nodes: tuple[str, ...]) -> tuple[bool, str]:
        asked.append(tuple(nodes))
        passed = nodes == ("tests/test_s.py::test_s",)
        return passed, f"pytest {' '.join(nodes)}: {'1 passed' if passed else 'bad'}"

    monkeypatch.setattr("conformance.runner.PytestVerifier.verify", verify)
    behaviour = BehaviourWithTestsPerBackend(
        "b.one",
        {"ref": ("tests/test_r.py::test_r",), "sim": ("tests/test_s.py::test_s",)},
    )
    backends = [FakeBackend("ref"), FakeBackend("sim"), FakeBackend("other")]
    report = run_suite([behaviour], specs(registry), backends)

    assert one_result(report, backend="ref").status is Status.FAIL
    assert one_result(report, backend="sim").status is Status.PASS
    skipped = one_result(report, backend="other")
    assert skipped.status is Status.SKIP
    assert "tests/test_s.py::test_s" in skipped.detail
    assert sorted(asked) == [("tests/test_r.py::test_r",), ("tests/test_s.py::test_s",)]


def test_a_backend_lacking_a_capability_is_judged_by_its_own_named_tests(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, ...]] = []

    def verify(self: object, nodes: tuple[str, ...]) -> tuple[bool, str]:
        asked.append(tuple(nodes))
        return True, "pytest: 1 passed"

    monkeypatch.setattr("conformance.runner.PytestVerifier.verify", verify)

    @registry.scenario("b.one", needs=("real_processes",))
    async def real(d: DistributedAPI) -> None:
        pass

    behaviour = BehaviourWithTestsPerBackend(
        "b.one", {"sim": ("tests/test_s.py::test_s",)}
    )
    able = FakeBackend("ref", frozenset({"real_processes"}))
    simulated = FakeBackend("sim")
    report = run_suite([behaviour], specs(registry), [able, simulated])

    assert one_result(report, backend="ref").status is Status.PASS
    assert able.runs == ["real"]
    assert one_result(report, backend="sim").status is Status.PASS
    assert simulated.runs == []
    assert asked == [("tests/test_s.py::test_s",)]


def test_each_scenario_runs_once_per_backend_whatever_it_covers(
    registry: Registry,
) -> None:
    @registry.scenario("b.one", "b.two", "b.three")
    async def covers_three(d: DistributedAPI) -> None:
        pass

    fakes = [FakeBackend("fake"), FakeBackend("other")]
    behaviours = [FakeBehaviour(i) for i in ("b.one", "b.two", "b.three")]
    report = run_suite(behaviours, specs(registry), fakes)

    assert [f.runs for f in fakes] == [["covers_three"], ["covers_three"]]
    assert {r.status for r in report.results} == {Status.PASS}


def test_one_failing_scenario_fails_a_behaviour_others_pass(
    registry: Registry,
) -> None:
    @registry.scenario("b.one")
    async def good(d: DistributedAPI) -> None:
        pass

    @registry.scenario("b.one")
    async def bad(d: DistributedAPI) -> None:
        raise AssertionError("bad result")

    report = run_suite([FakeBehaviour("b.one")], specs(registry), [FakeBackend("fake")])

    result = one_result(report)
    assert result.status is Status.FAIL
    assert "bad: bad result" in result.detail
    assert "good" not in result.detail


def test_an_error_outranks_a_fail_among_a_behaviours_scenarios(
    registry: Registry,
) -> None:
    @registry.scenario("b.one")
    async def wrong(d: DistributedAPI) -> None:
        raise AssertionError("wrong value")

    @registry.scenario("b.one")
    async def crashed(d: DistributedAPI) -> None:
        raise OSError("connection reset")

    report = run_suite([FakeBehaviour("b.one")], specs(registry), [FakeBackend("fake")])

    result = one_result(report)
    assert result.status is Status.ERROR
    assert "wrong value" in result.detail
    assert "OSError: connection reset" in result.detail


def test_a_scenario_naming_an_unknown_behaviour_is_a_mismatch(
    registry: Registry,
) -> None:
    @registry.scenario("b.one", "b.typo")
    async def misnamed(d: DistributedAPI) -> None:
        pass

    report = run_suite([FakeBehaviour("b.one")], specs(registry), [FakeBackend("fake")])

    assert one_result(report).status is Status.PASS
    assert [m.unknown for m in report.mismatches] == [("b.typo",)]
    assert not report.ok
    assert "b.typo" in format_summary(report)
    assert to_json(report)["summary"]["mismatches"]  # type: ignore[index]


def test_only_judges_behaviours_whose_id_contains_it(registry: Registry) -> None:
    @registry.scenario("calls.remotecall")
    async def call(d: DistributedAPI) -> None:
        pass

    @registry.scenario("channels.put")
    async def channel(d: DistributedAPI) -> None:
        pass

    fake = FakeBackend("fake")
    behaviours = [FakeBehaviour("calls.remotecall"), FakeBehaviour("channels.put")]
    report = run_suite(behaviours, specs(registry), [fake], only="calls")

    assert report.behaviours == ("calls.remotecall",)
    assert fake.runs == ["call"]


# --- reports ---------------------------------------------------------------


def test_every_status_appears_in_the_mixed_run(registry: Registry) -> None:
    report, fakes = mixed_report(registry)

    statuses = {r.behaviour: r.status for r in report.results if r.backend == "a"}
    assert statuses == {
        "b.pass": Status.PASS,
        "b.fail": Status.FAIL,
        "b.error": Status.ERROR,
        "b.skip": Status.SKIP,
        "b.ni": Status.NOT_IMPLEMENTED,
        "b.none": Status.ERROR,
    }
    assert "unimplemented" not in fakes[0].runs
    assert "unimplemented" in fakes[1].runs


def test_the_json_report_has_exactly_the_agreed_shape(
    registry: Registry, tmp_path: Path
) -> None:
    report, _ = mixed_report(registry)
    path = tmp_path / "report.json"

    write_json(report, path)
    data = json.loads(path.read_text(encoding="utf-8"))

    assert set(data) <= {"results", "summary"}
    assert len(data["results"]) == 6 * 2
    for entry in data["results"]:
        assert set(entry) == {"behaviour", "backend", "status", "detail"}
        assert all(isinstance(value, str) for value in entry.values())
        assert entry["status"] in {
            "pass",
            "fail",
            "error",
            "not-implemented",
            "skip",
        }
    fail = next(e for e in data["results"] if e["behaviour"] == "b.fail")
    assert fail["backend"] == "a"
    assert fail["status"] == "fail"
    assert fail["detail"].endswith("fails: expected 2, got 3")
    assert data["summary"]["backends"]["a"]["not-implemented"] == 1


def test_the_junit_report_parses_and_its_counts_match(
    registry: Registry, tmp_path: Path
) -> None:
    report, _ = mixed_report(registry)
    path = tmp_path / "junit.xml"

    write_junit(report, path)
    root = ET.parse(path).getroot()

    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"a", "bb"}
    suite = suites["a"]
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == list(report.behaviours)
    assert suite.get("tests") == "6"
    assert suite.get("failures") == "1"
    assert suite.get("errors") == "2"
    assert suite.get("skipped") == "2"
    assert len(suite.findall("testcase/failure")) == 1
    assert len(suite.findall("testcase/error")) == 2
    assert len(suite.findall("testcase/skipped")) == 2
    assert root.get("tests") == "12"
    skipped = next(c.find("skipped") for c in cases if c.get("name") == "b.ni")
    assert skipped is not None
    assert "not implemented" in (skipped.get("message") or "")


def test_the_junit_report_survives_control_characters(tmp_path: Path) -> None:
    dirty = RunReport(
        backends=("fake",),
        behaviours=("b.one",),
        results=(Result("b.one", "fake", Status.ERROR, "bad \x00\x1b byte"),),
    )
    path = tmp_path / "junit.xml"

    write_junit(dirty, path)

    error = ET.parse(path).getroot().find("testsuite/testcase/error")
    assert error is not None
    assert "bad" in (error.text or "")


def test_the_table_is_aligned_with_one_row_per_behaviour(registry: Registry) -> None:
    report, _ = mixed_report(registry)

    lines = format_table(report).splitlines()

    assert lines[0].split() == ["behaviour", "a", "bb"]
    assert [line.split()[0] for line in lines[1:]] == list(report.behaviours)
    row = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert row["b.ni"] == ["N-I", "FAIL"]
    assert row["b.skip"] == ["SKIP", "PASS"]
    assert row["b.error"] == ["ERROR", "ERROR"]
    # Every cell of a column starts at the same offset.
    starts = {line.index(line.split()[1], len(line.split()[0])) for line in lines}
    assert len(starts) == 1
    assert "\x1b[" not in format_table(report)
    assert "\x1b[" in format_table(report, colour=True)


def test_the_details_explain_each_failure_and_list_holes_once(
    registry: Registry,
) -> None:
    report, _ = mixed_report(registry)

    details = format_details(report)

    assert "FAIL b.fail on a" in details
    assert "expected 2, got 3" in details
    assert "ValueError: boom" in details
    assert details.count("b.none") == 1
    assert f"{NO_SCENARIO} (1)" in details
    assert "b.pass" not in details


def test_the_summary_line_counts_every_status(registry: Registry) -> None:
    report, _ = mixed_report(registry)

    assert summary_line(report, "a") == (
        "a: 1 pass, 1 fail, 2 error, 1 not-implemented, 1 skip"
    )
    assert format_summary(report).splitlines()[-1].startswith("FAILED")


# --- command line ----------------------------------------------------------


def run_main(registry: Registry, *argv: str, fakes: list[FakeBackend]) -> int:
    behaviours = sorted({i for s in specs(registry) for i in s.behaviours})
    return main(
        list(argv),
        backends=fakes,
        behaviours=[FakeBehaviour(i) for i in behaviours],
        scenarios=specs(registry),
        stdout=io.StringIO(),
    )


def test_main_exits_0_when_nothing_failed(registry: Registry) -> None:
    @registry.scenario("b.one")
    async def fine(d: DistributedAPI) -> None:
        pass

    @registry.scenario("b.two", needs=("virtual_time",))
    async def virtual(d: DistributedAPI) -> None:
        raise AssertionError("skipped, never run")

    assert run_main(registry, fakes=[FakeBackend("fake")]) == 0


@pytest.mark.parametrize("raised", [AssertionError("no"), RuntimeError("no")])
def test_main_exits_1_on_a_fail_or_an_error(
    registry: Registry, raised: Exception
) -> None:
    @registry.scenario("b.one")
    async def fine(d: DistributedAPI) -> None:
        pass

    @registry.scenario("b.two")
    async def bad(d: DistributedAPI) -> None:
        raise raised

    assert run_main(registry, fakes=[FakeBackend("fake")]) == 1


def test_main_exits_1_on_a_catalogue_mismatch(registry: Registry) -> None:
    @registry.scenario("b.one")
    async def fine(d: DistributedAPI) -> None:
        pass

    out = io.StringIO()
    status = main(
        [],
        backends=[FakeBackend("fake")],
        behaviours=[],
        scenarios=specs(registry),
        stdout=out,
    )

    assert status == 1
    assert "catalogue mismatch" in out.getvalue()


@pytest.mark.parametrize(
    "argv",
    [["--backend", "nosuch"], ["--timeout", "0"], ["--timeout", "x"], ["--seed", "y"]],
)
def test_main_exits_2_on_bad_arguments(registry: Registry, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_main(registry, *argv, fakes=[FakeBackend("fake")])

    assert exit_info.value.code == 2


@pytest.mark.parametrize("option", ["--json", "--junit"])
@pytest.mark.parametrize("where", ["folder", "missing/report.xml"])
def test_main_refuses_a_report_path_it_cannot_write_before_running(
    registry: Registry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    where: str,
) -> None:
    ran: list[str] = []

    @registry.scenario("b.one")
    async def fine(d: DistributedAPI) -> None:
        ran.append("b.one")

    (tmp_path / "folder").mkdir()
    target = tmp_path / where
    with pytest.raises(SystemExit) as exit_info:
        run_main(registry, option, str(target), fakes=[FakeBackend("fake")])

    assert exit_info.value.code == 2
    assert ran == []
    assert f"{option}: " in capsys.readouterr().err


def test_main_runs_only_the_chosen_backend_and_writes_reports(
    registry: Registry, tmp_path: Path
) -> None:
    @registry.scenario("b.one")
    async def fine(d: DistributedAPI) -> None:
        pass

    chosen, ignored = FakeBackend("chosen"), FakeBackend("ignored")
    json_path, junit_path = tmp_path / "r.json", tmp_path / "r.xml"
    argv = ["--backend", "chosen", "--json", str(json_path), "--junit", str(junit_path)]

    assert run_main(registry, *argv, fakes=[chosen, ignored]) == 0
    assert chosen.runs == ["fine"]
    assert ignored.runs == []
    results = json.loads(json_path.read_text(encoding="utf-8"))["results"]
    assert [r["backend"] for r in results] == ["chosen"]
    assert ET.parse(junit_path).getroot().get("tests") == "1"


def test_python_m_conformance_rejects_unknown_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conformance", "--no-such-option"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert "--no-such-option" in done.stderr


# --- registry --------------------------------------------------------------


def test_the_decorator_returns_the_function_and_records_the_claims(
    registry: Registry,
) -> None:
    async def covers(d: DistributedAPI) -> None:
        pass

    decorated = registry.scenario("b.one", "b.two", needs=("faults.kill",))(covers)

    assert decorated is covers
    (spec,) = registry.scenarios()
    assert spec.func is covers
    assert spec.behaviours == ("b.one", "b.two")
    assert spec.needs == ("faults.kill",)
    assert spec.name.endswith("covers")


@pytest.mark.parametrize(
    "register",
    [
        lambda r: r.scenario(),
        lambda r: r.scenario(""),
        lambda r: r.scenario("b.one", needs="faults.kill"),
    ],
)
def test_the_decorator_rejects_malformed_claims(
    registry: Registry, register: Callable[[Registry], object]
) -> None:
    with pytest.raises(TypeError):
        register(registry)


def test_the_decorator_rejects_a_synchronous_function(registry: Registry) -> None:
    def not_async(d: DistributedAPI) -> None:
        pass

    with pytest.raises(TypeError, match="async def"):
        registry.scenario("b.one")(not_async)  # type: ignore[type-var]


def test_two_different_scenarios_cannot_share_a_name(registry: Registry) -> None:
    async def first(d: DistributedAPI) -> None:
        pass

    async def second(d: DistributedAPI) -> None:
        pass

    second.__qualname__ = first.__qualname__
    registry.scenario("b.one")(first)
    registry.scenario("b.one")(first)  # the same function again is harmless

    with pytest.raises(ValueError, match="rename"):
        registry.scenario("b.one")(second)


def test_stacked_decorators_are_refused_rather_than_losing_claims(
    registry: Registry,
) -> None:
    async def stacked(d: DistributedAPI) -> None:
        pass

    registry.scenario("b.one")(stacked)

    with pytest.raises(ValueError, match="one @scenario"):
        registry.scenario("b.two")(stacked)


@pytest.fixture
def scenario_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh importable package name, with DEFAULT swapped for a new registry."""
    name = f"fake_scenarios_{uuid.uuid4().hex}"
    (tmp_path / name).mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "DEFAULT", Registry())
    yield name
    for module in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[module]


SCENARIO_MODULE = """
from conformance.registry import scenario

@scenario({ids})
async def {name}(d):
    pass
"""


def test_all_scenarios_imports_every_module_and_sorts_by_name(
    scenario_package: str, tmp_path: Path
) -> None:
    root = tmp_path / scenario_package
    (root / "__init__.py").write_text("")
    (root / "zeta.py").write_text(SCENARIO_MODULE.format(ids='"b.z"', name="last"))
    (root / "alpha.py").write_text(SCENARIO_MODULE.format(ids='"b.a"', name="first"))
    (root / "nested").mkdir()
    (root / "nested" / "__init__.py").write_text("")
    (root / "nested" / "mid.py").write_text(
        SCENARIO_MODULE.format(ids='"b.m", "b.n"', name="middle")
    )

    found = all_scenarios(scenario_package)

    names = [s.name for s in found]
    assert names == sorted(names)
    assert [s.func.__name__ for s in found] == ["first", "middle", "last"]
    assert found[1].behaviours == ("b.m", "b.n")


def test_a_scenario_module_that_fails_to_import_is_reported(
    scenario_package: str, tmp_path: Path
) -> None:
    root = tmp_path / scenario_package
    (root / "__init__.py").write_text("")
    (root / "broken.py").write_text("raise ImportError('half written')\n")

    with pytest.raises(ScenarioImportError, match="broken"):
        all_scenarios(scenario_package)


# --- backends --------------------------------------------------------------


def fake_module(name: str, **attributes: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


@asynccontextmanager
async def fake_open_cluster() -> AsyncIterator[None]:
    # A nursery around the body, as a real cluster has, so that an error
    # escaping the body would arrive wrapped in an ExceptionGroup.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
        yield
        nursery.cancel_scope.cancel()


@pytest.fixture
def fake_ref(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = fake_module("ref", open_cluster=fake_open_cluster)
    monkeypatch.setitem(sys.modules, "ref", module)
    return module


def test_ref_backend_hands_the_ref_module_to_the_scenario(
    fake_ref: types.ModuleType,
) -> None:
    seen: list[object] = []

    async def scenario(d: DistributedAPI) -> None:
        seen.append(d)

    assert RefBackend().available() is None
    RefBackend().run(scenario, seed=0, timeout=5)

    assert seen == [fake_ref]


def test_ref_backend_raises_a_plain_assertion_not_a_group(
    fake_ref: types.ModuleType,
) -> None:
    async def scenario(d: DistributedAPI) -> None:
        raise AssertionError("plain")

    with pytest.raises(AssertionError, match="plain") as info:
        RefBackend().run(scenario, seed=0, timeout=5)

    assert type(info.value) is AssertionError


def test_ref_backend_times_out_but_keeps_a_scenarios_own_timeout_error(
    fake_ref: types.ModuleType,
) -> None:
    async def hangs(d: DistributedAPI) -> None:
        await trio.sleep_forever()

    async def own_deadline(d: DistributedAPI) -> None:
        with trio.fail_after(0.01):
            await trio.sleep_forever()

    with pytest.raises(ScenarioTimeout) as info:
        RefBackend().run(hangs, seed=0, timeout=0.05)
    assert info.value.timeout == 0.05

    with pytest.raises(trio.TooSlowError):
        RefBackend().run(own_deadline, seed=0, timeout=5)


def test_ref_backend_is_unavailable_without_open_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ref", fake_module("ref"))

    assert RefBackend().available() == "ref has no open_cluster() yet"


def test_sim_backend_reports_why_it_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "sim", fake_module("sim"))
    assert SimBackend().available() == "sim has no run_scenario() yet"

    # A None entry in sys.modules makes the import itself fail.
    monkeypatch.setitem(sys.modules, "sim", None)
    reason = SimBackend().available()
    assert reason is not None
    assert reason.startswith("cannot import sim")


def test_sim_backend_forwards_scenario_seed_and_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[object, dict[str, Any]]] = []

    def run_scenario(scenario: object, **kwargs: Any) -> None:
        calls.append((scenario, kwargs))

    async def scenario(d: DistributedAPI) -> None:
        pass

    monkeypatch.setitem(
        sys.modules, "sim", fake_module("sim", run_scenario=run_scenario)
    )

    assert SimBackend().available() is None
    SimBackend().run(scenario, seed=7, timeout=3.0)

    assert calls == [(scenario, {"seed": 7, "timeout": 3.0})]


def test_builtin_backends_satisfy_the_protocol() -> None:
    for backend in (RefBackend(), SimBackend(), BrokenBackend("x", "why")):
        assert isinstance(backend, Backend)
    assert "faults.partition" in SimBackend().capabilities
    assert "faults.partition" not in RefBackend().capabilities


THIRD_PARTY = """
class Backend:
    name = "third"
    capabilities = frozenset({"faults.kill"})

    def available(self):
        return None

    def run(self, scenario, *, seed, timeout):
        pass
"""


def test_entry_points_add_backends_deduplicated_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = f"third_party_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [
        EntryPoint("ref", "conformance.backends:RefBackend", ENTRY_POINT_GROUP),
        EntryPoint("sim", "conformance.backends:SimBackend", ENTRY_POINT_GROUP),
        EntryPoint("third", f"{module}:Backend", ENTRY_POINT_GROUP),
        EntryPoint("alias", "conformance.backends:SimBackend", ENTRY_POINT_GROUP),
        EntryPoint("lost", "no_such_module_anywhere:Thing", ENTRY_POINT_GROUP),
    ]

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        assert group == ENTRY_POINT_GROUP
        return points

    monkeypatch.setattr(backends_module, "entry_points", fake_entry_points)

    found = {b.name: b for b in discover_backends()}

    assert sorted(found) == ["lost", "ref", "sim", "third"]
    assert found["third"].available() is None
    assert isinstance(found["lost"], BrokenBackend)
    assert "no_such_module_anywhere" in (found["lost"].available() or "")


# --- the real catalogue and scenarios -------------------------------------


def test_scenarios_never_import_a_backend() -> None:
    """Scenarios see only spec.api, so every backend can run them."""
    offenders = []
    for path in sorted(SCENARIO_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            if any(n.split(".")[0] in BUILTIN_BACKENDS for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")

    assert not offenders, "scenarios importing ref or sim: " + ", ".join(offenders)


def test_every_behaviour_has_a_scenario_or_is_marked() -> None:
    """Each behaviour has a scenario, names pytest tests, or is marked."""
    covered = {i for spec in all_scenarios() for i in spec.behaviours}
    everywhere = frozenset(BUILTIN_BACKENDS)

    uncovered = [
        b.id
        for b in load_catalogue()
        if b.id not in covered
        and not named_tests(b)
        and not everywhere <= b.not_implemented
    ]

    assert not uncovered, (
        f"{len(uncovered)} behaviours have no scenario and are not marked "
        f"not-implemented on {', '.join(BUILTIN_BACKENDS)}:\n" + "\n".join(uncovered)
    )


def test_catalogue_test_nodes_exist() -> None:
    """Every pytest node a behaviour names is a test function in tests/."""
    missing = []
    for behaviour in load_catalogue():
        nodes = [n for ns in named_tests(behaviour).values() for n in ns]
        for node in nodes:
            path, _, name = node.partition("::")
            source = (
                (ROOT / path).read_text(encoding="utf-8")
                if (ROOT / path).exists()
                else ""
            )
            defined = {
                n.name
                for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            if name not in defined:
                missing.append(f"{behaviour.id}: {node}")

    assert not missing, "catalogue names missing tests:\n" + "\n".join(missing)


def test_real_scenarios_name_only_catalogued_behaviours() -> None:
    known = {b.id for b in load_catalogue()}

    unknown = [
        f"{spec.name}: {i}"
        for spec in all_scenarios()
        for i in spec.behaviours
        if i not in known
    ]

    assert not unknown, "scenarios name unknown behaviour IDs:\n" + "\n".join(unknown)
