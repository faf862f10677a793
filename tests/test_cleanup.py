"""No worker process outlives its cluster, however the cluster ends.

The worker OS pids are collected during each test and checked afterwards
through ``/proc``.  The last tests drive a bare ``python -m ref.worker`` by
hand, playing the master with the sans-I/O core, to show that a worker
watches both its stdin and its link to the master.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from conftest import leftover_worker, wait_until_gone

import ref
from ref.protocol.codec import CloudpickleCodec
from ref.protocol.messages import Header, JoinCompleteMsg, JoinPGRPMsg
from ref.protocol.wire import NEED_DATA, Received, Role, WireConnection

COOKIE = "cleanupcookie123"


async def worker_ospids() -> list[int]:
    """The OS pid of every current worker, asked of the workers themselves."""
    return [await ref.remotecall_fetch(os.getpid, pid) for pid in ref.workers()]


def assert_all_gone(ospids: list[int]) -> None:
    assert ospids
    left = {p: why for p in ospids if (why := leftover_worker(p))}
    assert not left, f"workers left behind: {left}"


async def test_normal_exit_leaves_no_worker() -> None:
    with trio.fail_after(30):
        async with ref.open_cluster():
            await ref.addprocs(2)
            ospids = await worker_ospids()
            assert all(leftover_worker(p) for p in ospids)
    assert_all_gone(ospids)


async def test_exit_by_exception_leaves_no_worker() -> None:
    """The block's own exception comes out unwrapped, after the cleanup."""
    ospids: list[int] = []
    with trio.fail_after(30), pytest.raises(RuntimeError, match="the block failed"):
        async with ref.open_cluster():
            await ref.addprocs(2)
            ospids += await worker_ospids()
            raise RuntimeError("the block failed")
    assert_all_gone(ospids)


async def test_cancelled_block_with_a_pending_call_leaves_no_worker() -> None:
    ospids: list[int] = []
    with trio.fail_after(30):
        with trio.CancelScope() as scope:
            async with ref.open_cluster():
                await ref.addprocs(2)
                ospids += await worker_ospids()
                scope.deadline = trio.current_time() + 0.3
                await ref.remotecall_fetch(trio.sleep, 2, 60)
    assert scope.cancelled_caught
    assert_all_gone(ospids)


MASTER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import trio
    import ref

    def spin():
        while True:
            pass

    async def main(out, busy):
        async with ref.open_cluster():
            pids = await ref.addprocs(2)
            ospids = [await ref.remotecall_fetch(os.getpid, p) for p in pids]
            if busy == "busy":
                # Calls that hold each worker's loop for good.
                for p in pids:
                    await ref.remote_do(spin, p)
                await trio.sleep(0.5)
            with open(out + ".tmp", "w") as f:
                json.dump(ospids, f)
            os.replace(out + ".tmp", out)
            await trio.sleep_forever()

    trio.run(main, sys.argv[1], sys.argv[2])
    """
)


@pytest.mark.parametrize("workers", ["idle", "busy"])
async def test_workers_exit_when_their_master_is_killed(
    tmp_path: Path, workers: str
) -> None:
    """Busy workers too: their calls hold the trio loop, so a thread watches
    the launcher's pipe and ends a worker that cannot stop by itself."""
    script = tmp_path / "master.py"
    script.write_text(MASTER_SCRIPT)
    out = tmp_path / "ospids.json"
    errors = tmp_path / "master.err"
    with errors.open("wb") as stderr:
        master = await trio.lowlevel.open_process(
            [sys.executable, str(script), str(out), workers],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=tmp_path,
        )
    ospids: list[int] = []
    try:
        with trio.fail_after(30):
            while not out.exists():
                assert master.poll() is None, errors.read_text()
                await trio.sleep(0.01)
        ospids = json.loads(out.read_text())
        assert len(ospids) == 2
        assert all(leftover_worker(p) for p in ospids)
        master.kill()
        with trio.fail_after(5):
            await master.wait()
        left = await wait_until_gone(ospids, bound=20)
        assert not left, f"workers outlived their killed master: {left}"
    finally:
        if master.returncode is None:
            master.kill()
            with trio.move_on_after(5):
                await master.wait()
        for pid in ospids:
            if leftover_worker(pid):
                os.kill(pid, 9)


# ----------------------------------------------- a bare worker, by hand


class BareWorker:
    """A ``python -m ref.worker`` started by the test, stdin kept open."""

    def __init__(self, process: trio.Process, host: str, port: int) -> None:
        self.process = process
        self.host = host
        self.port = port

    async def stderr_text(self) -> str:
        assert self.process.stderr is not None
        chunks = []
        with trio.move_on_after(5):
            while chunk := await self.process.stderr.receive_some():
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            break
        data += chunk
    return data


@asynccontextmanager
async def bare_worker(timeout: str = "30") -> AsyncIterator[BareWorker]:
    env = dict(os.environ, DISTREF_WORKER_TIMEOUT=timeout)
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "ref.worker", "--bind-to", "127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send_all(f"{COOKIE}\n".encode("ascii"))
        with trio.fail_after(20):
            line = (await read_line(process.stdout)).decode().strip()
        prefix, _, address = line.partition(":")
        assert prefix == "distref_worker", line
        port, _, host = address.partition("#")
        yield BareWorker(process, host, int(port))
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await process.wait()


async def join_as_master(worker: BareWorker) -> trio.abc.Stream:
    """Connect, send JoinPGRP for pid 2 and wait for JoinComplete."""
    stream = await trio.open_tcp_stream(worker.host, worker.port)
    wire = WireConnection(Role.INITIATOR, COOKIE.encode(), CloudpickleCodec())
    await stream.send_all(wire.hello() + wire.send(Header(), JoinPGRPMsg(2, ())))
    with trio.fail_after(10):
        while True:
            event = wire.next_event()
            if event is NEED_DATA:
                wire.receive_data(await stream.receive_some())
            elif isinstance(event, Received):
                assert isinstance(event.message, JoinCompleteMsg)
                assert event.message.ospid == worker.process.pid
                return stream


async def test_worker_exits_when_the_master_link_closes() -> None:
    async with bare_worker() as worker:
        stream = await join_as_master(worker)
        await stream.aclose()
        with trio.fail_after(10):
            assert await worker.process.wait() == 1


async def test_joined_worker_exits_when_its_stdin_closes() -> None:
    async with bare_worker() as worker:
        stream = await join_as_master(worker)
        async with stream:
            assert worker.process.stdin is not None
            await worker.process.stdin.aclose()
            with trio.fail_after(10):
                assert await worker.process.wait() == 1


async def test_unjoined_worker_exits_when_its_stdin_closes() -> None:
    """The launcher vanished before the master connected: do not linger."""
    async with bare_worker(timeout="60") as worker:
        assert worker.process.stdin is not None
        await worker.process.stdin.aclose()
        with trio.fail_after(10):
            assert await worker.process.wait() == 1


async def test_worker_exits_when_no_master_connects_in_time() -> None:
    async with bare_worker(timeout="0.5") as worker:
        with trio.fail_after(10):
            assert await worker.process.wait() == 1
        assert "could not connect within 0.5 seconds" in await worker.stderr_text()
