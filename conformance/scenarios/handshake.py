"""Joining and connecting: the cookie, the handshake, hostile peers, timeouts.

How a local worker receives the cluster cookie (on stdin, never on its
command line), that it shares the master's cookie and worker timeout, what
the accepting side of a connection answers to a good cookie whatever the
version, and how it refuses a wrong or truncated cookie, or plain garbage,
while it goes on serving its cluster.

The wire-level scenarios speak raw bytes through the backend's probes
(``d.probes``): to the address a worker listens on, or from the master to
an address the scenario listens on, so they need ``probes.raw_streams``.
They send only the fixed-size handshake fields of ``spec.api``, never a
backend's message frames.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import trio
import trio.testing

from conformance.registry import scenario
from spec.api import COOKIE_LENGTH, VERSION_LENGTH, DistributedAPI, LaunchError

from ._probes import (
    PATIENCE,
    LaunchFacts,
    launch_facts,
    logged_here,
    myid_of,
    start_log_capture,
    within,
)
from ._shipped import PerProcess

#: How long a peer is given to show that it sends nothing more.
QUIET = 0.3
#: The environment variable that sets the worker timeout.
TIMEOUT_VARIABLE = "DISTREF_WORKER_TIMEOUT"


@scenario("addprocs.workers-share-master-cookie")
async def workers_know_the_masters_cookie(d: DistributedAPI) -> None:
    cookie = d.cluster_cookie()
    with within(PATIENCE, "addprocs(2)"):
        pids = await d.addprocs(2)
    for pid in pids:
        theirs = await d.remotecall_fetch(d.cluster_cookie, pid)
        assert theirs == cookie, (
            f"cluster_cookie() is {theirs!r} on worker {pid}, {cookie!r} on the master"
        )


@scenario("addprocs.cookie-sent-on-stdin", needs=("real_processes",))
async def the_cookie_reaches_workers_on_stdin_not_their_command_line(
    d: DistributedAPI,
) -> None:
    cookie = d.cluster_cookie().strip().encode("ascii")
    assert len(cookie) >= 8, f"the default cookie {cookie!r} is too short to look for"
    with within(PATIENCE, "addprocs(2)"):
        pids = await d.addprocs(2)
    for pid in pids:
        facts = LaunchFacts(*await d.remotecall_fetch(launch_facts, pid))
        assert cookie not in facts.command_line, (
            f"worker {pid}'s command line carries the cookie: {facts.command_line!r}"
        )
        leaked = [v for v in facts.environment if cookie.decode() in v]
        assert not leaked, f"worker {pid}'s environment carries the cookie: {leaked}"
        assert facts.stdin_is_pipe, (
            f"worker {pid}'s stdin is not a pipe from its launcher"
        )
        theirs = await d.remotecall_fetch(d.cluster_cookie, pid)
        assert theirs.strip().encode("ascii") == cookie, (
            f"worker {pid} holds cookie {theirs!r}, the master {cookie!r}"
        )


@scenario("distref_worker_timeout.default-sixty-seconds")
async def without_the_variable_the_worker_timeout_is_sixty_seconds(
    d: DistributedAPI,
) -> None:
    if os.environ.get(TIMEOUT_VARIABLE, "").strip():
        # Not an assertion: the default cannot be judged here at all.
        raise RuntimeError(
            f"{TIMEOUT_VARIABLE} is set in the environment of this run, so the "
            "default worker timeout cannot be observed; unset it"
        )
    assert d.worker_timeout() == 60.0, (
        f"with {TIMEOUT_VARIABLE} unset the master's worker timeout is "
        f"{d.worker_timeout()!r}, not 60"
    )
    with within(PATIENCE, "addprocs(1)"):
        [pid] = await d.addprocs(1)
    theirs = await d.remotecall_fetch(d.worker_timeout, pid)
    assert theirs == 60.0, f"worker {pid}'s default worker timeout is {theirs!r}"


@scenario("distref_worker_timeout.master-value-reaches-local-workers")
async def workers_use_the_masters_worker_timeout(d: DistributedAPI) -> None:
    # The workers are started with this variable in their environment; they
    # must still agree with the master, whether the master reads the
    # variable afresh (then it is this value) or read it when its cluster
    # opened (then a worker must not take this value over the master's).
    saved = os.environ.get(TIMEOUT_VARIABLE)
    os.environ[TIMEOUT_VARIABLE] = "47.25"
    try:
        with within(PATIENCE, "addprocs(2)"):
            pids = await d.addprocs(2)
        mine = d.worker_timeout()
    finally:
        if saved is None:
            del os.environ[TIMEOUT_VARIABLE]
        else:
            os.environ[TIMEOUT_VARIABLE] = saved
    assert mine > 0, f"the master's worker timeout is {mine!r}"
    for pid in pids:
        theirs = await d.remotecall_fetch(d.worker_timeout, pid)
        assert theirs == mine, (
            f"worker {pid} uses a worker timeout of {theirs!r} s, the master {mine!r} s"
        )


# --------------------------------------------------------- raw handshakes

RAW = ("probes.raw_streams",)


async def _receive(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    """Up to ``count`` bytes: fewer only if the peer closed first."""
    data = b""
    while len(data) < count:
        try:
            chunk = await stream.receive_some(count - len(data))
        except trio.BrokenResourceError:
            break
        if not chunk:
            break
        data += chunk
    return data


async def _after_quiet(stream: trio.abc.ReceiveStream) -> bytes | None:
    """What arrives next: None if nothing within QUIET, b"" if closed."""
    with trio.move_on_after(QUIET):
        try:
            return bytes(await stream.receive_some())
        except trio.BrokenResourceError:
            return b""
    return None


async def until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the peer sends until it closes the connection."""
    data = b""
    try:
        while chunk := await stream.receive_some():
            data += chunk
    except trio.BrokenResourceError:
        pass  # reset: closed with some of our bytes unread
    return data


