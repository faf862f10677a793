"""End-to-end tests of the ``ref`` runtime on real worker processes.

Every test opens its own cluster of ``python -m ref.worker`` processes on
loopback through the ``open_test_cluster`` fixture, which bounds the block
and checks afterwards that no worker process survived.  Functions sent to
workers are defined at module level here; the workers import this module by
name (the launcher passes the master's ``sys.path`` on).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import OpenTestCluster, wait_for_path

import ref
from ref._context import current_process
from ref._local import LocalWorkerHandle
from ref.protocol.framing import encode_frame
from ref.protocol.messages import Header
from ref.protocol.wire import PROTOCOL_VERSION, pad_version
from spec.api import RRID

# ------------------------------------------------- functions run on workers


def _fail(message: str) -> None:
    raise ValueError(message)


def _combo(
    v1: int, v2: int = 0, *, kw1: int = 0, kw2: int = 0, out: str | None = None
) -> int:
    """Weights every argument differently, so a mix-up shows in the sum."""
    total = v1 + 2 * v2 + 4 * kw1 + 8 * kw2
    if out is not None:
        Path(out).write_text(str(total))
    return total


def _write_file(path: str, text: str) -> None:
    Path(path).write_text(text)


async def _slow_write(path: str, delay: float) -> str:
    await trio.sleep(delay)
    Path(path).write_text("written")
    return "done"


async def _mark_and_sleep(path: str, seconds: float) -> None:
    Path(path).touch()
    await trio.sleep(seconds)


def _return_error() -> ValueError:
    return ValueError("returned, not raised")


def _identity(x: Any) -> Any:
    return x


async def _call_other(pid: int) -> int:
    value: int = await ref.remotecall_fetch(ref.myid, pid)
    return value


def _linked() -> list[int]:
    return sorted(current_process().links)


def _explode() -> None:
    raise RuntimeError("this object refuses to be unpickled")


class Poison:
    """Pickles fine anywhere; unpickling it raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, ())


def _unpicklable_result() -> threading.Lock:
    return threading.Lock()


def _poison_result() -> Poison:
    return Poison()


