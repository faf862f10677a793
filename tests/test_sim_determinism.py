"""The simulator's determinism: same scenario and seed, same run, same bytes.

Covers the one module that touches trio's private scheduler hooks (and
fails loudly if a trio release moves them), the promise that a seed fixes
the interleaving whatever the hash seed or the state Hypothesis left
behind, and the byte-identical trace across fresh interpreters.
"""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
import trio
import trio._core._run

import ref
import sim
from sim._determinism import check_trio_internals, deterministic_scheduling
from sim._run import Run
from sim._trace import Trace
from sim.scenarios import Options, chaos, run_builtin

if TYPE_CHECKING:
    from ref._process import Process


def _interleaving(seed: int) -> list[int]:
    """The order six tasks took turns in, under seeded scheduling."""
    order: list[int] = []

    async def task(n: int) -> None:
        for _ in range(3):
            order.append(n)
            await trio.lowlevel.checkpoint()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(task, n)

    with deterministic_scheduling(random.Random(seed)):
        trio.run(main)
    return order


def test_trio_still_has_the_private_scheduler_hooks() -> None:
    """Fails on a trio release that renamed or stopped using them."""
    check_trio_internals()
    assert isinstance(trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING, bool)
    assert isinstance(trio._core._run._r, random.Random)


@pytest.mark.parametrize("name", ["_ALLOW_DETERMINISTIC_SCHEDULING", "_r"])
def test_the_check_names_the_missing_hook(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.delattr(trio._core._run, name)
    with pytest.raises(sim.TrioInternalsChanged, match=name):
        check_trio_internals()


def test_the_seed_alone_decides_the_interleaving() -> None:
    assert _interleaving(7) == _interleaving(7)
    assert len({tuple(_interleaving(seed)) for seed in range(10)}) >= 5


def test_the_scheduler_state_is_restored_after_a_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = trio._core._run
    # Importing Hypothesis (its pytest plugin does) switches the flag on.
    monkeypatch.setattr(module, "_ALLOW_DETERMINISTIC_SCHEDULING", False)
    flag, rng = module._ALLOW_DETERMINISTIC_SCHEDULING, module._r

    async def main() -> None:
        assert module._ALLOW_DETERMINISTIC_SCHEDULING is True
        assert module._r is not rng

    sim.run(main, seed=1)
    assert module._ALLOW_DETERMINISTIC_SCHEDULING is flag
    assert module._r is rng


def test_a_run_ignores_the_scheduler_state_it_finds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hypothesis flips the flag and reseeds trio's generator; no matter."""
    digests = set()
    for flag, reseed in ((False, 0), (True, 0), (True, 12345)):
        monkeypatch.setattr(trio._core._run, "_ALLOW_DETERMINISTIC_SCHEDULING", flag)
        trio._core._run._r.seed(reseed)
        result = run_builtin("ping", seed=3, record=True)
        assert result.ok, result.error
        digests.add(result.trace.digest())
    assert len(digests) == 1


def test_different_seeds_give_different_traces() -> None:
    digests = [
        run_builtin("ping", seed=seed, workers=4, record=True).trace.digest()
        for seed in range(5)
    ]
    assert len(set(digests)) == 5


def test_scheduling_alone_varies_with_the_seed() -> None:
    """With every latency fixed, only the scheduler's draws can differ."""
    fixed = sim.NetworkConfig(
        latency=sim.Constant(0.001), launch_delay=sim.Constant(0.1)
    )
    digests = set()
    for seed in range(6):
        result = run_builtin("ping", seed=seed, workers=4, network=fixed, record=True)
        assert result.ok, result.error
        digests.add(result.trace.digest())
    assert len(digests) >= 2


def test_the_same_seed_gives_the_same_trace_in_one_process() -> None:
    first = run_builtin("chaos", seed=5, record=True)
    again = run_builtin("chaos", seed=5, record=True)
    assert first.trace.text() == again.trace.text()


def test_garbage_is_collected_only_at_quiescent_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Frequent collections inside the run change nothing in its trace."""
    collections: list[int] = []
    real_collect = gc.collect

    def counting_collect(generation: int = 2) -> int:
        collections.append(generation)
        return real_collect(generation)

    async def main() -> None:
        await chaos(Options(workers=4))

    monkeypatch.setattr(gc, "collect", counting_collect)
    digests = set()
    for _ in range(2):
        result = sim.simulate(main, seed=5, record=True, gc_every=7)
        assert result.ok, result.error
        digests.add(result.trace.digest())
    assert len(digests) == 1
    assert len(collections) > 10
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_big_clusters_collect_garbage_less_often() -> None:
    """A collection walks every process: a thousand of them take 2,000 deliveries."""
    run = Run(1, Trace(enabled=False, scenario="gc", seed=1), gc_every=200)
    intervals = {}
    for count in range(1, 1001):
        run.register_process(cast("Process", object()), count)
        intervals[count] = run.gc_interval()
    assert {intervals[n] for n in range(1, 200)} == {200}
    assert intervals[250] == 400
    assert intervals[1000] == 2000


def _first_difference(a: bytes, b: bytes) -> str:
    for number, (x, y) in enumerate(zip(a.splitlines(), b.splitlines(), strict=False)):
        if x != y:
            return f"line {number + 1}:\n  {x[:300]!r}\n  {y[:300]!r}"
    return f"one trace is a prefix of the other ({len(a)} vs {len(b)} bytes)"


@pytest.mark.parametrize("scenario", ["chaos", "kill-pending"])
def test_fresh_interpreters_with_other_hash_seeds_write_identical_traces(
    tmp_path: Path, scenario: str
) -> None:
    traces = []
    for hash_seed in ("1", "2"):
        path = tmp_path / f"{scenario}-{hash_seed}.jsonl"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        command = ["-m", "sim", "run", scenario, "--seed", "9", "--trace", str(path)]
        done = subprocess.run(
            [sys.executable, *command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        traces.append(path.read_bytes())

    first, second = traces
    assert first == second, _first_difference(first, second)
    assert first.count(b"\n") > 40
    assert b'"kind":"fault"' in first or b'"fault":' in first


def test_values_cross_processes_through_the_codec() -> None:
    """A worker mutating its argument never touches the caller's object."""
    box = {"n": 1}

    async def main() -> dict[str, int]:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            changed: dict[str, int] = await ref.remotecall_fetch(_bump, pid, box)
            return changed

    assert sim.run(main, seed=1) == {"n": 2}
    assert box == {"n": 1}


def _bump(box: dict[str, int]) -> dict[str, int]:
    box["n"] += 1
    return box
