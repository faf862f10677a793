"""Custom transports and the worker entry points.

* ``init_worker`` + ``process_messages`` run the runtime over any trio
  stream: here in-memory streams between tasks of the test (a whole
  cluster, worker-to-worker links included, in one process), and the pipe
  cluster of ``examples/pipe_cluster.py`` with real child processes;
* ``process_messages`` checks the cookie of incoming connections and sends
  it on outgoing ones;
* ``worker_id_from_socket`` names the process at the other end of a link;
* ``start_worker`` (``python -m ref.worker``): where the cookie comes from,
  what it does to stdin and stderr, which port it listens on, and that it
  never returns.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import ref
from conformance.scenarios._probes import tcp_sockets
from ref._context import peek_current, set_current
from ref._process import Process
from ref._seams import LaunchedWorker
from ref.protocol.wire import PROTOCOL_VERSION, pad_version
from spec.api import COOKIE_LENGTH

ROOT = Path(__file__).resolve().parents[1]
BOUND = 20.0

# ------------------------------------------------ an in-memory transport


#: Streams the test hands to in-process workers, by name, so that a
#: function run on a worker (looked up by name, never pickled) can use them.
_STREAMS: dict[str, trio.abc.Stream] = {}


def _who_is_at(name: str) -> int:
    return ref.worker_id_from_socket(_STREAMS[name])


async def _ask(pid: int) -> int:
    answer: int = await ref.remotecall_fetch(ref.myid, pid)
    return answer


class _TaskHandle:
    """A worker that is a task of the test: stopped by cancelling it."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.proc: Process | None = None
        self.exit_status: int | None = None

    @property
    def ospid(self) -> int | None:
        return None

    def start_output_relay(self, pid: int, nursery: trio.Nursery) -> None:
        """An in-process worker writes no output of its own."""

    async def stop(self, grace: float) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(grace):
                await self.done.wait()
            self.kill()
            await self.done.wait()

    def kill(self) -> None:
        self.scope.cancel()

    async def interrupt(self) -> None:
        if self.proc is not None:
            self.proc.interrupt_calls()


