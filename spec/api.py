"""The public surface every distref backend offers, as typed Protocols.

This module is the contract between the conformance suite and the
implementations it checks.  Scenarios are written against these types only;
``ref`` (the reference runtime), ``sim`` (the simulator) and any third-party
backend implement them.

The exception types live here rather than in a backend because they are part
of the observable behaviour: a scenario checks ``isinstance(e,
RemoteException)`` and must mean the same class whatever backend raised it.
Their meanings mirror Julia's ``Distributed`` (see docs/julia-mapping.md):

* ``RemoteException``: the called function raised on another process; it
  carries that process's pid, the original exception and its traceback text.
* ``ProcessExitedException``: the process a call needed has exited or was
  removed; raised directly, never wrapped.
* ``LaunchError``: a worker could not be started or did not join in time.
* ``RmprocsTimeoutError``: ``rmprocs`` waited ``waitfor`` seconds and some
  workers had still not terminated.
* ``NoSuchProcessError``: the master was asked about a pid it never had
  (a ``KeyError``, as Julia's lookup of an unknown pid).
* ``TopologyError``: an operation conflicts with the cluster's topology.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from typing import (
    TYPE_CHECKING,
    Any,
    NamedTuple,
    Protocol,
    TypeVar,
    runtime_checkable,
)

if TYPE_CHECKING:
    import trio

T = TypeVar("T")

#: Every implementation's version line in the handshake is this long.
VERSION_LENGTH = 16
#: The cluster cookie is exactly this many bytes on the wire.
COOKIE_LENGTH = 16


class RRID(NamedTuple):
    """The identity of a remote reference: who created it and its serial.

    ``whence`` is the pid of the process that created the reference and
    ``id`` a per-process counter starting at 1.  Two references are the same
    reference exactly when their RRIDs are equal.
    """

    whence: int
    id: int


class HeldConnection(NamedTuple):
    """One connection a process holds open, as ``Probes.connections`` sees it.

    ``peer`` is the pid of the cluster process holding the other end (None
    when no process of the cluster does: a raw probe stream to an outsider,
    or a connection whose other end was already closed); ``dialled`` is
    True when the process asked about opened the connection, False when it
    accepted it.  ``ident`` names the connection itself, the same from
    both ends and for as long as it stays open, so that a connection
    reused can be told from one closed and opened again.
    """

    peer: int | None
    dialled: bool
    ident: str


class DistributedError(Exception):
    """Base class of every error distref raises on purpose."""


class RemoteException(DistributedError):
    """A function called on process ``pid`` raised ``exception`` there.

    ``exception`` is the original exception object when it could be carried
    back (else a ``RuntimeError`` that describes it), and ``remote_traceback``
    is the formatted traceback from the process where it was raised.  The
    original is also the ``__cause__``, so a printed traceback shows both.
    """

    def __init__(self, pid: int, exception: BaseException, remote_traceback: str = ""):
        super().__init__(pid, exception, remote_traceback)
        self.pid = pid
        self.exception = exception
        self.remote_traceback = remote_traceback
        self.__cause__ = exception

    def __str__(self) -> str:
        head = (
            f"On worker {self.pid}:\n{type(self.exception).__name__}: {self.exception}"
        )
        if self.remote_traceback:
            return f"{head}\n{self.remote_traceback.rstrip()}"
        return head

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.pid, self.exception, self.remote_traceback))


class ProcessExitedException(DistributedError):
    """The process ``worker_id`` has exited, or was removed, so a call failed.

    Pending calls to a process that dies fail with this exception, raised
    directly (not wrapped in ``RemoteException``), and every later call that
    targets the pid fails with it at once.  ``worker_id`` is -1 when unknown.
    """

    def __init__(self, worker_id: int = -1):
        super().__init__(worker_id)
        self.worker_id = worker_id

    def __str__(self) -> str:
        return (
            f"process {self.worker_id} has exited or was removed; "
            "start a new worker with addprocs() to continue"
        )


class LaunchError(DistributedError):
    """A worker could not be launched, or did not join within the timeout."""


class LaunchErrorGroup(ExceptionGroup[LaunchError], LaunchError):
    """``addprocs`` could not start some workers: one ``LaunchError`` each.

    Raised once every other worker of the call has joined (those stay in the
    cluster).  It is an ``ExceptionGroup``, so ``except* LaunchError``
    picks the failures apart, and also a ``LaunchError``, so ``except
    LaunchError`` catches the whole call's failure.
    """

    def derive(self, excs: Sequence[LaunchError]) -> LaunchErrorGroup:  # type: ignore[override]  # narrower element type on purpose
        return LaunchErrorGroup(self.message, excs)


class RmprocsTimeoutError(DistributedError):
    """``rmprocs`` gave up waiting: ``pids`` had not terminated in time."""

    def __init__(self, pids: list[int], waitfor: float):
        super().__init__(
            f"rmprocs: pids {pids} not terminated after {waitfor:g} seconds; "
            "they may still be finishing a call"
        )
        self.pids = pids
        self.waitfor = waitfor

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.pids, self.waitfor))


class NoSuchProcessError(DistributedError, KeyError):
    """The master was asked about ``pid``, which it never had.

    Also raised by ``interrupt`` for a pid that is not a current worker,
    with a ``message`` saying so.  ``known`` lists the pids the asker did
    have, when it said, so that the message points at the right one.  It is
    a ``KeyError`` because Julia raises one there (a lookup in its
    pid-to-worker table); unlike a plain ``KeyError`` its text is the
    message itself, not the message's repr.
    """

    def __init__(
        self, pid: int, message: str | None = None, known: Sequence[int] | None = None
    ):
        hint = "" if known is None else f"; the processes are {sorted(known)}"
        super().__init__(
            message or f"no process with id {pid} exists{hint} (see procs())"
        )
        self.pid = pid
        self.known = None if known is None else tuple(sorted(known))

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.pid, str(self), self.known))


class FutureAlreadySetError(DistributedError):
    """``put`` on a Future that already holds a value: Futures are write-once."""


class InvalidStateError(DistributedError):
    """An operation on a channel in a state that forbids it (e.g. closed)."""

    def __init__(self, message: str, state: str = "closed"):
        super().__init__(message)
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.state))


class ReferenceNotFoundError(DistributedError, LookupError):
    """No local instance of a remote reference exists on this process."""


class NotMasterError(DistributedError):
    """An operation only process 1 may perform was attempted elsewhere."""


class NoActiveWorkerError(DistributedError):
    """``take`` on a worker pool that has no live member left.

    Only the default worker pool falls back to process 1 when it is empty;
    every other pool raises this instead of waiting for a member that can
    never come back.
    """


class TopologyError(DistributedError, RuntimeError):
    """An operation conflicts with how the cluster's processes are connected.

    Raised when ``addprocs`` asks for a topology other than the one the
    existing workers have, and on a worker that sends to another worker the
    topology does not connect it to (``master_worker``, or ``custom`` without
    that peer among its ``connect_idents``).  Contrast ``ValueError``, raised
    for a topology name that does not exist or a conflicting ``lazy`` flag.
    """


@runtime_checkable
class RemoteRef(Protocol):
    """What ``Future`` and ``RemoteChannel`` share: an owner and an identity."""

    @property
    def where(self) -> int:
        """The pid of the process that stores the value."""
        ...

    @property
    def rrid(self) -> RRID:
        """This reference's identity."""
        ...


