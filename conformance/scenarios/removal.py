"""Leaving the cluster: rmprocs, and workers that die or lose the master.

What ``rmprocs`` accepts (pids one by one, in lists, pid 1, unknown pids),
when it returns (after the workers terminated; at once with ``waitfor=0``;
with ``RmprocsTimeoutError`` naming the stragglers), that removed pids leave
every membership view, the master's at once and the other workers' soon,
and that removal is quiet while an unexpected death is reported.  (A
worker whose connection to the master breaks must exit with status 1: that
is ``programs.py``'s, where the scenario starts the worker itself and so
can read its exit status on any backend.)

Some scenarios need a worker that is slow to leave, in one of two ways
(a "hold"), each scenario body running once with each:

* suspended (``faults.suspend``): stopped as by SIGSTOP, it reads nothing,
  the exit request included, until resumed a given time later; real and
  simulated workers alike can be;
* busy in a call that never yields (``hold_without_yielding``), so it
  cannot act on the request to exit until that call returns.  This needs
  ``blocking_calls``: a backend whose workers can block without stopping
  the rest of the cluster and its clock (a simulator running every process
  in one thread on virtual time cannot), and covers its own behaviour,
  ``rmprocs.busy-worker-leaves-after-its-call``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import trio

from conformance.registry import scenario
from spec.api import DistributedAPI, RmprocsTimeoutError

from ._probes import (
    PATIENCE,
    assert_exited,
    captured_log,
    eventually,
    hold_without_yielding,
    myid_of,
    ospid,
    process_has_exited,
    process_start_time,
    within,
)


def _assert_not_listed(d: DistributedAPI, pids: list[int], when: str) -> None:
    procs, workers = d.procs(), d.workers()
    for pid in pids:
        assert pid not in procs, f"{when}: procs() still lists {pid}: {procs}"
        assert pid not in workers, f"{when}: workers() still lists {pid}: {workers}"


def _terminated_reports(messages: list[str], pids: list[int]) -> list[str]:
    return [m for m in messages for p in pids if f"Worker {p} terminated." in m]


# ------------------------------------------------ workers slow to leave

#: Keeps a worker from acting on anything (the exit request included) for
#: some seconds from now, within the block.
Hold = Callable[[DistributedAPI, int, float], AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def busy(d: DistributedAPI, pid: int, seconds: float) -> AsyncIterator[None]:
    """``pid`` runs a call that never yields for ``seconds``."""
    await d.remote_do(hold_without_yielding, pid, seconds)
    yield


@contextlib.asynccontextmanager
async def suspended(d: DistributedAPI, pid: int, seconds: float) -> AsyncIterator[None]:
    """``pid`` is suspended now and resumed ``seconds`` later.

    Leaving the block waits for the resumption; a failure in the block
    resumes the worker at once.
    """
    await d.faults.suspend(pid)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_resume_after, d, pid, seconds)
        yield


async def _resume_after(d: DistributedAPI, pid: int, seconds: float) -> None:
    try:
        await trio.sleep(seconds)
    finally:
        with trio.CancelScope(shield=True):
            await d.faults.resume(pid)


# ---------------------------------------------------------------- rmprocs


async def _rmprocs_returns_once_the_workers_have_quietly_terminated(
    d: DistributedAPI, hold: Hold
) -> None:
    with within(PATIENCE, "addprocs(3)"):
        slow, quick, stays = await d.addprocs(3)
    held = 0.5
    with captured_log(d) as log:
        started = trio.current_time()
        # ``slow`` cannot act on the exit request before the hold ends.
        async with hold(d, slow, held):
            with within(PATIENCE, f"rmprocs({slow}, {quick})"):
                removal = await d.rmprocs(slow, quick)
            took = trio.current_time() - started

        assert took >= held * 0.9, (
            f"rmprocs returned after {took:.2f} s, before worker {slow} could "
            f"have terminated (it was held for {held} s)"
        )
        assert removal.done, "the Removal of an rmprocs that waited is not done"
        _assert_not_listed(d, [slow, quick], "after rmprocs returned")
        for pid in (slow, quick):
            await assert_exited(d, pid)
        with within(1.0, "wait() on a finished Removal"):
            await removal.wait()
        assert d.workers() == [stays], f"workers() is {d.workers()}, not [{stays}]"
        with within(PATIENCE, f"a call to the remaining worker {stays}"):
            assert await d.remotecall_fetch(d.myid, stays) == stays
    reported = _terminated_reports(log.warnings(), [slow, quick])
    assert not reported, f"removal by rmprocs was reported as a death: {reported}"


@scenario(
    "rmprocs.removes-workers",
    "rmprocs.waits-by-default",
    "rmprocs.completed-removal-awaitable",
    "rmprocs.removal-not-reported",
    needs=("faults.suspend",),
)
async def rmprocs_returns_once_a_suspended_worker_has_quietly_terminated(
    d: DistributedAPI,
) -> None:
    await _rmprocs_returns_once_the_workers_have_quietly_terminated(d, suspended)


@scenario("rmprocs.busy-worker-leaves-after-its-call", needs=("blocking_calls",))
async def rmprocs_returns_once_a_busy_worker_has_quietly_terminated(
    d: DistributedAPI,
) -> None:
    await _rmprocs_returns_once_the_workers_have_quietly_terminated(d, busy)


@scenario("rmprocs.graceful-without-warnings", needs=("real_processes",))
async def a_removed_worker_process_exits_by_itself_without_warnings(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        pids = await d.addprocs(2)
    ospids = {pid: await d.remotecall_fetch(ospid, pid) for pid in pids}
    starts = {pid: process_start_time(ospids[pid]) for pid in pids}
    with captured_log(d) as log:
        with within(PATIENCE, f"rmprocs({pids})"):
            await d.rmprocs(*pids)

        async def all_exited() -> bool:
            return all(process_has_exited(ospids[p], starts[p] or 0) for p in pids)

        # Well before any escalation to a forced kill (5 s or more).
        await eventually(all_exited, "the removed workers' OS processes exit", 3.0)
    assert not log.warnings(), (
        f"removing responsive workers logged warnings: {log.warnings()}"
    )


@scenario("rmprocs.pid-one-refused-with-warning")
async def rmprocs_of_pid_one_warns_keeps_the_master_and_removes_the_rest(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        first, second = await d.addprocs(2)
    with captured_log(d) as log, within(PATIENCE, f"rmprocs(1, {first})"):
        await d.rmprocs(1, first)
    warned = [m for m in log.warnings() if "rmprocs: process 1 not removed" in m]
    assert warned, f"no warning 'rmprocs: process 1 not removed'; got {log.warnings()}"
    assert d.myid() == 1, f"myid() on the master became {d.myid()}"
    assert d.procs() == [1, second], f"procs() is {d.procs()}, not [1, {second}]"
    await assert_exited(d, first)
    with within(PATIENCE, "calls after rmprocs(1, ...)"):
        assert await d.remotecall_fetch(d.myid, 1) == 1, "the master stopped serving"
        assert await d.remotecall_fetch(myid_of, second, d, 1) == 1, (
            f"worker {second} can no longer reach the master"
        )


@scenario("rmprocs.unknown-pids-ignored")
async def rmprocs_silently_skips_pids_that_are_not_current_workers(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        gone, target = await d.addprocs(2)
        await d.rmprocs(gone)
    never = 10_000
    with captured_log(d) as log:
        with within(PATIENCE, f"rmprocs({gone}, {never}, {target})"):
            removal = await d.rmprocs(gone, never, target)
            await removal.wait()
        with within(PATIENCE, f"rmprocs({never})"):
            nothing = await d.rmprocs(never)
            await nothing.wait()
    assert removal.done and nothing.done, "a Removal of unknown pids is not done"
    assert d.workers() == [1], f"workers() is {d.workers()} after removing {target}"
    await assert_exited(d, target)
    assert not log.warnings(), (
        f"unknown pids were not ignored silently: {log.warnings()}"
    )


@scenario("rmprocs.accepts-pid-collections")
async def rmprocs_takes_pids_one_by_one_in_lists_or_mixed(d: DistributedAPI) -> None:
    with within(PATIENCE, "addprocs(5)"):
        a, b, c, e, f = await d.addprocs(5)
    with within(PATIENCE, "three rmprocs calls"):
        await d.rmprocs(a, b)
        _assert_not_listed(d, [a, b], f"after rmprocs({a}, {b})")
        await d.rmprocs([c])
        _assert_not_listed(d, [c], f"after rmprocs([{c}])")
        # Mixed, and with a pid twice: one flat set.
        await d.rmprocs(e, [f, e])
        _assert_not_listed(d, [e, f], f"after rmprocs({e}, [{f}, {e}])")
    assert d.workers() == [1], f"workers() is {d.workers()} after removing them all"
    for pid in (a, b, c, e, f):
        await assert_exited(d, pid)


async def _rmprocs_raises_naming_exactly_the_workers_still_there_after_waitfor(
    d: DistributedAPI, hold: Hold
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        stuck, quick = await d.addprocs(2)
    waitfor = 1.0
    async with hold(d, stuck, waitfor + 1.5):
        try:
            with within(PATIENCE, f"rmprocs({stuck}, {quick}, waitfor={waitfor})"):
                await d.rmprocs(stuck, quick, waitfor=waitfor)
        except RmprocsTimeoutError as exc:
            assert sorted(exc.pids) == [stuck], (
                f"RmprocsTimeoutError names {exc.pids}; only {stuck} was still running"
            )
            assert exc.waitfor == waitfor, (
                f"RmprocsTimeoutError.waitfor is {exc.waitfor!r}, not {waitfor!r}"
            )
        else:
            raise AssertionError(
                f"rmprocs(waitfor={waitfor}) returned although worker {stuck} "
                "was held and could not have terminated"
            )
        await assert_exited(d, quick)


@scenario("rmprocs.timeout-raises", needs=("faults.suspend",))
async def rmprocs_raises_naming_exactly_the_suspended_workers_after_waitfor(
    d: DistributedAPI,
) -> None:
    await _rmprocs_raises_naming_exactly_the_workers_still_there_after_waitfor(
        d, suspended
    )


@scenario("rmprocs.busy-worker-leaves-after-its-call", needs=("blocking_calls",))
async def rmprocs_raises_naming_exactly_the_busy_workers_after_waitfor(
    d: DistributedAPI,
) -> None:
    await _rmprocs_raises_naming_exactly_the_workers_still_there_after_waitfor(d, busy)


async def _rmprocs_waitfor_zero_returns_at_once_and_the_pids_leave_the_views(
    d: DistributedAPI, hold: Hold
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        slow, stays = await d.addprocs(2)
    async with hold(d, slow, 1.0):
        with within(PATIENCE, "rmprocs(waitfor=0)"):
            removal = await d.rmprocs(slow, waitfor=0)
        # Nothing between the return and these checks may yield.
        done_at_once = removal.done
        views = (d.procs(), d.workers(), d.nprocs(), d.nworkers())
        assert not done_at_once, (
            f"rmprocs(waitfor=0) returned a finished Removal although worker "
            f"{slow} was held and could not have terminated: it waited"
        )
        assert views == ([1, stays], [stays], 2, 1), (
            f"right after rmprocs({slow}, waitfor=0) returned, (procs, workers, "
            f"nprocs, nworkers) is {views}: the pid being removed is still counted"
        )
        with within(PATIENCE, "wait() on the background Removal"):
            await removal.wait()
    assert removal.done, "the Removal is not done after its wait() returned"
    await assert_exited(d, slow)


@scenario(
    "rmprocs.waitfor-zero-background",
    "procs.excludes-removing-workers",
    needs=("faults.suspend",),
)
async def rmprocs_waitfor_zero_returns_at_once_while_a_worker_is_suspended(
    d: DistributedAPI,
) -> None:
    await _rmprocs_waitfor_zero_returns_at_once_and_the_pids_leave_the_views(
        d, suspended
    )


@scenario("rmprocs.busy-worker-leaves-after-its-call", needs=("blocking_calls",))
async def rmprocs_waitfor_zero_returns_at_once_while_a_worker_is_busy(
    d: DistributedAPI,
) -> None:
    await _rmprocs_waitfor_zero_returns_at_once_and_the_pids_leave_the_views(d, busy)


@scenario("workers.peers-forget-removed-worker")
async def the_other_workers_soon_forget_a_removed_worker(d: DistributedAPI) -> None:
    with within(PATIENCE, "addprocs(3)"):
        leaving, talker, bystander = await d.addprocs(3)
    with within(PATIENCE, f"worker {talker} calling worker {leaving}"):
        # ``talker`` now holds a connection to ``leaving``; ``bystander``
        # only knows of it.
        assert await d.remotecall_fetch(myid_of, talker, d, leaving) == leaving
    for pid in (talker, bystander):
        procs = await d.remotecall_fetch(d.procs, pid)
        assert leaving in procs, f"worker {pid} never knew of {leaving}: {procs}"

    with within(PATIENCE, f"rmprocs({leaving})"):
        await d.rmprocs(leaving)
    for pid in (talker, bystander):

        async def forgot(pid: int = pid) -> bool:
            procs = await d.remotecall_fetch(d.procs, pid)
            workers = await d.remotecall_fetch(d.workers, pid)
            return leaving not in procs and leaving not in workers

        await eventually(forgot, f"worker {pid} still lists removed worker {leaving}")


@scenario(
    "workers.dead-worker-dropped",
    "workers.unexpected-exit-reported",
    "addprocs.pids-never-reused",
    needs=("faults.kill",),
)
async def a_killed_worker_is_dropped_reported_and_its_pid_not_reused(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        victim, survivor = await d.addprocs(2)
    with captured_log(d) as log:
        await d.faults.kill(victim)

        async def dropped() -> bool:
            return victim not in d.procs() and victim not in d.workers()

        await eventually(dropped, f"the master still lists killed worker {victim}")

        async def reported() -> bool:
            return bool(_terminated_reports(log.warnings(), [victim]))

        await eventually(
            reported, f"the master did not report 'Worker {victim} terminated.'", 2.0
        )
    assert not _terminated_reports(log.warnings(), [survivor]), (
        f"the master reported worker {survivor} dead: {log.warnings()}"
    )
    assert d.workers() == [survivor], f"workers() is {d.workers()}, not [{survivor}]"
    with within(PATIENCE, "addprocs(1) after the death"):
        [newcomer] = await d.addprocs(1)
    assert newcomer > survivor, (
        f"the worker added after {victim} died got pid {newcomer}, not above "
        f"every earlier pid ({victim}, {survivor})"
    )
