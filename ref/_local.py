"""The local launcher: worker processes on this machine, over loopback TCP.

Each worker is ``python -m ref.worker --bind-to HOST`` with the cookie on its
stdin.  The launcher reads the worker's stdout until the address line;
anything before it is echoed (with a prefix) so a failing start-up is
visible, and the launch fails with the upstream meanings:

* output ended before the address line: the launch command failed;
* 1000 lines without an address line: unexpected output;
* no address line within the worker timeout: timed out.

After start-up the worker's further output is relayed, prefixed with its
pid.  The launcher keeps stdin open: a worker whose stdin closes exits, so no
worker outlives its master even when the master is killed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

import trio

from spec.api import LaunchError

from ._config import ADDRESS_PREFIX
from ._seams import LaunchedWorker

_ADDRESS = re.compile(rf"^{re.escape(ADDRESS_PREFIX)}(\d+)#(.*)$")
MAX_STARTUP_LINES = 1000


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class _LineReader:
    """Splits a byte stream into text lines."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def readline(self) -> str | None:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line.decode("utf-8", "replace")
            try:
                data = await self._stream.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                if self._buffer:
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    return line.decode("utf-8", "replace")
                return None
            self._buffer += data


class LocalWorkerHandle:
    """A started worker process: relay its output, stop it, reap it."""

    def __init__(
        self, process: trio.Process, reader: _LineReader, output: Callable[[str], None]
    ) -> None:
        self.process = process
        self._reader = reader
        self._output = output

    @property
    def ospid(self) -> int | None:
        return self.process.pid

    def start_output_relay(self, pid: int, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._relay, pid)

    async def _relay(self, pid: int) -> None:
        while (line := await self._reader.readline()) is not None:
            self._output(f"      From worker {pid}:\t{line}\n")

    async def stop(self, grace: float) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(grace):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            if self.process.stdin is not None:
                await self.process.stdin.aclose()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


class LocalLauncher:
    """Starts workers as child processes of this one."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        dir: str | None = None,
        output: Callable[[str], None] = _write_stdout,
    ) -> None:
        self.host = host
        self.python = python or sys.executable
        self.env = dict(env or {})
        self.dir = dir
        self.output = output

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [p or os.getcwd() for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env.update(self.env)
        return env

    async def launch(
        self,
        n: int,
        *,
        cookie: str,
        timeout: float,
        params: Mapping[str, Any],
        nursery: trio.Nursery,
    ) -> tuple[list[LaunchedWorker], list[BaseException]]:
        started: list[LaunchedWorker] = []
        failures: list[BaseException] = []

        async def one() -> None:
            try:
                started.append(await self._launch_one(cookie, timeout))
            except LaunchError as exc:
                failures.append(exc)

        async with trio.open_nursery() as group:
            for _ in range(n):
                group.start_soon(one)
        return started, failures

    async def _launch_one(self, cookie: str, timeout: float) -> LaunchedWorker:
        command = [self.python, "-m", "ref.worker", "--bind-to", self.host]
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            cwd=self.dir,
            start_new_session=True,
        )
        assert process.stdin is not None and process.stdout is not None
        reader = _LineReader(process.stdout)
        handle = LocalWorkerHandle(process, reader, self.output)
        try:
            await process.stdin.send_all(f"{cookie}\n".encode("ascii"))
            host, port = await self._read_address(reader, timeout)
        except BaseException:
            await handle.stop(0)
            raise
        return LaunchedWorker(host, port, handle, local=True)

    async def _read_address(
        self, reader: _LineReader, timeout: float
    ) -> tuple[str, int]:
        try:
            with trio.fail_after(timeout):
                for _ in range(MAX_STARTUP_LINES):
                    line = await reader.readline()
                    if line is None:
                        raise LaunchError(
                            "Unable to read host:port string from worker. "
                            "Launch command exited with error?"
                        )
                    found = _ADDRESS.match(line.strip())
                    if found:
                        return found.group(2), int(found.group(1))
                    self.output(f"\tFrom worker startup:\t{line}\n")
        except trio.TooSlowError:
            raise LaunchError(
                "Timed out waiting to read host:port string from worker "
                f"(waited {timeout:g} s; raise DISTREF_WORKER_TIMEOUT if needed)."
            ) from None
        raise LaunchError(
            "Unexpected output from worker launch command. Host:port string not found."
        )
