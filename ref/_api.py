"""The public, module-level API of distref: Julia's exported functions.

Every function here acts for the *current* process (see ``_context``): on
the master inside ``open_cluster()``, on a worker inside a call it runs.
Calls that may talk to another process are ``async``; queries of the local
process table are plain functions.
"""

from __future__ import annotations

import inspect
import logging
import math
import secrets
import string
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from spec.api import (
    RRID,
    ReferenceNotFoundError,
    RemoteRef,
    RmprocsTimeoutError,
    WorkerPoolAPI,
)

from . import _pools
from ._channel import Channel
from ._config import worker_timeout as configured_worker_timeout
from ._context import current_process, peek_current, reset_current, set_current
from ._interrupt import flatten_pids
from ._local import LocalLauncher
from ._process import Process
from ._refs import Future, RemoteChannel
from ._seams import Launcher, TcpTransport, Transport
from ._topology import settle_topology
from .managers import LocalManager, SSHManager, default_addprocs_params
from .managers._base import ManagerLike, launch_and_setup, manager_params
from .protocol.codec import Codec
from .protocol.group import PeerState

log = logging.getLogger("ref")

#: Keywords every ``addprocs`` form accepts (``default_addprocs_params``).
ADDPROCS_KEYWORDS: frozenset[str] = frozenset(default_addprocs_params())

#: How long closing a cluster waits for workers to exit before killing them.
CLOSE_GRACE = 5.0


def random_cookie() -> str:
    """A fresh 16-character alphanumeric cluster cookie."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(16))


@dataclass
class Cluster:
    """What ``open_cluster`` yields: the master process and its launcher."""

    master: Process
    launcher: Launcher


@asynccontextmanager
async def open_cluster(
    *,
    launcher: Launcher | None = None,
    transport: Transport | None = None,
    cookie: str | None = None,
    codec: Codec | None = None,
    timeout: float | None = None,
) -> AsyncIterator[Cluster]:
    """Become the master (pid 1) of a new cluster for the block's duration.

    On exit, normal or by an exception, every worker is asked to exit, given
    a few seconds, then killed; no worker process outlives the block.
    """
    outer = peek_current()
    if outer is not None:
        raise RuntimeError(
            "open_cluster: this task is already inside a cluster (process "
            f"{outer.myid}); nested clusters are not supported, "
            "use the one that is open"
        )
    master = Process(
        myid=1,
        cookie=cookie or random_cookie(),
        transport=transport or TcpTransport(),
        worker_timeout=configured_worker_timeout() if timeout is None else timeout,
        codec=codec,
    )
    cluster = Cluster(master, launcher or LocalLauncher())
    master.launcher = cluster.launcher
    token = set_current(master)
    try:
        async with trio.open_nursery() as nursery:
            master.start(nursery)
            try:
                yield cluster
            finally:
                await _shutdown(master)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The block's own error arrives wrapped by the nursery; a user of
        # the context manager should see it as raised.
        if len(group.exceptions) == 1:
            error = group.exceptions[0]
            # "from" keeps the error's own cause (a RemoteException's original).
            raise error from error.__cause__
        raise
    finally:
        reset_current(token)


async def _shutdown(master: Process) -> None:
    """Stop every worker: ask, wait a little, then kill and reap.

    The grace period is one for all workers: those still running when it
    ends are killed together.
    """
    with trio.CancelScope(shield=True):
        deadline = trio.current_time() + CLOSE_GRACE
        pids = [p for p in master.group.procs() if p != 1]
        with trio.move_on_at(deadline):
            await master.remove_workers(pids)
            for pid in pids:
                await master.departed(pid).wait()
        for link in list(master.links.values()):
            await link.aclose()
        async with trio.open_nursery() as nursery:
            for handle in master.all_handles:
                left = max(0.0, deadline - trio.current_time())
                nursery.start_soon(handle.stop, left)
        master.stop(0)


# ------------------------------------------------------------------ queries


def myid() -> int:
    """The pid of the calling process (1 on the master)."""
    return current_process().myid


def nprocs() -> int:
    """How many processes the caller can see, itself included."""
    return current_process().group.nprocs()


def nworkers(pool: Any = None) -> int:
    """How many workers; 1 when there are none (the master works then).

    Given a pool owned by the caller: its live member count (1 for an
    empty default pool).
    """
    if pool is not None:
        return len(_pools.pool_workers(pool))
    return current_process().group.nworkers()


def procs(pid: int | None = None) -> list[int]:
    """All pids; or, given ``pid``, the pids on the same host as ``pid``."""
    proc = current_process()
    if pid is None:
        return proc.group.procs()
    return _same_host(proc, pid)


def _same_host(proc: Process, pid: int) -> list[int]:
    alive = set(proc.group.procs())
    if pid == 1 or pid in proc.local_pids:
        return sorted({1} | (proc.local_pids & alive))
    # Every worker bound where pid is, the asker included when it is one
    # (the master never is: it is not a worker).
    host = _host_of(proc, pid)
    return [p for p in sorted(alive) if p != 1 and _host_of(proc, p) == host]


def _host_of(proc: Process, pid: int) -> str:
    return proc.host if pid == proc.myid else proc.lookup(pid).host


def workers(pool: Any = None) -> list[int]:
    """Every worker pid; ``[1]`` when there are no workers.

    Given a pool owned by the caller: its live members (``[1]`` for an
    empty default pool); use ``await pool.workers()`` for any pool.
    """
    if pool is not None:
        return _pools.pool_workers(pool)
    return current_process().group.workers()


def cluster_cookie(cookie: str | None = None) -> str:
    """The cluster cookie; with an argument, set it (before adding workers).

    A cookie is at most 16 ASCII characters and is padded with spaces to 16.
    """
    proc = current_process()
    if cookie is None:
        return proc.cookie
    if not isinstance(cookie, str):
        raise TypeError(
            f"cluster_cookie: cookie={cookie!r} is not a str; pass at most 16 "
            "ASCII characters"
        )
    if not cookie.isascii() or len(cookie) > 16:
        raise ValueError(
            f"cluster_cookie: cookie={cookie!r} must be at most 16 ASCII characters"
        )
    if proc.links:
        raise RuntimeError(
            "cluster_cookie: cannot change the cookie while workers are connected; "
            "set it before addprocs"
        )
    proc.cookie = cookie.ljust(16)
    return proc.cookie


def worker_timeout() -> float:
    """Seconds start-up waits may take on this process (Julia's internal
    ``worker_timeout()``): the master's comes from ``DISTREF_WORKER_TIMEOUT``
    when its cluster opens, and a worker takes its master's."""
    return current_process().worker_timeout


