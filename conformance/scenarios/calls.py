"""The remotecall family: remotecall, remotecall_fetch, remotecall_wait, remote_do.

What each form returns and when, how arguments reach ``f`` (copied to
another process, shared with the caller's own), where errors surface, and
calls between workers and back to the master.  What the scenarios ship to
workers lives in ``_shipped``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from conformance.registry import scenario
from spec.api import (
    DistributedAPI,
    DistributedError,
    NoSuchProcessError,
    ProcessExitedException,
    RemoteException,
    RemoteRef,
)

from ._shipped import (
    PATIENCE,
    NeedsAbsentModule,
    ScenarioError,
    append_after_gate,
    append_and_return,
    call_onwards,
    capture_log,
    eventually,
    logged,
    new_key,
    open_gate,
    parameters,
    raise_scenario_error,
    record,
    record_parameters,
    records,
    return_exception,
    return_remote_exception,
    return_unpicklable,
    return_value,
    same_object,
    wait_gate,
    whoami,
    within,
)

#: (positional args, keyword args) of each call, and what ``parameters``
#: must then report: optional parameters not given take their defaults.
ARGUMENT_CASES: list[tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...]]] = [
    ((1,), {}, (1, 0, 0, 0)),
    ((1, 2), {}, (1, 2, 0, 0)),
    ((1,), {"kw2": 4}, (1, 0, 0, 4)),
    ((1, 2), {"kw1": 3, "kw2": 4}, (1, 2, 3, 4)),
    ((1,), {"v2": 2, "kw1": 3}, (1, 2, 3, 0)),
]

#: A pid no cluster in these scenarios ever allocates.
NEVER_ALLOCATED = 9999


def _untyped(
    form: Callable[..., Awaitable[object]],
) -> Callable[..., Awaitable[object]]:
    """``form`` typed as returning anything, so its result can be checked."""
    return form


async def _targets(d: DistributedAPI) -> list[int]:
    """One worker and the caller itself: every call form must serve both."""
    (pid,) = await d.addprocs(1)
    return [pid, d.myid()]


# ------------------------------------------------------------ remotecall


@scenario("remotecall.unknown-pid-raises-no-such-process")
async def every_call_form_to_an_unallocated_pid_raises_no_such_process(
    d: DistributedAPI,
) -> None:
    await d.addprocs(1)
    forms = {
        "remotecall": d.remotecall,
        "remotecall_fetch": d.remotecall_fetch,
        "remotecall_wait": d.remotecall_wait,
        "remote_do": d.remote_do,
    }
    for name, form in forms.items():
        try:
            with within(PATIENCE, f"{name} to an unallocated pid"):
                await form(d.myid, NEVER_ALLOCATED)
        except NoSuchProcessError as exc:
            assert exc.pid == NEVER_ALLOCATED, (
                f"{name}: NoSuchProcessError.pid is {exc.pid}, "
                f"expected {NEVER_ALLOCATED}"
            )
        except DistributedError as exc:
            raise AssertionError(
                f"{name} to an unallocated pid raised {exc!r}, not NoSuchProcessError"
            ) from exc
        else:
            raise AssertionError(
                f"{name} to never-allocated pid {NEVER_ALLOCATED} did not raise "
                "NoSuchProcessError"
            )


@scenario(
    "remotecall.returns-future-immediately",
    "remotecall.future-where-is-target",
)
async def remotecall_returns_a_future_on_the_target_before_f_finishes(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    key = new_key()
    with within(PATIENCE, "remotecall while f is blocked on the target"):
        fut = await d.remotecall(wait_gate, pid, key, "result")
    try:
        assert isinstance(fut, RemoteRef), f"remotecall returned {fut!r}"
        assert fut.where == pid, f"Future.where is {fut.where}, expected {pid}"
        rrid = d.remoteref_id(fut)
        assert rrid.whence == d.myid(), (
            f"RRID {rrid} of a Future made by pid {d.myid()} has another whence"
        )
        assert fut.rrid == rrid, f"Future.rrid {fut.rrid} != remoteref_id {rrid}"
    finally:
        await d.remotecall_fetch(open_gate, pid, key)
    with within(PATIENCE, "fetch after the gate opened"):
        assert await d.fetch(fut) == "result", "the Future lost f's result"


@scenario("remotecall.passes-args-and-kwargs")
async def remotecall_passes_positional_keyword_and_default_arguments(
    d: DistributedAPI,
) -> None:
    for pid in await _targets(d):
        for args, kwargs, expected in ARGUMENT_CASES:
            with within(PATIENCE, f"remotecall to pid {pid}"):
                got = await d.fetch(
                    await d.remotecall(parameters, pid, *args, **kwargs)
                )
            assert got == expected, (
                f"remotecall(parameters, {pid}, *{args}, **{kwargs}) ran with "
                f"{got}, expected {expected}"
            )


@scenario("remotecall.future-holds-result")
async def fetching_a_remotecall_future_gives_what_f_returned(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    with within(PATIENCE, "fetch of a remotecall Future"):
        fut = await d.remotecall(whoami, pid, d)
        got = await d.fetch(fut)
        value = {"list": [1, 2, 3], "text": "é"}
        echoed = await d.fetch(await d.remotecall(return_value, pid, value))
    assert got == pid, f"remotecall(myid, {pid}) fetched {got!r}"
    assert echoed == value, f"the Future held {echoed!r}, f returned {value!r}"


@scenario("remotecall.calls-run-concurrently-on-target")
async def a_blocked_call_does_not_hold_up_later_calls_to_the_same_target(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    key = new_key()
    with within(PATIENCE, "remotecall of a call that blocks"):
        blocked = await d.remotecall(wait_gate, pid, key, "released")
    try:
        with within(PATIENCE, "a later call while an earlier one is blocked"):
            later = await d.remotecall(return_value, pid, "later")
            assert await d.fetch(later) == "later", "the later call's result"
            assert await d.remotecall_fetch(return_value, pid, 7) == 7
        assert not await d.isready(blocked), "the blocked call finished on its own"
    finally:
        await d.remotecall_fetch(open_gate, pid, key)
    with within(PATIENCE, "the blocked call after its gate opened"):
        assert await d.fetch(blocked) == "released"


@scenario("remotecall.arguments-copied-to-remote")
async def arguments_sent_to_another_process_are_copies(d: DistributedAPI) -> None:
    (pid,) = await d.addprocs(1)
    mine = ["a"]
    with within(PATIENCE, "calls that change their argument remotely"):
        theirs = await d.fetch(await d.remotecall(append_and_return, pid, mine, "b"))
        fetched = await d.remotecall_fetch(append_and_return, pid, mine, "c")
    assert theirs == ["a", "b"], f"f changed its copy into {theirs!r}"
    assert fetched == ["a", "c"], f"f changed its copy into {fetched!r}"
    assert mine == ["a"], f"the caller's list became {mine!r}"


@scenario("remotecall.local-target-no-copy")
async def remotecall_to_the_caller_itself_shares_the_argument_objects(
    d: DistributedAPI,
) -> None:
    mine = ["a"]
    with within(PATIENCE, "remotecall to the caller's own pid"):
        fut = await d.remotecall(append_and_return, d.myid(), mine, "b")
        got = await d.fetch(fut)
        same = await d.fetch(await d.remotecall(same_object, d.myid(), mine, mine))
    assert mine == ["a", "b"], f"f's change is not visible to the caller: {mine!r}"
    assert got is mine, "fetch gave a copy, not the caller's own object"
    assert same is True, "two references to one object arrived as two objects"


# ------------------------------------------------------ remotecall_fetch


@scenario("remotecall_fetch.returns-value")
async def remotecall_fetch_returns_what_f_returned(d: DistributedAPI) -> None:
    (pid,) = await d.addprocs(1)
    value = {"nested": [1, (2, 3)], "none": None}
    with within(PATIENCE, "remotecall_fetch"):
        got = await d.remotecall_fetch(whoami, pid, d)
        echoed = await d.remotecall_fetch(return_value, pid, value)
    assert got == pid, f"remotecall_fetch(myid, {pid}) returned {got!r}"
    assert echoed == value, f"remotecall_fetch returned {echoed!r}, not {value!r}"


@scenario("remotecall_fetch.passes-args-and-kwargs")
async def remotecall_fetch_passes_positional_keyword_and_default_arguments(
    d: DistributedAPI,
) -> None:
    for pid in await _targets(d):
        for args, kwargs, expected in ARGUMENT_CASES:
            with within(PATIENCE, f"remotecall_fetch to pid {pid}"):
                got = await d.remotecall_fetch(parameters, pid, *args, **kwargs)
            assert got == expected, (
                f"remotecall_fetch(parameters, {pid}, *{args}, **{kwargs}) ran "
                f"with {got}, expected {expected}"
            )


@scenario("remotecall_fetch.rethrows-remote-exception")
async def remotecall_fetch_raises_the_remote_error_as_remote_exception(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    try:
        with within(PATIENCE, "remotecall_fetch of a raising f"):
            await d.remotecall_fetch(raise_scenario_error, pid, "boom")
    except RemoteException as exc:
        assert exc.pid == pid, f"RemoteException.pid is {exc.pid}, expected {pid}"
        assert isinstance(exc.exception, ScenarioError), (
            f"RemoteException.exception is {exc.exception!r}"
        )
        assert exc.exception.args == ("boom",), f"args {exc.exception.args!r}"
    else:
        raise AssertionError("remotecall_fetch of a raising f did not raise")


@scenario("remotecall_fetch.returns-exception-values")
async def remotecall_fetch_returns_a_returned_exception_as_a_value(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    with within(PATIENCE, "remotecall_fetch of f returning an exception"):
        got = await d.remotecall_fetch(return_exception, pid, "just a value")
    assert isinstance(got, ScenarioError), f"returned {got!r}"
    assert got.args == ("just a value",), f"the returned exception's args {got.args!r}"


@scenario("remotecall_fetch.returned-remote-exception-raised")
async def remotecall_fetch_raises_a_returned_remote_exception(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    try:
        with within(PATIENCE, "remotecall_fetch of f returning a RemoteException"):
            got = await d.remotecall_fetch(return_remote_exception, pid, 77, "m")
    except RemoteException as exc:
        assert exc.pid == 77, f"the raised RemoteException has pid {exc.pid}, not 77"
        assert isinstance(exc.exception, ScenarioError), f"{exc.exception!r}"
    else:
        raise AssertionError(f"the returned RemoteException came back as {got!r}")


@scenario("remotecall_fetch.local-target-no-copy")
async def remotecall_fetch_to_the_caller_itself_changes_the_callers_objects(
    d: DistributedAPI,
) -> None:
    mine = ["a"]
    with within(PATIENCE, "remotecall_fetch to the caller's own pid"):
        got = await d.remotecall_fetch(append_and_return, d.myid(), mine, "b")
    assert mine == ["a", "b"], f"f's change is not visible to the caller: {mine!r}"
    assert got is mine, "remotecall_fetch returned a copy of the caller's object"


@scenario("remotecall_fetch.local-target-error-wrapped")
async def remotecall_fetch_to_the_caller_itself_wraps_errors(
    d: DistributedAPI,
) -> None:
    try:
        with within(PATIENCE, "local remotecall_fetch of a raising f"):
            await d.remotecall_fetch(raise_scenario_error, d.myid(), "local")
    except RemoteException as exc:
        assert exc.pid == d.myid(), f"RemoteException.pid is {exc.pid}"
        assert isinstance(exc.exception, ScenarioError), f"{exc.exception!r}"
        assert exc.exception.args == ("local",), f"args {exc.exception.args!r}"
    except ScenarioError as exc:
        raise AssertionError(f"the local error escaped unwrapped: {exc!r}") from exc
    else:
        raise AssertionError("local remotecall_fetch of a raising f did not raise")


@scenario("remotecall_fetch.worker-to-worker")
async def a_worker_fetches_a_result_from_another_worker(d: DistributedAPI) -> None:
    a, b = await d.addprocs(2)
    with within(PATIENCE, "a call between workers"):
        got = await d.remotecall_fetch(call_onwards, a, d, whoami, b, d)
        value = await d.remotecall_fetch(call_onwards, a, d, return_value, b, [1, 2])
    assert got == b, f"worker {a} asked worker {b} for myid() and got {got!r}"
    assert value == [1, 2], f"worker {a} got {value!r} back from worker {b}"


@scenario("remotecall_fetch.worker-to-worker-both-directions")
async def workers_call_each_other_whichever_calls_first(d: DistributedAPI) -> None:
    a, b, c = await d.addprocs(3)

    async def ask(caller: int, callee: int) -> None:
        with within(PATIENCE, f"worker {caller} calling worker {callee}"):
            got = await d.remotecall_fetch(call_onwards, caller, d, whoami, callee, d)
        assert got == callee, f"{caller} called {callee} and got myid() = {got!r}"

    # The lower pid calls first, then the higher one answers back.
    await ask(a, b)
    await ask(b, a)
    # The higher pid calls first.
    await ask(c, a)
    await ask(a, c)
    # Both directions at once between two workers that never talked.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, b, c)
        nursery.start_soon(ask, c, b)


@scenario("remotecall_fetch.worker-to-master")
async def a_worker_fetches_a_result_from_the_master(d: DistributedAPI) -> None:
    (pid,) = await d.addprocs(1)
    with within(PATIENCE, "a worker calling pid 1"):
        got = await d.remotecall_fetch(call_onwards, pid, d, whoami, 1, d)
        value = await d.remotecall_fetch(call_onwards, pid, d, return_value, 1, "x")
    assert got == 1, f"worker {pid} asked pid 1 for myid() and got {got!r}"
    assert value == "x", f"worker {pid} got {value!r} back from pid 1"


@scenario("remotecall_fetch.undecodable-call-raises-remote-exception")
async def a_call_the_target_cannot_decode_fails_and_the_link_survives(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    try:
        with within(PATIENCE, "remotecall_fetch of an undecodable call"):
            got = await d.remotecall_fetch(NeedsAbsentModule(), pid)
    except RemoteException as exc:
        assert exc.pid == pid, f"RemoteException.pid is {exc.pid}, expected {pid}"
    else:
        raise AssertionError(f"the undecodable call returned {got!r}")
    with within(PATIENCE, "calls after the undecodable one"):
        assert await d.remotecall_fetch(return_value, pid, "next") == "next"
        assert await d.fetch(await d.remotecall(whoami, pid, d)) == pid
    assert pid in d.workers(), f"worker {pid} left the cluster"


@scenario("remotecall_fetch.unpicklable-result-raises")
async def a_result_that_cannot_be_sent_back_raises_and_the_worker_stays(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    try:
        with within(PATIENCE, "remotecall_fetch of an unpicklable result"):
            got = await d.remotecall_fetch(return_unpicklable, pid)
    except RemoteException as exc:
        assert exc.pid == pid, f"RemoteException.pid is {exc.pid}, expected {pid}"
        assert str(exc.exception), "the RemoteException does not describe the failure"
    else:
        raise AssertionError(f"the unpicklable result came back as {got!r}")
    with within(PATIENCE, "a call after the failed reply"):
        assert await d.remotecall_fetch(return_value, pid, 5) == 5
    assert pid in d.workers(), f"worker {pid} left the cluster"


# ------------------------------------------------------- remotecall_wait


@scenario("remotecall_wait.returns-future-after-completion")
async def remotecall_wait_returns_only_once_f_has_finished(d: DistributedAPI) -> None:
    for pid in await _targets(d):
        await _check_remotecall_wait_waits(d, pid)


async def _check_remotecall_wait_waits(d: DistributedAPI, pid: int) -> None:
    key = new_key()
    futs: list[RemoteRef] = []

    async def call() -> None:
        futs.append(await d.remotecall_wait(wait_gate, pid, key, "v"))

    async def started() -> bool:
        got: list[Any] = await d.remotecall_fetch(records, pid, key)
        return "started" in got

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await eventually(started, f"f never started on pid {pid}")
        await trio.sleep(0.2)
        assert not futs, f"remotecall_wait to {pid} returned while f was running"
        await d.remotecall_fetch(open_gate, pid, key)
        with within(PATIENCE, f"remotecall_wait to pid {pid} after f finished"):
            while not futs:
                await trio.sleep(0.01)
    (fut,) = futs
    assert isinstance(fut, RemoteRef), f"remotecall_wait returned {fut!r}"
    assert fut.where == pid, f"Future.where is {fut.where}, expected {pid}"
    with within(PATIENCE, "isready on the returned Future"):
        ready = await d.isready(fut)
    assert ready is True, f"isready is {ready!r} after remotecall_wait to {pid}"


@scenario("remotecall_wait.passes-args-and-kwargs")
async def remotecall_wait_passes_positional_keyword_and_default_arguments(
    d: DistributedAPI,
) -> None:
    for pid in await _targets(d):
        for args, kwargs, expected in ARGUMENT_CASES:
            with within(PATIENCE, f"remotecall_wait to pid {pid}"):
                fut = await d.remotecall_wait(parameters, pid, *args, **kwargs)
                got = await d.fetch(fut)
            assert got == expected, (
                f"remotecall_wait(parameters, {pid}, *{args}, **{kwargs}) ran "
                f"with {got}, expected {expected}"
            )


@scenario("remotecall_wait.raises-remote-exception")
async def remotecall_wait_raises_the_remote_error_as_remote_exception(
    d: DistributedAPI,
) -> None:
    for pid in await _targets(d):
        try:
            with within(PATIENCE, f"remotecall_wait of a raising f on {pid}"):
                await d.remotecall_wait(raise_scenario_error, pid, "w", pid)
        except RemoteException as exc:
            assert exc.pid == pid, f"RemoteException.pid is {exc.pid}, not {pid}"
            assert isinstance(exc.exception, ScenarioError), f"{exc.exception!r}"
            assert exc.exception.args == ("w", pid), f"args {exc.exception.args!r}"
        else:
            raise AssertionError(f"remotecall_wait of a raising f on {pid} returned")


@scenario("remotecall_wait.value-kept-on-target")
async def remotecall_wait_leaves_the_value_on_the_target_until_fetched(
    d: DistributedAPI,
) -> None:
    kept, gone = await d.addprocs(2)
    with within(PATIENCE, "remotecall_wait then fetch"):
        fut = await d.remotecall_wait(return_value, kept, [1, 2, 3])
        assert await d.fetch(fut) == [1, 2, 3], "fetch after remotecall_wait"
        # Were the value carried back with the answer, it would outlive its
        # owner; it lives only on the target, so fetch needs the target.
        unfetched = await d.remotecall_wait(return_value, gone, "left behind")
        removal = await d.rmprocs(gone)
        await removal.wait()
    try:
        with within(PATIENCE, "fetch from a removed owner"):
            got = await d.fetch(unfetched)
    except ProcessExitedException as exc:
        assert exc.worker_id == gone, f"worker_id {exc.worker_id}, expected {gone}"
    else:
        raise AssertionError(
            f"fetch gave {got!r} after the owner left: the value had been "
            "sent back with remotecall_wait's answer"
        )


# ------------------------------------------------------------- remote_do


@scenario("remote_do.returns-none-immediately")
async def remote_do_returns_none_without_waiting_for_f(d: DistributedAPI) -> None:
    (pid,) = await d.addprocs(1)
    key = new_key()
    with within(PATIENCE, "remote_do while f is blocked"):
        result = await _untyped(d.remote_do)(wait_gate, pid, key, "unseen")
    try:
        assert result is None, f"remote_do returned {result!r}"

        async def started() -> bool:
            got: list[Any] = await d.remotecall_fetch(records, pid, key)
            return "started" in got

        await eventually(started, "f sent by remote_do never started")
    finally:
        await d.remotecall_fetch(open_gate, pid, key)


@scenario("remote_do.passes-args-and-kwargs")
async def remote_do_passes_positional_keyword_and_default_arguments(
    d: DistributedAPI,
) -> None:
    for pid in await _targets(d):
        await _check_remote_do_arguments(d, pid)


async def _check_remote_do_arguments(d: DistributedAPI, pid: int) -> None:
    key = new_key()
    for args, kwargs, _ in ARGUMENT_CASES:
        await d.remote_do(record_parameters, pid, key, *args, **kwargs)
    expected = sorted(case[2] for case in ARGUMENT_CASES)

    async def all_arrived() -> bool:
        got: list[Any] = await d.remotecall_fetch(records, pid, key)
        return len(got) >= len(expected)

    await eventually(all_arrived, f"remote_do calls to {pid} never all ran")
    got = sorted(await d.remotecall_fetch(records, pid, key))
    assert got == expected, f"remote_do to {pid} ran with {got}, not {expected}"


@scenario("remote_do.errors-printed-on-target")
async def remote_do_errors_are_logged_on_the_target_not_raised(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    marker = f"remote-do-failure-{new_key()}"
    await d.remotecall_fetch(capture_log, pid, d.log_name)
    with within(PATIENCE, "remote_do of a raising f"):
        result = await _untyped(d.remote_do)(raise_scenario_error, pid, marker)
    assert result is None, f"remote_do returned {result!r}"

    async def reported() -> bool:
        lines: list[str] = await d.remotecall_fetch(logged, pid)
        return any(marker in line and line.startswith("ERROR") for line in lines)

    await eventually(reported, f"worker {pid} logged no error naming the failure")
    with within(PATIENCE, "a call after the failed remote_do"):
        assert await d.remotecall_fetch(return_value, pid, 1) == 1


@scenario("remote_do.every-call-runs-order-unspecified")
async def every_remote_do_runs_in_some_order(d: DistributedAPI) -> None:
    (pid,) = await d.addprocs(1)
    key = new_key()
    sent = list(range(50))
    for item in sent:
        await d.remote_do(record, pid, key, item)
    # A remotecall after them may overtake them: it must not lose any.
    with within(PATIENCE, "a remotecall after the remote_dos"):
        await d.remotecall_fetch(return_value, pid, None)

    async def all_ran() -> bool:
        got: list[Any] = await d.remotecall_fetch(records, pid, key)
        return len(got) >= len(sent)

    await eventually(all_ran, "not every remote_do ran")
    got = await d.remotecall_fetch(records, pid, key)
    assert sorted(got) == sent, f"the remote_dos ran as {got}, expected each once"


@scenario("remote_do.local-target-runs-in-task")
async def remote_do_to_the_caller_runs_later_on_the_callers_objects(
    d: DistributedAPI,
) -> None:
    key = new_key()
    mine = ["a"]
    with within(PATIENCE, "remote_do to the caller's own pid"):
        result = await _untyped(d.remote_do)(
            append_after_gate, d.myid(), key, mine, "b"
        )
    assert result is None, f"remote_do returned {result!r}"
    assert mine == ["a"], "remote_do waited for f to complete"
    open_gate(key)

    async def changed() -> bool:
        return mine == ["a", "b"]

    await eventually(changed, f"f never changed the caller's object: {mine!r}")