async def send_then_eof(stream: trio.abc.HalfCloseableStream, data: bytes) -> None:
    """Send ``data`` and end-of-file; a peer that already hung up is fine.

    A peer refusing the connection may close it after reading only part of
    what was sent, and the rest of a write then finds it gone.
    """
    try:
        await stream.send_all(data)
        await stream.send_eof()
    except trio.BrokenResourceError:
        pass


def _version(text: str) -> bytes:
    return text.encode("ascii")[:VERSION_LENGTH].ljust(VERSION_LENGTH, b" ")


# What a process unpickled, per process and per scenario run.
_unpickled: PerProcess[set[str]] = PerProcess(set)


def _note_unpickled(key: str) -> None:
    _unpickled.here().add(key)


def was_unpickled(key: str) -> bool:
    """On the process this runs on: did it unpickle the tripwire ``key``?"""
    return key in _unpickled.here()


class Tripwire:
    """Pickles to bytes that, once unpickled anywhere, record ``key`` there."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_note_unpickled, (self.key,))


@scenario(
    "process_messages.acceptor-replies-version-only",
    "process_messages.version-not-enforced",
    needs=RAW,
)
async def a_worker_answers_the_right_cookie_with_its_version_whatever_ours(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(1)"):
        [pid] = await d.addprocs(1)
    cookie = d.cluster_cookie().encode("ascii")
    assert len(cookie) == COOKIE_LENGTH, f"the cookie {cookie!r} is not 16 bytes"

    # A future version, none at all, and one too long for the field.
    for version in ("99.99.99-future", "", "x" * 40):
        with within(PATIENCE, f"a handshake with version {version!r}"):
            stream = await d.probes.open_stream(pid)
            async with stream:
                await stream.send_all(cookie + _version(version))
                reply = await _receive(stream, VERSION_LENGTH)
                after = await _after_quiet(stream)
        assert len(reply) == VERSION_LENGTH, (
            f"worker {pid} answered a good cookie (our version {version!r}) "
            f"with {reply!r} and closed, not with a {VERSION_LENGTH}-byte version"
        )
        assert reply != cookie, f"worker {pid} answered with the cookie: {reply!r}"
        assert reply.isascii() and reply.decode("ascii").strip(), (
            f"worker {pid}'s version field {reply!r} is not a version string"
        )
        assert after is None, f"after its version field worker {pid} " + (
            "closed the connection" if after == b"" else f"also sent {after!r}"
        )

    with within(PATIENCE, f"a call to worker {pid} after the handshakes"):
        assert await d.remotecall_fetch(d.myid, pid) == pid


@scenario(
    "process_messages.wrong-cookie-refused",
    "process_messages.bad-peer-does-not-disturb-cluster",
    "process_messages.no-unpickling-before-auth",
    needs=RAW,
)
async def a_worker_refuses_bad_cookies_logs_why_and_keeps_serving(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        pid, other = await d.addprocs(2)
    await d.remotecall_fetch(start_log_capture, pid, d.log_name)
    cookie = d.cluster_cookie().encode("ascii")
    wrong = bytes(b ^ 0x20 for b in cookie)
    # Fresh per run: a simulator reuses pids from one run to the next.
    key = f"tripwire-{trio.current_time()!r}-{id(wrong)}"
    # A pickle is a valid stream from its first byte: whatever offset a
    # careless reader started decoding at, these bytes would trip the wire.
    junk = pickle.dumps(Tripwire(key)) * 4

    cases = [
        (
            "a wrong cookie",
            wrong + _version("1.0") + junk,
            "Invalid connection credentials sent by remote.",
        ),
        (
            "a cookie cut short",
            cookie[:5],
            "Cookie read failed. Connection closed by peer.",
        ),
        ("garbage", junk, "Invalid connection credentials sent by remote."),
    ]
    for n, (what, data, reason) in enumerate(cases, start=1):
        with within(PATIENCE, f"worker {pid} closing a connection that sent {what}"):
            stream = await d.probes.open_stream(pid)
            async with stream:
                await send_then_eof(stream, data)
                answer = await until_closed(stream)
        assert answer == b"", (
            f"worker {pid} answered a connection that sent {what} with {answer!r}"
        )
        log = await d.remotecall_fetch(logged_here, pid)
        assert any(reason in line for line in log), (
            f"after {what}, worker {pid} did not log {reason!r}; it logged {log}"
        )
        unknown = [
            line for line in log if "Unknown remote, closing connection." in line
        ]
        assert len(unknown) >= n, (
            f"after {what}, worker {pid} has not logged "
            f"'Unknown remote, closing connection.' for it; it logged {log}"
        )
        assert not await d.remotecall_fetch(was_unpickled, pid, key), (
            f"worker {pid} unpickled bytes from a connection that sent {what}"
        )

    with within(PATIENCE, "calls after the bad connections"):
        assert await d.remotecall_fetch(d.myid, pid) == pid, "the worker lost its pid"
        # A worker-to-worker call still works too.
        assert await d.remotecall_fetch(myid_of, other, d, pid) == pid
    assert set(d.workers()) == {pid, other}, f"workers() became {d.workers()}"
    # The control: those bytes do trip the wire once unpickled on the worker.
    await d.remotecall_fetch(pickle.loads, pid, junk)
    assert await d.remotecall_fetch(was_unpickled, pid, key), (
        f"the tripwire did not fire even when worker {pid} unpickled it"
    )


# -------------------------------------------- the master as the initiator


class PointsAt:
    """A manager reporting one worker at ``address``: the master dials it."""

    def __init__(self, d: DistributedAPI, address: tuple[str, int]) -> None:
        self.d = d
        self.address = address

    async def launch(
        self, params: Mapping[str, Any], launched: list[Any], notify: Any
    ) -> None:
        host, port = self.address
        launched.append(self.d.WorkerConfig(host=host, port=port))
        notify()

    async def manage(self, pid: int, config: Any, op: str) -> None:
        pass


async def addprocs_outcome(
    d: DistributedAPI, manager: PointsAt, outcome: list[object], lazy: bool = True
) -> None:
    """``addprocs(manager)``; what it returned or raised goes to ``outcome``."""
    try:
        outcome.append(await d.addprocs(manager, lazy=lazy))
    except Exception as exc:
        outcome.append(exc)


def _launch_errors(error: object) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _launch_errors(sub)]
    return [error] if isinstance(error, BaseException) else []


@scenario("process_messages.initiator-sends-cookie-then-version", needs=RAW)
async def the_dialling_side_sends_its_cookie_then_a_padded_version(
    d: DistributedAPI,
) -> None:
    cookie = d.cluster_cookie().encode("ascii")
    hello = COOKIE_LENGTH + VERSION_LENGTH
    outcome: list[object] = []
    async with d.probes.listen() as listener, trio.open_nursery() as nursery:
        nursery.start_soon(addprocs_outcome, d, PointsAt(d, listener.address), outcome)
        with within(PATIENCE, "the master dialling the worker it was told of"):
            stream = await listener.accept()
        async with stream:
            with within(PATIENCE, f"the first {hello} bytes from the master"):
                first = await _receive(stream, hello)
        # Closing it unanswered makes the master give up on this "worker".

    assert len(first) == hello, (
        f"the master sent {first!r} and closed, not {hello} bytes of handshake"
    )
    theirs, version = first[:COOKIE_LENGTH], first[COOKIE_LENGTH:]
    assert theirs == cookie, (
        f"the master opened with {theirs!r}, not its cookie {cookie!r}"
    )
    assert version.isascii() and version.decode("ascii").strip(), (
        f"the master's version field {version!r} is not a version string"
    )
    assert not version.startswith(b" ") and b"\x00" not in version, (
        f"the master's version field {version!r} is not right-padded with spaces"
    )
    [result] = outcome
    assert all(isinstance(e, LaunchError) for e in _launch_errors(result)) and (
        _launch_errors(result)
    ), f"addprocs to a silent listener gave {result!r}, not a LaunchError"
    assert d.workers() == [1], f"workers() is {d.workers()} after a failed join"


# ------------------------------------------------------- launch time-outs

#: Enough for the default 60 s worker timeout, twice over, on virtual time.
LONG_WAIT = 150.0


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    """Read and drop what arrives, never answering, until it closes."""
    await until_closed(stream)


@scenario("addprocs.join-timeout", needs=(*RAW, "virtual_time"), min_timeout=LONG_WAIT)
async def a_worker_that_never_completes_its_join_times_out(d: DistributedAPI) -> None:
    timeout = d.worker_timeout()
    outcome: list[object] = []
    async with d.probes.listen() as listener, trio.open_nursery() as nursery:
        nursery.start_soon(addprocs_outcome, d, PointsAt(d, listener.address), outcome)
        with within(PATIENCE, "the master dialling the worker it was told of"):
            stream = await listener.accept()
        async with stream:
            # Accepted and read, never answered: the join cannot complete.
            with trio.move_on_after(timeout * 2):
                nursery.start_soon(_drain, stream)
                while not outcome:
                    await trio.sleep(timeout / 10)
            nursery.cancel_scope.cancel()

    assert outcome, f"addprocs was still waiting {timeout * 2:g} s later"
    [result] = outcome
    errors = _launch_errors(result)
    assert errors and all(isinstance(e, LaunchError) for e in errors), (
        f"a join that never completed gave {result!r}, not a LaunchError"
    )
    words = f"did not connect within {timeout:g} seconds"
    assert any(words in str(e) for e in errors), (
        f"the LaunchError does not say {words!r}: {errors}"
    )
    assert any("worker 2 " in str(e) for e in errors), (
        f"the LaunchError does not name worker 2: {errors}"
    )
    assert d.workers() == [1], f"workers() is {d.workers()} after a failed join"


class _Mute:
    """A manager whose one worker never prints its address line."""

    def __init__(self, d: DistributedAPI) -> None:
        self.d = d
        self.outputs: list[trio.abc.SendStream] = []

    async def launch(
        self, params: Mapping[str, Any], launched: list[Any], notify: Any
    ) -> None:
        send, receive = trio.testing.memory_stream_one_way_pair()
        # Kept open and never written: the worker is silent, not gone.
        self.outputs.append(send)
        launched.append(self.d.WorkerConfig(io=receive))
        notify()

    async def manage(self, pid: int, config: Any, op: str) -> None:
        pass


@scenario(
    "addprocs.address-line-timeout", needs=("virtual_time",), min_timeout=LONG_WAIT
)
async def a_worker_that_prints_no_address_times_out(d: DistributedAPI) -> None:
    timeout = d.worker_timeout()
    manager = _Mute(d)
    try:
        with within(timeout * 2, "addprocs with a silent worker"):
            await d.addprocs(manager)
    except Exception as exc:
        errors = _launch_errors(exc)
    else:
        raise AssertionError("addprocs returned for a worker that printed nothing")
    finally:
        for output in manager.outputs:
            await output.aclose()

    assert errors and all(isinstance(e, LaunchError) for e in errors), (
        f"a silent worker gave {errors!r}, not a LaunchError"
    )
    words = "Timed out waiting to read host:port string from worker."
    assert any(words.rstrip(".") in str(e) for e in errors), (
        f"the LaunchError does not say {words!r}: {errors}"
    )
    assert d.workers() == [1], f"workers() is {d.workers()} after a silent launch"
