"""The probes on the simulator: raw streams, programs started by hand, severing.

``ref.probes`` works through the runtime's seams (the master's transport,
the launcher's ``run_program``), so on the simulator a raw stream is a
simulated connection of the master's node and a program is a new node
running the real worker code.  These tests pin that down; the conformance
scenarios in ``handshake.py`` and ``programs.py`` use the same probes on
both backends.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

import ref
import sim
from ref._seams import Program, RunningProgram
from spec.api import COOKIE_LENGTH, VERSION_LENGTH

HELLO = COOKIE_LENGTH + VERSION_LENGTH


def _events(path: Path, kind: str) -> list[dict[str, object]]:
    lines = path.read_text().splitlines()[1:]
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


async def _exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    data = b""
    while len(data) < count and (chunk := await stream.receive_some(count - len(data))):
        data += chunk
    return data


async def _lines(program: RunningProgram) -> list[str]:
    found = []
    while (line := await program.readline()) is not None:
        found.append(line)
    return found


class PointsAt:
    """A manager reporting one worker at ``address``: the master dials it."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address

    async def launch(
        self, params: object, launched: list[object], notify: Callable[[], None]
    ) -> None:
        host, port = self.address
        launched.append(ref.WorkerConfig(host=host, port=port))
        notify()

    async def manage(self, pid: int, config: object, op: str) -> None:
        pass


def test_a_raw_stream_reaches_a_simulated_worker_from_the_master(
    tmp_path: Path,
) -> None:
    async def main() -> bytes:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            stream = await ref.probes.open_stream(pid)
            async with stream:
                cookie = ref.cluster_cookie().encode("ascii")
                await stream.send_all(cookie + b"someone".ljust(VERSION_LENGTH))
                return await _exactly(stream, VERSION_LENGTH)

    trace = tmp_path / "trace.jsonl"
    reply = sim.run(main, seed=1, trace=trace)
    assert len(reply) == VERSION_LENGTH and reply.strip()
    # The master's runtime link, then the probe's connection, both from pid 1.
    connects = _events(trace, "connect")
    assert [c["src"] for c in connects] == [1, 1]


def test_the_probe_listener_hears_what_the_master_dials_with() -> None:
    async def main() -> tuple[bytes, str, list[int]]:
        async with sim.open_cluster():
            async with ref.probes.listen() as listener, trio.open_nursery() as nursery:
                nursery.start_soon(_quietly, ref.addprocs, PointsAt(listener.address))
                stream = await listener.accept()
                async with stream:
                    hello = await _exactly(stream, HELLO)
            return hello, ref.cluster_cookie(), ref.workers()

    hello, cookie, workers = sim.run(main, seed=2)
    assert hello[:COOKIE_LENGTH] == cookie.encode("ascii")
    assert len(hello) == HELLO
    assert workers == [1]


async def _quietly(fn: Callable[..., Awaitable[object]], *args: object) -> None:
    # The failed join is not what these tests look at.
    with contextlib.suppress(Exception):
        await fn(*args)


def test_a_worker_program_announces_itself_then_gives_up_on_its_master(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[list[str], int, float]:
        async with sim.open_cluster():
            began = trio.current_time()
            started = ref.probes.run_program(
                "worker",
                stdin=ref.cluster_cookie() + "\n",
                environ={"DISTREF_WORKER_TIMEOUT": "2.5"},
            )
            async with started as program:
                lines = await _lines(program)
                code = await program.wait()
            return lines, code, trio.current_time() - began

    trace = tmp_path / "trace.jsonl"
    lines, code, took = sim.run(main, seed=3, trace=trace)
    assert lines[0].startswith("distref_worker:") and lines[0].endswith("#sim")
    assert "ref: Master process (id 1) could not connect within 2.5 seconds." in lines
    assert lines[-1] == "ref: exiting."
    assert code == 1
    # Virtual time: the worker waited out its own timeout, not the master's.
    assert 2.5 <= took < 60
    [started] = _events(trace, "program")
    assert started["program"] == "worker"
    assert [e["code"] for e in _events(trace, "exit")] == [1]


def test_a_program_with_a_bad_timeout_says_so_and_exits_with_status_2() -> None:
    async def main() -> tuple[list[str], int]:
        async with sim.open_cluster():
            started = ref.probes.run_program(
                "worker", stdin="c\n", environ={"DISTREF_WORKER_TIMEOUT": "soon"}
            )
            async with started as program:
                return await _lines(program), await program.wait()

    lines, code = sim.run(main, seed=4)
    assert code == 2
    assert len(lines) == 1 and "DISTREF_WORKER_TIMEOUT='soon'" in lines[0]


def test_an_elastic_program_joins_and_leaving_the_block_kills_it() -> None:
    async def main() -> tuple[list[int], int, list[int]]:
        async with sim.open_cluster():
            manager = ref.ElasticManager()
            host, port = await manager.start()
            dial = f"{host}:{port}"
            stdin = ref.cluster_cookie() + "\n"
            async with ref.probes.run_program("elastic", dial, stdin=stdin) as program:
                while ref.nprocs() < 2:
                    await trio.sleep(0.1)
                joined = ref.workers()
                answers = [await ref.remotecall_fetch(ref.myid, p) for p in joined]
                assert answers == joined
            code = await program.wait()
            await manager.aclose()
            while ref.nprocs() > 1:
                await trio.sleep(0.1)
            return joined, code, ref.workers()

    joined, code, after = sim.run(main, seed=5)
    assert joined == [2]
    assert code == -9  # killed, as trio reports SIGKILL
    assert after == [1]


def test_severing_the_master_link_makes_the_worker_exit_with_status_1() -> None:
    async def main() -> tuple[int, list[int]]:
        async with sim.open_cluster():
            stdin = ref.cluster_cookie() + "\n"
            async with ref.probes.run_program("worker", stdin=stdin) as program:
                line = await program.readline()
                assert line is not None
                port, _, host = line.removeprefix("distref_worker:").partition("#")
                [pid] = await ref.addprocs(PointsAt((host, int(port))))
                await ref.probes.sever(pid)
                code = await program.wait()
            while pid in ref.procs():
                await trio.sleep(0.1)
            return code, ref.procs()

    code, procs = sim.run(main, seed=6)
    assert code == 1
    assert procs == [1]


def test_a_program_of_an_unknown_kind_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="kind='shell'"):
        Program("shell")


def test_probes_are_for_the_master_only() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            with pytest.raises(ref.RemoteException) as raised:
                await ref.remotecall_fetch(_listen_here, pid)
            assert isinstance(raised.value.exception, ref.NotMasterError)

    sim.run(main, seed=7)


async def _listen_here() -> None:
    async with ref.probes.listen():
        pass


def test_a_run_with_programs_and_probes_is_the_same_run_for_the_same_seed(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with sim.open_cluster():
            [pid] = await ref.addprocs(1)
            stream = await ref.probes.open_stream(pid)
            await stream.aclose()
            started = ref.probes.run_program(
                "worker", stdin="x\n", environ={"DISTREF_WORKER_TIMEOUT": "1"}
            )
            async with started as program:
                await program.wait()

    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    sim.run(main, seed=8, trace=first)
    sim.run(main, seed=8, trace=second)
    assert first.read_bytes() == second.read_bytes()


def test_open_stream_refuses_the_master_and_unknown_pids() -> None:
    async def main() -> None:
        async with sim.open_cluster():
            with pytest.raises(ValueError, match="pid=1 is the master"):
                await ref.probes.open_stream(1)
            with pytest.raises(ref.NoSuchProcessError):
                await ref.probes.open_stream(7)

    sim.run(main, seed=9)
