"""Trace refinement: the model admits what the runtime recorded.

A campaign of seeds: each seed is a random user program
(``model_trace.random_program``) run with ``ref._history.recording`` on,
and the runtime's own records are then checked offline by
``spec.refinement`` (``model_trace.check_records``).  On the simulator the
campaign is cheap (virtual time, one interpreter) and runs many seeds; on
``ref`` (real processes) a few.  DISTREF_SIM_SEEDS and DISTREF_REF_SEEDS
widen it.

The trace checker must also catch the seeded mistakes of
``model_mistakes`` on its own, without the online checks of the
model-based tests.  The last tests pin two defects of ``ref`` the model
found (both fixed since).
"""

from __future__ import annotations

import importlib
import os
import random
from collections.abc import Iterator
from typing import Any

import model_mistakes
import pytest
import trio
import trio.testing
from conftest import leftover_worker
from model_harness import Driver, Harness
from model_trace import check_records, random_program

import ref
from ref._history import recording
from spec import model as m
from spec.refinement import Refuted

SIM_SEEDS = int(os.environ.get("DISTREF_SIM_SEEDS", "150"))
REF_SEEDS = int(os.environ.get("DISTREF_REF_SEEDS", "4"))
STEPS = 40


def _sim() -> Any:
    sim = importlib.import_module("sim")
    return sim


def run_on_sim(seed: int) -> list[dict[str, Any]]:
    """Records of the random program ``seed`` on the simulator."""
    sim = _sim()
    records: list[dict[str, Any]] = []

    async def main() -> None:
        async with sim.open_cluster():
            with recording(records.append):
                await random_program(random.Random(seed), STEPS)

    sim.run(main, seed=seed)
    return records


def run_on_ref(seed: int, ospids: list[int]) -> list[dict[str, Any]]:
    """Records of the random program ``seed`` on real worker processes."""
    records: list[dict[str, Any]] = []

    async def main() -> None:
        with trio.fail_after(120):
            async with ref.open_cluster() as cluster:
                try:
                    with recording(records.append):
                        await random_program(random.Random(seed), STEPS)
                finally:
                    ospids.extend(
                        h.ospid for h in cluster.master.all_handles if h.ospid
                    )

    trio.run(main)
    return records


@pytest.fixture
def ospids() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    left = {p: why for p in pids if (why := leftover_worker(p))}
    assert not left, f"worker processes left behind: {left}"


def test_sim_campaign_is_admitted_by_the_model() -> None:
    for seed in range(SIM_SEEDS):
        try:
            check_records(run_on_sim(seed))
        except Refuted as exc:
            exc.add_note(f"sim seed {seed}: reproduce with run_on_sim({seed})")
            raise


def test_ref_campaign_is_admitted_by_the_model(ospids: list[int]) -> None:
    for seed in range(REF_SEEDS):
        try:
            check_records(run_on_ref(seed, ospids))
        except Refuted as exc:
            exc.add_note(f"ref seed {seed}")
            raise


#: Traces hold API answers only; a forgotten holder shows in client sets,
#: which the model-based tests read and traces do not.
TRACE_VISIBLE = sorted(set(model_mistakes.MISTAKES) - {"clients_forget_holder"})


@pytest.mark.parametrize("mistake", TRACE_VISIBLE)
def test_trace_checker_catches(mistake: str) -> None:
    """Within the campaign's seeds, some trace of the broken runtime is refuted."""
    _sim()
    undo = model_mistakes.apply(mistake)
    try:
        for seed in range(SIM_SEEDS):
            try:
                check_records(run_on_sim(seed))
            except Refuted:
                return
    finally:
        undo()
    pytest.fail(f"no trace refuted in {SIM_SEEDS} seeds with {mistake}")


# ------------------------------------------------- defects the model found


@pytest.fixture
def driver() -> Iterator[Driver]:
    d = Driver(2)
    yield d
    d.close()
    left = {p: why for p in d.ospids if (why := leftover_worker(p))}
    assert not left, f"worker processes left behind: {left}"


def test_waiting_take_fails_when_last_member_leaves(driver: Driver) -> None:
    harness = Harness(driver, workers=2, bound=5.0)
    w2, _ = driver.live_workers()
    harness.step(m.NewPool("p", (w2,)))
    assert harness.step(m.PoolTake("p")) == m.Returned(w2)
    waiting = harness.start(m.PoolTake("p"))
    harness.step(m.RmProcs((w2,)))
    harness.settle()
    assert harness.responses[waiting] == m.Raised("NoActiveWorkerError")


def test_fetch_overtaken_by_own_put_answers() -> None:
    """On the simulator, so the put's message surely goes first."""
    sim = _sim()
    records: list[dict[str, Any]] = []

    async def main() -> None:
        async with sim.open_cluster(check_leaks=False):
            with recording(records.append):
                (w,) = await ref.addprocs(1)
                fut = ref.Future(w)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ref.put, fut, 7)
                    await trio.testing.wait_all_tasks_blocked()
                    with trio.move_on_after(30):
                        await ref.fetch(fut)
                    nursery.cancel_scope.cancel()

    sim.run(main, seed=0)
    check_records(records)
