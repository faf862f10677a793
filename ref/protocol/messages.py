"""The typed messages processes exchange, mirroring Julia's ``messages.jl``.

Every message travels with a header of two reference ids: ``response`` names
the remote value that the receiver should fill (a Future's storage), and
``notify`` names the caller's temporary slot that a reply should go to.  The
RRID ``(0, 0)`` means "none".  The header is framed separately from the body,
so that when a body cannot be decoded the receiver can still tell the sender
which call failed (see ``framing``).

Message classes are plain frozen dataclasses; dispatch is on the type, never
on a string.  Their fields are encoded by the codec (cloudpickle), so a
function or argument is any picklable object.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

from spec.api import RRID

NULL_RRID = RRID(0, 0)


@dataclass(frozen=True, slots=True)
class Header:
    """Which remote values a message concerns, by RRID (``NULL_RRID``: none)."""

    response: RRID = NULL_RRID
    notify: RRID = NULL_RRID


@dataclass(frozen=True, slots=True)
class CallMsg:
    """Run ``f(*args, **kwargs)``.

    With ``mode="call"`` the result is stored under the header's ``response``
    RRID on the receiver (a Future); with ``mode="call_fetch"`` it is sent
    back in a ``ResultMsg`` to the header's ``notify`` RRID.
    """

    f: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    mode: Literal["call", "call_fetch"] = "call"


@dataclass(frozen=True, slots=True)
class CallWaitMsg:
    """Like ``CallMsg("call")``, then reply ``ResultMsg("ok")`` once done."""

    f: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RemoteDoMsg:
    """Run ``f(*args, **kwargs)`` and discard the result; no reply."""

    f: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResultMsg:
    """The value (or ``RemoteException``) for the header's ``response`` RRID."""

    value: Any


@dataclass(frozen=True, slots=True)
class JoinPGRPMsg:
    """From the master to a new worker: your pid and the peers you may reach.

    ``peers`` lists ``(pid, host, port)`` of the workers with lower pids;
    with ``lazy`` the worker connects to them only when first needed.
    """

    self_pid: int
    peers: tuple[tuple[int, str, int], ...]
    topology: str = "all_to_all"
    lazy: bool = True
    worker_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class JoinCompleteMsg:
    """A worker's answer to ``JoinPGRPMsg``: it is ready, and who it is."""

    cpu_threads: int
    ospid: int


@dataclass(frozen=True, slots=True)
class IdentifySocketMsg:
    """First message on a worker-to-worker link: the initiator's pid."""

    from_pid: int


@dataclass(frozen=True, slots=True)
class IdentifySocketAckMsg:
    """The acceptor's answer to ``IdentifySocketMsg``."""


@dataclass(frozen=True, slots=True)
class ExitMsg:
    """Ask the receiver to exit cleanly (``rmprocs``)."""


@dataclass(frozen=True, slots=True)
class SetPeersMsg:
    """From the master after ``addprocs``: the full list of live workers.

    The receiver creates stubs for pids it has not heard of, so that every
    worker's ``procs()`` agrees with the master's.  ``local`` lists the
    workers started on the master's host, for ``procs(pid)``.
    """

    peers: tuple[tuple[int, str, int], ...]
    local: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DeregisterMsg:
    """From the master: ``pid`` has left the cluster."""

    pid: int


@dataclass(frozen=True, slots=True)
class ClientsMsg:
    """Batched reference-count notices for the receiver, the owner.

    Each change is ``(added, rrid, pid)``: pid now holds (``added``) or no
    longer holds a reference to the owner's value ``rrid``.  Changes are
    applied in order, so an add queued before a del is never lost.
    """

    changes: tuple[tuple[bool, RRID, int], ...] = ()


Message = (
    CallMsg
    | CallWaitMsg
    | RemoteDoMsg
    | ResultMsg
    | JoinPGRPMsg
    | JoinCompleteMsg
    | IdentifySocketMsg
    | IdentifySocketAckMsg
    | ExitMsg
    | SetPeersMsg
    | DeregisterMsg
    | ClientsMsg
)

MESSAGE_TYPES: tuple[type[Message], ...] = (
    CallMsg,
    CallWaitMsg,
    RemoteDoMsg,
    ResultMsg,
    JoinPGRPMsg,
    JoinCompleteMsg,
    IdentifySocketMsg,
    IdentifySocketAckMsg,
    ExitMsg,
    SetPeersMsg,
    DeregisterMsg,
    ClientsMsg,
)


def _pickle_fields_quickly(cls: type) -> None:
    """Give ``cls`` a state getter and setter that skip ``dataclasses.fields``.

    A frozen dataclass with slots pickles its state as the list of its field
    values; the methods ``dataclass`` writes for that look the fields up on
    every call, a noticeable share of encoding a small message.  These
    produce and accept the very same list (the pickled bytes do not change),
    reading the fields with one ``attrgetter`` and writing them through
    their slots (which is what ``object.__setattr__`` ends up doing on a
    frozen dataclass), all looked up once.
    """
    names = tuple(field.name for field in fields(cls))
    setters = tuple(vars(cls)[name].__set__ for name in names)
    getstate: Callable[[object], list[object]]
    if len(names) > 1:
        get_all = operator.attrgetter(*names)

        def getstate(self: object) -> list[object]:
            return list(get_all(self))

    elif names:
        get_one = operator.attrgetter(names[0])

        def getstate(self: object) -> list[object]:
            return [get_one(self)]

    else:

        def getstate(self: object) -> list[object]:
            return []

    def setstate(self: object, state: list[object]) -> None:
        for setter, value in zip(setters, state):  # noqa: B905  # as dataclasses does
            setter(self, value)

    setattr(cls, "__getstate__", getstate)  # noqa: B010  # a method on the class
    setattr(cls, "__setstate__", setstate)  # noqa: B010


for _message_type in MESSAGE_TYPES:
    _pickle_fields_quickly(_message_type)
