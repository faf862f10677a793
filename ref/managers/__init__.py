"""Cluster managers: how ``addprocs`` starts workers.

``ClusterManager`` is the interface (Julia's), ``WorkerConfig`` what a
manager reports per worker.  Shipped managers: ``LocalManager`` (this host;
``addprocs(n)``), ``SSHManager`` (other hosts over ssh;
``addprocs(["host", ...])``), ``SlurmManager`` (the tasks of a Slurm
allocation, started with srun) and ``ElasticManager`` (workers started by
any means dial the master).  See ``docs/managers.md``.
"""

from ._base import (
    MANAGE_OPS,
    WORKER_CONFIG_FIELDS,
    ClusterManager,
    WorkerConfig,
    default_addprocs_params,
)
from ._elastic import ElasticManager
from ._local import LocalManager
from ._slurm import SlurmManager
from ._ssh import MachineSpec, SSHManager, parse_machine

__all__ = [
    "MANAGE_OPS",
    "WORKER_CONFIG_FIELDS",
    "ClusterManager",
    "ElasticManager",
    "LocalManager",
    "MachineSpec",
    "SSHManager",
    "SlurmManager",
    "WorkerConfig",
    "default_addprocs_params",
    "parse_machine",
]
