"""``interrupt``: what Ctrl-C on workers does to the calls they run.

A call running on an interrupted worker fails with a ``RemoteException``
wrapping ``KeyboardInterrupt``; the worker goes on serving; a worker
running nothing is unaffected.  Which workers are targeted: those named
one by one or in a list, every worker by default; only the master may
interrupt.

The calls interrupted here wait in ``trio.sleep``: a call is interrupted at
its next checkpoint, so one that computes without awaiting would run to its
end first.  Each announces through a channel on the master that it has
started, so the interrupt is sent only once it runs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import trio

from conformance.registry import scenario
from spec.api import (
    DistributedAPI,
    NoSuchProcessError,
    NotMasterError,
    RemoteException,
    RemoteRef,
)

from ._probes import PATIENCE, get_state, set_state, within

#: How long an interrupted call would sleep if nothing interrupted it.
LONG = 300.0
#: How long a call that must not be interrupted takes.
SHORT = 0.3
#: A pause long enough for a sent interrupt to have arrived.
SETTLE = 0.5


async def _announce_then_sleep(
    d: DistributedAPI, started: Any, seconds: float, result: str
) -> str:
    """Say (on ``started``) that this call runs, then sleep; returns ``result``."""
    await d.put(started, d.myid())
    await trio.sleep(seconds)
    return result


async def _sleep_then(seconds: float, result: str) -> str:
    await trio.sleep(seconds)
    return result


async def _start_running(
    d: DistributedAPI, pids: Iterable[int], seconds: float = LONG
) -> list[RemoteRef]:
    """One sleeping call per pid, each known to be running on return."""
    pids = list(pids)
    started = d.RemoteChannel(functools.partial(d.Channel, len(pids) + 1))
    futures = []
    for pid in pids:
        call = _announce_then_sleep
        futures.append(await d.remotecall(call, pid, d, started, seconds, "slept"))
    with within(PATIENCE, f"the calls on {pids} starting"):
        running = sorted([await d.take(started) for _ in pids])
    assert running == sorted(pids), f"calls started on {running}, not {pids}"
    return futures


async def _assert_interrupted(d: DistributedAPI, future: RemoteRef) -> None:
    try:
        with within(PATIENCE, f"the interrupted call on {future.where} ending"):
            value = await d.fetch(future)
    except RemoteException as exc:
        assert isinstance(exc.exception, KeyboardInterrupt), (
            f"the interrupted call on {future.where} failed with "
            f"{exc.exception!r}, not KeyboardInterrupt"
        )
        assert exc.pid == future.where, (
            f"the interrupted call on {future.where} failed naming pid {exc.pid}"
        )
    else:
        raise AssertionError(
            f"the call on {future.where} was interrupted yet returned {value!r}"
        )


async def _still_serves(d: DistributedAPI, pid: int) -> None:
    with within(PATIENCE, f"calling worker {pid} after the interrupt"):
        assert await d.remotecall_fetch(d.myid, pid) == pid
        answer = await d.remotecall_fetch(_sleep_then, pid, SHORT, "later")
    assert answer == "later", f"a call on {pid} after the interrupt gave {answer!r}"


async def _interrupt_unknown(
    d: DistributedAPI, pid: int | list[int]
) -> BaseException | None:
    try:
        await d.interrupt(pid)
    except Exception as exc:
        return exc
    return None


@scenario("interrupt.running-call-fails")
async def interrupted_calls_fail_and_the_workers_keep_serving(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        busy, idle = await d.addprocs(2)
    await d.remotecall_fetch(set_state, idle, "mark", "kept")
    futures = await _start_running(d, [busy, busy])

    with within(PATIENCE, f"interrupt({busy}, {idle})"):
        await d.interrupt(busy, idle)
    for future in futures:
        await _assert_interrupted(d, future)
    await trio.sleep(SETTLE)
    for pid in (busy, idle):
        await _still_serves(d, pid)
    # The idle worker lost nothing: it is the same process, state intact.
    mark = await d.remotecall_fetch(get_state, idle, "mark")
    assert mark == "kept", f"worker {idle}'s state after an idle interrupt: {mark!r}"


@scenario("interrupt.targets")
async def interrupt_targets_listed_pids_or_every_worker_from_the_master(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        a, b = await d.addprocs(2)

    futures = await _start_running(d, [a, b])
    with within(PATIENCE, "interrupt()"):
        await d.interrupt()
    for future in futures:
        await _assert_interrupted(d, future)

    futures = await _start_running(d, [a, b])
    with within(PATIENCE, f"interrupt([{a}, {b}])"):
        await d.interrupt([a, b])
    for future in futures:
        await _assert_interrupted(d, future)

    # One pid: only its call fails; the other finishes normally.
    [target] = await _start_running(d, [a], LONG)
    [spared] = await _start_running(d, [b], 2.0)
    with within(PATIENCE, f"interrupt({a})"):
        await d.interrupt(a)
    await _assert_interrupted(d, target)
    with within(PATIENCE, f"the call on {b} finishing"):
        value = await d.fetch(spared)
    assert value == "slept", f"the call on {b}, not interrupted, gave {value!r}"

    # A pid that is not a worker is refused.
    for wrong in (b + 40, 1):
        with within(PATIENCE, f"interrupt({wrong})"):
            error = await _interrupt_unknown(d, wrong)
        assert isinstance(error, KeyError), (
            f"interrupt({wrong}) raised {error!r}, not KeyError"
        )

    # Only the master interrupts.
    try:
        with within(PATIENCE, f"interrupt({b}) called on worker {a}"):
            await d.remotecall_fetch(d.interrupt, a, b)
    except RemoteException as exc:
        assert isinstance(exc.exception, NotMasterError), (
            f"interrupt on worker {a} raised {exc.exception!r}, not NotMasterError"
        )
    else:
        raise AssertionError(f"interrupt({b}) succeeded on worker {a}")
    for pid in (a, b):
        await _still_serves(d, pid)


class _ManageRecorder:
    """A manager that launches through LocalManager and records ``manage``.

    Each ``manage(pid, config, "interrupt")`` waits (``SETTLE * 4`` at most)
    until ``expect(n)``'s ``n`` interrupts have all arrived, and notes the
    pids whose call saw them all: only calls made concurrently can.  Every
    operation is then handed to LocalManager's ``manage``, which is what
    actually interrupts the worker.
    """

    def __init__(self, d: DistributedAPI, n: int) -> None:
        self.inner = d.LocalManager(n)
        self.ops: list[tuple[int, str]] = []
        self.overlapped: list[int] = []
        self._expected = 0
        self._arrived = 0
        self._all_in = trio.Event()

    def expect(self, n: int) -> None:
        self._expected, self._arrived, self._all_in = n, 0, trio.Event()

    async def launch(
        self, params: Mapping[str, Any], launched: list[Any], notify: Any
    ) -> None:
        await self.inner.launch(params, launched, notify)

    async def manage(self, pid: int, config: Any, op: str) -> None:
        self.ops.append((pid, op))
        if op == "interrupt":
            self._arrived += 1
            if self._arrived >= self._expected:
                self._all_in.set()
            with trio.move_on_after(SETTLE * 4):
                await self._all_in.wait()
            if self._all_in.is_set():
                self.overlapped.append(pid)
        await self.inner.manage(pid, config, op)

    def interrupted(self) -> list[int]:
        return sorted(pid for pid, op in self.ops if op == "interrupt")


@scenario("interrupt.calls-manage")
async def interrupt_asks_each_workers_manager_at_once(d: DistributedAPI) -> None:
    manager = _ManageRecorder(d, 2)
    with within(PATIENCE * 2, "addprocs(manager)"):
        pids = await d.addprocs(manager)
    futures = await _start_running(d, pids)

    manager.expect(len(pids))
    with within(PATIENCE, f"interrupt({pids})"):
        await d.interrupt(pids)
    assert manager.interrupted() == pids, (
        f"interrupt({pids}) called manage(..., 'interrupt') for {manager.interrupted()}"
    )
    assert sorted(manager.overlapped) == pids, (
        f"the manage calls of interrupt({pids}) did not all run at once: only "
        f"{sorted(manager.overlapped)} saw the others start"
    )
    # LocalManager's manage is what reached the workers.
    for future in futures:
        await _assert_interrupted(d, future)

    # One pid that is not a worker: refused by name, no manager called.
    missing = max(pids) + 40
    before = list(manager.ops)
    with within(PATIENCE, f"interrupt({pids[0]}, {missing})"):
        error = await _interrupt_unknown(d, [pids[0], missing])
    assert isinstance(error, NoSuchProcessError) and isinstance(error, KeyError), (
        f"interrupt of non-worker {missing} raised {error!r}, not a "
        "NoSuchProcessError (a KeyError)"
    )
    assert error.pid == missing and str(missing) in str(error), (
        f"the error for non-worker {missing} names {error.pid}: {error}"
    )
    assert manager.ops == before, (
        "manage was called although interrupt was refused: "
        f"{manager.ops[len(before) :]}"
    )
    for pid in pids:
        await _still_serves(d, pid)