class MemoryTransport:
    """Workers as tasks; every connection an in-memory stream pair.

    It is a ``Launcher`` for the master (``LaunchedWorker.connect`` gives
    the master's end of a new pair) and the ``manager`` the workers pass to
    ``init_worker`` (``connect`` dials another worker the same way).
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._workers: dict[str, Process] = {}
        self.handles: list[_TaskHandle] = []

    async def launch(
        self,
        n: int,
        *,
        cookie: str,
        timeout: float,
        params: Mapping[str, Any],
        nursery: trio.Nursery,
    ) -> tuple[list[LaunchedWorker], list[BaseException]]:
        started = []
        for _ in range(n):
            name = f"memory-{len(self.handles) + 1}"
            mine, theirs = trio.testing.memory_stream_pair()
            handle = _TaskHandle()
            self.handles.append(handle)
            self._nursery.start_soon(self._worker, name, cookie, theirs, handle)

            async def connect(pid: int, stream: trio.abc.Stream = mine) -> Any:
                _STREAMS[f"master-to-{pid}"] = stream
                return stream

            started.append(
                LaunchedWorker(name, 0, handle, local=False, connect=connect)
            )
        return started, []

    async def _worker(
        self, name: str, cookie: str, stream: trio.abc.Stream, handle: _TaskHandle
    ) -> None:
        # Spawned from the master's task: become a fresh process first.
        set_current(None)
        with handle.scope:
            ref.init_worker(cookie, self, handle_sigint=False)
            handle.proc = peek_current()
            assert handle.proc is not None
            self._workers[name] = handle.proc
            _STREAMS[f"{name}-to-master"] = stream
            handle.exit_status = await ref.process_messages(stream, stream)
        handle.done.set()

    def handle_of(self, pid: int) -> _TaskHandle:
        for handle in self.handles:
            if handle.proc is not None and handle.proc.myid == pid:
                return handle
        raise LookupError(pid)

    def name_of(self, pid: int) -> str:
        for name, proc in self._workers.items():
            if proc.myid == pid:
                return name
        raise LookupError(pid)

    async def connect(
        self, pid: int, config: ref.PeerConfig
    ) -> tuple[trio.abc.ReceiveStream, trio.abc.SendStream]:
        """Dial the worker listening at ``config.connect_at``."""
        target = self._workers[config.connect_at[0]]
        mine, theirs = trio.testing.memory_stream_pair()

        async def serve() -> None:
            set_current(target)
            await ref.process_messages(theirs, theirs, incoming=True)

        self._nursery.start_soon(serve)
        return mine, mine


@asynccontextmanager
async def memory_cluster() -> AsyncIterator[MemoryTransport]:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            transport = MemoryTransport(nursery)
            async with ref.open_cluster(launcher=transport):
                yield transport
            for handle in transport.handles:
                assert handle.done.is_set(), "a memory worker outlived its cluster"


async def test_a_cluster_runs_over_in_memory_streams() -> None:
    async with memory_cluster() as transport:
        low, high = await ref.addprocs(2)
        assert await ref.remotecall_fetch(ref.myid, low) == low
        fut = await ref.remotecall(pow, high, 2, 10)
        assert await ref.fetch(fut) == 1024
        # Worker to worker, through the workers' own connect().
        assert await ref.remotecall_fetch(_ask, high, low) == low
        assert await ref.remotecall_fetch(_ask, low, high) == high

        # Each end of each link knows who is at the other end.
        assert ref.worker_id_from_socket(_STREAMS[f"master-to-{low}"]) == low
        assert ref.worker_id_from_socket(_STREAMS[f"master-to-{high}"]) == high
        name = transport.name_of(low)
        assert await ref.remotecall_fetch(_who_is_at, low, f"{name}-to-master") == 1
        # The master holds no link on the worker's end of the pair.
        assert ref.worker_id_from_socket(_STREAMS[f"{name}-to-master"]) == -1

        await ref.rmprocs(high)
        assert ref.workers() == [low]
        handle = transport.handle_of(high)
        with trio.fail_after(5):
            await handle.done.wait()
        assert handle.exit_status == 0, "a worker told to exit exits with 0"


async def _sleep_long() -> None:
    await trio.sleep(300)


async def test_interrupt_works_over_a_custom_transport() -> None:
    async with memory_cluster():
        [pid] = await ref.addprocs(1)
        fut = await ref.remotecall(_sleep_long, pid)
        await trio.sleep(0.1)
        await ref.interrupt(pid)
        with pytest.raises(ref.RemoteException) as caught:
            await ref.fetch(fut)
        assert isinstance(caught.value.exception, KeyboardInterrupt)
        assert await ref.remotecall_fetch(ref.myid, pid) == pid


# ------------------------------------------------ the cookie, both ways


async def test_an_incoming_connection_with_a_wrong_cookie_is_refused(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The worker side reads DISTREF_WORKER_TIMEOUT itself, for its wait.
    monkeypatch.setenv("DISTREF_WORKER_TIMEOUT", "2.5")
    caplog.set_level(logging.WARNING, logger="ref")
    worker_end, other = trio.testing.memory_stream_pair()
    statuses: list[int | None] = []

    async def worker() -> None:
        set_current(None)
        ref.init_worker("the right one", handle_sigint=False)
        statuses.append(await ref.process_messages(worker_end, worker_end))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await other.send_all(b"the wrong one!!!" + pad_version("test"))
        assert await other.receive_some() == b"", "a refused peer must get nothing"
        began = trio.current_time()
    assert statuses == [1]
    assert trio.current_time() - began == pytest.approx(2.5, abs=0.1)
    said = [r.getMessage() for r in caplog.records]
    assert any("Invalid connection credentials" in m for m in said), said
    assert any("could not connect within 2.5 seconds" in m for m in said), said


async def test_an_outgoing_connection_sends_the_cookie_and_version_first() -> None:
    async with memory_cluster() as transport:
        [pid] = await ref.addprocs(1)
        worker = transport.handles[0].proc
        assert worker is not None
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:

            async def dial() -> None:
                set_current(worker)
                await ref.process_messages(ours, ours, incoming=False, peer=50)

            nursery.start_soon(dial)
            data = b""
            with trio.fail_after(5):
                while len(data) <= 2 * COOKIE_LENGTH:
                    data += await theirs.receive_some()
            await theirs.aclose()
        cookie = ref.cluster_cookie().encode("ascii")
        assert data[:COOKIE_LENGTH] == cookie
        assert data[COOKIE_LENGTH : 2 * COOKIE_LENGTH] == pad_version(PROTOCOL_VERSION)
        assert await ref.remotecall_fetch(ref.myid, pid) == pid

        # This side must say whom it dialled.
        async def without_peer() -> None:
            set_current(worker)
            with pytest.raises(ValueError, match="peer="):
                await ref.process_messages(ours, ours, incoming=False)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(without_peer)


async def test_init_worker_wants_a_pristine_process() -> None:
    async with memory_cluster():
        await ref.addprocs(1)
        with pytest.raises(RuntimeError, match="init_worker"):
            ref.init_worker("cookie")
    async with ref.open_cluster():
        fut = ref.Future()
        with pytest.raises(RuntimeError, match="init_worker"):
            ref.init_worker("cookie")
        del fut
    with pytest.raises(ValueError):
        ref.init_worker("x" * (COOKIE_LENGTH + 1))


# ------------------------------------------------------- the pipe example


def _load_example() -> Any:
    path = ROOT / "examples" / "pipe_cluster.py"
    spec = importlib.util.spec_from_file_location("pipe_cluster", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _where() -> tuple[int, int]:
    return ref.myid(), os.getpid()


async def test_the_pipe_example_runs_calls_without_any_socket() -> None:
    example = _load_example()
    manager = example.PipeManager(2)
    children: list[trio.Process] = []
    with trio.fail_after(BOUND):
        async with ref.open_cluster():
            pids = await ref.addprocs(manager, topology=example.TOPOLOGY)
            assert pids == [2, 3]
            for pid in pids:
                me, ospid = await ref.remotecall_fetch(_where, pid)
                assert me == pid and ospid != os.getpid()
                # The worker has no TCP socket at all: its transport is pipes.
                found = await ref.remotecall_fetch(tcp_sockets, pid)
                assert found == ([], []), found
            master = ref._context.current_process()
            children = [master.managed[pid].config.process for pid in pids]
            # Interrupt, over the example's manage().
            fut = await ref.remotecall(_sleep_long, pids[0])
            await trio.sleep(0.3)
            await ref.interrupt(pids[0])
            with pytest.raises(ref.RemoteException) as caught:
                await ref.fetch(fut)
            assert isinstance(caught.value.exception, KeyboardInterrupt)
            await ref.rmprocs(pids[1])
            assert ref.workers() == [pids[0]]
    assert children and all(c.returncode is not None for c in children)


# ----------------------------------------------------------- start_worker


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    env["DISTREF_WORKER_TIMEOUT"] = "30"
    return env


@asynccontextmanager
async def started(
    command: list[str], stdin_text: str | None
) -> AsyncIterator[tuple[trio.Process, str, int]]:
    """Run a worker command; yield it with the host and port it announced."""
    process = await trio.lowlevel.open_process(
        command,
        stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_worker_env(),
    )
    try:
        if stdin_text is not None:
            assert process.stdin is not None
            await process.stdin.send_all(stdin_text.encode("ascii"))
        assert process.stdout is not None
        line = b""
        with trio.fail_after(BOUND):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, f"the worker ended before its address line: {line!r}"
                line += chunk
        text = line.decode().strip()
        assert text.startswith("distref_worker:"), text
        port, host = text.removeprefix("distref_worker:").split("#")
        yield process, host, int(port)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await process.wait()


async def _reply_to(host: str, port: int, cookie: bytes) -> bytes:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(cookie + pad_version("test"))
        data = b""
        with trio.move_on_after(1.0):
            while len(data) < COOKIE_LENGTH:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                data += chunk
        return data


WORKER = [sys.executable, "-m", "ref.worker"]


async def test_start_worker_takes_the_cookie_from_its_command_line() -> None:
    # The empty cookie is a cookie: sixteen spaces on the wire.
    async with started([*WORKER, "--cookie", ""], None) as (_, host, port):
        spaces = b" " * COOKIE_LENGTH
        assert await _reply_to(host, port, spaces) == pad_version(PROTOCOL_VERSION)
        assert await _reply_to(host, port, b"x" * COOKIE_LENGTH) == b""
    async with started([*WORKER, "--cookie", "given"], "ignored\n") as (_, h, p):
        assert await _reply_to(h, p, b"given".ljust(COOKIE_LENGTH)) != b""


async def test_start_worker_listens_from_9000_plus_its_pid_or_where_told() -> None:
    async with started(WORKER, "cookie\n") as (process, _host, port):
        first = 9000 + process.pid % 1000
        assert first <= port < first + 200, (port, first)
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    async with started([*WORKER, "--bind-to", f"127.0.0.1:{free}"], "c\n") as found:
        assert found[1:] == ("127.0.0.1", free)


def _fd_target(ospid: int, fd: int) -> str:
    return os.readlink(f"/proc/{ospid}/fd/{fd}")


START = "import ref, sys; ref.start_worker({}); print('returned', flush=True)"


@pytest.mark.parametrize("defaults", [True, False])
async def test_start_worker_closes_stdin_and_merges_stderr_unless_told(
    defaults: bool,
) -> None:
    arguments = "" if defaults else "close_stdin=False, stderr_to_stdout=False"
    command = [sys.executable, "-c", START.format(arguments)]
    async with started(command, "cookie\n") as (process, _host, _port):
        stdin, stdout, stderr = (_fd_target(process.pid, fd) for fd in (0, 1, 2))
        if defaults:
            assert stdin == os.devnull
            assert stderr == stdout
        else:
            assert stdin.startswith("pipe:")
            assert stderr != stdout


async def test_start_worker_never_returns() -> None:
    command = [sys.executable, "-c", START.format("")]
    async with started(command, "cookie\n") as (process, _host, _port):
        # Its launcher goes away: the worker exits, without returning.
        assert process.stdin is not None
        await process.stdin.aclose()
        with trio.fail_after(BOUND):
            assert await process.wait() == 1
        assert process.stdout is not None
        rest = await process.stdout.receive_some()
        assert b"returned" not in rest


@pytest.mark.parametrize(
    ("bind_to", "reason"),
    [
        # A .invalid name never resolves (RFC 6761), and the lookup is local.
        ("nosuchhost.invalid", "nosuchhost.invalid:"),
        # TEST-NET-1 is no address of this host: binding fails, sends nothing.
        ("192.0.2.1:9", "192.0.2.1:9: "),
    ],
)
def test_a_worker_that_cannot_listen_says_so_in_one_line(
    bind_to: str, reason: str
) -> None:
    done = subprocess.run(
        [*WORKER, "--bind-to", bind_to, "--cookie", "x"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_worker_env(),
        timeout=BOUND,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"ref.worker: cannot listen on {reason}")
    assert done.stderr.count("\n") == 1, done.stderr