class MakeDirectory:
    """Unpickling this creates a directory: a visible side effect."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


# ------------------------------------------------------------- the example


async def test_issue_example(open_test_cluster: OpenTestCluster) -> None:
    async with open_test_cluster(0):
        assert ref.myid() == 1
        assert ref.workers() == [1]
        assert ref.nworkers() == 1
        assert ref.procs() == [1]

        assert await ref.addprocs(2) == [2, 3]
        assert ref.workers() == [2, 3]
        assert ref.procs() == [1, 2, 3]
        assert ref.nprocs() == 3
        assert ref.nworkers() == 2

        assert await ref.remotecall_fetch(ref.myid, 3) == 3
        fut = await ref.remotecall(pow, 2, 2, 10)
        assert fut.where == 2
        assert await ref.fetch(fut) == 1024

        with pytest.raises(ref.RemoteException) as info:
            await ref.remotecall_fetch(_fail, 2, "boom")
        error = info.value
        assert error.pid == 2
        assert isinstance(error.exception, ValueError)
        assert str(error.exception) == "boom"
        assert "_fail" in error.remote_traceback
        assert "ValueError: boom" in error.remote_traceback
        assert str(error).startswith("On worker 2:\nValueError: boom")

        await ref.rmprocs(3)
        assert ref.workers() == [2]
        assert ref.nprocs() == 2


async def test_workers_agree_with_the_master_after_addprocs(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(2):
        for pid in (2, 3):
            assert await ref.remotecall_fetch(ref.myid, pid) == pid
            assert await ref.remotecall_fetch(ref.procs, pid) == [1, 2, 3]
            assert await ref.remotecall_fetch(ref.workers, pid) == [2, 3]
            assert await ref.remotecall_fetch(ref.nworkers, pid) == 2


async def test_only_the_master_adds_workers(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        with pytest.raises(ref.RemoteException) as info:
            await ref.remotecall_fetch(ref.addprocs, 2, 1)
        assert isinstance(info.value.exception, ref.NotMasterError)


async def test_unknown_pid_on_the_master_is_no_such_process(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        with pytest.raises(
            ref.NoSuchProcessError, match="no process with id 99"
        ) as info:
            await ref.remotecall_fetch(ref.myid, 99)
        assert info.value.known == (1, 2)
        assert "the processes are [1, 2]" in str(info.value)
        with pytest.raises(ref.NoSuchProcessError):
            await ref.remotecall(ref.myid, 99)


async def test_faults_kill_rejects_the_master_and_unknown_pids(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        with pytest.raises(ValueError, match=r"faults.kill\(1\): pid 1 is the master"):
            await ref.faults.kill(1)
        with pytest.raises(ref.NoSuchProcessError, match="no process with id 42"):
            await ref.faults.kill(42)
        assert await ref.remotecall_fetch(ref.myid, 2) == 2


async def test_sys_exit_in_a_call_ends_that_worker_only(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(2) as cluster:
        handle = getattr(cluster.master.handles[2], "inner", None)
        assert isinstance(handle, LocalWorkerHandle)

        with pytest.raises(ref.ProcessExitedException) as info:
            await ref.remotecall_fetch(sys.exit, 2, 3)

        assert info.value.worker_id == 2
        with trio.fail_after(10):
            while handle.process.returncode is None:
                await trio.sleep(0.05)
        assert handle.process.returncode == 3
        assert ref.workers() == [3]
        assert await ref.remotecall_fetch(ref.myid, 3) == 3


# --------------------------------------------------- arguments, call forms

COMBO_CASES: list[tuple[tuple[int, ...], dict[str, int], int]] = [
    ((1,), {}, 1),
    ((1, 1), {}, 3),
    ((1, 1), {"kw1": 1}, 7),
    ((1,), {"kw2": 1}, 9),
    ((1, 1), {"kw1": 1, "kw2": 1}, 15),
]


@pytest.mark.parametrize("target", [1, 2], ids=["self", "worker"])
async def test_kwargs_and_defaults_through_all_four_call_forms(
    open_test_cluster: OpenTestCluster, tmp_path: Path, target: int
) -> None:
    async with open_test_cluster(1):
        for index, (args, kwargs, expected) in enumerate(COMBO_CASES):
            assert await ref.remotecall_fetch(_combo, target, *args, **kwargs) == (
                expected
            )
            fut = await ref.remotecall(_combo, target, *args, **kwargs)
            assert await ref.fetch(fut) == expected
            waited = await ref.remotecall_wait(_combo, target, *args, **kwargs)
            assert await ref.fetch(waited) == expected

            out = tmp_path / f"remote_do-{index}"
            await ref.remote_do(_combo, target, *args, out=str(out), **kwargs)
            await wait_for_path(out)
            with trio.fail_after(5):
                while out.read_text() != str(expected):
                    await trio.sleep(0.01)


async def test_remotecall_wait_returns_after_completion(
    open_test_cluster: OpenTestCluster, tmp_path: Path
) -> None:
    async with open_test_cluster(1):
        path = tmp_path / "written"
        fut = await ref.remotecall_wait(_slow_write, 2, str(path), 0.3)
        assert path.read_text() == "written"
        assert not fut.has_value
        assert await ref.isready(fut)
        assert await ref.fetch(fut) == "done"
        assert fut.has_value


async def test_remotecall_wait_raises_the_remote_exception(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        with pytest.raises(ref.RemoteException) as info:
            await ref.remotecall_wait(_fail, 2, "wait-fail")
        assert info.value.pid == 2
        assert str(info.value.exception) == "wait-fail"

        fut = await ref.remotecall(_fail, 2, "later")
        with pytest.raises(ref.RemoteException, match="later"):
            await ref.wait(fut)
        with pytest.raises(ref.RemoteException, match="later"):
            await ref.fetch(fut)


async def test_remote_do_runs_and_its_errors_stay_remote(
    open_test_cluster: OpenTestCluster, tmp_path: Path
) -> None:
    async with open_test_cluster(1):
        assert await ref.remote_do(_fail, 2, "ignored") is None
        path = tmp_path / "remote_do"
        assert await ref.remote_do(_write_file, 2, str(path), "hello") is None
        await wait_for_path(path)
        with trio.fail_after(5):
            while path.read_text() != "hello":
                await trio.sleep(0.01)
        assert await ref.remotecall_fetch(ref.myid, 2) == 2


async def test_exception_returned_as_a_value_is_not_raised(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        for target in (1, 2):
            value = await ref.remotecall_fetch(_return_error, target)
            assert isinstance(value, ValueError)
            assert str(value) == "returned, not raised"
            fut = await ref.remotecall(_return_error, target)
            assert isinstance(await ref.fetch(fut), ValueError)


async def test_calls_to_self_run_locally(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(0):
        obj = [1]
        assert await ref.remotecall_fetch(_identity, 1, obj) is obj
        assert await ref.remotecall_fetch(ref.myid, 1) == 1

        fut = await ref.remotecall(pow, 1, 2, 5)
        assert fut.where == 1
        assert await ref.fetch(fut) == 32
        waited = await ref.remotecall_wait(pow, 1, 3, 2)
        assert await ref.isready(waited)
        assert await ref.fetch(waited) == 9

        await ref.remote_do(list.append, 1, obj, 2)
        with trio.fail_after(5):
            while obj != [1, 2]:
                await trio.sleep(0)

        with pytest.raises(ref.RemoteException) as info:
            await ref.remotecall_fetch(_fail, 1, "self")
        assert info.value.pid == 1
        with pytest.raises(ref.RemoteException):
            await ref.remotecall_wait(_fail, 1, "self-wait")


# ------------------------------------------------------------------ futures


async def test_future_is_write_once(open_test_cluster: OpenTestCluster) -> None:
    async with open_test_cluster(1):
        remote = ref.Future(2)
        assert remote.where == 2
        assert not await ref.isready(remote)
        await ref.put(remote, "first")
        with pytest.raises(ref.FutureAlreadySetError):
            await ref.put(remote, "second")
        assert await ref.isready(remote)
        assert await ref.fetch(remote) == "first"

        local = ref.Future()
        assert local.where == 1
        await ref.put(local, 1)
        with pytest.raises(ref.FutureAlreadySetError):
            await ref.put(local, 2)
        assert await ref.fetch(local) == 1

        result = await ref.remotecall(pow, 2, 2, 3)
        assert await ref.fetch(result) == 8
        with pytest.raises(ref.FutureAlreadySetError):
            await ref.put(result, 0)


async def test_fetch_caches_the_value_beyond_the_worker(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        fetched = await ref.remotecall(pow, 2, 2, 10)
        unfetched = await ref.remotecall(pow, 2, 3, 3)
        assert await ref.fetch(fetched) == 1024
        await ref.wait(unfetched)

        await ref.rmprocs(2)
        assert ref.workers() == [1]
        assert await ref.fetch(fetched) == 1024
        assert await ref.isready(fetched)
        with trio.fail_after(5), pytest.raises(ref.ProcessExitedException):
            await ref.fetch(unfetched)


# ------------------------------------------------------ worker to worker


async def test_workers_connect_lazily_in_both_directions(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(3):
        for pid in (2, 3, 4):
            assert await ref.remotecall_fetch(_linked, pid) == [1]

        # The lower pid asks the master to have the higher one dial it.
        assert await ref.remotecall_fetch(_call_other, 2, 3) == 3
        # The higher pid dials the lower one itself.
        assert await ref.remotecall_fetch(_call_other, 4, 2) == 2
        # The first link now serves the other direction too.
        assert await ref.remotecall_fetch(_call_other, 3, 2) == 2

        assert await ref.remotecall_fetch(_linked, 2) == [1, 3, 4]
        assert await ref.remotecall_fetch(_linked, 3) == [1, 2]
        assert await ref.remotecall_fetch(_linked, 4) == [1, 2]


async def test_nested_call_error_is_wrapped_by_each_hop(
    open_test_cluster: OpenTestCluster,
) -> None:
    """Worker 3 calls worker 2, which fails: 3 wraps 2's error, as upstream."""
    async with open_test_cluster(2):
        with pytest.raises(ref.RemoteException) as info:
            await ref.remotecall_fetch(ref.remotecall_fetch, 3, _fail, 2, "inner")
        assert info.value.pid == 3
        inner = info.value.exception
        assert isinstance(inner, ref.RemoteException) and inner.pid == 2
        assert isinstance(inner.exception, ValueError)
        assert str(inner.exception) == "inner"
        assert "_fail" in inner.remote_traceback


