"""pmap: order, pools, scheduling, batches, on_error and retries.

Includes Julia's 32-combination matrix of {distributed default/False} x
{batch_size default/2} x {on_error} x {retry_delays} x {retry_check}.
What the scenarios ship to workers lives in ``_parallel``.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import trio

from conformance.registry import scenario
from spec.api import (
    DistributedAPI,
    ProcessExitedException,
    RemoteException,
)

from ._parallel import (
    Counted,
    add3,
    always_fail,
    attempts,
    fail_at,
    fail_at_recording,
    fail_even,
    fail_once_here,
    handler_whoami,
    identity,
    leaves,
    matrix_always,
    matrix_check,
    matrix_f,
    matrix_on_error,
    probe,
    probe_stats,
    probe_whoami,
    raise_again,
    root_cause,
    sleep_then,
    unpickled,
)
from ._shipped import (
    PATIENCE,
    ScenarioError,
    eventually,
    new_key,
    records,
    wait_gate,
    whoami,
    within,
)

#: A short pause that lets concurrent elements overlap.
OVERLAP = 0.05


async def _expect_error(what: str, call: Any) -> BaseException:
    """Await ``call`` (a zero-argument async function); return its error."""
    try:
        with within(PATIENCE, what):
            value = await call()
    except Exception as exc:
        return exc
    raise AssertionError(f"{what} returned {value!r} instead of raising")


# ------------------------------------------------------------- results


@scenario("pmap.results-in-input-order", "pmap.multiple-collections-elementwise")
async def pmap_returns_results_in_input_order_and_zips_its_inputs(
    d: DistributedAPI,
) -> None:
    await d.addprocs(2)
    delays = [0.2, 0.15, 0.1, 0.05, 0.0, 0.0]
    with within(PATIENCE, "pmap of elements that finish in reverse"):
        got = await d.pmap(sleep_then, delays, range(6))
    assert got == list(range(6)), f"pmap results out of input order: {got}"

    with within(PATIENCE, "pmap over three collections"):
        zipped = await d.pmap(add3, [1, 2, 3], (10, 20), range(100, 200))
        local = await d.pmap(add3, [1, 2], (10, 20, 30), [0.5], distributed=False)
        empty = await d.pmap(add3, [1], [2], [], batch_size=2)
    assert zipped == [111, 123], f"pmap over three collections gave {zipped}"
    assert local == [11.5], f"pmap stops at the shortest input: {local}"
    assert empty == [], f"pmap with an empty input gave {empty}"


@scenario("pmap.pool-choice")
async def pmap_runs_on_the_given_pool_or_a_fresh_caching_pool(
    d: DistributedAPI,
) -> None:
    a, b = await d.addprocs(2)
    with within(PATIENCE, "pmap over a one-member pool"):
        got = await d.pmap(whoami, [d] * 8, pool=d.WorkerPool([b]))
    assert got == [b] * 8, f"pmap over pool [{b}] ran on {got}"

    key = new_key()
    f = Counted(key)
    with within(PATIENCE, "pmap without a pool, twice"):
        for _ in range(2):
            assert await d.pmap(f, range(20)) == [(x, 0) for x in range(20)]
        shipped = [await d.remotecall_fetch(unpickled, p, key) for p in (a, b)]
        spread = set(await d.pmap(probe_whoami, [d] * 8, [key] * 8, [OVERLAP] * 8))
    assert shipped == [2, 2], (
        f"without a pool f reached each worker {shipped} times in two calls; "
        "a fresh CachingPool per call sends it once per worker per call"
    )
    assert spread == {a, b}, f"pmap without a pool used only {spread}"


@scenario("pmap.scheduling")
async def pmap_gives_each_member_one_element_at_a_time(d: DistributedAPI) -> None:
    workers = await d.addprocs(2)
    key = new_key()
    n = 12
    with within(PATIENCE, "pmap of probes"):
        ran_on = await d.pmap(probe_whoami, [d] * n, [key] * n, [OVERLAP] * n)
        stats = [await d.remotecall_fetch(probe_stats, p, key) for p in workers]
    assert set(ran_on) == set(workers), f"not every member got elements: {ran_on}"
    peaks = [peak for peak, _ in stats]
    assert peaks == [1, 1], f"a member ran several elements at once: {peaks}"
    assert sum(count for _, count in stats) == n, f"probe counts {stats}"


@scenario("pmap.not-distributed-runs-locally")
async def pmap_not_distributed_runs_in_tasks_of_the_caller(
    d: DistributedAPI,
) -> None:
    await d.addprocs(2)
    key = new_key()
    n = 8
    with within(PATIENCE, "pmap with distributed=False"):
        ran_on = await d.pmap(
            probe_whoami, [d] * n, [key] * n, [OVERLAP] * n, distributed=False
        )
    peak, count = probe_stats(key)
    assert ran_on == [d.myid()] * n, f"distributed=False ran on {ran_on}"
    assert count == n, f"{count} of {n} elements ran in the caller"
    assert peak == d.nworkers(), f"{peak} ran at once, expected nworkers()"


@scenario("pmap.no-remote-workers-runs-locally")
async def pmap_without_remote_workers_runs_locally_one_at_a_time(
    d: DistributedAPI,
) -> None:
    me = d.myid()
    with within(PATIENCE, "pmap with no workers"):
        assert await d.pmap(whoami, [d] * 4, batch_size=2) == [me] * 4
        assert await d.pmap(whoami, [d] * 4, batch_size="auto") == [me] * 4
    await d.addprocs(1)
    key = new_key()
    with within(PATIENCE, "pmap over a pool holding only the caller"):
        got = await d.pmap(
            probe, [key] * 4, [OVERLAP] * 4, range(4), pool=d.WorkerPool([me])
        )
        again = await d.pmap(whoami, [d] * 3, pool=d.WorkerPool([me]), batch_size=0)
    assert got == list(range(4)), f"pmap gave {got}"
    assert probe_stats(key) == (1, 4), f"local probes: {probe_stats(key)}"
    assert again == [me] * 3, f"a local pmap did not treat batch_size as 1: {again}"


@scenario("pmap.batch-size-positive-int")
async def a_distributed_pmap_refuses_a_batch_size_that_is_not_a_positive_int(
    d: DistributedAPI,
) -> None:
    await d.addprocs(1)
    for bad in (0, -1, 1.5, "auto", None):
        try:
            with within(PATIENCE, f"pmap with batch_size={bad!r}"):
                await d.pmap(identity, range(3), batch_size=bad)
        except ValueError:
            continue
        raise AssertionError(f"pmap accepted batch_size={bad!r}")


@scenario("pmap.batches-one-request-each")
async def each_batch_is_one_request_run_concurrently_on_its_worker(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    key = new_key()
    n = 8
    with within(PATIENCE, "a batched pmap on one worker"):
        got = await d.pmap(probe, [key] * n, [OVERLAP] * n, range(n), batch_size=4)
        peak, count = await d.remotecall_fetch(probe_stats, pid, key)
    assert got == list(range(n)), f"batched pmap gave {got}"
    assert count == n, f"the worker ran {count} of {n} elements"
    assert peak == 4, f"{peak} elements of a batch of 4 ran at once on the worker"


# -------------------------------------------------------------- errors


@scenario("pmap.unhandled-error-stops")
async def an_unhandled_error_stops_pmap_and_is_raised(d: DistributedAPI) -> None:
    (pid,) = await d.addprocs(1)
    one = d.WorkerPool([pid])
    for distributed in (True, False):
        key = new_key()
        f = functools.partial(fail_at_recording, key, 3)
        exc = await _expect_error(
            f"pmap with a failing element (distributed={distributed})",
            lambda f=f, distributed=distributed: d.pmap(
                f, range(8), pool=one, distributed=distributed
            ),
        )
        where = pid if distributed else d.myid()
        done = await d.remotecall_fetch(records, where, key)
        if distributed:
            assert isinstance(exc, RemoteException), f"raised {exc!r}"
            assert isinstance(exc.exception, ScenarioError), repr(exc.exception)
        else:
            assert isinstance(exc, ScenarioError), f"local pmap raised {exc!r}"
        assert done == [0, 1, 2, 3], f"elements processed after the failure: {done}"


@scenario("pmap.on-error-result")
async def on_error_replaces_the_failed_element_or_stops_pmap(
    d: DistributedAPI,
) -> None:
    await d.addprocs(2)
    for distributed in (True, False):
        with within(PATIENCE, f"pmap with on_error (distributed={distributed})"):
            got = await d.pmap(
                fail_even, range(1, 7), on_error=repr, distributed=distributed
            )
        expected = [1, repr(ScenarioError("foobar")), 3] * 2
        expected[3:] = [expected[1], 5, expected[1]]
        assert got == [1, expected[1], 3, expected[1], 5, expected[1]], got

        exc = await _expect_error(
            f"pmap whose on_error raises (distributed={distributed})",
            lambda distributed=distributed: d.pmap(
                fail_even, range(1, 7), on_error=raise_again, distributed=distributed
            ),
        )
        cause = root_cause(exc)
        assert isinstance(cause, ScenarioError) and str(cause) == "handler", (
            f"pmap did not raise the handler's error: {exc!r}"
        )


@scenario("pmap.on-error-on-worker-raw")
async def on_error_runs_on_the_worker_with_the_raw_exception(
    d: DistributedAPI,
) -> None:
    workers = await d.addprocs(2)
    handler = functools.partial(handler_whoami, d)
    with within(PATIENCE, "pmap with an on_error that reports where it ran"):
        got = await d.pmap(fail_even, range(1, 9), on_error=handler)
    for i, value in enumerate(got, start=1):
        if i % 2:
            assert value == i, f"element {i} gave {value!r}"
            continue
        where, kind = value
        assert where in workers, f"on_error ran on {where}, not on a worker"
        assert kind == "ScenarioError", f"on_error received a {kind}"


@scenario("pmap.retry-attempt-count")
async def retry_delays_allow_one_call_more_than_there_are_delays(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    one = d.WorkerPool([pid])
    key = new_key()
    delays = [0.0, 0.1, 0.2]
    start = trio.current_time()
    exc = await _expect_error(
        "pmap of an always-failing element with three delays",
        lambda: d.pmap(
            functools.partial(always_fail, key), [7], pool=one, retry_delays=delays
        ),
    )
    elapsed = trio.current_time() - start
    assert isinstance(exc, ScenarioError), f"pmap raised {exc!r}"
    count = await d.remotecall_fetch(attempts, pid, key, 7)
    assert count == 4, f"f was called {count} times with 3 delays"
    assert elapsed >= sum(delays) * 0.9, f"the delays were not waited: {elapsed}"


@scenario("pmap.retry-check-protocol", "pmap.retry-sees-unwrapped")
async def retry_check_decides_with_a_bool_or_a_state_pair_on_the_raw_error(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    one = d.WorkerPool([pid])
    seen: list[str] = []

    def check_bool(state: Any, exc: Exception) -> bool:
        seen.append(type(exc).__name__)
        return True

    def check_pair(state: Any, exc: Exception) -> tuple[Any, bool]:
        seen.append(type(exc).__name__)
        return state, False

    for check, calls in ((check_bool, 3), (check_pair, 1)):
        key = new_key()
        seen.clear()
        exc = await _expect_error(
            f"pmap with {check.__name__}",
            lambda key=key, check=check: d.pmap(
                functools.partial(always_fail, key),
                [1],
                pool=one,
                retry_delays=[0.0, 0.0],
                retry_check=check,
            ),
        )
        assert isinstance(exc, ScenarioError), f"pmap raised {exc!r}, not f's error"
        count = await d.remotecall_fetch(attempts, pid, key, 1)
        assert count == calls, f"{check.__name__}: f ran {count} times"
        assert seen == ["ScenarioError"] * min(calls, 2), f"check saw {seen}"


@scenario("pmap.on-error-before-retry")
async def on_error_runs_before_retry(d: DistributedAPI) -> None:
    (pid,) = await d.addprocs(1)
    one = d.WorkerPool([pid])
    key = new_key()
    with within(PATIENCE, "pmap whose on_error returns"):
        got = await d.pmap(
            functools.partial(always_fail, key),
            [1],
            pool=one,
            on_error=type,
            retry_delays=[0.0] * 3,
        )
    assert got == [ScenarioError], f"on_error's value was not the result: {got}"
    count = await d.remotecall_fetch(attempts, pid, key, 1)
    assert count == 1, f"an element handled by on_error was retried ({count} calls)"

    key = new_key()
    exc = await _expect_error(
        "pmap whose on_error raises",
        lambda: d.pmap(
            functools.partial(always_fail, key),
            [1],
            pool=one,
            on_error=raise_again,
            retry_delays=[0.0] * 3,
        ),
    )
    count = await d.remotecall_fetch(attempts, pid, key, 1)
    assert count == 4, f"a rethrowing on_error did not lead to retries ({count})"
    assert isinstance(root_cause(exc), ScenarioError), repr(exc)


# ------------------------------------------------------------- batches


@scenario("pmap.batch-on-error-on-caller")
async def with_batches_on_error_runs_on_the_caller_once_per_failure(
    d: DistributedAPI,
) -> None:
    await d.addprocs(2)
    handled: list[tuple[int, str]] = []

    def handler(exc: Exception) -> str:
        handled.append((d.myid(), type(exc).__name__))
        return "handled"

    with within(PATIENCE, "a batched pmap with on_error"):
        got = await d.pmap(fail_even, range(1, 9), batch_size=3, on_error=handler)
    assert got == [1, "handled", 3, "handled", 5, "handled", 7, "handled"], got
    assert handled == [(d.myid(), "ScenarioError")] * 4, f"on_error ran {handled}"


@scenario("pmap.batch-request-failure-per-element", needs=("faults.kill",))
async def a_failed_batch_request_fails_each_of_its_elements(
    d: DistributedAPI,
) -> None:
    workers = await d.addprocs(2)
    key = new_key()
    results: list[Any] = []

    async def run() -> None:
        results.extend(
            await d.pmap(_gate_at_four(key), range(9), batch_size=3, on_error=identity)
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)

        async def blocked() -> bool:
            for p in workers:
                if "started" in await d.remotecall_fetch(records, p, key):
                    return True
            return False

        await eventually(blocked, "element 4 never started")
        for p in workers:
            if "started" in await d.remotecall_fetch(records, p, key):
                await d.faults.kill(p)

    assert [results[i] for i in (0, 1, 2, 6, 7, 8)] == [0, 1, 2, 6, 7, 8], results
    for i in (3, 4, 5):
        assert isinstance(results[i], ProcessExitedException), (
            f"element {i} of the failed batch holds {results[i]!r}"
        )


def _gate_at_four(key: str) -> Any:
    return functools.partial(_gated_identity, key)


async def _gated_identity(key: str, x: int) -> int:
    if x == 4:
        await wait_gate(key)
    return x


@scenario("pmap.batch-retry-rerun", "pmap.batch-unhandled-grouped")
async def failed_batch_elements_are_rerun_one_per_request_if_allowed(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    one = d.WorkerPool([pid])
    key = new_key()
    with within(PATIENCE, "a batched pmap whose first attempts fail"):
        got = await d.pmap(
            functools.partial(fail_once_here, key),
            range(6),
            pool=one,
            batch_size=3,
            retry_delays=[0.0],
        )
    assert got == [0, 2, 4, 6, 8, 10], f"retried batch elements gave {got}"
    counts = [await d.remotecall_fetch(attempts, pid, key, x) for x in range(6)]
    assert counts == [2] * 6, f"attempts per element: {counts}"

    key = new_key()
    exc = await _expect_error(
        "a batched pmap whose retry_check refuses",
        lambda: d.pmap(
            functools.partial(fail_once_here, key),
            range(4),
            pool=one,
            batch_size=2,
            retry_delays=[0.0],
            retry_check=lambda state, exc: False,
        ),
    )
    assert isinstance(exc, ExceptionGroup), f"raised {exc!r}, not an ExceptionGroup"
    found = leaves(exc)
    assert len(found) == 4 and all(isinstance(e, ValueError) for e in found), found

    key = new_key()
    with within(PATIENCE, "retries with on_error in the batched path"):
        handled = await d.pmap(
            functools.partial(always_fail, key),
            range(3),
            pool=one,
            batch_size=3,
            retry_delays=[0.0, 0.0],
            on_error=type,
        )
    assert handled == [ScenarioError] * 3, f"retries kept on_error: {handled}"
    counts = [await d.remotecall_fetch(attempts, pid, key, x) for x in range(3)]
    assert counts == [2] * 3, (
        f"the rerun must carry on_error (so it is not retried again): {counts}"
    )


@scenario("pmap.batch-no-handler-raises-remote-exception")
async def a_batched_failure_without_handlers_raises_the_requests_error(
    d: DistributedAPI,
) -> None:
    await d.addprocs(2)
    exc = await _expect_error(
        "a batched pmap with a failing element",
        lambda: d.pmap(functools.partial(fail_at, 3), range(8), batch_size=2),
    )
    assert isinstance(exc, RemoteException), f"raised {exc!r}"
    assert isinstance(exc.exception, ScenarioError), repr(exc.exception)


# -------------------------------------------------------------- matrix

MATRIX_DATA = range(1, 21)
MATRIX_DELAYS = [0.001] * 5


def _combinations() -> list[dict[str, Any]]:
    combos = []
    for local, batched, on_error, retry, check in itertools.product(
        (False, True), repeat=5
    ):
        kwargs: dict[str, Any] = {}
        if local:
            kwargs["distributed"] = False
        if batched:
            kwargs["batch_size"] = 2
        if on_error:
            kwargs["on_error"] = matrix_on_error
        if retry:
            kwargs["retry_delays"] = MATRIX_DELAYS
        if check:
            kwargs["retry_check"] = matrix_check
        combos.append(kwargs)
    return combos


def _check_matrix(kwargs: dict[str, Any], got: list[Any], pids: set[int]) -> None:
    assert len(got) == len(MATRIX_DATA), f"{kwargs}: {len(got)} results"
    for x, value in zip(MATRIX_DATA, got, strict=True):
        if "on_error" in kwargs and x % 2 == 0:
            assert value is True, f"{kwargs}: element {x} gave {value!r}"
            continue
        assert isinstance(value, tuple) and value[0] == 2 * x, (
            f"{kwargs}: element {x} gave {value!r}"
        )
        assert value[1] in pids, f"{kwargs}: element {x} ran on {value[1]}"


@scenario(
    "pmap.matrix-success",
    "pmap.matrix-on-error",
    "pmap.matrix-retry-recovers",
    "pmap.matrix-unhandled-raises",
)
async def every_combination_of_pmap_options_gives_the_documented_result(
    d: DistributedAPI,
) -> None:
    workers = set(await d.addprocs(2))
    for kwargs in _combinations():
        pids = {d.myid()} if kwargs.get("distributed") is False else workers
        key = new_key()
        f = functools.partial(
            matrix_f, d, key, "retry_delays" in kwargs, "on_error" in kwargs
        )
        with within(PATIENCE, f"pmap(**{kwargs})"):
            got = await d.pmap(f, MATRIX_DATA, **kwargs)
        _check_matrix(kwargs, got, pids)

        if "on_error" in kwargs:
            continue
        f = functools.partial(matrix_always, d)
        exc = await _expect_error(
            f"pmap(**{kwargs}) of an always-failing element",
            lambda f=f, kwargs=kwargs: d.pmap(f, MATRIX_DATA, **kwargs),
        )
        causes = [root_cause(e) for e in leaves(exc)]
        assert any(isinstance(c, ScenarioError) for c in causes), (
            f"pmap(**{kwargs}) raised {exc!r}, which does not hold f's error"
        )
