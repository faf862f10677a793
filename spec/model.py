"""An executable model of the process group, as its users observe it.

The model is the sequential specification of distref's user-visible
behaviour: processes and their states, the pid counter, Futures, remote
channels, the client set of every remote value, worker pools, and the calls
in flight.  It is pure and synchronous: no I/O, no clock, no randomness, and
no import of ``ref`` or ``sim``.  Every lifecycle change goes through a table
of ``spec.lifecycles``, so a change the tables do not allow raises
``TransitionError`` instead of passing unnoticed.

Theory of operation
-------------------

A real cluster is concurrent: calls overlap, functions run on workers at
moments the caller does not see, a killed worker may or may not have
finished what it was doing.  The model does not pick one of these
interleavings.  It is a state machine with three kinds of steps:

* ``invoke(cid, op)``: a user operation starts (call id ``cid``);
* internal *moves*, which the real system makes on its own at moments the
  user cannot see: a pending operation takes effect (its *linearization
  point*), a function runs on a worker, the master notices a dead link, a
  pool gets a worker back when a Future completes;
* ``finish(cid)``: the operation's response reaches the user.

A move is offered only when the lifecycle tables let it happen: a ``take``
on an empty channel has no move until something is put, which is how the
model says "this call blocks".  Where several moves are enabled the system
may make any of them, in any order; where one move has several possible
results (which free worker a pool hands out when the order of returns was
not observable, whether a reply from a worker that then died got out first)
the move branches.  ``spec.refinement`` explores all of this: it keeps the
set of model states consistent with what was observed so far, and a history
is admitted exactly when that set never becomes empty.

An operation is *linearizable* here: it takes effect at one instant between
its invocation and its response, so overlapping operations may take effect
in either order, and sequential ones in program order.

Moves are either *required* (a live process makes progress: a pending call
on a reachable owner, a function on a live worker, noticing a dead link) or
*optional* (a "ghost": the request a worker sent to a third process just
before it died may or may not have arrived, so its effect may or may not
happen).  Settling a state applies required moves until none is enabled;
a call that is finished in every settled state must eventually respond,
and a test that waits for it long enough and sees nothing has found a hang.

Deliberate choices
------------------

* Values are small hashable Python values (``Value``); remote functions are
  the tiny vocabulary of ``Fn`` and ``MapFn`` below, because the model must
  know what a function does to predict its result.
* Errors are compared by class name, the pid they carry, and for a
  ``RemoteException`` the class name of the exception inside it.
* A worker's ghost request on a channel owned by a third process may or may
  not take effect (Julia: it does; distref's field reports BR-13/BR-15 ask
  that it never does); the model admits both until that is settled.
* Unbuffered channels (capacity 0) behave as distref's do: the item a
  ``put`` hands over sits in the channel (``isready`` and ``fetch`` see
  it) while its putter waits, and the put returns only when a ``take``
  has it; closing the channel first makes the waiting put raise
  InvalidStateError (the item stays, and can still be taken).
* Topologies: ``all_to_all`` (the default) and ``master_worker``, where a
  function on a worker that needs another worker fails with a
  RemoteException wrapping TopologyError.
* ``interrupt(pids)``: the signal lands on each worker at some moment
  after the call (it may be after it returned), and each call running
  there may be interrupted (it fails with a RemoteException wrapping
  KeyboardInterrupt) or not (it had not arrived yet, or had finished); an
  idle worker is unaffected.  A channel request the interrupted function
  had sent may still take effect, like a dead worker's (below).
* ``pmap`` with ``on_error`` (a handler returning a constant) and retries
  (how many retry delays): its answer is one of a set, see ``_map_outcome``.
* Not modelled: launch failures other than ``AddProcs.failed``, worker to
  worker calls made by user code other than through ``Fn``, the ``custom``
  topology, batches of pmap (``batch_size`` > 1), ``retry_check``.

A worker that dies with a call pending
--------------------------------------

When a worker dies while a call to it is pending (``remotecall_fetch``,
``remotecall_wait``, a ``fetch`` of a Future it owns, a pool call on it),
the call raises ProcessExitedException naming the worker, and the call's
side effects **may or may not** have taken effect: the model admits both.
It does so with moves, not a special case: the function may have run
before the death (its effects happened, and its reply may have got out
first, so the call may even return normally), or not at all (no effect);
and a request the function had sent to a third process (a ``put`` into a
channel owned by the master) becomes a *ghost* that may still take effect
there later, or never.  ``spec.refinement`` therefore accepts a history
in which the effect is seen and one in which it is not, and refutes a
call that answers anything but ProcessExitedException (or the function's
own answer, had it got out).  docs/julia-mapping.md states the same rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

from .lifecycles import (
    CHANNEL,
    CLIENTS,
    CONNECTION,
    FUTURE,
    FUTURE_CACHE,
    POOL_MEMBER,
    WORKER,
    CacheEvent,
    CacheState,
    ChannelEvent,
    ChannelState,
    ClientsEvent,
    ClientsState,
    FutureEvent,
    FutureState,
    Key,
    LinkEvent,
    LinkState,
    MemberEvent,
    MemberState,
    ModelError,
    TransitionError,
    WorkerEvent,
    WorkerState,
)

__all__ = [
    "MASTER",
    "AddProcs",
    "AnyOf",
    "Call",
    "Clients",
    "Close",
    "Const",
    "Crash",
    "Disconnect",
    "Drop",
    "Elementwise",
    "Expect",
    "Fail",
    "FailOn",
    "Fetch",
    "Fn",
    "Forward",
    "Handshake",
    "Interrupt",
    "IsEmpty",
    "IsOpen",
    "IsReady",
    "Kill",
    "MapFn",
    "MapMyId",
    "Model",
    "ModelError",
    "MyId",
    "NProcs",
    "NWorkers",
    "NewChannel",
    "NewFuture",
    "NewPool",
    "Op",
    "Outcome",
    "PMap",
    "Plus",
    "PoolCall",
    "PoolIsReady",
    "PoolLength",
    "PoolPush",
    "PoolPut",
    "PoolRemoteCall",
    "PoolTake",
    "PoolWorkers",
    "Procs",
    "Put",
    "PutInto",
    "Raised",
    "RaisedBy",
    "RemoteCall",
    "RemoteCallFetch",
    "RemoteCallWait",
    "RemoteDo",
    "Returned",
    "RmProcs",
    "Sleep",
    "Take",
    "TakeFrom",
    "Topology",
    "TransitionError",
    "Value",
    "Wait",
    "Workers",
    "admits",
]

MASTER = 1

#: What user values the model reasons about: small, hashable, comparable.
Value: TypeAlias = "int | str | bool | tuple[Value, ...] | None"

# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Returned:
    """The operation returned ``value``."""

    value: Value


@dataclass(frozen=True, slots=True)
class Raised:
    """The operation raised ``error`` (a class name).

    ``pid`` is the process the error names: the failing process of a
    ``RemoteException``, the ``worker_id`` of a ``ProcessExitedException``,
    the pid of a ``NoSuchProcessError``; None for errors without one.
    ``inner`` is the class name of the exception a ``RemoteException``
    carries.
    """

    error: str
    pid: int | None = None
    inner: str | None = None


#: What an operation can be observed to do.
Outcome: TypeAlias = Returned | Raised


@dataclass(frozen=True, slots=True)
class Elementwise:
    """A returned tuple whose element ``i`` may be any of ``choices[i]``."""

    choices: tuple[frozenset[Value], ...]


@dataclass(frozen=True, slots=True)
class RaisedBy:
    """``Raised(error, pid, inner)`` for any ``pid`` in ``pids``."""

    error: str
    pids: frozenset[int]
    inner: str | None = None


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Any response one of ``options`` allows (a set of allowed outcomes)."""

    options: tuple[Returned | Raised | Elementwise | RaisedBy, ...]


#: What the model expects of a response: an exact outcome or a pattern.
Expect: TypeAlias = Returned | Raised | Elementwise | RaisedBy | AnyOf


def any_of(options: Iterable[Expect]) -> Expect:
    """The expectation allowing each of ``options`` (flattened, deduplicated)."""
    flat: list[Returned | Raised | Elementwise | RaisedBy] = []
    for option in options:
        for one in option.options if isinstance(option, AnyOf) else (option,):
            if one not in flat:
                flat.append(one)
    if not flat:
        raise ModelError("an expectation needs at least one allowed outcome")
    return flat[0] if len(flat) == 1 else AnyOf(tuple(flat))


def admits(expect: Expect, observed: Outcome) -> bool:
    """Whether ``observed`` is a response ``expect`` allows."""
    if isinstance(expect, AnyOf):
        return any(admits(option, observed) for option in expect.options)
    if isinstance(expect, Returned | Raised):
        return expect == observed
    if isinstance(expect, RaisedBy):
        return (
            isinstance(observed, Raised)
            and observed.error == expect.error
            and observed.pid in expect.pids
            and observed.inner == expect.inner
        )
    if not isinstance(observed, Returned) or not isinstance(observed.value, tuple):
        return False
    values = observed.value
    return len(values) == len(expect.choices) and all(
        v in c for v, c in zip(values, expect.choices, strict=True)
    )


