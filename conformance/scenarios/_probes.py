"""Probes and helpers for the membership, handshake and removal scenarios.

Functions that run on workers travel by reference, so they live here at
module level; their state (``_state``, ``_worker_log``) is kept per process
(``PerProcess``), which holds also where a simulator runs every process in
one interpreter.  A probe
that must call back into the cluster receives the API object ``d``.

Some probes look at the operating system of the process they run in
(``/proc/self``, its sockets, its stdin): scenarios that ship them declare
``needs=("real_processes",)``, meaning workers are OS processes on this
machine, children of the process that runs the scenario.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import trio

from spec.api import DistributedAPI, ProcessExitedException

from ._shipped import PerProcess

#: Seconds a wait that should succeed may take before the scenario fails.
PATIENCE = 10.0

Address = tuple[str, int]

# ----------------------------------------------------------------- waiting


@contextlib.contextmanager
def within(seconds: float, what: str) -> Iterator[None]:
    """Run the block under a deadline; running out is an assertion failure."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise AssertionError(f"{what}: not done within {seconds:g} s") from None


async def eventually(
    probe: Callable[[], Awaitable[bool]], what: str, timeout: float = PATIENCE
) -> None:
    """Poll ``probe`` until it returns True; fail with ``what`` otherwise."""
    with trio.move_on_after(timeout):
        while not await probe():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"{what}: still not so after {timeout:g} s")


async def assert_exited(d: DistributedAPI, pid: int) -> None:
    """A call to ``pid`` must fail at once with ProcessExitedException(pid)."""
    try:
        with trio.fail_after(5):
            answer = await d.remotecall_fetch(d.myid, pid)
    except ProcessExitedException as exc:
        assert exc.worker_id == pid, (
            f"a call to removed pid {pid} raised ProcessExitedException "
            f"naming {exc.worker_id}"
        )
    except trio.TooSlowError:
        raise AssertionError(f"a call to removed pid {pid} hung") from None
    else:
        raise AssertionError(f"removed pid {pid} still answered a call: {answer!r}")


# ------------------------------------------------------------ log capture