#: The logger on which distref reports what it cannot raise to anybody.
log_name = "ref"


# ------------------------------------------------------------ membership


async def addprocs(n: Any = None, **params: Any) -> list[int]:
    """Add workers and return their new pids, sorted.

    ``n`` says how: an int starts that many workers on this host (None: one
    per CPU thread; ``restrict=False`` binds them to the master's address
    instead of 127.0.0.1); a list of machine specs starts workers over ssh
    (``SSHManager``); a cluster manager starts them its own way.  The other
    keywords are those of ``default_addprocs_params(manager)``; an unknown
    one raises ``ValueError`` naming it.  ``topology`` and ``lazy`` say how
    workers connect to each other; the first ``addprocs`` fixes them for
    the cluster (see ``ref._topology``).

    Only process 1 may add workers, one ``addprocs`` at a time.  Workers
    are set up as the manager reports them, so a task may use those that
    joined while the call still runs.  Workers that started stay in the
    cluster even when others failed; the failures are then raised as a
    ``LaunchErrorGroup`` (a ``LaunchError``) after the others joined.
    """
    proc = current_process()
    proc.require_master("addprocs")
    manager = _manager_for(n, params)
    checked = manager_params(manager, params)
    async with proc.membership_lock:
        settle_topology(proc, checked)
        return await launch_and_setup(proc, manager, checked)


def _manager_for(n: Any, params: dict[str, Any]) -> ManagerLike:
    """The manager an ``addprocs(n, ...)`` call means; pops ``restrict``."""
    if n is None or (isinstance(n, int) and not isinstance(n, bool)):
        restrict = params.pop("restrict", True)
        return LocalManager(n, restrict)
    if isinstance(n, str):
        raise TypeError(
            f"addprocs: got the string {n!r}; give machine specs as a list, "
            f"e.g. addprocs([{n!r}])"
        )
    if isinstance(n, ManagerLike):
        return n
    if isinstance(n, list | tuple):
        return SSHManager(n)
    raise TypeError(
        f"addprocs: n={n!r} must be a count, a list of machine specs or a "
        "cluster manager (with launch and manage methods)"
    )


