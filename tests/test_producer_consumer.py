"""Producer and consumer on two real workers, through one RemoteChannel.

The channel is stored on the consumer's worker (so the consumer can look at
it with ``channel_from_id``); the producer on the other worker puts into it
remotely.  The first test moves many items and checks that each arrives
exactly once and in order; the second makes the consumer slow and checks
backpressure: the producer is never more than the channel's capacity ahead.

Throughput on ``ref`` is roughly 1,000-2,000 items per second on a loaded
two-CPU machine, so the default test moves ``ITEMS`` items to stay well
under a minute; the 100,000-item run is marked ``slow`` and runs only when
asked for (``pytest -m slow`` or ``DISTREF_SLOW=1``).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import pytest
import trio
from conftest import OpenTestCluster

import ref
from spec.api import RRID, InvalidStateError

#: Items moved by the default test (about 10-20 s on ref).
ITEMS = 20_000
#: Items moved by the slow variant.
SLOW_ITEMS = 100_000
#: Capacity of the channel in the throughput tests.
BUFFER = 100

# ------------------------------------------------- functions run on workers


def _channel(capacity: int) -> ref.Channel:
    return ref.Channel(capacity)


async def _produce(rc: ref.RemoteChannel, n: int) -> list[float]:
    """Put 0..n-1, then close; the time each put returned."""
    done: list[float] = []
    for i in range(n):
        await ref.put(rc, i)
        done.append(time.monotonic())
    await ref.close(rc)
    return done


async def _consume(rc: ref.RemoteChannel) -> list[Any]:
    return [item async for item in rc]


async def _consume_slowly(
    rc: ref.RemoteChannel, rrid: RRID, delay: float
) -> tuple[list[Any], list[int], list[float]]:
    """On the owner: take until closed, ``delay`` s apart.

    Returns the items, the channel's length seen just before each take, and
    when each take began.
    """
    await ref.isready(rc)  # makes the channel here if the producer has not
    chan = ref.channel_from_id(rrid)
    items: list[Any] = []
    lengths: list[int] = []
    started: list[float] = []
    while True:
        lengths.append(len(chan))
        started.append(time.monotonic())
        try:
            items.append(await ref.take(rc))
        except InvalidStateError:
            break
        await trio.sleep(delay)
    return items, lengths[:-1], started[:-1]


# ------------------------------------------------------------------- tests


async def _move(
    open_test_cluster: OpenTestCluster, n: int, bound: float
) -> tuple[list[Any], float]:
    async with open_test_cluster(2, bound=bound):
        producer, consumer = ref.workers()
        rc = ref.RemoteChannel(functools.partial(_channel, BUFFER), consumer)
        results: dict[str, Any] = {}

        async def run(name: str, f: Any, pid: int, *args: Any) -> None:
            results[name] = await ref.remotecall_fetch(f, pid, *args)

        began = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "consumer", _consume, consumer, rc)
            nursery.start_soon(run, "producer", _produce, producer, rc, n)
        elapsed = time.monotonic() - began
    return results["consumer"], elapsed


def _check_moved(items: list[Any], n: int, elapsed: float) -> None:
    rate = n / elapsed
    print(f"moved {n} items in {elapsed:.1f} s: {rate:.0f} items/s")
    assert len(items) == n, f"{len(items)} items arrived, {n} were sent"
    if items != list(range(n)):
        seen = set(items)
        lost = sorted(set(range(n)) - seen)[:10]
        duplicated = len(items) - len(seen)
        raise AssertionError(
            f"lost (first 10): {lost}, duplicated: {duplicated}, "
            f"out of order: {items != sorted(items)}"
        )


async def test_every_item_arrives_exactly_once_in_order(
    open_test_cluster: OpenTestCluster,
) -> None:
    items, elapsed = await _move(open_test_cluster, ITEMS, bound=90)
    _check_moved(items, ITEMS, elapsed)


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
async def test_a_hundred_thousand_items_arrive_exactly_once_in_order(
    open_test_cluster: OpenTestCluster,
) -> None:
    items, elapsed = await _move(open_test_cluster, SLOW_ITEMS, bound=400)
    _check_moved(items, SLOW_ITEMS, elapsed)


async def test_a_slow_consumer_holds_the_producer_back(
    open_test_cluster: OpenTestCluster,
) -> None:
    capacity, n, delay = 4, 120, 0.01
    async with open_test_cluster(2, bound=60):
        producer, consumer = ref.workers()
        rc = ref.RemoteChannel(functools.partial(_channel, capacity), consumer)
        results: dict[str, Any] = {}

        async def run(name: str, f: Any, pid: int, *args: Any) -> None:
            results[name] = await ref.remotecall_fetch(f, pid, *args)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                run, "consumer", _consume_slowly, consumer, rc, rc.rrid, delay
            )
            nursery.start_soon(run, "producer", _produce, producer, rc, n)

    items, lengths, take_started = results["consumer"]
    put_done: list[float] = results["producer"]
    assert items == list(range(n))
    assert len(lengths) == len(take_started) == n

    # On the owner the channel never holds more than its capacity...
    assert max(lengths) <= capacity, f"lengths seen by the consumer: {lengths}"
    # ...and it is full most of the time: the producer is kept waiting.
    full = sum(length == capacity for length in lengths)
    assert full >= n // 2, f"the channel was full at only {full} of {n} takes"
    # Put i can only return once the consumer has begun taking item
    # i - capacity: the producer is never more than capacity items ahead.
    # (Both clocks are the machine's monotonic clock.)
    ahead = [i for i in range(capacity, n) if put_done[i] <= take_started[i - capacity]]
    assert not ahead, f"puts that returned too early: {ahead[:10]}"
    # And so the producer took about as long as the consumer.
    producing = put_done[-1] - put_done[0]
    assert producing >= (n - capacity - 1) * delay * 0.9, (
        f"the producer finished {n} puts in {producing:.2f} s"
    )
