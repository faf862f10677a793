"""``ElasticManager``: workers started by any means dial the master and join.

After ClusterManagers.jl's ``ElasticManager``: the master listens on an
address of its choosing; a worker started anywhere, by anybody who knows the
cookie (a batch script, a container, a shell), runs ``python -m ref.elastic
HOST:PORT`` and dials it.  The exchange on that connection:

1. the worker sends the 16-byte cookie and its 16-byte version, exactly as
   the initiator of a runtime link does;
2. the master reads exactly those 32 bytes and compares the cookie in
   constant time (the same ``WireConnection`` code as every link).  A wrong
   or missing cookie is logged and the connection closed; nothing the peer
   sent is decoded, let alone unpickled;
3. the worker sends its address line, ``distref_worker:<port>#<host>``;
4. the master sets the worker up like any launched worker: it connects to
   that address (cookie-checked again, this time by the worker) and gives
   it the next pid.

The dialled connection stays open as the worker's ``WorkerConfig.io``: a
worker exits when it closes, and the master closes it when the worker is
removed.  Connected workers are added in the background, one ``addprocs``
per batch of arrivals, so ``workers()`` grows as they come.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from spec.api import COOKIE_LENGTH, VERSION_LENGTH, LaunchError

from .._context import current_process
from .._process import Process
from ..protocol.wire import ProtocolError, Role, WireConnection
from ._base import ClusterManager, Notify, WorkerConfig, manager_params

log = logging.getLogger("ref")

HELLO_LENGTH = COOKIE_LENGTH + VERSION_LENGTH


class ElasticManager(ClusterManager):
    """Lets workers join by dialling the master; see the module docstring.

    ``addr`` and ``port`` are where the master listens (loopback and a free
    port by default).  ``announce`` receives the command a worker is started
    with, once listening (default: logged at INFO on the ``ref`` logger).
    ``cookie_file``, if given, is written with the cookie (mode 0600) and
    named in that command, so the cookie never appears on a command line.
    ``params`` are the ``addprocs`` keywords of every batch.
    """

    def __init__(
        self,
        addr: str = "127.0.0.1",
        port: int = 0,
        *,
        announce: Callable[[str], None] | None = None,
        cookie_file: str | os.PathLike[str] | None = None,
        exename: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"ElasticManager: port={port!r} must be 0..65535")
        self.addr = addr
        self.port = port
        self.announce = announce
        self.cookie_file = Path(cookie_file) if cookie_file is not None else None
        self.exename = exename or sys.executable
        self.params = dict(params or {})
        self.address: tuple[str, int] | None = None
        #: Workers that joined and are still members: pid -> config.
        self.active: dict[int, WorkerConfig] = {}
        self._pending: list[WorkerConfig] = []
        self._arrived = trio.Event()
        self._scope = trio.CancelScope()
        self._proc: Process | None = None
        #: Connections refused for their cookie (for tests and statistics).
        self.refused = 0

    def __repr__(self) -> str:
        return (
            f"ElasticManager(addr={self.addr!r}, port={self.port}, "
            f"active={sorted(self.active)}, pending={len(self._pending)})"
        )

    # ------------------------------------------------------------ serving

    async def start(self) -> tuple[str, int]:
        """Listen (on the master) and announce the worker command; the address.

        The listener and the joining run until ``aclose`` or until the
        cluster closes.
        """
        proc = current_process()
        proc.require_master("ElasticManager.start")
        if self.address is not None:
            return self.address
        manager_params(self, self.params)  # a bad keyword fails here, not later
        self._proc = proc
        address: tuple[str, int] = await proc.nursery_or_fail().start(self._serve)
        self.address = address
        if self.cookie_file is not None:
            _write_private(self.cookie_file, proc.cookie + "\n")
        text = f"To add a worker, run: {self.command()}"
        if self.announce is not None:
            self.announce(text)
        else:
            log.info("%s", text)
        return address

    def command(self) -> str:
        """The shell command that starts a worker which joins this cluster."""
        if self.address is None:
            raise RuntimeError("ElasticManager.command: call start() first")
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        words = [self.exename, "-m", "ref.elastic", f"{shown}:{port}"]
        if self.cookie_file is not None:
            words += ["--cookie-file", str(self.cookie_file)]
        command = shlex.join(words)
        if self.cookie_file is None:
            command += "   # give it the cluster cookie as its first line of stdin"
        return command

    async def aclose(self) -> None:
        """Stop listening; workers that joined stay."""
        self._scope.cancel()
        await trio.lowlevel.checkpoint()

    async def _serve(
        self, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        proc = current_process()
        with self._scope:
            async with trio.open_nursery() as nursery:
                if self.port:
                    # A fixed port is a TCP notion the transport seam does
                    # not offer: listen on it directly.
                    listeners = await trio.open_tcp_listeners(self.port, host=self.addr)
                    port = int(listeners[0].socket.getsockname()[1])
                    for listener in listeners:
                        nursery.start_soon(self._accept_loop, proc, listener)
                else:
                    # The master's own transport: TCP under ref, simulated
                    # links under sim, where simulated workers dial in.
                    _, port = await proc.transport.listen(
                        self.addr, functools.partial(self._arrived_on, proc), nursery
                    )
                nursery.start_soon(self._join_arrivals)
                task_status.started((self.addr, port))

    async def _arrived_on(self, proc: Process, stream: trio.abc.Stream) -> None:
        """Serve ``stream`` in a task of the master; return once it is done.

        A transport may close a stream when its handler returns, or is
        cancelled (TCP does): so the handler outlives the stream, shielded,
        lest ``aclose`` cut off the workers that joined.  The master's task
        always ends by closing the stream, so this wait ends too.
        """
        released = trio.Event()
        proc.spawn(self._accept, stream, released)
        with trio.CancelScope(shield=True):
            await released.wait()

    async def _accept_loop(self, proc: Process, listener: trio.SocketListener) -> None:
        """Accept connections; each is served by a task of the master, so
        that closing the listener leaves joined workers' connections open."""
        async with listener:
            while True:
                stream = await listener.accept()
                proc.spawn(self._accept, stream, trio.Event())

    async def _accept(self, stream: trio.abc.Stream, released: trio.Event) -> None:
        """Check a dialling worker's cookie; queue it, or refuse it.

        ``released`` is set once the stream is closed, whatever happened.
        """
        try:
            await self._check_and_hold(stream)
        finally:
            released.set()

    async def _check_and_hold(self, stream: trio.abc.Stream) -> None:
        proc = self._proc or current_process()
        where = _peer_of(stream)
        wire = WireConnection(Role.ACCEPTOR, proc.cookie.encode("ascii"), proc.codec)
        try:
            with trio.fail_after(proc.worker_timeout):
                hello = await _receive_exactly(stream, HELLO_LENGTH)
            wire.receive_data(hello)
            if len(hello) < HELLO_LENGTH:
                wire.receive_data(b"")
            wire.next_event()
        except (ProtocolError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            self.refused += 1
            reason = str(exc) or type(exc).__name__
            log.warning(
                "ElasticManager: refused a connection from %s: %s", where, reason
            )
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        # The stream stays open while the worker is a member.
        done = trio.Event()
        config = WorkerConfig(io=stream, userdata={"elastic": where, "done": done})
        self._pending.append(config)
        self._arrived.set()
        try:
            await done.wait()
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _join_arrivals(self) -> None:
        """Add the queued workers, one ``addprocs`` per batch of arrivals."""
        from .._api import addprocs

        while True:
            await self._arrived.wait()
            self._arrived = trio.Event()
            if not self._pending:
                continue
            try:
                await addprocs(self, **self.params)
            except LaunchError as exc:
                log.warning("ElasticManager: a worker failed to join: %s", exc)
            except Exception:
                log.exception("ElasticManager: adding the workers that dialled failed")

    # ----------------------------------------------------- the manager API

    async def launch(
        self,
        params: Mapping[str, Any],
        launched: list[WorkerConfig],
        notify: Notify,
    ) -> None:
        """Hand over the workers that dialled in since the last call."""
        while self._pending:
            launched.append(self._pending.pop(0))
            notify()

    async def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """Keep ``active`` current."""
        if op == "register":
            self.active[pid] = config
        elif op == "deregister":
            self.active.pop(pid, None)
        elif op == "finalize" and isinstance(config.userdata, dict):
            config.userdata["done"].set()


async def _receive_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    """Up to ``count`` bytes, never more (fewer only if the peer closed)."""
    data = b""
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _peer_of(stream: trio.abc.Stream) -> str:
    if isinstance(stream, trio.SocketStream):
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:
            return "an unknown peer"
        return f"{host}:{port}"
    return "a peer"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)
