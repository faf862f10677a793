"""``SSHManager`` against a real OpenSSH server on loopback.

Each test starts its own ``sshd`` on 127.0.0.1 (and ::1) at a free high
port, with host and client keys made under ``tmp_path``, logs in as the
current user by key, and stops the daemon by pid afterwards.  Workers run
the project's interpreter (``sys.executable``) in the current directory,
so the remote side imports this checkout.  Every worker a test starts
carries a tag in its environment; none may outlive the test.

Skipped, with the reason, where ``sshd`` is not installed.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from daemons import (
    TAG_VARIABLE,
    SshServer,
    Unavailable,
    assert_no_workers,
    start_sshd,
    stop,
)

import ref
from ref.managers import SSHManager
from ref.managers._base import WorkerConfig
from spec.api import LaunchError, LaunchErrorGroup, RemoteException

pytestmark = pytest.mark.cluster

BOUND = 60.0


@pytest.fixture
def tag(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A tag in the environment of every worker this test starts."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(TAG_VARIABLE, value)
    yield value
    assert_no_workers(value)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """An sshd on 127.0.0.1 and ::1, stopped (by pid) after the test."""
    try:
        server = start_sshd(tmp_path / "ssh", ["127.0.0.1", "::1"])
    except Unavailable as exc:
        pytest.skip(str(exc))
    yield server
    stop([server.process])


def opts(sshd: SshServer, tag: str, **more: Any) -> dict[str, Any]:
    """addprocs keywords: the test key, and the tag in the remote env."""
    # The remote side imports this module to run the functions it defines.
    here = str(Path(__file__).parent)
    env = {TAG_VARIABLE: tag, "PYTHONPATH": here, **more.pop("env", {})}
    return {"sshflags": sshd.sshflags(), "env": env, **more}


def config_of(cluster: ref.Cluster, pid: int) -> WorkerConfig:
    return cluster.master.managed[pid].config


def facts() -> dict[str, Any]:
    import os

    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
    }


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_a_worker_started_over_ssh_joins_and_runs_calls(
    sshd: SshServer, tag: str
) -> None:
    with trio.fail_after(BOUND):
        async with ref.open_cluster() as cluster:
            [pid] = await ref.addprocs([sshd.spec()], **opts(sshd, tag))
            assert await ref.remotecall_fetch(ref.myid, pid) == pid
            seen = await ref.remotecall_fetch(facts, pid)
            config = config_of(cluster, pid)
            ssh = config.process
            assert isinstance(ssh, trio.Process)
            # The worker runs under the ssh session, not as our child.
            assert seen["ppid"] != os.getpid()
            assert seen["cwd"] == os.getcwd()
            assert config.ospid == seen["pid"]
            assert config.connect_at == ("127.0.0.1", config.port)
            # The cookie is on no command line, neither ssh's nor the worker's.
            cookie = ref.cluster_cookie().encode()
            assert cookie not in cmdline(ssh.pid)
            assert cookie not in cmdline(seen["pid"])


async def test_only_the_timeout_variable_and_env_travel_to_the_remote_side(
    sshd: SshServer, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISTREF_WORKER_TIMEOUT", "45")
    monkeypatch.setenv("DISTREF_NOT_FORWARDED", "master-only")
    with trio.fail_after(BOUND):
        async with ref.open_cluster():
            [pid] = await ref.addprocs(
                [sshd.spec()], **opts(sshd, tag, env={"EXTRA": "a b'c"}, dir="/tmp")
            )
            seen = await ref.remotecall_fetch(facts, pid)
    env = seen["env"]
    assert env["DISTREF_WORKER_TIMEOUT"] == "45"
    assert "DISTREF_NOT_FORWARDED" not in env
    assert env["EXTRA"] == "a b'c"
    assert env["OPENBLAS_NUM_THREADS"] == "1"
    assert seen["cwd"] == "/tmp"


async def test_a_count_starts_one_session_and_the_rest_from_the_first_worker(
    sshd: SshServer, tag: str
) -> None:
    with trio.fail_after(BOUND):
        async with ref.open_cluster() as cluster:
            pids = await ref.addprocs([(sshd.spec(), 3)], **opts(sshd, tag))
            assert pids == [2, 3, 4]
            seen = {p: await ref.remotecall_fetch(facts, p) for p in pids}
            sessions = [
                p
                for p in pids
                if isinstance(config_of(cluster, p).process, trio.Process)
            ]
            assert sessions == [2]
            first = seen[2]["pid"]
            assert seen[3]["ppid"] == first and seen[4]["ppid"] == first
            # The extra workers reach each other and the first directly.
            assert await ref.remotecall_fetch(ref.remotecall_fetch, 4, ref.myid, 3) == 3


async def test_output_of_every_worker_comes_back_prefixed_once(
    sshd: SshServer, tag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(BOUND):
        async with ref.open_cluster():
            pids = await ref.addprocs([(sshd.spec(), 2)], **opts(sshd, tag))
            for pid in pids:
                await ref.remotecall_fetch(_say, pid, f"hello-{pid}")
            await trio.sleep(1.0)
    out = capsys.readouterr().out
    for pid in pids:
        assert f"      From worker {pid}:\thello-{pid}\n" in out, out
    assert "From worker 2:\t      From worker 3" not in out


def _say(text: str) -> None:
    print(text, flush=True)


async def test_auto_count_and_repeated_machines(sshd: SshServer, tag: str) -> None:
    manager = SSHManager([sshd.spec(), sshd.spec(), (sshd.spec("::1"), "auto")])
    assert manager.machines == {sshd.spec(): 2, sshd.spec("::1"): "auto"}
    with trio.fail_after(BOUND):
        async with ref.open_cluster() as cluster:
            pids = await ref.addprocs(manager, **opts(sshd, tag))
            threads = os.cpu_count() or 1
            assert len(pids) == 2 + threads
            hosts = sorted(config_of(cluster, p).connect_at[0] for p in pids)  # type: ignore[index]  # set once joined
            assert hosts == ["127.0.0.1"] * 2 + ["::1"] * threads


async def test_a_tunnel_carries_the_master_connections_at_most_max_parallel_at_once(
    sshd: SshServer, tag: str
) -> None:
    with trio.fail_after(BOUND):
        async with ref.open_cluster() as cluster:
            pids = await ref.addprocs(
                [(sshd.spec(), 3)], **opts(sshd, tag, tunnel=True, max_parallel=1)
            )
            for pid in pids:
                config = config_of(cluster, pid)
                assert config.forward is not None
                assert config.forward.startswith("127.0.0.1:")
                assert config.forward.endswith(f":127.0.0.1:{config.port}")
                link = cluster.master.links[pid].stream
                assert isinstance(link, trio.SocketStream)
                # The master's end of the link is the tunnel's local port.
                assert link.socket.getpeername()[1] != config.port
                assert await ref.remotecall_fetch(ref.myid, pid) == pid
            manager = cluster.master.managed[pids[0]].manager
            assert isinstance(manager, SSHManager)
            assert manager.peak_setups == {"127.0.0.1": 1}
            tunnels = [config_of(cluster, p).userdata["tunnel"] for p in pids]
            await ref.rmprocs(pids)
            with trio.fail_after(10):
                for tunnel in tunnels:
                    await tunnel.wait()


async def test_multiplexed_sessions_share_one_master_connection_ended_with_them(
    sshd: SshServer, tag: str
) -> None:
    with trio.fail_after(BOUND):
        async with ref.open_cluster() as cluster:
            manager = SSHManager([sshd.spec(), sshd.spec("::1")])
            pids = await ref.addprocs(manager, **opts(sshd, tag, multiplex=True))
            masters = dict(manager._masters)
            assert len(masters) == 2
            for pid in pids:
                flags = config_of(cluster, pid).sshflags or ()
                assert "ControlMaster=no" in flags
                assert await ref.remotecall_fetch(ref.myid, pid) == pid
            processes = [m._process for m in masters.values()]
            await ref.rmprocs(pids)
            with trio.fail_after(15):
                while manager._masters:
                    await trio.sleep(0.05)
            assert all(p is not None and p.returncode is not None for p in processes)


async def test_a_worker_exits_when_its_ssh_session_ends(
    sshd: SshServer, tag: str
) -> None:
    with trio.fail_after(BOUND):
        async with ref.open_cluster() as cluster:
            [pid] = await ref.addprocs([sshd.spec()], **opts(sshd, tag))
            ospid = config_of(cluster, pid).ospid
            assert ospid is not None
            ssh = config_of(cluster, pid).process
            assert isinstance(ssh, trio.Process)
            ssh.kill()
            with trio.fail_after(15):
                while Path(f"/proc/{ospid}").exists() and not _zombie(ospid):
                    await trio.sleep(0.1)
                while pid in ref.workers():
                    await trio.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_interrupt_runs_kill_over_ssh(sshd: SshServer, tag: str) -> None:
    interrupt = ref.interrupt
    with trio.fail_after(BOUND):
        async with ref.open_cluster():
            [pid] = await ref.addprocs([sshd.spec()], **opts(sshd, tag))
            future = await ref.remotecall(trio.sleep, pid, 30)
            await trio.sleep(0.5)
            await interrupt(pid)
            with pytest.raises(RemoteException) as caught:
                await ref.fetch(future)
            assert isinstance(caught.value.exception, KeyboardInterrupt)
            assert await ref.remotecall_fetch(ref.myid, pid) == pid


async def test_interrupt_without_an_ospid_is_logged_and_sends_nothing(
    sshd: SshServer, tag: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(BOUND):
        async with ref.open_cluster() as cluster:
            [pid] = await ref.addprocs([sshd.spec()], **opts(sshd, tag))
            # As before the worker reported its OS pid: nothing to kill -2.
            config_of(cluster, pid).ospid = None
            future = await ref.remotecall(trio.sleep, pid, 1.0)
            with caplog.at_level(logging.WARNING, logger="ref"):
                await ref.interrupt(pid)
            assert f"Worker {pid} cannot be presently interrupted." in caplog.messages
            assert await ref.fetch(future) is None, "the call was interrupted"
            assert await ref.remotecall_fetch(ref.myid, pid) == pid


async def test_an_ssh_worker_cannot_be_suspended(sshd: SshServer, tag: str) -> None:
    with trio.fail_after(BOUND):
        async with ref.open_cluster():
            [pid] = await ref.addprocs([sshd.spec()], **opts(sshd, tag))
            # Stopping the local ssh client would not stop the worker.
            with pytest.raises(
                NotImplementedError, match=f"cannot suspend worker {pid}"
            ):
                await ref.faults.suspend(pid)
            assert await ref.remotecall_fetch(ref.myid, pid) == pid


async def test_a_failing_machine_fails_alone(sshd: SshServer, tag: str) -> None:
    # A dir that does not exist on the remote side: its shell exits.
    good = SSHManager([sshd.spec()])
    with trio.fail_after(BOUND):
        async with ref.open_cluster():
            [pid] = await ref.addprocs(good, **opts(sshd, tag))
            with pytest.raises(LaunchErrorGroup) as caught:
                await ref.addprocs(
                    [sshd.spec(), sshd.spec("::1")],
                    **opts(sshd, tag, exename="/nonexistent/python"),
                )
            errors = caught.value.exceptions
            assert len(errors) == 2
            assert all(isinstance(e, LaunchError) for e in errors)
            assert all("Unable to read host:port string" in str(e) for e in errors)
            assert ref.workers() == [pid]


async def test_a_refused_login_is_a_launch_error_naming_the_cause(
    sshd: SshServer, tag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [f for f in sshd.sshflags()]
    flags[flags.index("-i") + 1] = str(tmp_path / "no-such-key")
    with trio.fail_after(BOUND):
        async with ref.open_cluster():
            with pytest.raises(LaunchError, match="Unable to read host:port"):
                await ref.addprocs([sshd.spec()], sshflags=flags)
    assert "From worker startup:" in capsys.readouterr().out


async def test_a_bind_address_is_where_the_master_and_peers_connect(
    sshd: SshServer, tag: str
) -> None:
    """No user: ssh logs in as the current one; no port: ssh's default is
    not used since the spec names one; the bind address is the listener."""
    spec = f"127.0.0.1:{sshd.port} 127.0.0.2"
    with trio.fail_after(BOUND):
        async with ref.open_cluster() as cluster:
            pids = await ref.addprocs([(spec, 2)], **opts(sshd, tag))
            for pid in pids:
                config = config_of(cluster, pid)
                assert config.host == "127.0.0.1"
                assert config.connect_at == ("127.0.0.2", config.port)
                sockets = await ref.remotecall_fetch(_listening, pid)
                assert sockets == [("127.0.0.2", config.port)]
            assert (
                await ref.remotecall_fetch(
                    ref.remotecall_fetch, pids[1], ref.myid, pids[0]
                )
                == pids[0]
            )


def _listening() -> list[tuple[str, int]]:
    from conformance.scenarios._probes import tcp_sockets

    return tcp_sockets().listening
