"""Fault injection on a live cluster, for tests and experiments.

``kill(pid)`` stops a worker the way ``kill -9`` does: it gets no chance to
clean up or send anything more.  ``suspend(pid)`` and ``resume(pid)`` stop
and continue it the way SIGSTOP and SIGCONT do: a suspended worker reads,
runs and sends nothing, yet keeps its connections, so to the rest of the
cluster it is simply slow (a long garbage collection, a swapped-out host).
All three work on real workers (signals to the OS process) and on simulated
ones (the simulator crashes or hangs the simulated process), since both come
through the launcher's ``WorkerHandle``.
"""

from __future__ import annotations

import trio

from spec.api import NoSuchProcessError, ProcessExitedException

from ._context import current_process
from ._seams import SuspendableHandle, WorkerHandle


def _handle(what: str, pid: int) -> WorkerHandle:
    proc = current_process()
    proc.require_master(what)
    if pid == proc.myid:
        raise ValueError(
            f"{what}({pid}): pid {pid} is the master, which cannot do this "
            "to itself; give a worker pid (see workers())"
        )
    if proc.group.has_left(pid):
        raise ProcessExitedException(pid)
    handle = proc.handles.get(pid)
    if handle is None:
        raise NoSuchProcessError(pid, known=proc.group.procs())
    return handle


async def kill(pid: int) -> None:
    """Kill worker ``pid`` abruptly; only the master can do this."""
    _handle("faults.kill", pid).kill()


async def suspend(pid: int) -> None:
    """Stop worker ``pid`` where it stands until ``resume(pid)``; master only.

    ``NotImplementedError`` if the worker's launcher or manager gives no
    way to stop it.
    """
    handle = _handle("faults.suspend", pid)
    if not isinstance(handle, SuspendableHandle):
        raise NotImplementedError(
            f"faults.suspend: worker {pid}'s handle {handle!r} cannot stop it"
        )
    handle.suspend()
    await trio.lowlevel.checkpoint()


async def resume(pid: int) -> None:
    """Let a suspended worker ``pid`` run again; master only.

    A worker that is not suspended, or has left already, is left alone.
    """
    proc = current_process()
    proc.require_master("faults.resume")
    handle = proc.handles.get(pid)
    if handle is None and not proc.group.has_left(pid):
        raise NoSuchProcessError(pid, known=proc.group.procs())
    if isinstance(handle, SuspendableHandle):
        handle.resume()
    await trio.lowlevel.checkpoint()
