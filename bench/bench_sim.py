"""How fast the simulator runs: figures to watch, not timed assertions.

Prints:

* simulated message deliveries per wall second, on a call-heavy workload
  (real framing, handshake and cloudpickle included), with the trace off
  and on;
* the cost of one simulated worker: wall time and memory per worker added;
* a run with 1,000 simulated workers that each answer one call.

Run ``python bench/bench_sim.py`` (``--quick`` skips the 1,000-worker run).
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

    began = time.perf_counter()
    result = sim.simulate(main, seed=1, record=record)
    wall = time.perf_counter() - began
    if result.error is not None:
        raise result.error
    trace = f", {result.trace.events} trace events" if record else ""
    print(
        f"deliveries/s (trace {'on' if record else 'off'}): "
        f"{result.deliveries / wall:,.0f}  "
        f"({result.deliveries} deliveries in {wall:.2f} s wall, "
        f"{workers} workers x {calls} calls{trace})"
    )


def _added(count: int) -> tuple[float, int]:
    """Wall seconds and peak traced bytes of a run that adds ``count`` workers."""

    async def main() -> None:
        async with sim.open_cluster():
            if count:
                await ref.addprocs(count)

    tracemalloc.start()
    began = time.perf_counter()
    result = sim.simulate(main, seed=1)
    wall = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if result.error is not None:
        raise result.error
    return wall, peak


def worker_cost(counts: tuple[int, ...]) -> None:
    base_wall, base_peak = _added(0)
    for count in counts:
        wall, peak = _added(count)
        print(
            f"cost of one simulated worker ({count} added, start to shutdown, "
            f"tracemalloc on): {(wall - base_wall) / count * 1e3:.2f} ms wall, "
            f"{(peak - base_peak) / count / 1024:.0f} KiB peak memory"
        )


def thousand_workers(count: int) -> None:
    began = time.perf_counter()
    result = run_builtin("many-workers", seed=1, workers=count)
    wall = time.perf_counter() - began
    verdict = "ok" if result.ok else f"FAILED: {result.error!r}"
    print(
        f"{count} workers each answering one call: {verdict}, {wall:.1f} s wall, "
        f"{result.virtual_ns / 1e9:.3f} s virtual, {result.deliveries} deliveries"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip 1,000 workers")
    args = parser.parse_args()

    deliveries_per_second(workers=4, calls=2500, record=False)
    deliveries_per_second(workers=4, calls=2500, record=True)
    worker_cost((50, 200))
    if not args.quick:
        thousand_workers(1000)


if __name__ == "__main__":
    main()