class Removal:
    """What ``rmprocs`` returns: await ``wait()`` for the removal to finish."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._finished = trio.Event()
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def __repr__(self) -> str:
        if not self.done:
            state = "in progress"
        elif self._error is not None:
            state = f"failed: {self._error}"
        else:
            state = "done"
        return f"<Removal of {self.pids}: {state}>"

    async def wait(self) -> None:
        await self._finished.wait()
        if self._error is not None:
            raise self._error

    async def _run(self, proc: Process, waitfor: float) -> None:
        try:
            async with proc.membership_lock:
                await proc.remove_workers(self.pids)
                with trio.move_on_after(waitfor):
                    for pid in self.pids:
                        await proc.departed(pid).wait()
            left = [p for p in self.pids if not proc.departed(p).is_set()]
            if left:
                self._error = RmprocsTimeoutError(left, waitfor)
        finally:
            self._finished.set()


async def rmprocs(*pids: int | Iterable[int], waitfor: float = math.inf) -> Removal:
    """Remove workers: ask each to exit and wait up to ``waitfor`` seconds.

    Pid 1 is never removed (a warning is logged); unknown pids are ignored.
    With ``waitfor=0`` the removal runs in the background and the returned
    ``Removal`` can be awaited later; otherwise ``RmprocsTimeoutError``
    names the pids still present after ``waitfor`` seconds.
    """
    proc = current_process()
    proc.require_master("rmprocs")
    if waitfor < 0 or math.isnan(waitfor):
        raise ValueError(f"rmprocs: waitfor={waitfor!r} must be >= 0")

    targets: list[int] = []
    for pid in flatten_pids("rmprocs", pids):
        if pid == 1:
            log.warning("rmprocs: process 1 not removed")
        elif proc.known_pid(pid) and pid not in targets:
            targets.append(pid)

    for pid in targets:
        # Out of procs() and workers() from now on, even while a background
        # removal still waits for its turn.
        proc.lookup(pid).state = PeerState.TERMINATING
    # Takes parked on a pool re-judge its members (BR-07).
    _pools.membership_changed(proc)
    removal = Removal(targets)
    if waitfor == 0:
        proc.spawn(removal._run, proc, math.inf)
        await trio.lowlevel.checkpoint()
        return removal
    await removal._run(proc, waitfor)
    await removal.wait()
    return removal


# ------------------------------------------------------------ remote calls


# ``pid`` may also be a worker pool: a free member is taken for the call
# (see ``_pools.call_on_pool`` for when it is given back).


async def remotecall(
    f: Callable[..., Any], pid: int | WorkerPoolAPI, /, *args: Any, **kwargs: Any
) -> Future:
    """Start ``f(*args, **kwargs)`` on ``pid``; returns a Future at once."""
    if not isinstance(pid, int):
        fut: Future = await _pools.call_on_pool("call", f, pid, args, kwargs)
        return fut
    return await current_process().remotecall(f, pid, args, kwargs)


async def remotecall_fetch(
    f: Callable[..., Any], pid: int | WorkerPoolAPI, /, *args: Any, **kwargs: Any
) -> Any:
    """Run ``f`` on ``pid`` and return its value; its error raises here."""
    if not isinstance(pid, int):
        return await _pools.call_on_pool("fetch", f, pid, args, kwargs)
    return await current_process().remotecall_fetch(f, pid, args, kwargs)


async def remotecall_wait(
    f: Callable[..., Any], pid: int | WorkerPoolAPI, /, *args: Any, **kwargs: Any
) -> Future:
    """Run ``f`` on ``pid``, wait until it finished, return its Future."""
    if not isinstance(pid, int):
        fut: Future = await _pools.call_on_pool("wait", f, pid, args, kwargs)
        return fut
    return await current_process().remotecall_wait(f, pid, args, kwargs)


async def remote_do(
    f: Callable[..., Any], pid: int | WorkerPoolAPI, /, *args: Any, **kwargs: Any
) -> None:
    """Run ``f`` on ``pid`` for its effect; errors are logged there."""
    if not isinstance(pid, int):
        await _pools.call_on_pool("do", f, pid, args, kwargs)
        return
    await current_process().remote_do(f, pid, args, kwargs)


# ------------------------------------------------------------ references


def _wrong_kind(call: str, ref: object, expected: str) -> TypeError:
    return TypeError(f"{call}: expected {expected}, got {type(ref).__name__}")


async def fetch(ref: Any) -> Any:
    """The value of a Future (cached after the first fetch), or a channel's
    head without removing it; waits until there is one."""
    proc = current_process()
    if isinstance(ref, Future):
        return await proc.fetch_future(ref)
    if isinstance(ref, RemoteChannel):
        return await proc.channel_op(ref, "fetch")
    if isinstance(ref, Channel):
        return await ref.fetch()
    raise _wrong_kind("fetch", ref, "a Future, RemoteChannel or Channel")


async def wait(ref: Any) -> Any:
    """Wait until the reference holds a value; returns the reference.

    A Future whose call failed raises its ``RemoteException``.
    """
    proc = current_process()
    if isinstance(ref, Future):
        return await proc.wait_future(ref)
    if isinstance(ref, RemoteChannel):
        await proc.channel_op(ref, "wait")
        return ref
    if isinstance(ref, Channel):
        await ref.wait()
        return ref
    if _pools.is_pool(ref):
        return await ref.wait()
    raise _wrong_kind("wait", ref, "a Future, RemoteChannel or Channel")


async def isready(ref: Any) -> bool:
    """Whether a value is there now (asks the owner when not cached)."""
    proc = current_process()
    if isinstance(ref, Future):
        return await proc.isready_future(ref)
    if isinstance(ref, RemoteChannel):
        return bool(await proc.channel_op(ref, "isready"))
    if isinstance(ref, Channel):
        return ref.isready()
    if _pools.is_pool(ref):
        return bool(await ref.isready())
    raise _wrong_kind("isready", ref, "a Future, RemoteChannel or Channel")


async def put(ref: Any, value: Any) -> Any:
    """Store ``value``; returns the reference.

    A Future is write-once (a second put raises FutureAlreadySetError); a
    channel waits while full and raises InvalidStateError once closed.
    """
    proc = current_process()
    if isinstance(ref, Future):
        return await proc.put_future(ref, value)
    if isinstance(ref, RemoteChannel):
        await proc.channel_op(ref, "put", value)
        return ref
    if isinstance(ref, Channel):
        await ref.put(value)
        return ref
    if _pools.is_pool(ref):
        await ref.put(value)
        return ref
    raise _wrong_kind("put", ref, "a Future, RemoteChannel or Channel")


def _channel(ref: object, call: str) -> RemoteChannel | Channel:
    if isinstance(ref, RemoteChannel | Channel):
        return ref
    if isinstance(ref, Future):
        raise TypeError(f"{call}: not defined for a Future (use fetch)")
    raise _wrong_kind(call, ref, "a RemoteChannel or Channel")


async def take(ref: Any) -> Any:
    """Remove and return a channel's head, waiting while it is empty.

    For a worker pool: take a free member's pid.
    """
    if _pools.is_pool(ref):
        return await ref.take()
    chan = _channel(ref, "take")
    if isinstance(chan, Channel):
        return await chan.take()
    return await current_process().channel_op(chan, "take")


async def close(ref: Any) -> None:
    """Close a channel: puts fail from now on, buffered items stay takeable."""
    chan = _channel(ref, "close")
    if isinstance(chan, Channel):
        chan.close()
        return
    await current_process().channel_op(chan, "close")


async def isopen(ref: Any) -> bool:
    """Whether a channel still accepts puts."""
    chan = _channel(ref, "isopen")
    if isinstance(chan, Channel):
        return chan.isopen()
    return bool(await current_process().channel_op(chan, "isopen"))


async def isempty(ref: Any) -> bool:
    """Whether a channel holds no item (does not consume anything)."""
    chan = _channel(ref, "isempty")
    if isinstance(chan, Channel):
        return chan.isempty()
    return bool(await current_process().channel_op(chan, "isempty"))


async def getindex(ref: Any, key: Any) -> Any:
    """Julia's ``ref[key]``: ``fetch(ref)[key]`` for a Future; for a
    RemoteChannel the head is indexed on the owner and only the selected
    element travels back."""
    proc = current_process()
    if isinstance(ref, Future):
        return (await proc.fetch_future(ref))[key]
    if isinstance(ref, RemoteChannel):
        return await proc.channel_op(ref, "getindex", key)
    if isinstance(ref, Channel):
        return (await ref.fetch())[key]  # type: ignore[index]  # the user's value
    raise _wrong_kind("getindex", ref, "a Future, RemoteChannel or Channel")


def remoteref_id(ref: RemoteRef) -> RRID:
    """The RRID identifying a remote reference."""
    return ref.rrid


def channel_from_id(rrid: RRID) -> Channel:
    """The channel behind ``rrid``; valid only on the process that stores it."""
    proc = current_process()
    entry = proc.refs.get(RRID(*rrid))
    if entry is None or not isinstance(entry.storage, Channel):
        raise ReferenceNotFoundError(
            f"channel_from_id: no local channel for {tuple(rrid)} on process "
            f"{proc.myid}; call it on the process that stores the channel"
        )
    return entry.storage


def live_refs() -> dict[RRID, frozenset[int]]:
    """This process's table of stored remote values: RRID -> holder pids.

    A read-only snapshot for tests and debugging; its length is the number
    of values this process keeps alive for others.
    """
    return current_process().refs.snapshot()


async def timedwait(
    testcb: Callable[[], Any], secs: float, *, pollint: float = 0.1
) -> str:
    """Poll ``testcb`` every ``pollint`` s until true: ``"ok"``, or after
    ``secs`` seconds ``"timed_out"``."""
    if pollint < 0.001:
        raise ValueError(f"timedwait: pollint={pollint!r} must be >= 1 millisecond")
    if secs < 0:
        raise ValueError(f"timedwait: secs={secs!r} must be >= 0")

    deadline = trio.current_time() + secs
    while True:
        result = testcb()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return "ok"
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            return "timed_out"
        await trio.sleep(min(pollint, remaining))
