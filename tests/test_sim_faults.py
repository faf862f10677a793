"""Faults injected into simulated clusters, and what the runtime makes of them."""

from __future__ import annotations

import json
import logging

import pytest
import trio

import ref
import sim
from sim.scenarios import nap, run_builtin
from spec.api import LaunchError, ProcessExitedException, RemoteException

SEEDS = range(100)


def _events(result: sim.RunResult[None], kind: str) -> list[dict[str, object]]:
    lines = result.trace.text().splitlines()[1:]
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def test_a_crash_fails_pending_and_later_calls_under_100_seeds() -> None:
    failed = {
        seed: repr(result.error)
        for seed in SEEDS
        if not (result := run_builtin("kill-pending", seed=seed)).ok
    }
    assert not failed


def test_a_launch_slower_than_the_timeout_is_a_launch_error_under_100_seeds() -> None:
    failed = {
        seed: repr(result.error)
        for seed in SEEDS
        if not (result := run_builtin("slow-launch", seed=seed)).ok
    }
    assert not failed


def test_a_partition_stalls_then_breaks_and_a_healed_one_delivers_late() -> None:
    for seed in range(10):
        result = run_builtin("partition", seed=seed)
        assert result.ok, result.error


def test_a_planned_crash_fires_at_its_time_and_pending_calls_fail() -> None:
    async def main() -> tuple[float, int]:
        plan = sim.FaultPlan((sim.Crash(2, at=10.0),))
        async with sim.open_cluster(faults=plan):
            [pid] = await ref.addprocs(1)
            with pytest.raises(ProcessExitedException) as raised:
                await ref.remotecall_fetch(nap, pid, 3600.0)
            return trio.current_time(), raised.value.worker_id

    failed_at, worker = sim.run(main, seed=4)
    assert worker == 2
    assert 10.0 <= failed_at < 10.1


def test_a_planned_fault_the_run_ends_before_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        plan = sim.FaultPlan(
            (
                sim.Crash(2, at=0.0),
                sim.Crash(2, at=3600.0),
                sim.Reset(1, 2, after=10**6),
                sim.FailLaunch(launch=2),
            )
        )
        async with sim.open_cluster(faults=plan):
            await ref.addprocs(1)

    with caplog.at_level(logging.WARNING, logger="sim"):
        sim.run(main, seed=1)
    never = [r.getMessage() for r in caplog.records if "never injected" in r.message]
    # The crash at 0 s fired (on nothing yet: a warning of its own); the
    # others did not, and each is named with the time the cluster ended.
    assert len(never) == 3, never
    assert "Crash(pid=2, at=3600.0" in never[0]
    assert "Reset(a=1, b=2" in never[1]
    assert "FailLaunch(launch=2)" in never[2]
    assert all(" ended at " in message for message in never)


def test_a_crash_after_a_count_of_deliveries_fires_mid_run() -> None:
    async def main() -> None:
        plan = sim.FaultPlan((sim.Crash(2, after=15),))
        async with sim.open_cluster(faults=plan):
            [pid] = await ref.addprocs(1)
            with pytest.raises(ProcessExitedException):
                for _ in range(100):
                    await ref.remotecall_fetch(ref.myid, pid)

    sim.run(main, seed=2)


def test_a_crash_is_silent_the_peer_sees_a_reset_not_an_orderly_close() -> None:
    result = run_builtin("kill-pending", seed=8, record=True)
    assert result.ok, result.error
    [crash] = [e for e in _events(result, "fault") if e["fault"] == "crash"]
    after = [
        e
        for e in map(json.loads, result.trace.text().splitlines()[1:])
        if e["seq"] > crash["seq"] and (e.get("src") == 2 or e.get("a") == 1)
    ]
    assert any(e["kind"] == "reset" for e in after)
    assert not any(e["kind"] in ("send", "send_eof", "eof") for e in after)
    [lost] = [e for e in _events(result, "call_end") if e["outcome"] == "lost"]
    assert lost["callee"] == 2


def test_killing_through_the_runtime_fault_api_crashes_the_worker() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            async with trio.open_nursery() as nursery:

                async def pending() -> None:
                    with pytest.raises(ProcessExitedException):
                        await ref.remotecall_fetch(nap, pid, 3600.0)

                nursery.start_soon(pending)
                await trio.sleep(1.0)
                await ref.faults.kill(pid)
            assert pid not in ref.workers()

    sim.run(main, seed=3)


def test_suspending_through_the_runtime_fault_api_hangs_the_worker() -> None:
    async def main() -> tuple[float, float]:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            await ref.faults.suspend(pid)
            asked = trio.current_time()
            async with trio.open_nursery() as nursery:

                async def resume_later() -> None:
                    await trio.sleep(5.0)
                    await ref.faults.resume(pid)

                nursery.start_soon(resume_later)
                assert await ref.remotecall_fetch(ref.myid, pid) == pid
                answered = trio.current_time()
            assert pid in ref.workers()
            return asked, answered

    result = sim.simulate(main, seed=3, record=True)
    assert result.error is None and result.value is not None, repr(result.error)
    asked, answered = result.value
    # Virtual time: the answer could only come once the worker resumed.
    assert answered - asked >= 5.0
    events = map(json.loads, result.trace.text().splitlines()[1:])
    faults = [e["fault"] for e in events if e["kind"] == "fault"]
    assert faults == ["hang", "resume"]


