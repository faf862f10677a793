"""A cluster whose workers talk to the master over pipes instead of TCP.

This is the custom-transport example of docs/topologies.md.  ``PipeManager``
is a cluster manager that starts each worker as a child process and uses
the child's stdin and stdout as the worker's one connection: the master
writes messages into the child's stdin and reads the child's stdout.
Nothing listens on a port and no socket is opened.

The worker side is this same file run with ``--worker``: it reads the
cookie from the first line of stdin, calls ``ref.init_worker(cookie)``,
and serves the rest of stdin/stdout with ``ref.process_messages``.  Its
stdout then carries protocol bytes only, so it points file descriptor 1 at
stderr first: a ``print`` in a remote call ends up on the master's stderr
instead of corrupting the stream.

Pipes join two processes only, so workers cannot reach each other: use the
``master_worker`` topology.  Run it::

    python examples/pipe_cluster.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

import trio

import ref
from ref.managers import ClusterManager, WorkerConfig

#: What ``addprocs`` needs with this manager.
TOPOLOGY = "master_worker"


class PipeManager(ClusterManager):
    """Starts ``count`` workers whose transport is their stdin and stdout."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __repr__(self) -> str:
        return f"PipeManager({self.count})"

    async def launch(
        self,
        params: Mapping[str, Any],
        launched: list[WorkerConfig],
        notify: Callable[[], None],
    ) -> None:
        """Start the children, give each the cookie, report each one."""
        cookie = ref.cluster_cookie()
        # The workers import what the master can: functions travel by name.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        for _ in range(self.count):
            child = await trio.lowlevel.open_process(
                [sys.executable, os.path.abspath(__file__), "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=params.get("dir"),
                env=env,
                # Ctrl-C at the terminal is for the master; the workers get
                # SIGINT only from interrupt().
                start_new_session=True,
            )
            assert child.stdin is not None
            await child.stdin.send_all(f"{cookie}\n".encode("ascii"))
            launched.append(WorkerConfig(process=child, ospid=child.pid))
            notify()

    async def connect(
        self, pid: int, config: WorkerConfig
    ) -> tuple[trio.abc.ReceiveStream, trio.abc.SendStream]:
        """The master's connection to worker ``pid``: the child's pipes."""
        child = config.process
        assert isinstance(child, trio.Process)
        assert child.stdout is not None and child.stdin is not None
        return child.stdout, child.stdin

    async def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """``interrupt`` sends SIGINT, which the worker turns into interrupts."""
        child = config.process
        running = isinstance(child, trio.Process) and child.returncode is None
        if op == "interrupt" and running:
            child.send_signal(signal.SIGINT)


# ------------------------------------------------------------- worker side


def _read_cookie_line(fd: int) -> str:
    """The first line of ``fd``, read a byte at a time so no byte after it
    (the start of the message stream) is consumed."""
    raw = bytearray()
    while (byte := os.read(fd, 1)) not in (b"", b"\n"):
        raw += byte
    return raw.decode("ascii")


def worker_main() -> int:
    """Serve as a pipe worker until the master says exit or goes away."""
    cookie = _read_cookie_line(0)
    reading = os.dup(0)
    writing = os.dup(1)
    os.dup2(2, 1)  # print() now goes to stderr, not into the stream
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)

    async def serve() -> int | None:
        ref.init_worker(cookie)
        read = trio.lowlevel.FdStream(reading)
        write = trio.lowlevel.FdStream(writing)
        return await ref.process_messages(read, write, incoming=True)

    return trio.run(serve) or 0


# ------------------------------------------------------------- master side


def _where() -> tuple[int, int]:
    return ref.myid(), os.getpid()


async def main() -> None:
    async with ref.open_cluster():
        pids = await ref.addprocs(PipeManager(2), topology=TOPOLOGY)
        for pid in pids:
            me, ospid = await ref.remotecall_fetch(_where, pid)
            print(f"worker {me} (OS pid {ospid}) answered over its pipes")
        fut = await ref.remotecall(sum, pids[0], range(10))
        print("sum(range(10)) =", await ref.fetch(fut))


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        sys.exit(worker_main())
    trio.run(main)
