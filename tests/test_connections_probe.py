"""``probes.connections``: which connections a process holds, and who dialled.

Under ``ref`` the answer is read from the kernel (``ref._sockets``), so the
first tests open real loopback sockets in this process and check the
reading against what they know they opened.  Under ``sim`` it is the
simulated network's table; those tests open, use and break connections in
a simulated cluster and watch the table follow.  The lazy-link scenarios
in ``conformance/scenarios/membership.py`` use the probe on both backends.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

import ref
import sim
from ref._sockets import os_connections
from spec.api import HeldConnection, NoSuchProcessError, NotMasterError

ME = os.getpid()


@contextmanager
def _pair(family: socket.AddressFamily, host: str) -> Iterator[tuple[int, int]]:
    """A listener on ``host`` and one connection to it; yields both local ports."""
    with socket.create_server((host, 0), family=family) as server:
        port = server.getsockname()[1]
        with socket.create_connection((host, port)) as client:
            accepted, _ = server.accept()
            with accepted:
                yield port, client.getsockname()[1]


def _mine(held: list[HeldConnection], port: int) -> list[HeldConnection]:
    return [h for h in held if f":{port}" in h.ident]


def test_the_kernel_view_tells_the_dialled_end_from_the_accepted_one() -> None:
    with _pair(socket.AF_INET, "127.0.0.1") as (port, client_port):
        held = os_connections(ME, ("127.0.0.1", port), {ME: 7})
        ends = _mine(held, client_port)
        assert sorted((h.peer, h.dialled) for h in ends) == [(7, False), (7, True)]
        # Both ends name the same connection.
        assert len({h.ident for h in ends}) == 1
        assert f"127.0.0.1:{port}" in ends[0].ident


def test_a_peer_outside_the_cluster_is_none() -> None:
    with _pair(socket.AF_INET, "127.0.0.1") as (_, client_port):
        held = _mine(os_connections(ME, None, {}), client_port)
        assert [h.peer for h in held] == [None, None]


def test_ipv6_loopback_is_read_too() -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        probe = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"cannot listen on ::1 here: {exc}")
    probe.close()
    with _pair(socket.AF_INET6, "::1") as (port, client_port):
        held = _mine(os_connections(ME, ("::1", port), {ME: 3}), client_port)
        assert sorted((h.peer, h.dialled) for h in held) == [(3, False), (3, True)]


def test_a_process_not_listening_where_announced_is_refused() -> None:
    with _pair(socket.AF_INET, "127.0.0.1") as (port, _):
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            free = unused.getsockname()[1]
        assert free != port
        with pytest.raises(ProcessLookupError, match=f"port {free}"):
            os_connections(ME, ("127.0.0.1", free), {ME: 1})


def test_an_os_pid_that_is_not_running_is_refused() -> None:
    # pid_max bounds OS pids; one above it can never be running.
    with open("/proc/sys/kernel/pid_max") as f:
        beyond = int(f.read()) + 1
    with pytest.raises(ProcessLookupError, match=str(beyond)):
        os_connections(beyond, None, {})


# ------------------------------------------------------------------- sim


def _shape(held: list[HeldConnection]) -> list[tuple[int | None, bool]]:
    return [(h.peer, h.dialled) for h in held]


def test_on_sim_a_raw_stream_shows_at_both_ends_and_goes_when_closed() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            assert _shape(await ref.probes.connections(pid)) == [(1, False)]
            assert _shape(await ref.probes.connections(1)) == [(pid, True)]

            stream = await ref.probes.open_stream(pid)
            worker = await ref.probes.connections(pid)
            master = await ref.probes.connections(1)
            assert _shape(worker) == [(1, False), (1, False)]
            assert _shape(master) == [(pid, True), (pid, True)]
            assert {h.ident for h in worker} == {h.ident for h in master}

            await stream.aclose()
            # The master's end closes at once; the worker's once it reads
            # the end-of-file and the runtime drops the failed handshake.
            assert _shape(await ref.probes.connections(1)) == [(pid, True)]
            with trio.fail_after(10):
                while len(await ref.probes.connections(pid)) > 1:
                    await trio.sleep(0.01)
            assert [h.ident for h in await ref.probes.connections(pid)] == [
                master[0].ident
            ]

    sim.run(main, seed=3)


def test_on_sim_a_killed_worker_leaves_no_connection_behind() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            first, second = await ref.addprocs(2)
            await ref.remotecall_fetch(ref.remotecall_fetch, second, ref.myid, first)
            assert _shape(await ref.probes.connections(first)) == [
                (1, False),
                (second, False),
            ]
            await ref.faults.kill(second)
            with trio.fail_after(10):
                while second in ref.workers():
                    await trio.sleep(0.01)
            assert _shape(await ref.probes.connections(first)) == [(1, False)]
            assert _shape(await ref.probes.connections(1)) == [(first, True)]

    sim.run(main, seed=4)


def test_the_connections_probe_is_for_the_master_and_known_pids() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            with pytest.raises(NoSuchProcessError):
                await ref.probes.connections(pid + 10)
            with pytest.raises(ref.RemoteException) as caught:
                await ref.remotecall_fetch(ref.probes.connections, pid, 1)
            assert isinstance(caught.value.exception, NotMasterError)

    sim.run(main, seed=5)
