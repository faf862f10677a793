"""Cluster managers on ``ref``: the interface, keywords, local options, failures.

The launch failures use fake launch commands written under ``tmp_path``
(``exename`` pointing at a small shell script), so each upstream meaning is
produced by a real process: exiting without an address line, printing a
thousand other lines, saying nothing at all, or printing junk before
starting a real worker.  Worker timeouts are shortened with
``open_cluster(timeout=...)``; the kill escalation with the manager's
``kill_waits``.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import OpenTestCluster

import ref
from ref.managers import (
    WORKER_CONFIG_FIELDS,
    ClusterManager,
    LocalManager,
    SSHManager,
    WorkerConfig,
    default_addprocs_params,
    parse_machine,
)
from ref.managers._local import KILL_WAITS
from spec.api import LaunchError, LaunchErrorGroup

# -------------------------------------------------------------- fake commands


def fake_command(tmp_path: Path, name: str, body: str) -> str:
    """An executable shell script standing in for the worker's interpreter."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def real_python_after(tmp_path: Path, before: str) -> str:
    """A launch command that runs ``before`` and then the real worker."""
    python = shlex.quote(sys.executable)
    return fake_command(tmp_path, "noisy", f'{before}\nexec {python} "$@"')


# ------------------------------------------------------------------ WorkerConfig


def test_worker_config_has_julias_fields_all_none() -> None:
    config = WorkerConfig()
    assert WORKER_CONFIG_FIELDS == (
        "io",
        "host",
        "port",
        "count",
        "exename",
        "exeflags",
        "userdata",
        "tunnel",
        "multiplex",
        "forward",
        "bind_addr",
        "sshflags",
        "max_parallel",
        "connect_at",
        "process",
        "ospid",
        "environ",
        "ident",
        "connect_idents",
        "enable_threaded_blas",
    )
    assert all(getattr(config, name) is None for name in WORKER_CONFIG_FIELDS)


def test_the_base_manager_must_be_given_a_launch() -> None:
    async def main() -> None:
        async with ref.open_cluster():
            with pytest.raises(NotImplementedError, match="must implement launch"):
                await ref.addprocs(ClusterManager())

    trio.run(main)


# ------------------------------------------------------------------ keywords


async def test_keywords_are_checked_before_anything_starts() -> None:
    async with ref.open_cluster():
        cases: list[tuple[dict[str, Any], str]] = [
            ({"bogus": 1}, "Invalid keyword argument 'bogus'"),
            ({"env": {"1BAD": "x"}}, "not a variable name"),
            ({"env": {"A": 1}}, "must be a string"),
            ({"env": "A=1"}, "mapping or pairs"),
            ({"exeflags": [1]}, "list of strings"),
            ({"enable_threaded_blas": "yes"}, "True or False"),
            ({"dir": 3}, "must be a path"),
            ({"exename": ""}, "program path"),
            ({"topology": "ring"}, "topology"),
        ]
        for kwargs, message in cases:
            with pytest.raises(ValueError, match=message):
                await ref.addprocs(1, **kwargs)
        with pytest.raises(ValueError, match="restrict"):
            await ref.addprocs(1, restrict="no")
        with pytest.raises(ValueError, match="Invalid keyword argument 'restrict'"):
            await ref.addprocs(LocalManager(1), restrict=False)
        with pytest.raises(ValueError, match="n=-1"):
            await ref.addprocs(-1)
        with pytest.raises(TypeError, match=r"addprocs\(\['host'\]\)"):
            await ref.addprocs("host")
        with pytest.raises(TypeError, match="cluster manager"):
            await ref.addprocs(object())
        assert ref.workers() == [1]


def test_env_pairs_and_string_exeflags_are_normalised() -> None:
    from ref.managers._base import manager_params

    params = manager_params(
        LocalManager(1), {"env": [("A", "1")], "exeflags": "-X dev -O"}
    )
    assert params["env"] == {"A": "1"}
    assert params["exeflags"] == ("-X", "dev", "-O")
    assert set(default_addprocs_params(SSHManager(["h"]))) >= {"tunnel", "sshflags"}


async def test_cmdline_cookie_is_refused_with_the_reason() -> None:
    async with ref.open_cluster():
        with pytest.raises(ValueError, match="never puts the cookie on a command line"):
            await ref.addprocs(["localhost"], cmdline_cookie=True)
        assert ref.workers() == [1]


