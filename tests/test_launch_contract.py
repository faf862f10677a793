"""The local launch contract and the master's side of the handshake.

These behaviours concern bytes and process facts that no API call shows, so
the conformance suite cannot observe them on every backend; they are checked
here on ``ref`` itself:

* ``addprocs.worker-address-line``: a bare ``python -m ref.worker`` prints
  one flushed address line and listens there; the master connects to it;
* ``addprocs.cookie-sent-on-stdin``: the cookie is the first stdin line;
* ``process_messages.initiator-sends-cookie-then-version``: what the master
  writes first when it dials a worker (a socket this test holds);
* ``distref_worker_timeout.*``: the default, the parsing, the value workers
  receive, and the exit of a worker no master joined;
* ``open_cluster.close-escalates``: a worker that cannot exit is killed
  after the grace period.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from conftest import OpenTestCluster, leftover_worker

import ref
from ref import _api, _config
from ref._context import current_process
from ref._seams import LaunchedWorker
from ref.protocol.wire import PROTOCOL_VERSION, pad_version
from spec.api import COOKIE_LENGTH, VERSION_LENGTH

COOKIE = "launchcontract16"
ADDRESS_LINE = re.compile(r"^distref_worker:(\d+)#(.*)$")


# ------------------------------------------------------ a bare worker process


@asynccontextmanager
async def bare_worker(
    stdin_text: str, timeout: str | None = "30"
) -> AsyncIterator[trio.Process]:
    """``python -m ref.worker`` with ``stdin_text`` written to its stdin."""
    env = dict(os.environ)
    env.pop(_config.TIMEOUT_VARIABLE, None)
    if timeout is not None:
        env[_config.TIMEOUT_VARIABLE] = timeout
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "ref.worker", "--bind-to", "127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdin is not None
        await process.stdin.send_all(stdin_text.encode("ascii"))
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await process.wait()


async def read_available(stream: trio.abc.ReceiveStream, quiet: float) -> bytes:
    """Everything that arrives until ``quiet`` seconds pass without more."""
    data = b""
    while True:
        with trio.move_on_after(quiet):
            chunk = await stream.receive_some()
            if not chunk:
                return data
            data += chunk
            continue
        return data


async def handshake_reply(host: str, port: int, cookie: bytes) -> bytes:
    """Send ``cookie`` and a version; what comes back before a pause or close."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(cookie + pad_version("test"))
        try:
            return await read_available(stream, 0.3)
        except trio.BrokenResourceError:
            return b""


async def test_worker_prints_one_flushed_address_line_naming_where_it_listens() -> None:
    async with bare_worker(f"{COOKIE}\n") as worker:
        assert worker.stdout is not None
        with trio.fail_after(20):
            # The process keeps running, so the line must have been flushed.
            out = await read_available(worker.stdout, 1.0)
        assert worker.returncode is None
        lines = out.decode().splitlines()
        assert len(lines) == 1, f"expected exactly one line on stdout, got {lines}"
        found = ADDRESS_LINE.match(lines[0])
        assert found, f"not an address line: {lines[0]!r}"
        port, host = int(found.group(1)), found.group(2)
        assert host == "127.0.0.1"

        reply = await handshake_reply(host, port, COOKIE.encode())
        assert reply == pad_version(PROTOCOL_VERSION)


async def test_the_master_connects_to_the_announced_address(
    open_test_cluster: OpenTestCluster,
) -> None:
    announced: list[tuple[str, int]] = []

    class Recording(ref.LocalLauncher):
        async def launch(
            self,
            n: int,
            *,
            cookie: str,
            timeout: float,
            params: Mapping[str, Any],
            nursery: trio.Nursery,
        ) -> tuple[list[LaunchedWorker], list[BaseException]]:
            started, failed = await super().launch(
                n, cookie=cookie, timeout=timeout, params=params, nursery=nursery
            )
            announced.extend((w.host, w.port) for w in started)
            return started, failed

    async with open_test_cluster(1, launcher=Recording()):
        [pid] = ref.workers()
        link = current_process().links[pid]
        assert isinstance(link.stream, trio.SocketStream)
        host, port = link.stream.socket.getpeername()[:2]
        assert announced == [(host, port)]


