"""``ElasticManager``: workers started by hand dial the master and join.

The tests play the user: they start ``python -m ref.elastic HOST:PORT``
processes themselves (the command the manager announces), with the cookie
in a file or on stdin, and watch the workers join with pids.  A connection
with a wrong cookie is refused and logged, and nothing it carries is
unpickled.  Everything listens on loopback.
"""

from __future__ import annotations

import logging
import os
import pickle
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from daemons import TAG_VARIABLE, assert_no_workers

import ref
from ref import elastic
from ref.elastic import split_address
from ref.managers import ElasticManager

BOUND = 40.0


@pytest.fixture
def tag(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    value = uuid.uuid4().hex
    monkeypatch.setenv(TAG_VARIABLE, value)
    yield value
    assert_no_workers(value)


def start_worker(command: str, stdin: str | None = None) -> subprocess.Popen[bytes]:
    """Run ``command`` as a user would (its words, no shell)."""
    words = shlex.split(command.split("#")[0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or "." for p in sys.path)}
    process = subprocess.Popen(
        words,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    if stdin is not None:
        assert process.stdin is not None
        process.stdin.write(stdin.encode())
        process.stdin.close()
    return process


async def wait_for_workers(n: int) -> None:
    with trio.fail_after(20):
        while len([p for p in ref.workers() if p != 1]) < n:
            await trio.sleep(0.05)


def reap(processes: list[subprocess.Popen[bytes]]) -> list[int]:
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=15))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append(process.wait())
    return codes


async def test_workers_started_by_hand_join_with_pids(tag: str, tmp_path: Path) -> None:
    announced: list[str] = []
    processes: list[subprocess.Popen[bytes]] = []
    with trio.fail_after(BOUND):
        async with ref.open_cluster():
            manager = ElasticManager(
                cookie_file=tmp_path / "cookie", announce=announced.append
            )
            host, _ = await manager.start()
            assert host == "127.0.0.1"
            [line] = announced
            command = manager.command()
            assert command in line
            assert ref.cluster_cookie() not in command
            assert (tmp_path / "cookie").stat().st_mode & 0o777 == 0o600

            processes.append(start_worker(command))
            await wait_for_workers(1)
            processes.append(start_worker(command))
            await wait_for_workers(2)
            pids = ref.workers()
            assert pids == [2, 3]
            assert sorted(manager.active) == pids
            ospids = {await ref.remotecall_fetch(os.getpid, p) for p in pids}
            assert ospids == {p.pid for p in processes}
            # The new workers reach each other as in any cluster.
            assert await ref.remotecall_fetch(ref.remotecall_fetch, 3, ref.myid, 2) == 2

            await ref.rmprocs(2)
            assert ref.workers() == [3]
            assert sorted(manager.active) == [3]
    assert reap(processes) == [0, 0]


async def test_the_cookie_can_come_on_stdin(tag: str) -> None:
    processes: list[subprocess.Popen[bytes]] = []
    with trio.fail_after(BOUND):
        async with ref.open_cluster():
            manager = ElasticManager(announce=lambda text: None)
            await manager.start()
            command = manager.command()
            assert "stdin" in command
            processes.append(start_worker(command, stdin=ref.cluster_cookie() + "\n"))
            await wait_for_workers(1)
            assert await ref.remotecall_fetch(ref.myid, 2) == 2
    # Closing the cluster closed the worker's connection: it exited.
    assert reap(processes) == [0]


async def test_a_wrong_cookie_is_refused_logged_and_never_unpickled(
    tag: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    evidence = tmp_path / "unpickled"
    payload = pickle.dumps(_Trap(str(evidence)))
    processes: list[subprocess.Popen[bytes]] = []
    with trio.fail_after(BOUND), caplog.at_level(logging.WARNING, logger="ref"):
        async with ref.open_cluster():
            manager = ElasticManager(announce=lambda text: None)
            host, port = await manager.start()

            # A raw peer: a wrong cookie followed by a pickle that would leave
            # evidence if anything loaded it.
            stream = await trio.open_tcp_stream(host, port)
            await stream.send_all(b"W" * 16 + b"distref-1".ljust(16) + payload)
            with trio.fail_after(10):
                while manager.refused < 1:
                    await trio.sleep(0.02)
            await stream.aclose()

            # A real worker with a wrong cookie is turned away and exits.
            processes.append(start_worker(manager.command(), stdin="not-the-cookie\n"))
            with trio.fail_after(15):
                while processes[0].poll() is None:
                    await trio.sleep(0.05)
            assert processes[0].returncode == 1
            assert manager.refused == 2
            assert ref.workers() == [1]
    assert not evidence.exists()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2
    assert all("Invalid connection credentials" in text for text in refusals)


class _Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (self.path, "w"))


async def test_a_fixed_port_and_ipv6_loopback(tag: str) -> None:
    processes: list[subprocess.Popen[bytes]] = []
    port = _free_port_v6()
    with trio.fail_after(BOUND):
        async with ref.open_cluster():
            manager = ElasticManager("::1", port, announce=lambda text: None)
            assert await manager.start() == ("::1", port)
            assert f"[::1]:{port}" in manager.command()
            processes.append(
                start_worker(manager.command(), stdin=ref.cluster_cookie() + "\n")
            )
            await wait_for_workers(1)
            await manager.aclose()
            assert await ref.remotecall_fetch(ref.myid, 2) == 2
    assert reap(processes) == [0]


def _free_port_v6() -> int:
    import socket

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


def test_worker_address_argument_is_checked() -> None:
    assert split_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_address("[::1]:9") == ("::1", 9)
    for bad in ("nohost", "h:0", "h:x", ":5"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            split_address(bad)


@pytest.mark.parametrize("problem", ["missing", "folder", "binary"])
def test_a_cookie_file_that_cannot_be_read_stops_before_any_dialling(
    problem: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "cookie"
    if problem == "folder":
        path.mkdir()
    elif problem == "binary":
        path.write_bytes(b"\xff\xfe\x00cookie\n")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the master was looked for despite the bad cookie file")

    monkeypatch.setattr(elastic, "route_address", never)
    monkeypatch.setattr(elastic, "serve_elastic_worker", never)
    argv = ["127.0.0.1:1", "--cookie-file", str(path)]
    assert elastic.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ref.elastic: cannot read --cookie-file {path}: ")
    assert err.count("\n") == 1, err
