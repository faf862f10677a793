"""``SlurmManager``: one worker per task of the Slurm allocation it runs in.

After SlurmClusterManager.jl: the master runs inside an allocation (a batch
script under ``sbatch``, or ``salloc``), and ``addprocs(SlurmManager())``
starts one ``srun`` job step with one worker per task of the allocation.
Every task's output comes back through srun's standard output, labelled
with the task's rank (``srun --label``); the master reads each task's
address line from there, sets that worker up as soon as it appears, and
afterwards relays each worker's output with its pid.

* The cookie is written once to srun's stdin, which ``--input=all`` hands
  to every task; the tasks keep that stdin open, so every worker exits
  when the step's srun (and so the master) is gone.
* Each task listens on the address that routes from its node to the master
  (``master_addr``, by default the master's own address; give the master's
  cluster-network address when the allocation spans several nodes).
* A task that prints no address line fails with upstream's meanings (the
  step ended first, 1000 other lines, the worker timeout); the others join.
* When the last worker of the step has gone, srun is given a few seconds to
  finish, then terminated (which ends any task still running).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from spec.api import LaunchError, LaunchErrorGroup

from .._context import current_process
from .._local import worker_environment
from .._startup import MAX_STARTUP_LINES, LineReader, parse_address, write_stdout
from ._base import ClusterManager, Notify, WorkerConfig

log = logging.getLogger("ref")

_LABELLED = re.compile(r"^\s*(\d+): ?(.*)$")

#: Seconds srun may take to finish after its last worker left.
STEP_GRACE = 5.0


class SlurmManager(ClusterManager):
    """Starts one worker per Slurm task with ``srun``, inside an allocation.

    ``ntasks`` defaults to the allocation's ``SLURM_NTASKS``; ``srun`` is
    the program to run and ``srun_flags`` extra options for it (a
    partition, ``--mem-per-cpu``...).  ``master_addr`` is the address the
    tasks route toward to pick the address they listen on.
    """

    def __init__(
        self,
        ntasks: int | None = None,
        *,
        srun: str = "srun",
        srun_flags: Sequence[str] = (),
        master_addr: str | None = None,
        job_name: str = "distref-workers",
    ) -> None:
        if ntasks is not None and (
            not isinstance(ntasks, int) or isinstance(ntasks, bool) or ntasks < 1
        ):
            raise ValueError(f"SlurmManager: ntasks={ntasks!r} must be a positive int")
        self.ntasks = ntasks
        self.srun = srun
        self.srun_flags = tuple(srun_flags)
        self.master_addr = master_addr
        self.job_name = job_name
        self._steps: list[_Step] = []

    def __repr__(self) -> str:
        return f"SlurmManager(ntasks={self.ntasks!r})"

    def _task_count(self) -> int:
        if "SLURM_JOB_ID" not in os.environ and "SLURM_JOBID" not in os.environ:
            raise LaunchError(
                "SlurmManager: not inside a Slurm allocation (SLURM_JOB_ID is not "
                "set); run the master with sbatch or salloc"
            )
        if self.ntasks is not None:
            return self.ntasks
        text = os.environ.get("SLURM_NTASKS") or os.environ.get("SLURM_NPROCS")
        if not text or not text.isdigit():
            raise LaunchError(
                "SlurmManager: SLURM_NTASKS is not set; ask the allocation for "
                "tasks (sbatch -n N) or give SlurmManager(ntasks=N)"
            )
        return int(text)

    def command(self, params: Mapping[str, Any], ntasks: int) -> list[str]:
        """The srun command line that starts the workers."""
        toward = self.master_addr or current_process().host
        return [
            self.srun,
            "--exact",
            "--input=all",
            "--label",
            "--kill-on-bad-exit=0",
            f"--ntasks={ntasks}",
            f"--job-name={self.job_name}",
            f"--chdir={params['dir']}",
            *self.srun_flags,
            params["exename"],
            *params["exeflags"],
            "-m",
            "ref.managers.slurm_task",
            "--toward",
            toward,
        ]

    async def launch(
        self,
        params: Mapping[str, Any],
        launched: list[WorkerConfig],
        notify: Notify,
    ) -> None:
        """Run the step; report each task's worker as its address appears."""
        ntasks = self._task_count()
        proc = current_process()
        argv = self.command(params, ntasks)
        env = worker_environment(
            params["env"],
            threaded_blas=params["enable_threaded_blas"],
            base=os.environ,
        )
        try:
            process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise LaunchError(
                f"SlurmManager: could not run {self.srun!r}: {exc}"
            ) from exc
        assert process.stdin is not None and process.stdout is not None
        step = _Step(process, LineReader(process.stdout), ntasks)
        self._steps.append(step)
        # If srun failed already, its output says why.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await process.stdin.send_all(f"{proc.cookie}\n".encode("ascii"))

        failures = await step.read_addresses(proc.worker_timeout, launched, notify)
        proc.spawn(step.relay)
        if failures:
            step.release(len(failures))
            raise LaunchErrorGroup(
                f"{len(failures)} of {ntasks} Slurm tasks did not start a worker",
                failures,
            )

    async def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """Map the task to its pid; interrupt local tasks; end the step at last."""
        step, rank = _step_of(config)
        if step is None or rank is None:
            return
        if op == "register":
            step.pids[rank] = pid
        elif op == "interrupt":
            _interrupt_local(pid, config)
        elif op == "finalize":
            step.release(1)


