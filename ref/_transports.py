"""Worker entry points and custom transports: Julia's ``start_worker``,
``init_worker``, ``process_messages`` and ``worker_id_from_socket``.

A worker normally starts with ``start_worker`` (what ``python -m
ref.worker`` runs): it takes the cookie, listens on TCP, prints its address
line and serves until told to exit.  A cluster whose processes talk over
something else (pipes, Unix sockets, a message broker) starts its workers
with a program of its own that calls ``init_worker(cookie)`` and then, for
every logical connection its transport delivers, ``await
process_messages(read_stream, write_stream)``.  On the master such a
transport is a launcher whose ``LaunchedWorker.connect`` opens the streams
(see ``examples/pipe_cluster.py``).  Everything above the byte streams (the
cookie handshake, framing, the protocol) is the same as over TCP.

Upstream's ``process_messages`` starts a background task and returns; under
trio the caller decides where it runs, so here it serves the connection and
returns when the connection ends.  The first call on a fresh worker also
runs the worker itself: it returns once the worker has been told to exit or
has lost its master.
"""

from __future__ import annotations

import errno
import faulthandler
import logging
import os
import signal
import stat
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol, TextIO, cast

import trio

from spec.api import COOKIE_LENGTH

from ._config import ADDRESS_PREFIX
from ._config import worker_timeout as configured_worker_timeout
from ._context import peek_current, set_current
from ._process import Link, Process
from ._seams import StreamHandler, TcpTransport
from ._worker import serve_worker, wait_for_master
from .managers._additional import wait_for_children
from .protocol.messages import Header, IdentifySocketMsg

log = logging.getLogger("ref")

#: Workers hosted by a ``process_messages`` call (so no second one hosts).
_hosted: weakref.WeakSet[Process] = weakref.WeakSet()
#: Workers made by ``init_worker`` that turn SIGINT into interrupts.
_sigint: weakref.WeakSet[Process] = weakref.WeakSet()


def pad_cookie(cookie: str) -> str:
    """``cookie`` right-padded with spaces to the cookie length.

    Raises ``ValueError`` unless it is ASCII and at most that long.
    """
    if not isinstance(cookie, str) or not cookie.isascii():
        raise ValueError(f"cookie={cookie!r} must be an ASCII string")
    if len(cookie) > COOKIE_LENGTH:
        raise ValueError(
            f"cookie={cookie!r} is {len(cookie)} characters; "
            f"at most {COOKIE_LENGTH} are allowed"
        )
    return cookie.ljust(COOKIE_LENGTH)


# ---------------------------------------------------------- custom transports


@dataclass
class PeerConfig:
    """What a custom transport's ``connect`` learns about a peer to dial.

    ``connect_at`` is where the peer said it can be reached: the
    ``(host, port)`` its launcher reported to the master, which for a
    non-TCP transport may be any address the transport understands (a
    socket path and 0, say).
    """

    connect_at: tuple[str, int]


class PeerConnector(Protocol):
    """A custom transport's way to reach other workers (Julia's ``connect``)."""

    async def connect(
        self, pid: int, config: PeerConfig
    ) -> tuple[trio.abc.ReceiveStream, trio.abc.SendStream]:
        """Open a logical connection to worker ``pid``; must be ordered."""
        ...


def init_worker(
    cookie: str, manager: PeerConnector | None = None, *, handle_sigint: bool = True
) -> None:
    """Make the calling task's process a worker of a custom-transport cluster.

    Call it inside ``trio.run``, in the task (or a parent of the tasks) that
    will call ``process_messages``; the master assigns the pid when it
    joins.  ``cookie`` (at most 16 ASCII characters, padded with spaces) is
    checked on every incoming connection.  ``manager``, if given, opens the
    connections this worker makes to other workers; without one they are
    TCP.  With ``handle_sigint`` (and in the main thread) SIGINT interrupts
    the calls the worker runs, as for a TCP worker.

    Raises ``RuntimeError`` if the calling task already belongs to a process
    that has workers, links or remote references: a worker must start
    pristine.
    """
    padded = pad_cookie(cookie)
    current = peek_current()
    if current is not None and (
        current.links
        or len(current.refs)
        or len(current._local_refs)
        or current.group.nprocs() > 1
    ):
        raise RuntimeError(
            f"init_worker: process {current.myid} already has workers, links or "
            "remote references; call init_worker first thing in a fresh process"
        )
    proc = Process(
        myid=0,
        cookie=padded,
        transport=TcpTransport(),
        worker_timeout=configured_worker_timeout(),
    )
    if manager is not None:
        proc.dial = _dialler(manager)
    if handle_sigint:
        _sigint.add(proc)
    set_current(proc)


