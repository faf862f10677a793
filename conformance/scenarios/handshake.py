"""Joining and connecting: the cookie, the handshake, hostile peers, timeouts.

How a local worker receives the cluster cookie (on stdin, never on its
command line), that it shares the master's cookie and worker timeout, what
the accepting side of a connection answers to a good cookie whatever the
version, and how it refuses a wrong or truncated cookie, or plain garbage,
while it goes on serving its cluster.

The wire-level scenarios speak raw bytes to a worker's listening socket on
loopback, found by listing the worker's own sockets, so they need
``real_processes``.  They send only the fixed-size handshake fields of
``spec.api``, never a backend's message frames.
"""

from __future__ import annotations

import os

import trio

from conformance.registry import scenario
from spec.api import COOKIE_LENGTH, VERSION_LENGTH, DistributedAPI

from ._probes import (
    PATIENCE,
    Address,
    LaunchFacts,
    Sockets,
    launch_facts,
    logged_here,
    myid_of,
    only_listening_address,
    start_log_capture,
    tcp_sockets,
    within,
)

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


async def _listening_address(d: DistributedAPI, pid: int) -> Address:
    with within(PATIENCE, f"listing worker {pid}'s sockets"):
        found = Sockets(*await d.remotecall_fetch(tcp_sockets, pid))
    return only_listening_address(found)


async def _receive(stream: trio.SocketStream, count: int) -> bytes:
    """Up to ``count`` bytes: fewer only if the peer closed first."""
    data = b""
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def _after_quiet(stream: trio.SocketStream) -> bytes | None:
    """What arrives next: None if nothing within QUIET, b"" if closed."""
    with trio.move_on_after(QUIET):
        try:
            return await stream.receive_some()
        except trio.BrokenResourceError:
            return b""
    return None


async def _until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the peer sends until it closes the connection."""
    data = b""
    try:
        while chunk := await stream.receive_some():
            data += chunk
    except trio.BrokenResourceError:
        pass  # reset: closed with some of our bytes unread
    return data


def _version(text: str) -> bytes:
    return text.encode("ascii")[:VERSION_LENGTH].ljust(VERSION_LENGTH, b" ")


@scenario(
    "process_messages.acceptor-replies-version-only",
    "process_messages.version-not-enforced",
    needs=("real_processes",),
)
async def a_worker_answers_the_right_cookie_with_its_version_whatever_ours(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(1)"):
        [pid] = await d.addprocs(1)
    host, port = await _listening_address(d, pid)
    cookie = d.cluster_cookie().encode("ascii")
    assert len(cookie) == COOKIE_LENGTH, f"the cookie {cookie!r} is not 16 bytes"

    # A future version, none at all, and one too long for the field.
    for version in ("99.99.99-future", "", "x" * 40):
        with within(PATIENCE, f"a handshake with version {version!r}"):
            stream = await trio.open_tcp_stream(host, port)
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
    needs=("real_processes",),
)
async def a_worker_refuses_bad_cookies_logs_why_and_keeps_serving(
    d: DistributedAPI,
) -> None:
    with within(PATIENCE, "addprocs(2)"):
        pid, other = await d.addprocs(2)
    await d.remotecall_fetch(start_log_capture, pid, d.log_name)
    host, port = await _listening_address(d, pid)
    cookie = d.cluster_cookie().encode("ascii")
    wrong = bytes(b ^ 0x20 for b in cookie)
    junk = b"\x80\x05not a frame of any kind\x00" * 4

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
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(data)
                await stream.send_eof()
                answer = await _until_closed(stream)
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

    with within(PATIENCE, "calls after the bad connections"):
        assert await d.remotecall_fetch(d.myid, pid) == pid, "the worker lost its pid"
        # A worker-to-worker call still works too.
        assert await d.remotecall_fetch(myid_of, other, d, pid) == pid
    assert set(d.workers()) == {pid, other}, f"workers() became {d.workers()}"
