"""Issue 5's campaign: pmap over 8 workers while seeded crashes kill them.

Each seed draws which workers crash and when (``sim.scenarios``'s
``pmap-crashes``).  Whenever a worker survives, pmap (with retries) must
return every result exactly once, in input order; when all 8 die it must
raise NoActiveWorkerError; it must never hang (the scenario bounds the map
with ``trio.fail_after`` in virtual time, and the simulator's watchdog
stops a run that cannot progress).  The scenario checks all that and
returns which ending the seed took; these tests run 200 seeds and require
both endings to occur.

The full campaign (1,000 items a seed, 200 seeds) costs about a third
of a CPU second a seed, about a minute in all, so it runs by default.
Where the time goes, per seed (about 11,000 passes of trio's run loop
and 8,500 task steps): trio's scheduler with its per-pass hooks (the
mock clock, the simulated network, the watchdog) about 40 %, the link's
write path with cloudpickle about a quarter, the simulated network a
tenth; pmap and the pool are under 5 %.
"""

from __future__ import annotations

import random
from collections import Counter

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


def test_pmap_of_a_thousand_items_under_crashes_returns_everything_once() -> None:
    """Issue 5: with a survivor, every result once; otherwise
    NoActiveWorkerError; never a hang (200 seeds, 1,000 items each)."""
    endings, failures = _campaign(PMAP_ITEMS)
    assert not failures, "\n".join(failures[:10])
    assert sum(endings.values()) == len(SEEDS)
    # Both branches are exercised, each by a good share of the seeds.
    assert endings[COMPLETED] >= 100, endings
    assert endings[ALL_CRASHED] >= 25, endings


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
