"""Workers started by other means than ``addprocs``: alone, lost, elastic.

These scenarios start worker programs through ``d.probes.run_program``
(the program ``addprocs`` would start, or the elastic one that dials an
``ElasticManager``), so they need ``probes.programs``: a child process on
``ref``, a simulated process on ``sim``.  They watch what a worker prints
and how it exits: without a master, after losing its master, and when it
dials in with a good or a wrong cookie.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import trio

from conformance.registry import scenario
from spec.api import (
    COOKIE_LENGTH,
    VERSION_LENGTH,
    DistributedAPI,
    ElasticManagerAPI,
    RunningProgram,
)

from ._probes import PATIENCE, captured_log, eventually, within
from .handshake import (
    TIMEOUT_VARIABLE,
    PointsAt,
    Tripwire,
    addprocs_outcome,
    send_then_eof,
    until_closed,
    was_unpickled,
)

PROGRAMS = ("probes.programs",)

#: The address line a worker prints once it listens.
ADDRESS_LINE = re.compile(r"distref_worker:(\d+)#(\S+)")


async def _all_output(program: RunningProgram) -> list[str]:
    """Every line the program prints until it ends."""
    lines = []
    while (line := await program.readline()) is not None:
        lines.append(line)
    return lines


async def _address(program: RunningProgram) -> tuple[str, int]:
    seen = []
    while (line := await program.readline()) is not None:
        found = ADDRESS_LINE.fullmatch(line.strip())
        if found is not None:
            return found.group(2), int(found.group(1))
        seen.append(line)
    raise AssertionError(f"the worker ended without an address line: {seen}")


def _wrong(cookie: str) -> str:
    """A cookie of the same length that differs in every character."""
    return "".join("y" if c == "x" else "x" for c in cookie)


@scenario(
    "distref_worker_timeout.worker-exits-if-master-silent",
    "distref_worker_timeout.parsed-as-float-seconds",
    needs=PROGRAMS,
)
async def a_worker_no_master_joins_says_so_and_exits_with_status_one(
    d: DistributedAPI,
) -> None:
    started = d.probes.run_program(
        "worker", stdin=d.cluster_cookie() + "\n", environ={TIMEOUT_VARIABLE: "0.5"}
    )
    async with started as worker:
        with within(PATIENCE, "a worker whose master never comes exiting"):
            output = await _all_output(worker)
            status = await worker.wait()

    assert status == 1, f"the worker exited with status {status}, not 1: {output}"
    said = "Master process (id 1) could not connect within 0.5 seconds."
    where = [n for n, line in enumerate(output) if said in line]
    assert where, f"the worker did not say {said!r}; it printed {output}"
    assert any("exiting." in line for line in output[where[0] + 1 :]), (
        f"the worker did not say 'exiting.' after {said!r}; it printed {output}"
    )


@scenario("workers.exit-when-master-lost", needs=PROGRAMS)
async def a_worker_that_loses_its_master_link_exits_with_status_one(
    d: DistributedAPI,
) -> None:
    async with d.probes.run_program("worker", stdin=d.cluster_cookie() + "\n") as w:
        with within(PATIENCE, "the worker's address line"):
            address = await _address(w)
        with within(PATIENCE, f"addprocs of the worker at {address}"):
            [pid] = await d.addprocs(PointsAt(d, address))
        assert await d.remotecall_fetch(d.myid, pid) == pid

        await d.probes.sever(pid)
        with within(PATIENCE, f"worker {pid} exiting after losing pid 1"):
            status = await w.wait()

    assert status == 1, f"worker {pid} exited with status {status}, not 1"

    async def dropped() -> bool:
        return pid not in d.procs()

    await eventually(dropped, f"the master still lists worker {pid}")


class _Elastic(NamedTuple):
    manager: ElasticManagerAPI
    host: str
    port: int
    #: What its workers are told to dial: HOST:PORT, [HOST]:PORT for IPv6.
    dial: str


async def _start_elastic(d: DistributedAPI) -> _Elastic:
    """A listening ElasticManager and where its workers dial it."""
    manager = d.ElasticManager()
    host, port = await manager.start()
    dial = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return _Elastic(manager, host, port, dial)


@scenario("elastic_manager.workers-dial-in", needs=PROGRAMS)
async def workers_started_by_hand_dial_the_elastic_manager_and_join(
    d: DistributedAPI,
) -> None:
    manager, _, _, dial = await _start_elastic(d)
    cookie = d.cluster_cookie() + "\n"
    try:
        async with (
            d.probes.run_program("elastic", dial, stdin=cookie) as first,
            d.probes.run_program("elastic", dial, stdin=cookie) as second,
        ):

            async def both_joined() -> bool:
                return d.nworkers() == 2

            await eventually(both_joined, "two elastic workers joining")
            pids = d.workers()

            # manage(..., "register") runs in a task of its own once a
            # worker joined (as upstream's does), so it may come a moment
            # after workers() lists the worker.
            async def registered() -> bool:
                return sorted(manager.active) == pids

            await eventually(
                registered,
                f"the manager's active workers never matched workers() {pids}",
            )
            for pid in pids:
                assert await d.remotecall_fetch(d.myid, pid) == pid

            # They stay members until removed.
            await trio.sleep(2.0)
            assert d.workers() == pids, f"workers() went from {pids} to {d.workers()}"
            removal = await d.rmprocs(pids, waitfor=PATIENCE)
            assert removal.done, f"rmprocs({pids}) did not finish"
            with within(PATIENCE, "the elastic workers exiting once removed"):
                await first.wait()
                await second.wait()
    finally:
        await manager.aclose()

    assert d.workers() == [1], f"workers() is {d.workers()} after rmprocs"
    assert not manager.active, f"the manager still lists {sorted(manager.active)}"


@scenario(
    "elastic_manager.wrong-cookie-refused",
    needs=(*PROGRAMS, "probes.raw_streams"),
)
async def the_elastic_manager_refuses_a_wrong_cookie_unread(
    d: DistributedAPI,
) -> None:
    manager, host, port, dial = await _start_elastic(d)
    wrong = _wrong(d.cluster_cookie())
    key = f"elastic-{trio.current_time()!r}-{id(manager)}"
    junk = pickle.dumps(Tripwire(key)) * 4
    hello = wrong.encode("ascii").ljust(COOKIE_LENGTH) + b"1.0".ljust(VERSION_LENGTH)
    try:
        with captured_log(d) as log:
            with within(PATIENCE, "the manager closing a wrong-cookie connection"):
                stream = await d.probes.connect(host, port)
                async with stream:
                    await send_then_eof(stream, hello + junk)
                    answer = await until_closed(stream)
            async with d.probes.run_program(
                "elastic", dial, stdin=wrong + "\n"
            ) as worker:
                with within(PATIENCE, "an elastic worker with a wrong cookie exiting"):
                    status = await worker.wait()
    finally:
        await manager.aclose()

    assert answer == b"", f"the manager answered a wrong cookie with {answer!r}"
    assert status == 1, f"the refused elastic worker exited with status {status}"
    refusals = [line for line in log.warnings() if "refused" in line]
    assert len(refusals) >= 2, (
        f"the manager did not log both refusals; it logged {log.warnings()}"
    )
    assert not was_unpickled(key), "the master unpickled what a refused peer sent"
    assert d.workers() == [1], f"workers() is {d.workers()} after two refusals"


async def _pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    """Copy ``source`` into ``sink``; when either end goes, close both.

    A relay is transparent: a worker that hangs up on it must look, to the
    master, like a worker that hung up.
    """
    try:
        while chunk := await source.receive_some():
            await sink.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await sink.aclose()
            await source.aclose()


@scenario("addprocs.eager-peer-failure-exits", needs=(*PROGRAMS, "probes.raw_streams"))
async def an_eager_worker_that_cannot_reach_a_listed_peer_exits_with_status_one(
    d: DistributedAPI,
) -> None:
    cookie = d.cluster_cookie() + "\n"
    async with (
        d.probes.run_program("worker", stdin=cookie) as low_program,
        d.probes.run_program("worker", stdin=cookie) as high_program,
        d.probes.listen() as relay,
        trio.open_nursery() as nursery,
    ):
        with within(PATIENCE, "the workers' address lines"):
            low_at = await _address(low_program)
            high_at = await _address(high_program)

        # The first worker joins through a relay: the master, and so every
        # later worker, knows it at the relay's address.
        outcome: list[object] = []
        relayed = PointsAt(d, relay.address)
        nursery.start_soon(addprocs_outcome, d, relayed, outcome, False)
        with within(PATIENCE, "the master dialling the relay"):
            from_master = await relay.accept()
            to_low = await d.probes.connect(*low_at)
        nursery.start_soon(_pump, from_master, to_low)
        nursery.start_soon(_pump, to_low, from_master)
        await eventually(_has(outcome), "the relayed worker joining")
        joined = outcome[0]
        assert isinstance(joined, list) and len(joined) == 1, (
            f"the relayed worker did not join: addprocs gave {joined!r}"
        )
        low = int(joined[0])

        # The next eager worker must dial it there; the relay hangs up.
        outcome.clear()
        nursery.start_soon(addprocs_outcome, d, PointsAt(d, high_at), outcome, False)
        with within(PATIENCE, "the second worker dialling its listed peer"):
            refused = await relay.accept()
        await refused.aclose()
        with within(PATIENCE, "the second worker exiting"):
            output = await _all_output(high_program)
            status = await high_program.wait()
        await eventually(_has(outcome), "addprocs of the second worker returning")

        assert status == 1, f"the eager worker exited with {status}: {output}"
        said = f"Error on {low + 1} while connecting to peer {low}, exiting"
        assert any(said in line for line in output), (
            f"the eager worker did not say {said!r}; it printed {output}"
        )
        assert d.workers() == [low], f"workers() is {d.workers()}, not [{low}]"
        assert await d.remotecall_fetch(d.myid, low) == low
        await d.rmprocs(low, waitfor=PATIENCE)
        nursery.cancel_scope.cancel()


def _has(outcome: list[object]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return bool(outcome)

    return probe


@scenario("procs.pid-same-bind-address", needs=PROGRAMS)
async def procs_of_a_worker_started_by_hand_are_those_bound_where_it_is(
    d: DistributedAPI,
) -> None:
    elastic = await _start_elastic(d)
    dial = elastic.dial
    cookie = d.cluster_cookie() + "\n"
    with within(PATIENCE, "addprocs(1)"):
        [local] = await d.addprocs(1)
    async with (
        d.probes.run_program("elastic", dial, stdin=cookie),
        d.probes.run_program("elastic", dial, stdin=cookie),
    ):

        async def all_joined() -> bool:
            return d.nworkers() == 3

        await eventually(all_joined, "two elastic workers joining")
        everyone = d.workers()
        by_hand = [p for p in everyone if p != local]

        # Every worker here listens on the same address (one host), so for a
        # worker the local manager did not start, procs(pid) is every worker
        # bound there, the master excluded; for the local manager's, the
        # master and its workers.
        for p in by_hand:
            assert d.procs(p) == everyone, (
                f"procs({p}) for a worker started by hand is {d.procs(p)}, not "
                f"every worker bound at its address {everyone}"
            )
            seen = await d.remotecall_fetch(d.procs, local, p)
            assert seen == everyone, (
                f"procs({p}) evaluated on worker {local} is {seen}, not {everyone}"
            )
        assert d.procs(local) == [1, local], (
            f"procs({local}) for the local manager's worker is {d.procs(local)}, "
            f"not [1, {local}]"
        )
        removal = await d.rmprocs(everyone, waitfor=PATIENCE)
        assert removal.done, f"rmprocs({everyone}) did not finish"
