"""The simulated network: connections between nodes, as ordered byte streams.

The runtime assumes TCP, so this is what is modelled: connections, not
datagrams.  A connection has two directions; each carries a byte stream in
order, without loss or duplication, until the connection breaks.  What the
runtime reads and writes are ``SimStream`` objects, trio streams like the
TCP ones, so the real framing and handshake run over them unchanged.

Theory of operation:

* every ``send_all`` is one *chunk*.  Its arrival time is the time it
  finished serialising (``bandwidth``; one chunk after another per
  direction) plus a latency drawn from the link's distribution, and never
  earlier than the previous chunk of the same direction: delivery is FIFO
  per direction, and reordering happens only across connections;
* every chunk in flight waits in one heap keyed by (arrival ns, sequence
  number); when virtual time reaches the head, its bytes are appended to
  the receiver's buffer and its reader is woken.  That happens as trio's
  run loop wakes up at the arrival (an instrument hook), before any task
  runs, so the reader reads in that same pass; a *pump* task holds the
  next arrival as its deadline, for the mock clock to jump to, and
  delivers whatever the hook could not;
* a chunk that would cross a partition, or follows one that is held, is
  held on its direction (the connection stalls) and released, in order,
  when the partition heals; a partition that lasts ``break_after`` seconds
  resets the connections across it, as keep-alive expiry would;
* a connection ends cleanly with an end-of-file marker that travels like a
  chunk (after the data before it), or breaks with a reset: a reset from a
  crashed node travels to the peer after what was already in flight; a
  reset injected as a fault breaks both ends at once.

Everything that iterates does so over lists in creation order, and every
draw comes from the network's own seeded generator, so the schedule of
deliveries is a function of the seed.
"""

from __future__ import annotations

import bisect
import contextvars
import errno
import heapq
import itertools
import logging
import math
import operator
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from ref._seams import StreamHandler
from ref.protocol.framing import (
    _HEADER,
    _LENGTH,
    BOUNDARY,
    MAX_FRAME,
    encode_frame,
)
from ref.protocol.messages import Header

from ._clock import SimClock
from ._config import NetworkConfig, to_ns
from ._node import MessageNote, Node
from ._trace import Trace

log = logging.getLogger("sim")

#: The host name every simulated process listens on.  Ports are unique
#: across the whole simulated network, so one name serves all.
SIM_HOST = "sim"

#: The first port handed out; simulated ports count up from here.
FIRST_PORT = 9000

# Bytes a frame adds around its body; learnt from the real framing code.
_FRAME_OVERHEAD = len(encode_frame(Header(), b""))

_DATA = "data"

_Described = tuple[MessageNote | None, tuple[list[int], list[int]] | None]
_EOF = "eof"
_RESET = "reset"


class _Chunk:
    """One piece of a direction's stream, in flight or held."""

    __slots__ = ("data", "direction", "kind", "note", "order", "rrids")

    def __init__(
        self,
        direction: _Direction,
        kind: str,
        data: bytes = b"",
        note: MessageNote | None = None,
        rrids: tuple[list[int], list[int]] | None = None,
    ) -> None:
        self.direction = direction
        self.kind = kind
        self.data = data
        self.note = note
        self.rrids = rrids
        # Its place in the direction's stream, to keep held chunks in order.
        self.order = direction.chunks
        direction.chunks += 1


