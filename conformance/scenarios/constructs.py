"""Julia's macros as functions: spawnat, fetch_any, fetchfrom, everywhere,
define/clear_globals, distributed_for, sync; and ExponentialBackOff.

What the scenarios ship to workers lives in ``_parallel`` and ``_shipped``.
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Sequence
from typing import Any, overload

import trio

from conformance.registry import scenario
from spec.api import DistributedAPI, RemoteException, RemoteRef

from ._parallel import (
    append_to,
    as_list,
    concat,
    fail_at,
    leaves,
    read_global,
    record_and_return,
    record_pair,
    record_whoami,
    recorded_items,
)
from ._shipped import (
    PATIENCE,
    ScenarioError,
    eventually,
    new_key,
    open_gate,
    raise_scenario_error,
    record,
    records,
    slow_then_mark,
    wait_gate,
    whoami,
    within,
)


async def _expect_error(what: str, call: Any) -> BaseException:
    try:
        with within(PATIENCE, what):
            value = await call()
    except Exception as exc:
        return exc
    raise AssertionError(f"{what} returned {value!r} instead of raising")


async def _records_by_pid(
    d: DistributedAPI, pids: list[int], key: str
) -> dict[int, list[Any]]:
    return {p: await d.remotecall_fetch(recorded_items, p, key) for p in pids}


# ------------------------------------------------------------- spawnat


@scenario("spawnat.runs-on-pid")
async def spawnat_starts_f_on_the_pid_and_returns_its_future(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    key = new_key()
    with within(PATIENCE, "spawnat of a blocked call"):
        fut = await d.spawnat(pid, wait_gate, key, "value")
    assert isinstance(fut, RemoteRef) and fut.where == pid, f"spawnat gave {fut!r}"
    assert not await d.isready(fut), "spawnat waited for f"
    await d.remotecall_fetch(open_gate, pid, key)
    with within(PATIENCE, "the spawned call"):
        assert await d.fetch(fut) == "value"
        assert await d.fetch(await d.spawnat(pid, whoami, d)) == pid


@scenario(
    "spawnat.any-round-robin",
    "spawnat.any-counter-shared",
    "fetch_any.returns-next-worker-result",
)
async def spawnat_any_fetch_any_and_distributed_for_share_one_turn(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "spawnat(ANY) without workers"):
        for _ in range(3):
            fut = await d.spawnat(d.ANY, whoami, d)
            assert fut.where == 1 and await d.fetch(fut) == 1, "without workers"
        assert await d.fetch_any(whoami, d) == 1

    pids = await d.addprocs(3)
    n = len(pids)
    key = new_key()
    with within(PATIENCE, "targets drawn in turn"):
        first = (await d.spawnat(d.ANY, whoami, d)).where
        k = pids.index(first)
        second = await d.fetch_any(whoami, d)
        task = await d.distributed_for(
            functools.partial(record_and_return, key), range(2)
        )
        await task.wait()
        third = (await d.spawnat(d.ANY, whoami, d)).where
        chunks = await _records_by_pid(d, pids, key)
    assert second == pids[(k + 1) % n], f"fetch_any after {first} ran on {second}"
    assert chunks[pids[(k + 2) % n]] == [0], f"chunk 0 went elsewhere: {chunks}"
    assert chunks[pids[(k + 3) % n]] == [1], f"chunk 1 went elsewhere: {chunks}"
    assert third == pids[(k + 4) % n], f"spawnat(ANY) then chose {third}"


@scenario(
    "spawnat.registered-with-sync",
    "sync.waits-for-spawns",
    "sync.errors-grouped",
)
async def sync_waits_for_everything_started_inside_and_groups_errors(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    key, local_key = new_key(), new_key()

    async def local_task() -> None:
        await trio.sleep(0.1)
        record(local_key, "done")

    with within(PATIENCE, "a sync() block that succeeds"):
        async with d.sync() as block:
            await d.spawnat(pid, slow_then_mark, key, 0.2, None)
            await d.distributed_for(functools.partial(record, key), range(3))
            block.start_soon(local_task)
        done = await d.remotecall_fetch(records, pid, key)
    assert sorted(done, key=str) == [0, 1, 2, "done"], f"not waited for: {done}"
    assert records(local_key) == ["done"], "the block did not wait for its task"

    async def local_failure() -> None:
        raise ScenarioError("local")

    slow_key = new_key()
    try:
        with within(PATIENCE, "a sync() block with failures"):
            async with d.sync() as block:
                await d.spawnat(pid, raise_scenario_error, "remote")
                block.start_soon(local_failure)
                await d.spawnat(pid, slow_then_mark, slow_key, 0.3, None)
    except ExceptionGroup as group:
        finished = await d.remotecall_fetch(records, pid, slow_key)
        assert finished == ["done"], "the block raised before all had finished"
        found = leaves(group)
        remote = [e for e in found if isinstance(e, RemoteException)]
        local = [e for e in found if isinstance(e, ScenarioError)]
        assert len(found) == 2 and len(remote) == 1 and len(local) == 1, found
        assert isinstance(remote[0].exception, ScenarioError), repr(remote[0])
        assert remote[0] in group.exceptions, "the RemoteException was wrapped"
    else:
        raise AssertionError("a sync() block with failures did not raise")


@scenario("fetchfrom.equals-remotecall-fetch")
async def fetchfrom_returns_f_on_pid_or_raises_its_remote_exception(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    with within(PATIENCE, "fetchfrom"):
        assert await d.fetchfrom(pid, whoami, d) == pid
        assert await d.fetchfrom(d.myid(), whoami, d) == d.myid()
    exc = await _expect_error(
        "fetchfrom of a failing f", lambda: d.fetchfrom(pid, fail_at, 1, 1)
    )
    assert isinstance(exc, RemoteException) and exc.pid == pid, repr(exc)
    assert isinstance(exc.exception, ScenarioError), repr(exc.exception)


# ---------------------------------------------------------- everywhere


async def _mark_everywhere(d: DistributedAPI, key: str) -> None:
    """Remote runs wait at a gate; the master's run opens them, which it
    can only do once every remote run has started."""
    me = d.myid()
    record(key, me)
    if me != 1:
        await wait_gate(key)
        record(key, "finished")
        return

    workers = d.workers()

    async def all_started() -> bool:
        for p in workers:
            if p not in await d.remotecall_fetch(records, p, key):
                return False
        return True

    await eventually(all_started, "the local run came before the remote ones")
    for p in workers:
        await d.remotecall_fetch(open_gate, p, key)


@scenario(
    "everywhere.default-all-procs",
    "everywhere.remote-first-local-last",
)
async def everywhere_runs_on_every_process_the_caller_last(
    d: DistributedAPI,
) -> None:
    pids = await d.addprocs(2)
    key = new_key()
    with within(PATIENCE, "everywhere"):
        assert await d.everywhere(_mark_everywhere, d, key) is None
        seen = await _records_by_pid(d, pids, key)
    for p in pids:
        assert seen[p] == [p, "started", "finished"], f"pid {p} recorded {seen[p]}"
    assert records(key) == [1], f"the master recorded {records(key)}"


@scenario("everywhere.explicit-procs")
async def everywhere_runs_once_per_listed_occurrence(d: DistributedAPI) -> None:
    a, b = await d.addprocs(2)
    key = new_key()
    me = d.myid()
    with within(PATIENCE, "everywhere over explicit pids"):
        await d.everywhere(record_and_return, key, "ran", procs=[a, a, me, me])
        seen = await _records_by_pid(d, [a, b, me], key)
    assert seen == {a: ["ran", "ran"], b: [], me: ["ran", "ran"]}, seen


@scenario("everywhere.errors-grouped")
async def everywhere_groups_remote_and_local_failures(d: DistributedAPI) -> None:
    a, b = await d.addprocs(2)
    slow = new_key()
    me = d.myid()
    try:
        with within(PATIENCE, "everywhere with failures"):
            await d.everywhere(_fail_unless, d, b, slow, procs=[a, b, me])
    except ExceptionGroup as group:
        assert await d.remotecall_fetch(records, b, slow) == ["done"], (
            "everywhere raised before every run finished"
        )
        found = leaves(group)
        remote = [e for e in found if isinstance(e, RemoteException)]
        local = [e for e in found if isinstance(e, ScenarioError)]
        assert [e.pid for e in remote] == [a], f"remote failures: {remote}"
        assert len(local) == 1 and len(found) == 2, f"failures: {found}"
    else:
        raise AssertionError("everywhere with failures did not raise")


async def _fail_unless(d: DistributedAPI, good: int, key: str) -> None:
    if d.myid() == good:
        await trio.sleep(0.2)
        record(key, "done")
        return
    raise ScenarioError(f"failed on {d.myid()}")


# ------------------------------------------- globals of __main__ (BR-29)

#: Defined in the caller's __main__ (by exec, as a script or REPL would),
#: so they travel by value.  ``_peek`` reads through ``globals()``, so it
#: carries no value of the name it reads.
_MAIN_SOURCE = """
def {get}():
    return {name}