@runtime_checkable
class ChannelRef(RemoteRef, Protocol):
    """A ``RemoteChannel``: a remote reference that can also be iterated.

    ``async for item in rc`` takes one value at a time, on the owner, and
    ends without error once the channel is closed and empty.
    """

    def __aiter__(self) -> AsyncIterator[Any]: ...


class LocalChannel(Protocol):
    """A process-local channel (Julia's ``Channel``): a FIFO of values.

    It is operated on with the API's ``put``, ``take``, ``fetch``, ``wait``,
    ``isready``, ``isempty``, ``isopen`` and ``close``; ``len`` is the number
    of values buffered now, and ``async for`` takes until closed and empty.
    ``capacity`` is 0 (unbuffered), a positive int, or ``math.inf``.
    """

    @property
    def capacity(self) -> float: ...

    def __len__(self) -> int: ...

    def __aiter__(self) -> AsyncIterator[Any]: ...


class Removal(Protocol):
    """What ``rmprocs`` returns: a handle on the removal, done or under way."""

    @property
    def done(self) -> bool: ...

    async def wait(self) -> None:
        """Wait until every pid of the removal has terminated."""
        ...


class WorkerConfigAPI(Protocol):
    """What a cluster manager tells the master about one started worker.

    Julia's ``WorkerConfig``: every field defaults to None.  ``io`` is a
    ``trio.abc.ReceiveStream`` carrying the worker's output (the master
    reads its address line from there); otherwise ``host`` and ``port``
    say where it listens.  The backend's ``WorkerConfig`` class has every
    field listed in ``spec/behaviours.toml`` (``worker_config.*``).
    """

    io: Any
    host: str | None
    port: int | None
    count: int | str | None
    process: Any
    ospid: int | None
    userdata: Any