class _Direction:
    """One direction of a connection: the bytes from ``src`` to ``dst``."""

    __slots__ = (
        "broken",
        "buffer",
        "busy_until",
        "chunks",
        "conn",
        "dst",
        "eof",
        "eof_sent",
        "held",
        "last_arrival",
        "lot",
        "reader_closed",
        "send_lot",
        "src",
        "unread",
    )

    def __init__(self, conn: Connection, src: Node, dst: Node) -> None:
        self.conn = conn
        self.src = src
        self.dst = dst
        self.buffer = bytearray()
        self.eof = False
        self.broken = False
        self.eof_sent = False
        self.reader_closed = False
        self.held: list[_Chunk] = []
        self.chunks = 0
        self.lot = trio.lowlevel.ParkingLot()
        self.send_lot = trio.lowlevel.ParkingLot()
        self.unread = 0
        self.last_arrival = 0
        self.busy_until = 0

    def hold(self, chunk: _Chunk) -> None:
        """Keep ``chunk`` until the path heals, in stream order.

        A chunk in flight when the partition began arrives after chunks
        written later were already held: it goes before them.
        """
        bisect.insort(self.held, chunk, key=_stream_order)

    def wake(self) -> None:
        """Wake whoever waits to read from, or write to, this direction."""
        if self.lot:
            self.lot.unpark_all()
        if self.send_lot:
            self.send_lot.unpark_all()

    def consumed(self, size: int) -> None:
        """``size`` bytes left the window: read, or dropped on the way."""
        self.unread = max(0, self.unread - size)
        if self.send_lot:
            self.send_lot.unpark_all()

    def take(self, max_bytes: int | None) -> bytes:
        """Read up to ``max_bytes`` (all if None) of the buffered bytes."""
        buffer = self.buffer
        if max_bytes is None or max_bytes >= len(buffer):
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:max_bytes])
            del buffer[:max_bytes]
        self.consumed(len(data))
        return data


class Connection:
    """A connection between ``initiator`` and ``acceptor``, and its two ends."""

    def __init__(self, ident: int, initiator: Node, acceptor: Node) -> None:
        self.id = ident
        self.initiator = initiator
        self.acceptor = acceptor
        self.forward = _Direction(self, initiator, acceptor)
        self.backward = _Direction(self, acceptor, initiator)
        self.reset_sent = False

    def directions(self) -> tuple[_Direction, _Direction]:
        return self.forward, self.backward


