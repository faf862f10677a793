"""pmap and its helpers: ``ref._pmap``.

The pure parts (delays, back-off, the retry loop, progress) are tested
without workers; the rest on real worker processes.  The documented
behaviours and the 32-combination matrix are conformance scenarios
(``conformance/scenarios/pmap.py``).
"""

from __future__ import annotations

import io
import itertools
import os
import random
from typing import Any

import pytest
import trio
from conftest import OpenTestCluster
from hypothesis import given
from hypothesis import strategies as st

import ref
from ref._pmap import Delays, Progress, TerminalBar, retrying

# ------------------------------------------------- functions run on workers


def _square(x: int) -> int:
    return x * x


async def _async_square(x: int) -> int:
    await trio.sleep(0)
    return x * x


def _exit_at(bad: int, x: int) -> int:
    if x == bad:
        os._exit(1)
    return x


_seen: dict[int, int] = {}


def _fail_first_time_here(x: int) -> int:
    _seen[x] = _seen.get(x, 0) + 1
    if _seen[x] == 1:
        raise ValueError("transient")
    return x


async def _slow(x: int) -> int:
    await trio.sleep(0.05)
    return x


# ------------------------------------------------------------ pure parts


def test_delays_replay_a_one_shot_iterator_lazily() -> None:
    source = itertools.count(1)
    delays = Delays(source)  # type: ignore[arg-type]  # an infinite iterator of ints
    assert list(itertools.islice(delays.fresh(), 3)) == [1, 2, 3]
    assert list(itertools.islice(delays.fresh(), 4)) == [1, 2, 3, 4]
    assert list(itertools.islice(delays.rest().fresh(), 2)) == [2, 3]
    assert bool(delays) and not Delays(iter([]))
    assert list(Delays(x for x in [0.5]).rest().fresh()) == []


def test_delays_iterate_a_collection_afresh() -> None:
    backoff = ref.ExponentialBackOff(n=3, rng=random.Random(1))
    delays = Delays(backoff)
    assert len(list(delays.fresh())) == 3 == len(list(delays.fresh()))
    assert list(Delays([1.0, 2.0]).rest().fresh()) == [2.0]
    with pytest.raises(TypeError, match="retry_delays"):
        Delays(3)  # type: ignore[arg-type]  # the point


def test_exponential_backoff_is_repeatable_with_a_seeded_rng() -> None:
    a = list(ref.ExponentialBackOff(n=5, rng=random.Random(7)))
    b = list(ref.ExponentialBackOff(n=5, rng=random.Random(7)))
    assert a == b and len(a) == 5 and a[0] == 0.05
    assert list(ref.ExponentialBackOff(n=0)) == []
    assert list(ref.ExponentialBackOff(n=3, first_delay=20.0)) == [10.0] * 3
    for bad in ({"n": -1}, {"factor": -1.0}, {"jitter": 2.0}):
        with pytest.raises(ValueError):
            ref.ExponentialBackOff(**bad)


async def test_retrying_calls_once_per_delay_plus_a_last_time() -> None:
    calls: list[float] = []

    async def attempt() -> Any:
        calls.append(trio.current_time())
        raise KeyError("again")

    with pytest.raises(KeyError):
        await retrying(attempt, Delays([0.0, 0.0, 0.0]), None)
    assert len(calls) == 4


async def test_retry_check_may_replace_the_remaining_delays() -> None:
    calls = 0

    async def attempt() -> Any:
        nonlocal calls
        calls += 1
        raise KeyError("again")

    def check(state: Any, exc: Exception) -> tuple[Any, bool]:
        return iter(()), True  # no delay left: one last attempt

    with pytest.raises(KeyError):
        with trio.fail_after(5):
            await retrying(attempt, Delays(itertools.repeat(0.0)), check)
    assert calls == 2

    def bad(state: Any, exc: Exception) -> Any:
        return "yes"

    with pytest.raises(TypeError, match="bool or a"):
        await retrying(attempt, Delays([0.0]), bad)


async def test_retrying_unwraps_remote_exceptions_and_notes_where() -> None:
    async def attempt() -> Any:
        raise ref.RemoteException(5, ValueError("inner"), "Traceback: here\n")

    with pytest.raises(ValueError, match="inner") as info:
        await retrying(attempt, Delays([]), None)
    assert any("raised on process 5" in n for n in info.value.__notes__)


async def test_the_terminal_bar_draws_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet = io.StringIO()
    bar = TerminalBar(quiet)
    bar(1, 2)
    bar.close()
    assert quiet.getvalue() == ""

    tty = Tty()
    bar = TerminalBar(tty)
    for done in range(1, 101):
        bar(done, 100)
    bar.close()
    text = tty.getvalue()
    assert text.endswith("] 100/100\n"), text[-40:]
    assert text.count("\r") < 100, "the bar was redrawn for every element"
    unknown = Tty()
    TerminalBar(unknown)(3, None)
    assert "3 done" in unknown.getvalue()