class LogRecords(logging.Handler):
    """Collects what is logged on one logger while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self) -> list[str]:
        """The messages logged at WARNING or above."""
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@contextlib.contextmanager
def captured_log(d: DistributedAPI) -> Iterator[LogRecords]:
    """Collect what this process logs on ``d.log_name`` during the block.

    The logger is opened to WARNING for the block if it was set quieter, so
    that a warning cannot be lost before it reaches the collector.
    """
    logger = logging.getLogger(d.log_name)
    handler = LogRecords()
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


_worker_log: PerProcess[list[str]] = PerProcess(list)
_worker_capturing: set[int] = set()
_worker_handler: logging.Handler | None = None


class _WorkerCollector(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        # The line belongs to the process whose task logged it, even where
        # processes share an interpreter and so this handler.
        if os.getpid() in _worker_capturing:
            _worker_log.here().append(record.getMessage())


def start_log_capture(log_name: str) -> None:
    """On the process this runs on: collect what ``log_name`` logs from now.

    What an earlier capture in this process collected is dropped.
    """
    global _worker_handler
    _worker_log.here().clear()
    _worker_capturing.add(os.getpid())
    logger = logging.getLogger(log_name)
    if _worker_handler is None:
        _worker_handler = _WorkerCollector(logging.DEBUG)
    if _worker_handler not in logger.handlers:
        logger.addHandler(_worker_handler)
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)


def logged_here() -> list[str]:
    """What ``start_log_capture`` collected on the process this runs on."""
    return list(_worker_log.here())


# ------------------------------------------------------------ plain probes


def membership_view(d: DistributedAPI) -> tuple[list[int], list[int], int, int]:
    """``(procs(), workers(), nprocs(), nworkers())`` where this runs."""
    return d.procs(), d.workers(), d.nprocs(), d.nworkers()


async def myid_of(d: DistributedAPI, pid: int) -> int:
    """From where this runs, ask ``pid`` for its ``myid()``."""
    answer: int = await d.remotecall_fetch(d.myid, pid)
    return answer


_state: PerProcess[dict[str, str]] = PerProcess(dict)


def set_state(key: str, value: str) -> None:
    """Set module-level state in the process this runs on."""
    _state.here()[key] = value


def get_state(key: str) -> str | None:
    """Module-level state of the process this runs on, None if unset."""
    return _state.here().get(key)


def forget_state(key: str) -> None:
    _state.here().pop(key, None)


def hold_without_yielding(seconds: float) -> None:
    """Keep the process this runs on busy: a call that never yields.

    Like a long computation, it keeps the process from handling any other
    message (an exit request included) until it returns.
    """
    time.sleep(seconds)


# --------------------------------------------------- operating-system probes


def ospid() -> int:
    """The OS pid of the process this runs on."""
    return os.getpid()


class LaunchFacts(NamedTuple):
    """How the process this runs on was started."""

    command_line: bytes
    environment: list[str]
    stdin_is_pipe: bool


def launch_facts() -> LaunchFacts:
    """Command line, environment values and stdin kind of this process."""
    command_line = Path("/proc/self/cmdline").read_bytes()
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        pipe = False
    else:
        pipe = stat.S_ISFIFO(mode)
    return LaunchFacts(command_line, list(os.environ.values()), pipe)


class Sockets(NamedTuple):
    """The TCP sockets of one process: listening, and connected pairs."""

    listening: list[Address]
    connected: list[tuple[Address, Address]]

    def accepted(self) -> list[tuple[Address, Address]]:
        """Connections whose local end is one of the listening addresses."""
        return [
            (mine, theirs) for mine, theirs in self.connected if mine in self.listening
        ]

    def dialed(self) -> list[tuple[Address, Address]]:
        """Connections this process opened (local end not a listener)."""
        return [
            (mine, theirs)
            for mine, theirs in self.connected
            if mine not in self.listening
        ]


def _address(raw: tuple[object, ...]) -> Address:
    host, port = raw[0], raw[1]
    assert isinstance(host, str) and isinstance(port, int)
    return host, port


def _each_tcp_socket() -> Iterator[socket.socket]:
    """A duplicate of every TCP socket this process holds (closed after use)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            dup = os.dup(int(name))
        except OSError:
            continue  # closed meanwhile (the listing's own fd, for one)
        sock = socket.socket(fileno=dup)
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and (
                sock.type == socket.SOCK_STREAM
            ):
                yield sock
        finally:
            sock.close()


def tcp_sockets() -> Sockets:
    """The TCP sockets of the process this runs on."""
    listening: list[Address] = []
    connected: list[tuple[Address, Address]] = []
    for sock in _each_tcp_socket():
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            listening.append(_address(sock.getsockname()))
            continue
        try:
            peer = _address(sock.getpeername())
        except OSError:
            continue  # not connected (yet, or any more)
        connected.append((_address(sock.getsockname()), peer))
    return Sockets(listening, connected)


def sever_accepted_connections() -> int:
    """Break every connection accepted on this process's listening sockets.

    Shuts them down in both directions, as a failed network would; returns
    how many there were.
    """
    mine = set(tcp_sockets().listening)
    severed = 0
    for sock in _each_tcp_socket():
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            continue
        try:
            sock.getpeername()
        except OSError:
            continue
        if _address(sock.getsockname()) in mine:
            sock.shutdown(socket.SHUT_RDWR)
            severed += 1
    return severed


def only_listening_address(sockets: Sockets) -> Address:
    """The single loopback address a worker listens on (asserted)."""
    assert len(sockets.listening) == 1, (
        f"expected the worker to listen on one address, found {sockets.listening}"
    )
    address = sockets.listening[0]
    assert ipaddress.ip_address(address[0]).is_loopback, (
        f"the local worker listens on {address}, not on a loopback address"
    )
    return address


def process_start_time(pid: int) -> int | None:
    """The start time of OS process ``pid`` (to tell it from a reuse), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[19])


def process_has_exited(pid: int, started: int) -> bool:
    """Whether OS process ``pid`` (started at ``started``) has ended."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X") or int(fields[19]) != started