class ClusterManagerAPI(Protocol):
    """A cluster manager: starts workers for ``addprocs(manager, ...)``.

    ``launch`` appends one ``WorkerConfig`` per started worker to
    ``launched`` and calls ``notify()``; returning means no more will come.
    ``manage`` hears ``"register"``, ``"deregister"``, ``"interrupt"`` and
    ``"finalize"``.  Optional: ``kill(pid, config)``, ``connect(pid,
    config)`` and ``default_params()`` (extra keywords with defaults).
    """

    async def launch(
        self,
        params: Mapping[str, Any],
        launched: list[Any],
        notify: Callable[[], None],
    ) -> None: ...

    async def manage(self, pid: int, config: Any, op: str) -> None: ...


class Faults(Protocol):
    """Fault injection a backend offers to scenarios that declare the need."""

    async def kill(self, pid: int) -> None:
        """Stop worker ``pid`` abruptly, as ``kill -9`` would."""
        ...

    async def suspend(self, pid: int) -> None:
        """Stop worker ``pid`` where it stands, as SIGSTOP would
        (capability ``faults.suspend``): until ``resume(pid)`` it reads,
        runs and sends nothing, but keeps its connections."""
        ...

    async def resume(self, pid: int) -> None:
        """Let a suspended worker ``pid`` run again, as SIGCONT would; a
        worker that is running or has left is left alone."""
        ...