def test_interrupt_reaches_the_simulated_worker_which_keeps_serving() -> None:
    async def main() -> tuple[BaseException, int]:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            async with trio.open_nursery() as nursery:
                failures: list[BaseException] = []

                async def pending() -> None:
                    try:
                        await ref.remotecall_fetch(nap, pid, 3600.0)
                    except RemoteException as exc:
                        failures.append(exc.exception)

                nursery.start_soon(pending)
                await trio.sleep(1.0)
                await ref.interrupt(pid)
            return failures[0], await ref.remotecall_fetch(ref.myid, pid)

    interrupted, answer = sim.run(main, seed=3)
    assert isinstance(interrupted, KeyboardInterrupt)
    assert answer == 2


def test_a_failed_launch_is_a_launch_error_and_the_others_join() -> None:
    async def main() -> list[int]:
        plan = sim.FaultPlan((sim.FailLaunch(launch=2),))
        async with sim.open_cluster(faults=plan):
            with pytest.raises(LaunchError):
                await ref.addprocs(3)
            return ref.workers()

    assert len(sim.run(main, seed=5)) == 2


def test_a_reset_fails_the_call_in_flight() -> None:
    async def main() -> None:
        async with sim.open_cluster(faults=sim.FaultPlan((sim.Reset(1, 2, at=5.0),))):
            [pid] = await ref.addprocs(1)
            with pytest.raises(ProcessExitedException):
                await ref.remotecall_fetch(nap, pid, 60.0)

    sim.run(main, seed=6)


def test_a_hung_worker_answers_only_once_resumed() -> None:
    async def main() -> tuple[float, int]:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            sim.hang(pid, duration=20.0)
            began = trio.current_time()
            answer = await ref.remotecall_fetch(ref.myid, pid)
            return trio.current_time() - began, answer

    waited, answer = sim.run(main, seed=7)
    assert answer == 2
    assert 20.0 <= waited < 20.1


def test_a_slow_worker_takes_its_step_cost_per_io_step() -> None:
    async def main() -> float:
        async with sim.open_cluster(network=sim.NetworkConfig(latency=sim.Constant(0))):
            [pid] = await ref.addprocs(1)
            sim.slow(pid, 0.5)
            began = trio.current_time()
            await ref.remotecall_fetch(ref.myid, pid)
            return trio.current_time() - began

    # One read of the call and one write of the answer, at least.
    assert sim.run(main, seed=8) >= 1.0


def test_random_faults_are_drawn_from_the_seed_and_fire() -> None:
    kinds: set[str] = set()
    for seed in range(15):
        result = run_builtin("chaos", seed=seed, record=True)
        assert result.ok, result.error
        kinds.update(str(e["fault"]) for e in _events(result, "fault"))
    assert {"crash", "reset"} <= kinds


def test_fault_functions_outside_a_simulated_cluster_say_so() -> None:
    with pytest.raises(sim.NoSimulatedClusterError):
        sim.crash(2)

    async def main() -> None:
        async with sim.open_cluster():
            pass

    with pytest.raises(sim.NotSimulatingError):
        trio.run(main)


def test_the_command_line_form_of_a_fault_plan() -> None:
    plan = sim.FaultPlan.parse(
        "crash:pid=2,at=1.5; partition:pids=2+3,heal=10,break-after=5;"
        "hang:pid=4,after=30,duration=none; slow-launch:launch=2,delay=90;"
        "random:crash=0.5,limit=2"
    )
    assert plan.faults == (
        sim.Crash(2, at=1.5),
        sim.Partition((2, 3), heal=10.0, break_after=5.0),
        sim.Hang(4, after=30),
        sim.SlowLaunch(launch=2, delay=90.0),
    )
    assert plan.random == sim.RandomFaults(crash=0.5, limit=2)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("explode:pid=2", "unknown fault"),
        ("crash:pid=two", "not a valid value"),
        ("crash:victim=2", "fields are"),
        ("crash:pid=1", "worker pid"),
        ("crash:pid=2,at=1,after=3", "not both"),
        ("crash", "pid"),
    ],
)
def test_a_bad_fault_spec_is_refused_with_the_reason(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sim.FaultPlan.parse(spec)


def test_a_fault_that_hits_nothing_is_traced_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        plan = sim.FaultPlan((sim.Crash(99, at=1.0),))
        async with sim.open_cluster(faults=plan):
            [pid] = await ref.addprocs(1)
            await trio.sleep(2.0)
            assert sim.crash(pid)
            await trio.sleep(1.0)
            assert not sim.crash(pid)

    with caplog.at_level("WARNING", logger="sim"):
        result = sim.simulate(main, seed=1, record=True)

    assert result.ok, result.error
    skipped = [e["pid"] for e in _events(result, "fault") if e.get("skipped")]
    assert skipped == [99, 2]
    warnings = [
        r.getMessage() for r in caplog.records if "hit nothing" in r.getMessage()
    ]
    assert "no process has that pid (live workers: [2])" in warnings[0]
    assert "already exited" in warnings[1]