def test_progress_counts_and_reports() -> None:
    seen: list[tuple[int, int | None]] = []
    progress = Progress(lambda done, total: seen.append((done, total)), 5)
    progress.advance()
    progress.advance(3)
    progress.advance(0)
    progress.close()
    assert seen == [(1, 5), (4, 5)]


# ------------------------------------------------------- on the cluster


@pytest.mark.parametrize("batch_size", [1, 3])
async def test_progress_reports_every_element_once(
    open_test_cluster: OpenTestCluster, batch_size: int
) -> None:
    async with open_test_cluster(1):
        seen: list[tuple[int, int | None]] = []
        got = await ref.pmap(
            _square,
            range(7),
            batch_size=batch_size,
            progress=lambda done, total: seen.append((done, total)),
        )
        assert got == [x * x for x in range(7)]
        assert seen[-1] == (7, 7)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        generated = await ref.pmap(
            _square, (x for x in range(3)), progress=lambda d, t: seen.append((d, t))
        )
        assert generated == [0, 1, 4] and seen[-1] == (3, None)


async def test_progress_true_stays_silent_off_a_terminal(
    open_test_cluster: OpenTestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    async with open_test_cluster(0):
        assert await ref.pmap(_square, range(3), progress=True) == [0, 1, 4]
    assert capsys.readouterr().err == ""
    async with open_test_cluster(0):
        with pytest.raises(TypeError, match="progress"):
            await ref.pmap(_square, range(3), progress="yes")


async def test_pmap_accepts_async_functions_and_checks_its_arguments(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        assert await ref.pmap(_async_square, range(4)) == [0, 1, 4, 9]
        assert await ref.pmap(_async_square, range(4), batch_size=2) == [0, 1, 4, 9]
        with pytest.raises(TypeError, match="at least one iterable"):
            await ref.pmap(_square)
        with pytest.raises(TypeError, match="on_error"):
            await ref.pmap(_square, [1], on_error=3)  # type: ignore[arg-type]


async def test_worker_death_without_handlers_raises_process_exited(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(2):
        for batch_size in (1, 2):
            with pytest.raises(ref.ProcessExitedException):
                await ref.pmap(
                    _exit_at, [3 + batch_size] * 8, range(8), batch_size=batch_size
                )
        assert len(ref.workers()) == 1


async def test_worker_death_with_retries_gives_every_result_once(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(3):
        # Element 5 kills every worker it reaches, then finds none left.
        with pytest.raises(ref.NoActiveWorkerError):
            await ref.pmap(_exit_at, [5] * 12, range(12), retry_delays=[0.0] * 3)
        assert ref.workers() == [1]
    async with open_test_cluster(3):
        victim = ref.workers()[0]
        results: list[int] = []

        async def run() -> None:
            results.extend(
                await ref.pmap(_slow, range(30), retry_delays=itertools.repeat(0.0))
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.sleep(0.1)
            await ref.faults.kill(victim)
        assert results == list(range(30))


async def test_retry_delays_may_be_a_generator(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        got = await ref.pmap(
            _fail_first_time_here,
            range(5),
            retry_delays=(0.0 for _ in range(2)),
            batch_size=2,
        )
        assert got == list(range(5))
        with pytest.raises(ValueError, match="batch_size"):
            await ref.pmap(_square, range(3), batch_size=True)


@given(st.lists(st.integers(-1000, 1000), max_size=30), st.integers(1, 5))
async def test_a_local_pmap_equals_map(items: list[int], size: int) -> None:
    with trio.fail_after(10):
        async with ref.open_cluster():
            got = await ref.pmap(_square, items, batch_size=size, distributed=False)
    assert got == [x * x for x in items]


@pytest.mark.parametrize(
    ("delays", "error"),
    [
        ([-1], ValueError),
        ([float("nan")], ValueError),
        (["1"], TypeError),
        # Lazy and endless: the bad delay is found when it is drawn.
        (itertools.chain([0.0], itertools.repeat(-2.5)), ValueError),
    ],
)
async def test_a_bad_retry_delay_is_refused_when_drawn(
    delays: Any, error: type[Exception]
) -> None:
    attempts = 0

    async def attempt() -> Any:
        nonlocal attempts
        attempts += 1
        raise KeyError("again")

    with pytest.raises(error, match="pmap: retry_delays gave"):
        await retrying(attempt, Delays(delays), None)
    assert attempts == (1 if isinstance(delays, itertools.chain) else 0)


async def test_pmap_refuses_a_negative_retry_delay() -> None:
    async with ref.open_cluster():
        with pytest.raises(ValueError, match=r"retry_delays gave -1\b"):
            await ref.pmap(abs, [1], retry_delays=[-1])
