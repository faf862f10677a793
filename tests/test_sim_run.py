"""``sim.run``, ``sim.open_cluster``, the conformance hook and the trace format."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import trio

import ref
import sim
from sim.scenarios import run_builtin
from spec.api import DistributedAPI, ProcessExitedException, RemoteException


def test_the_module_level_api_works_inside_a_simulated_cluster() -> None:
    async def main() -> tuple[list[int], int, list[int]]:
        async with sim.open_cluster():
            pids = await ref.addprocs(2)
            fut = await ref.remotecall(pow, pids[1], 2, 10)
            value = await ref.fetch(fut)
            answers = [await ref.remotecall_fetch(ref.myid, p) for p in pids]
            return pids, value, answers

    pids, value, answers = sim.run(main, seed=1)
    assert pids == [2, 3]
    assert value == 1024
    assert answers == pids


def test_run_returns_what_main_returns_and_raises_what_it_raises() -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise KeyError("nope")

    assert sim.run(answer, seed=1) == 42
    with pytest.raises(KeyError):
        sim.run(fail, seed=1)
    with pytest.raises(TypeError, match="seed"):
        sim.run(answer, seed="1")  # type: ignore[arg-type]  # the mistake tested


async def _passes(api: DistributedAPI) -> None:
    pids = await api.addprocs(2)
    assert [await api.remotecall_fetch(api.myid, p) for p in pids] == pids


async def _asserts(api: DistributedAPI) -> None:
    await api.addprocs(1)
    raise AssertionError("the scenario's own verdict")


async def _remote_error(api: DistributedAPI) -> None:
    [pid] = await api.addprocs(1)
    await api.remotecall_fetch(int, pid, "not a number")


async def _sleeps(api: DistributedAPI) -> None:
    await trio.sleep_forever()


async def _two_errors(api: DistributedAPI) -> None:
    async def boom() -> None:
        raise ValueError("one of two")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(boom)
        nursery.start_soon(boom)


def test_run_scenario_passes_a_passing_scenario() -> None:
    sim.run_scenario(_passes, seed=1, timeout=60)


def test_run_scenario_raises_the_scenarios_own_exception_unwrapped() -> None:
    with pytest.raises(AssertionError, match="own verdict"):
        sim.run_scenario(_asserts, seed=1, timeout=60)

    with pytest.raises(RemoteException) as raised:
        sim.run_scenario(_remote_error, seed=1, timeout=60)
    assert isinstance(raised.value.exception, ValueError)
    assert raised.value.pid == 2


def test_an_error_leaves_open_cluster_as_raised() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            raise KeyError("from the block")

    with pytest.raises(KeyError, match="from the block"):
        sim.run(main, seed=1)


def test_run_scenario_keeps_a_group_of_several_errors() -> None:
    with pytest.raises(ExceptionGroup) as raised:
        sim.run_scenario(_two_errors, seed=1, timeout=60)
    assert len(raised.value.exceptions) == 2


def test_run_scenario_times_out_in_virtual_time() -> None:
    began = time.perf_counter()
    with pytest.raises(trio.TooSlowError):
        sim.run_scenario(_sleeps, seed=1, timeout=600)
    assert time.perf_counter() - began < 1.0


def test_the_conformance_backend_calls_run_scenario() -> None:
    from conformance.backends import SimBackend

    backend = SimBackend()
    assert backend.available() is None
    backend.run(_passes, seed=3, timeout=60)
    with pytest.raises(AssertionError):
        backend.run(_asserts, seed=3, timeout=60)


async def _own_deadline(api: DistributedAPI) -> None:
    with trio.fail_after(1):
        await trio.sleep_forever()


def test_run_scenario_says_which_limit_ran_out() -> None:
    with pytest.raises(sim.ScenarioTooSlow) as raised:
        sim.run_scenario(_sleeps, seed=1, timeout=600)
    assert (raised.value.timeout, raised.value.what) == (600, "scenario")

    with pytest.raises(trio.TooSlowError) as own:
        sim.run_scenario(_own_deadline, seed=1, timeout=600)
    assert not isinstance(own.value, sim.ScenarioTooSlow)


def test_the_conformance_backend_reports_a_timeout_as_scenario_timeout() -> None:
    from conformance.backends import ScenarioTimeout, SimBackend

    with pytest.raises(ScenarioTimeout) as raised:
        SimBackend().run(_sleeps, seed=3, timeout=600)
    assert raised.value.timeout == 600

    with pytest.raises(trio.TooSlowError):
        SimBackend().run(_own_deadline, seed=3, timeout=600)


async def _per_process_state(api: DistributedAPI) -> None:
    from conformance.scenarios._shipped import new_key, record, records

    w2, w3 = await api.addprocs(2)
    key = new_key()
    record(key, "master")
    await api.remotecall_fetch(record, w2, key, "w2")
    assert records(key) == ["master"]
    assert await api.remotecall_fetch(records, w2, key) == ["w2"]
    assert await api.remotecall_fetch(records, w3, key) == []


def test_the_scenarios_per_process_state_is_separate_in_each_simulated_process() -> (
    None
):
    sim.run_scenario(_per_process_state, seed=4, timeout=60)


def test_the_trace_is_canonical_json_lines_with_integer_times(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    result = run_builtin("kill-pending", seed=2, trace=path)
    assert result.ok, result.error
    lines = path.read_text(encoding="ascii").splitlines()

    header = json.loads(lines[0])
    assert header["format"] == sim.FORMAT
    assert header["version"] == sim.FORMAT_VERSION
    assert header["seed"] == 2
    assert header["scenario"] == "kill-pending"
    assert set(header["versions"]) == {"python", "distref", "trio", "cloudpickle"}
    assert header["config"]["clusters"][0]["network"]["latency"] == {
        "uniform": [0.0001, 0.001]
    }

    events = [json.loads(line) for line in lines[1:]]
    for line, event in zip(lines[1:], events, strict=True):
        assert line == json.dumps(event, sort_keys=True, separators=(",", ":"))
        assert isinstance(event["t"], int)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    kinds = {e["kind"] for e in events}
    assert {"send", "deliver", "fault", "call_start", "call_end", "end"} <= kinds
    # Version 2: the API-level history, for checking against the model.
    assert header["version"] >= 2
    assert {"api_call", "api_return"} <= kinds
    calls = [e for e in events if e["kind"] == "api_call"]
    assert calls[0]["api"] == "addprocs" and calls[0]["pid"] == 1
    assert events[-1] == {**events[-1], "kind": "end", "outcome": "ok"}


def test_the_trace_records_calls_with_their_pids_and_outcomes() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            await ref.remotecall_fetch(ref.myid, pid)
            with pytest.raises(RemoteException):
                await ref.remotecall_fetch(int, pid, "x")

    result = sim.simulate(main, seed=1, record=True)
    assert result.ok, result.error
    events = [json.loads(line) for line in result.trace.text().splitlines()[1:]]
    starts = [e for e in events if e["kind"] == "call_start"]
    ends = [e for e in events if e["kind"] == "call_end"]
    assert [(e["caller"], e["callee"], e["f"]) for e in starts] == [
        (1, 2, "ref._api.myid"),
        (1, 2, "builtins.int"),
    ]
    assert [e["outcome"] for e in ends] == ["ok", "fail"]
    assert [e["rrid"] for e in ends] == [e["rrid"] for e in starts]


def test_a_trace_is_written_even_when_the_run_fails(tmp_path: Path) -> None:
    async def main() -> None:
        async with sim.open_cluster(faults=sim.FaultPlan((sim.Crash(2, at=1.0),))):
            [pid] = await ref.addprocs(1)
            await ref.remotecall_fetch(trio.sleep, pid, 10.0)

    path = tmp_path / "failed.jsonl"
    with pytest.raises(ProcessExitedException):
        sim.run(main, seed=1, trace=path)
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["kind"] == "end"
    assert last["outcome"] == "ProcessExitedException"


def test_sys_exit_in_a_call_ends_only_that_simulated_worker() -> None:
    async def main() -> list[int]:
        async with sim.open_cluster():
            first, second = await ref.addprocs(2)
            with pytest.raises(ProcessExitedException):
                await ref.remotecall_fetch(sys.exit, first, 3)
            assert await ref.remotecall_fetch(ref.myid, second) == second
            return ref.workers()

    result = sim.simulate(main, seed=5)

    assert result.ok, result.error
    assert result.value == [3]
