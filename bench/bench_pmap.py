"""``ref.pmap`` against ``multiprocessing.Pool`` on many tiny items.

One invocation, one machine, the same number of worker processes for both:

* ``ref.pmap`` with ``batch_size=1`` (one round trip per item) and with a
  large batch (``items // (4 * workers)`` by default);
* ``Pool.map`` (which chunks by itself), ``Pool.imap`` with
  ``chunksize=1`` and ``Pool.imap`` with the same large chunk size.

Each variant runs ``--repeat`` times; the median wall time is reported with
its ratio to ``Pool.map`` and to the matching ``imap`` (lower is better for
ref).  Worker start-up is excluded on both sides.

Usage: ``python bench/bench_pmap.py [--items 10000] [--workers 4]
[--batch N] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable

import trio

import ref


def tiny(x: int) -> int:
    """The work per item: next to nothing, so overheads dominate."""
    return x + 1


def _timed(repeat: int, run: Callable[[], object]) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def _atimed(repeat: int, run: Callable[[], Awaitable[object]]) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def ref_times(
    items: int, workers: int, batch: int, repeat: int
) -> dict[str, float]:
    data = range(items)
    expected = [tiny(x) for x in data]
    async with ref.open_cluster():
        await ref.addprocs(workers)
        pool = ref.CachingPool(ref.workers())
        # Warm up: ship the function and open every link.
        assert await ref.pmap(tiny, range(100), pool=pool) == [
            tiny(x) for x in range(100)
        ]

        async def one() -> None:
            assert await ref.pmap(tiny, data, pool=pool) == expected

        async def batched() -> None:
            assert await ref.pmap(tiny, data, pool=pool, batch_size=batch) == expected

        return {
            "ref.pmap batch_size=1": await _atimed(repeat, one),
            f"ref.pmap batch_size={batch}": await _atimed(repeat, batched),
        }


def pool_times(items: int, workers: int, batch: int, repeat: int) -> dict[str, float]:
    data = range(items)
    expected = [tiny(x) for x in data]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(tiny, range(100))
        return {
            "Pool.map": _timed(repeat, lambda: _check(pool.map(tiny, data), expected)),
            "Pool.imap chunksize=1": _timed(
                repeat, lambda: _check(list(pool.imap(tiny, data, 1)), expected)
            ),
            f"Pool.imap chunksize={batch}": _timed(
                repeat, lambda: _check(list(pool.imap(tiny, data, batch)), expected)
            ),
        }


def _check(got: list[int], expected: list[int]) -> None:
    assert got == expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--batch", type=int, default=0, help="0: items // (4 * workers)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    batch = args.batch or max(1, args.items // (4 * args.workers))

    times = trio.run(ref_times, args.items, args.workers, batch, args.repeat)
    times.update(pool_times(args.items, args.workers, batch, args.repeat))

    print(f"{args.items} items, {args.workers} workers, median of {args.repeat} runs")
    for name, seconds in times.items():
        print(f"  {name:<28} {seconds * 1e3:10.1f} ms")
    print("ratios (ref / peer; lower is better for ref):")
    pairs = [
        ("ref.pmap batch_size=1", "Pool.imap chunksize=1"),
        ("ref.pmap batch_size=1", "Pool.map"),
        (f"ref.pmap batch_size={batch}", f"Pool.imap chunksize={batch}"),
        (f"ref.pmap batch_size={batch}", "Pool.map"),
    ]
    for mine, theirs in pairs:
        print(f"  {mine} / {theirs}: {times[mine] / times[theirs]:.2f}")


if __name__ == "__main__":
    main()
