"""``interrupt``: Ctrl-C for the calls running on workers.

The master asks the cluster manager of each targeted worker to interrupt
it, concurrently: the worker's handle (``WorkerHandle.interrupt``) is a
``ManagedHandle`` for every worker, since each ``addprocs`` form goes
through a manager, and it calls ``manage(pid, config, "interrupt")``, as
Julia does.  ``LocalManager`` then has the launcher's handle send SIGINT
(the simulator's handle interrupts the simulated process directly);
``SSHManager`` runs ``kill -2 <ospid>`` on the worker's host over ssh.

The worker turns the signal into the cancellation of the calls it is
running for callers (``Process.interrupt_calls``): each one fails with a
``RemoteException`` wrapping ``KeyboardInterrupt``, the worker keeps
serving, and a worker that runs no call is unaffected.  This is Julia's
classic rule, which its newer per-request cancellation also satisfies.

A call that awaits is interrupted at its next checkpoint: a coroutine
function waiting on I/O, a sleep or a lock stops at once.  A plain function
computing without awaiting holds the worker's trio loop, so a real worker's
SIGINT handler raises ``KeyboardInterrupt`` inside it instead, as Python
itself would (``relay_interrupts``); in the simulator such a function takes
no virtual time, so there is nothing to interrupt.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from spec.api import NoSuchProcessError, NotMasterError

from ._context import current_process
from ._seams import WorkerHandle


def flatten_pids(call: str, pids: Iterable[object]) -> list[int]:
    """Pids given one by one, as iterables of pids, or both; checked."""
    flat: list[int] = []
    for item in pids:
        if isinstance(item, int) and not isinstance(item, bool):
            flat.append(item)
            continue
        # A str is iterable, and a float or bool would pass for a number:
        # none of them names processes.
        if isinstance(item, (str, bytes, bytearray)) or not isinstance(item, Iterable):
            raise TypeError(
                f"{call}: pid {item!r} is not an int; pass pids as ints or "
                "iterables of ints"
            )
        items = list(item)
        for pid in items:
            if not _is_pid(pid):
                raise TypeError(
                    f"{call}: pid {pid!r} in {item!r} is not an int; pass pids "
                    "as ints or iterables of ints"
                )
        flat.extend(items)
    return flat


def _is_pid(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def interrupt(*pids: int | Iterable[int]) -> None:
    """Interrupt the calls running on ``pids`` (default: every worker).

    Pids may be given one by one, as collections, or both.  Master only
    (``NotMasterError`` elsewhere).  A pid that is not a current worker
    raises ``NoSuchProcessError`` (a ``KeyError``) naming it, before any
    worker is interrupted.  Returns once
    every interrupt is sent; the calls fail shortly afterwards.
    """
    proc = current_process()
    if not proc.group.is_master:
        raise NotMasterError(
            f"interrupt was called on process {proc.myid}: only process 1 "
            "can interrupt workers"
        )
    if pids:
        targets = list(dict.fromkeys(flatten_pids("interrupt", pids)))
    else:
        targets = [p for p in proc.group.workers() if p != 1]

    handles: list[WorkerHandle] = []
    for pid in targets:
        handle = proc.handles.get(pid) if pid != 1 else None
        if handle is None or proc.group.has_left(pid):
            raise NoSuchProcessError(
                pid,
                f"interrupt: pid={pid!r} is not a worker; the workers are "
                f"{[p for p in proc.group.workers() if p != 1]}",
            )
        handles.append(handle)

    async with trio.open_nursery() as nursery:
        for handle in handles:
            nursery.start_soon(handle.interrupt)
