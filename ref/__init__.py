"""distref's reference runtime: Julia's ``Distributed`` model on trio.

Use it inside ``async with ref.open_cluster():`` (or through
``ref.blocking`` from plain scripts)::

    async with ref.open_cluster():
        pids = await ref.addprocs(2)
        assert await ref.remotecall_fetch(ref.myid, pids[0]) == pids[0]

The exception types are those of ``spec.api``, re-exported here.
"""

from spec.api import (
    RRID,
    DistributedError,
    FutureAlreadySetError,
    InvalidStateError,
    LaunchError,
    NoSuchProcessError,
    NotMasterError,
    ProcessExitedException,
    ReferenceNotFoundError,
    RemoteException,
    RmprocsTimeoutError,
)

from . import faults
from ._api import (
    Cluster,
    Removal,
    addprocs,
    channel_from_id,
    close,
    cluster_cookie,
    fetch,
    isempty,
    isopen,
    isready,
    live_refs,
    log_name,
    myid,
    nprocs,
    nworkers,
    open_cluster,
    procs,
    put,
    remote_do,
    remotecall,
    remotecall_fetch,
    remotecall_wait,
    remoteref_id,
    rmprocs,
    take,
    timedwait,
    wait,
    workers,
)
from ._channel import Channel
from ._context import NoClusterError
from ._local import LocalLauncher
from ._refs import Future, RemoteChannel

__all__ = [
    "RRID",
    "Channel",
    "Cluster",
    "DistributedError",
    "Future",
    "FutureAlreadySetError",
    "InvalidStateError",
    "LaunchError",
    "LocalLauncher",
    "NoClusterError",
    "NoSuchProcessError",
    "NotMasterError",
    "ProcessExitedException",
    "ReferenceNotFoundError",
    "RemoteChannel",
    "RemoteException",
    "Removal",
    "RmprocsTimeoutError",
    "addprocs",
    "channel_from_id",
    "close",
    "cluster_cookie",
    "faults",
    "fetch",
    "isempty",
    "isopen",
    "isready",
    "live_refs",
    "log_name",
    "myid",
    "nprocs",
    "nworkers",
    "open_cluster",
    "procs",
    "put",
    "remote_do",
    "remotecall",
    "remotecall_fetch",
    "remotecall_wait",
    "remoteref_id",
    "rmprocs",
    "take",
    "timedwait",
    "wait",
    "workers",
]
