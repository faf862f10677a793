"""Errors of remote calls: RemoteException and ProcessExitedException.

A function that raises elsewhere comes back as ``RemoteException`` carrying
the pid where it was raised, the original exception (also its
``__cause__``) and the remote traceback, described by ``str`` as "On worker
<pid>:"; it is not wrapped again on its way through intermediate processes.
A process that exits fails every call waiting on it, and every later call
to it, with ``ProcessExitedException`` raised directly.
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from conformance.registry import scenario
from spec.api import (
    DistributedAPI,
    DistributedError,
    ProcessExitedException,
    RemoteException,
)

from ._shipped import (
    PATIENCE,
    ScenarioError,
    call_onwards,
    eventually,
    new_key,
    raise_scenario_error,
    raise_unloadable,
    raise_unpicklable,
    raise_worker_only,
    records,
    until_gone,
    wait_gate,
    whoami,
    within,
)

#: Calls that must fail "at once" get this long.
AT_ONCE = 2.0


async def _remote_exception(
    call: Callable[[], Awaitable[Any]], what: str
) -> RemoteException:
    """Run ``call`` and return the RemoteException it must raise."""
    try:
        with within(PATIENCE, what):
            got = await call()
    except RemoteException as exc:
        return exc
    except DistributedError as exc:
        raise AssertionError(f"{what} raised {exc!r}, not RemoteException") from exc
    except ScenarioError as exc:
        raise AssertionError(f"{what} raised {exc!r} unwrapped") from exc
    raise AssertionError(f"{what} raised nothing and returned {got!r}")


async def _raised_on(d: DistributedAPI, pid: int, *args: Any) -> RemoteException:
    async def call() -> Any:
        return await d.remotecall_fetch(raise_scenario_error, pid, *args)

    return await _remote_exception(call, f"remotecall_fetch of a raising f on {pid}")


# ------------------------------------------------------- RemoteException


@scenario("remote_exception.carries-pid")
async def remote_exception_names_the_process_that_raised(d: DistributedAPI) -> None:
    a, b = await d.addprocs(2)
    for pid in (a, b, d.myid()):
        exc = await _raised_on(d, pid, "where")
        assert exc.pid == pid, f"raised on {pid}, RemoteException.pid is {exc.pid}"
    fut = await d.remotecall(raise_scenario_error, b, "via a Future")
    try:
        with within(PATIENCE, "fetch of a failed call"):
            await d.fetch(fut)
    except RemoteException as exc:
        assert exc.pid == b, f"raised on {b}, RemoteException.pid is {exc.pid}"
    else:
        raise AssertionError("fetch of a failed call did not raise")


@scenario("remote_exception.carries-original-exception")
async def remote_exception_holds_an_equal_copy_of_the_original(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    exc = await _raised_on(d, pid, "message", 42, ("nested", 1.5))
    original = exc.exception
    assert type(original) is ScenarioError, f"the original came back as {original!r}"
    assert original.args == ("message", 42, ("nested", 1.5)), (
        f"the original's args came back as {original.args!r}"
    )

    async def key_error() -> Any:
        return await d.remotecall_fetch(operator.getitem, pid, {}, "k")

    builtin = await _remote_exception(key_error, "a KeyError raised remotely")
    assert type(builtin.exception) is KeyError, f"got {builtin.exception!r}"
    assert builtin.exception.args == ("k",), f"args {builtin.exception.args!r}"


@scenario(
    "remote_exception.carries-remote-traceback", "remote_exception.cause-is-original"
)
async def remote_exception_keeps_the_remote_traceback_and_its_cause(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    exc = await _raised_on(d, pid, "traced")
    tb = exc.remote_traceback
    assert isinstance(tb, str), f"remote_traceback is {tb!r}"
    assert raise_scenario_error.__name__ in tb, (
        f"the remote traceback does not name the raising function:\n{tb}"
    )
    assert "ScenarioError" in tb, f"the remote traceback omits the error:\n{tb}"
    assert exc.__cause__ is exc.exception, (
        f"__cause__ is {exc.__cause__!r}, not the original {exc.exception!r}"
    )


@scenario("remote_exception.str-names-worker")
async def str_of_a_remote_exception_starts_with_the_worker_and_the_error(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)
    exc = await _raised_on(d, pid, "it broke")
    text = str(exc)
    head = f"On worker {pid}:"
    assert text.startswith(head), f"str() does not start with {head!r}: {text!r}"
    rest = text[len(head) :].lstrip()
    assert rest.startswith("ScenarioError: it broke"), (
        f"after {head!r} comes {rest!r}, not the error's type name and message"
    )


@scenario("remote_exception.unpicklable-exception-described")
async def an_exception_that_cannot_travel_back_is_described_in_a_runtime_error(
    d: DistributedAPI,
) -> None:
    (pid,) = await d.addprocs(1)

    # One cannot be pickled where it was raised; one pickles but cannot be
    # rebuilt from its pickle anywhere; one's class is unknown to the caller.
    async def unpicklable() -> Any:
        return await d.remotecall_fetch(raise_unpicklable, pid, "held a lock")

    async def unloadable() -> Any:
        return await d.remotecall_fetch(raise_unloadable, pid, "this", "that")

    async def unknown_here() -> Any:
        return await d.remotecall_fetch(raise_worker_only, pid, "only there")

    cases = [
        (unpicklable, "UnpicklableError", "held a lock"),
        (unloadable, "UnloadableError", "this and that"),
        (unknown_here, "WorkerOnlyError", "only there"),
    ]
    for call, type_name, text in cases:
        exc = await _remote_exception(call, f"remotecall_fetch raising {type_name}")
        assert exc.pid == pid, f"{type_name}: RemoteException.pid is {exc.pid}"
        described = exc.exception
        assert type(described) is RuntimeError, (
            f"{type_name} came back as {described!r}, not as a RuntimeError"
        )
        message = str(described)
        assert type_name in message and text in message, (
            f"the RuntimeError {message!r} does not name {type_name} and {text!r}"
        )
    with within(PATIENCE, "a call after the failed replies"):
        assert await d.remotecall_fetch(whoami, pid, d) == pid


@scenario("remote_exception.nested-rewrapped")
async def a_remote_exception_passing_through_a_worker_is_wrapped_again(
    d: DistributedAPI,
) -> None:
    a, b = await d.addprocs(2)
    for middle, origin in ((a, b), (b, 1), (a, a)):

        async def nested(middle: int = middle, origin: int = origin) -> Any:
            return await d.remotecall_fetch(
                call_onwards, middle, d, raise_scenario_error, origin, "deep"
            )

        exc = await _remote_exception(nested, f"a call {middle} -> {origin} failing")
        assert exc.pid == middle, (
            f"passed on by {middle}, the outer RemoteException has pid {exc.pid}"
        )
        inner = exc.exception
        assert isinstance(inner, RemoteException), (
            f"the error from {origin} was not wrapped again by {middle}: {exc!r}"
        )
        assert inner.pid == origin, f"the inner error names pid {inner.pid}"
        assert isinstance(inner.exception, ScenarioError), (
            f"the original is {inner.exception!r}"
        )


# ----------------------------------------------- ProcessExitedException


async def _started(d: DistributedAPI, pid: int, key: str) -> None:
    async def started() -> bool:
        got: list[Any] = await d.remotecall_fetch(records, pid, key)
        return "started" in got

    await eventually(started, f"the call on {pid} never started")


def _check_exited(outcome: BaseException | None, pid: int, what: str) -> None:
    assert outcome is not None, f"{what} returned normally"
    assert not isinstance(outcome, RemoteException), (
        f"{what} raised a RemoteException wrapping {outcome.exception!r}, "
        "not ProcessExitedException itself"
    )
    assert isinstance(outcome, ProcessExitedException), f"{what} raised {outcome!r}"
    assert outcome.worker_id == pid, (
        f"{what}: ProcessExitedException.worker_id is {outcome.worker_id}, not {pid}"
    )


async def _pending_call_when_killed(
    d: DistributedAPI, form: Callable[..., Awaitable[Any]], what: str
) -> None:
    (pid,) = await d.addprocs(1)
    key = new_key()
    outcome: list[BaseException | None] = []

    async def call() -> None:
        try:
            await form(wait_gate, pid, key)
        except Exception as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await _started(d, pid, key)
        assert not outcome, f"{what} ended before the worker was killed"
        await d.faults.kill(pid)
        with within(PATIENCE, f"{what} after its worker was killed"):
            while not outcome:
                await trio.sleep(0.01)
    _check_exited(outcome[0], pid, what)


@scenario("process_exited_exception.pending-fetch", needs=("faults.kill",))
async def a_pending_remotecall_fetch_fails_when_its_worker_dies(
    d: DistributedAPI,
) -> None:
    await _pending_call_when_killed(d, d.remotecall_fetch, "a pending remotecall_fetch")


@scenario("process_exited_exception.pending-wait", needs=("faults.kill",))
async def a_pending_remotecall_wait_fails_when_its_worker_dies(
    d: DistributedAPI,
) -> None:
    await _pending_call_when_killed(d, d.remotecall_wait, "a pending remotecall_wait")


@scenario("process_exited_exception.pending-future", needs=("faults.kill",))
async def fetch_and_wait_on_a_dead_workers_future_fail(d: DistributedAPI) -> None:
    (pid,) = await d.addprocs(1)
    key = new_key()
    fut = await d.remotecall(wait_gate, pid, key)
    await _started(d, pid, key)
    outcomes: dict[str, BaseException | None] = {}

    async def attempt(name: str, op: Callable[[Any], Awaitable[Any]]) -> None:
        try:
            await op(fut)
        except Exception as exc:
            outcomes[name] = exc
        else:
            outcomes[name] = None

    # One fetch and one wait are already waiting when the worker dies...
    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt, "pending fetch", d.fetch)
        nursery.start_soon(attempt, "pending wait", d.wait)
        await trio.sleep(0.2)
        await d.faults.kill(pid)
        with within(PATIENCE, "fetch and wait after the owner was killed"):
            while len(outcomes) < 2:
                await trio.sleep(0.01)
    # ...and later ones are made after it has gone.
    await until_gone(d, pid)
    with within(PATIENCE, "fetch and wait on a Future of a dead owner"):
        await attempt("later fetch", d.fetch)
        await attempt("later wait", d.wait)
    for name, outcome in outcomes.items():
        _check_exited(outcome, pid, name)


@scenario("process_exited_exception.later-calls-fail-fast", needs=("faults.kill",))
async def every_call_to_an_exited_or_removed_worker_fails_at_once(
    d: DistributedAPI,
) -> None:
    killed, removed = await d.addprocs(2)
    await d.faults.kill(killed)
    with within(PATIENCE, f"rmprocs({removed})"):
        removal = await d.rmprocs(removed)
        await removal.wait()
    await until_gone(d, killed)
    await until_gone(d, removed)
    forms = {
        "remotecall": d.remotecall,
        "remotecall_fetch": d.remotecall_fetch,
        "remotecall_wait": d.remotecall_wait,
        "remote_do": d.remote_do,
    }
    for pid, how in ((killed, "killed"), (removed, "removed")):
        for name, form in forms.items():
            what = f"{name} to {how} worker {pid}"
            outcome: BaseException | None = None
            try:
                with within(AT_ONCE, what):
                    await form(whoami, pid, d)
            except AssertionError:
                raise
            except Exception as exc:
                outcome = exc
            _check_exited(outcome, pid, what)


@scenario("process_exited_exception.default-worker-id")
async def process_exited_exception_without_a_pid_has_worker_id_minus_one(
    d: DistributedAPI,
) -> None:
    exc = ProcessExitedException()
    assert exc.worker_id == -1, f"worker_id is {exc.worker_id}, expected -1"
    assert ProcessExitedException(3).worker_id == 3, "worker_id of an explicit pid"
