"""Trace refinement: the model admits what the runtime recorded.

A campaign of seeds: each seed is a random user program
(``model_trace.random_program``).  On the simulator it runs with a trace
file, which carries the API-level history; the file is read back and
checked offline (``spec.records.check_file``, what ``python -m
spec.refinement TRACE`` does).  On ``ref`` (real processes) the program
runs with ``ref._history.recording`` on, the records are written to a
history file, and the same reader checks it.  The simulator campaign is
cheap (virtual time, one interpreter) and runs many seeds; the ``ref`` one
a few.  DISTREF_SIM_SEEDS and DISTREF_REF_SEEDS widen it.

The trace checker must also catch the seeded mistakes of
``model_mistakes`` on its own, without the online checks of the
model-based tests.  The last tests pin two defects of ``ref`` the model
found (both fixed since).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import model_fns as fns
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
from spec import records
from spec.api import RemoteException
from spec.refinement import Refuted

SIM_SEEDS = int(os.environ.get("DISTREF_SIM_SEEDS", "100"))
REF_SEEDS = int(os.environ.get("DISTREF_REF_SEEDS", "4"))
STEPS = 40


def _sim() -> Any:
    sim = importlib.import_module("sim")
    return sim


def run_on_sim(seed: int, trace: Path) -> Path:
    """Run the random program ``seed`` on the simulator, traced to ``trace``."""
    sim = _sim()

    async def main() -> None:
        async with sim.open_cluster():
            await random_program(random.Random(seed), STEPS)

    sim.run(main, seed=seed, trace=trace)
    return trace


def run_on_ref(seed: int, ospids: list[int], history: Path) -> Path:
    """Run the random program ``seed`` on real workers, recorded to ``history``."""
    recorded: list[dict[str, Any]] = []

    async def main() -> None:
        with trio.fail_after(120):
            async with ref.open_cluster() as cluster:
                try:
                    with recording(recorded.append):
                        await random_program(random.Random(seed), STEPS)
                finally:
                    ospids.extend(
                        h.ospid for h in cluster.master.all_handles if h.ospid
                    )

    trio.run(main)
    lines = (json.dumps(r, sort_keys=True) for r in recorded)
    history.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return history


@pytest.fixture
def ospids() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    left = {p: why for p in pids if (why := leftover_worker(p))}
    assert not left, f"worker processes left behind: {left}"


def test_sim_campaign_is_admitted_by_the_model(tmp_path: Path) -> None:
    checked = 0
    for seed in range(SIM_SEEDS):
        trace = run_on_sim(seed, tmp_path / f"sim-{seed}.jsonl")
        try:
            verdict = records.check_file(trace)
        except Refuted as exc:
            exc.add_note(f"sim seed {seed}: the trace is {trace}")
            raise
        checked += verdict.checked
        trace.unlink()
    # Each program makes some 40 calls; a reader that lost them would
    # "admit" empty histories.
    assert checked > 10 * SIM_SEEDS


def test_ref_campaign_is_admitted_by_the_model(
    ospids: list[int], tmp_path: Path
) -> None:
    for seed in range(REF_SEEDS):
        history = run_on_ref(seed, ospids, tmp_path / f"ref-{seed}.jsonl")
        try:
            verdict = records.check_file(history)
        except Refuted as exc:
            exc.add_note(f"ref seed {seed}: the history is {history}")
            raise
        assert verdict.checked > 10


def test_the_sim_trace_carries_the_same_history_as_a_recording(
    tmp_path: Path,
) -> None:
    """What the trace file holds is what an in-process recording sees."""
    sim = _sim()
    recorded: list[dict[str, Any]] = []

    async def main() -> None:
        async with sim.open_cluster():
            with recording(recorded.append):
                await random_program(random.Random(3), STEPS)

    trace = tmp_path / "t.jsonl"
    sim.run(main, seed=3, trace=trace)
    [from_file] = records.read_records(trace.read_text(encoding="ascii"))
    ours = {r["call"] for r in recorded}
    assert ours, "the program made no calls"
    assert all(isinstance(r["t"], int) for r in from_file)
    stripped = [
        {k: v for k, v in r.items() if k not in ("seq", "t")}
        for r in from_file
        if r["kind"].startswith("api_")
    ]
    assert [r for r in stripped if r["call"] in ours] == recorded


def test_a_trace_with_the_history_is_still_the_same_bytes_per_seed(
    tmp_path: Path,
) -> None:
    """Pools, channels sized math.inf and reprs are written deterministically."""
    first = run_on_sim(6, tmp_path / "a.jsonl").read_bytes()
    second = run_on_sim(6, tmp_path / "b.jsonl").read_bytes()
    assert b'"pool":0' in first and b'{"float":"inf"}' in first
    assert first == second


def test_the_command_line_prints_the_verdict_and_exits_nonzero_on_refutation(
    tmp_path: Path,
) -> None:
    trace = run_on_sim(1, tmp_path / "good.jsonl")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "spec.refinement"]
    good = subprocess.run(
        [*command, str(trace)], capture_output=True, text=True, env=env, timeout=120
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "admitted" in good.stdout

    # The same run, with one answer changed to one the model forbids.
    lines = trace.read_text(encoding="ascii").splitlines()
    events = [json.loads(line) for line in lines]
    calls = {e["call"]: e for e in events if e.get("kind") == "api_call"}
    index = next(
        i
        for i, e in enumerate(events)
        if e.get("kind") == "api_return"
        and calls[e["call"]]["api"] == "addprocs"
        and calls[e["call"]]["pid"] == 1
    )
    events[index]["value"] = [pid + 10 for pid in events[index]["value"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="ascii")
    refuted = subprocess.run(
        [*command, str(bad)], capture_output=True, text=True, env=env, timeout=120
    )
    assert refuted.returncode == 1, refuted.stdout + refuted.stderr
    assert "REFUTED" in refuted.stdout

    old = tmp_path / "old.jsonl"
    header = {**events[0], "version": 1}
    old.write_text(json.dumps(header) + "\n", encoding="ascii")
    unreadable = subprocess.run(
        [*command, str(old)], capture_output=True, text=True, env=env, timeout=120
    )
    assert unreadable.returncode == 2
    assert "version=1" in unreadable.stderr


#: Traces hold API answers only; a forgotten holder shows in client sets,
#: which the model-based tests read and traces do not.
TRACE_VISIBLE = sorted(set(model_mistakes.MISTAKES) - {"clients_forget_holder"})


@pytest.mark.parametrize("mistake", TRACE_VISIBLE)
def test_trace_checker_catches(mistake: str, tmp_path: Path) -> None:
    """Within the campaign's seeds, some trace of the broken runtime is refuted."""
    _sim()
    undo = model_mistakes.apply(mistake)
    try:
        for seed in range(SIM_SEEDS):
            try:
                records.check_file(run_on_sim(seed, tmp_path / f"{seed}.jsonl"))
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


def test_master_worker_topology_is_checked_against_the_model() -> None:
    """A worker that needs another worker raises TopologyError, as modelled."""
    sim = _sim()
    recorded: list[dict[str, Any]] = []

    async def main() -> None:
        async with sim.open_cluster():
            with recording(recorded.append):
                w2, w3 = await ref.addprocs(2, topology="master_worker")
                chan = ref.RemoteChannel(functools.partial(ref.Channel, 1), w2)
                with pytest.raises(RemoteException):
                    await ref.remotecall_fetch(fns.put_into, w3, chan, 1)
                await ref.remotecall_fetch(fns.put_into, w2, chan, 2)
                assert await ref.take(chan) == 2

    sim.run(main, seed=0)
    records.check_records(recorded, topology="master_worker")
    with pytest.raises(Refuted, match="TopologyError"):
        records.check_records(recorded)  # all_to_all would have let it through
