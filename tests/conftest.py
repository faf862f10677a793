"""Shared fixtures for the ``ref`` tests that start real worker processes.

``open_test_cluster(n)`` opens a master, adds ``n`` local workers and bounds
the whole block with ``trio.fail_after``; it records the OS pid of every
worker the cluster ever launched in ``worker_ospids``, and the fixture checks
after the test that none of them is still running.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import ref

#: Default bound on one test's cluster block, in seconds.
CLUSTER_BOUND = 30.0


def process_state(pid: int) -> tuple[str, int, bytes] | None:
    """``(state letter, parent pid, command line)`` of ``pid``, None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), cmdline


def leftover_worker(pid: int) -> str | None:
    """Why ``pid`` counts as a worker left behind, or None if it is gone.

    A zombie counts only while it is our own child (we failed to reap it);
    an orphan zombie waits for an init process we do not control.  A live
    process whose command line is not a worker's means the pid was reused.
    """
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return "still exists"
    state = process_state(pid)
    if state is None:
        return None
    letter, ppid, cmdline = state
    if letter in ("Z", "X"):
        return "unreaped child" if ppid == os.getpid() else None
    if b"ref.worker" not in cmdline:
        return None
    return f"running (state {letter})"


async def wait_until_gone(pids: list[int], bound: float) -> dict[int, str]:
    """Poll until no pid is a leftover worker or ``bound`` seconds passed."""
    left: dict[int, str] = {}
    with trio.move_on_after(bound):
        while True:
            left = {p: why for p in pids if (why := leftover_worker(p))}
            if not left:
                return left
            await trio.sleep(0.05)
    return left


async def wait_for_path(path: Path, bound: float = 10.0) -> None:
    """Poll until ``path`` exists; TooSlowError after ``bound`` seconds."""
    with trio.fail_after(bound):
        while not path.exists():
            await trio.sleep(0.01)


@pytest.fixture
def worker_ospids() -> Iterator[list[int]]:
    """OS pids of the workers the test started; none may survive the test."""
    pids: list[int] = []
    yield pids
    left = {p: why for p in pids if (why := leftover_worker(p))}
    assert not left, f"worker processes left behind: {left}"


OpenTestCluster = Callable[..., AbstractAsyncContextManager[ref.Cluster]]


@pytest.fixture
def open_test_cluster(worker_ospids: list[int]) -> OpenTestCluster:
    """``async with open_test_cluster(n, bound=..., **options) as cluster:``."""

    @asynccontextmanager
    async def start(
        n: int = 0, *, bound: float = CLUSTER_BOUND, **options: Any
    ) -> AsyncIterator[ref.Cluster]:
        with trio.fail_after(bound):
            async with ref.open_cluster(**options) as cluster:
                try:
                    if n:
                        pids = await ref.addprocs(n)
                        assert len(pids) == n
                    yield cluster
                finally:
                    worker_ospids.extend(
                        h.ospid for h in cluster.master.all_handles if h.ospid
                    )

    return start


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Skip ``slow`` tests (long campaigns) unless they were asked for.

    Ask with ``-m slow`` or ``DISTREF_SLOW=1``; each such test has a smaller
    sibling that always runs.
    """
    asked = os.environ.get("DISTREF_SLOW") == "1" or "slow" in (
        config.getoption("markexpr", default="") or ""
    )
    if asked:
        return
    skip = pytest.mark.skip(reason="slow campaign: run with -m slow or DISTREF_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def run_on(
    backend: str,
    n: int,
    body: Callable[[], Awaitable[None]],
    open_test_cluster: OpenTestCluster,
) -> None:
    """Run ``body`` as the master of ``n`` workers, real (``"ref"``) or
    simulated (``"sim"``, seed 0)."""
    if backend == "ref":

        async def on_ref() -> None:
            async with open_test_cluster(n):
                await body()

        trio.run(on_ref)
        return
    sim = importlib.import_module("sim")

    async def on_sim() -> None:
        async with sim.open_cluster():
            await ref.addprocs(n)
            await body()

    sim.run(on_sim, seed=0)