def _dialler(
    manager: PeerConnector,
) -> Callable[[int, str, int], Awaitable[trio.abc.Stream]]:
    async def dial(pid: int, host: str, port: int) -> trio.abc.Stream:
        read, write = await manager.connect(pid, PeerConfig((host, port)))
        return _staple(read, write)

    return dial


def _staple(
    read: trio.abc.ReceiveStream, write: trio.abc.SendStream
) -> trio.abc.Stream:
    if isinstance(read, trio.abc.Stream) and read is cast(object, write):
        # One bidirectional stream given twice (a socket, say).
        return read
    return trio.StapledStream(write, read)


async def process_messages(
    read_stream: trio.abc.ReceiveStream,
    write_stream: trio.abc.SendStream,
    incoming: bool = True,
    *,
    peer: int | None = None,
) -> int | None:
    """Serve one logical connection of this process until it ends.

    With ``incoming=True`` the other side opened the connection: it must
    send the cookie and version first, which are checked here before
    anything else it sends is decoded.  With ``incoming=False`` this side
    opened it to worker ``peer`` (required): it sends the cookie, version
    and its pid.  The first call on a fresh worker (after ``init_worker``)
    also runs the worker: it returns the worker's exit status (0 when told
    to exit, 1 when the master was lost or never came) once the worker
    ends; other calls return None when their connection ends.
    """
    proc = _current_worker()
    stream = _staple(read_stream, write_stream)
    if proc.nursery is None and proc not in _hosted:
        _hosted.add(proc)
        return await _host(proc, stream, incoming, peer)
    await _serve(proc, stream, incoming, peer)
    return None


def _current_worker() -> Process:
    proc = peek_current()
    if proc is None:
        raise RuntimeError(
            "process_messages: no worker process here; call init_worker(cookie) "
            "first, in this task or a parent"
        )
    return proc


async def _host(
    proc: Process, stream: trio.abc.Stream, incoming: bool, peer: int | None
) -> int:
    async with trio.open_nursery() as nursery:
        proc.start(nursery)
        if proc in _sigint:
            await nursery.start(relay_interrupts, proc)
        nursery.start_soon(proc._in_context, _serve, proc, stream, incoming, peer)
        await wait_for_master(proc)
        await proc.stopped.wait()
        nursery.cancel_scope.cancel()
    return proc.exit_code


async def _serve(
    proc: Process, stream: trio.abc.Stream, incoming: bool, peer: int | None
) -> None:
    if incoming:
        await proc.accept(stream)
        return
    if peer is None:
        raise ValueError("process_messages(incoming=False) needs peer=<its pid>")
    if proc.myid < 2:
        raise RuntimeError(
            "process_messages(incoming=False): only a worker that has joined "
            "its cluster can open a connection to a peer"
        )
    link = await proc.adopt_stream(peer, stream)
    await link.send(Header(), IdentifySocketMsg(proc.myid))
    await link.finished.wait()


def worker_id_from_socket(stream: object) -> int:
    """The pid of the process at the other end of ``stream``, or -1.

    ``stream`` is a stream the runtime reads or writes for a link: one
    given to ``process_messages``, or the runtime's own (a ``Link``'s
    ``stream``).  A stream whose peer has not identified itself yet, or that
    belongs to no link of the calling process, gives -1.
    """
    proc = peek_current()
    if proc is None:
        return -1
    for link in list(proc.links.values()):
        if _link_uses(link, stream):
            return link.peer
    return -1