class SimStream(trio.abc.HalfCloseableStream):
    """One end of a simulated connection, as the runtime sees it.

    Errors follow trio's sockets: ``ClosedResourceError`` after this end was
    closed, ``BrokenResourceError`` once the connection was reset, ``b""``
    from ``receive_some`` at the peer's end of file.  Two tasks using the
    same direction at once get ``BusyResourceError``.
    """

    def __init__(
        self,
        network: Network,
        node: Node,
        conn: Connection,
        out: _Direction,
        inp: _Direction,
    ) -> None:
        self._network = network
        self.node = node
        self.conn = conn
        self._out = out
        self._in = inp
        self.closed = False
        self._sending = False
        self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is writing to this stream")
        self._sending = True
        try:
            network = self._network
            node = self.node
            # Claimed before the first checkpoint: another task of this
            # process may encode its own message while this one waits.
            described = network.describe(node, data) if network.tracing else None
            await node.step()
            self._check_writable()
            out = self._out
            if out.unread > 0 and out.unread + len(data) > network.window:
                await self._wait_for_window(len(data))
            if data:
                network.send(self, out, bytes(data), described)
        finally:
            self._sending = False

    async def send_all_shielded(self, data: bytes, deadline: float) -> bool:
        """``send_all`` in a shielded scope with ``deadline``, mostly without one.

        What ``ref._seams.ShieldedSend`` asks for.  While the write takes no
        virtual time the scope would change nothing: the step's checkpoint
        is then only a schedule point (the shield hides the caller's
        cancellation, and the deadline lies ahead).  So a write by a node
        neither slow nor hung, into a window with room, takes that schedule
        point alone; whatever may wait (a hang begun meanwhile, a full
        window) waits inside the real scope, in ``send_all``'s order.
        """
        node = self.node
        if self._sending or node.step_delay > 0 or node.hung:
            with trio.CancelScope(shield=True, deadline=deadline) as scope:
                await self.send_all(data)
            return not scope.cancelled_caught
        self._sending = True
        try:
            network = self._network
            described = network.describe(node, data) if network.tracing else None
            # node.step() of a node neither slow nor hung, shielded.
            await trio.lowlevel.cancel_shielded_checkpoint()
            if node.hung:
                with trio.CancelScope(shield=True, deadline=deadline) as scope:
                    await node.wait_resumed()
                    await self._write_checked(data, described)
                return not scope.cancelled_caught
            self._check_writable()
            out = self._out
            if out.unread > 0 and out.unread + len(data) > network.window:
                with trio.CancelScope(shield=True, deadline=deadline) as scope:
                    await self._wait_for_window(len(data))
                    if data:
                        network.send(self, out, data, described)
                return not scope.cancelled_caught
            if data:
                network.send(self, out, data, described)
            return True
        finally:
            self._sending = False

    async def _write_checked(self, data: bytes, described: _Described | None) -> None:
        """What ``send_all`` does after its step."""
        self._check_writable()
        out = self._out
        network = self._network
        if out.unread > 0 and out.unread + len(data) > network.window:
            await self._wait_for_window(len(data))
        if data:
            network.send(self, out, bytes(data), described)

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is writing to this stream")
        self._sending = True
        try:
            await self.node.step()
            self._check_writable()
            await self._wait_for_window(1)
        finally:
            self._sending = False

    async def _wait_for_window(self, size: int) -> None:
        # Like a full socket buffer: wait until the reader has caught up.
        # A chunk bigger than the window goes alone into an empty one.
        out = self._out
        window = self._network.window
        while out.unread > 0 and out.unread + size > window:
            await out.send_lot.park()
            self._check_writable()

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is writing to this stream")
        self._sending = True
        try:
            await self.node.step()
            if self.closed:
                raise trio.ClosedResourceError("this stream was closed")
            if not self._out.eof_sent:
                self._network.finish(self, self._out)
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError(f"max_bytes={max_bytes!r} must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is reading this stream")
        self._receiving = True
        try:
            inp = self._in
            node = self.node
            # A read checkpoints once, as with trio's sockets: by returning
            # what is there after a step, or by waiting for it to arrive.
            if (
                inp.buffer
                or inp.eof
                or inp.broken
                or self.closed
                or node.hung
                or node.step_delay > 0
            ):
                await node.step()
            while True:
                if self.closed:
                    raise trio.ClosedResourceError("this stream was closed")
                if inp.buffer and not node.hung:
                    return inp.take(max_bytes)
                if inp.broken:
                    raise trio.BrokenResourceError("connection reset by peer")
                if inp.eof and not node.hung:
                    return b""
                if node.hung:
                    await node.step()
                else:
                    await inp.lot.park()
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self._network.close_end(self)
        await trio.lowlevel.checkpoint()

    def _check_writable(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("this stream was closed")
        if self._out.broken:
            raise trio.BrokenResourceError("connection reset by peer")
        if self._out.eof_sent:
            raise trio.ClosedResourceError("send_eof() was called on this stream")

    # The network's view of this end.

    @property
    def out(self) -> _Direction:
        return self._out

    @property
    def inp(self) -> _Direction:
        return self._in


@dataclass
class Listener:
    """A listening port of a node; accepted streams go to ``channel``."""

    node: Node
    host: str
    port: int
    channel: trio.MemorySendChannel[SimStream]


class _CallLog:
    """Pairs call messages with their results, for the trace's history.

    A call that expects an answer (``remotecall_fetch``, ``remotecall_wait``
    and the runtime's own fetches) is open from the frame that carries it
    until the frame with its result reaches the caller, or until the
    connection it travelled on ends first (outcome ``lost``).
    """

    def __init__(self, trace: Trace) -> None:
        self._trace = trace
        self._open: dict[tuple[int, int, int], tuple[int, int]] = {}

    def sent(self, conn: Connection, src: Node, dst: Node, chunk: _Chunk) -> None:
        note = chunk.note
        if note is None or chunk.rrids is None:
            return
        response, notify = chunk.rrids
        if note.kind in ("CallMsg", "CallWaitMsg", "RemoteDoMsg"):
            waits = notify[1] != 0
            rrid = notify if waits else response
            self._trace.event(
                "call_start",
                caller=src.pid,
                callee=dst.pid,
                f=note.function,
                mode=note.mode or note.kind,
                rrid=rrid,
                conn=conn.id,
            )
            if waits:
                self._open[(src.pid, notify[0], notify[1])] = (dst.pid, conn.id)

    def delivered(self, src: Node, dst: Node, chunk: _Chunk) -> None:
        note = chunk.note
        if note is None or chunk.rrids is None or note.kind != "ResultMsg":
            return
        response = chunk.rrids[0]
        if self._open.pop((dst.pid, response[0], response[1]), None) is not None:
            self._trace.event(
                "call_end",
                caller=dst.pid,
                callee=src.pid,
                rrid=response,
                outcome=note.outcome,
            )

    def lost(self, conn: Connection) -> None:
        """The connection ended: calls still open on it will get no answer."""
        for key, (callee, conn_id) in list(self._open.items()):
            if conn_id == conn.id:
                del self._open[key]
                self._trace.event(
                    "call_end",
                    caller=key[0],
                    callee=callee,
                    rrid=[key[1], key[2]],
                    outcome="lost",
                )


class Network:
    """Every connection, listener and chunk in flight of one cluster."""

    def __init__(
        self,
        *,
        config: NetworkConfig,
        rng: random.Random,
        trace: Trace,
        on_delivery: Callable[[], None],
    ) -> None:
        self.config = config
        self.window = config.window
        self._rng = rng
        self._trace = trace
        #: Whether chunks are described for the trace (it is on).
        self.tracing = trace.enabled
        self._on_delivery = on_delivery
        self._calls = _CallLog(trace)
        # Virtual seconds now; the pump swaps in the clock's own method,
        # which answers the same without two layers of lookups.
        self._now: Callable[[], float] = trio.current_time

        self.connections: list[Connection] = []
        self.listeners: dict[tuple[str, int], Listener] = {}
        self.deliveries = 0
        self._ports = itertools.count(FIRST_PORT)

        self._heap: list[tuple[int, int, _Chunk]] = []
        self._seq = itertools.count()
        self._pump_scope: trio.CancelScope | None = None
        # Whether the clock is a SimClock, which asks for the next arrival.
        self._clocked = False

        self._partitions: list[frozenset[int]] = []
        self._changed = trio.Event()

    # ------------------------------------------------------------- routing

    def blocked(self, a: Node, b: Node) -> bool:
        """Whether a partition separates ``a`` from ``b`` right now."""
        if not self._partitions:
            return False
        return any((a.pid in side) != (b.pid in side) for side in self._partitions)

    def has_partition(self, side: frozenset[int]) -> bool:
        return side in self._partitions

    def partitions(self) -> list[frozenset[int]]:
        """The partitions in place, oldest first."""
        return list(self._partitions)

    def add_partition(self, side: frozenset[int]) -> None:
        self._partitions.append(side)
        self._topology_changed()

    def remove_partition(self, side: frozenset[int]) -> None:
        """Heal one partition and release what it held, in order."""
        if side in self._partitions:
            self._partitions.remove(side)
        self._topology_changed()
        for conn in self.connections:
            for direction in conn.directions():
                self._release(direction)

    def _topology_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _release(self, direction: _Direction) -> None:
        if not direction.held or self.blocked(direction.src, direction.dst):
            return
        held, direction.held = direction.held, []
        for chunk in held:
            arrival = self._enqueue(chunk)
            self._trace.event(
                "release", conn=direction.conn.id, chunk=chunk.kind, at=arrival
            )

    def busy(self) -> bool:
        """Whether any byte is in flight, held by a partition, or unread.

        Unread bytes count only where a live reader could still take them.
        """
        if self._heap:
            return True
        for conn in self.connections:
            for direction in conn.directions():
                if direction.held:
                    return True
                if (
                    direction.buffer
                    and not direction.broken
                    and not direction.reader_closed
                    and not direction.dst.dead
                    and not direction.dst.done.is_set()
                ):
                    return True
        return False

    # ----------------------------------------------------------- listening

    async def listen(
        self, node: Node, host: str, handler: StreamHandler, nursery: trio.Nursery
    ) -> tuple[str, int]:
        """Open a port on ``node``; each accepted stream runs ``handler``."""
        port = next(self._ports)
        send, receive = trio.open_memory_channel[SimStream](math.inf)
        listener = Listener(node, host, port, send)
        self.listeners[(host, port)] = listener
        node.listeners.append(listener)
        self._trace.event("listen", node=node.name, pid=node.pid, port=port)

        # The accept loop runs in the listener's nursery, so each handler
        # starts from the listening process's task context.
        nursery.start_soon(_accept_loop, receive, handler, nursery)
        await trio.lowlevel.checkpoint()
        return host, port

    def close_listeners(self, node: Node) -> None:
        for listener in node.listeners:
            self.listeners.pop((listener.host, listener.port), None)
            listener.channel.close()
        node.listeners.clear()

    async def connect(self, node: Node, host: str, port: int) -> SimStream:
        """Open a connection from ``node`` to the listener at ``host:port``.

        Takes a round trip of virtual time.  Refused (``OSError``) when
        nothing listens there; times out (``OSError``) after
        ``connect_timeout`` when a partition stands in the way.
        """
        await node.step()
        listener = self.listeners.get((host, port))
        if listener is None:
            await trio.sleep(self._draw_latency(node, None))
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"nothing listens on {host}:{port}"
            )
        peer = listener.node
        await self._wait_route(node, peer, host, port)

        # The handshake's first leg: the peer learns of us after one trip.
        await trio.sleep(self._draw_latency(node, peer))
        listener = self.listeners.get((host, port))
        if listener is None or node.dead or self.blocked(node, peer):
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"connection to {host}:{port} refused"
            )
        conn = Connection(len(self.connections) + 1, node, peer)
        self.connections.append(conn)
        mine = SimStream(self, node, conn, conn.forward, conn.backward)
        theirs = SimStream(self, peer, conn, conn.backward, conn.forward)
        node.endpoints.append(mine)
        peer.endpoints.append(theirs)
        self._trace.event(
            "connect",
            conn=conn.id,
            src=node.pid,
            dst=peer.pid,
            src_node=node.name,
            dst_node=peer.name,
            port=port,
        )
        listener.channel.send_nowait(theirs)

        await trio.sleep(self._draw_latency(peer, node))
        return mine

    async def _wait_route(self, node: Node, peer: Node, host: str, port: int) -> None:
        timeout = self.config.connect_timeout
        with trio.move_on_after(timeout):
            while self.blocked(node, peer):
                await self._changed.wait()
            return
        raise TimeoutError(
            errno.ETIMEDOUT,
            f"connection to {host}:{port} timed out after {timeout:g} s "
            "(a partition is in the way)",
        )

    # ------------------------------------------------------------- sending

    def describe(self, node: Node, data: bytes | bytearray | memoryview) -> _Described:
        """What the frame ``node`` is about to write carries, for the trace."""
        if not self._trace.enabled:
            return None, None
        note = node.take_note(len(data), _FRAME_OVERHEAD)
        if note is None:
            return None, None
        return note, _frame_rrids(data)

    def send(
        self,
        end: SimStream,
        direction: _Direction,
        data: bytes,
        described: _Described | None,
    ) -> None:
        """Put one chunk written by ``end`` on the wire.

        ``described`` is what ``describe`` said the chunk carries, or None
        when the trace is off.
        """
        src, dst = direction.src, direction.dst
        note, rrids = described or (None, None)
        if src.dead:
            self._trace.event(
                "drop", conn=end.conn.id, src=src.pid, dst=dst.pid, why="sender dead"
            )
            return

        chunk = _Chunk(direction, _DATA, data, note, rrids)
        direction.unread += len(data)
        arrival = self._route(chunk)
        if self._trace.enabled:
            fields = _note_fields(note, rrids)
            self._trace.event(
                "send",
                conn=end.conn.id,
                src=src.pid,
                dst=dst.pid,
                bytes=len(data),
                at=arrival,
                **fields,
            )
            self._calls.sent(end.conn, src, dst, chunk)

    def finish(self, end: SimStream, direction: _Direction) -> None:
        """Send end-of-file after everything written so far."""
        direction.eof_sent = True
        if end.node.dead or direction.broken:
            return
        arrival = self._route(_Chunk(direction, _EOF))
        self._trace.event(
            "send_eof",
            conn=end.conn.id,
            src=direction.src.pid,
            dst=direction.dst.pid,
            at=arrival,
        )

    def close_end(self, end: SimStream) -> None:
        """``end`` was closed by its process: end-of-file to the peer."""
        # Nothing will ever be read here again: a writer waiting for room
        # goes ahead, and what it writes earns it a reset.
        end.inp.reader_closed = True
        end.inp.buffer.clear()
        end.inp.unread = 0
        end.inp.wake()
        end.out.wake()
        if not end.out.eof_sent:
            self.finish(end, end.out)

    def _route(self, chunk: _Chunk) -> int | None:
        """Hold ``chunk`` if its path is cut (None), else put it in flight."""
        direction = chunk.direction
        if direction.held or (
            self._partitions and self.blocked(direction.src, direction.dst)
        ):
            direction.hold(chunk)
            return None
        return self._enqueue(chunk)

    def _enqueue(self, chunk: _Chunk) -> int:
        """Give ``chunk`` its arrival time and put it in flight."""
        direction = chunk.direction
        now = round(self._now() * 1e9)
        config = self.config
        if config.links:
            latency, bandwidth = config.link(direction.src.pid, direction.dst.pid)
        else:
            latency, bandwidth = config.latency, config.bandwidth

        start = max(now, direction.busy_until)
        if bandwidth is not None and chunk.data:
            direction.busy_until = start + to_ns(len(chunk.data) / bandwidth)
        else:
            direction.busy_until = start
        delay = round(latency.draw(self._rng) * 1e9)
        arrival = max(direction.busy_until + delay, direction.last_arrival)
        direction.last_arrival = arrival

        heapq.heappush(self._heap, (arrival, next(self._seq), chunk))
        # Under SimClock only a chunk due at once needs the pump: the clock
        # asks for the next arrival itself (``_next_arrival``).
        scope = self._pump_scope
        if (
            (not self._clocked or arrival <= now)
            and scope is not None
            and arrival / 1e9 < scope.deadline
        ):
            scope.deadline = arrival / 1e9
        return arrival

    def _draw_latency(self, a: Node, b: Node | None) -> float:
        latency, _ = self.config.link(a.pid, a.pid if b is None else b.pid)
        return latency.draw(self._rng)

    # ------------------------------------------------------------ delivery

    async def pump(self) -> None:
        """Deliver chunks as virtual time reaches them; runs until cancelled.

        The delivering is mostly done by ``_DeliveryHook``, from the run
        loop: at an arrival, before any task runs, the hook hands the chunks
        due to their readers, so neither this task nor an extra pass of the
        scheduler is needed per delivery.  Under the simulator's own clock
        the hook runs each time the clock jumps (a clock listener, and the
        clock jumps to the next arrival as to a deadline), else each time
        the run loop wakes up (an instrument; this task then keeps the next
        arrival as its deadline, which is what makes the clock jump there).
        This task delivers whatever the hook did not: under SimClock, a
        chunk due at the instant it was sent (zero latency).
        """
        hook = _DeliveryHook(self, trio.lowlevel.current_task().context)
        clock = trio.lowlevel.current_clock()
        self._now = clock.current_time
        self._clocked = isinstance(clock, SimClock)
        if isinstance(clock, SimClock):
            clock.add_listener(hook.woke, self._next_arrival)
        else:
            trio.lowlevel.add_instrument(hook)
        try:
            while True:
                deadline = math.inf if self._clocked else self._next_arrival()
                with trio.CancelScope(deadline=deadline) as scope:
                    self._pump_scope = scope
                    await trio.sleep_forever()
                self._pump_scope = None
                if hook.failure is not None:
                    raise hook.failure
                self._deliver_due(self._now())
        finally:
            self._pump_scope = None
            if isinstance(clock, SimClock):
                clock.remove_listener(hook.woke, self._next_arrival)
            else:
                trio.lowlevel.remove_instrument(hook)

    def _next_arrival(self) -> float:
        """When the next chunk in flight arrives, in trio's seconds."""
        return self._heap[0][0] / 1e9 if self._heap else math.inf

    def _deliver_due(self, now: float) -> None:
        """Deliver, in order, every chunk due by ``now`` (trio's seconds)."""
        # Compared in seconds, as trio compares deadlines, so a rounding
        # difference cannot leave a due chunk behind.
        heap = self._heap
        while heap and heap[0][0] / 1e9 <= now:
            self._deliver(heapq.heappop(heap)[2])

    def on_wakeup(self, context: contextvars.Context, hook: _DeliveryHook) -> None:
        """The run loop woke up: deliver what is due, in the pump's context."""
        heap = self._heap
        scope = self._pump_scope
        if not heap or scope is None:
            return
        now = self._now()
        if heap[0][0] / 1e9 > now:
            return
        try:
            context.run(self._deliver_due, now)
        except BaseException as exc:
            # The pump raises it, from a task, where it belongs.
            hook.failure = exc
            scope.cancel()
            return
        if not self._clocked:
            scope.deadline = self._next_arrival()

    def _deliver(self, chunk: _Chunk) -> None:
        direction = chunk.direction
        conn = direction.conn
        src, dst = direction.src, direction.dst

        if direction.broken:
            self._trace.event(
                "drop", conn=conn.id, src=src.pid, dst=dst.pid, why="reset"
            )
            return
        if dst.dead:
            self._trace.event(
                "drop", conn=conn.id, src=src.pid, dst=dst.pid, why="receiver dead"
            )
            direction.consumed(len(chunk.data))
            return
        if direction.held or (self._partitions and self.blocked(src, dst)):
            direction.hold(chunk)
            self._trace.event("stall", conn=conn.id, src=src.pid, dst=dst.pid)
            return

        if chunk.kind == _DATA:
            self._deliver_data(chunk)
        elif chunk.kind == _EOF:
            direction.eof = True
            self._trace.event("eof", conn=conn.id, src=src.pid, dst=dst.pid)
            self._calls.lost(conn)
        else:
            self._break(conn, why="reset by peer")
        direction.wake()

    def _deliver_data(self, chunk: _Chunk) -> None:
        direction = chunk.direction
        src, dst = direction.src, direction.dst
        if direction.reader_closed:
            self._trace.event(
                "drop", conn=direction.conn.id, src=src.pid, dst=dst.pid, why="closed"
            )
            direction.consumed(len(chunk.data))
            # Data for a closed socket makes its kernel answer with a reset,
            # so the writer learns, one trip later, that nobody reads.
            conn = direction.conn
            if not conn.reset_sent:
                conn.reset_sent = True
                reverse = conn.backward if direction is conn.forward else conn.forward
                self._route(_Chunk(reverse, _RESET))
            return

        direction.buffer += chunk.data
        self.deliveries += 1
        if self._trace.enabled:
            fields = _note_fields(chunk.note, chunk.rrids)
            self._trace.event(
                "deliver",
                conn=direction.conn.id,
                src=src.pid,
                dst=dst.pid,
                bytes=len(chunk.data),
                **fields,
            )
            self._calls.delivered(src, dst, chunk)
        self._on_delivery()

    # -------------------------------------------------------------- faults

    def reset(self, conn: Connection, why: str) -> None:
        """Break ``conn`` at both ends now; what was in flight is lost."""
        if conn.forward.broken and conn.backward.broken:
            return
        self._break(conn, why)

    def _break(self, conn: Connection, why: str) -> None:
        self._trace.event(
            "reset",
            conn=conn.id,
            a=conn.initiator.pid,
            b=conn.acceptor.pid,
            why=why,
        )
        for direction in conn.directions():
            direction.broken = True
            direction.buffer.clear()
            direction.held.clear()
            direction.unread = 0
            direction.wake()
        self._calls.lost(conn)

    def crash(self, node: Node) -> None:
        """Silence ``node``: resets travel to its peers, its ports close.

        Called before the node's tasks are cancelled, so whatever their
        cleanup tries to send is dropped.
        """
        node.dead = True
        self.close_listeners(node)
        for end in node.endpoints:
            out = end.out
            if end.closed or out.broken:
                continue
            # Resets follow what was already in flight, like a kernel's RST.
            end.conn.reset_sent = True
            self._route(_Chunk(out, _RESET))
        node.endpoints.clear()

    def node_exited(self, node: Node) -> None:
        """``node``'s process ended: the OS closes whatever it left open."""
        self.close_listeners(node)
        for end in node.endpoints:
            if not end.closed:
                end.closed = True
                if not node.dead:
                    self.close_end(end)
        node.endpoints.clear()

    def connections_of(self, a: int, b: int) -> Iterator[Connection]:
        """Open connections between pids ``a`` and ``b``, oldest first."""
        pair = {a, b}
        for conn in self.connections:
            if {conn.initiator.pid, conn.acceptor.pid} == pair and not (
                conn.forward.broken and conn.backward.broken
            ):
                yield conn

    def held_by(self, ospid: int) -> list[tuple[Connection, bool, Node | None]]:
        """The connections OS process ``ospid`` holds open, oldest first.

        Each as ``(connection, whether ospid dialled it, the node holding
        the other end or None if that end is closed)``.  A connection
        counts while the process has not closed its end and no reset broke
        it, as a socket stays in the kernel's table until then.
        """
        held: list[tuple[Connection, bool, Node | None]] = []
        for conn in self.connections:
            if conn.initiator.ospid == ospid:
                mine, other = conn.initiator, conn.acceptor
            elif conn.acceptor.ospid == ospid:
                mine, other = conn.acceptor, conn.initiator
            else:
                continue
            if not _holds(mine, conn):
                continue
            held.append(
                (conn, mine is conn.initiator, other if _holds(other, conn) else None)
            )
        return held