def {peek}(name):
    return globals().get(name)

def {set_own}(d, name):
    globals()[name] = d.myid()
"""


@scenario("fetchfrom.main-globals-travel")
async def main_globals_travel_with_shipped_functions(d: DistributedAPI) -> None:
    main = vars(sys.modules["__main__"])
    key = new_key()
    name = f"distref_a_{key}"
    get, peek, set_own = (f"distref_{what}_{key}" for what in ("get", "peek", "set"))
    exec(_MAIN_SOURCE.format(get=get, peek=peek, set_own=set_own, name=name), main)
    try:
        _, w3, w4 = await d.addprocs(3)
        with within(PATIENCE, "fetchfrom of a __main__ function"):
            await d.everywhere(main[set_own], d, name, procs=[w3, w4])
            # The caller has no such global: the target's own is read.
            assert await d.fetchfrom(w3, main[get]) == w3
            main[name] = 1
            # Now the caller's value travels and redefines the target's.
            assert await d.fetchfrom(w3, main[get]) == 1
            assert await d.fetchfrom(w3, main[peek], name) == 1
            assert await d.fetchfrom(w4, main[peek], name) == w4, "w4 changed"
    finally:
        for defined in (get, peek, set_own, name):
            main.pop(defined, None)


@scenario("everywhere.single-pid-returns-value")
async def everywhere_with_one_pid_returns_the_value(d: DistributedAPI) -> None:
    (pid,) = await d.addprocs(1)
    me = d.myid()
    with within(PATIENCE, "everywhere with one pid"):
        assert await d.everywhere(whoami, d, procs=pid) == pid
        assert await d.everywhere(whoami, d, procs=me) == me
    for target in (pid, me):
        exc = await _expect_error(
            f"everywhere(procs={target}) of a failing f",
            lambda target=target: d.everywhere(fail_at, 1, 1, procs=target),
        )
        assert isinstance(exc, RemoteException), f"procs={target} raised {exc!r}"


@scenario("everywhere.later-workers-not-covered")
async def everywhere_reaches_only_the_processes_present_then(
    d: DistributedAPI,
) -> None:
    await d.addprocs(1)
    name = f"distref_g_{new_key()}"
    with within(PATIENCE, "define_globals, then a new worker"):
        await d.define_globals({name: 41})
        (late,) = await d.addprocs(1)
    exc = await _expect_error(
        "reading the global on a later worker",
        lambda: d.remotecall_fetch(read_global, late, name),
    )
    assert isinstance(exc, RemoteException), repr(exc)
    assert isinstance(exc.exception, NameError), repr(exc.exception)
    with within(PATIENCE, "define_globals on the later worker"):
        await d.define_globals({name: 42}, procs=[late])
        assert await d.remotecall_fetch(read_global, late, name) == 42
        assert read_global(name) == 41, "the master's value changed"


# ------------------------------------------------------- clear_globals


@scenario(
    "clear_globals.rebinds-to-none",
    "clear_globals.arguments",
    "clear_globals.waits-for-all",
)
async def clear_globals_rebinds_defined_names_to_none(d: DistributedAPI) -> None:
    a, b = await d.addprocs(2)
    me = d.myid()
    x, y = f"distref_x_{new_key()}", f"distref_y_{new_key()}"

    async def values(name: str) -> list[Any]:
        return [await d.remotecall_fetch(read_global, p, name) for p in (a, b, me)]

    with within(PATIENCE, "clear_globals"):
        await d.define_globals({x: 1, y: 2})
        await d.clear_globals(x)
        assert await values(x) == [None, None, 1], "default pids are workers()"
        await d.clear_globals([y, "distref_never_defined"], b)
        assert await values(y) == [2, None, 2], "a single pid"
        await d.clear_globals((x, y), [me, a])
        assert await values(x) == [None, None, None]
        assert await values(y) == [None, None, None]
    exc = await _expect_error(
        "clear_globals in a module that does not exist",
        lambda: d.clear_globals(x, [a, b], module="distref_no_such_module"),
    )
    assert isinstance(exc, ExceptionGroup), f"raised {exc!r}"
    failed = leaves(exc)
    assert sorted(e.pid for e in failed if isinstance(e, RemoteException)) == [a, b]


# ----------------------------------------------------- distributed_for


@scenario("distributed_for.split-rule", "distributed_for.split-examples")
async def ranges_split_into_contiguous_chunks_the_first_ones_longer(
    d: DistributedAPI,
) -> None:
    examples = {
        (1, 11, 2): [range(1, 7), range(7, 12)],
        (1, 11, 3): [range(1, 5), range(5, 9), range(9, 12)],
        (1, 3, 4): [range(1, 2), range(2, 3), range(3, 4)],
        (-1, 9, 3): [range(-1, 3), range(3, 7), range(7, 10)],
        (5, 4, 3): [],
    }
    for args, expected in examples.items():
        got = d.splitrange(*args)
        assert got == expected, f"splitrange{args} gave {got}"
    for n in range(0, 13):
        for np in range(1, 6):
            chunks = d.splitrange(1, n, np)
            sizes = [len(c) for c in chunks]
            assert len(chunks) == min(n, np), f"{n} over {np}: {chunks}"
            assert [i for c in chunks for i in c] == list(range(1, n + 1))
            assert sizes == sorted(sizes, reverse=True), f"{n}/{np}: {sizes}"
            assert not sizes or max(sizes) - min(sizes) <= 1, f"{n}/{np}: {sizes}"

    pids = await d.addprocs(2)
    key = new_key()
    with within(PATIENCE, "distributed_for over 1..11 on two workers"):
        await d.distributed_for(
            functools.partial(record_and_return, key), range(1, 12), concat
        )
        seen = await _records_by_pid(d, pids, key)
    assert seen == {pids[0]: list(range(1, 7)), pids[1]: list(range(7, 12))}, seen


class _Letters(Sequence[str]):
    """A sequence that is neither a list nor a range."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __len__(self) -> int:
        return len(self.text)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...

    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        return self.text[i]


