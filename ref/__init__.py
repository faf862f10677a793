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
    RemoteException,
    RmprocsTimeoutError,
)

from . import faults
from ._api import (
    Cluster,
    Removal,
    addprocs,
    cluster_cookie,
    fetch,
    isready,
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
    wait,
    workers,
)
from ._context import NoClusterError
from ._local import LocalLauncher
from ._refs import Future

__all__ = [
    "RRID",
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
    "RemoteException",
    "Removal",
    "RmprocsTimeoutError",
    "addprocs",
    "cluster_cookie",
    "faults",
    "fetch",
    "isready",
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
    "wait",
    "workers",
]
