"""The local launcher: worker processes on this machine, over loopback TCP.

Each worker is ``<exename> <exeflags> -m ref.worker --bind-to HOST`` with the
cookie on its stdin.  The launcher reads the worker's stdout until the
address line; anything before it is echoed (with a prefix) so a failing
start-up is visible, and the launch fails with the upstream meanings:

* output ended before the address line: the launch command failed;
* 1000 lines without an address line: unexpected output;
* no address line within the worker timeout: timed out.

After start-up the worker's further output is relayed, prefixed with its
pid.  The launcher keeps stdin open: a worker whose stdin closes exits, so no
worker outlives its master even when the master is killed.

The ``addprocs`` keywords that shape a local worker arrive in ``params``
(Julia's ``LocalManager`` launch): ``bind_to`` (the address to listen on,
from ``restrict``), ``dir`` (its working directory), ``exename`` and
``exeflags`` (the interpreter and its options), ``env`` (added to the
master's environment, winning over what the launcher sets) and
``enable_threaded_blas`` (unless true, the BLAS and OpenMP thread variables
are set to 1).  The constructor's values are used when a key is absent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

import trio

from spec.api import LaunchError

from ._seams import LaunchedWorker, Program
from ._startup import (
    MAX_STARTUP_LINES,
    LineReader,
    prefixed_line,
    read_address,
    write_stdout,
)

__all__ = [
    "MAX_STARTUP_LINES",
    "THREAD_VARIABLES",
    "LocalLauncher",
    "LocalProgram",
    "LocalWorkerHandle",
    "worker_environment",
]

#: Set to "1" in a worker's environment unless threaded BLAS was asked for.
THREAD_VARIABLES = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# Kept for code written against the names before they moved to _startup.
_LineReader = LineReader
_write_stdout = write_stdout


def worker_environment(
    env: Mapping[str, str], *, threaded_blas: bool, base: Mapping[str, str]
) -> dict[str, str]:
    """A local worker's environment: ``base``, the master's module path,
    one thread per BLAS/OpenMP pool unless ``threaded_blas``, then ``env``
    (which wins over everything before it)."""
    result = dict(base)
    paths = [p or os.getcwd() for p in sys.path]
    result["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if not threaded_blas:
        for name in THREAD_VARIABLES:
            result[name] = "1"
    result.update(env)
    return result


class LocalWorkerHandle:
    """A started worker process: relay its output, stop it, reap it."""

    def __init__(
        self, process: trio.Process, reader: LineReader, output: Callable[[str], None]
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
            self._output(prefixed_line(pid, line))

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

    async def interrupt(self) -> None:
        """Send SIGINT: the worker interrupts the calls it is running."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)

    def suspend(self) -> None:
        """SIGSTOP: the worker process stops where it stands."""
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a stopped worker process carries on."""
        self.send_signal(signal.SIGCONT)

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the worker process if it is still running."""
        if self.process.returncode is None:
            self.process.send_signal(signum)


#: The module each ``Program`` kind runs as (``python -m <module>``).
PROGRAM_MODULES = {"worker": "ref.worker", "elastic": "ref.elastic"}


class LocalProgram:
    """A ``Program`` running as a child process: its merged output, its exit."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self.process = process
        self._reader = LineReader(process.stdout)

    @property
    def ospid(self) -> int | None:
        return self.process.pid

    async def readline(self) -> str | None:
        return await self._reader.readline()

    async def wait(self) -> int:
        code = await self.process.wait()
        # Its stdin pipe is ours to close, as a launcher would on reaping.
        if self.process.stdin is not None:
            await self.process.stdin.aclose()
        return code

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
        output: Callable[[str], None] = write_stdout,
    ) -> None:
        self.host = host
        self.python = python or sys.executable
        self.env = dict(env or {})
        self.dir = dir
        self.output = output

    def command(self, params: Mapping[str, Any]) -> list[str]:
        """The command line of one worker under ``params``."""
        exename = params.get("exename") or self.python
        flags = list(params.get("exeflags") or ())
        host = params.get("bind_to") or self.host
        return [exename, *flags, "-m", "ref.worker", "--bind-to", host]

    def _environment(self, params: Mapping[str, Any]) -> dict[str, str]:
        env = {**self.env, **dict(params.get("env") or {})}
        threaded = bool(params.get("enable_threaded_blas", False))
        return worker_environment(env, threaded_blas=threaded, base=os.environ)

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
                started.append(await self._launch_one(cookie, timeout, params))
            except LaunchError as exc:
                failures.append(exc)

        async with trio.open_nursery() as group:
            for _ in range(n):
                group.start_soon(one)
        return started, failures

    async def run_program(
        self, program: Program, nursery: trio.Nursery
    ) -> LocalProgram:
        """Start ``program`` as ``<python> -m <module> <args>``, stdin a pipe.

        Its stdout and stderr are merged for ``readline``; its stdin stays
        open (a worker takes the end of its stdin for its launcher's end)
        until it has exited.
        """
        command = [self.python, "-m", PROGRAM_MODULES[program.kind], *program.args]
        env = worker_environment(
            {**self.env, **program.environ}, threaded_blas=False, base=os.environ
        )
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.dir,
            start_new_session=True,
        )
        assert process.stdin is not None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await process.stdin.send_all(program.stdin.encode())
        return LocalProgram(process)

    async def _launch_one(
        self, cookie: str, timeout: float, params: Mapping[str, Any]
    ) -> LaunchedWorker:
        command = self.command(params)
        try:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self._environment(params),
                cwd=params.get("dir") or self.dir,
                start_new_session=True,
            )
        except OSError as exc:
            raise LaunchError(
                f"could not start worker command {command[0]!r}: {exc}"
            ) from exc
        assert process.stdin is not None and process.stdout is not None
        reader = LineReader(process.stdout)
        handle = LocalWorkerHandle(process, reader, self.output)
        try:
            # If it exited already, reading its output says how.
            with contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError
            ):
                await process.stdin.send_all(f"{cookie}\n".encode("ascii"))
            host, port = await read_address(reader, timeout, self.output)
        except BaseException:
            await handle.stop(0)
            raise
        return LaunchedWorker(host, port, handle, local=True, params=params)