@scenario(
    "distributed_for.iterable-evaluated-once",
    "distributed_for.captures-copied",
)
async def distributed_for_splits_any_sequence_and_copies_captures(
    d: DistributedAPI,
) -> None:
    await d.addprocs(2)
    with within(PATIENCE, "distributed_for over sequences"):
        assert await d.distributed_for(str.upper, _Letters("abcde"), concat) == "ABCDE"
        assert await d.distributed_for(as_list, (3, 1, 2), concat) == [3, 1, 2]
    exc = await _expect_error(
        "distributed_for over a generator",
        lambda: d.distributed_for(as_list, (x for x in range(3)), concat),
    )
    assert isinstance(exc, TypeError), f"an unsplittable iterable raised {exc!r}"

    captured: list[Any] = []
    with within(PATIENCE, "distributed_for whose body changes a captured list"):
        got = await d.distributed_for(
            functools.partial(append_to, captured), range(4), concat
        )
        async with d.sync():
            await d.distributed_for(functools.partial(append_to, captured), range(4))
    assert got == [0, 1, 2, 3], f"distributed_for gave {got}"
    assert captured == [], f"writes on workers reached the caller: {captured}"


@scenario(
    "distributed_for.reducer-chunk-per-worker",
    "distributed_for.reducer-ordered",
)
async def chunk_i_runs_on_worker_i_and_results_combine_in_order(
    d: DistributedAPI,
) -> None:
    pids = await d.addprocs(3)
    key = new_key()
    with within(PATIENCE, "distributed_for with a reducer"):
        got = await d.distributed_for(
            functools.partial(record_whoami, d, key), range(8), concat
        )
    assert [x for x, _ in got] == list(range(8)), f"not in index order: {got}"
    chunks = d.splitrange(0, 7, 3)
    for i, chunk in enumerate(chunks):
        where = {pid for x, pid in got if x in chunk}
        assert where == {pids[i]}, f"chunk {i} ({chunk}) ran on {where}"
    with within(PATIENCE, "a non-commutative reducer"):
        text = await d.distributed_for(str, range(12), concat)
    assert text == "01234567891011", f"string concatenation gave {text!r}"


