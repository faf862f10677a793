"""``SSHManager`` across several hosts: network namespaces with their own sshd.

Three fake hosts are network namespaces on a bridge made by the fixture
(10.213.9.0/24: the root namespace is .1, host i is .(10+i)), each with its
own hostname and an sshd listening inside it only.  Before anything dials a
namespace address, ``check_route`` makes sure the route goes through the
test's bridge, so no packet can leave the machine.  The fixture stops the
sshds by pid and deletes the namespaces and the bridge.

Skipped, with the reason, where namespaces cannot be made (no root, no
``ip netns``) or sshd is not installed.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from daemons import (
    TAG_VARIABLE,
    NetnsHosts,
    Unavailable,
    assert_no_workers,
    check_route,
    start_netns_hosts,
    stop_netns_hosts,
)

import ref

pytestmark = pytest.mark.cluster

SUBNET = "10.213.9"
BOUND = 60.0


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[NetnsHosts]:
    try:
        made = start_netns_hosts(tmp_path / "netns", 3, SUBNET)
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        for address in made.addresses:
            check_route(address, made.bridge)
        yield made
    finally:
        stop_netns_hosts(made)


@pytest.fixture
def tag(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    value = uuid.uuid4().hex
    monkeypatch.setenv(TAG_VARIABLE, value)
    yield value
    assert_no_workers(value)


def opts(hosts: NetnsHosts, tag: str, **more: Any) -> dict[str, Any]:
    env = {TAG_VARIABLE: tag, "PYTHONPATH": str(Path(__file__).parent)}
    return {"sshflags": hosts.keys.sshflags(), "env": env, **more}


def where() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


async def test_workers_on_three_hosts_reach_each_other(
    hosts: NetnsHosts, tag: str
) -> None:
    machines = [(hosts.spec(0), 2), hosts.spec(1), hosts.spec(2)]
    with trio.fail_after(BOUND):
        async with ref.open_cluster() as cluster:
            pids = await ref.addprocs(machines, **opts(hosts, tag))
            assert len(pids) == 4
            names = {p: (await ref.remotecall_fetch(where, p))[0] for p in pids}
            assert sorted(names.values()) == ["host1", "host1", "host2", "host3"]
            for pid in pids:
                bind_addr, _ = cluster.master.managed[pid].config.connect_at or ("", 0)
                index = int(names[pid][-1]) - 1
                assert bind_addr == hosts.addresses[index]
            # Worker to worker, across namespaces, both directions.
            by_host = {name: pid for pid, name in names.items()}
            low, high = by_host["host2"], by_host["host3"]
            assert await ref.remotecall_fetch(where, low) != await ref.remotecall_fetch(
                where, high
            )
            remote = await ref.remotecall_fetch(ref.remotecall_fetch, high, where, low)
            assert remote[0] == "host2"
            remote = await ref.remotecall_fetch(ref.remotecall_fetch, low, where, high)
            assert remote[0] == "host3"
            assert ref.procs(low) == [low]


async def test_a_tunnel_into_a_namespace_host(hosts: NetnsHosts, tag: str) -> None:
    with trio.fail_after(BOUND):
        async with ref.open_cluster() as cluster:
            [pid] = await ref.addprocs([hosts.spec(1)], **opts(hosts, tag, tunnel=True))
            config = cluster.master.managed[pid].config
            assert config.forward is not None
            assert config.forward.endswith(f":{hosts.addresses[1]}:{config.port}")
            assert (await ref.remotecall_fetch(where, pid))[0] == "host2"
