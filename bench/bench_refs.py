"""Reference tables and worker memory across many round trips on ``ref``.

One real worker process answers, in order:

* ``--fetches`` calls of ``remotecall_fetch`` (100,000 by default), which
  store nothing on the worker, and
* ``--futures`` round trips of ``remotecall`` then ``fetch`` (10,000 by
  default), each of which stores the result on the worker until the fetch
  tells it to let go.

Before the first phase and after each one, prints the number of values in
the reference table (``ref.live_refs()``) of the master and of the worker,
and the worker's resident memory (``VmRSS`` from ``/proc/<pid>/status``,
read after a garbage collection on the worker).  The tables must end at
their starting size; the memory figure is one to watch, not an assertion.
A short warm-up runs first, so that the starting figure already includes
what the first calls allocate once (imports, caches).

Usage: ``python bench/bench_refs.py [--fetches N] [--futures N]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

import trio

import ref

#: Round trips of each kind made before the first measurement.
WARM_UP = 1_000


def rss_kib(ospid: int) -> int:
    """The resident set size of OS process ``ospid``, in KiB."""
    for line in Path(f"/proc/{ospid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{ospid}/status has no VmRSS line")


async def measure(label: str, pid: int, ospid: int) -> tuple[int, int]:
    """Print and return the worker's table size and RSS; master's too."""
    await ref.remotecall_fetch(gc.collect, pid)
    gc.collect()
    worker_table = len(await ref.remotecall_fetch(ref.live_refs, pid))
    master_table = len(ref.live_refs())
    rss = rss_kib(ospid)
    print(
        f"{label:<34}master table {master_table:>3}   worker table "
        f"{worker_table:>3}   worker RSS {rss / 1024:8.1f} MiB"
    )
    return worker_table, rss


async def fetches(pid: int, n: int) -> None:
    for _ in range(n):
        await ref.remotecall_fetch(os.getpid, pid)


async def futures(pid: int, n: int) -> None:
    for _ in range(n):
        await ref.fetch(await ref.remotecall(os.getpid, pid))


async def bench(n_fetches: int, n_futures: int) -> bool:
    async with ref.open_cluster():
        [pid] = await ref.addprocs(1)
        ospid: int = await ref.remotecall_fetch(os.getpid, pid)
        await fetches(pid, WARM_UP)
        await futures(pid, WARM_UP)

        start_table, start_rss = await measure("start (after warm-up)", pid, ospid)
        began = time.perf_counter()
        await fetches(pid, n_fetches)
        took = time.perf_counter() - began
        await measure(f"after {n_fetches:,} remotecall_fetch", pid, ospid)
        print(f"{'':<34}({took:.1f} s, {took / n_fetches * 1e6:.0f} us each)")

        began = time.perf_counter()
        await futures(pid, n_futures)
        took = time.perf_counter() - began
        end_table, end_rss = await measure(
            f"after {n_futures:,} remotecall+fetch", pid, ospid
        )
        print(f"{'':<34}({took:.1f} s, {took / n_futures * 1e6:.0f} us each)")

    print(
        f"worker table {start_table} -> {end_table}; worker RSS "
        f"{(end_rss - start_rss) / 1024:+.1f} MiB over the run"
    )
    return end_table == start_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetches", type=int, default=100_000)
    parser.add_argument("--futures", type=int, default=10_000)
    args = parser.parse_args()
    if not trio.run(bench, args.fetches, args.futures):
        raise SystemExit("the worker's reference table did not return to its size")


if __name__ == "__main__":
    main()
