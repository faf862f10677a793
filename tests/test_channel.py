"""Unit tests of ``ref.Channel`` on its own: no cluster, one trio run.

A channel is the storage behind every RemoteChannel, with Julia's rules:
capacity 0 is a rendezvous, a positive int bounds the buffer, ``math.inf``
never blocks a put; items come out in FIFO order; ``fetch`` reads the head
without removing it; ``close`` refuses puts but lets buffered items drain,
and wakes every waiter.  Waits are observed with
``trio.testing.wait_all_tasks_blocked`` rather than sleeps.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from ref import Channel
from spec.api import InvalidStateError

BOUND = 5.0


class Background:
    """An awaitable started in a nursery, whose outcome can be inspected."""

    def __init__(self) -> None:
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


def start(
    nursery: trio.Nursery, fn: Callable[..., Awaitable[Any]], *args: Any
) -> Background:
    task = Background()

    async def run() -> None:
        try:
            task.result = await fn(*args)
        except Exception as exc:
            task.error = exc
        finally:
            task.done = True

    nursery.start_soon(run)
    return task


async def settle() -> None:
    """Let every task run until all are blocked."""
    await trio.testing.wait_all_tasks_blocked()


def assert_closed(error: BaseException | None) -> None:
    assert isinstance(error, InvalidStateError), error
    assert error.state == "closed"


# ----------------------------------------------------------------- capacity


@pytest.mark.parametrize(
    "capacity", [-1, 1.5, 2.0, "3", None, True, False, math.nan, -math.inf]
)
def test_bad_capacity_raises_value_error(capacity: Any) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Channel(capacity)


@pytest.mark.parametrize("capacity", [0, 1, 7, math.inf])
def test_good_capacities_are_kept(capacity: float) -> None:
    chan = Channel(capacity)
    assert chan.capacity == capacity
    assert len(chan) == 0 and chan.isempty() and not chan.isready()
    assert chan.isopen()


def test_default_capacity_is_one() -> None:
    assert Channel().capacity == 1


async def test_capacity_zero_put_waits_for_a_taker() -> None:
    chan = Channel(0)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            put = start(nursery, chan.put, "hello")
            await settle()
            assert not put.done, "an unbuffered put finished with no taker"
            assert await chan.take() == "hello"
            await settle()
            assert put.done and put.error is None and put.result == "hello"
            assert chan.isempty()


async def test_capacity_zero_take_waits_for_a_putter() -> None:
    chan = Channel(0)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            take = start(nursery, chan.take)
            await settle()
            assert not take.done
            await chan.put("x")
            await settle()
            assert take.done and take.result == "x"


async def test_capacity_zero_hands_over_one_item_per_put() -> None:
    chan = Channel(0)
    got: list[Any] = []
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:

            async def producer() -> None:
                for i in range(20):
                    await chan.put(i)
                    # The put returned, so a taker has its item: none waits.
                    assert chan.isempty(), f"put {i} returned before a take"
                chan.close()

            nursery.start_soon(producer)
            async for item in chan:
                got.append(item)
    assert got == list(range(20))


async def test_bounded_channel_blocks_the_put_beyond_capacity() -> None:
    chan = Channel(3)
    with trio.fail_after(BOUND):
        for i in range(3):
            await chan.put(i)
        assert len(chan) == 3
        async with trio.open_nursery() as nursery:
            fourth = start(nursery, chan.put, 3)
            await settle()
            assert not fourth.done, "a put into a full channel did not wait"
            assert len(chan) == 3
            assert await chan.take() == 0
            await settle()
            assert fourth.done and fourth.error is None
        assert len(chan) == 3
        assert [await chan.take() for _ in range(3)] == [1, 2, 3]


async def test_unbounded_channel_never_blocks_a_put() -> None:
    chan = Channel(math.inf)
    with trio.fail_after(BOUND):
        for i in range(10_000):
            await chan.put(i)
    assert len(chan) == 10_000
    assert await chan.take() == 0


# --------------------------------------------------------------- FIFO, fetch


async def test_items_come_out_in_fifo_order() -> None:
    chan = Channel(math.inf)
    items = [("item", i) for i in range(100)]
    with trio.fail_after(BOUND):
        for item in items:
            await chan.put(item)
        assert [await chan.take() for _ in items] == items


async def test_fifo_holds_with_a_slow_small_channel() -> None:
    chan = Channel(2)
    got: list[Any] = []
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:

            async def producer() -> None:
                for i in range(50):
                    await chan.put(i)
                chan.close()

            nursery.start_soon(producer)
            async for item in chan:
                got.append(item)
                await trio.sleep(0)
    assert got == list(range(50))


async def test_put_returns_the_value_and_stores_the_object_itself() -> None:
    chan = Channel(2)
    value: list[int] = []
    with trio.fail_after(BOUND):
        assert await chan.put(value) is value
        assert await chan.take() is value


async def test_fetch_returns_the_head_without_removing_it() -> None:
    chan = Channel(2)
    with trio.fail_after(BOUND):
        await chan.put("a")
        await chan.put("b")
        assert await chan.fetch() == "a"
        assert await chan.fetch() == "a"
        assert len(chan) == 2
        assert await chan.take() == "a"
        assert await chan.fetch() == "b"


async def test_fetch_and_wait_block_until_an_item_arrives() -> None:
    chan = Channel(1)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            fetch = start(nursery, chan.fetch)
            wait = start(nursery, chan.wait)
            await settle()
            assert not fetch.done and not wait.done
            await chan.put("x")
            await settle()
            assert fetch.result == "x" and wait.done and wait.error is None
        assert len(chan) == 1, "fetch or wait removed the item"


async def test_isready_and_isempty_do_not_consume() -> None:
    chan = Channel(1)
    assert not chan.isready() and chan.isempty()
    with trio.fail_after(BOUND):
        await chan.put(1)
    for _ in range(3):
        assert chan.isready() and not chan.isempty()
    assert len(chan) == 1


# --------------------------------------------------------------------- close


async def test_close_refuses_puts() -> None:
    chan = Channel(2)
    chan.close()
    assert not chan.isopen()
    with trio.fail_after(BOUND):
        with pytest.raises(InvalidStateError) as info:
            await chan.put(1)
    assert info.value.state == "closed"
    assert chan.isempty()


async def test_close_lets_buffered_items_drain_then_take_and_fetch_raise() -> None:
    chan = Channel(3)
    with trio.fail_after(BOUND):
        await chan.put("a")
        await chan.put("b")
        chan.close()
        assert chan.isready() and not chan.isopen()
        assert await chan.fetch() == "a"
        assert await chan.take() == "a"
        assert await chan.take() == "b"
        for op in (chan.take, chan.fetch, chan.wait):
            with pytest.raises(InvalidStateError) as info:
                await op()
            assert info.value.state == "closed"


async def test_close_wakes_every_waiter() -> None:
    empty, full, unbuffered = Channel(1), Channel(1), Channel(0)
    with trio.fail_after(BOUND):
        await full.put("kept")
        async with trio.open_nursery() as nursery:
            takers = [start(nursery, empty.take) for _ in range(3)]
            fetcher = start(nursery, empty.fetch)
            putter = start(nursery, full.put, "refused")
            handover = start(nursery, unbuffered.put, "never taken")
            await settle()
            waiting = [*takers, fetcher, putter, handover]
            assert not any(t.done for t in waiting)
            empty.close()
            full.close()
            unbuffered.close()
            await settle()
            for task in waiting:
                assert task.done
                assert_closed(task.error)
        assert await full.take() == "kept"


def test_close_twice_is_harmless() -> None:
    chan = Channel(1)
    chan.close()
    chan.close()
    assert not chan.isopen()


# ----------------------------------------------------------------- iteration


async def test_async_iteration_ends_when_closed_and_empty() -> None:
    chan = Channel(1)
    got: list[Any] = []
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:

            async def producer() -> None:
                for i in range(5):
                    await chan.put(i)
                await trio.sleep(0.05)  # the loop is waiting on an empty channel
                chan.close()

            nursery.start_soon(producer)
            async for item in chan:
                got.append(item)
    assert got == [0, 1, 2, 3, 4]


async def test_iterating_a_closed_channel_yields_what_is_buffered() -> None:
    chan = Channel(math.inf)
    with trio.fail_after(BOUND):
        for i in range(3):
            await chan.put(i)
        chan.close()
        assert [item async for item in chan] == [0, 1, 2]
        assert [item async for item in chan] == []
