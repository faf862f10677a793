"""How fast the simulator runs: figures to watch, not timed assertions.

Prints:

* simulated message deliveries per wall second, on a call-heavy workload
  (real framing, handshake and cloudpickle included), with the trace off
  and on;
* the cost of one simulated worker: CPU time and memory per worker added;
* a run with 1,000 simulated workers that each answer one call.

Run ``python bench/bench_sim.py`` (``--quick`` skips the 1,000-worker run).
CPU seconds are printed beside wall seconds because other jobs on a shared
machine make wall figures noisy.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import trio

import ref
import sim
from sim.scenarios import run_builtin


async def _calls(workers: int, calls: int) -> None:
    async with sim.open_cluster():
        pids = await ref.addprocs(workers)

        async def hammer(pid: int) -> None:
            for _ in range(calls):
                await ref.remotecall_fetch(ref.myid, pid)

        async with trio.open_nursery() as nursery:
            for pid in pids:
                nursery.start_soon(hammer, pid)


def deliveries_per_second(*, workers: int, calls: int, record: bool) -> None:
    async def main() -> None:
        await _calls(workers, calls)

    began, cpu = time.perf_counter(), time.process_time()
    result = sim.simulate(main, seed=1, record=record)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    if result.error is not None:
        raise result.error
    trace = f", {result.trace.events} trace events" if record else ""
    print(
        f"deliveries/s (trace {'on' if record else 'off'}): "
        f"{result.deliveries / wall:,.0f} per wall s, "
        f"{result.deliveries / cpu:,.0f} per CPU s  "
        f"({result.deliveries} deliveries in {wall:.2f} s wall, {cpu:.2f} s CPU; "
        f"{workers} workers x {calls} calls{trace})"
    )


def _added(count: int) -> tuple[float, int]:
    """CPU seconds and peak traced bytes of a run that adds ``count`` workers."""

    async def main() -> None:
        async with sim.open_cluster():
            if count:
                await ref.addprocs(count)

    began = time.process_time()
    result = sim.simulate(main, seed=1)
    cpu = time.process_time() - began
    if result.error is not None:
        raise result.error

    # Memory in a second run: tracemalloc slows everything it watches.
    tracemalloc.start()
    sim.simulate(main, seed=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return cpu, peak


def worker_cost(counts: tuple[int, ...]) -> None:
    base_cpu, base_peak = _added(0)
    for count in counts:
        cpu, peak = _added(count)
        print(
            f"cost of one simulated worker ({count} added, launch to shutdown): "
            f"{(cpu - base_cpu) / count * 1e3:.2f} ms CPU, "
            f"{(peak - base_peak) / count / 1024:.0f} KiB peak memory"
        )


def thousand_workers(count: int) -> None:
    began, cpu = time.perf_counter(), time.process_time()
    result = run_builtin("many-workers", seed=1, workers=count)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    verdict = "ok" if result.ok else f"FAILED: {result.error!r}"
    print(
        f"{count} workers each answering one call: {verdict}, {wall:.1f} s wall, "
        f"{cpu:.1f} s CPU, {result.virtual_ns / 1e9:.3f} s virtual, "
        f"{result.deliveries} deliveries"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip 1,000 workers")
    args = parser.parse_args()

    deliveries_per_second(workers=4, calls=2500, record=False)
    deliveries_per_second(workers=4, calls=2500, record=True)
    worker_cost((10, 100))
    if not args.quick:
        thousand_workers(1000)


if __name__ == "__main__":
    main()
