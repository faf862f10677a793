"""Issue 5's campaign: pmap over 8 workers while seeded crashes kill them.

Each seed draws which workers crash and when (``sim.scenarios``'s
``pmap-crashes``).  Whenever a worker survives, pmap (with retries) must
return every result exactly once, in input order; when all 8 die it must
raise NoActiveWorkerError; it must never hang (the scenario bounds the map
with ``trio.fail_after`` in virtual time, and the simulator's watchdog
stops a run that cannot progress).  The scenario checks all that and
returns which ending the seed took; these tests run 200 seeds and require
both endings to occur.

The full campaign (1,000 items a seed) costs about half a CPU second per
seed, so it is marked slow; the unmarked run maps 100 items per seed.
"""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

from sim import simulate
from sim.scenarios import (
    ALL_CRASHED,
    COMPLETED,
    PMAP_ITEMS,
    PMAP_WORK,
    Options,
    draw_crash_plan,
    pmap_campaign,
)

SEEDS = range(200)
WORKERS = 8
#: Items per seed in the unmarked run.
FEW_ITEMS = 100


def _campaign(items: int) -> tuple[Counter[str], list[str]]:
    """Run every seed; the endings reached, and a line per failing seed."""
    opts = Options(workers=WORKERS)
    endings: Counter[str] = Counter()
    failures: list[str] = []
    for seed in SEEDS:

        async def main() -> str:
            return await pmap_campaign(opts, items)

        result = simulate(main, seed=seed, scenario="pmap-crashes")
        if result.ok and result.value in (COMPLETED, ALL_CRASHED):
            endings[result.value] += 1
        else:
            failures.append(f"seed {seed}: {result.error!r} / {result.value!r}")
    return endings, failures


def _check(endings: Counter[str], failures: list[str]) -> None:
    assert not failures, "\n".join(failures[:10])
    assert sum(endings.values()) == len(SEEDS)
    # Both branches are exercised, each by a good share of the seeds.
    assert endings[COMPLETED] >= 100, endings
    assert endings[ALL_CRASHED] >= 25, endings


def test_pmap_under_crashes_returns_everything_once_or_raises_when_all_died() -> None:
    endings, failures = _campaign(FEW_ITEMS)
    _check(endings, failures)


@pytest.fixture
def slow_requested(request: pytest.FixtureRequest) -> None:
    """Skip unless slow tests were asked for (``-m slow``, ``DISTREF_SLOW=1``)."""
    if os.environ.get("DISTREF_SLOW") == "1":
        return
    expression = str(request.config.getoption("markexpr") or "")
    if "slow" not in expression or "not slow" in expression:
        pytest.skip("slow: run with -m slow or DISTREF_SLOW=1")


@pytest.mark.slow
@pytest.mark.usefixtures("slow_requested")
def test_the_full_campaign_of_a_thousand_items_per_seed() -> None:
    endings, failures = _campaign(PMAP_ITEMS)
    _check(endings, failures)


def test_crash_plans_cover_every_victim_count() -> None:
    counts: Counter[int] = Counter()
    for seed in SEEDS:
        plan = draw_crash_plan(random.Random(seed), list(range(2, 10)), PMAP_ITEMS)
        victims = [pid for _, pid in plan.crashes]
        assert len(set(victims)) == len(victims)
        assert plan.everyone == (len(victims) == WORKERS)
        moments = [moment for moment, _ in plan.crashes]
        assert moments == sorted(moments) and all(m > 0 for m in moments)
        if plan.everyone:
            # All die before the map could finish even with nobody dead.
            assert moments[-1] < PMAP_ITEMS * PMAP_WORK / WORKERS
        counts[len(victims)] += 1
    assert set(counts) == set(range(WORKERS + 1)), counts