def _link_uses(link: Link, stream: object) -> bool:
    own = link.stream
    if own is stream:
        return True
    if isinstance(own, trio.StapledStream):
        return stream is own.send_stream or stream is own.receive_stream
    return False


# ------------------------------------------------------------------ signals


async def relay_interrupts(
    proc: Process, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Turn SIGINT into interrupts of ``proc``'s calls while this task runs.

    A call that awaits is cancelled at its next checkpoint (through
    ``proc.interrupt_calls()``, run by trio soon after the signal).  A plain
    function computing without awaiting holds trio's loop, so no checkpoint
    comes; if one is running when the signal lands, the handler raises
    ``KeyboardInterrupt`` inside it, as Python's own handler would, and the
    call fails with the same ``RemoteException``.  Only the main thread can
    receive signals; elsewhere this does nothing but report itself started
    (so in-process workers leave SIGINT alone).
    """
    if threading.current_thread() is not threading.main_thread():
        task_status.started()
        await trio.sleep_forever()
    token = trio.lowlevel.current_trio_token()

    def on_sigint(signum: int, frame: object) -> None:
        # run_sync_soon is the one trio call made for signal handlers (trio's
        # own signal receiver goes through it); idempotent, so a burst of
        # signals queues one interrupt.
        token.run_sync_soon(proc.interrupt_calls, idempotent=True)
        if proc.running_plain_call:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        task_status.started()
        await trio.sleep_forever()
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------- start_worker


#: A worker asked to listen on port 0 tries this port plus (OS pid mod 1000)
#: first, then counts up, as Julia's workers do.
FIRST_PORT = 9000


class ListenError(OSError):
    """A worker could not listen where it was told to (message says why)."""

    def __str__(self) -> str:
        # Without the "[Errno n]" prefix: the message already names it.
        return str(self.strerror)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _ListenFrom:
    """TCP that listens on ``port``, or for 0 on the first free port upward."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._tcp = TcpTransport()

    async def listen(
        self, host: str, handler: StreamHandler, nursery: trio.Nursery
    ) -> tuple[str, int]:
        first = self.port or FIRST_PORT + os.getpid() % 1000
        last = first if self.port else 65535
        for port in range(first, last + 1):
            try:
                listeners = await trio.open_tcp_listeners(port, host=host)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES) and port < last:
                    continue
                # An unresolvable name (gaierror) or an address that is not
                # this host's: the worker cannot serve, say so plainly.
                reason = exc.strerror or str(exc)
                raise ListenError(
                    exc.errno, f"cannot listen on {_hostport(host, port)}: {reason}"
                ) from exc
            bound = int(listeners[0].socket.getsockname()[1])
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            return host, bound
        raise ListenError(
            errno.EADDRINUSE,
            f"cannot listen on {_hostport(host, first)}: no free port from "
            f"{first} to {last}",
        )

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await self._tcp.connect(host, port)


def start_worker(
    out: TextIO | None = None,
    cookie: str | None = None,
    *,
    close_stdin: bool = True,
    stderr_to_stdout: bool = True,
    bind_to: str = "127.0.0.1",
    port: int = 0,
) -> NoReturn:
    """Run this process as a TCP worker until it exits; never returns.

    ``cookie`` defaults to the first line of stdin (an empty line is the
    empty cookie).  Then stdin is closed (``sys.stdin`` and file descriptor
    0 read from the null device) unless ``close_stdin=False``, and stderr is
    sent to stdout unless ``stderr_to_stdout=False``.  The worker listens on
    ``bind_to`` at ``port``, or for port 0 on the first free port counting
    up from 9000 + (OS pid mod 1000); writes ``distref_worker:<port>#<host>``
    to ``out`` (stdout by default); serves; and exits the process with
    status 0 when told to exit, 1 when its master is lost or never came.

    The worker also exits when the launcher's end of its original stdin (a
    pipe) closes: no worker outlives a master that was killed.
    """
    if cookie is None:
        cookie = sys.stdin.readline().rstrip("\n")
    padded = pad_cookie(cookie)
    watched = _dup_if_pipe(0)
    if close_stdin:
        _close_stdin()
    if stderr_to_stdout:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(1, 2)
    stream = out if out is not None else sys.stdout
    # SIGUSR1 prints every thread's stack and goes on (upstream's profile
    # peek); the local manager sends it to a worker that will not exit.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        code = trio.run(_run_tcp_worker, padded, bind_to, port, stream, watched)
    except BaseExceptionGroup as group:
        # The nurseries wrap it; the caller wants the one reason.
        failed = _only_listen_error(group)
        if failed is None:
            raise
        raise failed from None
    raise SystemExit(code)


