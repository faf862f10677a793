"""Workers started by a worker: the ``count > 1`` part of a ``WorkerConfig``.

A manager that reaches a host through something costly (ssh) starts one
worker there and asks for ``count`` workers in its config.  After that first
worker joined, the master has it start the other ``count - 1`` on its own
host (Julia's ``launch_additional`` and ``launch_n_additional_processes``
in ``cluster.jl``) and connects to them as ordinary workers:

* the first worker starts them as its children with the local launcher, the
  cluster cookie on their stdin, bound to its own address, and returns their
  addresses;
* the master makes a ``WorkerConfig`` for each (the first one's host and SSH
  settings, the new port) and sets it up like any launched worker;
* once the master knows a new worker's pid it tells the first worker, which
  then relays that worker's output through its own, already prefixed, so
  the master passes those lines on unchanged.

The children hang off the first worker's stdin pipes.  When the first
worker is told to exit it waits for them (they exit when the master removes
them or is gone), so removing it does not take its host's other workers
with it, and no child outlives the cluster.
"""

from __future__ import annotations

import logging
from typing import Any

from spec.api import LaunchError

from .._context import current_process
from .._local import LocalLauncher, LocalWorkerHandle
from .._process import Process
from ._base import WorkerConfig

log = logging.getLogger("ref")

#: On a worker: the children it started, by the port they listen on.
_children: dict[int, LocalWorkerHandle] = {}


async def launch_additional(
    proc: Process, first: int, config: WorkerConfig, n: int
) -> tuple[list[WorkerConfig], list[LaunchError]]:
    """Have worker ``first`` start ``n`` more: configs of those that started
    and one error for each that did not."""
    exename = config.exename
    exeflags = tuple(config.exeflags or ())
    addresses: list[tuple[str, int]]
    errors: list[str]
    addresses, errors = await proc.remotecall_fetch(
        start_children, first, (n, exename, exeflags), {}
    )
    configs = []
    for bind_addr, port in addresses:
        configs.append(
            WorkerConfig(
                host=config.host,
                port=port,
                bind_addr=bind_addr,
                tunnel=config.tunnel,
                multiplex=config.multiplex,
                sshflags=config.sshflags,
                exename=config.exename,
                exeflags=config.exeflags,
                enable_threaded_blas=config.enable_threaded_blas,
                max_parallel=config.max_parallel,
                userdata={"started_by": first},
            )
        )
    failures = [LaunchError(f"on the host of worker {first}: {e}") for e in errors]
    return configs, failures


async def start_children(
    n: int, exename: str | None, exeflags: tuple[str, ...]
) -> tuple[list[tuple[str, int]], list[str]]:
    """On a worker: start ``n`` workers beside this one; the addresses of
    those that started, and why each other one did not."""
    proc = current_process()
    launcher = LocalLauncher(host=proc.host)
    params: dict[str, Any] = {"exeflags": exeflags}
    if exename:
        params["exename"] = exename
    started, failed = await launcher.launch(
        n,
        cookie=proc.cookie,
        timeout=proc.worker_timeout,
        params=params,
        nursery=proc.nursery_or_fail(),
    )
    addresses = []
    for worker in started:
        assert isinstance(worker.handle, LocalWorkerHandle)
        _children[worker.port] = worker.handle
        addresses.append((worker.host, worker.port))
    return addresses, [str(error) for error in failed]


def relay_child(pid: int, port: int) -> None:
    """On a worker: relay the output of the child at ``port``, now ``pid``."""
    handle = _children.get(port)
    if handle is not None:
        handle.start_output_relay(pid, current_process().nursery_or_fail())


async def wait_for_children() -> None:
    """On a worker about to exit: wait until every child it started exited."""
    for handle in list(_children.values()):
        await handle.process.wait()
    _children.clear()