def _pee(pid: int) -> Raised:
    return Raised("ProcessExitedException", pid)


# --------------------------------------------------------------- functions


@dataclass(frozen=True, slots=True)
class Const:
    """A remote function returning ``value``."""

    value: Value


@dataclass(frozen=True, slots=True)
class Fail:
    """A remote function raising ``ValueError``."""


@dataclass(frozen=True, slots=True)
class MyId:
    """A remote function returning the pid it runs on."""


@dataclass(frozen=True, slots=True)
class TakeFrom:
    """A remote function taking an item from channel ``ref`` (may wait)."""

    ref: str


@dataclass(frozen=True, slots=True)
class PutInto:
    """A remote function putting ``value`` into channel ``ref`` (may wait)."""

    ref: str
    value: Value


@dataclass(frozen=True, slots=True)
class Sleep:
    """A remote function that never returns (until its process exits)."""


#: The functions remote calls run.
Fn: TypeAlias = Const | Fail | MyId | TakeFrom | PutInto | Sleep


@dataclass(frozen=True, slots=True)
class Plus:
    """A mapped function ``x -> x + k``."""

    k: int


@dataclass(frozen=True, slots=True)
class FailOn:
    """A mapped function returning ``x``, but raising ValueError on ``bad``."""

    bad: int


@dataclass(frozen=True, slots=True)
class MapMyId:
    """A mapped function returning the pid it runs on."""


#: The functions pmap maps.
MapFn: TypeAlias = Plus | FailOn | MapMyId


# -------------------------------------------------------------- operations
#
# One class per user operation, all made by the master (pid 1).  Keys such
# as ``ref`` and ``pool`` are names the caller chooses for the objects the
# operations create, so later operations can name them.


@dataclass(frozen=True, slots=True)
class AddProcs:
    """``addprocs(n)``: returns the sorted new pids.

    With ``failed`` > 0, that many of the launched workers never join (any
    of them), and the call raises LaunchError after the others joined.  A
    failed worker's pid is used up if the master had started setting it up
    (it connected, then did not join in time), and never allocated if the
    manager did not report it in time: the model admits both.
    """

    n: int
    failed: int = 0


@dataclass(frozen=True, slots=True)
class RmProcs:
    """``rmprocs(*pids)``: returns None.

    With ``wait`` (the default, ``waitfor`` unbounded) the pids have left
    when it returns; without (``waitfor=0``) they leave later.
    """

    pids: tuple[int, ...]
    wait: bool = True


@dataclass(frozen=True, slots=True)
class Kill:
    """Kill ``pid`` and wait until the master noticed; returns None."""

    pid: int


