"""``SlurmManager`` against a real single-node Slurm started by the tests.

The fixture runs munged, slurmctld and slurmd in the foreground as children
of the test process (launchers.md's recipe: a private ``slurm.conf`` with
free ports on 127.0.0.1 and a dummy cgroup tree), waits until the node is
idle, and stops them by pid afterwards (slurmd first).  The master runs
inside an allocation as users do: in this process under ``salloc
--no-shell`` (``SLURM_JOB_ID`` set), under ``salloc`` as a script, and as an
``sbatch`` job.  Every worker carries a tag in its environment; none may
outlive its test.

Skipped, with the reason, where Slurm is not installed or its daemons
cannot start.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from daemons import (
    TAG_VARIABLE,
    SlurmCluster,
    Unavailable,
    assert_no_workers,
    start_slurm,
    stop_slurm,
)

import ref
from ref.managers import SlurmManager
from spec.api import LaunchError, LaunchErrorGroup

pytestmark = pytest.mark.cluster

BOUND = 60.0


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[SlurmCluster]:
    """A single-node Slurm for this test; its daemons stopped by pid after."""
    try:
        cluster = start_slurm(tmp_path / "slurm")
    except Unavailable as exc:
        pytest.skip(str(exc))
    yield cluster
    stop_slurm(cluster)


@pytest.fixture
def tag(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    value = uuid.uuid4().hex
    monkeypatch.setenv(TAG_VARIABLE, value)
    yield value
    assert_no_workers(value)


def slurm_run(
    slurm: SlurmCluster, argv: list[str], **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]  # kw are run()'s
        argv, env=slurm.env, capture_output=True, text=True, timeout=60, **kw
    )


@pytest.fixture
def allocation(slurm: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A two-task allocation that this process runs inside, cancelled after."""
    done = slurm_run(slurm, ["salloc", "--no-shell", "-n", "2", "-J", "distref-test"])
    found = re.search(r"Granted job allocation (\d+)", done.stderr)
    assert found, f"salloc did not grant an allocation: {done.stderr}"
    job = found.group(1)
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    monkeypatch.setenv("SLURM_JOB_ID", job)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    yield job
    slurm_run(slurm, ["scancel", job])


def tasks_of(slurm: SlurmCluster, job: str) -> str:
    return slurm_run(slurm, ["squeue", "-h", "-s", "-j", job]).stdout


async def test_one_worker_per_task_joins_as_it_reports(
    slurm: SlurmCluster, allocation: str, tag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(BOUND):
        async with ref.open_cluster() as cluster:
            manager = SlurmManager()
            pids = await ref.addprocs(manager)
            assert pids == [2, 3]
            ranks = set()
            for pid in pids:
                env = await ref.remotecall_fetch(_slurm_env, pid)
                assert env["SLURM_JOB_ID"] == allocation
                ranks.add(env["SLURM_PROCID"])
                assert env["OPENBLAS_NUM_THREADS"] == "1"
                await ref.remotecall_fetch(print, pid, f"hello from {pid}")
                config = cluster.master.managed[pid].config
                assert config.ospid == env["pid"]
                assert config.connect_at == ("127.0.0.1", config.port)
            assert ranks == {"0", "1"}
            # The cookie never reaches a command line.
            step = manager._steps[0].process
            cookie = ref.cluster_cookie().encode()
            assert cookie not in Path(f"/proc/{step.pid}/cmdline").read_bytes()
            await trio.sleep(0.5)
            await ref.rmprocs(pids)
            with trio.fail_after(20):
                await step.wait()
    out = capsys.readouterr().out
    assert "      From worker 2:\thello from 2\n" in out
    assert "      From worker 3:\thello from 3\n" in out


def _slurm_env() -> dict[str, object]:
    return {**os.environ, "pid": os.getpid()}


async def test_fewer_tasks_than_the_allocation_and_a_failing_step(
    slurm: SlurmCluster, allocation: str, tag: str
) -> None:
    with trio.fail_after(BOUND):
        async with ref.open_cluster():
            [pid] = await ref.addprocs(SlurmManager(ntasks=1))
            assert await ref.remotecall_fetch(ref.myid, pid) == pid
            # A step whose program cannot run fails each task with
            # upstream's meaning; the worker already there stays.
            with pytest.raises(LaunchErrorGroup) as caught:
                await ref.addprocs(SlurmManager(ntasks=1), exename="/nonexistent")
            [error] = caught.value.exceptions
            assert "Unable to read host:port" in str(error)
            assert ref.workers() == [pid]


async def test_outside_an_allocation_addprocs_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOBID", raising=False)
    async with ref.open_cluster():
        with pytest.raises(LaunchError, match="sbatch or salloc"):
            await ref.addprocs(SlurmManager())
        assert ref.workers() == [1]


MASTER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, trio, ref

    def rank():
        return os.environ.get("SLURM_PROCID")

    async def main():
        async with ref.open_cluster():
            pids = await ref.addprocs(ref.SlurmManager())
            ranks = [await ref.remotecall_fetch(rank, p) for p in pids]
            print(json.dumps({"pids": pids, "ranks": sorted(ranks)}), flush=True)

    trio.run(main)
    """
)


def test_a_master_run_under_salloc_starts_its_workers(
    slurm: SlurmCluster, tag: str, tmp_path: Path
) -> None:
    script = tmp_path / "master.py"
    script.write_text(MASTER_SCRIPT)
    done = slurm_run(
        slurm,
        ["salloc", "-n", "2", "-J", "distref-master", sys.executable, str(script)],
        cwd=os.getcwd(),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"pids": [2, 3], "ranks": ["0", "1"]}


def test_a_master_submitted_with_sbatch_runs_to_completion(
    slurm: SlurmCluster, tag: str, tmp_path: Path
) -> None:
    script = tmp_path / "master.py"
    script.write_text(MASTER_SCRIPT)
    batch = tmp_path / "job.sbatch"
    batch.write_text(
        f"#!/bin/sh\n#SBATCH -n 2\n#SBATCH -J distref-batch\n"
        f"exec {sys.executable} {script}\n"
    )
    out = tmp_path / "job.out"
    done = slurm_run(
        slurm,
        [
            "sbatch",
            "--parsable",
            f"--output={out}",
            f"--chdir={os.getcwd()}",
            str(batch),
        ],
    )
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        state = slurm_run(slurm, ["scontrol", "show", "job", job]).stdout
        if "JobState=COMPLETED" in state or "JobState=FAILED" in state:
            break
        time.sleep(0.2)
    assert "JobState=COMPLETED" in state, f"{state}\n{out.read_text()}"
    result = json.loads(out.read_text().strip().splitlines()[-1])
    assert result == {"pids": [2, 3], "ranks": ["0", "1"]}
