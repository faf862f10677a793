"""Lifecycles as data: every state machine of the process group, as a table.

Each lifecycle a user can observe (a connection's handshake, a worker, a
Future's value and one holder's copy of it, a RemoteChannel, the client set
of a remote value, a worker's membership of a pool) is one ``Table``: a
mapping from ``(state, event)`` to the ``Transition`` that event causes.
One engine applies them all, ``Table.fire``, and it refuses an event the
table has no entry for with ``TransitionError``: a missing entry means "this
cannot happen", so reaching one is a bug in whoever fired it, never a
silently ignored event.

A transition can also say what the operation that caused it reports:
``raises`` names the error the caller gets (the state may still change), and
``blocks`` says the caller waits, the event taking effect only later.

The tables hold the *shape* of each lifecycle; the data that goes with it
(a channel's items, a pool's free queue) lives in ``spec.model``, which picks
the event from the data before firing it.  A channel ``put`` is ``PUT`` when
room remains afterwards and ``PUT_FILL`` when it fills the buffer, so the
state alone is enough to decide the next state.  This is the usual extended
state machine split, and it keeps every table small enough to draw:
``python -m spec.diagrams`` renders each one into docs/state-diagrams.md.

Sources: julia-semantics.md sections (a) to (f); Julia's ``cluster.jl``
(worker states ``W_CREATED`` ... ``W_TERMINATED``), ``remotecall.jl``
(client sets, Future caching), ``workerpool.jl`` and Base ``channels.jl``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = [
    "ALL_TABLES",
    "CHANNEL",
    "CLIENTS",
    "CONNECTION",
    "FUTURE",
    "FUTURE_CACHE",
    "POOL_MEMBER",
    "WORKER",
    "CacheEvent",
    "CacheState",
    "ChannelEvent",
    "ChannelState",
    "ClientsEvent",
    "ClientsState",
    "FutureEvent",
    "FutureState",
    "Key",
    "LinkEvent",
    "LinkState",
    "MemberEvent",
    "MemberState",
    "ModelError",
    "Table",
    "Transition",
    "TransitionError",
    "WorkerEvent",
    "WorkerState",
    "all_keys",
]

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


class ModelError(Exception):
    """Base class of the errors the model raises about itself or its input."""


class TransitionError(ModelError):
    """``event`` has no entry in ``table`` for ``state``: it cannot happen.

    Raised by ``Table.fire``.  Seeing it means the caller (usually the model)
    tried to apply an event the lifecycle does not allow, which is a bug in
    the caller or a gap in the table, never a user error.
    """

    def __init__(self, table: str, state: enum.Enum, event: enum.Enum) -> None:
        super().__init__(
            f"{table}: no transition for event {event.name} in state "
            f"{state.name}; the lifecycle does not allow it"
        )
        self.table = table
        self.state = state
        self.event = event


@dataclass(frozen=True, slots=True)
class Transition(Generic[S]):
    """Where an event leads, and what the operation behind it reports.

    ``raises`` is the name of the error class the caller gets, or None.
    ``blocks`` means the caller waits: the operation has no effect yet and
    is retried when something changes.  ``why`` is one short clause for the
    docs and the diagrams.
    """

    target: S
    raises: str | None = None
    blocks: bool = False
    why: str = ""


#: A key naming one transition of one table: (table name, state, event).
Key = tuple[str, str, str]


@dataclass(frozen=True)
class Table(Generic[S, E]):
    """One lifecycle: states, events, and a transition per allowed pair."""

    name: str
    title: str
    doc: str
    states: type[S]
    events: type[E]
    initial: S
    final: frozenset[S]
    entries: Mapping[tuple[S, E], Transition[S]]

    def __post_init__(self) -> None:
        # A table naming a state or event of another enum would be drawn
        # and checked wrongly; refuse it when the module is imported.
        for state, event in self.entries:
            if not isinstance(state, self.states) or not isinstance(event, self.events):
                raise ModelError(f"{self.name}: entry {state!r}, {event!r} is foreign")
            if not isinstance(self.entries[state, event].target, self.states):
                raise ModelError(f"{self.name}: target of {state!r}, {event!r}")

    def fire(self, state: S, event: E, seen: set[Key] | None = None) -> Transition[S]:
        """The transition for ``event`` in ``state``; TransitionError if none.

        ``seen``, when given, records the transition's key, so tests can
        prove every entry of every table was exercised.
        """
        transition = self.entries.get((state, event))
        if transition is None:
            raise TransitionError(self.name, state, event)
        if seen is not None:
            seen.add((self.name, state.name, event.name))
        return transition

    def allows(self, state: S, event: E) -> bool:
        """Whether the table has an entry for ``event`` in ``state``."""
        return (state, event) in self.entries

    def transitions(self) -> Iterator[Key]:
        """The key of every entry, in table order."""
        for state, event in self.entries:
            yield (self.name, state.name, event.name)


def go(
    target: S, *, raises: str | None = None, blocks: bool = False, why: str = ""
) -> Transition[S]:
    """Shorthand for a ``Transition`` in the table literals below."""
    return Transition(target, raises, blocks, why)


# ------------------------------------------------------------ connection


class LinkState(enum.Enum):
    STUB = "stub"
    AUTHENTICATING = "authenticating"
    AUTHENTICATED = "authenticated"
    JOINING = "joining"
    IDENTIFYING = "identifying"
    OPEN = "open"
    REFUSED = "refused"
    CLOSED = "closed"


class LinkEvent(enum.Enum):
    DIAL = "dial"
    COOKIE_OK = "cookie_ok"
    COOKIE_BAD = "cookie_bad"
    SHORT_READ = "short_read"
    JOIN = "join"
    IDENTIFY = "identify"
    JOIN_COMPLETE = "join_complete"
    IDENTIFY_ACK = "identify_ack"
    TIMEOUT = "timeout"
    EOF = "eof"


_L, _LE = LinkState, LinkEvent

CONNECTION: Table[LinkState, LinkEvent] = Table(
    name="connection",
    title="Connection handshake (one link between two processes)",
    doc=(
        "The initiator (the master, or the higher pid of two workers) dials "
        "and sends the 16-byte cookie and its version; the acceptor checks "
        "the cookie before decoding anything and answers with its version. "
        "The first message then says what the link is for: JoinPGRP from the "
        "master (answered by JoinComplete) or IdentifySocket from a worker "
        "(answered by IdentifySocketAck). A refused connection is logged and "
        "closed; the cluster is not disturbed."
    ),
    states=LinkState,
    events=LinkEvent,
    initial=LinkState.STUB,
    final=frozenset({LinkState.CLOSED, LinkState.REFUSED}),
    entries={
        (_L.STUB, _LE.DIAL): go(_L.AUTHENTICATING, why="cookie and version sent"),
        (_L.STUB, _LE.TIMEOUT): go(
            _L.STUB, raises="DistributedError", why="peer did not connect in time"
        ),
        (_L.AUTHENTICATING, _LE.COOKIE_OK): go(
            _L.AUTHENTICATED, why="acceptor replies with its version"
        ),
        (_L.AUTHENTICATING, _LE.COOKIE_BAD): go(
            _L.REFUSED, raises="AuthenticationError", why="invalid credentials"
        ),
        (_L.AUTHENTICATING, _LE.SHORT_READ): go(
            _L.REFUSED, raises="AuthenticationError", why="closed mid-handshake"
        ),
        (_L.AUTHENTICATING, _LE.TIMEOUT): go(_L.REFUSED, why="acceptor gives up"),
        (_L.AUTHENTICATED, _LE.JOIN): go(_L.JOINING, why="master sent JoinPGRP"),
        (_L.AUTHENTICATED, _LE.IDENTIFY): go(
            _L.IDENTIFYING, why="worker sent IdentifySocket"
        ),
        (_L.AUTHENTICATED, _LE.EOF): go(_L.CLOSED),
        (_L.JOINING, _LE.JOIN_COMPLETE): go(_L.OPEN, why="worker joined"),
        (_L.JOINING, _LE.TIMEOUT): go(
            _L.CLOSED, raises="LaunchError", why="worker did not join in time"
        ),
        (_L.JOINING, _LE.EOF): go(_L.CLOSED, raises="LaunchError"),
        (_L.IDENTIFYING, _LE.IDENTIFY_ACK): go(_L.OPEN, why="peer link usable"),
        (_L.IDENTIFYING, _LE.EOF): go(_L.CLOSED),
        (_L.OPEN, _LE.EOF): go(_L.CLOSED, why="link lost: peer deregistered"),
    },
)


# ---------------------------------------------------------------- worker


class WorkerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    DYING = "dying"
    REMOVING = "removing"
    REMOVED = "removed"
    DEAD = "dead"


class WorkerEvent(enum.Enum):
    JOINED = "joined"
    LAUNCH_FAILED = "launch_failed"
    RMPROCS = "rmprocs"
    KILL = "kill"
    LINK_LOST = "link_lost"


_W, _WE = WorkerState, WorkerEvent

WORKER: Table[WorkerState, WorkerEvent] = Table(
    name="worker",
    title="Worker process, as the master sees it",
    doc=(
        "A pid is allocated when the master starts setting a launched worker "
        "up (CREATED) and never reused. procs() lists RUNNING workers, and "
        "DYING ones (killed, not yet noticed by the master); REMOVING, "
        "REMOVED and DEAD ones are not listed. Losing the link ends every "
        "state: REMOVED if rmprocs asked for it, DEAD otherwise (the master "
        "then reports 'Worker <pid> terminated.'). Pending calls to the pid "
        "fail with ProcessExitedException at that moment, and so does every "
        "later call. Whether a pending call's side effects happened is left "
        "open: its function may have run before the death (its reply may "
        "even have got out first), or not at all, and a request it sent to a "
        "third process may still take effect there, or never."
    ),
    states=WorkerState,
    events=WorkerEvent,
    initial=WorkerState.CREATED,
    final=frozenset({WorkerState.REMOVED, WorkerState.DEAD}),
    entries={
        (_W.CREATED, _WE.JOINED): go(_W.RUNNING, why="JoinComplete arrived"),
        (_W.CREATED, _WE.LAUNCH_FAILED): go(
            _W.DEAD, raises="LaunchError", why="did not join in time"
        ),
        (_W.RUNNING, _WE.RMPROCS): go(_W.REMOVING, why="asked to exit"),
        (_W.RUNNING, _WE.KILL): go(_W.DYING, why="killed, not yet noticed"),
        (_W.RUNNING, _WE.LINK_LOST): go(_W.DEAD, why="crashed"),
        (_W.DYING, _WE.LINK_LOST): go(_W.DEAD, why="master noticed"),
        (_W.DYING, _WE.RMPROCS): go(_W.REMOVING),
        (_W.DYING, _WE.KILL): go(_W.DYING),
        (_W.REMOVING, _WE.LINK_LOST): go(_W.REMOVED, why="exited as asked"),
        (_W.REMOVING, _WE.RMPROCS): go(_W.REMOVING),
        (_W.REMOVING, _WE.KILL): go(_W.REMOVING),
        (_W.REMOVED, _WE.RMPROCS): go(_W.REMOVED, why="departed pids ignored"),
        (_W.REMOVED, _WE.KILL): go(_W.REMOVED, raises="ProcessExitedException"),
        (_W.DEAD, _WE.RMPROCS): go(_W.DEAD, why="departed pids ignored"),
        (_W.DEAD, _WE.KILL): go(_W.DEAD, raises="ProcessExitedException"),
    },
)


# ---------------------------------------------------------------- future


class FutureState(enum.Enum):
    UNSET = "unset"
    SET = "set"
    LOST = "lost"


class FutureEvent(enum.Enum):
    PUT = "put"
    COMPLETE = "complete"
    READ = "read"
    OWNER_DIED = "owner_died"


_F, _FE = FutureState, FutureEvent

FUTURE: Table[FutureState, FutureEvent] = Table(
    name="future",
    title="Future: the value stored on its owner",
    doc=(
        "A Future is write-once. Its value is set by a put or by the "
        "remotecall that created it, whichever comes first; a later put "
        "raises FutureAlreadySetError (wrapped in RemoteException when the "
        "owner is another process) and a later call result is dropped. "
        "Reads (fetch, wait) wait while it is unset. When the owner exits, "
        "the value is gone: reads and puts that need the owner raise "
        "ProcessExitedException, but holders that cached the value keep it."
    ),
    states=FutureState,
    events=FutureEvent,
    initial=FutureState.UNSET,
    final=frozenset({FutureState.LOST}),
    entries={
        (_F.UNSET, _FE.PUT): go(_F.SET),
        (_F.UNSET, _FE.COMPLETE): go(_F.SET, why="the call returned or raised"),
        (_F.UNSET, _FE.READ): go(_F.UNSET, blocks=True),
        (_F.UNSET, _FE.OWNER_DIED): go(_F.LOST),
        (_F.SET, _FE.PUT): go(_F.SET, raises="FutureAlreadySetError"),
        (_F.SET, _FE.COMPLETE): go(_F.SET, why="a put came first: result dropped"),
        (_F.SET, _FE.READ): go(_F.SET),
        (_F.SET, _FE.OWNER_DIED): go(_F.LOST),
        (_F.LOST, _FE.PUT): go(_F.LOST, raises="ProcessExitedException"),
        (_F.LOST, _FE.READ): go(_F.LOST, raises="ProcessExitedException"),
    },
)


class CacheState(enum.Enum):
    UNCACHED = "uncached"
    CACHED = "cached"


class CacheEvent(enum.Enum):
    READ = "read"
    PUT = "put"
    FETCHED = "fetched"
    PUT_OK = "put_ok"
    OWNER_DIED = "owner_died"


_C, _CE = CacheState, CacheEvent

FUTURE_CACHE: Table[CacheState, CacheEvent] = Table(
    name="future_cache",
    title="Future: one holder's copy",
    doc=(
        "Each process holding a Future keeps its own cache. A successful "
        "fetch or put fills it, and from then on reads are answered locally "
        "(no message, even after the owner exited) and a put is refused "
        "locally. Filling the cache also releases the holder from the "
        "owner's client set. A value that is a RemoteException is raised, "
        "not cached."
    ),
    states=CacheState,
    events=CacheEvent,
    initial=CacheState.UNCACHED,
    final=frozenset(),
    entries={
        (_C.UNCACHED, _CE.READ): go(_C.UNCACHED, why="asks the owner"),
        (_C.UNCACHED, _CE.PUT): go(_C.UNCACHED, why="asks the owner"),
        (_C.UNCACHED, _CE.FETCHED): go(_C.CACHED, why="del_client sent"),
        (_C.UNCACHED, _CE.PUT_OK): go(_C.CACHED, why="owner released us"),
        (_C.UNCACHED, _CE.OWNER_DIED): go(_C.UNCACHED),
        (_C.CACHED, _CE.READ): go(_C.CACHED, why="answered locally"),
        (_C.CACHED, _CE.PUT): go(_C.CACHED, raises="FutureAlreadySetError"),
        (_C.CACHED, _CE.OWNER_DIED): go(_C.CACHED, why="the cache survives"),
    },
)


# --------------------------------------------------------------- channel


class ChannelState(enum.Enum):
    EMPTY = "empty"
    PARTIAL = "partial"
    FULL = "full"
    CLOSED = "closed"
    DRAINED = "drained"
    LOST = "lost"


class ChannelEvent(enum.Enum):
    PUT = "put"
    PUT_FILL = "put_fill"
    TAKE = "take"
    TAKE_LAST = "take_last"
    FETCH = "fetch"
    CLOSE = "close"
    QUERY = "query"
    OWNER_DIED = "owner_died"


_K, _KE = ChannelState, ChannelEvent

_LIVE_CHANNEL_DEATH = {
    (state, _KE.OWNER_DIED): go(_K.LOST)
    for state in (_K.EMPTY, _K.PARTIAL, _K.FULL, _K.CLOSED, _K.DRAINED)
}
_LIVE_CHANNEL_QUERY = {
    (state, _KE.QUERY): go(state, why="isready, isopen, isempty")
    for state in (_K.EMPTY, _K.PARTIAL, _K.FULL, _K.CLOSED, _K.DRAINED)
}
_LOST_CHANNEL = {
    (_K.LOST, event): go(_K.LOST, raises="ProcessExitedException")
    for event in (_KE.PUT, _KE.TAKE, _KE.FETCH, _KE.CLOSE, _KE.QUERY)
}

CHANNEL: Table[ChannelState, ChannelEvent] = Table(
    name="channel",
    title="RemoteChannel: a bounded FIFO on its owner",
    doc=(
        "Items leave in the order they entered. A put waits while the buffer "
        "is full, a take or fetch while it is empty; when several wait, which "
        "one proceeds first is not specified. Closing wakes every waiter: "
        "waiting puts and takes raise InvalidStateError, buffered items can "
        "still be taken, and a take on a closed, empty channel raises. An "
        "unbuffered channel (capacity 0) holds the one item whose put waits: "
        "it is FULL from that put until a take has the item, which is when "
        "the put returns (closing it first makes that put raise). The "
        "event names say what the model saw in the data: PUT leaves room, "
        "PUT_FILL fills the buffer, TAKE_LAST empties it."
    ),
    states=ChannelState,
    events=ChannelEvent,
    initial=ChannelState.EMPTY,
    final=frozenset({ChannelState.LOST}),
    entries={
        (_K.EMPTY, _KE.PUT): go(_K.PARTIAL),
        (_K.EMPTY, _KE.PUT_FILL): go(_K.FULL),
        (_K.EMPTY, _KE.TAKE): go(_K.EMPTY, blocks=True),
        (_K.EMPTY, _KE.FETCH): go(_K.EMPTY, blocks=True),
        (_K.EMPTY, _KE.CLOSE): go(_K.DRAINED, why="waiting takes raise"),
        (_K.PARTIAL, _KE.PUT): go(_K.PARTIAL),
        (_K.PARTIAL, _KE.PUT_FILL): go(_K.FULL),
        (_K.PARTIAL, _KE.TAKE): go(_K.PARTIAL),
        (_K.PARTIAL, _KE.TAKE_LAST): go(_K.EMPTY),
        (_K.PARTIAL, _KE.FETCH): go(_K.PARTIAL),
        (_K.PARTIAL, _KE.CLOSE): go(_K.CLOSED),
        (_K.FULL, _KE.PUT): go(_K.FULL, blocks=True),
        (_K.FULL, _KE.TAKE): go(_K.PARTIAL),
        (_K.FULL, _KE.TAKE_LAST): go(
            _K.EMPTY, why="capacity 1, or 0: the waiting put returns"
        ),
        (_K.FULL, _KE.FETCH): go(_K.FULL),
        (_K.FULL, _KE.CLOSE): go(_K.CLOSED, why="waiting puts raise"),
        (_K.CLOSED, _KE.PUT): go(_K.CLOSED, raises="InvalidStateError"),
        (_K.CLOSED, _KE.TAKE): go(_K.CLOSED),
        (_K.CLOSED, _KE.TAKE_LAST): go(_K.DRAINED),
        (_K.CLOSED, _KE.FETCH): go(_K.CLOSED),
        (_K.CLOSED, _KE.CLOSE): go(_K.CLOSED),
        (_K.DRAINED, _KE.PUT): go(_K.DRAINED, raises="InvalidStateError"),
        (_K.DRAINED, _KE.TAKE): go(_K.DRAINED, raises="InvalidStateError"),
        (_K.DRAINED, _KE.FETCH): go(_K.DRAINED, raises="InvalidStateError"),
        (_K.DRAINED, _KE.CLOSE): go(_K.DRAINED),
        **_LIVE_CHANNEL_QUERY,
        **_LIVE_CHANNEL_DEATH,
        **_LOST_CHANNEL,
    },
)


# ------------------------------------------------------------ client set


class ClientsState(enum.Enum):
    ABSENT = "absent"
    HELD = "held"
    FREED = "freed"


class ClientsEvent(enum.Enum):
    CREATE = "create"
    ADD = "add"
    DEL = "del"
    DEL_LAST = "del_last"
    HOLDER_DIED = "holder_died"
    HOLDER_DIED_LAST = "holder_died_last"
    OWNER_DIED = "owner_died"


_S, _SE = ClientsState, ClientsEvent

CLIENTS: Table[ClientsState, ClientsEvent] = Table(
    name="clients",
    title="Client set of one remote value, on its owner",
    doc=(
        "The owner stores a value only from its first use there, with the "
        "client set {creator} plus any holders announced before that (they "
        "are counted apart until then; Julia's add_client stores the value "
        "at once, which only live_refs() could tell apart). Sending "
        "an unfetched reference to another process adds that process; "
        "fetching a Future, putting into it, or dropping a reference removes "
        "the holder, and so does the holder's death. The owner frees the "
        "value when the set becomes empty. The owner learns of changes "
        "asynchronously, so the set is compared once the cluster is quiet."
    ),
    states=ClientsState,
    events=ClientsEvent,
    initial=ClientsState.ABSENT,
    final=frozenset({ClientsState.FREED}),
    entries={
        (_S.ABSENT, _SE.CREATE): go(_S.HELD, why="first use: {creator}"),
        (_S.ABSENT, _SE.ADD): go(_S.ABSENT, why="counted apart until first use"),
        (_S.ABSENT, _SE.DEL): go(_S.ABSENT, why="counted apart until first use"),
        (_S.ABSENT, _SE.OWNER_DIED): go(_S.FREED),
        (_S.HELD, _SE.CREATE): go(_S.HELD, why="already stored"),
        (_S.HELD, _SE.ADD): go(_S.HELD),
        (_S.HELD, _SE.DEL): go(_S.HELD),
        (_S.HELD, _SE.DEL_LAST): go(_S.FREED, why="nobody holds it"),
        (_S.HELD, _SE.HOLDER_DIED): go(_S.HELD),
        (_S.HELD, _SE.HOLDER_DIED_LAST): go(_S.FREED),
        (_S.HELD, _SE.OWNER_DIED): go(_S.FREED),
        (_S.FREED, _SE.OWNER_DIED): go(_S.FREED, why="nothing left to lose"),
    },
)


# ------------------------------------------------------- pool membership


class MemberState(enum.Enum):
    OUTSIDE = "outside"
    FREE = "free"
    BUSY = "busy"
    DROPPED = "dropped"


class MemberEvent(enum.Enum):
    PUSH = "push"
    TAKE = "take"
    PUT = "put"
    PRUNE = "prune"


_P, _PE = MemberState, MemberEvent

POOL_MEMBER: Table[MemberState, MemberEvent] = Table(
    name="pool_member",
    title="Worker pool: one pid's membership",
    doc=(
        "push adds a pid to the members and to the free queue (once); take "
        "hands out the free pid that waited longest; put returns a member to "
        "the queue (a pid that is not a member is ignored). A member whose "
        "worker has left procs() is dropped the next time the pool is "
        "consulted (take, isready, length, workers), busy or free, so a pool "
        "never hands out a removed worker and its queries agree with take "
        "(field report BR-07; Julia drops it only when take meets it)."
    ),
    states=MemberState,
    events=MemberEvent,
    initial=MemberState.OUTSIDE,
    final=frozenset({MemberState.DROPPED}),
    entries={
        (_P.OUTSIDE, _PE.PUSH): go(_P.FREE),
        (_P.OUTSIDE, _PE.PUT): go(_P.OUTSIDE, why="not a member: ignored"),
        (_P.FREE, _PE.TAKE): go(_P.BUSY),
        (_P.FREE, _PE.PUT): go(_P.FREE, why="already free: ignored"),
        (_P.FREE, _PE.PUSH): go(_P.FREE, why="already queued: ignored"),
        (_P.FREE, _PE.PRUNE): go(_P.DROPPED, why="worker has left"),
        (_P.BUSY, _PE.PUT): go(_P.FREE),
        (_P.BUSY, _PE.PUSH): go(_P.FREE, why="queued again while in use"),
        (_P.BUSY, _PE.PRUNE): go(_P.DROPPED, why="worker has left"),
        (_P.DROPPED, _PE.PUT): go(_P.DROPPED, why="not a member: ignored"),
        (_P.DROPPED, _PE.PUSH): go(_P.FREE),
    },
)

#: Every lifecycle, in the order the docs present them.
#: (``Any`` because ``Table`` is invariant in its state and event types.)
ALL_TABLES: tuple[Table[Any, Any], ...] = (
    CONNECTION,
    WORKER,
    FUTURE,
    FUTURE_CACHE,
    CHANNEL,
    CLIENTS,
    POOL_MEMBER,
)


def all_keys() -> set[Key]:
    """The key of every transition of every table."""
    return {key for table in ALL_TABLES for key in table.transitions()}