# ------------------------------------------------------------------ rmprocs


async def test_pids_are_never_reused(open_test_cluster: OpenTestCluster) -> None:
    async with open_test_cluster(2):
        removal = await ref.rmprocs(2, 3)
        assert repr(removal) == "<Removal of [2, 3]: done>"
        assert ref.workers() == [1]
        assert await ref.addprocs(1) == [4]
        assert await ref.remotecall_fetch(ref.myid, 4) == 4
        with pytest.raises(ref.ProcessExitedException):
            await ref.remotecall_fetch(ref.myid, 2)


async def test_rmprocs_of_the_master_warns_and_removes_nothing(
    open_test_cluster: OpenTestCluster, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_test_cluster(1):
        with caplog.at_level(logging.WARNING, logger="ref"):
            removal = await ref.rmprocs(1)
        assert "rmprocs: process 1 not removed" in caplog.text
        assert removal.pids == []
        assert ref.workers() == [2]
        assert await ref.remotecall_fetch(ref.myid, 2) == 2


async def test_rmprocs_ignores_unknown_pids(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(2):
        removal = await ref.rmprocs(99, [98, 3], 1)
        assert removal.pids == [3]
        assert removal.done
        assert ref.workers() == [2]
        again = await ref.rmprocs(3)
        assert again.pids == []


async def test_rmprocs_without_waiting_returns_an_awaitable_removal(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(2):
        removal = await ref.rmprocs(2, waitfor=0)
        assert isinstance(removal, ref.Removal)
        assert removal.pids == [2]
        with trio.fail_after(10):
            await removal.wait()
        assert removal.done
        assert ref.workers() == [3]


async def test_rmprocs_rejects_a_negative_waitfor(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(0):
        with pytest.raises(ValueError, match="waitfor"):
            await ref.rmprocs(2, waitfor=-1)
        with pytest.raises(ValueError, match="waitfor"):
            await ref.rmprocs(2, waitfor=math.nan)


# ------------------------------------------------------------ worker death


def _process_state(ospid: int) -> str:
    """The one-letter state of process ``ospid`` ("T" when stopped)."""
    stat = Path(f"/proc/{ospid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


async def _until_state(ospid: int, stopped: bool) -> None:
    # A signal takes effect a moment after it is sent.
    with trio.fail_after(10):
        while (_process_state(ospid) == "T") != stopped:
            await trio.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
async def test_suspend_stops_the_worker_process_and_resume_continues_it(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(2):
        ospid = await ref.remotecall_fetch(os.getpid, 2)
        await ref.faults.suspend(2)
        try:
            await _until_state(ospid, stopped=True)
            # It still counts as a member; only its answers wait.
            assert ref.workers() == [2, 3]
            future = await ref.remotecall(ref.myid, 2)
            assert await ref.remotecall_fetch(ref.myid, 3) == 3
        finally:
            await ref.faults.resume(2)
        await _until_state(ospid, stopped=False)
        with trio.fail_after(10):
            assert await ref.fetch(future) == 2
        await ref.faults.resume(2)  # not suspended: nothing happens

        with pytest.raises(ref.NoSuchProcessError):
            await ref.faults.suspend(99)
        with pytest.raises(ref.NoSuchProcessError):
            await ref.faults.resume(99)
        with pytest.raises(ref.RemoteException) as caught:
            await ref.remotecall_fetch(ref.faults.suspend, 2, 3)
        assert isinstance(caught.value.exception, ref.NotMasterError)

        await ref.rmprocs(3)
        with pytest.raises(ref.ProcessExitedException):
            await ref.faults.suspend(3)
        await ref.faults.resume(3)  # gone: nothing to continue


async def test_killed_worker_fails_pending_and_later_calls(
    open_test_cluster: OpenTestCluster,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_test_cluster(2):
        ospid = await ref.remotecall_fetch(os.getpid, 2)
        assert ospid != os.getpid()
        started = tmp_path / "started"
        failures: list[tuple[BaseException, float]] = []

        async def pending() -> None:
            try:
                await ref.remotecall_fetch(_mark_and_sleep, 2, str(started), 60)
            except ref.ProcessExitedException as exc:
                failures.append((exc, trio.current_time()))

        with caplog.at_level(logging.WARNING, logger="ref"), trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pending)
                await wait_for_path(started)
                os.kill(ospid, signal.SIGKILL)
                killed_at = trio.current_time()
        [(error, failed_at)] = failures
        assert isinstance(error, ref.ProcessExitedException)
        assert error.worker_id == 2
        assert failed_at - killed_at < 5.0
        assert "Worker 2 terminated." in caplog.text

        with trio.fail_after(1):
            with pytest.raises(ref.ProcessExitedException):
                await ref.remotecall_fetch(ref.myid, 2)
            with pytest.raises(ref.ProcessExitedException):
                await ref.remotecall(ref.myid, 2)
            with pytest.raises(ref.ProcessExitedException):
                await ref.remotecall_wait(ref.myid, 2)
            with pytest.raises(ref.ProcessExitedException):
                await ref.remote_do(ref.myid, 2)
        assert ref.workers() == [3]
        assert await ref.remotecall_fetch(ref.myid, 3) == 3


# --------------------------------------------------- hostile or bad input


async def _send_and_wait_for_close(port: int, data: bytes) -> None:
    """Write ``data`` to a worker's port and wait until it hangs up."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        with trio.fail_after(5):
            try:
                while await stream.receive_some():
                    pass
            except trio.BrokenResourceError:
                pass  # reset: the worker closed with our bytes unread


async def test_wrong_cookie_is_refused_and_the_worker_keeps_serving(
    open_test_cluster: OpenTestCluster,
    tmp_path: Path,
) -> None:
    async with open_test_cluster(1) as cluster:
        port = current_process().group.peer(2).port
        assert port > 0
        wrong = bytes(reversed(cluster.master.cookie.encode("ascii")))
        assert wrong != cluster.master.cookie.encode("ascii")
        version = pad_version(PROTOCOL_VERSION)

        def frame_making(path: Path) -> bytes:
            body = pickle.dumps(MakeDirectory(path))
            return encode_frame(Header(RRID(1, 1), RRID(1, 2)), body)

        refused = tmp_path / "refused"
        await _send_and_wait_for_close(port, wrong + version + frame_making(refused))
        await _send_and_wait_for_close(port, b"random bytes\r\n" * 4)

        # Control: the same kind of frame behind the right cookie is loaded.
        accepted = tmp_path / "accepted"
        right = cluster.master.cookie.encode("ascii")
        await _send_and_wait_for_close(port, right + version + frame_making(accepted))
        assert accepted.is_dir()
        assert not refused.exists()

        assert await ref.remotecall_fetch(ref.myid, 2) == 2
        assert ref.workers() == [2]


async def test_undecodable_function_gives_remote_exception_and_link_survives(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        with pytest.raises(ref.RemoteException) as info:
            await ref.remotecall_fetch(Poison(), 2)  # type: ignore[arg-type]
        assert info.value.pid == 2
        assert "refuses to be unpickled" in str(info.value.exception)

        fut = await ref.remotecall(Poison(), 2)  # type: ignore[arg-type]
        with pytest.raises(ref.RemoteException, match="refuses"):
            await ref.fetch(fut)
        with pytest.raises(ref.RemoteException, match="refuses"):
            await ref.remotecall_wait(Poison(), 2)  # type: ignore[arg-type]

        assert await ref.remotecall_fetch(ref.myid, 2) == 2


async def test_unpicklable_argument_raises_here_and_link_survives(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        with pytest.raises((TypeError, pickle.PicklingError)):
            await ref.remotecall_fetch(_identity, 2, threading.Lock())
        assert await ref.remotecall_fetch(_identity, 2, "fine") == "fine"


async def test_unpicklable_result_gives_remote_exception_not_a_hang(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        with trio.fail_after(10):
            with pytest.raises(ref.RemoteException) as info:
                await ref.remotecall_fetch(_unpicklable_result, 2)
            assert info.value.pid == 2
            assert "could not be sent back" in str(info.value.exception)

            fut = await ref.remotecall(_unpicklable_result, 2)
            with pytest.raises(ref.RemoteException):
                await ref.fetch(fut)
        assert await ref.remotecall_fetch(ref.myid, 2) == 2


async def test_result_that_cannot_be_loaded_here_gives_remote_exception(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1):
        with trio.fail_after(10), pytest.raises(ref.RemoteException) as info:
            await ref.remotecall_fetch(_poison_result, 2)
        assert "refuses to be unpickled" in str(info.value.exception)
        assert await ref.remotecall_fetch(ref.myid, 2) == 2


# ------------------------------------------------------------ configuration


@pytest.mark.parametrize("value", ["soon", "-1", "0", "nan"])
async def test_bad_worker_timeout_is_a_clear_value_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DISTREF_WORKER_TIMEOUT", value)
    with pytest.raises(ValueError, match="DISTREF_WORKER_TIMEOUT") as info:
        async with ref.open_cluster():
            pass  # pragma: no cover - never entered
    assert repr(value) in str(info.value)


async def test_good_worker_timeout_is_used(
    monkeypatch: pytest.MonkeyPatch, open_test_cluster: OpenTestCluster
) -> None:
    monkeypatch.setenv("DISTREF_WORKER_TIMEOUT", "7.5")
    async with open_test_cluster(0) as cluster:
        assert cluster.master.worker_timeout == 7.5


async def test_worker_with_a_bad_timeout_fails_to_launch_visibly(
    monkeypatch: pytest.MonkeyPatch, open_test_cluster: OpenTestCluster
) -> None:
    lines: list[str] = []
    launcher = ref.LocalLauncher(output=lines.append)
    async with open_test_cluster(0, timeout=20.0, launcher=launcher):
        monkeypatch.setenv("DISTREF_WORKER_TIMEOUT", "soon")
        with pytest.raises(ref.LaunchError, match="Unable to read host:port"):
            await ref.addprocs(1)
        assert ref.workers() == [1]
    assert any("DISTREF_WORKER_TIMEOUT" in line for line in lines)


# ------------------------------------------------- references and clusters


def _echo(value: object) -> object:
    return value


async def test_a_future_from_a_closed_cluster_is_refused_not_confused() -> None:
    """A kept Future must not read another cluster's value with its RRID."""
    with trio.fail_after(60):
        async with ref.open_cluster():
            [pid] = await ref.addprocs(1)
            old = await ref.remotecall(_echo, pid, "first cluster")
        async with ref.open_cluster():
            [pid] = await ref.addprocs(1)
            new = await ref.remotecall(_echo, pid, "second cluster")
            assert old.rrid == new.rrid
            with pytest.raises(ref.ReferenceNotFoundError, match="another cluster"):
                await ref.fetch(old)
            assert await ref.fetch(new) == "second cluster"


async def test_clusters_do_not_nest() -> None:
    with trio.fail_after(30):
        async with ref.open_cluster():
            with pytest.raises(RuntimeError, match="nested clusters"):
                async with ref.open_cluster():
                    pass
            assert ref.myid() == 1


async def test_an_unpicklable_argument_names_the_target_process() -> None:
    import threading

    with trio.fail_after(30):
        async with ref.open_cluster():
            [pid] = await ref.addprocs(1)
            with pytest.raises(TypeError, match=f"for process {pid}"):
                await ref.remotecall_fetch(_echo, pid, threading.Lock())
            assert await ref.remotecall_fetch(_echo, pid, 5) == 5


async def test_remote_channel_refuses_two_pids() -> None:
    with trio.fail_after(30):
        async with ref.open_cluster():
            with pytest.raises(TypeError, match="give a pid once"):
                ref.RemoteChannel(5, 2)


@pytest.mark.parametrize(
    ("pids", "named"),
    [
        ((2.0,), "2.0"),
        (("x",), "'x'"),
        ((b"\x02",), "b'\\x02'"),
        ((True,), "True"),
        (([2, 3.5],), "3.5"),
        ((None,), "None"),
    ],
)
async def test_rmprocs_refuses_what_is_not_a_pid_naming_it(
    pids: tuple[object, ...], named: str
) -> None:
    async with ref.open_cluster():
        with pytest.raises(TypeError, match=re.escape(f"rmprocs: pid {named}")):
            await ref.rmprocs(*pids)  # type: ignore[arg-type]  # the point