def _only_listen_error(group: BaseExceptionGroup[BaseException]) -> ListenError | None:
    """The ListenError that is ``group``'s only leaf, if it is one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if len(leaves) == 1 and isinstance(leaves[0], ListenError):
        return leaves[0]
    return None


def _dup_if_pipe(fd: int) -> int | None:
    """A duplicate of ``fd`` when it is a pipe or socket, to watch for EOF."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return os.dup(fd)
    return None


def _close_stdin() -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(os.devnull)  # noqa: SIM115  # replaces the process's stdin


async def _run_tcp_worker(
    cookie: str, host: str, port: int, out: TextIO, watched: int | None
) -> int:
    procs: list[Process] = []
    ready = trio.Event()

    def started(proc: Process) -> None:
        procs.append(proc)
        set_current(proc)
        ready.set()

    def announce(bound: str, bound_port: int) -> None:
        out.write(f"{ADDRESS_PREFIX}{bound_port}#{bound}\n")
        out.flush()

    async with trio.open_nursery() as nursery:
        if watched is not None:
            nursery.start_soon(_stop_at_eof, watched, ready, procs)
        code = await serve_worker(
            cookie=cookie,
            transport=_ListenFrom(port),
            host=host,
            announce=announce,
            worker_timeout=configured_worker_timeout(),
            started=started,
            before_listening=_relay_before_listening,
        )
        # Workers this one started for its host (a count > 1) hang off its
        # pipes: stay until they are gone, so removing it spares them.
        await wait_for_children()
        nursery.cancel_scope.cancel()
    return code


async def _relay_before_listening(proc: Process, nursery: trio.Nursery) -> None:
    await nursery.start(relay_interrupts, proc)


#: Seconds a worker whose launcher has gone may take to stop by itself
#: before the watcher thread ends the OS process.
LAUNCHER_GONE_GRACE = 5.0


async def _stop_at_eof(fd: int, ready: trio.Event, procs: list[Process]) -> None:
    """Stop the worker when its launcher's end of stdin closes.

    The pipe is watched from a thread, not a trio task: a call computing
    without awaiting holds the trio loop, and a worker whose master was
    killed must not spin on for ever.  On end of file the thread asks trio
    to stop the process; if the process is still there after
    ``LAUNCHER_GONE_GRACE`` seconds (the loop is held), it ends it.
    """
    token = trio.lowlevel.current_trio_token()

    def stop() -> None:
        if procs:
            procs[0].stop(1)

    def watch() -> None:
        with open(fd, "rb", buffering=0, closefd=True) as pipe:
            while pipe.read(4096):
                pass
        try:
            token.run_sync_soon(stop)
        except trio.RunFinishedError:
            return
        threading.Event().wait(LAUNCHER_GONE_GRACE)
        log.error(
            "Process(%s) - the launcher has gone and this worker did not stop "
            "within %g s (a call is holding it); exiting",
            procs[0].myid if procs else "?",
            LAUNCHER_GONE_GRACE,
        )
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=watch, name="distref-launcher-watch", daemon=True).start()
    await ready.wait()


__all__ = [
    "ListenError",
    "PeerConfig",
    "PeerConnector",
    "init_worker",
    "pad_cookie",
    "process_messages",
    "relay_interrupts",
    "start_worker",
    "worker_id_from_socket",
]