@dataclass(frozen=True, slots=True)
class Crash:
    """Kill ``pid`` without waiting: the master notices later (a move)."""

    pid: int


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The link to ``pid`` breaks (a reset); the master notices at once."""

    pid: int


@dataclass(frozen=True, slots=True)
class Interrupt:
    """``interrupt(*pids)``: returns None; running calls there may fail.

    A pid that is not a current worker raises KeyError before anything is
    interrupted.
    """

    pids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Procs:
    """``procs()``: a tuple of pids."""


@dataclass(frozen=True, slots=True)
class Workers:
    """``workers()``: a tuple of pids."""


@dataclass(frozen=True, slots=True)
class NProcs:
    """``nprocs()``."""


@dataclass(frozen=True, slots=True)
class NWorkers:
    """``nworkers()``."""


@dataclass(frozen=True, slots=True)
class RemoteCall:
    """``remotecall(fn, pid)``: returns ``("future", pid)``, names it ``ref``."""

    pid: int
    fn: Fn
    ref: str


@dataclass(frozen=True, slots=True)
class RemoteCallFetch:
    """``remotecall_fetch(fn, pid)``: returns what ``fn`` returned."""

    pid: int
    fn: Fn


@dataclass(frozen=True, slots=True)
class RemoteCallWait:
    """``remotecall_wait(fn, pid)``: returns ``("future", pid)`` once done."""

    pid: int
    fn: Fn
    ref: str


@dataclass(frozen=True, slots=True)
class RemoteDo:
    """``remote_do(fn, pid)``: returns None at once."""

    pid: int
    fn: Fn


@dataclass(frozen=True, slots=True)
class NewFuture:
    """``Future(pid)``: returns ``("future", pid)``."""

    ref: str
    pid: int


@dataclass(frozen=True, slots=True)
class NewChannel:
    """``RemoteChannel(lambda: Channel(capacity), pid)``; None = unbounded."""

    ref: str
    pid: int
    capacity: int | None = 1


@dataclass(frozen=True, slots=True)
class Fetch:
    """``fetch(ref)`` of a Future or a channel."""

    ref: str


@dataclass(frozen=True, slots=True)
class Wait:
    """``wait(ref)``: returns the reference (``("future"|"channel", owner)``)."""

    ref: str


@dataclass(frozen=True, slots=True)
class IsReady:
    """``isready(ref)``."""

    ref: str


@dataclass(frozen=True, slots=True)
class Put:
    """``put(ref, value)``: returns the reference."""

    ref: str
    value: Value


@dataclass(frozen=True, slots=True)
class Take:
    """``take(ref)`` of a channel."""

    ref: str


@dataclass(frozen=True, slots=True)
class Close:
    """``close(ref)`` of a channel: returns None."""

    ref: str


@dataclass(frozen=True, slots=True)
class IsOpen:
    """``isopen(ref)`` of a channel."""

    ref: str


@dataclass(frozen=True, slots=True)
class IsEmpty:
    """``isempty(ref)`` of a channel."""

    ref: str


@dataclass(frozen=True, slots=True)
class Forward:
    """Send reference ``ref`` to ``pid``, which keeps it; returns None."""

    ref: str
    pid: int


@dataclass(frozen=True, slots=True)
class Drop:
    """``pid`` lets go of its copy of ``ref``; returns None."""

    ref: str
    pid: int


@dataclass(frozen=True, slots=True)
class Clients:
    """The owner's client set of ``ref`` once the cluster is quiet.

    Returns the sorted tuple of holder pids, or None when the owner stores
    nothing under the reference (never used there, or freed).
    """

    ref: str


@dataclass(frozen=True, slots=True)
class NewPool:
    """``WorkerPool(pids)``, named ``pool``: returns None."""

    pool: str
    pids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PoolTake:
    """``take(pool)``: returns a pid."""

    pool: str


@dataclass(frozen=True, slots=True)
class PoolPut:
    """``put(pool, pid)``: returns None."""

    pool: str
    pid: int


@dataclass(frozen=True, slots=True)
class PoolPush:
    """``push(pool, pid)``: returns None."""

    pool: str
    pid: int


@dataclass(frozen=True, slots=True)
class PoolLength:
    """``length(pool)``."""

    pool: str


@dataclass(frozen=True, slots=True)
class PoolIsReady:
    """``isready(pool)``."""

    pool: str


@dataclass(frozen=True, slots=True)
class PoolWorkers:
    """``workers(pool)``: a sorted tuple."""

    pool: str


@dataclass(frozen=True, slots=True)
class PoolCall:
    """``remotecall_fetch(fn, pool)``: take a member, call, give it back."""

    pool: str
    fn: Fn


@dataclass(frozen=True, slots=True)
class PoolRemoteCall:
    """``remotecall(fn, pool)``: take a member, start the call, name it ``ref``.

    Returns ``("future", pid)`` for the member taken; the member goes back
    to the pool when the Future is done (or its worker died).
    """

    pool: str
    fn: Fn
    ref: str


@dataclass(frozen=True, slots=True)
class PMap:
    """``pmap(fn, items[, pool])``: a tuple of results in input order.

    Without ``pool``, a fresh CachingPool of ``workers()`` for this call.
    ``on_error``: the handler returns this constant for a failed element
    (instead of pmap raising).  ``retries``: how many retry delays; an
    element whose worker died is tried again on another.
    """

    fn: MapFn
    items: tuple[int, ...]
    pool: str | None = None
    on_error: Const | None = None
    retries: int = 0


#: Every user operation the model knows.
Op: TypeAlias = (
    AddProcs
    | RmProcs
    | Kill
    | Crash
    | Disconnect
    | Procs
    | Workers
    | NProcs
    | NWorkers
    | RemoteCall
    | RemoteCallFetch
    | RemoteCallWait
    | RemoteDo
    | NewFuture
    | NewChannel
    | Fetch
    | Wait
    | IsReady
    | Put
    | Take
    | Close
    | IsOpen
    | IsEmpty
    | Forward
    | Drop
    | Clients
    | NewPool
    | PoolTake
    | PoolPut
    | PoolPush
    | PoolLength
    | PoolIsReady
    | PoolWorkers
    | PoolCall
    | PoolRemoteCall
    | PMap
    | Interrupt
)

#: How workers connect to each other (``addprocs(topology=...)``).
Topology: TypeAlias = Literal["all_to_all", "master_worker"]


# ----------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class FutureRec:
    """A Future: its owner's value and every holder's view of it.

    ``stored`` is the value on the owner (a ``Raised`` when the call that
    set it raised); ``cached`` the processes whose local copy holds it;
    ``holders`` the owner's client set (processes holding an unfetched
    reference); ``copies`` every process holding a reference object.
    """

    owner: int
    state: FutureState = FutureState.UNSET
    stored: Outcome | None = None
    cached: frozenset[int] = frozenset()
    holders: frozenset[int] = frozenset({MASTER})
    copies: frozenset[int] = frozenset({MASTER})
    clients: ClientsState = ClientsState.ABSENT


@dataclass(frozen=True, slots=True)
class ChannelRec:
    """A RemoteChannel: the FIFO on its owner and who holds references."""

    owner: int
    capacity: int | None
    state: ChannelState = ChannelState.EMPTY
    items: tuple[Value, ...] = ()
    holders: frozenset[int] = frozenset({MASTER})
    copies: frozenset[int] = frozenset({MASTER})
    clients: ClientsState = ClientsState.ABSENT


#: A pool's free queue: segments in order; inside a segment, any order.
FreeQueue: TypeAlias = tuple[frozenset[int], ...]


@dataclass(frozen=True, slots=True)
class PoolRec:
    """A worker pool owned by the master: members and its free queue."""

    members: tuple[tuple[int, MemberState], ...] = ()
    free: FreeQueue = ()
    default: bool = False

    def state_of(self, pid: int) -> MemberState:
        for member, state in self.members:
            if member == pid:
                return state
        return MemberState.OUTSIDE

    def live(self) -> list[int]:
        """Members (free or busy), sorted."""
        return sorted(
            p for p, s in self.members if s in (MemberState.FREE, MemberState.BUSY)
        )


CallStatus: TypeAlias = Literal["pending", "running", "done"]


@dataclass(frozen=True, slots=True)
class Call:
    """A user operation between its invocation and its response.

    ``pending``: it has not taken effect.  ``running``: it took effect and
    waits for a function running elsewhere.  ``done``: its response is
    decided (``outcome``) and may reach the user.  ``reply_from`` is the
    process the response comes from: if it dies first, the call fails with
    ProcessExitedException instead.
    """

    op: Op
    status: CallStatus = "pending"
    outcome: Expect | None = None
    reply_from: int | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """A function running on process ``on`` for a call, a Future, or nobody.

    ``ghost``: ``on`` died after perhaps sending a request to a third
    process; the request may still take effect there, or may never.
    ``parked``: a ``PutInto`` an unbuffered channel that has put its item
    and waits for a take of it.  ``release``: not a function but the
    master's task behind ``remotecall(f, pool)``, which gives ``on`` back
    to ``pool`` once Future ``release`` is done (set by the call or by a
    put, or lost).
    """

    fn: Fn
    on: int
    future: str | None = None
    reply: int | None = None
    wait_reply: bool = False
    pool: str | None = None
    ghost: bool = False
    parked: bool = False
    release: str | None = None


#: The user operations on a channel, and everything acting on one.
ChannelUserOp: TypeAlias = (
    Fetch | Wait | IsReady | Put | Take | Close | IsOpen | IsEmpty
)
ChannelAction: TypeAlias = ChannelUserOp | TakeFrom | PutInto


def _channel_effect(
    op: ChannelAction, rec: ChannelRec
) -> tuple[ChannelEvent, Value, tuple[Value, ...]]:
    """Classify ``op`` on ``rec``'s data: its event, answer and new items.

    The answer and items matter only if the table lets the event proceed.
    """
    items = rec.items
    owner = ("channel", rec.owner)
    is_open = rec.state in (ChannelState.EMPTY, ChannelState.PARTIAL)
    if isinstance(op, Put | PutInto):
        # Capacity 0 holds the one item whose putter waits for a take.
        fills = rec.capacity is not None and len(items) + 1 == max(rec.capacity, 1)
        event = ChannelEvent.PUT_FILL if is_open and fills else ChannelEvent.PUT
        return event, owner if isinstance(op, Put) else None, (*items, op.value)
    if isinstance(op, Take | TakeFrom):
        last = len(items) == 1 and rec.state is not ChannelState.LOST
        event = ChannelEvent.TAKE_LAST if last else ChannelEvent.TAKE
        return event, items[0] if items else None, items[1:]
    if isinstance(op, Fetch):
        return ChannelEvent.FETCH, items[0] if items else None, items
    if isinstance(op, Wait):
        return ChannelEvent.FETCH, owner, items
    if isinstance(op, Close):
        return ChannelEvent.CLOSE, None, items
    if isinstance(op, IsReady):
        return ChannelEvent.QUERY, bool(items), items
    if isinstance(op, IsOpen):
        closed = rec.state in (ChannelState.CLOSED, ChannelState.DRAINED)
        return ChannelEvent.QUERY, not closed, items
    return ChannelEvent.QUERY, not items, items


# ------------------------------------------------------------------- model


@dataclass
class Model:
    """One state of the process group as the master's user sees it.

    Build it with the workers the cluster already has (``workers``, all
    running and all in the default pool) and the next pid the master will
    allocate.  Mutating methods are private: the state changes only through
    ``invoke``, the moves ``successors`` returns, and ``finish``.  ``seen``,
    if given, collects the key of every table transition fired, across
    every state cloned from this one.
    """

    procs: dict[int, WorkerState] = field(default_factory=dict)
    links: dict[int, LinkState] = field(default_factory=dict)
    next_pid: int = 2
    futures: dict[str, FutureRec] = field(default_factory=dict)
    channels: dict[str, ChannelRec] = field(default_factory=dict)
    pools: dict[str, PoolRec] = field(default_factory=dict)
    calls: dict[int, Call] = field(default_factory=dict)
    jobs: dict[int, Job] = field(default_factory=dict)
    next_job: int = 0
    left_at: dict[int, int] = field(default_factory=dict)
    #: Interrupts sent and not yet landed, one pid per signal (sorted).
    signals: tuple[int, ...] = ()
    topology: Topology = "all_to_all"
    seen: set[Key] | None = None

    @classmethod
    def start(
        cls,
        workers: Iterable[int] = (),
        *,
        next_pid: int | None = None,
        default_pool: bool = True,
        topology: Topology = "all_to_all",
        seen: set[Key] | None = None,
    ) -> Model:
        """The model of a cluster whose ``workers`` are running."""
        if topology not in ("all_to_all", "master_worker"):
            raise ModelError(
                f"topology={topology!r} is not modelled; use 'all_to_all' or "
                "'master_worker'"
            )
        pids = sorted(workers)
        model = cls(seen=seen, topology=topology)
        model.next_pid = next_pid if next_pid is not None else max([1, *pids]) + 1
        if any(p <= MASTER or p >= model.next_pid for p in pids):
            raise ModelError(f"workers {pids} must lie in 2..{model.next_pid - 1}")
        for pid in pids:
            model.procs[pid] = WorkerState.RUNNING
            model.links[pid] = LinkState.OPEN
        if default_pool:
            model.pools["default"] = PoolRec(
                members=tuple((p, MemberState.FREE) for p in pids),
                free=(frozenset(pids),) if pids else (),
                default=True,
            )
        return model

    # ------------------------------------------------------ bookkeeping

    def clone(self) -> Model:
        """An independent copy (records are immutable, so maps are shallow)."""
        return Model(
            procs=dict(self.procs),
            links=dict(self.links),
            next_pid=self.next_pid,
            futures=dict(self.futures),
            channels=dict(self.channels),
            pools=dict(self.pools),
            calls=dict(self.calls),
            jobs=dict(self.jobs),
            next_job=self.next_job,
            left_at=dict(self.left_at),
            signals=self.signals,
            topology=self.topology,
            seen=self.seen,
        )

    def key(self) -> tuple[object, ...]:
        """A hashable value equal for equal states (``seen`` excluded).

        Job ids are renumbered by content so two states that differ only in
        the order jobs were created compare equal.
        """
        return (
            tuple(sorted(self.procs.items())),
            tuple(sorted(self.links.items())),
            self.next_pid,
            tuple(sorted(self.futures.items())),
            tuple(sorted(self.channels.items())),
            tuple(sorted(self.pools.items())),
            tuple(sorted(self.calls.items(), key=lambda item: item[0])),
            tuple(sorted(map(repr, self.jobs.values()))),
            tuple(sorted(self.left_at.items())),
            self.signals,
            self.topology,
        )

    def _fire_worker(self, pid: int, event: WorkerEvent) -> str | None:
        transition = WORKER.fire(self.procs[pid], event, self.seen)
        self.procs[pid] = transition.target
        return transition.raises

    def _fire_link(self, pid: int, event: LinkEvent) -> None:
        state = self.links.get(pid, LinkState.STUB)
        self.links[pid] = CONNECTION.fire(state, event, self.seen).target

    def state_of(self, pid: int) -> WorkerState | None:
        """A worker's state; RUNNING for the master; None if never allocated."""
        if pid == MASTER:
            return WorkerState.RUNNING
        return self.procs.get(pid)

    def _reach(self, pid: int) -> Literal["ok", "dying", "gone", "unknown"]:
        """Whether an operation needing ``pid`` can proceed."""
        state = self.state_of(pid)
        if state is None:
            return "unknown"
        if state in (WorkerState.RUNNING, WorkerState.REMOVING):
            return "ok"
        if state is WorkerState.DYING:
            return "dying"
        return "gone"

    def _unreachable(self, pid: int) -> Raised:
        if self.state_of(pid) is None:
            return Raised("NoSuchProcessError", pid)
        return _pee(pid)

    def listed(self) -> tuple[int, ...]:
        """What ``procs()`` answers: the master, running and DYING workers.

        A killed worker stays listed until the master notices; when that
        happens is a move of its own, so the answer is one per state.
        """
        alive = (WorkerState.RUNNING, WorkerState.DYING)
        return tuple(
            sorted([MASTER, *(p for p, s in self.procs.items() if s in alive)])
        )

    def procs_choices(self) -> list[tuple[int, ...]]:
        """The possible answers of ``procs()`` in this state."""
        return [self.listed()]

    # ------------------------------------------------------ the interface

    def invoke(self, cid: int, op: Op) -> None:
        """Start operation ``op`` as call ``cid`` (it has no effect yet)."""
        if cid in self.calls:
            raise ModelError(f"call id {cid} is already in use")
        self.calls[cid] = Call(op)

    def is_done(self, cid: int) -> bool:
        call = self.calls.get(cid)
        return call is not None and call.status == "done"

    def expected(self, cid: int) -> Expect | None:
        """The response call ``cid`` will give, if decided."""
        call = self.calls.get(cid)
        return call.outcome if call is not None else None

    def finish(self, cid: int) -> None:
        """Call ``cid`` responded: forget it."""
        if not self.is_done(cid):
            raise ModelError(f"call {cid} has not taken effect")
        del self.calls[cid]

    def successors(self, *, optional: bool = True) -> Iterator[tuple[str, Model]]:
        """Every state one internal move away, with a label for the move.

        With ``optional=False`` only required moves are made (ghost requests
        are left alone), which is what settling a state needs.
        """
        for cid, call in sorted(self.calls.items()):
            if call.status == "pending":
                effects = self._linearize(cid, call.op)
                for nxt in effects:
                    yield f"call {cid} takes effect", nxt
                touched = (
                    None if effects else self._touch(getattr(call.op, "ref", None))
                )
                if touched is not None:
                    yield f"call {cid} reaches the owner and waits", touched
        for jid, job in sorted(self.jobs.items()):
            if job.parked:
                continue  # a take of its item moves it (_release_putter)
            if (job.ghost or self._stranger(job)) and not optional:
                continue
            ran = self._run_job(jid, job)
            for nxt in ran:
                yield f"job {jid} runs on {job.on}", nxt
            touched = None if ran else self._touch(getattr(job.fn, "ref", None))
            if touched is not None and (not job.ghost or optional):
                yield f"job {jid} reaches the owner and waits", touched
        for pid in sorted(set(self.signals)):
            if self._reach(pid) == "ok":
                for nxt in self._signal(pid):
                    yield f"the interrupt lands on {pid}", nxt
        for pid, state in sorted(self.procs.items()):
            if state in (WorkerState.DYING, WorkerState.REMOVING):
                for nxt in self.clone()._lose(pid):
                    yield f"master notices {pid} left", nxt

    def _stranger(self, job: Job) -> bool:
        """Whether ``job`` needs a departed process, from another worker.

        A worker that joined after a process left was never told, and one
        that had no link to it yet may be connecting when it dies: either
        waits for a connection that never comes and fails after its timeout
        ("peer did not connect", DistributedError).  That answer can be
        slow, so the model does not require it to have come.
        """
        fn = job.fn
        if not isinstance(fn, TakeFrom | PutInto) or job.on == MASTER:
            return False
        owner = self.channels[fn.ref].owner
        return owner != job.on and owner in self.left_at

    def _touch(self, ref: str | None) -> Model | None:
        """A waiting operation on ``ref`` has reached the owner.

        A read or take that waits has already made the owner store the
        value (storage is created at first use), which a client-set query
        can see before the operation answers.  None if there is nothing to
        create or the owner cannot be reached.
        """
        if ref is None or not (ref in self.futures or ref in self.channels):
            return None
        rec = self._record(ref)
        if rec.clients is not ClientsState.ABSENT or self._reach(rec.owner) != "ok":
            return None
        touched = self.clone()
        touched._clients_event(ref, ClientsEvent.CREATE)
        return touched

    # -------------------------------------------------- linearization

    def _done(self, cid: int, outcome: Expect, reply_from: int | None = None) -> None:
        call = self.calls[cid]
        self.calls[cid] = replace(
            call, status="done", outcome=outcome, reply_from=reply_from
        )

    def _linearize(self, cid: int, op: Op) -> list[Model]:
        """Every way ``op`` can take effect now; empty if it must wait."""
        if isinstance(op, AddProcs):
            return self._op_addprocs(cid, op)
        if isinstance(op, RmProcs):
            return self._op_rmprocs(cid, op)
        if isinstance(op, Kill | Crash):
            return self._op_kill(cid, op)
        if isinstance(op, Disconnect):
            return self._op_disconnect(cid, op)
        if isinstance(op, Interrupt):
            return self._op_interrupt(cid, op)
        if isinstance(op, Procs | Workers | NProcs | NWorkers):
            return self._op_query(cid, op)
        if isinstance(op, RemoteCall | RemoteCallFetch | RemoteCallWait | RemoteDo):
            return self._op_call(cid, op)
        if isinstance(op, NewFuture | NewChannel):
            return self._op_new_ref(cid, op)
        if isinstance(op, Fetch | Wait | IsReady | Put):
            return self._op_ref(cid, op)
        if isinstance(op, Take | Close | IsOpen | IsEmpty):
            return self._op_channel(cid, op)
        if isinstance(op, Forward):
            return self._op_forward(cid, op)
        if isinstance(op, Drop):
            return self._op_drop(cid, op)
        if isinstance(op, Clients):
            return self._op_clients(cid, op)
        return self._linearize_pool(cid, op)

    def _linearize_pool(
        self,
        cid: int,
        op: NewPool
        | PoolTake
        | PoolPut
        | PoolPush
        | PoolLength
        | PoolIsReady
        | PoolWorkers
        | PoolCall
        | PoolRemoteCall
        | PMap,
    ) -> list[Model]:
        if isinstance(op, NewPool):
            return self._op_new_pool(cid, op)
        if isinstance(op, PoolTake):
            return self._op_pool_take(cid, op)
        if isinstance(op, PoolPut | PoolPush):
            return self._op_pool_change(cid, op)
        if isinstance(op, PoolLength | PoolIsReady | PoolWorkers):
            return self._op_pool_query(cid, op)
        if isinstance(op, PoolCall | PoolRemoteCall):
            return self._op_pool_call(cid, op)
        return self._op_pmap(cid, op)

    def _need(
        self, cid: int, pid: int, proceed: Callable[[Model], list[Model]]
    ) -> list[Model]:
        """Run ``proceed`` on a copy if ``pid`` is reachable, else fail the call.

        A DYING pid's send may fail at once (ProcessExitedException) or the
        call may wait until the master notices the death, which fails it.
        """
        reach = self._reach(pid)
        if reach == "ok":
            return proceed(self.clone())
        failed = self.clone()
        failed._done(cid, self._unreachable(pid))
        return [failed]

    # process group

    def _op_addprocs(self, cid: int, op: AddProcs) -> list[Model]:
        results = []
        for allocated in range(op.failed + 1):
            # Failed launches never set up took no pid.
            results += self._addprocs(cid, op.n - op.failed + allocated, allocated)
        return results

    def _addprocs(self, cid: int, n: int, failures: int) -> list[Model]:
        """``n`` pids set up, of which ``failures`` (any of them) never join."""
        pids = tuple(range(self.next_pid, self.next_pid + n))
        results = []
        for failed in itertools.combinations(pids, failures):
            m = self.clone()
            m.next_pid += n
            joined = tuple(p for p in pids if p not in failed)
            for pid in pids:
                m.procs[pid] = WorkerState.CREATED
                m._fire_link(pid, LinkEvent.DIAL)
                m._fire_link(pid, LinkEvent.COOKIE_OK)
                m._fire_link(pid, LinkEvent.JOIN)
                if pid in failed:
                    m._fire_link(pid, LinkEvent.TIMEOUT)
                    m._fire_worker(pid, WorkerEvent.LAUNCH_FAILED)
                    continue
                m._fire_link(pid, LinkEvent.JOIN_COMPLETE)
                m._fire_worker(pid, WorkerEvent.JOINED)
            if "default" in m.pools and joined:
                # Workers join concurrently, so their order in the queue is open.
                m._pool_push_all("default", joined)
            launch_failed = failed or len(pids) < self._invoked_n(cid)
            m._done(cid, Raised("LaunchError") if launch_failed else Returned(joined))
            results.append(m)
        return results

    def _invoked_n(self, cid: int) -> int:
        op = self.calls[cid].op
        assert isinstance(op, AddProcs)
        return op.n

    def _op_rmprocs(self, cid: int, op: RmProcs) -> list[Model]:
        models = [self.clone()]
        for pid in dict.fromkeys(op.pids):
            if pid == MASTER or pid not in self.procs:
                continue
            nxt: list[Model] = []
            for m in models:
                m._fire_worker(pid, WorkerEvent.RMPROCS)
                leaving = m.procs[pid] is WorkerState.REMOVING
                nxt += m._lose(pid) if leaving and op.wait else [m]
            models = nxt
        for m in models:
            m._done(cid, Returned(None))
        return models

    def _op_disconnect(self, cid: int, op: Disconnect) -> list[Model]:
        m = self.clone()
        m._done(cid, Returned(None))
        if m._reach(op.pid) in ("gone", "unknown"):
            return [m]
        return m._lose(op.pid)

    def _op_kill(self, cid: int, op: Kill | Crash) -> list[Model]:
        m = self.clone()
        if op.pid not in m.procs:
            m._done(cid, Raised("NoSuchProcessError", op.pid))
            return [m]
        raises = m._fire_worker(op.pid, WorkerEvent.KILL)
        if raises is not None:
            m._done(cid, Raised(raises, op.pid))
            return [m]
        m._done(cid, Returned(None))
        if isinstance(op, Crash) or m.procs[op.pid] is not WorkerState.DYING:
            return [m]
        return m._lose(op.pid)

    def _op_interrupt(self, cid: int, op: Interrupt) -> list[Model]:
        """Send each of ``op.pids`` a signal; it lands later (``_signal``).

        A pid that is not a current worker raises KeyError first.
        """
        handled = (WorkerState.RUNNING, WorkerState.DYING, WorkerState.REMOVING)
        m = self.clone()
        for pid in op.pids:
            if pid == MASTER or self.state_of(pid) not in handled:
                m._done(cid, Raised("KeyError"))
                return [m]
        m.signals = tuple(sorted((*m.signals, *op.pids)))
        m._done(cid, Returned(None))
        return [m]

    def _signal(self, pid: int) -> list[Model]:
        """The interrupt sent to ``pid`` lands: each call it runs may fail.

        The signal travels apart from the calls and ``interrupt`` returns
        once it is sent, so it lands at some moment after that (a move), and
        a call may not have arrived yet, or may have finished: either way it
        is unaffected.  One that is hit fails with a RemoteException wrapping
        KeyboardInterrupt; a channel request it had sent elsewhere may still
        take effect (a ghost, as when its worker dies).
        """
        start = self.clone()
        left = list(self.signals)
        left.remove(pid)
        start.signals = tuple(left)
        models = [start]
        for jid, job in sorted(self.jobs.items()):
            if job.on != pid or job.ghost or job.release is not None:
                continue  # release: the master's task giving a member back
            nxt = []
            for m in models:
                hit = m.clone()
                hit._interrupt_job(jid, job)
                nxt += [m, hit]
            models = nxt
        return models

    def _interrupt_job(self, jid: int, job: Job) -> None:
        self._end_job(jid)
        fn = job.fn
        elsewhere = isinstance(fn, TakeFrom | PutInto) and (
            self.channels[fn.ref].owner != job.on
        )
        if elsewhere and not job.parked:
            self.jobs[jid] = Job(fn, job.on, ghost=True)
        self._deliver(job, Raised("RemoteException", job.on, "KeyboardInterrupt"))

    def _op_query(
        self, cid: int, op: Procs | Workers | NProcs | NWorkers
    ) -> list[Model]:
        results = []
        for pids in self.procs_choices():
            m = self.clone()
            answer: Value
            if isinstance(op, Procs):
                answer = pids
            elif isinstance(op, Workers):
                answer = pids if len(pids) == 1 else pids[1:]
            elif isinstance(op, NProcs):
                answer = len(pids)
            else:
                answer = max(1, len(pids) - 1)
            m._done(cid, Returned(answer))
            results.append(m)
        return results

    # remote calls

    def _new_job(self, job: Job) -> None:
        """Start ``job``; a reference among its arguments is held meanwhile.

        Sending a reference to a worker as an argument makes the worker a
        holder until the call is over (the owner hears of it like of any
        other holder), so the client set shows it while the call runs.
        """
        ref = _job_ref(job)
        if ref is not None and job.on not in self.holders_of(ref):
            rec = self._record(ref)
            if rec.clients is not ClientsState.FREED:
                self._clients_event(ref, ClientsEvent.ADD)
        self.jobs[self.next_job] = job
        self.next_job += 1

    def _end_job(self, jid: int, *, died: bool = False) -> None:
        """Forget job ``jid``; its worker may stop holding a reference."""
        job = self.jobs.pop(jid)
        ref = _job_ref(job)
        if ref is None or job.on in self.holders_of(ref):
            return
        self._holder_left(ref, died=died)

    def holders_of(self, ref: str) -> frozenset[int]:
        """Who holds ``ref`` as the owner counts it: keepers and running calls."""
        rec = self._record(ref)
        if self._reach(rec.owner) == "gone":
            return frozenset()  # nothing is counted any more
        held = {job.on for job in self.jobs.values() if _job_ref(job) == ref}
        return rec.holders | held

    def _op_call(
        self, cid: int, op: RemoteCall | RemoteCallFetch | RemoteCallWait | RemoteDo
    ) -> list[Model]:
        def proceed(m: Model) -> list[Model]:
            if isinstance(op, RemoteCall | RemoteCallWait):
                m.futures[op.ref] = FutureRec(owner=op.pid)
                # The call message creates the storage on arrival.
                m._clients_event(op.ref, ClientsEvent.CREATE)
            if isinstance(op, RemoteCall):
                m._new_job(Job(op.fn, op.pid, future=op.ref))
                m._done(cid, Returned(("future", op.pid)))
            elif isinstance(op, RemoteDo):
                m._new_job(Job(op.fn, op.pid))
                m._done(cid, Returned(None))
            else:
                future = op.ref if isinstance(op, RemoteCallWait) else None
                m._new_job(
                    Job(
                        op.fn,
                        op.pid,
                        future=future,
                        reply=cid,
                        wait_reply=future is not None,
                    )
                )
                m.calls[cid] = replace(
                    m.calls[cid], status="running", reply_from=_remote(op.pid)
                )
            return [m]

        if isinstance(op, RemoteCall | RemoteDo) and self._reach(op.pid) == "dying":
            # The message may be written before the death is noticed.
            sent = proceed(self.clone())
            failed = self.clone()
            failed._done(cid, _pee(op.pid))
            return [*sent, failed]
        return self._need(cid, op.pid, proceed)

    def _run_job(self, jid: int, job: Job) -> list[Model]:
        if job.release is not None:
            return self._release(jid, job)
        if self._reach(job.on) not in ("ok",) and not job.ghost:
            return []
        if job.ghost and self._record(_ghost_ref(job)).clients is ClientsState.FREED:
            # The value was freed: whatever the ghost does, nobody sees it.
            gone = self.clone()
            del gone.jobs[jid]
            return [gone]
        results = []
        for m, result in self.clone()._apply_fn(job.fn, job.on):
            fn = job.fn
            if (
                isinstance(fn, PutInto)
                and isinstance(result, Returned)
                and not job.ghost
                and m.channels[fn.ref].capacity == 0
            ):
                # The item is in; the put returns when a take has it.
                m.jobs[jid] = replace(job, parked=True)
                results.append(m)
                continue
            m._end_job(jid)
            if not job.ghost:
                m._deliver(job, result)
            results.append(m)
        return results

    def _release(self, jid: int, job: Job) -> list[Model]:
        """Give ``job.on`` back to its pool once Future ``job.release`` is done."""
        assert job.pool is not None and job.release is not None
        if self.futures[job.release].state is FutureState.UNSET:
            return []
        m = self.clone()
        del m.jobs[jid]
        m._pool_put(job.pool, job.on)
        return [m]

    def _apply_fn(self, fn: Fn, on: int) -> list[tuple[Model, Outcome]]:
        """Run ``fn`` on ``on``; empty when it cannot run now (it waits)."""
        if isinstance(fn, Const):
            return [(self, Returned(fn.value))]
        if isinstance(fn, Fail):
            return [(self, Raised("RemoteException", on, "ValueError"))]
        if isinstance(fn, MyId):
            return [(self, Returned(on))]
        if isinstance(fn, Sleep):
            return []
        owner = self.channels[fn.ref].owner
        if self.topology == "master_worker" and MASTER != on != owner != MASTER:
            # Workers have no links to each other in this topology.
            return [(self, Raised("RemoteException", on, "TopologyError"))]
        gave_up = (self, _raised_in(Raised("DistributedError"), on))
        if on != MASTER and on != owner and on >= self.left_at.get(owner, on + 1):
            return [gave_up]
        outcomes = [
            (m, _raised_in(out, on)) for m, out in self._channel_op(fn, on)
        ]  # TakeFrom or PutInto
        if on not in (MASTER, owner) and owner in self.left_at:
            # A worker's first contact with a peer that died meanwhile: the
            # lazy connection gives up ("peer did not connect"), as Julia's.
            outcomes.append(gave_up)
        return outcomes

    def _deliver(self, job: Job, result: Outcome) -> None:
        if job.future is not None:
            self._future_complete(job.future, result)
        if job.reply is not None and job.reply in self.calls:
            answer: Outcome = result
            if job.wait_reply and isinstance(result, Returned):
                answer = Returned(("future", job.on))
            self._done(job.reply, answer, _remote(job.on))
        if job.pool is not None:
            self._pool_put(job.pool, job.on)

    def _future_complete(self, ref: str, result: Outcome) -> None:
        rec = self.futures[ref]
        transition = FUTURE.fire(rec.state, FutureEvent.COMPLETE, self.seen)
        stored = rec.stored if rec.state is FutureState.SET else result
        self.futures[ref] = replace(rec, state=transition.target, stored=stored)

    # futures

    def _op_new_ref(self, cid: int, op: NewFuture | NewChannel) -> list[Model]:
        if self.state_of(op.pid) is None:
            raise ModelError(f"{op}: references to unknown pids are not modelled")
        m = self.clone()
        if isinstance(op, NewFuture):
            m.futures[op.ref] = FutureRec(owner=op.pid)
            kind = "future"
        else:
            if op.capacity is not None and op.capacity < 0:
                raise ModelError(f"{op}: capacity must be >= 0 or None")
            m.channels[op.ref] = ChannelRec(owner=op.pid, capacity=op.capacity)
            kind = "channel"
        if m._reach(op.pid) == "gone":
            # A handle on a departed owner: every use will fail.
            m._owner_died(op.ref)
        m._done(cid, Returned((kind, op.pid)))
        return [m]

    def _cache_event(self, rec: FutureRec, event: CacheEvent) -> CacheState:
        """Fire ``event`` on the master's copy; a refusal raises _Refusal."""
        state = CacheState.CACHED if MASTER in rec.cached else CacheState.UNCACHED
        transition = FUTURE_CACHE.fire(state, event, self.seen)
        if transition.raises is not None:
            raise _Refusal(Raised(transition.raises))
        return transition.target

    def _owner_side(
        self, cid: int, ref: str, event: FutureEvent, proceed: Callable[[Model], None]
    ) -> list[Model]:
        """Carry out a Future operation on its owner, wherever that is.

        A departed owner means the value is LOST: the table says what the
        operation reports.  A DYING owner fails the call at once or leaves
        it waiting for the master to notice (which then fails it).
        """
        owner = self.futures[ref].owner
        reach = self._reach(owner)
        m = self.clone()
        if reach == "gone":
            transition = FUTURE.fire(m.futures[ref].state, event, m.seen)
            assert transition.raises is not None
            m._done(cid, Raised(transition.raises, owner))
            return [m]
        if reach == "dying":
            m._done(cid, _pee(owner))
            return [m]
        m._clients_event(ref, ClientsEvent.CREATE)
        proceed(m)
        if not m.is_done(cid):
            return []
        m.calls[cid] = replace(m.calls[cid], reply_from=_remote(owner))
        return [m]

    def _future_read(self, cid: int, op: Fetch | Wait | IsReady) -> list[Model]:
        rec = self.futures[op.ref]
        me = ("future", rec.owner)
        if MASTER in rec.cached:
            m = self.clone()
            m._cache_event(rec, CacheEvent.READ)
            answer: Value = me if isinstance(op, Wait) else True
            if isinstance(op, Fetch):
                assert isinstance(rec.stored, Returned)
                answer = rec.stored.value
            m._done(cid, Returned(answer))
            return [m]
        self._cache_event(rec, CacheEvent.READ)

        def proceed(m: Model) -> None:
            current = m.futures[op.ref]
            transition = FUTURE.fire(current.state, FutureEvent.READ, m.seen)
            if isinstance(op, IsReady):
                m._done(cid, Returned(current.state is FutureState.SET))
                return
            if transition.blocks:
                return
            stored = current.stored
            assert stored is not None
            if isinstance(stored, Raised):
                m._done(cid, stored)  # raised, and not cached
            elif isinstance(op, Wait):
                m._done(cid, Returned(me))
            else:
                m._filled(op.ref, MASTER, CacheEvent.FETCHED)
                m._done(cid, stored)

        return self._owner_side(cid, op.ref, FutureEvent.READ, proceed)

    def _filled(self, ref: str, pid: int, event: CacheEvent) -> None:
        """``pid``'s copy now holds the value: it leaves the client set."""
        rec = self.futures[ref]
        if pid == MASTER:
            self._cache_event(rec, event)
        self.futures[ref] = replace(rec, cached=rec.cached | {pid})
        self._drop_holder(ref, pid)

    def _future_put(self, cid: int, op: Put) -> list[Model]:
        rec = self.futures[op.ref]
        try:
            self._cache_event(rec, CacheEvent.PUT)
        except _Refusal as refusal:
            m = self.clone()
            m._done(cid, refusal.outcome)
            return [m]

        def proceed(m: Model) -> None:
            current = m.futures[op.ref]
            transition = FUTURE.fire(current.state, FutureEvent.PUT, m.seen)
            if transition.raises is not None:
                m._done(cid, _wrap(Raised(transition.raises), rec.owner, MASTER))
                return
            m.futures[op.ref] = replace(
                current, state=transition.target, stored=Returned(op.value)
            )
            m._filled(op.ref, MASTER, CacheEvent.PUT_OK)
            m._done(cid, Returned(("future", rec.owner)))

        return self._owner_side(cid, op.ref, FutureEvent.PUT, proceed)

    # channels

    def _channel_op(self, op: ChannelAction, by: int) -> list[tuple[Model, Outcome]]:
        """A channel operation made by process ``by``, as ``by`` sees it.

        Returns nothing when it must wait (or the owner is dying: it waits
        for the master to notice).  Errors come back as ``by`` sees them:
        InvalidStateError raw if ``by`` owns the channel, else wrapped in a
        RemoteException from the owner; ProcessExitedException raw.
        """
        rec = self.channels[op.ref]
        if self._reach(rec.owner) == "dying":
            return []
        m = self.clone()
        if rec.state is not ChannelState.LOST:
            m._clients_event(op.ref, ClientsEvent.CREATE)
        event, answer, items = _channel_effect(op, rec)
        transition = CHANNEL.fire(rec.state, event, m.seen)
        if transition.blocks:
            return []
        if transition.raises == "ProcessExitedException":
            return [(m, _pee(rec.owner))]
        if transition.raises is not None:
            return [(m, _wrap(Raised(transition.raises), rec.owner, by))]
        m.channels[op.ref] = replace(
            m.channels[op.ref], state=transition.target, items=items
        )
        if rec.capacity == 0 and rec.items and not items:
            m._release_putter(op.ref, None)  # a take has the item
        elif rec.capacity == 0 and event is ChannelEvent.CLOSE and rec.items:
            m._release_putter(op.ref, Raised("InvalidStateError"))
        return [(m, Returned(answer))]

    def _release_putter(self, ref: str, failure: Raised | None) -> None:
        """The put waiting on unbuffered ``ref`` returns, or raises ``failure``.

        There is at most one: its item is the one the channel holds.
        """
        owner = self.channels[ref].owner
        for cid, call in sorted(self.calls.items()):
            op = call.op
            if call.status == "running" and isinstance(op, Put) and op.ref == ref:
                done: Outcome = Returned(("channel", owner))
                if failure is not None:
                    done = _wrap(failure, owner, MASTER)
                self._done(cid, done, _remote(owner))
        for jid, job in sorted(self.jobs.items()):
            if job.parked and isinstance(job.fn, PutInto) and job.fn.ref == ref:
                self._end_job(jid)
                result: Outcome = Returned(None)
                if failure is not None:
                    result = _raised_in(_wrap(failure, owner, job.on), job.on)
                self._deliver(job, result)

    def _op_channel(self, cid: int, op: ChannelUserOp) -> list[Model]:
        rec = self.channels[op.ref]
        if self._reach(rec.owner) == "dying":
            failed = self.clone()
            failed._done(cid, _pee(rec.owner))
            return [failed]
        results = []
        for m, outcome in self._channel_op(op, MASTER):
            m._done(cid, outcome, _remote(rec.owner))
            unbuffered = isinstance(op, Put) and rec.capacity == 0
            if unbuffered and isinstance(outcome, Returned):
                # Unbuffered: the put waits until a take has its item.
                m.calls[cid] = replace(m.calls[cid], status="running", outcome=None)
            results.append(m)
        return results

    def _op_ref(self, cid: int, op: Fetch | Wait | IsReady | Put) -> list[Model]:
        if op.ref in self.futures:
            if isinstance(op, Put):
                return self._future_put(cid, op)
            return self._future_read(cid, op)
        return self._op_channel(cid, op)

    # client sets

    def _record(self, ref: str) -> FutureRec | ChannelRec:
        if ref in self.futures:
            return self.futures[ref]
        return self.channels[ref]

    def _store(self, ref: str, rec: FutureRec | ChannelRec) -> None:
        if isinstance(rec, FutureRec):
            self.futures[ref] = rec
        else:
            self.channels[ref] = rec

    def _clients_event(self, ref: str, event: ClientsEvent) -> None:
        rec = self._record(ref)
        transition = CLIENTS.fire(rec.clients, event, self.seen)
        self._store(ref, replace(rec, clients=transition.target))

    def _drop_holder(self, ref: str, pid: int, *, died: bool = False) -> None:
        """``pid`` no longer keeps an unfetched reference to ``ref``."""
        rec = self._record(ref)
        if pid not in rec.holders:
            return
        self._store(ref, replace(rec, holders=rec.holders - {pid}))
        if pid not in self.holders_of(ref):
            self._holder_left(ref, died=died)

    def _holder_left(self, ref: str, *, died: bool) -> None:
        """A holder left ``ref``'s client set: tell the owner's table."""
        state = self._record(ref).clients
        if state is ClientsState.ABSENT:
            self._clients_event(ref, ClientsEvent.DEL)
        elif state is ClientsState.HELD:
            last = not self.holders_of(ref)
            if died:
                event = (
                    ClientsEvent.HOLDER_DIED_LAST if last else ClientsEvent.HOLDER_DIED
                )
            else:
                event = ClientsEvent.DEL_LAST if last else ClientsEvent.DEL
            self._clients_event(ref, event)

    def _op_forward(self, cid: int, op: Forward) -> list[Model]:
        def proceed(m: Model) -> list[Model]:
            rec = m._record(op.ref)
            copies = rec.copies | {op.pid}
            if isinstance(rec, FutureRec) and MASTER in rec.cached:
                # A fetched Future travels with its value: no owner involved,
                # and a receiver holding an unfetched copy adopts the value
                # and leaves the client set (rrid.arriving-value-adopted).
                m.futures[op.ref] = replace(
                    rec, cached=rec.cached | {op.pid}, copies=copies
                )
                if m._reach(rec.owner) != "gone":
                    m._drop_holder(op.ref, op.pid)
            elif op.pid in rec.holders or m._reach(rec.owner) == "gone":
                m._store(op.ref, replace(rec, copies=copies))
            else:
                m._clients_event(op.ref, ClientsEvent.ADD)
                rec = m._record(op.ref)
                m._store(
                    op.ref, replace(rec, holders=rec.holders | {op.pid}, copies=copies)
                )
            m._done(cid, Returned(None), _remote(op.pid))
            return [m]

        return self._need(cid, op.pid, proceed)

    def _op_drop(self, cid: int, op: Drop) -> list[Model]:
        def proceed(m: Model) -> list[Model]:
            rec = m._record(op.ref)
            if m._reach(rec.owner) != "gone":
                m._drop_holder(op.ref, op.pid)
            rec = m._record(op.ref)
            m._store(op.ref, replace(rec, copies=rec.copies - {op.pid}))
            if isinstance(rec, FutureRec):
                m.futures[op.ref] = replace(
                    m.futures[op.ref], cached=rec.cached - {op.pid}
                )
            m._done(cid, Returned(None), _remote(op.pid))
            return [m]

        return self._need(cid, op.pid, proceed)

    def _op_clients(self, cid: int, op: Clients) -> list[Model]:
        rec = self._record(op.ref)

        def proceed(m: Model) -> list[Model]:
            answer: Value = None
            if rec.clients is ClientsState.HELD:
                answer = tuple(sorted(self.holders_of(op.ref)))
            m._done(cid, Returned(answer), _remote(rec.owner))
            return [m]

        return self._need(cid, rec.owner, proceed)

    # worker pools

    def _member(self, name: str, pid: int, event: MemberEvent) -> PoolRec:
        pool = self.pools[name]
        state = pool.state_of(pid)
        target = POOL_MEMBER.fire(state, event, self.seen).target
        members = tuple(sorted({**dict(pool.members), pid: target}.items()))
        free = pool.free
        queued = any(pid in segment for segment in free)
        if target is MemberState.FREE and not queued:
            free = (*free, frozenset({pid}))
        elif target is not MemberState.FREE:
            free = tuple(s - {pid} for s in free if s - {pid})
        return replace(pool, members=members, free=free)

    def _pool_push_all(self, name: str, pids: Iterable[int]) -> None:
        """Push ``pids`` that arrive concurrently: queued in an open order."""
        pool = self.pools[name]
        fresh = []
        members = dict(pool.members)
        for pid in pids:
            state = pool.state_of(pid)
            members[pid] = POOL_MEMBER.fire(state, MemberEvent.PUSH, self.seen).target
            if state is not MemberState.FREE:
                fresh.append(pid)
        free = pool.free + ((frozenset(fresh),) if fresh else ())
        self.pools[name] = replace(
            pool, members=tuple(sorted(members.items())), free=free
        )

    def _prune(self, name: str) -> list[Model]:
        """Drop members that are no longer listed by procs()."""
        pool = self.pools[name]
        models = [self.clone()]
        listed = self.listed()
        for pid in pool.live():
            if pid in listed:
                continue
            nxt = []
            for m in models:
                m.pools[name] = m._member(name, pid, MemberEvent.PRUNE)
                nxt.append(m)
            models = nxt
        return models

    def _pool_put(self, name: str, pid: int) -> None:
        self.pools[name] = self._member(name, pid, MemberEvent.PUT)

    def _op_new_pool(self, cid: int, op: NewPool) -> list[Model]:
        m = self.clone()
        m.pools[op.pool] = PoolRec()
        for pid in op.pids:
            m.pools[op.pool] = m._member(op.pool, pid, MemberEvent.PUSH)
        m._done(cid, Returned(None))
        return [m]

    def _take(self, name: str) -> list[tuple[Model, int | Raised]]:
        """Take a member (after pruning); nothing when the caller must wait."""
        results: list[tuple[Model, int | Raised]] = []
        for m in self._prune(name):
            pool = m.pools[name]
            if pool.free:
                for pid in sorted(pool.free[0]):
                    taken = m.clone()
                    taken.pools[name] = taken._member(name, pid, MemberEvent.TAKE)
                    results.append((taken, pid))
            elif not pool.live():
                fallback: int | Raised = (
                    MASTER if pool.default else Raised("NoActiveWorkerError")
                )
                results.append((m, fallback))
        return results

    def _op_pool_take(self, cid: int, op: PoolTake) -> list[Model]:
        results = []
        for m, got in self._take(op.pool):
            m._done(cid, got if isinstance(got, Raised) else Returned(got))
            results.append(m)
        return results

    def _op_pool_change(self, cid: int, op: PoolPut | PoolPush) -> list[Model]:
        m = self.clone()
        event = MemberEvent.PUT if isinstance(op, PoolPut) else MemberEvent.PUSH
        m.pools[op.pool] = m._member(op.pool, op.pid, event)
        m._done(cid, Returned(None))
        return [m]

    def _op_pool_query(
        self, cid: int, op: PoolLength | PoolIsReady | PoolWorkers
    ) -> list[Model]:
        results = []
        for m in self._prune(op.pool):
            pool = m.pools[op.pool]
            live = pool.live()
            answer: Value
            if isinstance(op, PoolLength):
                answer = len(live)
            elif isinstance(op, PoolIsReady):
                answer = bool(pool.free) or (not live and pool.default)
            else:
                answer = tuple(live) if live or not pool.default else (MASTER,)
            m._done(cid, Returned(answer))
            results.append(m)
        return results

    def _op_pool_call(self, cid: int, op: PoolCall | PoolRemoteCall) -> list[Model]:
        results = []
        for m, got in self._take(op.pool):
            if isinstance(got, Raised):
                m._done(cid, got)
            elif isinstance(op, PoolRemoteCall):
                m.futures[op.ref] = FutureRec(owner=got)
                m._clients_event(op.ref, ClientsEvent.CREATE)
                m._new_job(Job(op.fn, got, future=op.ref))
                m._new_job(Job(Const(None), got, pool=op.pool, release=op.ref))
                m._done(cid, Returned(("future", got)))
            else:
                m._new_job(Job(op.fn, got, reply=cid, pool=op.pool))
                m.calls[cid] = replace(
                    m.calls[cid], status="running", reply_from=_remote(got)
                )
            results.append(m)
        return results

    def _op_pmap(self, cid: int, op: PMap) -> list[Model]:
        if op.pool is None:
            choices = self.procs_choices()
            results = []
            for pids in choices:
                m = self.clone()
                usable = [p for p in pids if p != MASTER] or [MASTER]
                outcome = _map_outcome(
                    op, usable, local=usable == [MASTER], dying=self._dying(usable)
                )
                m._done(cid, outcome)
                results.append(m)
            return results
        results = []
        for m in self._prune(op.pool):
            pool = m.pools[op.pool]
            live = pool.live()
            busy = [p for p, s in pool.members if s is MemberState.BUSY]
            if busy:
                raise ModelError("pmap over a pool with busy members is not modelled")
            # A pool without a live member runs the map on the caller.
            outcome = _map_outcome(
                op, live or [MASTER], local=not live, dying=self._dying(live)
            )
            m._done(cid, outcome)
            if live:
                # Every member was taken and given back, in an open order.
                m.pools[op.pool] = replace(pool, free=(frozenset(live),))
            results.append(m)
        return results

    def _dying(self, pids: Iterable[int]) -> frozenset[int]:
        """Those of ``pids`` killed and not yet noticed by the master."""
        return frozenset(p for p in pids if self.state_of(p) is WorkerState.DYING)

    # ------------------------------------------------------------ deaths

    def _lose(self, pid: int) -> list[Model]:
        """The master noticed that ``pid``'s link is gone (mutates a copy)."""
        m = self
        m._fire_worker(pid, WorkerEvent.LINK_LOST)
        # A signal to a dead process is lost.
        m.signals = tuple(p for p in m.signals if p != pid)
        # Workers started from now on never hear of pid (see _stranger).
        m.left_at[pid] = m.next_pid
        if pid in m.links:
            m._fire_link(pid, LinkEvent.EOF)

        for jid, job in sorted(m.jobs.items()):
            if job.parked and job.on != pid:
                assert isinstance(job.fn, PutInto)
                if m.channels[job.fn.ref].owner == pid:
                    # The channel went with pid: the waiting put fails.
                    m._end_job(jid)
                    m._deliver(job, _raised_in(_pee(pid), job.on))
                continue
            if job.on != pid:
                continue
            if job.pool is not None:
                # The pool call's ``finally`` gives the worker back.
                m._pool_put(job.pool, pid)
            nested = isinstance(job.fn, TakeFrom | PutInto) and (
                m.channels[job.fn.ref].owner != pid
            )
            if job.parked:
                m._end_job(jid, died=True)  # its item is in; nobody waits
            elif nested:
                # The owner lives on: the holder died, its request may not.
                m._end_job(jid, died=True)
                m.jobs[jid] = Job(job.fn, job.on, ghost=True)
            else:
                del m.jobs[jid]  # no reference, or one that dies with pid

        for ref in sorted([*m.futures, *m.channels]):
            rec = m._record(ref)
            if rec.owner == pid:
                m._owner_died(ref)
            elif pid in rec.holders:
                m._drop_holder(ref, pid, died=True)

        # Calls whose answer had to come from pid: still waiting ones fail;
        # for finished ones the answer may have got out before the death.
        models = [m]
        for cid, call in sorted(m.calls.items()):
            if call.reply_from != pid:
                continue
            nxt = []
            for model in models:
                if call.status == "done":
                    nxt.append(model.clone())
                model._done(cid, _pee(pid))
                nxt.append(model)
            models = nxt
        return models

    def _owner_died(self, ref: str) -> None:
        """The owner of ``ref`` has gone: its stored value is lost."""
        self._clients_event(ref, ClientsEvent.OWNER_DIED)
        rec = self._record(ref)
        if isinstance(rec, FutureRec):
            target = FUTURE.fire(rec.state, FutureEvent.OWNER_DIED, self.seen).target
            self._cache_event(rec, CacheEvent.OWNER_DIED)
            self.futures[ref] = replace(rec, state=target, holders=frozenset())
        else:
            state = CHANNEL.fire(rec.state, ChannelEvent.OWNER_DIED, self.seen)
            self.channels[ref] = replace(rec, state=state.target, holders=frozenset())

    # -------------------------------------------------------- invariants

    def check(self) -> None:
        """Raise ModelError if the state breaks one of the model's rules."""
        for ref, rec in self.channels.items():
            cap, n = rec.capacity, len(rec.items)
            expected = {
                ChannelState.EMPTY: n == 0,
                ChannelState.PARTIAL: n > 0 and (cap is None or n < cap),
                ChannelState.FULL: cap is not None and n == max(cap, 1),
                ChannelState.CLOSED: n > 0,
                ChannelState.DRAINED: n == 0,
                ChannelState.LOST: True,
            }[rec.state]
            if not expected:
                raise ModelError(f"channel {ref}: {n} items in state {rec.state}")
        for ref, frec in self.futures.items():
            if (frec.state is FutureState.SET) != (frec.stored is not None) and (
                frec.state is not FutureState.LOST
            ):
                raise ModelError(f"future {ref}: stored value and state disagree")
            if frec.cached and not isinstance(frec.stored, Returned):
                raise ModelError(f"future {ref}: cached without a value")
        for ref in [*self.futures, *self.channels]:
            any_rec = self._record(ref)
            if (any_rec.clients is ClientsState.HELD) != bool(
                self.holders_of(ref)
            ) and (any_rec.clients is not ClientsState.ABSENT):
                raise ModelError(f"{ref}: client set {any_rec.clients} inconsistent")
        if any(p >= self.next_pid or p <= MASTER for p in self.procs):
            raise ModelError("a pid outside 2..next_pid-1")


