"""``LocalManager``: the manager behind ``addprocs(n)``, workers on this host.

It starts each worker through the cluster's ``Launcher`` seam (on ``ref``
the local launcher, a child process per worker; in ``sim`` a simulated
worker), one launch per worker, so that each worker is reported, and set up,
as soon as its address is known.  Julia's ``LocalManager`` (``managers.jl``)
is the model:

* ``restrict=True`` (the default) binds workers to 127.0.0.1; otherwise to
  the master's own address (``Process.host``);
* ``kill`` asks the worker to exit, then escalates if its process is still
  running: after 15 s a warning and SIGUSR1 (the worker prints its stacks),
  after 6 more a warning and SIGQUIT, after 15 more a warning and SIGKILL;
* ``manage(..., "interrupt")`` sends SIGINT (the launcher handle's
  ``interrupt``).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from typing import Any

import trio

from spec.api import LaunchError, LaunchErrorGroup

from .._context import current_process
from .._local import LocalWorkerHandle
from .._seams import LaunchedWorker, WorkerHandle
from ._base import ClusterManager, Notify, WorkerConfig, default_connect

log = logging.getLogger("ref")

#: Seconds between the escalation steps of ``LocalManager.kill``.
KILL_WAITS = (15.0, 6.0, 15.0)


class LocalManager(ClusterManager):
    """Starts ``np`` workers on this host (default: one per CPU thread)."""

    def __init__(self, np: int | None = None, restrict: bool = True) -> None:
        if np is None:
            np = os.cpu_count() or 1
        if not isinstance(np, int) or isinstance(np, bool) or np < 0:
            raise ValueError(f"addprocs: n={np!r} must be a non-negative int")
        if not isinstance(restrict, bool):
            raise ValueError(f"addprocs: restrict={restrict!r} must be True or False")
        self.np = np
        self.restrict = restrict
        #: The escalation waits of ``kill``; tests shorten them.
        self.kill_waits = KILL_WAITS

    def __repr__(self) -> str:
        return "LocalManager()"

    async def launch(
        self,
        params: Mapping[str, Any],
        launched: list[WorkerConfig],
        notify: Notify,
    ) -> None:
        """Start ``np`` workers concurrently; report each as it is up."""
        proc = current_process()
        launcher = proc.launcher
        if launcher is None:
            raise RuntimeError("addprocs: this cluster has no launcher")
        bind_to = "127.0.0.1" if self.restrict else proc.host
        launch_params = {**params, "bind_to": bind_to}
        failures: list[LaunchError] = []

        async def one() -> None:
            started, failed = await launcher.launch(
                1,
                cookie=proc.cookie,
                timeout=proc.worker_timeout,
                params=launch_params,
                nursery=proc.nursery_or_fail(),
            )
            for worker in started:
                launched.append(_config_of(worker, launch_params))
                notify()
            for error in failed:
                if isinstance(error, LaunchError):
                    failures.append(error)
                else:
                    wrapped = LaunchError(f"launching a local worker failed: {error}")
                    wrapped.__cause__ = error
                    failures.append(wrapped)

        async with trio.open_nursery() as nursery:
            for _ in range(self.np):
                nursery.start_soon(one)
        if failures:
            raise LaunchErrorGroup(
                f"{len(failures)} of {self.np} local workers failed to start",
                failures,
            )

    async def connect(
        self, pid: int, config: WorkerConfig
    ) -> tuple[trio.abc.ReceiveStream, trio.abc.SendStream]:
        """TCP to the worker, or the launcher's own transport if it has one."""
        worker = _launched_of(config)
        if worker is not None and worker.connect is not None:
            config.connect_at = (worker.host, worker.port)
            stream = await worker.connect(pid)
        else:
            stream = await default_connect(pid, config)
        return stream, stream

    async def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """``"interrupt"`` sends SIGINT; the other operations need nothing."""
        if op != "interrupt":
            return
        handle = config.process
        interrupt = getattr(handle, "interrupt", None)
        if callable(interrupt):
            await interrupt()
        else:
            log.warning("Worker %d cannot be presently interrupted.", pid)

    async def kill(self, pid: int, config: WorkerConfig) -> None:
        """Ask the worker to exit; escalate to signals if its process stays."""
        proc = current_process()
        await proc.ask_to_exit(pid)
        handle = config.process
        if isinstance(handle, LocalWorkerHandle):
            proc.spawn(self._escalate, pid, handle)

    async def _escalate(self, pid: int, handle: LocalWorkerHandle) -> None:
        first, second, third = self.kill_waits
        process = handle.process
        with trio.move_on_after(first):
            await process.wait()
            return
        log.warning("Failed to gracefully kill worker %d", pid)
        handle.send_signal(signal.SIGUSR1)
        with trio.move_on_after(second):
            await process.wait()
            return
        log.warning("Sending SIGQUIT to worker %d", pid)
        handle.send_signal(signal.SIGQUIT)
        with trio.move_on_after(third):
            await process.wait()
            return
        log.warning("Worker %d ignored SIGQUIT, sending SIGKILL", pid)
        handle.kill()


def _config_of(worker: LaunchedWorker, params: Mapping[str, Any]) -> WorkerConfig:
    handle: WorkerHandle = worker.handle
    return WorkerConfig(
        host=worker.host,
        port=worker.port,
        bind_addr=worker.host,
        process=handle,
        ospid=handle.ospid,
        exename=params.get("exename"),
        exeflags=tuple(params.get("exeflags") or ()),
        enable_threaded_blas=params.get("enable_threaded_blas"),
        ident=worker.ident,
        connect_idents=tuple(worker.connect_idents) or None,
        userdata={"launched": worker},
    )


def _launched_of(config: WorkerConfig) -> LaunchedWorker | None:
    data = config.userdata
    if isinstance(data, dict):
        worker = data.get("launched")
        if isinstance(worker, LaunchedWorker):
            return worker
    return None
