"""One distref process, master or worker: the runtime's trio shell.

A ``Process`` owns the links to its peers and runs what arrives on them.
It drives the sans-I/O core (``protocol``): ``WireConnection`` for each
link's handshake and framing, ``ProcessGroup`` for the process table,
``RefTable`` for the values it owns.  It reaches the world only through
its seams, a ``Transport`` for streams and a ``Launcher`` for workers, so the
simulator runs this very class over simulated links.

Theory of operation, after Julia's ``process_messages.jl``:

* every link has one reader task that decodes frames in order and hands
  each message to ``_handle``, which never blocks: calls run in new tasks,
  results fill slots;
* a call that waits for an answer (``remotecall_fetch``, ``remotecall_wait``)
  parks on a temporary ``Slot`` registered with the pid it waits for; when
  that pid's link is lost, every such slot fails with
  ``ProcessExitedException``, so nothing waits forever;
* connections between workers follow the cluster's topology (see
  ``_topology``): in a lazy all-to-all cluster the higher pid dials the
  lower one when first needed, and a lower pid that needs a higher one asks
  the master to ask it to dial; an eager worker dials the peers its
  JoinPGRP lists before it answers; ``master_worker`` and ``custom`` refuse
  to send to a peer they are not connected to;
* every call run here for a caller is cancellable by ``interrupt``, which
  makes it fail with ``KeyboardInterrupt`` and leaves the process serving.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import traceback
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import trio

from spec.api import (
    COOKIE_LENGTH,
    RRID,
    DistributedError,
    FutureAlreadySetError,
    LaunchError,
    NoSuchProcessError,
    NotMasterError,
    ProcessExitedException,
    ReferenceNotFoundError,
    RemoteException,
    TopologyError,
)

from ._channel import Channel
from ._context import peek_current, reset_current, set_current
from ._pools import membership_changed, worker_joined
from ._refs import (
    MISSING,
    ChannelFactory,
    Future,
    RemoteChannel,
    RemoteRef,
    Slot,
    sending_to,
)
from ._seams import (
    LaunchedWorker,
    Launcher,
    ManagedWorker,
    ShieldedSend,
    Transport,
    WorkerHandle,
)
from .protocol.codec import CloudpickleCodec, Codec
from .protocol.group import MASTER, Peer, PeerState, ProcessGroup
from .protocol.messages import (
    CallMsg,
    CallWaitMsg,
    ClientsMsg,
    DeregisterMsg,
    ExitMsg,
    Header,
    IdentifySocketAckMsg,
    IdentifySocketMsg,
    JoinCompleteMsg,
    JoinPGRPMsg,
    Message,
    RemoteDoMsg,
    ResultMsg,
    SetPeersMsg,
)
from .protocol.refs import RefTable
from .protocol.wire import (
    NEED_DATA,
    Authenticated,
    Closed,
    ProtocolError,
    Received,
    Role,
    Undecodable,
    WireConnection,
)

log = logging.getLogger("ref")

R = TypeVar("R", bound=RemoteRef)
F = TypeVar("F", bound=Callable[..., Any])
#: Receives the answer to a call whose caller was cancelled meanwhile.
Orphan = Callable[[object], Awaitable[None]]

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _SendLock:
    """A link's send lock: a FIFO mutex with no schedule point when free.

    ``trio.Lock`` yields to the scheduler even when nobody holds it; a
    sender that finds this lock free takes it at once instead, since the
    ``send_all`` it goes on to is a schedule point anyway.  A contended
    acquire checkpoints and parks as ``trio.Lock``'s does, and ``release``
    hands the lock to the longest waiter, so the order of senders is
    trio's.  It keeps no owner (``Link.send`` always releases in a
    ``finally``), which spares the bookkeeping ``trio.Lock`` does on every
    acquire and release.  Cancellation is unchanged: ``Link.send`` checks
    for it right after taking the lock.
    """

    __slots__ = ("_lot", "held")

    def __init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()
        self.held = False

    async def acquire_contended(self) -> None:
        """Wait for the holder to hand the lock over (``held`` stays True)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._lot.park()

    def release(self) -> None:
        if self._lot:
            self._lot.unpark(count=1)
        else:
            self.held = False


class Link:
    """One authenticated stream to a peer process, with ordered sends."""

    def __init__(
        self,
        proc: Process,
        peer: int,
        stream: trio.abc.Stream,
        wire: WireConnection,
        *,
        identified: bool = True,
    ) -> None:
        self.proc = proc
        self.peer = peer
        self.stream = stream
        self.wire = wire
        self._lock = _SendLock()
        self.closed = False
        #: Set once the link's reader has stopped and the stream is closed.
        self.finished = trio.Event()
        # False on a link we dialled until its identifying first message
        # (JoinPGRP, IdentifySocket) is written: nothing may precede it.
        self.identified = identified
        self._send_shielded: ShieldedSend | None = getattr(
            stream, "send_all_shielded", None
        )

    async def send(self, header: Header, message: Message | None) -> None:
        """Encode and write one message; a broken link is ProcessExited.

        Reference-count notices queued for this peer go first, in the same
        write, so the peer learns of every holder we announced before it
        sees any later operation of ours (a put, a fetch, a drop).
        Encoding happens under the lock so that reference-count notices
        queued while pickling are ordered with the message itself.  With
        ``message`` None only the notices are written, if any.
        """
        if self.closed:
            raise ProcessExitedException(self.peer)
        lock = self._lock
        if lock.held:
            await lock.acquire_contended()
        else:
            lock.held = True
        try:
            # A cancellation delivered while waiting for the lock must end
            # the send here, before a byte is written: send_all's own first
            # check would otherwise raise it and condemn a healthy link.
            await trio.lowlevel.checkpoint_if_cancelled()
            data = self._encode(header, message)
            if not data:
                return
            # The wire already counts the message as sent: finish writing it
            # even if the caller is cancelled meanwhile (the cancellation
            # lands at the caller's next checkpoint).  A caller cancelled
            # here would otherwise leave the stream mid-frame, condemning a
            # healthy link, and leave unknown whether the peer acts on the
            # message.  A peer that stops reading for the worker timeout
            # condemns the link all the same.
            if not await self._write_shielded(data):
                # A partial write leaves the stream mid-frame: unusable.
                self.wire.send_failed()
                self.closed = True
                raise ProcessExitedException(self.peer)
        finally:
            lock.release()
        self.proc.after_send(self.peer)

    async def _write_shielded(self, data: bytes) -> bool:
        """Write ``data`` shielded from cancellation; False at the deadline."""
        deadline = trio.current_time() + self.proc.worker_timeout
        try:
            if self._send_shielded is not None:
                return await self._send_shielded(data, deadline)
            # The deadline goes to the constructor: setting it on an entered
            # scope costs more.
            with trio.CancelScope(shield=True, deadline=deadline) as writing:
                await self.stream.send_all(data)
            return not writing.cancelled_caught
        except _STREAM_ERRORS:
            self.wire.send_failed()
            raise ProcessExitedException(self.peer) from None

    async def flush_notices(self) -> None:
        """Write the reference-count notices queued for this peer, if any."""
        await self.send(Header(), None)

    def _encode(self, header: Header, message: Message | None) -> bytes:
        """The bytes of the queued notices and ``message``; under the lock."""
        proc = self.proc
        notices = proc.take_notices(self.peer) if self.identified else ()
        if not self.identified and isinstance(message, JoinPGRPMsg | IdentifySocketMsg):
            self.identified = True
        token = sending_to.set(self.peer)
        try:
            if notices:
                data = self.wire.send(Header(), ClientsMsg(notices))
                if message is not None:
                    data += self.wire.send(header, message)
                return data
            if message is not None:
                return self.wire.send(header, message)
            return b""
        except ProtocolError:
            # The link closed or broke while this send waited its turn.
            raise ProcessExitedException(self.peer) from None
        except Exception as exc:
            proc.requeue_notices(self.peer, notices)
            what = type(message).__name__ if message is not None else "notice"
            raise TypeError(
                f"could not serialise a {what} for process {self.peer}: {exc}; "
                "functions, arguments and results must be picklable by "
                "cloudpickle (locks, sockets and open streams are not)"
            ) from exc
        except BaseException:
            proc.requeue_notices(self.peer, notices)
            raise
        finally:
            sending_to.reset(token)

    async def aclose(self) -> None:
        self.closed = True
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