class _Refusal(Exception):
    """Internal: a table refused an operation with an error outcome."""

    def __init__(self, outcome: Raised) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def _ghost_ref(job: Job) -> str:
    """The channel a ghost job acts on (ghosts are only channel requests)."""
    assert isinstance(job.fn, TakeFrom | PutInto)
    return job.fn.ref


def _job_ref(job: Job) -> str | None:
    """The reference a running job holds as an argument, if any.

    A ghost holds nothing (its worker is gone), and a call run by the master
    itself copies nothing.
    """
    if job.ghost or job.on == MASTER or not isinstance(job.fn, TakeFrom | PutInto):
        return None
    return job.fn.ref


def _remote(pid: int) -> int | None:
    return None if pid == MASTER else pid


def _raised_in(outcome: Outcome, on: int) -> Outcome:
    """What a function running on ``on`` that got ``outcome`` hands back.

    Any exception, a RemoteException from further away included, is wrapped
    in a RemoteException naming ``on`` (behaviour
    remote_exception.nested-rewrapped).
    """
    if isinstance(outcome, Returned):
        return outcome
    return Raised("RemoteException", on, outcome.error)


def _wrap(failure: Raised, owner: int, by: int) -> Raised:
    """``failure`` raised on ``owner`` by an operation ``by`` made there.

    Seen by the owner itself it is raw; by anyone else it arrives wrapped in
    a RemoteException naming the owner.
    """
    if owner == by:
        return failure
    return Raised("RemoteException", owner, failure.error)