@scenario("distributed_for.reducer-seeds-with-first")
async def the_first_value_seeds_each_chunk(d: DistributedAPI) -> None:
    pids = await d.addprocs(3)
    key = new_key()
    with within(PATIENCE, "distributed_for over 1..4 on three workers"):
        total = await d.distributed_for(
            functools.partial(_times_one, key),
            range(1, 5),
            functools.partial(record_pair, key),
        )
        seen = await _records_by_pid(d, pids, key)
    assert total == 10, f"sum of 1..4 gave {total}"
    assert seen == {pids[0]: [(1, 2)], pids[1]: [], pids[2]: []}, (
        f"reducer calls on the workers: {seen}"
    )
    assert records(key) == [(3, 3), (6, 4)], f"on the caller: {records(key)}"


def _times_one(key: str, x: int) -> int:
    return x


@scenario("distributed_for.reducer-no-workers-local")
async def without_workers_the_whole_range_runs_on_the_master(
    d: DistributedAPI,
) -> None:
    key = new_key()
    with within(PATIENCE, "distributed_for without workers"):
        got = await d.distributed_for(
            functools.partial(record_whoami, d, key), range(5), concat
        )
    assert got == [(x, 1) for x in range(5)], f"gave {got}"
    assert [x for x, _ in records(key)] == list(range(5)), "not one chunk in order"