async def test_the_cookie_is_not_on_a_local_workers_command_line(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(1, cookie=COOKIE):
        ospid = await ref.remotecall_fetch(os.getpid, 2)
        with open(f"/proc/{ospid}/cmdline", "rb") as f:
            command_line = f.read()
    assert b"ref.worker" in command_line
    assert COOKIE.encode() not in command_line


async def test_the_cookie_is_the_first_line_of_a_workers_stdin() -> None:
    async with bare_worker(f"{COOKIE}\nnot the cookie\n") as worker:
        assert worker.stdout is not None
        with trio.fail_after(20):
            line = (await read_available(worker.stdout, 1.0)).decode().strip()
        found = ADDRESS_LINE.match(line)
        assert found, line
        port = int(found.group(1))
        with trio.fail_after(10):
            good = await handshake_reply("127.0.0.1", port, COOKIE.encode())
            bad = await handshake_reply("127.0.0.1", port, b"not the cookie  ")
        assert good == pad_version(PROTOCOL_VERSION)
        assert bad == b""


# ----------------------------------------------------- the master as initiator


class _FakeHandle:
    """Stands for a worker process that is really a socket of this test."""

    ospid = None

    def start_output_relay(self, pid: int, nursery: trio.Nursery) -> None:
        pass

    async def stop(self, grace: float) -> None:
        pass

    def kill(self) -> None:
        pass


class _SocketLauncher:
    """Reports a listening socket of the test as a started worker."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def launch(
        self,
        n: int,
        *,
        cookie: str,
        timeout: float,
        params: Mapping[str, Any],
        nursery: trio.Nursery,
    ) -> tuple[list[LaunchedWorker], list[BaseException]]:
        return [LaunchedWorker("127.0.0.1", self.port, _FakeHandle())], []


async def test_the_dialling_side_sends_the_cookie_then_a_padded_version() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    received: list[bytes] = []

    async def play_worker(stream: trio.SocketStream) -> None:
        data = b""
        with trio.move_on_after(5):
            while len(data) < COOKIE_LENGTH + VERSION_LENGTH:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                data += chunk
        received.append(data)
        await stream.aclose()  # never answer: the launch must fail

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, play_worker, listeners)
            async with ref.open_cluster(
                cookie=COOKIE, launcher=_SocketLauncher(port), timeout=5
            ):
                with pytest.raises(ref.LaunchError):
                    await ref.addprocs(1)
            nursery.cancel_scope.cancel()

    [data] = received
    assert data[:COOKIE_LENGTH] == COOKIE.encode()
    version = data[COOKIE_LENGTH : COOKIE_LENGTH + VERSION_LENGTH]
    assert version == PROTOCOL_VERSION.encode().ljust(VERSION_LENGTH, b" ")
    assert pad_version("x" * 40) == b"x" * VERSION_LENGTH


# ------------------------------------------------------------- worker timeout


def test_worker_timeout_defaults_to_sixty_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(_config.TIMEOUT_VARIABLE, raising=False)
    assert _config.worker_timeout() == 60.0
    monkeypatch.setenv(_config.TIMEOUT_VARIABLE, "")
    assert _config.worker_timeout() == 60.0


@pytest.mark.parametrize(
    ("text", "seconds"), [("0.5", 0.5), ("2.25", 2.25), ("90", 90.0), (" 1e1 ", 10.0)]
)
def test_worker_timeout_is_read_as_float_seconds(
    monkeypatch: pytest.MonkeyPatch, text: str, seconds: float
) -> None:
    monkeypatch.setenv(_config.TIMEOUT_VARIABLE, text)
    assert _config.worker_timeout() == seconds


async def test_workers_take_the_masters_timeout(
    monkeypatch: pytest.MonkeyPatch, open_test_cluster: OpenTestCluster
) -> None:
    monkeypatch.delenv(_config.TIMEOUT_VARIABLE, raising=False)
    async with open_test_cluster(1):
        assert ref.worker_timeout() == 60.0
        assert await ref.remotecall_fetch(ref.worker_timeout, 2) == 60.0

    monkeypatch.setenv(_config.TIMEOUT_VARIABLE, "7.5")
    async with open_test_cluster(1):
        assert ref.worker_timeout() == 7.5
        assert await ref.remotecall_fetch(ref.worker_timeout, 2) == 7.5


async def test_a_worker_no_master_joins_says_so_and_exits_with_status_one() -> None:
    async with bare_worker(f"{COOKIE}\n", timeout="0.5") as worker:
        assert worker.stderr is not None
        with trio.fail_after(10):
            started = time.monotonic()
            assert await worker.wait() == 1
        assert time.monotonic() - started < 5
        err = (await read_available(worker.stderr, 1.0)).decode()
    said = err.find("Master process (id 1) could not connect within 0.5 seconds.")
    assert said >= 0, err
    assert err.find("exiting.", said) > said, err


# ------------------------------------------------------------------- closing


def _hold(seconds: float) -> None:
    time.sleep(seconds)


async def test_close_kills_workers_that_do_not_exit_within_the_grace() -> None:
    with trio.fail_after(60):
        async with ref.open_cluster():
            pids = await ref.addprocs(3)
            ospids = [await ref.remotecall_fetch(os.getpid, p) for p in pids]
            for stuck in pids[:2]:
                await ref.remote_do(_hold, stuck, 300)
            closing = time.monotonic()
        took = time.monotonic() - closing
    # One grace period for all of them, then they are killed.
    assert _api.CLOSE_GRACE - 0.5 <= took < _api.CLOSE_GRACE + 2.5, took
    left = {p: why for p in ospids if (why := leftover_worker(p))}
    assert not left, f"workers outlived the cluster: {left}"