def test_machine_specs_parse_into_their_parts() -> None:
    spec = parse_machine("ann@node-1.example:2222 10.1.2.3:9100")
    assert (spec.user, spec.host, spec.port) == ("ann", "node-1.example", 2222)
    assert (spec.bind_addr, spec.bind_port) == ("10.1.2.3", 9100)
    assert spec.destination == "ann@node-1.example"
    assert spec.listen == "10.1.2.3:9100"
    spec = parse_machine("[fe80::1%eth0]")
    assert (spec.user, spec.host, spec.port) == (None, "fe80::1%eth0", None)
    assert spec.listen == "[fe80::1%eth0]"
    for bad in ("-oProxyCommand=x", "a@-h", "h:1:2", "h b c", "[zz]:1"):
        with pytest.raises(ValueError, match="invalid machine definition"):
            parse_machine(bad)


def test_ssh_manager_shell_variants_build_commands() -> None:
    from ref.managers._ssh import remote_command

    args: dict[str, Any] = {
        "dir": "/w d",
        "env": {"A": "x'y"},
        "exename": sys.executable,
        "exeflags": ["-X", "dev"],
        "bind_to": "h",
    }
    posix = shlex.split(remote_command("posix", **args))
    assert posix[:3] == ["sh", "-l", "-c"]
    script = posix[3].splitlines()
    assert script[0] == "cd -- '/w d' || exit 1"
    assert shlex.split(script[1]) == ["export", "A=x'y"]
    assert shlex.split(script[2])[:4] == ["exec", sys.executable, "-X", "dev"]
    csh = remote_command("csh", **args)
    assert csh.splitlines()[0] == "cd '/w d'" and "setenv A 'x'\\''y'" in csh
    wincmd = remote_command("wincmd", **args)
    assert wincmd.startswith('cd /D "/w d" && set A=x\'y && ')
    with pytest.raises(ValueError, match="shell="):
        remote_command("fish", **args)


# ------------------------------------------------------------- launch errors


