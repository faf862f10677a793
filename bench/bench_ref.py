"""Round-trip costs of ``ref`` against ``concurrent.futures.ProcessPoolExecutor``.

Both run in the same invocation on the same machine, one worker each:

* a no-op call and its answer (``remotecall_fetch(noop, pid)`` versus
  ``pool.submit(noop).result()``), and
* a 10 MB ``bytes`` payload sent to the worker and returned.

Prints the median time per operation of each and the ratio ref / peer (lower
is better for ref).  Usage: ``python bench/bench_ref.py [--calls N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import trio

import ref


def noop() -> None:
    return None


def echo(data: bytes) -> bytes:
    return data


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def time_each(n: int, op: Callable[[], object]) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        op()
        samples.append(time.perf_counter() - start)
    return samples


async def ref_samples(
    calls: int, big_calls: int, payload: bytes
) -> tuple[float, float]:
    async with ref.open_cluster():
        [pid] = await ref.addprocs(1)
        await ref.remotecall_fetch(noop, pid)

        small = []
        for _ in range(calls):
            start = time.perf_counter()
            await ref.remotecall_fetch(noop, pid)
            small.append(time.perf_counter() - start)

        big = []
        for _ in range(big_calls):
            start = time.perf_counter()
            back = await ref.remotecall_fetch(echo, pid, payload)
            big.append(time.perf_counter() - start)
            assert len(back) == len(payload)
    return _median(small), _median(big)


def pool_samples(calls: int, big_calls: int, payload: bytes) -> tuple[float, float]:
    with ProcessPoolExecutor(max_workers=1) as pool:
        pool.submit(noop).result()
        small = time_each(calls, lambda: pool.submit(noop).result())
        big = time_each(big_calls, lambda: pool.submit(echo, payload).result())
    return _median(small), _median(big)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--big-calls", type=int, default=30)
    parser.add_argument("--megabytes", type=int, default=10)
    args = parser.parse_args()
    payload = bytes(args.megabytes * 1_000_000)

    ref_small, ref_big = trio.run(ref_samples, args.calls, args.big_calls, payload)
    pool_small, pool_big = pool_samples(args.calls, args.big_calls, payload)

    rows = [
        ("no-op round trip", ref_small, pool_small),
        (f"{args.megabytes} MB round trip", ref_big, pool_big),
    ]
    print(f"{'operation':<22}{'ref (ms)':>12}{'pool (ms)':>12}{'ref/pool':>10}")
    for name, mine, peer in rows:
        print(f"{name:<22}{mine * 1e3:>12.3f}{peer * 1e3:>12.3f}{mine / peer:>10.2f}")


if __name__ == "__main__":
    main()
