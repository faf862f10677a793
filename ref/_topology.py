"""How a cluster's workers connect to each other: topology and laziness.

Julia's ``addprocs`` takes two keywords that shape the cluster's links, and
the first ``addprocs`` (or any made while ``nprocs() == 1``) fixes them for
the cluster's life; ``settle_topology`` applies that rule on the master
before any worker is launched.  The runtime (``_process``) then acts on the
two values:

* ``all_to_all`` (the default): every process may reach every other.  With
  ``lazy=True`` (the default) a worker-to-worker link is made on first use,
  always dialled by the higher pid; with ``lazy=False`` each new worker
  dials every lower-pid worker before its join completes, so the mesh is
  complete when ``addprocs`` returns.
* ``master_worker``: only the master talks to workers; a worker sending to
  another raises ``TopologyError``.
* ``custom``: each worker dials the workers whose ``ident`` is listed in its
  ``connect_idents`` (fields of ``LaunchedWorker``, set by the launcher);
  sending to any other worker raises ``TopologyError``.

``lazy`` is forced to False for every topology but ``all_to_all``, as
upstream does (``addprocs_locked`` in Julia's ``cluster.jl``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spec.api import TopologyError

from ._process import Process

#: The topologies ``addprocs`` accepts.
TOPOLOGIES = ("all_to_all", "master_worker", "custom")
#: ``addprocs``'s defaults for the two keywords.
DEFAULT_TOPOLOGY = "all_to_all"
DEFAULT_LAZY = True


def settle_topology(proc: Process, params: Mapping[str, Any]) -> tuple[str, bool]:
    """Check ``addprocs``'s topology and lazy keywords; fix them if first.

    Returns the cluster's ``(topology, lazy)``.  With no worker present the
    requested values become the cluster's; otherwise a different topology
    raises ``TopologyError`` and a different lazy flag ``ValueError`` (both
    with upstream's wording), and the cluster is left unchanged.  Keywords
    left out mean their defaults, so a cluster made with ``lazy=False``
    needs ``lazy=False`` on every later ``addprocs`` too, as in Julia.
    """
    topology = params.get("topology", DEFAULT_TOPOLOGY)
    lazy = params.get("lazy", DEFAULT_LAZY)
    if topology not in TOPOLOGIES:
        raise ValueError(
            f"addprocs: topology={topology!r} must be one of "
            "'all_to_all', 'master_worker' or 'custom'"
        )
    if not isinstance(lazy, bool):
        raise ValueError(f"addprocs: lazy={lazy!r} must be True or False")

    group = proc.group
    first = group.nprocs() == 1
    if not first and topology != group.topology:
        raise TopologyError(
            f"Workers with Topology {group.topology} already exist. "
            f"Requested Topology {topology} cannot be set."
        )
    if topology != "all_to_all":
        lazy = False
    if not first and lazy != group.lazy:
        raise ValueError(
            f"Active workers with lazy={group.lazy}. Cannot set lazy={lazy}"
        )
    group.topology = topology
    group.lazy = lazy
    return topology, lazy