def _holds(node: Node, conn: Connection) -> bool:
    """Whether ``node`` has its end of ``conn`` open, and ``conn`` is not reset."""
    return any(
        end.conn is conn and not end.closed and not (end.inp.broken or end.out.broken)
        for end in node.endpoints
    )


class _DeliveryHook(trio.abc.Instrument):
    """Calls ``Network.on_wakeup`` when the clock jumps or the loop wakes up.

    ``SimClock`` calls ``woke`` right after it jumped, and trio calls
    ``after_io_wait`` once per pass of its run loop, after the clock moved;
    both happen before trio expires deadlines and runs the tasks that are
    ready, so a chunk delivered here is read in the same pass.
    """

    def __init__(self, network: Network, context: contextvars.Context) -> None:
        self._network = network
        self._context = context
        self.failure: BaseException | None = None

    def after_io_wait(self, timeout: float) -> None:
        self._network.on_wakeup(self._context, self)

    def woke(self) -> None:
        self._network.on_wakeup(self._context, self)


def _stream_order(chunk: _Chunk) -> int:
    return chunk.order


async def _accept_loop(
    receive: trio.MemoryReceiveChannel[SimStream],
    handler: StreamHandler,
    nursery: trio.Nursery,
) -> None:
    async with receive:
        async for stream in receive:
            nursery.start_soon(handler, stream)


def _frame_rrids(
    data: bytes | bytearray | memoryview,
) -> tuple[list[int], list[int]] | None:
    """The header RRIDs of the frame ``data`` begins with, for the trace.

    None unless ``data`` begins with a whole, well-formed frame: the checks
    ``FrameDecoder.next_frame`` makes, without copying the body out.
    """
    if len(data) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack_from(data, 0)
    end = _LENGTH.size + length
    if (
        length < _HEADER.size
        or length > MAX_FRAME
        or len(data) < end + len(BOUNDARY)
        or bytes(data[end : end + len(BOUNDARY)]) != BOUNDARY
    ):
        return None
    rw, ri, nw, ni = _HEADER.unpack_from(data, _LENGTH.size)
    return [rw, ri], [nw, ni]


def _note_fields(
    note: MessageNote | None, rrids: tuple[list[int], list[int]] | None
) -> dict[str, object]:
    if note is None:
        return {}
    fields: dict[str, object] = {"msg": note.kind}
    if note.function is not None:
        fields["f"] = note.function
    if note.outcome is not None:
        fields["outcome"] = note.outcome
    if rrids is not None:
        fields["rsp"], fields["ntf"] = rrids
    return fields