class RawListener(Protocol):
    """A listening address that hands the connections made to it over raw.

    What a process of the cluster sends there arrives as bytes, with no
    handshake or framing done on this side (see ``Probes.listen``).
    """

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``: what a ``WorkerConfig`` would name to reach it."""
        ...

    async def accept(self) -> trio.abc.HalfCloseableStream:
        """The next connection made to this address, as a raw byte stream."""
        ...


class RunningProgram(Protocol):
    """A worker program started by ``Probes.run_program``."""

    async def readline(self) -> str | None:
        """Its next line of output (stdout, then what it logs on stderr),
        or None once it has ended."""
        ...

    async def wait(self) -> int:
        """Wait until it has exited; its exit status."""
        ...

    def kill(self) -> None:
        """Stop it at once, as ``kill -9`` would, if it still runs."""
        ...


class ElasticManagerAPI(ClusterManagerAPI, Protocol):
    """A manager whose workers, started by any means, dial the master.

    ``start()`` listens and returns ``(host, port)``, the address a worker
    program of kind ``"elastic"`` is given as ``HOST:PORT``; ``active``
    maps the pid of each worker that joined and is still a member to its
    config; ``aclose()`` stops listening (joined workers stay).
    """

    active: Mapping[int, Any]

    async def start(self) -> tuple[str, int]: ...

    async def aclose(self) -> None: ...


class Probes(Protocol):
    """Raw byte streams into and out of a cluster, for wire-level scenarios.

    They go through the same transport the backend's processes use (real
    loopback TCP on ``ref``, simulated links on ``sim``), so a scenario can
    speak the handshake to a process, or listen for what a process sends,
    whatever the backend.  Master only; scenarios using them declare
    ``needs=("probes.raw_streams",)``.
    """

    async def open_stream(self, pid: int) -> trio.abc.HalfCloseableStream:
        """A new connection to the address worker ``pid`` listens on.

        Nothing is sent on it: the caller speaks first, if at all.
        """
        ...

    async def connect(self, host: str, port: int) -> trio.abc.HalfCloseableStream:
        """A new raw connection to ``host:port`` (an ElasticManager, say)."""
        ...

    def listen(self) -> AbstractAsyncContextManager[RawListener]:
        """Listen for connections from the cluster's processes for the block."""
        ...

    def run_program(
        self,
        kind: str,
        *args: str,
        stdin: str = "",
        environ: Mapping[str, str] | None = None,
    ) -> AbstractAsyncContextManager[RunningProgram]:
        """Start a worker program by other means than ``addprocs``.

        ``kind`` is ``"worker"`` (the program ``addprocs`` would start: it
        listens, prints its address line and waits for a master) or
        ``"elastic"`` (it dials the ``ElasticManager`` at its one argument,
        ``HOST:PORT``).  It reads the cookie from the first line of
        ``stdin`` and has ``environ`` added to its environment.  Leaving
        the block kills it if it still runs.  Scenarios using it declare
        ``needs=("probes.programs",)``.
        """
        ...

    async def sever(self, pid: int) -> None:
        """Break the master's link to worker ``pid`` without a word: to the
        worker, its connection to pid 1 is lost."""
        ...

    async def connections(self, pid: int) -> list[HeldConnection]:
        """The connections process ``pid`` holds open right now, on the
        cluster's transport: real sockets of the worker's OS process on
        ``ref``, the simulated network's table on ``sim`` (never the
        runtime's own bookkeeping).  Sorted by ``(peer, dialled, ident)``
        with None peers last.  Scenarios using it declare
        ``needs=("probes.connections",)``."""
        ...


class WorkerPoolAPI(Protocol):
    """A set of worker pids handed out one caller at a time.

    Every operation is ``async`` because a pool sent to another process is
    a proxy whose operations run on the process that created the pool.
    """

    async def take(self) -> int:
        """Remove and return a free live member, waiting while all are busy."""
        ...

    async def put(self, pid: int) -> None:
        """Return ``pid`` to the free members (ignored for a non-member)."""
        ...

    async def push(self, pid: int) -> None:
        """Add ``pid`` as a member, free."""
        ...

    async def wait(self) -> None:
        """Wait until a member is free, without taking it."""
        ...

    async def isready(self) -> bool:
        """Whether ``take`` would return at once."""
        ...

    async def length(self) -> int:
        """How many live members, busy and free."""
        ...

    async def workers(self) -> list[int]:
        """The live members, sorted (``[1]`` for an empty default pool)."""
        ...

    async def nworkers(self) -> int:
        """``len(await workers())``."""
        ...


