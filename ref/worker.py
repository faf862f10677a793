"""Entry point of a real worker process: ``python -m ref.worker``.

Protocol with the launcher: the cookie arrives as the first line on stdin
(never on the command line, where other users could read it); the worker
binds ``--bind-to`` (loopback by default), prints exactly one line
``distref_worker:<port>#<host>`` on stdout and flushes it, then serves.  It
exits when the master asks, when its link to the master is lost, or when its
stdin reaches end of file (the launcher has gone).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from ._config import ADDRESS_PREFIX, worker_timeout
from ._context import set_current
from ._process import Process
from ._seams import TcpTransport
from ._worker import serve_worker


def _announce(host: str, port: int) -> None:
    sys.stdout.write(f"{ADDRESS_PREFIX}{port}#{host}\n")
    sys.stdout.flush()


async def _watch_stdin(proc_ready: trio.Event, procs: list[Process]) -> None:
    """Stop the worker when stdin closes: the launcher (or ssh) is gone."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    async with stream:
        while await stream.receive_some():
            pass
    await proc_ready.wait()
    procs[0].stop(1)


async def _main(cookie: str, host: str) -> int:
    ready = trio.Event()
    procs: list[Process] = []

    def started(proc: Process) -> None:
        procs.append(proc)
        set_current(proc)
        ready.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_stdin, ready, procs)
        code = await serve_worker(
            cookie=cookie,
            transport=TcpTransport(),
            host=host,
            announce=_announce,
            worker_timeout=worker_timeout(),
            started=started,
        )
        nursery.cancel_scope.cancel()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ref.worker")
    parser.add_argument("--bind-to", default="127.0.0.1", help="address to listen on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    cookie = sys.stdin.readline().rstrip("\n")
    if not cookie:
        sys.stderr.write("ref.worker: expected the cluster cookie on stdin\n")
        return 2
    return trio.run(_main, cookie, args.bind_to)


if __name__ == "__main__":
    sys.exit(main())