def _step_of(config: WorkerConfig) -> tuple[_Step | None, int | None]:
    data = config.userdata
    if isinstance(data, dict) and isinstance(data.get("step"), _Step):
        return data["step"], data.get("rank")
    return None, None


def _interrupt_local(pid: int, config: WorkerConfig) -> None:
    host = config.host or ""
    if config.ospid is None or not (host.startswith("127.") or host == "::1"):
        log.warning("Worker %d cannot be presently interrupted.", pid)
        return
    try:
        os.kill(config.ospid, signal.SIGINT)
    except ProcessLookupError:
        log.warning("Worker %d cannot be presently interrupted.", pid)


class _Step:
    """One srun job step: its output, its tasks' pids, its lifetime."""

    def __init__(self, process: trio.Process, reader: LineReader, ntasks: int) -> None:
        self.process = process
        self.reader = reader
        self.ntasks = ntasks
        self.pids: dict[int, int] = {}
        self._remaining = ntasks
        self._early: list[tuple[int, str]] = []

    async def read_addresses(
        self, timeout: float, launched: list[WorkerConfig], notify: Notify
    ) -> list[LaunchError]:
        """Read labelled lines until every task announced itself, or failed."""
        found: set[int] = set()
        others: dict[int, int] = {}
        failures: list[LaunchError] = []
        reason = (
            "Unable to read host:port string from worker. "
            "Launch command exited with error?"
        )
        with trio.move_on_after(timeout) as waited:
            while len(found) + len(failures) < self.ntasks:
                line = await self.reader.readline()
                if line is None:
                    break
                labelled = _LABELLED.match(line)
                rank, text = (int(labelled[1]), labelled[2]) if labelled else (-1, line)
                address = parse_address(text) if rank not in found else None
                if address is None or rank < 0:
                    write_stdout(f"\tFrom worker startup:\t{line}\n")
                    others[rank] = others.get(rank, 0) + 1
                    if rank >= 0 and others[rank] == MAX_STARTUP_LINES:
                        failures.append(_junk_error())
                    continue
                found.add(rank)
                launched.append(self._config(rank, *address))
                notify()
        if waited.cancelled_caught:
            reason = (
                "Timed out waiting to read host:port string from worker "
                f"(waited {timeout:g} s; raise DISTREF_WORKER_TIMEOUT if needed)."
            )
        missing = self.ntasks - len(found) - len(failures)
        failures += [LaunchError(reason) for _ in range(missing)]
        return failures

    def _config(self, rank: int, host: str, port: int) -> WorkerConfig:
        return WorkerConfig(
            host=host,
            port=port,
            bind_addr=host,
            userdata={"step": self, "rank": rank},
        )

    async def relay(self) -> None:
        """Relay the tasks' further output with their pids."""
        while (line := await self.reader.readline()) is not None:
            labelled = _LABELLED.match(line)
            pid = self.pids.get(int(labelled[1])) if labelled else None
            if labelled and pid is not None:
                write_stdout(f"      From worker {pid}:\t{labelled[2]}\n")
            else:
                write_stdout(f"      From srun:\t{line}\n")

    def release(self, count: int) -> None:
        """``count`` workers are gone; after the last, end srun."""
        self._remaining -= count
        if self._remaining <= 0:
            current_process().spawn(self._finish)

    async def _finish(self) -> None:
        process = self.process
        with trio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()
            with trio.move_on_after(STEP_GRACE):
                await process.wait()
            if process.returncode is None:
                process.terminate()
                with trio.move_on_after(STEP_GRACE):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def _junk_error() -> LaunchError:
    return LaunchError(
        "Unexpected output from worker launch command. Host:port string not found."
    )