class SyncBlockAPI(Protocol):
    """What ``async with sync() as block`` gives: Julia's ``@async`` inside."""

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` as a task the block waits for."""
        ...


class DistributedTaskAPI(Protocol):
    """The handle ``distributed_for`` returns when it has no reducer."""

    @property
    def done(self) -> bool: ...

    async def wait(self) -> None:
        """Wait for every chunk; raise an ExceptionGroup of their errors."""
        ...


class DistributedAPI(Protocol):
    """The process-group and remote-call surface of a backend.

    Calls that may touch another process are ``async``; the pure queries of
    the local process table are plain functions.  Every backend module or
    object offered to the conformance suite satisfies this Protocol.
    """

    #: Fault injection (scenarios needing ``faults.kill`` use it).
    faults: Faults
    #: Raw streams (scenarios needing ``probes.raw_streams`` use them).
    probes: Probes
    #: The logger name on which the backend reports what it cannot raise.
    log_name: str

    def myid(self) -> int: ...

    def nprocs(self) -> int: ...

    def nworkers(self) -> int: ...

    def procs(self, pid: int | None = None) -> list[int]: ...

    def workers(self) -> list[int]: ...

    async def addprocs(
        self, n: int | ClusterManagerAPI | Sequence[Any] | None = ..., **params: Any
    ) -> list[int]:
        """Add workers: ``n`` local ones (default: one per CPU thread), those
        a cluster manager launches, or, given machine specs, over SSH."""
        ...

    def WorkerConfig(self, **fields: Any) -> WorkerConfigAPI:
        """A new ``WorkerConfig`` with the given fields set, the rest None."""
        ...

    def LocalManager(
        self, np: int | None = None, restrict: bool = True
    ) -> ClusterManagerAPI:
        """The manager behind ``addprocs(n)``: ``np`` workers on this host."""
        ...

    def ElasticManager(
        self, addr: str = ..., port: int = ..., **options: Any
    ) -> ElasticManagerAPI:
        """A manager that workers started by any means dial (issue 6)."""
        ...

    def SSHManager(self, machines: Iterable[Any]) -> ClusterManagerAPI:
        """The manager behind ``addprocs(machines)``; spec errors raise here."""
        ...

    def default_addprocs_params(
        self, manager: ClusterManagerAPI | None = None
    ) -> dict[str, Any]:
        """The keywords ``addprocs(manager, ...)`` accepts, with defaults."""
        ...

    async def rmprocs(
        self, *pids: int | Iterable[int], waitfor: float = ...
    ) -> Removal:
        """Remove workers given one by one, as collections, or both."""
        ...

    async def remotecall(
        self,
        f: Callable[..., Any],
        pid: int | WorkerPoolAPI,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> RemoteRef: ...

    async def remotecall_fetch(
        self,
        f: Callable[..., Any],
        pid: int | WorkerPoolAPI,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> Any: ...

    async def remotecall_wait(
        self,
        f: Callable[..., Any],
        pid: int | WorkerPoolAPI,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> RemoteRef: ...

    async def remote_do(
        self,
        f: Callable[..., Any],
        pid: int | WorkerPoolAPI,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> None: ...

    async def fetch(self, ref: Any) -> Any: ...

    async def wait(self, ref: Any) -> Any: ...

    async def isready(self, ref: Any) -> bool: ...

    async def put(self, ref: Any, value: Any) -> Any: ...

    def Future(self, pid: int | None = None) -> RemoteRef: ...

    def RemoteChannel(
        self,
        factory_or_pid: Callable[[], Any] | int | None = None,
        /,
        pid: int | None = None,
    ) -> ChannelRef:
        """A channel stored on ``pid`` (default: the caller).

        ``RemoteChannel(p)`` is backed by ``Channel(1)``; ``RemoteChannel(f,
        p)`` by the channel ``f()`` returns, called on ``p`` no later than the
        first operation on the reference.  The constructor itself does not
        wait for ``p``.
        """
        ...

    def Channel(self, capacity: float = 1) -> LocalChannel: ...

    async def take(self, ref: Any) -> Any: ...

    async def close(self, ref: Any) -> None: ...

    async def isopen(self, ref: Any) -> bool: ...

    async def isempty(self, ref: Any) -> bool: ...

    async def getindex(self, ref: Any, key: Any) -> Any:
        """Julia's ``ref[key]``."""
        ...

    def remoteref_id(self, ref: RemoteRef) -> RRID: ...

    def channel_from_id(self, rrid: RRID) -> LocalChannel:
        """The channel stored here under ``rrid``; ReferenceNotFoundError
        on any process that does not store it."""
        ...

    def live_refs(self) -> Mapping[RRID, frozenset[int]]:
        """This process's stored values: RRID -> pids holding a reference."""
        ...

    async def timedwait(
        self, testcb: Callable[[], Any], secs: float, *, pollint: float = 0.1
    ) -> str:
        """Poll ``testcb`` (plain or async) until true: ``"ok"``; or
        ``"timed_out"`` after ``secs`` seconds."""
        ...

    def cluster_cookie(self, cookie: str | None = None) -> str: ...

    async def interrupt(self, *pids: int | Iterable[int]) -> None:
        """Interrupt the calls running on ``pids`` (default: every worker).

        Master only.  Each call running on a targeted worker fails with a
        ``RemoteException`` wrapping ``KeyboardInterrupt``; the worker keeps
        serving, and a worker running nothing is unaffected.  Returns once
        the interrupts are sent, not once they took effect.
        """
        ...

    def worker_id_from_socket(self, stream: object) -> int:
        """The pid of the process at the other end of ``stream``, else -1."""
        ...

    # ------------------------------------------------ pools (issue 5)

    def WorkerPool(self, pids: Iterable[int] = ...) -> WorkerPoolAPI: ...

    def CachingPool(self, pids: Iterable[int] = ...) -> WorkerPoolAPI: ...

    def default_worker_pool(self) -> WorkerPoolAPI: ...

    def set_default_worker_pool(self, pool: WorkerPoolAPI) -> None: ...

    async def push(self, pool: WorkerPoolAPI, pid: int) -> None: ...

    def remote(
        self, f: Callable[..., Any], pool: WorkerPoolAPI | None = None
    ) -> Callable[..., Awaitable[Any]]: ...

    def clear(self, pool: Any) -> Any:
        """Free a CachingPool's cached functions on its workers."""
        ...

    # ------------------------------------------------- pmap (issue 5)

    async def pmap(
        self,
        f: Callable[..., Any],
        *iterables: Iterable[Any],
        pool: WorkerPoolAPI | None = None,
        distributed: bool = True,
        batch_size: Any = 1,
        on_error: Callable[[Exception], Any] | None = None,
        retry_delays: Iterable[float] = (),
        retry_check: Callable[[Any, Exception], Any] | None = None,
        progress: Any = False,
    ) -> list[Any]: ...

    def ExponentialBackOff(
        self,
        n: int = 1,
        first_delay: float = 0.05,
        max_delay: float = 10.0,
        factor: float = 5.0,
        jitter: float = 0.1,
    ) -> Iterable[float]: ...

    # ------------------------------------------- constructs (issue 5)

    #: The ``spawnat`` target that means "the next worker in turn".
    ANY: Any

    async def spawnat(
        self, pid: Any, f: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> RemoteRef: ...

    async def fetch_any(
        self, f: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Any: ...

    async def fetchfrom(
        self, pid: int, f: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Any: ...

    async def everywhere(
        self,
        f: Callable[..., Any],
        /,
        *args: Any,
        procs: int | Iterable[int] | None = None,
        **kwargs: Any,
    ) -> Any: ...

    async def define_globals(
        self,
        values: Mapping[str, Any],
        procs: int | Iterable[int] | None = None,
        module: str = "__main__",
    ) -> None: ...

    async def clear_globals(
        self,
        names: str | Iterable[str],
        pids: int | Iterable[int] | None = None,
        module: str = "__main__",
    ) -> None: ...

    async def distributed_for(
        self,
        body: Callable[[Any], Any],
        iterable: Any,
        reducer: Callable[[Any, Any], Any] | None = None,
    ) -> Any: ...

    def splitrange(self, lo: int, hi: int, np: int) -> list[range]: ...

    def sync(self) -> AbstractAsyncContextManager[SyncBlockAPI]: ...

    def worker_timeout(self) -> float:
        """The worker timeout in force on the calling process, in seconds.

        Julia's internal ``worker_timeout()``: how long start-up waits (the
        address line, joining, peer connections) may take; on the master it
        comes from ``DISTREF_WORKER_TIMEOUT`` (default 60), and a worker
        uses the value its master gave it.
        """
        ...


#: The shape of a conformance scenario: it receives the API and returns
#: nothing, raising ``AssertionError`` (or anything else) on a violation.
Scenario = Callable[[DistributedAPI], Awaitable[None]]