class Process:
    """The runtime state and tasks of one process in a cluster."""

    def __init__(
        self,
        *,
        myid: int,
        cookie: str,
        transport: Transport,
        worker_timeout: float,
        codec: Codec | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        if len(cookie.encode("ascii")) != COOKIE_LENGTH:
            raise ValueError(f"cookie must be {COOKIE_LENGTH} ASCII characters")
        self.group = ProcessGroup(myid=myid)
        self.cookie = cookie
        self.transport = transport
        self.worker_timeout = worker_timeout
        self.codec: Codec = codec or CloudpickleCodec()
        self.host = host
        #: True while a call's function runs synchronously (before any
        #: await of its result): where a SIGINT may raise KeyboardInterrupt.
        self.running_plain_call = False
        self.refs: RefTable[Slot | Channel] = RefTable()
        self.links: dict[int, Link] = {}
        self.handles: dict[int, WorkerHandle] = {}
        self.local_pids: set[int] = set()
        self.exit_code = 0
        self.nursery: trio.Nursery | None = None
        self.launcher: Launcher | None = None
        self.stopped = trio.Event()
        self._waiting: dict[RRID, tuple[Slot, int]] = {}
        self._local_refs: weakref.WeakValueDictionary[RRID, RemoteRef] = (
            weakref.WeakValueDictionary()
        )
        self._finalizers: dict[RRID, weakref.finalize[Any, Any]] = {}
        self._link_ready: dict[int, trio.Event] = {}
        self._joined: dict[int, trio.Event] = {}
        self._client_notices: dict[int, list[tuple[bool, RRID, int]]] = {}
        self._notices_pending = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self.membership_lock = trio.Lock()
        self.joined_master = trio.Event()
        self.all_handles: list[WorkerHandle] = []
        self._departures: dict[int, trio.Event] = {}
        # Topologies: each worker's WorkerConfig.ident (master, 'custom'),
        # lazy connections that failed (later attempts raise the same
        # error), when each peer stub appeared (an eager wait counts from
        # then) and the acknowledgements of the links this worker dialled.
        self.idents: dict[int, object] = {}
        self._members_changed = trio.Event()
        self._connect_failures: dict[int, str] = {}
        self._stub_times: dict[int, float] = {}
        self._acked: dict[int, trio.Event] = {}
        # The scopes of the calls running here for callers, which
        # interrupt() cancels (a dict: ordered, and O(1) to remove).
        self._running_calls: dict[trio.CancelScope, None] = {}
        #: Custom transports: opens a stream to peer ``pid`` listening at
        #: ``(host, port)``; None means ``transport.connect(host, port)``.
        self.dial: Callable[[int, str, int], Awaitable[trio.abc.Stream]] | None = None
        #: Master: the manager and config of each worker a ClusterManager
        #: added (``ref.managers``); rmprocs and departures go through them.
        self.managed: dict[int, ManagedWorker] = {}

    # ----------------------------------------------------------------- setup

    @property
    def myid(self) -> int:
        return self.group.myid

    def start(self, nursery: trio.Nursery) -> None:
        """Attach to the nursery that will run this process's tasks."""
        self.nursery = nursery
        self._token = trio.lowlevel.current_trio_token()
        self.spawn(self._flush_notices_forever)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` as a task of this process (``myid()`` is ours)."""
        assert self.nursery is not None, "Process.start() was not called"
        if peek_current() is self:
            # A new task starts in a copy of its spawner's context, which
            # makes this process current already: no wrapper needed (it
            # would cost a frame on every step of the task).
            self.nursery.start_soon(fn, *args)
        else:
            self.nursery.start_soon(self._in_context, fn, *args)

    async def _in_context(self, fn: Callable[..., Any], *args: Any) -> None:
        token = set_current(self)
        try:
            await fn(*args)
        finally:
            reset_current(token)

    def stop(self, code: int) -> None:
        """End this process: its tasks are cancelled by whoever runs it."""
        if not self.stopped.is_set():
            self.exit_code = code
            self.stopped.set()

    # ----------------------------------------------------------- connections

    def _new_wire(self, role: Role) -> WireConnection:
        return WireConnection(role, self.cookie.encode("ascii"), self.codec)

    async def open_link(self, pid: int, host: str, port: int) -> Link:
        """Dial ``pid`` at ``host:port``, send the cookie, start reading."""
        try:
            if self.dial is not None:
                stream = await self.dial(pid, host, port)
            else:
                stream = await self.transport.connect(host, port)
        except OSError as exc:
            raise ProcessExitedException(pid) from exc
        return await self.adopt_stream(pid, stream)

    async def adopt_stream(self, pid: int, stream: trio.abc.Stream) -> Link:
        """Use ``stream``, which this side opened to ``pid``, as its link.

        Sends the cookie and version, then reads the stream in a task of
        this process.  The caller sends the identifying first message.
        """
        wire = self._new_wire(Role.INITIATOR)
        try:
            await stream.send_all(wire.hello())
        except _STREAM_ERRORS:
            await stream.aclose()
            raise ProcessExitedException(pid) from None
        return self._register_link(pid, stream, wire)

    def _register_link(
        self, pid: int, stream: trio.abc.Stream, wire: WireConnection
    ) -> Link:
        link = Link(self, pid, stream, wire, identified=False)
        self.links[pid] = link
        peer = self.group.peer(pid)
        if peer.state is PeerState.CREATED and not self.group.is_master:
            peer.state = PeerState.CONNECTED
        self._link_ready.setdefault(pid, trio.Event()).set()
        self.spawn(self._read_loop, link)
        return link

    async def accept(self, stream: trio.abc.Stream) -> None:
        """Serve one incoming stream: authenticate, identify, then read."""
        wire = self._new_wire(Role.ACCEPTOR)
        first: Received | None = None
        try:
            with trio.fail_after(self.worker_timeout):
                first = await self._handshake(stream, wire)
        except trio.TooSlowError:
            self._refuse_unknown(
                f"No handshake within {self.worker_timeout:g} seconds."
            )
        except (ProtocolError, *_STREAM_ERRORS) as exc:
            self._refuse_unknown(str(exc) or type(exc).__name__)
        if first is None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return

        msg = first.message
        if isinstance(msg, JoinPGRPMsg) and self.myid == 0:
            self._join(msg)
            link = Link(self, MASTER, stream, wire)
            self.links[MASTER] = link
            self._handle(link, first.header, msg)
            await self._read_loop(link)
        elif isinstance(msg, IdentifySocketMsg) and self.myid != MASTER:
            # Possibly before our own JoinPGRP: in a 'custom' cluster a peer
            # may be told to dial us while we are still joining.
            peer = self.group.add_peer(Peer(msg.from_pid, "", 0))
            peer.state = PeerState.CONNECTED
            link = Link(self, msg.from_pid, stream, wire)
            self.links[msg.from_pid] = link
            self._connect_failures.pop(msg.from_pid, None)
            self._link_ready.setdefault(msg.from_pid, trio.Event()).set()
            await link.send(Header(), IdentifySocketAckMsg())
            await self._read_loop(link)
        else:
            log.warning(
                "Process(%d) - unexpected first message %s, closing connection",
                self.myid,
                type(msg).__name__,
            )
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _refuse_unknown(self, reason: str) -> None:
        """Log why a connection failed before its peer identified itself."""
        log.warning("Process(%d) - %s", self.myid, reason)
        log.warning("Process(%d) - Unknown remote, closing connection.", self.myid)

    async def _handshake(
        self, stream: trio.abc.Stream, wire: WireConnection
    ) -> Received | None:
        """Read until the cookie checked out and the first message arrived."""
        while True:
            event = wire.next_event()
            if event is NEED_DATA:
                wire.receive_data(await stream.receive_some())
            elif isinstance(event, Authenticated):
                await stream.send_all(event.reply)
            elif isinstance(event, Received):
                return event
            else:
                return None

    async def _read_loop(self, link: Link) -> None:
        """Decode this link's frames in order until it closes or breaks."""
        try:
            while True:
                event = link.wire.next_event()
                if event is NEED_DATA:
                    link.wire.receive_data(await link.stream.receive_some())
                elif isinstance(event, Received):
                    self._handle(link, event.header, event.message)
                elif isinstance(event, Undecodable):
                    self._report_undecodable(link, event.header, event.error)
                elif isinstance(event, Closed):
                    return
                elif isinstance(event, Authenticated):
                    continue
        except (ProtocolError, *_STREAM_ERRORS) as exc:
            if not link.closed:
                log.debug(
                    "Process(%d) - link to %d lost: %s", self.myid, link.peer, exc
                )
        finally:
            self._link_lost(link)
            await link.aclose()
            link.finished.set()

    def _link_lost(self, link: Link) -> None:
        """A peer's link ended: fail what waited on it, forget the peer."""
        pid = link.peer
        if self.links.get(pid) is not link:
            return
        del self.links[pid]
        link.closed = True

        peer = self.group.remove(pid)
        error = ProcessExitedException(pid)
        for slot, waited in list(self._waiting.values()):
            if waited == pid:
                slot.fail(error)
        self.refs.remove_pid(pid)
        self._client_notices.pop(pid, None)
        self._link_ready.pop(pid, None)
        self._stub_times.pop(pid, None)
        self._connect_failures.pop(pid, None)
        acked = self._acked.pop(pid, None)
        if acked is not None:
            acked.set()
        joined = self._joined.pop(pid, None)
        if joined is not None:
            joined.set()
        self.departed(pid).set()
        membership_changed(self)

        if pid == MASTER and not self.group.is_master:
            self.stop(0 if self.stopped.is_set() else 1)
            return
        if self.group.is_master:
            if peer is not None and peer.state is not PeerState.TERMINATING:
                log.warning("Worker %d terminated.", pid)
            self._forget_worker(pid)

    def _forget_worker(self, pid: int) -> None:
        """Master side of a departure: reap the process, tell the others."""
        handle = self.handles.pop(pid, None)
        self.idents.pop(pid, None)
        managed = self.managed.pop(pid, None)
        if managed is not None:
            self.spawn(managed.deregister)
        if handle is not None:
            self.spawn(handle.stop, 5.0)
        for other in list(self.links.values()):
            # Workers on their way out need no news of each other (at close,
            # that would be a message per pair of workers).
            if self._is_terminating(other.peer):
                continue
            self.spawn(self._send_quietly, other, Header(), DeregisterMsg(pid))

    def _is_terminating(self, pid: int) -> bool:
        return (
            self.group.is_known(pid)
            and self.group.peer(pid).state is PeerState.TERMINATING
        )

    async def _send_quietly(self, link: Link, header: Header, msg: Message) -> None:
        with contextlib.suppress(ProcessExitedException):
            await link.send(header, msg)

    def departed(self, pid: int) -> trio.Event:
        """An event set once ``pid`` has left the cluster."""
        event = self._departures.get(pid)
        if event is None:
            event = self._departures[pid] = trio.Event()
            if self.group.has_left(pid):
                event.set()
        return event

    async def link_to(self, pid: int) -> Link:
        """The link to ``pid``, connecting as the cluster's topology allows.

        A lazy all-to-all worker connects on first use; an eager one waits
        (up to the worker timeout, counted from when it first heard of the
        peer) for the higher pid to dial it; ``master_worker`` and
        ``custom`` clusters raise ``TopologyError`` for an unconnected peer.
        """
        link = self.links.get(pid)
        if link is not None and not link.closed:
            return link
        peer = self.group.peer(pid)
        if self.group.is_master or pid == MASTER:
            raise ProcessExitedException(pid)
        failure = self._connect_failures.get(pid)
        if failure is not None:
            # Julia's stub keeps the failed connect: every try rethrows it.
            raise DistributedError(failure)
        if not self.group.lazy:
            return await self._await_dialled(pid)

        ready = self._link_ready.get(pid)
        if ready is None:
            ready = self._link_ready[pid] = trio.Event()
            self.spawn(self._connect_peer, peer)
        with trio.move_on_after(self.worker_timeout):
            await ready.wait()
        link = self.links.get(pid)
        if link is None:
            if self.group.has_left(pid):
                raise ProcessExitedException(pid)
            failure = self._connect_failures.setdefault(
                pid,
                f"peer {pid} didn't connect to {self.myid} within "
                f"{self.worker_timeout:g} seconds",
            )
            raise DistributedError(failure)
        return link

    async def _await_dialled(self, pid: int) -> Link:
        """Non-lazy clusters: the link exists already, or the peer dials us."""
        topology = self.group.topology
        if topology != "all_to_all":
            raise TopologyError(
                f"peer {pid} is not connected to {self.myid}. Topology : {topology}"
            )
        # Higher pids dial lower ones while they join: give it the rest of
        # the worker timeout, counted from when this stub appeared.
        since = self._stub_times.setdefault(pid, trio.current_time())
        remaining = self.worker_timeout - (trio.current_time() - since)
        if remaining <= 0:
            raise DistributedError(f"peer {pid} has not connected to {self.myid}")
        ready = self._link_ready.setdefault(pid, trio.Event())
        with trio.move_on_after(remaining):
            await ready.wait()
        link = self.links.get(pid)
        if link is None:
            if self.group.has_left(pid):
                raise ProcessExitedException(pid)
            raise DistributedError(
                f"peer {pid} didn't connect to {self.myid} within {remaining:g} seconds"
            )
        return link

    async def _connect_peer(self, peer: Peer) -> None:
        """Make the link to ``peer`` exist: dial it, or have it dial us.

        A failure is remembered (later attempts raise it at once) and wakes
        whoever waits for the link.
        """
        try:
            if self.myid > peer.pid:
                if not peer.host:
                    peer.host, peer.port = await self.remotecall_fetch(
                        _peer_address, MASTER, (peer.pid,), {}
                    )
                link = await self.open_link(peer.pid, peer.host, peer.port)
                await link.send(Header(), IdentifySocketMsg(self.myid))
            else:
                await self.remotecall_fetch(
                    _ask_to_connect, MASTER, (peer.pid, self.myid), {}
                )
        except (DistributedError, *_STREAM_ERRORS) as exc:
            log.warning(
                "Process(%d) - could not connect to peer %d: %s",
                self.myid,
                peer.pid,
                _brief(exc),
            )
            if peer.pid not in self.links and not self.group.has_left(peer.pid):
                self._connect_failures[peer.pid] = (
                    f"peer {peer.pid} didn't connect to {self.myid}: {_brief(exc)}"
                )
                ready = self._link_ready.get(peer.pid)
                if ready is not None:
                    ready.set()

    async def _dial_and_identify(self, peer: Peer) -> None:
        """Eager join: dial ``peer``, identify, wait for its acknowledgement."""
        acked = self._acked[peer.pid] = trio.Event()
        link = await self.open_link(peer.pid, peer.host, peer.port)
        await link.send(Header(), IdentifySocketMsg(self.myid))
        await acked.wait()
        if self.links.get(peer.pid) is not link:
            raise ProcessExitedException(peer.pid)

    async def _connect_listed(self, msg: JoinPGRPMsg) -> bool:
        """Dial every peer JoinPGRP listed, concurrently; False if one failed.

        As in Julia, a worker that cannot reach a listed peer logs it and
        exits with status 1 instead of joining.
        """
        failed: list[tuple[int, BaseException]] = []

        async def dial(pid: int) -> None:
            try:
                with trio.fail_after(self.worker_timeout):
                    await self._dial_and_identify(self.group.peer(pid))
            except (DistributedError, trio.TooSlowError, *_STREAM_ERRORS) as exc:
                failed.append((pid, exc))

        async with trio.open_nursery() as nursery:
            for pid, _host, _port in msg.peers:
                nursery.start_soon(dial, pid)
        if not failed:
            return True
        pid, error = failed[0]
        log.error(
            "Error on %d while connecting to peer %d, exiting: %r",
            self.myid,
            pid,
            error,
        )
        self.stop(1)
        return False

    # ------------------------------------------------------------- dispatch

    def _handle(self, link: Link, header: Header, msg: Message) -> None:
        """Act on one message; never blocks (work goes to new tasks)."""
        if isinstance(msg, CallMsg):
            if msg.mode == "call":
                slot = self._owned_slot(header.response)
                self.spawn(self._run_and_store, slot, msg.f, msg.args, msg.kwargs)
            else:
                self.spawn(
                    self._run_and_reply,
                    link,
                    header.notify,
                    msg.f,
                    msg.args,
                    msg.kwargs,
                )
        elif isinstance(msg, CallWaitMsg):
            slot = self._owned_slot(header.response)
            self.spawn(self._run_store_reply, link, header.notify, slot, msg)
        elif isinstance(msg, RemoteDoMsg):
            self.spawn(self._run_quietly, msg.f, msg.args, msg.kwargs)
        elif isinstance(msg, ResultMsg):
            self._deliver(header.response, msg.value)
        elif isinstance(msg, ClientsMsg):
            self._apply_clients(msg)
        elif isinstance(msg, JoinCompleteMsg):
            self._join_complete(link.peer, msg)
        elif isinstance(msg, SetPeersMsg):
            self.local_pids = set(msg.local)
            now = trio.current_time()
            for pid, host, port in msg.peers:
                if pid != self.myid and not self.group.has_left(pid):
                    self._stub_times.setdefault(pid, now)
                    known = self.group.add_peer(Peer(pid, host, port))
                    if not known.host:
                        known.host, known.port = host, port
        elif isinstance(msg, DeregisterMsg):
            other = self.links.get(msg.pid)
            if other is not None:
                self.spawn(other.aclose)
            else:
                self.group.remove(msg.pid)
                membership_changed(self)
                # It may hold references we own though it never linked to
                # us (it got them from a third process): forget it as holder.
                self.refs.remove_pid(msg.pid)
                self._client_notices.pop(msg.pid, None)
        elif isinstance(msg, ExitMsg):
            self.stop(0)
        elif isinstance(msg, JoinPGRPMsg):
            self.spawn(self._answer_join, link, msg)
        elif isinstance(msg, IdentifySocketAckMsg):
            acked = self._acked.pop(link.peer, None)
            if acked is not None:
                acked.set()

    def _owned_slot(self, rrid: RRID) -> Slot:
        storage = self.refs.get_or_create(rrid, Slot).storage
        if not isinstance(storage, Slot):
            raise TypeError(f"reference {tuple(rrid)} names a channel, not a Future")
        return storage

    def owned_channel(self, rrid: RRID, factory: ChannelFactory | None) -> Channel:
        """The channel stored here under ``rrid``, made at first use."""

        def make() -> Channel:
            made = factory() if factory is not None else Channel(1)
            if not isinstance(made, Channel):
                raise TypeError(
                    f"RemoteChannel factory returned {type(made).__name__}, "
                    "not a ref.Channel"
                )
            return made

        storage = self.refs.get_or_create(rrid, make).storage
        if not isinstance(storage, Channel):
            raise TypeError(f"reference {tuple(rrid)} names a Future, not a channel")
        return storage

    async def channel_op(self, chan: RemoteChannel, op: str, *args: object) -> Any:
        """Run a channel operation on the owner; local ones copy nothing."""
        self.check_home(chan)
        if chan.where == self.myid:
            if chan.rrid not in self.refs:
                # First use: a failing factory fails as a remote owner's
                # would, with a RemoteException (from this process).
                try:
                    self.owned_channel(chan.rrid, chan.factory)
                except Exception as exc:
                    raise self._capture(exc) from exc
            return await _channel_call(self, chan.rrid, chan.factory, op, args)
        result = await self.remotecall_fetch(
            _channel_owned, chan.where, (chan.rrid, chan.factory, op, args), {}
        )
        chan.factory = None
        return result

    def _deliver(self, rrid: RRID, value: object) -> None:
        waiting = self._waiting.get(rrid)
        if waiting is not None:
            waiting[0].set(value)
            return
        entry = self.refs.get(rrid)
        storage = entry.storage if entry is not None else None
        if isinstance(storage, Slot) and not storage.is_set:
            storage.set(value)

    def _report_undecodable(
        self, link: Link, header: Header, error: BaseException
    ) -> None:
        """A body failed to decode: tell whoever waits, keep the link."""
        log.warning(
            "Process(%d) - could not decode a message from %d: %r",
            self.myid,
            link.peer,
            error,
        )
        failure = self._capture(error)
        if header.response in self._waiting:
            # An undecodable ResultMsg: fail the caller waiting for it.
            self._deliver(header.response, failure)
        elif header.response.id:
            slot = self._owned_slot(header.response)
            if not slot.is_set:
                slot.set(failure)
        if header.notify.id:
            self.spawn(self._reply, link, header.notify, failure)

    # ------------------------------------------------------ running calls

    def _capture(self, error: BaseException) -> RemoteException:
        tb = "".join(traceback.format_exception(error))
        return RemoteException(self.myid, error, tb)

    async def _run_call(
        self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> object:
        """Run f; a raised exception becomes a RemoteException value.

        The call can be interrupted (``interrupt_calls``) while it awaits,
        or by a KeyboardInterrupt raised inside it while it runs without
        awaiting (a real worker's SIGINT handler does that, see
        ``relay_interrupts``): it then ends with a RemoteException wrapping
        KeyboardInterrupt.  A plain function gets no cancel scope (one would
        cost more than many a call).  The runtime's own helpers that serve
        references are never interrupted: they work for callers elsewhere.
        This frame is the one remote tracebacks start from.
        """
        try:
            # While a caller's f runs without awaiting, a SIGINT handler may
            # raise KeyboardInterrupt inside it (see relay_interrupts).
            self.running_plain_call = not getattr(f, _SERVES_REFERENCES, False)
            try:
                result = f(*args, **kwargs)
            finally:
                self.running_plain_call = False
            if inspect.isawaitable(result):
                if getattr(f, _SERVES_REFERENCES, False):
                    # Serves a caller elsewhere: never interrupted.
                    result = await result
                    return result
                scope = self._call_scope()
                try:
                    with scope:
                        result = await result
                finally:
                    self._running_calls.pop(scope, None)
                if scope.cancelled_caught:
                    return _interrupted(self.myid)
            return result
        except Exception as exc:
            return self._capture(exc)
        except KeyboardInterrupt:
            if self.myid == MASTER:
                raise
            return _interrupted(self.myid)
        except SystemExit as exc:
            if self.myid == MASTER:
                raise
            # As with Julia's exit() on a worker: the process ends and the
            # caller learns it the usual way, by the link closing.
            log.warning(
                "Process(%d) - a call ran sys.exit(%r); this worker exits",
                self.myid,
                exc.code,
            )
            self.stop(_exit_status(exc.code))
            await trio.sleep_forever()

    def _call_scope(self) -> trio.CancelScope:
        """A cancel scope for a call, which ``interrupt_calls`` cancels.

        The caller unregisters it (from ``_running_calls``) when the call
        ends.
        """
        scope = trio.CancelScope()
        self._running_calls[scope] = None
        return scope

    def interrupt_calls(self) -> int:
        """Interrupt every call running here for a caller; returns how many.

        What a worker does on SIGINT: each call fails with a RemoteException
        wrapping KeyboardInterrupt at its next checkpoint, and the process
        keeps serving.  With no call running it changes nothing.
        """
        calls = list(self._running_calls)
        for scope in calls:
            scope.cancel()
        if calls:
            log.info("Process(%d) - interrupted %d call(s)", self.myid, len(calls))
        return len(calls)

    async def _run_and_store(
        self,
        slot: Slot,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        value = await self._run_call(f, args, kwargs)
        if not slot.is_set:
            slot.set(value)

    async def _run_and_reply(
        self,
        link: Link,
        notify: RRID,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        await self._reply(link, notify, await self._run_call(f, args, kwargs))

    async def _run_store_reply(
        self, link: Link, notify: RRID, slot: Slot, msg: CallWaitMsg
    ) -> None:
        value = await self._run_call(msg.f, msg.args, msg.kwargs)
        if not slot.is_set:
            slot.set(value)
        answer = value if isinstance(value, RemoteException) else "ok"
        await self._reply(link, notify, answer)

    async def _run_quietly(
        self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        value = await self._run_call(f, args, kwargs)
        if isinstance(value, RemoteException):
            log.error("Process(%d) - error in remote_do:\n%s", self.myid, value)

    async def _reply(self, link: Link, notify: RRID, value: object) -> None:
        """Send a result back; an unpicklable one becomes a RemoteException."""
        if isinstance(value, RemoteException):
            value = self._portable(value)
        try:
            await link.send(Header(response=notify), ResultMsg(value))
        except ProcessExitedException:
            log.debug(
                "Process(%d) - caller %d left before the reply", self.myid, link.peer
            )
        except Exception as exc:
            error = TypeError(
                f"the result of type {type(value).__name__} could not be sent "
                f"back from process {self.myid}: {exc}"
            )
            try:
                await link.send(
                    Header(response=notify), ResultMsg(self._capture(error))
                )
            except Exception as again:
                log.error("Process(%d) - could not send a reply: %r", self.myid, again)

    def _portable(self, error: RemoteException) -> RemoteException:
        """``error`` with its exception wrapped to travel whatever it holds.

        An exception that cannot be encoded here, or decoded by the
        receiver, arrives as a ``RuntimeError`` naming its type and text.
        """
        wrapped = _PortableException(error.exception, error.pid, self.codec)
        return RemoteException(error.pid, wrapped, error.remote_traceback)

    # ------------------------------------------------------ calling others

    async def _await_answer(
        self,
        pid: int,
        header: Header,
        msg: Message,
        answer: RRID,
        on_orphan: Orphan | None = None,
    ) -> object:
        """Send ``msg`` to ``pid`` and wait for the ResultMsg to ``answer``.

        With ``on_orphan``, a wait cancelled after the message went out
        leaves a task behind that receives the answer and hands it to
        ``on_orphan`` (an answer that moves something, such as a pool
        member, must not be dropped on the floor).
        """
        slot = Slot()
        self._waiting[answer] = (slot, pid)
        sent = adopted = False
        try:
            link = self.links.get(pid)
            if link is None or link.closed:
                link = await self.link_to(pid)
            await link.send(header, msg)
            sent = True
            return await slot.wait()
        except trio.Cancelled:
            # A send cancelled before its bytes were written never reaches
            # the callee (Link finishes any write it has started).
            if sent and on_orphan is not None:
                adopted = True
                self.spawn(self._adopt_orphan, answer, slot, on_orphan)
            raise
        finally:
            if not adopted:
                del self._waiting[answer]

    async def _adopt_orphan(self, answer: RRID, slot: Slot, on_orphan: Orphan) -> None:
        """Receive the answer a cancelled caller no longer waits for."""
        try:
            value = await slot.wait()
        except ProcessExitedException:
            return  # the callee left: whatever it answered left with it
        finally:
            self._waiting.pop(answer, None)
        if not isinstance(value, RemoteException):
            await on_orphan(value)

    async def remotecall_fetch(
        self,
        f: Callable[..., Any],
        pid: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        on_orphan: Orphan | None = None,
    ) -> Any:
        """Call ``f`` on ``pid`` and return its value.

        ``on_orphan`` receives the value should the caller be cancelled
        after the call went out (see ``_await_answer``); a local call is
        cancelled with its caller, so it has no orphans.
        """
        if pid == self.myid:
            value = await self._run_call(f, args, kwargs)
        else:
            self._check_target(pid)
            notify = self.group.next_rrid()
            value = await self._await_answer(
                pid,
                Header(notify=notify),
                CallMsg(f, args, kwargs, "call_fetch"),
                notify,
                on_orphan,
            )
        if isinstance(value, RemoteException):
            raise value
        return value

    async def remotecall(
        self,
        f: Callable[..., Any],
        pid: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future:
        rrid = self.group.next_rrid()
        if pid == self.myid:
            fut = self.adopt(Future, pid, rrid, MISSING)
            slot = self._owned_slot(rrid)
            self.spawn(self._run_and_store, slot, f, args, kwargs)
            return fut

        self._check_target(pid)
        link = await self.link_to(pid)
        fut = self.adopt(Future, pid, rrid, MISSING)
        await link.send(Header(response=rrid), CallMsg(f, args, kwargs, "call"))
        return fut

    async def remotecall_wait(
        self,
        f: Callable[..., Any],
        pid: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future:
        if pid == self.myid:
            fut = await self.remotecall(f, pid, args, kwargs)
            await self.wait_future(fut)
            return fut

        self._check_target(pid)
        rrid = self.group.next_rrid()
        notify = self.group.next_rrid()
        fut = self.adopt(Future, pid, rrid, MISSING)
        answer = await self._await_answer(
            pid, Header(rrid, notify), CallWaitMsg(f, args, kwargs), notify
        )
        if isinstance(answer, RemoteException):
            raise answer
        return fut

    async def remote_do(
        self,
        f: Callable[..., Any],
        pid: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        if pid == self.myid:
            self.spawn(self._run_quietly, f, args, kwargs)
            return
        self._check_target(pid)
        link = await self.link_to(pid)
        await link.send(Header(), RemoteDoMsg(f, args, kwargs))

    def _check_target(self, pid: int) -> None:
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise TypeError(f"pid must be an int, got {pid!r}")
        self.group.peer(pid)

    # ------------------------------------------------------------ futures

    def adopt(self, kind: type[R], where: int, rrid: RRID, value: object) -> R:
        """The one local reference object of ``kind`` for ``rrid`` here.

        A new object is tracked: when it is garbage-collected while the
        owner still counts this process as a holder, a "del client" notice
        is queued.  Receiving a reference to a value this process owns makes
        this process a holder too.
        """
        known = self._local_refs.get(rrid)
        if known is not None:
            if (
                isinstance(known, Future)
                and value is not MISSING
                and not known.has_value
            ):
                known.cache(value)
                self.forget_holder(known)
            assert isinstance(known, kind)
            return known

        obj = kind._make(where, rrid, value)  # type: ignore[attr-defined]  # every kind has _make
        assert isinstance(obj, kind)
        self._local_refs[rrid] = obj
        obj._home = weakref.ref(self)
        if obj.tracked:
            if where == self.myid:
                self.refs.announce(rrid, self.myid, added=True)
            self._finalizers[rrid] = weakref.finalize(obj, self._finalized, rrid, where)
        return obj

    def check_home(self, ref: RemoteRef) -> None:
        """Refuse a reference that belongs to another (e.g. closed) cluster."""
        if not ref.belongs_to(self):
            raise ReferenceNotFoundError(
                f"{ref!r} belongs to another cluster (one that has closed, or a "
                f"different one) than process {self.myid}'s; a reference can only "
                "be used in the cluster that created it"
            )

    def forget_holder(self, ref: RemoteRef) -> None:
        """This process no longer needs the owner to keep ``ref``'s value."""
        if isinstance(ref, Future) and ref._waits:
            # A wait or isready of ours is on its way to the owner: letting
            # go now could free the value before it arrives, and it would
            # then wait on an empty slot for ever.
            ref._release_deferred = True
            return
        finalizer = self._finalizers.pop(ref.rrid, None)
        if finalizer is not None:
            finalizer.detach()
        self.note_client(ref.rrid, ref.where, self.myid, added=False)

    def _finalized(self, rrid: RRID, where: int) -> None:
        # Called by the garbage collector, possibly in the middle of any
        # task: only queue the notice and wake the flusher.
        self._finalizers.pop(rrid, None)
        if self.stopped.is_set() or self._token is None:
            return
        self._client_notices.setdefault(where, []).append((False, rrid, self.myid))
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._notices_pending.set)

    def note_client(self, rrid: RRID, owner: int, pid: int, *, added: bool) -> None:
        """Record that ``pid`` gained or dropped a reference owned by ``owner``."""
        if owner == self.myid:
            self.refs.announce(rrid, pid, added=added)
            return
        if self.group.has_left(owner):
            return
        self._client_notices.setdefault(owner, []).append((added, rrid, pid))
        self._notices_pending.set()

    def after_send(self, pid: int) -> None:
        if self._client_notices:
            self._notices_pending.set()

    async def _flush_notices_forever(self) -> None:
        """Send queued add/del client notices, batched per owner."""
        while True:
            await self._notices_pending.wait()
            self._notices_pending = trio.Event()
            for owner in list(self._client_notices):
                if owner == self.myid:
                    self._apply_clients(ClientsMsg(self.take_notices(owner)))
                    continue
                if not self.group.is_known(owner):
                    # The owner has left, or was never heard of (Julia's
                    # id_in_procs check): the notices are moot.
                    self._client_notices.pop(owner, None)
                    continue
                try:
                    # Connecting first if need be, as Julia's remote_do would.
                    link = await self.link_to(owner)
                    await link.flush_notices()
                except DistributedError:
                    self._client_notices.pop(owner, None)

    def take_notices(self, pid: int) -> tuple[tuple[bool, RRID, int], ...]:
        """Remove and return the reference-count notices queued for ``pid``."""
        return tuple(self._client_notices.pop(pid, ()))

    def requeue_notices(
        self, pid: int, notices: tuple[tuple[bool, RRID, int], ...]
    ) -> None:
        """Put back notices that could not be sent, ahead of newer ones."""
        if notices:
            self._client_notices[pid] = [*notices, *self._client_notices.get(pid, [])]

    def _apply_clients(self, msg: ClientsMsg) -> None:
        for added, rrid, pid in msg.changes:
            self.refs.announce(rrid, pid, added=added)

    async def fetch_future(self, fut: Future) -> Any:
        """The Future's value, fetched once and cached; a failure raises."""
        self.check_home(fut)
        async with fut.lock:
            with self._asking_owner(fut):
                if fut.has_value:
                    value = fut.cached
                elif fut.where == self.myid:
                    value = await self._owned_slot(fut.rrid).wait()
                else:
                    value = await self.remotecall_fetch(
                        _fetch_owned, fut.where, (fut.rrid,), {}
                    )
                if isinstance(value, RemoteException):
                    raise value
                if not fut.has_value:
                    fut.cache(value)
                    self.forget_holder(fut)
        return value

    async def wait_future(self, fut: Future) -> Future:
        self.check_home(fut)
        with self._asking_owner(fut):
            if fut.has_value:
                return fut
            if fut.where == self.myid:
                value = await self._owned_slot(fut.rrid).wait()
            else:
                value = await self.remotecall_fetch(
                    _wait_owned, fut.where, (fut.rrid,), {}
                )
        if isinstance(value, RemoteException):
            raise value
        return fut

    async def isready_future(self, fut: Future) -> bool:
        self.check_home(fut)
        with self._asking_owner(fut):
            if fut.has_value:
                return True
            if fut.where == self.myid:
                return self._owned_slot(fut.rrid).is_set
            ready: bool = await self.remotecall_fetch(
                _isready_owned, fut.where, (fut.rrid,), {}
            )
        return ready

    @contextlib.contextmanager
    def _asking_owner(self, fut: Future) -> Iterator[None]:
        """Keep this process a holder of ``fut`` while a question is out."""
        fut._waits += 1
        try:
            yield
        finally:
            fut._waits -= 1
            if not fut._waits and fut._release_deferred:
                fut._release_deferred = False
                self.forget_holder(fut)

    async def put_future(self, fut: Future, value: object) -> Future:
        self.check_home(fut)
        if fut.has_value:
            raise FutureAlreadySetError("Future can be set only once")
        if fut.where == self.myid:
            self._owned_slot(fut.rrid).set(value)
            fut.cache(value)
            self.forget_holder(fut)
            return fut
        await self.remotecall_fetch(_put_owned, fut.where, (fut.rrid, value), {})
        fut.cache(value)
        # Let go through the ordinary notice, after any fetch or wait of
        # ours still on its way to the owner (which would otherwise find
        # the value freed by this put and wait for ever).
        self.forget_holder(fut)
        return fut

    # ------------------------------------------------------------ joining

    def _join(self, msg: JoinPGRPMsg) -> None:
        """Worker side of JoinPGRP: adopt our pid and learn the peers."""
        self.group.myid = msg.self_pid
        self.group.topology = msg.topology
        self.group.lazy = msg.lazy
        self.worker_timeout = msg.worker_timeout
        master = self.group.add_peer(Peer(MASTER, "", 0))
        master.state = PeerState.CONNECTED
        now = trio.current_time()
        for pid, host, port in msg.peers:
            self._stub_times.setdefault(pid, now)
            self.group.add_peer(Peer(pid, host, port))
        self.joined_master.set()

    async def _answer_join(self, link: Link, msg: JoinPGRPMsg) -> None:
        """Answer JoinPGRP, after dialling the listed peers unless lazy."""
        if not msg.lazy and msg.peers and not await self._connect_listed(msg):
            return
        await self._send_quietly(
            link, Header(), JoinCompleteMsg(os.cpu_count() or 1, os.getpid())
        )

    def _join_complete(self, pid: int, msg: JoinCompleteMsg) -> None:
        peer = self.group.peer(pid)
        peer.state = PeerState.CONNECTED
        peer.ospid = msg.ospid
        joined = self._joined.pop(pid, None)
        if joined is not None:
            joined.set()
        # Julia pushes every joining worker into the default pool.
        worker_joined(self, pid)

    async def setup_worker(self, launched: LaunchedWorker, pid: int = 0) -> int:
        """Master side: give a launched worker a pid and wait until it joined.

        ``pid`` is one the caller allocated already (0: allocate one now).

        The JoinPGRP message lists the peers the worker may reach, by
        topology: the lower pids for ``all_to_all`` (an eager cluster first
        waits for each of them to finish joining, since the worker dials
        them at once), none for ``master_worker``, and for ``custom`` the
        workers whose ident is in the worker's ``connect_idents``, waited
        for up to the worker timeout.
        """
        pid = pid or self.group.allocate_pid()
        peer = self.group.add_peer(Peer(pid, launched.host, launched.port))
        self.handles[pid] = launched.handle
        self.all_handles.append(launched.handle)
        if launched.local:
            self.local_pids.add(pid)
        if launched.ident is not None:
            self.idents[pid] = launched.ident
        joined = self._joined[pid] = trio.Event()
        self._members_changed.set()
        self._members_changed = trio.Event()

        reason = (
            f"worker {pid} did not connect within {self.worker_timeout:g} "
            f"seconds; raise {_timeout_hint()} if workers start slowly"
        )
        try:
            link = await self._reach(pid, launched)
            peers = await self._join_peers(pid, launched)
            join = JoinPGRPMsg(
                pid, peers, self.group.topology, self.group.lazy, self.worker_timeout
            )
            await link.send(Header(), join)
            with trio.move_on_after(self.worker_timeout):
                await joined.wait()
        except ProcessExitedException:
            pass
        except LaunchError as exc:
            reason = str(exc)

        if peer.state is not PeerState.CONNECTED:
            # Wake the setups waiting for this one before they list it.
            self._joined.pop(pid, joined).set()
            self.idents.pop(pid, None)
            link_now = self.links.get(pid)
            if link_now is not None:
                await link_now.aclose()
            self.group.remove(pid)
            self.handles.pop(pid, None)
            launched.handle.kill()
            raise LaunchError(reason)
        launched.handle.start_output_relay(pid, self.nursery_or_fail())
        return pid

    async def _reach(self, pid: int, launched: LaunchedWorker) -> Link:
        """Open the link to a launched worker: TCP, or its own transport."""
        if launched.connect is None:
            return await self.open_link(pid, launched.host, launched.port)
        try:
            stream = await launched.connect(pid)
        except OSError as exc:
            raise ProcessExitedException(pid) from exc
        return await self.adopt_stream(pid, stream)

    async def _join_peers(
        self, pid: int, launched: LaunchedWorker
    ) -> tuple[tuple[int, str, int], ...]:
        """The ``(pid, host, port)`` peers JoinPGRP lists for worker ``pid``."""
        topology = self.group.topology
        if topology == "master_worker":
            return ()
        if topology == "custom":
            chosen = await self._custom_peers(pid, launched.connect_idents)
            peers = [self.group.peer(p) for p in chosen if not self.group.has_left(p)]
            return tuple((p.pid, p.host, p.port) for p in peers)

        chosen = [p.pid for p in self.group.peers() if 1 < p.pid < pid]
        if not self.group.lazy:
            for other in chosen:
                event = self._joined.get(other)
                if event is not None:
                    await event.wait()
        peers = [self.group.peer(p) for p in chosen if not self.group.has_left(p)]
        return tuple(
            (p.pid, p.host, p.port) for p in peers if p.state is PeerState.CONNECTED
        )

    async def _custom_peers(self, pid: int, wanted: tuple[object, ...]) -> list[int]:
        """Custom topology: the workers whose ident ``wanted`` lists.

        Waits up to the worker timeout for as many of them to exist as
        ``wanted`` names.  They need not have joined: a launched worker
        listens already, and accepts a peer before its own join, so two
        workers that name each other (or a ring) cannot wait for each other
        forever.
        """
        with trio.move_on_after(self.worker_timeout):
            while True:
                found = [
                    p
                    for p, ident in list(self.idents.items())
                    if p != pid and ident in wanted
                ]
                if len(found) >= len(wanted):
                    return found
                await self._members_changed.wait()
        raise LaunchError(
            f"peer workers did not connect within {self.worker_timeout:g} seconds"
        )

    async def announce_peers(self) -> None:
        """After addprocs: tell every worker the full membership."""
        peers = tuple(
            (p.pid, p.host, p.port)
            for p in self.group.peers()
            if p.state is PeerState.CONNECTED
        )
        for link in list(self.links.values()):
            await self._send_quietly(
                link, Header(), SetPeersMsg(peers, tuple(sorted(self.local_pids)))
            )

    def nursery_or_fail(self) -> trio.Nursery:
        if self.nursery is None:
            raise RuntimeError(f"process {self.myid} is not running")
        return self.nursery

    # ------------------------------------------------------------ removal

    async def remove_workers(self, pids: list[int]) -> list[int]:
        """Ask each worker to exit; returns those still present afterwards.

        A worker a cluster manager added is removed by the manager's
        ``kill`` (whose default is the same request).
        """
        for pid in pids:
            if self.group.has_left(pid):
                continue  # it left while we were asking the others
            peer = self.group.peer(pid)
            peer.state = PeerState.TERMINATING
            membership_changed(self)
            managed = self.managed.get(pid)
            if managed is not None:
                await managed.kill()
            else:
                await self.ask_to_exit(pid)
        return [p for p in pids if p in self.links]

    async def ask_to_exit(self, pid: int) -> None:
        """Send worker ``pid`` the request to exit, if it is still linked."""
        link = self.links.get(pid)
        if link is not None:
            await self._send_quietly(link, Header(), ExitMsg())

    def require_master(self, what: str) -> None:
        if not self.group.is_master:
            raise NotMasterError(
                f"{what} was called on process {self.myid}: only process 1 "
                "can add and remove workers"
            )

    def lookup(self, pid: int) -> Peer:
        return self.group.peer(pid)

    def known_pid(self, pid: int) -> bool:
        try:
            self.group.peer(pid)
        except (ProcessExitedException, NoSuchProcessError):
            return False
        return True


#: What the remote traceback of an interrupted call says.
_INTERRUPTED = "KeyboardInterrupt: the call was interrupted by interrupt()\n"


def _interrupted(pid: int) -> RemoteException:
    """What a call interrupted on process ``pid`` answers."""
    return RemoteException(pid, KeyboardInterrupt(), _INTERRUPTED)


#: Marks a runtime helper that serves a reference: never interrupted.
_SERVES_REFERENCES = "_distref_serves_references"


def _serves_references(fn: F) -> F:
    setattr(fn, _SERVES_REFERENCES, True)
    return fn


def _text_of(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return f"<{type(error).__name__} whose str() failed>"


class _PortableException(Exception):
    """Carries a remote call's exception so the receiver always gets one.

    It is encoded as the exception's own pickle plus a description; the
    receiver rebuilds the original, or, if it cannot (a class or module it
    lacks, a broken ``__reduce__``), a ``RuntimeError`` from the description.
    It only ever exists on the sending side.
    """

    def __init__(self, error: BaseException, pid: int, codec: Codec) -> None:
        super().__init__(error)
        self.error = error
        self.pid = pid
        self.codec = codec

    def __reduce__(self) -> tuple[Any, ...]:
        head = f"{type(self.error).__name__}: {_text_of(self.error)}"
        try:
            # Encoded now, inside the message's own encoding, so references
            # the exception holds are tracked as usual.
            payload = self.codec.dumps(self.error)
        except Exception as exc:
            reason = f"could not be sent from process {self.pid}: {exc!r}"
            return (RuntimeError, (f"{head} (this exception {reason})",))
        return (_rebuild_exception, (payload, head, self.pid))


def _rebuild_exception(payload: bytes, head: str, pid: int) -> BaseException:
    """Receiving side of ``_PortableException``: the original, or a stand-in."""
    proc = peek_current()
    codec: Codec = proc.codec if proc is not None else CloudpickleCodec()
    try:
        error = codec.loads(payload)
    except Exception as exc:
        reason = f"from process {pid} could not be rebuilt here: {exc!r}"
        return RuntimeError(f"{head} (this exception {reason})")
    if not isinstance(error, BaseException):
        return RuntimeError(f"{head} (decoded as a {type(error).__name__})")
    return error


def _brief(error: BaseException) -> str:
    """One line naming ``error``: the remote one for a RemoteException."""
    if isinstance(error, RemoteException):
        error = error.exception
    text = _text_of(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _timeout_hint() -> str:
    return "DISTREF_WORKER_TIMEOUT"


# Functions run on the owner of a reference, through remotecall_fetch.


def _owner() -> Process:
    from ._context import current_process

    return current_process()


@_serves_references
async def _fetch_owned(rrid: RRID) -> object:
    return await _owner()._owned_slot(rrid).wait()


@_serves_references
async def _wait_owned(rrid: RRID) -> object:
    value = await _owner()._owned_slot(rrid).wait()
    return value if isinstance(value, RemoteException) else "ok"


@_serves_references
def _isready_owned(rrid: RRID) -> bool:
    return _owner()._owned_slot(rrid).is_set


@_serves_references
def _put_owned(rrid: RRID, value: object) -> None:
    _owner()._owned_slot(rrid).set(value)


@_serves_references
def _peer_address(pid: int) -> tuple[str, int]:
    peer = _owner().group.peer(pid)
    return peer.host, peer.port


@_serves_references
async def _ask_to_connect(target: int, requester: int) -> None:
    """On the master: have ``target`` (the higher pid) dial ``requester``."""
    proc = _owner()
    await proc.remotecall_fetch(_connect_to, target, (requester,), {})


@_serves_references
async def _connect_to(requester: int) -> None:
    await _owner().link_to(requester)


_CHANNEL_OPS = frozenset(
    {
        "put",
        "take",
        "fetch",
        "wait",
        "isready",
        "isempty",
        "isopen",
        "close",
        "getindex",
    }
)


async def _channel_call(
    proc: Process,
    rrid: RRID,
    factory: ChannelFactory | None,
    op: str,
    args: tuple[object, ...],
) -> Any:
    if op not in _CHANNEL_OPS:
        raise ValueError(f"unknown channel operation {op!r}")
    chan = proc.owned_channel(rrid, factory)
    if op == "getindex":
        head: Any = await chan.fetch()
        return head[args[0]]
    if op in ("put", "take", "fetch", "wait"):
        result = await getattr(chan, op)(*args)
        return None if op in ("put", "wait") else result
    return getattr(chan, op)()


@_serves_references
async def _channel_owned(
    rrid: RRID, factory: ChannelFactory | None, op: str, args: tuple[object, ...]
) -> Any:
    return await _channel_call(_owner(), rrid, factory, op, args)


def _exit_status(code: object) -> int:
    """The process status ``sys.exit(code)`` stands for, as Python reads it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1