@scenario(
    "distributed_for.reducer-failure-raises",
    "distributed_for.reducer-empty-range-raises",
)
async def a_failing_chunk_or_an_empty_range_raises(d: DistributedAPI) -> None:
    await d.addprocs(2)
    exc = await _expect_error(
        "distributed_for with a failing body",
        lambda: d.distributed_for(functools.partial(fail_at, 5), range(8), concat),
    )
    assert isinstance(exc, RemoteException), f"raised {exc!r}"
    assert isinstance(exc.exception, ScenarioError), repr(exc.exception)
    await _expect_error(
        "distributed_for with a reducer over an empty range",
        lambda: d.distributed_for(as_list, range(0), concat),
    )


@scenario(
    "distributed_for.no-reducer-returns-at-once",
    "distributed_for.no-reducer-round-robin",
)
async def without_a_reducer_the_loop_runs_in_the_background(
    d: DistributedAPI,
) -> None:
    pids = await d.addprocs(3)
    key = new_key()
    with within(PATIENCE, "distributed_for of blocked bodies"):
        task = await d.distributed_for(functools.partial(wait_gate, key), range(6))
    assert not task.done, "distributed_for waited for its chunks"

    async def all_started() -> bool:
        seen = await _records_by_pid(d, pids, key)
        return sorted(len(v) for v in seen.values()) == [1, 1, 1]

    await eventually(all_started, "each worker did not start its chunk")
    for p in pids:
        await d.remotecall_fetch(open_gate, p, key)
    with within(PATIENCE, "the loop after the gates opened"):
        await task.wait()
        assert task.done
        empty = await d.distributed_for(functools.partial(record, key), range(0))
        await empty.wait()
        seen = await _records_by_pid(d, pids, key)
    assert sum(len(v) for v in seen.values()) == 6, f"an empty range ran: {seen}"


@scenario(
    "distributed_for.no-reducer-joins-sync",
    "distributed_for.no-reducer-errors-grouped",
)
async def a_background_loop_joins_sync_and_reports_failed_chunks(
    d: DistributedAPI,
) -> None:
    pids = await d.addprocs(2)
    key = new_key()
    with within(PATIENCE, "sync() around distributed_for"):
        async with d.sync():
            await d.distributed_for(
                functools.partial(slow_then_mark, key, 0.1), range(4)
            )
        seen = await _records_by_pid(d, pids, key)
    assert sum(len(v) for v in seen.values()) == 4, f"sync did not wait: {seen}"

    task = await d.distributed_for(functools.partial(fail_at, 0), range(4))
    exc = await _expect_error("waiting for a loop with a failing chunk", task.wait)
    assert isinstance(exc, ExceptionGroup), f"raised {exc!r}"
    found = leaves(exc)
    assert len(found) == 1 and isinstance(found[0], RemoteException), found

    failing = functools.partial(raise_scenario_error)
    exc = await _expect_error(
        "sync() around a failing loop", lambda: _sync_loop(d, failing)
    )
    found = leaves(exc)
    assert len(found) == 2, f"expected one error per chunk, got {found}"
    assert all(isinstance(e, RemoteException) for e in found), found


async def _sync_loop(d: DistributedAPI, body: Any) -> None:
    async with d.sync():
        await d.distributed_for(body, range(2))


# ------------------------------------------------- ExponentialBackOff


@scenario("exponential_backoff.defaults-and-shape")
async def exponential_backoff_grows_by_factor_up_to_the_cap(
    d: DistributedAPI,
) -> None:
    assert list(d.ExponentialBackOff()) == [0.05], "the default back-off"
    exact = list(
        d.ExponentialBackOff(n=6, first_delay=0.1, max_delay=1.0, factor=2.0, jitter=0)
    )
    expected = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert all(abs(a - b) < 1e-9 for a, b in zip(exact, expected, strict=True)), exact
    for _ in range(20):
        delays = list(d.ExponentialBackOff(n=4, first_delay=1.0, max_delay=1e4))
        assert len(delays) == 4 and delays[0] == 1.0, delays
        for before, after in itertools.pairwise(delays):
            assert 5.0 * 0.9 - 1e-9 <= after / before <= 5.0 * 1.1 + 1e-9, delays