def _map_outcome(
    op: PMap, usable: list[int], *, local: bool, dying: frozenset[int] = frozenset()
) -> Expect:
    """Every answer pmap may give when elements run on ``usable``.

    ``local``: there are no workers, the caller runs the map itself.
    ``dying``: those of ``usable`` killed and not yet noticed; an element
    sent to one fails with ProcessExitedException, unless a retry runs it
    on a survivor, or it finished there first (so ``MapMyId`` may name it).
    A failed element becomes ``on_error``'s value if there is a handler,
    else pmap raises that element's error (any failed element's): wrapped
    in a RemoteException from a worker, unwrapped after retries.
    """
    fn = op.fn
    survivors = [p for p in usable if p not in dying]
    may_die = bool(dying) and not (op.retries and survivors)
    choices: list[frozenset[Value]] = []
    failures: list[Expect] = []
    must_fail = False
    for x in op.items:
        fails = isinstance(fn, FailOn) and x == fn.bad
        ok: set[Value] = set()
        if isinstance(fn, MapMyId):
            ok |= set(usable)
        elif isinstance(fn, Plus):
            ok.add(x + fn.k)
        elif not fails:
            ok.add(x)
        if fails:
            ok.clear()
            # Retries unwrap the RemoteException, as Julia's wrap_retry does.
            failures.append(
                Raised("ValueError")
                if local or op.retries
                else RaisedBy("RemoteException", frozenset(usable), "ValueError")
            )
        if may_die:
            failures.append(RaisedBy("ProcessExitedException", dying))
            if op.retries:
                failures.append(Raised("NoActiveWorkerError"))
        if op.on_error is not None and (fails or may_die):
            ok.add(op.on_error.value)
        must_fail = must_fail or not ok
        choices.append(frozenset(ok))
    if op.on_error is not None:
        failures = []  # the handler answers for every failed element
    options: list[Expect] = []
    if not must_fail:
        if all(len(c) == 1 for c in choices):
            options.append(Returned(tuple(next(iter(c)) for c in choices)))
        else:
            options.append(Elementwise(tuple(choices)))
    return any_of([*options, *failures])


class Handshake:
    """One connection's handshake, followed event by event.

    The model's processes go through the CONNECTION table when they join
    and leave; this tracker lets a test or a trace checker follow any one
    connection (worker to worker links included) with the same table.
    ``feed`` raises TransitionError for an event the handshake forbids.
    """

    def __init__(self, seen: set[Key] | None = None) -> None:
        self.state = LinkState.STUB
        self.seen = seen

    def feed(self, event: LinkEvent) -> str | None:
        """Apply ``event``; returns the error it reports, if any."""
        transition = CONNECTION.fire(self.state, event, self.seen)
        self.state = transition.target
        return transition.raises
