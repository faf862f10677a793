"""The life of a worker process, shared by real and simulated workers.

``serve_worker`` listens, announces its address, waits (at most the worker
timeout) for the master to connect and assign a pid, then serves until the
master asks it to exit or the link to the master is lost.  ``ref.worker``
runs it in an OS process over TCP; ``sim`` runs it as a task over simulated
links.  It returns the process's exit status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from ._process import Process
from ._seams import Transport
from .protocol.codec import Codec

log = logging.getLogger("ref")


async def serve_worker(
    *,
    cookie: str,
    transport: Transport,
    host: str,
    announce: Callable[[str, int], None],
    worker_timeout: float,
    codec: Codec | None = None,
    started: Callable[[Process], None] | None = None,
    before_listening: Callable[[Process, trio.Nursery], Awaitable[None]] | None = None,
) -> int:
    """Run one worker until it is told to exit or loses the master.

    ``before_listening``, if given, runs (and must return) before the
    worker listens, in the worker's nursery: a real worker installs its
    SIGINT handling there, so no master can reach it before that is done.
    """
    proc = Process(
        myid=0,
        cookie=cookie,
        transport=transport,
        worker_timeout=worker_timeout,
        codec=codec,
        host=host,
    )
    async with trio.open_nursery() as nursery:
        proc.start(nursery)
        if started is not None:
            started(proc)
        if before_listening is not None:
            await before_listening(proc, nursery)

        async def handler(stream: trio.abc.Stream) -> None:
            await proc._in_context(proc.accept, stream)

        bound, port = await transport.listen(host, handler, nursery)
        announce(bound, port)

        await wait_for_master(proc)
        await proc.stopped.wait()
        nursery.cancel_scope.cancel()
    return proc.exit_code


async def wait_for_master(proc: Process) -> None:
    """Wait (the worker timeout at most) for the master to join ``proc``.

    A worker the master has not joined in time logs why and stops with
    status 1, as upstream's do.
    """
    with trio.move_on_after(proc.worker_timeout):
        await _first_of(proc.joined_master, proc.stopped)
    if not proc.joined_master.is_set() and not proc.stopped.is_set():
        log.error(
            "Master process (id 1) could not connect within %g seconds.",
            proc.worker_timeout,
        )
        log.error("exiting.")
        proc.stop(1)


async def _first_of(*events: trio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    async with trio.open_nursery() as nursery:

        async def wait_for(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait_for, event)
