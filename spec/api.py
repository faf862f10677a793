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
* ``NoSuchProcessError``: the master was asked about a pid it never had.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

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


class NoSuchProcessError(DistributedError, LookupError):
    """The master was asked about ``pid``, which it never had."""

    def __init__(self, pid: int):
        super().__init__(f"no process with id {pid} exists")
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.pid,))


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


class Removal(Protocol):
    """What ``rmprocs`` returns: a handle on the removal, done or under way."""

    @property
    def done(self) -> bool: ...

    async def wait(self) -> None:
        """Wait until every pid of the removal has terminated."""
        ...


class Faults(Protocol):
    """Fault injection a backend offers to scenarios that declare the need."""

    async def kill(self, pid: int) -> None:
        """Stop worker ``pid`` abruptly, as ``kill -9`` would."""
        ...


class DistributedAPI(Protocol):
    """The process-group and remote-call surface of a backend.

    Calls that may touch another process are ``async``; the pure queries of
    the local process table are plain functions.  Every backend module or
    object offered to the conformance suite satisfies this Protocol.
    """

    #: Fault injection (scenarios needing ``faults.kill`` use it).
    faults: Faults
    #: The logger name on which the backend reports what it cannot raise.
    log_name: str

    def myid(self) -> int: ...

    def nprocs(self) -> int: ...

    def nworkers(self) -> int: ...

    def procs(self, pid: int | None = None) -> list[int]: ...

    def workers(self) -> list[int]: ...

    async def addprocs(self, n: int, **params: Any) -> list[int]: ...

    async def rmprocs(self, *pids: int, waitfor: float = ...) -> Removal: ...

    async def remotecall(
        self, f: Callable[..., Any], pid: int, /, *args: Any, **kwargs: Any
    ) -> RemoteRef: ...

    async def remotecall_fetch(
        self, f: Callable[..., Any], pid: int, /, *args: Any, **kwargs: Any
    ) -> Any: ...

    async def remotecall_wait(
        self, f: Callable[..., Any], pid: int, /, *args: Any, **kwargs: Any
    ) -> RemoteRef: ...

    async def remote_do(
        self, f: Callable[..., Any], pid: int, /, *args: Any, **kwargs: Any
    ) -> None: ...

    async def fetch(self, ref: Any) -> Any: ...

    async def wait(self, ref: Any) -> Any: ...

    async def isready(self, ref: Any) -> bool: ...

    async def put(self, ref: Any, value: Any) -> Any: ...

    def Future(self, pid: int | None = None) -> RemoteRef: ...

    def remoteref_id(self, ref: RemoteRef) -> RRID: ...

    def cluster_cookie(self, cookie: str | None = None) -> str: ...


#: The shape of a conformance scenario: it receives the API and returns
#: nothing, raising ``AssertionError`` (or anything else) on a violation.
Scenario = Callable[[DistributedAPI], Awaitable[None]]
