"""Fault injection on a live cluster, for tests and experiments.

``kill(pid)`` stops a worker the way ``kill -9`` does: it gets no chance to
clean up or send anything more.  It works on real workers (SIGKILL to the OS
process) and on simulated ones (the simulator's launcher crashes the
simulated process, silence first), since both come through the launcher's
``WorkerHandle``.
"""

from __future__ import annotations

from spec.api import NoSuchProcessError, ProcessExitedException

from ._context import current_process


async def kill(pid: int) -> None:
    """Kill worker ``pid`` abruptly; only the master can do this."""
    proc = current_process()
    proc.require_master("faults.kill")
    if pid == proc.myid:
        raise ValueError(
            f"faults.kill({pid}): pid {pid} is the master, which cannot kill "
            "itself; give a worker pid (see workers())"
        )
    if proc.group.has_left(pid):
        raise ProcessExitedException(pid)
    handle = proc.handles.get(pid)
    if handle is None:
        raise NoSuchProcessError(pid, proc.group.procs())
    handle.kill()