async def test_a_command_that_exits_at_once_is_unable_to_report(
    open_test_cluster: OpenTestCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    exename = fake_command(tmp_path, "fails", "echo 'cannot start' >&2; exit 3")
    async with open_test_cluster(0, timeout=20):
        with pytest.raises(LaunchErrorGroup) as caught:
            await ref.addprocs(2, exename=exename)
        assert len(caught.value.exceptions) == 2
        for error in caught.value.exceptions:
            assert str(error) == (
                "Unable to read host:port string from worker. "
                "Launch command exited with error?"
            )
        assert ref.workers() == [1]
    assert "\tFrom worker startup:\tcannot start\n" in capsys.readouterr().out


async def test_a_thousand_lines_without_an_address_is_unexpected_output(
    open_test_cluster: OpenTestCluster, tmp_path: Path
) -> None:
    exename = fake_command(
        tmp_path,
        "chatty",
        "i=0; while [ $i -lt 1200 ]; do echo line $i; i=$((i+1)); done; sleep 30",
    )
    async with open_test_cluster(0, timeout=20):
        with pytest.raises(LaunchError, match="Unexpected output from worker launch"):
            await ref.addprocs(1, exename=exename)


async def test_a_silent_worker_times_out_with_upstreams_words(
    open_test_cluster: OpenTestCluster, tmp_path: Path
) -> None:
    exename = fake_command(tmp_path, "silent", "exec sleep 30")
    async with open_test_cluster(0, timeout=1.0):
        began = time.monotonic()
        with pytest.raises(LaunchErrorGroup) as caught:
            await ref.addprocs(1, exename=exename)
        [error] = caught.value.exceptions
        assert str(error).startswith(
            "Timed out waiting to read host:port string from worker"
        )
        assert time.monotonic() - began >= 1.0


async def test_junk_before_the_address_line_is_echoed_and_the_worker_joins(
    open_test_cluster: OpenTestCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    exename = real_python_after(tmp_path, "echo 'setting up'; echo 'still going'")
    async with open_test_cluster(0):
        [pid] = await ref.addprocs(1, exename=exename)
        assert await ref.remotecall_fetch(ref.myid, pid) == pid
    out = capsys.readouterr().out
    assert "\tFrom worker startup:\tsetting up\n" in out
    assert "\tFrom worker startup:\tstill going\n" in out


class _Reporting(ClusterManager):
    """Reports fixed configs; records what manage heard."""

    def __init__(self, configs: list[WorkerConfig]) -> None:
        self.configs = configs
        self.ops: list[tuple[int, str]] = []

    async def launch(
        self, params: Mapping[str, Any], launched: list[WorkerConfig], notify: Any
    ) -> None:
        launched.extend(self.configs)
        notify()

    async def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        self.ops.append((pid, op))


async def test_a_worker_that_never_joins_fails_after_the_worker_timeout(
    open_test_cluster: OpenTestCluster,
) -> None:
    """A listener that takes the connection and never answers the join."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def mute(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, mute, listeners)
        async with open_test_cluster(1, timeout=1.5):
            manager = _Reporting([WorkerConfig(host="127.0.0.1", port=port)])
            with pytest.raises(LaunchErrorGroup) as caught:
                await ref.addprocs(manager)
            [error] = caught.value.exceptions
            assert "did not connect within 1.5 seconds" in str(error)
            assert len(ref.workers()) == 1 and ref.workers() != [1]
            # Never registered; its clean-up still reaches the manager.
            assert [op for _, op in manager.ops] == ["finalize"]
        nursery.cancel_scope.cancel()


async def test_a_config_with_no_address_and_a_stray_entry_fail_alone(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(0):
        manager = _Reporting([WorkerConfig(), "not a config"])  # type: ignore[list-item]  # on purpose
        with pytest.raises(LaunchErrorGroup) as caught:
            await ref.addprocs(manager)
        texts = sorted(str(e) for e in caught.value.exceptions)
        assert "append WorkerConfig objects" in texts[0]
        assert "has no io and no host and port" in texts[1]


# ----------------------------------------------------------- local options


async def test_unrestricted_workers_listen_on_the_masters_address(
    open_test_cluster: OpenTestCluster,
) -> None:
    async with open_test_cluster(0) as cluster:
        cluster.master.host = "127.0.0.2"
        [free] = await ref.addprocs(1, restrict=False)
        [kept] = await ref.addprocs(1)
        config = cluster.master.managed
        assert config[free].config.connect_at[0] == "127.0.0.2"  # type: ignore[index]  # set once joined
        assert config[kept].config.connect_at[0] == "127.0.0.1"  # type: ignore[index]  # set once joined


async def test_local_workers_get_the_launch_keywords(
    open_test_cluster: OpenTestCluster, tmp_path: Path
) -> None:
    exename = real_python_after(tmp_path, "export DISTREF_VIA=script")
    async with open_test_cluster(0):
        [pid] = await ref.addprocs(
            1,
            exename=exename,
            exeflags=["-X", "utf8"],
            dir=str(tmp_path),
            env=[("OMP_NUM_THREADS", "3")],
        )
        seen = await ref.remotecall_fetch(_facts, pid)
    assert seen["via"] == "script" and seen["utf8"] == 1
    assert seen["cwd"] == str(tmp_path)
    assert seen["omp"] == "3" and seen["openblas"] == "1"


def _facts() -> dict[str, Any]:
    return {
        "via": os.environ.get("DISTREF_VIA"),
        "utf8": sys.flags.utf8_mode,
        "cwd": os.getcwd(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "openblas": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


# ------------------------------------------------------------ kill escalation


def _stubborn() -> None:
    """On a worker: ignore SIGQUIT, then hold the loop (no exit possible)."""
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    time.sleep(60)


async def test_kill_escalates_from_exit_request_to_sigkill(
    open_test_cluster: OpenTestCluster,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert KILL_WAITS == (15.0, 6.0, 15.0)
    manager = LocalManager(1)
    manager.kill_waits = (0.5, 0.5, 0.5)
    with caplog.at_level(logging.WARNING, logger="ref"):
        async with open_test_cluster(0):
            [pid] = await ref.addprocs(manager)
            await ref.remote_do(_stubborn, pid)
            await trio.sleep(0.3)
            began = time.monotonic()
            await ref.rmprocs(pid, waitfor=10)
            assert time.monotonic() - began >= 1.5
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    steps = [
        f"Failed to gracefully kill worker {pid}",
        f"Sending SIGQUIT to worker {pid}",
        f"Worker {pid} ignored SIGQUIT, sending SIGKILL",
    ]
    found = [w for w in warnings if w in steps]
    assert found == steps, warnings
    # SIGUSR1 made the worker print its stacks (relayed) and did not kill it.
    assert "in _stubborn" in capsys.readouterr().out


async def test_a_cooperative_worker_is_removed_without_warnings(
    open_test_cluster: OpenTestCluster, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ref"):
        async with open_test_cluster(2):
            await ref.rmprocs(ref.workers())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
