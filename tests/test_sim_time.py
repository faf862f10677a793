"""Virtual time: long timeouts cost nothing, and a stuck run is reported."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import trio
import trio.testing

import ref
import sim
from sim._clock import SimClock
from sim._watchdog import Watchdog
from spec.api import LaunchError


def test_a_60_second_timeout_costs_well_under_a_second() -> None:
    async def main() -> float:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            sim.hang(pid)
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(60.0):
                    await ref.remotecall_fetch(ref.myid, pid)
            return trio.current_time()

    began = time.perf_counter()
    virtual = sim.run(main, seed=1)
    wall = time.perf_counter() - began
    assert virtual >= 60.0
    assert wall < 1.0


def test_the_worker_timeout_runs_on_virtual_time() -> None:
    """A launch that takes an hour fails at the 60 s worker timeout."""

    async def main() -> float:
        plan = sim.FaultPlan((sim.SlowLaunch(launch=1, delay=3600.0),))
        async with sim.open_cluster(faults=plan, timeout=60.0):
            began = trio.current_time()
            with pytest.raises(LaunchError):
                await ref.addprocs(1)
            return trio.current_time() - began

    began = time.perf_counter()
    waited = sim.run(main, seed=1)
    assert 60.0 <= waited < 61.0
    assert time.perf_counter() - began < 1.0


def test_a_deadlock_ends_the_run_with_the_waiting_tasks_named() -> None:
    async def main() -> None:
        await trio.Event().wait()

    with pytest.raises(sim.SimulationStuck, match="deadlock") as stuck:
        sim.run(main, seed=1)
    assert "main" in str(stuck.value)


class _Cyclic:
    def __init__(self) -> None:
        self.me = self


def test_garbage_is_collected_before_a_run_is_called_deadlocked() -> None:
    """What everyone waits for may be a finalizer, as with remote refs."""

    async def main() -> str:
        freed = trio.Event()
        token = trio.lowlevel.current_trio_token()
        weakref.finalize(_Cyclic(), token.run_sync_soon, freed.set)
        await freed.wait()
        return "freed"

    assert sim.run(main, seed=1) == "freed"


def test_a_hung_worker_without_a_timeout_is_a_deadlock_not_a_hang() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            sim.hang(pid)
            await ref.remotecall_fetch(ref.myid, pid)

    with pytest.raises(sim.SimulationStuck, match="deadlock"):
        sim.run(main, seed=1)


def test_a_loop_that_never_lets_time_advance_is_a_livelock() -> None:
    async def main() -> None:
        while True:
            await trio.sleep(0)

    with pytest.raises(sim.SimulationStuck, match="livelock"):
        sim.run(main, seed=1, livelock_after=20_000)


_STUCK_PROGRAMS = {
    # A worker's task spins: the master's shutdown, shielded, waits on
    # virtual timeouts that the spinning keeps from ever expiring.
    "worker": """
async def spin():
    while True:
        await trio.lowlevel.checkpoint()

async def main():
    async with sim.open_cluster():
        await ref.addprocs(1)
        await ref.remotecall_fetch(spin, 2)
""",
    # The master's own cleanup spins under a shield: no simulated process
    # to stop, so only ending trio.run itself can help.
    "shielded cleanup": """
async def main():
    try:
        while True:
            await trio.lowlevel.checkpoint()
    finally:
        with trio.CancelScope(shield=True):
            while True:
                await trio.lowlevel.checkpoint()
""",
}


@pytest.mark.parametrize("where", sorted(_STUCK_PROGRAMS))
def test_a_livelock_that_survives_cancellation_still_ends_the_run(
    where: str, tmp_path: Path
) -> None:
    # In a process of its own: a run that hangs spins inside trio's loop on
    # virtual time, where no in-process timeout could ever interrupt it.
    program = tmp_path / "stuck.py"
    program.write_text(
        "import trio\nimport ref\nimport sim\n" + _STUCK_PROGRAMS[where] + "\ntry:\n"
        "    sim.run(main, seed=1, livelock_after=20_000)\n"
        "except sim.SimulationStuck as exc:\n"
        "    print('stuck:', str(exc).splitlines()[0])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("stuck: livelock"), done.stdout + done.stderr


def test_time_advances_only_when_every_task_waits() -> None:
    async def main() -> list[float]:
        seen: list[float] = []
        async with trio.open_nursery() as nursery:
            for delay in (3.0, 1.0, 2.0):

                async def tick(delay: float = delay) -> None:
                    await trio.sleep(delay)
                    seen.append(trio.current_time())

                nursery.start_soon(tick)
        return seen

    assert sim.run(main, seed=1) == [1.0, 2.0, 3.0]


class _Passes(trio.abc.Instrument):
    """Counts passes of trio's run loop."""

    def __init__(self) -> None:
        self.passes = 0

    def after_io_wait(self, timeout: float) -> None:
        self.passes += 1


def test_a_jump_and_the_task_it_wakes_share_one_pass() -> None:
    """The clock moves when the loop goes idle, not one idle pass later."""

    async def main() -> int:
        passes = _Passes()
        trio.lowlevel.add_instrument(passes)
        for _ in range(100):
            await trio.sleep(1.0)
        trio.lowlevel.remove_instrument(passes)
        return passes.passes

    # Each sleep: one pass that jumps and wakes the sleeper (MockClock
    # needed a second, idle, pass for the jump).
    assert sim.run(main, seed=1) <= 101


def test_tasks_waiting_for_idle_wake_before_the_clock_jumps() -> None:
    async def main() -> list[tuple[str, float]]:
        seen: list[tuple[str, float]] = []

        async def sleeper() -> None:
            await trio.sleep(5.0)
            seen.append(("slept", trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper)
            await trio.testing.wait_all_tasks_blocked()
            seen.append(("idle", trio.current_time()))
        return seen

    began = sim.run(main, seed=1)
    assert began == [("idle", 0.0), ("slept", 5.0)]


def test_a_queued_callback_holds_the_clock_at_its_instant() -> None:
    """A ``run_sync_soon`` callback (a finalizer's) runs before time moves."""
    clock = SimClock()
    answers: list[tuple[float, float]] = []

    async def main() -> None:
        token = trio.lowlevel.current_trio_token()
        token.run_sync_soon(lambda: None)
        answers.append((clock.deadline_to_sleep_time(5.0), clock.now))
        await trio.sleep(0.5)
        answers.append((clock.deadline_to_sleep_time(5.0), clock.now))

    trio.run(main, clock=clock)
    # Held while the callback waits its turn; then idle: jumped, no sleep.
    assert answers == [(0.0, 0.0), (0.0, 5.0)]


def test_the_watchdog_watches_only_while_time_stands_still() -> None:
    clock = SimClock(standing_still_after=100)
    watchdog = Watchdog()
    clock.on_standing_still(watchdog.watch)
    seen: list[bool] = []

    async def main() -> None:
        for _ in range(50):
            await trio.lowlevel.checkpoint()
        seen.append(watchdog.watching)
        for _ in range(100):
            await trio.lowlevel.checkpoint()
        seen.append(watchdog.watching)
        await trio.sleep(1.0)
        await trio.lowlevel.checkpoint()
        seen.append(watchdog.watching)

    trio.run(main, clock=clock)
    assert seen == [False, True, False]
