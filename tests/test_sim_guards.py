"""The guards that fail a simulated run touching the real world."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
import trio

import ref
import sim


async def _read_clock() -> None:
    time.time()


async def _read_monotonic_and_swallow() -> None:
    # The violation must fail the run even when the code carries on.
    with contextlib.suppress(Exception):
        time.monotonic()


async def _read_perf_counter() -> None:
    time.perf_counter_ns()


async def _sleep_blocking() -> None:
    time.sleep(0.01)


async def _open_socket() -> None:
    socket.socket()


async def _make_socket_pair() -> None:
    socket.socketpair()


async def _run_in_thread() -> None:
    await trio.to_thread.run_sync(int)


async def _start_thread() -> None:
    threading.Thread(target=int).start()


async def _start_process() -> None:
    subprocess.Popen(["true"])


async def _start_process_through_trio() -> None:
    await trio.run_process(["true"])


async def _use_the_real_launcher() -> None:
    async with ref.open_cluster():
        await ref.addprocs(1)


@pytest.mark.parametrize(
    ("main", "what"),
    [
        (_read_clock, "time.time"),
        (_read_monotonic_and_swallow, "time.monotonic"),
        (_read_perf_counter, "time.perf_counter_ns"),
        (_sleep_blocking, "time.sleep"),
        (_open_socket, "socket.socket"),
        (_make_socket_pair, "socket.socketpair"),
        (_run_in_thread, "trio.to_thread.run_sync"),
        (_start_thread, "threading.Thread.start"),
        (_start_process, "subprocess.Popen"),
        # trio starts processes from a worker thread: that is caught first.
        (_start_process_through_trio, "trio.to_thread.run_sync"),
        (_use_the_real_launcher, "trio.to_thread.run_sync"),
    ],
)
def test_the_run_fails_when_code_reaches_outside(
    main: Callable[[], Awaitable[None]], what: str
) -> None:
    with pytest.raises(sim.SimulationViolation, match=re.escape(what)):
        sim.run(main, seed=1)


def test_a_worker_reading_the_clock_fails_the_run() -> None:
    """Even a function sent to a worker (a pickled copy of the guard)."""

    async def main() -> None:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            await ref.remotecall_fetch(time.perf_counter, pid)

    with pytest.raises(sim.SimulationViolation, match=r"time\.perf_counter"):
        sim.run(main, seed=1)


def test_everything_is_restored_after_the_run() -> None:
    originals = (
        time.time,
        time.monotonic,
        time.perf_counter,
        time.sleep,
        socket.socket,
        threading.Thread.start,
        trio.to_thread.run_sync,
        subprocess.Popen._execute_child,  # type: ignore[attr-defined]
        os.fork,
        os.getpid,
        os.cpu_count,
    )
    with pytest.raises(sim.SimulationViolation):
        sim.run(_read_clock, seed=1)
    after = (
        time.time,
        time.monotonic,
        time.perf_counter,
        time.sleep,
        socket.socket,
        threading.Thread.start,
        trio.to_thread.run_sync,
        subprocess.Popen._execute_child,  # type: ignore[attr-defined]
        os.fork,
        os.getpid,
        os.cpu_count,
    )
    assert after == originals
    assert time.time() > 1e9


def test_trio_and_its_clock_need_none_of_the_guarded_names() -> None:
    async def main() -> float:
        with trio.move_on_after(3600):
            await trio.sleep_forever()
        return trio.current_time()

    assert sim.run(main, seed=1) == pytest.approx(3600)


def test_log_records_carry_virtual_time(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        await trio.sleep(5)
        logging.getLogger("sim.test").warning("five seconds in")

    with caplog.at_level(logging.WARNING, logger="sim.test"):
        sim.run(main, seed=1)
    [record] = [r for r in caplog.records if r.name == "sim.test"]
    assert record.created == pytest.approx(946_684_805.0)


def test_each_simulated_process_has_its_own_os_pid() -> None:
    async def main() -> tuple[int, list[int]]:
        async with sim.open_cluster():
            pids = await ref.addprocs(2)
            theirs = [await ref.remotecall_fetch(os.getpid, p) for p in pids]
            return os.getpid(), theirs

    mine, theirs = sim.run(main, seed=1)
    assert len({mine, *theirs}) == 3
    assert mine != os.getpid()


def test_without_guards_the_run_may_read_the_clock() -> None:
    assert sim.run(_read_clock, seed=1, guards=False) is None
