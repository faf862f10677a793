"""Unit tests of the executable model (``spec.model``) and its tables.

The model is checked by feeding its checker short directed programs: each
step says what a correct system answers, and the checker must accept it;
``refused`` steps give an answer a correct system must not give, and the
checker must refuse it.  Every program is also run by
``test_every_transition_is_exercised``, which proves that together they
fire every transition of every lifecycle table at least once.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import get_args

import pytest

from spec import diagrams
from spec import model as m
from spec.lifecycles import (
    ALL_TABLES,
    CHANNEL,
    WORKER,
    LinkEvent,
    ModelError,
    TransitionError,
    WorkerEvent,
    WorkerState,
    all_keys,
)
from spec.refinement import Checker, Refuted, dump_history, load_history

Seen = set[tuple[str, str, str]]

#: The operation classes the programs below invoked (for the coverage test).
INVOKED: set[type] = set()
PEE = "ProcessExitedException"
RE = "RemoteException"


class Run:
    """A model checker driven by a test: the answers a correct system gives."""

    def __init__(
        self,
        seen: Seen,
        workers: tuple[int, ...] = (2, 3),
        topology: m.Topology = "all_to_all",
    ) -> None:
        self.checker = Checker(m.Model.start(workers, seen=seen, topology=topology))
        self.seen = seen
        self.cid = 0

    def start(self, op: m.Op) -> int:
        INVOKED.add(type(op))
        self.cid += 1
        self.checker.invoke(self.cid, op)
        return self.cid

    def answer(self, cid: int, outcome: m.Outcome) -> None:
        self.checker.respond(cid, outcome)

    def ok(self, op: m.Op, value: m.Value = None) -> None:
        self.answer(self.start(op), m.Returned(value))

    def raises(
        self, op: m.Op, error: str, pid: int | None = None, inner: str | None = None
    ) -> None:
        self.answer(self.start(op), m.Raised(error, pid, inner))

    def refused(
        self, op: m.Op, outcome: m.Outcome, then: m.Outcome | None = None
    ) -> None:
        """``outcome`` is refused; the call then answers ``then`` (by default
        the one answer the model allows)."""
        cid = self.start(op)
        with pytest.raises(Refuted) as caught:
            self.answer(cid, outcome)
        if then is None:
            allowed = caught.value.allowed[0]
            assert isinstance(allowed, m.Returned | m.Raised)
            then = allowed
        self.answer(cid, then)

    def must(self) -> set[int]:
        return self.checker.must_resolve()


# ------------------------------------------------------------- programs


def process_group(seen: Seen) -> None:
    """Pids count up, are never reused; departed pids fail calls."""
    r = Run(seen)
    r.ok(m.Procs(), (1, 2, 3))
    r.ok(m.AddProcs(2), (4, 5))
    r.refused(m.AddProcs(1), m.Returned((4,)))  # pids are never reused
    r.ok(m.RmProcs((4, 1, 99)))  # 1 and unknown pids are skipped
    r.ok(m.Workers(), (2, 3, 5, 6))
    r.ok(m.Kill(5))
    r.raises(m.Kill(5), PEE, 5)
    r.raises(m.Kill(4), PEE, 4)
    r.ok(m.RmProcs((4, 5)))  # departed pids are ignored
    r.raises(m.RemoteCallFetch(4, m.MyId()), PEE, 4)
    r.raises(m.RemoteCallFetch(99, m.MyId()), "NoSuchProcessError", 99)
    r.ok(m.NProcs(), 4)
    r.ok(m.NWorkers(), 3)
    r.ok(m.RmProcs((2, 3, 6)))
    r.ok(m.Workers(), (1,))
    r.ok(m.NWorkers(), 1)
    r.raises(m.AddProcs(2, failed=1), "LaunchError")
    r.ok(m.Workers(), (8,))  # either 7 or 8 joined; the answer decides
    r.refused(m.Workers(), m.Returned((7,)))
    # A launch the manager never reported in time takes no pid.
    r2 = Run(seen)
    r2.raises(m.AddProcs(2, failed=1), "LaunchError")
    r2.ok(m.AddProcs(1), (5,))  # 4 joined; the failed one had no pid
    r2.refused(m.Workers(), m.Returned((2, 3, 5)), m.Returned((2, 3, 4, 5)))


def crashes_and_removals(seen: Seen) -> None:
    """A crashed worker may still be listed until the master notices."""
    r = Run(seen, (2, 3, 4, 5))
    r.ok(m.Crash(2))
    r.ok(m.Procs(), (1, 2, 3, 4, 5))  # not noticed yet
    r.ok(m.Procs(), (1, 3, 4, 5))  # noticed
    r.refused(m.Procs(), m.Returned((1, 2, 3, 4, 5)))  # never comes back
    r.ok(m.Crash(3))
    r.ok(m.Kill(3))  # killing a dying worker again: noticed on return
    r.ok(m.Crash(4))
    r.ok(m.RmProcs((4,), wait=False))  # being removed: not listed
    r.ok(m.Procs(), (1, 5))
    r.ok(m.RmProcs((5,), wait=False))
    r.ok(m.RmProcs((5,), wait=False))
    r.ok(m.Kill(5))
    r.ok(m.Disconnect(5))  # the removal completes
    r.ok(m.Disconnect(5))  # nothing left to break
    r2 = Run(seen, (2,))
    r2.ok(m.Disconnect(2))
    r2.raises(m.RemoteCallFetch(2, m.Const(1)), PEE, 2)


def remote_calls(seen: Seen) -> None:
    r = Run(seen)
    r.ok(m.RemoteCallFetch(2, m.MyId()), 2)
    r.ok(m.RemoteCallFetch(1, m.MyId()), 1)
    r.raises(m.RemoteCallFetch(3, m.Fail()), RE, 3, "ValueError")
    r.raises(m.RemoteCallFetch(1, m.Fail()), RE, 1, "ValueError")
    r.ok(m.RemoteCall(2, m.Const(7), "f"), ("future", 2))
    r.ok(m.Fetch("f"), 7)
    r.ok(m.RemoteCallWait(3, m.Const(8), "g"), ("future", 3))
    r.raises(m.RemoteCallWait(3, m.Fail(), "h"), RE, 3, "ValueError")
    r.raises(m.Wait("h"), RE, 3, "ValueError")
    r.raises(m.Fetch("h"), RE, 3, "ValueError")  # errors are never cached
    r.ok(m.RemoteDo(2, m.Const(1)))
    r.refused(m.RemoteCallFetch(2, m.MyId()), m.Returned(3))


def futures(seen: Seen) -> None:
    """Write-once, cached per holder, lost with the owner."""
    r = Run(seen)
    r.ok(m.NewFuture("a", 2), ("future", 2))
    r.ok(m.IsReady("a"), False)
    waiting = r.start(m.Fetch("a"))
    assert waiting not in r.must()  # blocks while unset
    r.ok(m.Put("a", 5), ("future", 2))
    assert waiting in r.must()
    r.answer(waiting, m.Returned(5))
    r.raises(m.Put("a", 6), "FutureAlreadySetError")  # refused by the cache
    r.ok(m.Wait("a"), ("future", 2))
    r.ok(m.IsReady("a"), True)
    # A Future set by its call, put by the master afterwards: refused there.
    r.ok(m.RemoteCallWait(3, m.Const(1), "b"), ("future", 3))
    r.raises(m.Put("b", 2), RE, 3, "FutureAlreadySetError")
    # Master-owned: the owner's own check.
    r.ok(m.RemoteCall(1, m.Sleep(), "c"), ("future", 1))
    r.ok(m.Put("c", 1), ("future", 1))
    # A put that beats the call: the call's result is dropped.
    r.ok(m.RemoteCall(2, m.Const(9), "d"), ("future", 2))
    r.ok(m.Put("d", 4), ("future", 2))
    r.ok(m.Fetch("d"), 4)
    r.refused(m.Fetch("d"), m.Returned(9))


def future_loss(seen: Seen) -> None:
    r = Run(seen)
    r.ok(m.RemoteCallWait(3, m.Const(1), "b"), ("future", 3))
    r.ok(m.NewFuture("u", 3), ("future", 3))
    r.ok(m.Kill(3))
    r.raises(m.Fetch("b"), PEE, 3)
    r.raises(m.IsReady("u"), PEE, 3)
    r.raises(m.Put("u", 1), PEE, 3)
    r.ok(m.NewFuture("late", 3), ("future", 3))  # a handle on a departed owner
    r.raises(m.Wait("late"), PEE, 3)
    r2 = Run(seen)
    r2.ok(m.RemoteCall(2, m.Const(4), "f"), ("future", 2))
    r2.ok(m.Fetch("f"), 4)
    r2.ok(m.Kill(2))
    r2.ok(m.Fetch("f"), 4)  # the cache survives its owner


def channels(seen: Seen) -> None:
    """A bounded FIFO; close wakes waiters; lost with the owner."""
    r = Run(seen)
    r.ok(m.NewChannel("c", 2, 2), ("channel", 2))
    r.ok(m.IsEmpty("c"), True)
    taker = r.start(m.Take("c"))
    fetcher = r.start(m.Fetch("c"))
    assert taker not in r.must() and fetcher not in r.must()
    r.ok(m.Put("c", 1), ("channel", 2))
    r.answer(fetcher, m.Returned(1))
    r.answer(taker, m.Returned(1))
    r.ok(m.Put("c", 2), ("channel", 2))
    r.ok(m.Put("c", 3), ("channel", 2))  # fills it
    putter = r.start(m.Put("c", 4))
    assert putter not in r.must()
    r.ok(m.Fetch("c"), 2)
    r.refused(m.Take("c"), m.Returned(3))  # FIFO
    r.answer(putter, m.Returned(("channel", 2)))
    r.ok(m.Take("c"), 3)
    r.ok(m.IsReady("c"), True)
    r.ok(m.Close("c"))
    r.ok(m.IsOpen("c"), False)
    r.raises(m.Put("c", 9), RE, 2, "InvalidStateError")
    r.ok(m.Fetch("c"), 4)
    r.ok(m.Close("c"))
    r.ok(m.Take("c"), 4)
    r.raises(m.Take("c"), RE, 2, "InvalidStateError")
    r.raises(m.Fetch("c"), RE, 2, "InvalidStateError")
    r.raises(m.Put("c", 9), RE, 2, "InvalidStateError")
    r.ok(m.Close("c"))
    r.ok(m.IsEmpty("c"), True)


def channel_edges(seen: Seen) -> None:
    r = Run(seen)
    r.ok(m.NewChannel("one", 1, 1), ("channel", 1))
    r.ok(m.Put("one", 1), ("channel", 1))  # fills capacity 1
    r.ok(m.Close("one"))  # closing a full channel
    r.ok(m.IsReady("one"), True)
    r.ok(m.Take("one"), 1)
    r.raises(m.Take("one"), "InvalidStateError")  # raw on its owner
    r.ok(m.NewChannel("two", 1, 2), ("channel", 1))
    r.ok(m.Put("two", 1), ("channel", 1))
    r.ok(m.Put("two", 2), ("channel", 1))
    r.ok(m.Take("two"), 1)  # full to partial
    r.ok(m.Put("two", 3), ("channel", 1))  # partial to full
    r.ok(m.NewChannel("inf", 1, None), ("channel", 1))
    r.ok(m.Put("inf", 1), ("channel", 1))
    r.ok(m.Put("inf", 2), ("channel", 1))  # partial stays partial
    r.ok(m.Fetch("inf"), 1)
    r.ok(m.IsOpen("inf"), True)
    r.ok(m.Close("inf"))
    r.ok(m.Take("inf"), 1)  # closed stays closed
    r.ok(m.NewChannel("full", 1, 1), ("channel", 1))
    r.ok(m.Put("full", 1), ("channel", 1))
    r.ok(m.IsReady("full"), True)
    r.ok(m.Take("full"), 1)  # full to empty (capacity 1)
    r.ok(m.NewChannel("more", 1, None), ("channel", 1))
    for v in (1, 2, 3):
        r.ok(m.Put("more", v), ("channel", 1))
    r.ok(m.Take("more"), 1)  # partial stays partial
    r.ok(m.NewChannel("p", 1, 2), ("channel", 1))
    r.ok(m.Put("p", 1), ("channel", 1))
    r.ok(m.Take("p"), 1)  # partial to empty
    r.ok(m.Close("p"))  # closing an empty channel
    waiting = r.start(m.Take("p"))
    r.answer(waiting, m.Raised("InvalidStateError"))


def channel_loss(seen: Seen) -> None:
    r = Run(seen)
    for name, values in (("e", ()), ("f", (1,)), ("c", (1, 2)), ("d", ())):
        r.ok(m.NewChannel(name, 3, 1 if name == "f" else 2), ("channel", 3))
        for v in values:
            r.ok(m.Put(name, v), ("channel", 3))
    r.ok(m.NewChannel("p", 3, 3), ("channel", 3))
    r.ok(m.Put("p", 1), ("channel", 3))
    r.ok(m.Close("c"))
    r.ok(m.Close("d"))
    r.ok(m.IsOpen("e"), True)  # the empty one is stored
    r.ok(m.NewChannel("never", 3, 1), ("channel", 3))
    waiter = r.start(m.RemoteCallFetch(2, m.TakeFrom("e")))
    r.ok(m.Kill(3))
    r.answer(waiter, m.Raised(RE, 2, PEE))
    for op in (m.Put("e", 1), m.Take("f"), m.Fetch("c"), m.Close("d"), m.IsEmpty("p")):
        r.raises(op, PEE, 3)


def nested_calls(seen: Seen) -> None:
    """Functions on workers acting on channels; ghosts of dead workers."""
    r = Run(seen, (2, 3, 4))
    r.ok(m.NewChannel("c", 1, None), ("channel", 1))
    r.ok(m.RemoteCallFetch(2, m.PutInto("c", 5)))
    r.ok(m.RemoteCallFetch(3, m.TakeFrom("c")), 5)
    r.ok(m.Close("c"))
    # The owner's error, re-wrapped by the function's process.
    r.raises(m.RemoteCallFetch(3, m.TakeFrom("c")), RE, 3, RE)
    r.ok(m.NewChannel("w", 2, 1), ("channel", 2))
    r.ok(m.RemoteCallFetch(2, m.PutInto("w", 1)))
    r.ok(m.Close("w"))
    r.raises(m.RemoteCallFetch(2, m.PutInto("w", 2)), RE, 2, "InvalidStateError")
    # A worker that dies while its take waits on the master's channel: the
    # take may still swallow an item, or not (a ghost).
    r.ok(m.NewChannel("g", 1, 2), ("channel", 1))
    ghost = r.start(m.RemoteCallFetch(4, m.TakeFrom("g")))
    r.ok(m.Kill(4))
    r.answer(ghost, m.Raised(PEE, 4))
    r.ok(m.Put("g", 1), ("channel", 1))
    r.ok(m.IsEmpty("g"), True)  # the ghost took it
    r2 = Run(seen, (2, 3))
    r2.ok(m.NewChannel("g", 1, 2), ("channel", 1))
    ghost = r2.start(m.RemoteCall(3, m.TakeFrom("g"), "f"))
    r2.answer(ghost, m.Returned(("future", 3)))
    r2.ok(m.Kill(3))
    r2.ok(m.Put("g", 1), ("channel", 1))
    r2.ok(m.Take("g"), 1)  # or the ghost never reached the owner


def pending_calls_resolve(seen: Seen) -> None:
    """Every call waiting on a worker that dies answers, exactly once."""
    r = Run(seen)
    sleeping = r.start(m.RemoteCallFetch(2, m.Sleep()))
    assert sleeping not in r.must()
    r.ok(m.Kill(2))
    assert sleeping in r.must()
    r.answer(sleeping, m.Raised(PEE, 2))
    with pytest.raises(ModelError):
        r.answer(sleeping, m.Raised(PEE, 2))  # only once
    r.ok(m.NewChannel("c", 3, 1), ("channel", 3))
    stuck = r.start(m.Take("c"))
    with pytest.raises(Refuted):
        r.checker.check_quiet(set())  # nothing pending: fine
        r.ok(m.RmProcs((3,)))
        r.checker.check_quiet({stuck})  # had to answer
    r.answer(stuck, m.Raised(PEE, 3))
    r.checker.check_quiet(set())


def client_sets(seen: Seen) -> None:
    """The owner's client set follows who holds unfetched references."""
    r = Run(seen, (2, 3, 4, 5))
    r.ok(m.NewFuture("f", 2), ("future", 2))
    r.ok(m.Clients("f"), None)  # nothing stored before first use
    r.ok(m.Forward("f", 3))  # counted apart until first use
    r.ok(m.Drop("f", 3))
    r.ok(m.Forward("f", 4))
    r.ok(m.IsReady("f"), False)
    r.ok(m.Clients("f"), (1, 4))
    r.ok(m.Forward("f", 3))
    r.ok(m.Forward("f", 3))  # already a holder
    r.ok(m.Clients("f"), (1, 3, 4))
    r.ok(m.Put("f", 1), ("future", 2))  # the putter leaves the set
    r.ok(m.Clients("f"), (3, 4))
    r.ok(m.Forward("f", 5))  # a fetched Future travels with its value
    r.ok(m.Forward("f", 3))  # 3's unfetched copy adopts it and lets go
    r.ok(m.Clients("f"), (4,))
    r.ok(m.Drop("f", 3))  # 3 held the value, not a reference: no change
    r.ok(m.Kill(4))  # the last holder dies: freed
    r.ok(m.Clients("f"), None)
    r.ok(m.NewChannel("c", 1, 1), ("channel", 1))
    r.ok(m.IsReady("c"), False)
    r.ok(m.Forward("c", 3))
    waiting = r.start(m.RemoteCallFetch(5, m.TakeFrom("c")))
    r.ok(m.Clients("c"), (1, 3, 5))  # a running call holds its argument
    r.ok(m.Kill(5))  # a holder dies
    r.answer(waiting, m.Raised(PEE, 5))
    r.ok(m.Drop("c", 1))  # the master lets go of its handle
    r.ok(m.Clients("c"), (3,))
    r.ok(m.Kill(3))  # the last holder dies: freed
    r.ok(m.Clients("c"), None)
    r.ok(m.NewChannel("k", 1, 1), ("channel", 1))
    r.ok(m.IsReady("k"), False)
    r.ok(m.RemoteCallFetch(2, m.PutInto("k", 1)))
    r.ok(m.Clients("k"), (1,))  # the call is over: 2 let go
    r.ok(m.RemoteCall(2, m.Const(1), "g"), ("future", 2))
    r.ok(m.Clients("g"), (1,))  # the call stores it on arrival
    r.ok(m.Fetch("g"), 1)
    r.ok(m.Clients("g"), None)
    r.ok(m.NewFuture("never", 2), ("future", 2))
    r.ok(m.NewChannel("d", 2, 1), ("channel", 2))
    r.ok(m.Put("d", 1), ("channel", 2))
    r.ok(m.Kill(2))  # g was freed already; "never" was never stored
    r.refused(m.Clients("k"), m.Returned((1, 2)))


def pools(seen: Seen) -> None:
    """FIFO free queue; members that left are dropped, never handed out."""
    r = Run(seen, (2, 3, 4))
    r.ok(m.NewPool("p", (2, 3)))
    r.ok(m.PoolTake("p"), 2)
    r.ok(m.PoolIsReady("p"), True)
    r.ok(m.PoolTake("p"), 3)
    r.ok(m.PoolIsReady("p"), False)
    waiting = r.start(m.PoolTake("p"))
    assert waiting not in r.must()
    r.ok(m.PoolPut("p", 3))
    r.answer(waiting, m.Returned(3))
    r.ok(m.PoolPut("p", 4))  # not a member: ignored
    r.ok(m.PoolPush("p", 3))  # busy member queued again
    r.ok(m.PoolPush("p", 3))  # already queued
    r.ok(m.PoolPut("p", 3))  # already free
    r.ok(m.PoolPut("p", 2))
    r.ok(m.PoolWorkers("p"), (2, 3))
    r.ok(m.Kill(3))  # free member leaves
    r.ok(m.PoolLength("p"), 1)  # dropped when consulted
    r.ok(m.PoolPush("p", 3))  # pushing a dropped pid back
    r.ok(m.PoolPut("p", 3))
    r.ok(m.PoolTake("p"), 2)  # 3 is dropped on the way, never handed out
    r.ok(m.RmProcs((2,)))  # a busy member leaves
    r.raises(m.PoolTake("p"), "NoActiveWorkerError")
    r.ok(m.PoolPut("p", 2))  # dropped: ignored
    r.ok(m.PoolCall("default", m.MyId()), 4)
    r.ok(m.RmProcs((4,)))
    r.ok(m.PoolCall("default", m.MyId()), 1)  # empty default pool: the master
    r.ok(m.PoolWorkers("default"), (1,))


def pool_calls_and_pmap(seen: Seen) -> None:
    r = Run(seen, (2, 3))
    r.ok(m.NewPool("p", (2, 3)))
    r.ok(m.PoolCall("p", m.Const(5)), 5)  # on 2, which goes to the back
    r.raises(m.PoolCall("p", m.Fail()), RE, 3, "ValueError")
    r.ok(m.PMap(m.Plus(1), (1, 2, 3), "p"), (2, 3, 4))
    r.ok(m.PMap(m.MapMyId(), (1, 2, 3), "p"), (3, 2, 3))
    r.refused(m.PMap(m.MapMyId(), (1,), "p"), m.Returned((4,)), m.Returned((2,)))
    r.raises(m.PMap(m.FailOn(2), (1, 2), None), RE, 3, "ValueError")
    r.ok(m.PMap(m.MapMyId(), (1, 2), None), (2, 2))
    stuck = r.start(m.PoolCall("p", m.Sleep()))
    r.ok(m.PoolIsReady("p"), True)
    r.ok(m.Kill(2))  # the worker of the pool call dies, or the other one
    r.answer(stuck, m.Raised(PEE, 2))
    r.ok(m.PoolWorkers("p"), (3,))
    r.ok(m.RmProcs((3,)))
    r.ok(m.PMap(m.MapMyId(), (1,), "p"), (1,))  # no live member: local
    r.raises(m.PMap(m.FailOn(1), (1,), None), "ValueError")


def unbuffered_channels(seen: Seen) -> None:
    """Capacity 0: a put returns only once a take has its item."""
    r = Run(seen)
    r.ok(m.NewChannel("z", 2, 0), ("channel", 2))
    put = r.start(m.Put("z", 7))
    assert put not in r.must()  # no taker: the put may wait for ever
    r.ok(m.IsReady("z"), True)  # its item is there (distref, like Julia 1.x)
    r.ok(m.Fetch("z"), 7)
    with pytest.raises(Refuted):
        r.answer(put, m.Returned(("channel", 2)))  # nobody took it yet
    r.ok(m.Take("z"), 7)
    assert put in r.must()
    r.answer(put, m.Returned(("channel", 2)))
    # A worker putting into the master's unbuffered channel.
    r.ok(m.NewChannel("y", 1, 0), ("channel", 1))
    call = r.start(m.RemoteCallFetch(3, m.PutInto("y", 1)))
    r.ok(m.IsReady("y"), True)
    assert call not in r.must()
    r.ok(m.RemoteCallFetch(2, m.TakeFrom("y")), 1)
    r.answer(call, m.Returned(None))
    # Closing wakes the waiting put, which raises; the item stays.
    waiting = r.start(m.Put("z", 8))
    r.ok(m.IsReady("z"), True)
    r.ok(m.Close("z"))
    r.answer(waiting, m.Raised(RE, 2, "InvalidStateError"))
    r.ok(m.Take("z"), 8)
    r.raises(m.Take("z"), RE, 2, "InvalidStateError")
    # The owner dies under a waiting put.
    r.ok(m.NewChannel("x", 2, 0), ("channel", 2))
    stuck = r.start(m.Put("x", 1))
    r.ok(m.IsEmpty("x"), False)
    r.ok(m.Kill(2))
    r.answer(stuck, m.Raised(PEE, 2))


def unbuffered_putter_on_a_dying_worker(seen: Seen) -> None:
    """A parked worker put fails when the owner dies, or goes with its worker."""
    r = Run(seen, (2, 3, 4))
    r.ok(m.NewChannel("z", 2, 0), ("channel", 2))
    call = r.start(m.RemoteCallFetch(3, m.PutInto("z", 1)))
    r.ok(m.IsReady("z"), True)
    r.ok(m.Kill(2))
    r.answer(call, m.Raised(RE, 3, PEE))
    r.ok(m.NewChannel("y", 1, 0), ("channel", 1))
    lost = r.start(m.RemoteCallFetch(4, m.PutInto("y", 5)))
    r.ok(m.IsReady("y"), True)
    r.ok(m.Kill(4))
    r.answer(lost, m.Raised(PEE, 4))
    r.ok(m.Take("y"), 5)  # the item outlives its putter


def pool_remotecalls(seen: Seen) -> None:
    """remotecall(f, pool): the member comes back once the Future is done."""
    r = Run(seen)
    r.ok(m.NewPool("p", (2,)))
    r.ok(m.PoolRemoteCall("p", m.Const(4), "f"), ("future", 2))
    r.ok(m.Fetch("f"), 4)
    r.ok(m.PoolTake("p"), 2)  # given back (perhaps after a wait)
    r.ok(m.PoolPut("p", 2))
    r.ok(m.PoolRemoteCall("p", m.Sleep(), "g"), ("future", 2))
    r.ok(m.PoolIsReady("p"), False)  # never done: never given back
    r.refused(m.PoolIsReady("p"), m.Returned(True), m.Returned(False))
    r.ok(m.Put("g", 1), ("future", 2))  # done by a put: given back
    r.ok(m.PoolTake("p"), 2)
    r.ok(m.PoolPut("p", 2))
    r.ok(m.PoolRemoteCall("p", m.Sleep(), "s"), ("future", 2))
    r.ok(m.Kill(2))
    r.raises(m.Fetch("s"), PEE, 2)
    r.raises(m.PoolTake("p"), "NoActiveWorkerError")
    r.raises(m.PoolRemoteCall("p", m.MyId(), "h"), "NoActiveWorkerError")


def master_worker_topology(seen: Seen) -> None:
    """In master_worker, a worker needing another worker raises TopologyError."""
    r = Run(seen, (2, 3), topology="master_worker")
    r.ok(m.NewChannel("c", 2, 1), ("channel", 2))
    r.raises(m.RemoteCallFetch(3, m.PutInto("c", 1)), RE, 3, "TopologyError")
    r.ok(m.IsReady("c"), False)  # nothing arrived
    r.ok(m.RemoteCallFetch(2, m.PutInto("c", 1)))  # the owner itself: fine
    r.ok(m.NewChannel("d", 1, 1), ("channel", 1))
    r.ok(m.RemoteCallFetch(3, m.PutInto("d", 2)))  # the master: fine
    r.ok(m.Take("d"), 2)
    with pytest.raises(ModelError):
        m.Model.start((2,), topology="custom")  # type: ignore[arg-type]


def interrupts(seen: Seen) -> None:
    """A running call fails with RemoteException(KeyboardInterrupt)."""
    r = Run(seen, (2, 3))
    sleeping = r.start(m.RemoteCallFetch(2, m.Sleep()))
    r.ok(m.Interrupt((3,)))  # an idle worker: nothing happens
    assert sleeping not in r.must()
    r.ok(m.Interrupt((2,)))
    r.answer(sleeping, m.Raised(RE, 2, "KeyboardInterrupt"))
    r.ok(m.RemoteCallFetch(2, m.MyId()), 2)  # the worker keeps serving
    r.raises(m.Interrupt((9,)), "KeyError")
    r.raises(m.Interrupt((1,)), "KeyError")
    # Not reached yet: the call goes on and answers as usual.
    late = r.start(m.RemoteCallFetch(3, m.Const(1)))
    r.ok(m.Interrupt((3,)))
    r.answer(late, m.Returned(1))
    # An interrupted take may still have taken the item at the owner.
    r.ok(m.NewChannel("c", 1, 1), ("channel", 1))
    taking = r.start(m.RemoteCallFetch(2, m.TakeFrom("c")))
    r.ok(m.Interrupt((2,)))
    r.answer(taking, m.Raised(RE, 2, "KeyboardInterrupt"))
    r.ok(m.Put("c", 5), ("channel", 1))
    r.ok(m.IsReady("c"), False)  # the ghost took it
    # The signal may land after interrupt returned, on a call made since;
    # each signal lands once.
    r2 = Run(seen)
    r2.ok(m.Interrupt((3,)))
    r2.ok(m.Interrupt((3,)))
    for _ in range(2):
        after = r2.start(m.RemoteCallFetch(3, m.Sleep()))
        r2.answer(after, m.Raised(RE, 3, "KeyboardInterrupt"))
    again = r2.start(m.RemoteCallFetch(3, m.Sleep()))
    assert again not in r2.must()
    with pytest.raises(Refuted):
        r2.answer(again, m.Raised(RE, 3, "KeyboardInterrupt"))


def pmap_errors_and_retries(seen: Seen) -> None:
    """on_error replaces failed elements; retries survive a worker death."""
    r = Run(seen, (2, 3))
    on_error = m.Const(-1)
    r.ok(m.PMap(m.FailOn(2), (1, 2, 3), None, on_error=on_error), (1, -1, 3))
    r.ok(m.PMap(m.Plus(1), (1, 2), None, on_error=on_error), (2, 3))
    r.ok(m.Crash(3))  # killed; the master has not noticed yet
    r.ok(m.Procs(), (1, 2, 3))
    # Without retries an element on 3 may fail, or all may have run on 2.
    r.raises(m.PMap(m.Plus(1), (1, 2), None), PEE, 3)
    r.ok(m.PMap(m.Plus(1), (1, 2), None), (2, 3))
    r.ok(m.PMap(m.Plus(1), (1, 2), None, on_error=on_error), (-1, 3))
    # With retries the dead worker's elements run again on 2.
    r.ok(m.PMap(m.Plus(1), (1, 2), None, retries=1), (2, 3))
    r.refused(
        m.PMap(m.Plus(1), (1, 2), None, retries=1),
        m.Raised(PEE, 3),
        m.Returned((2, 3)),
    )
    r.ok(m.PMap(m.MapMyId(), (1, 2), None, retries=2), (3, 2))
    r.raises(m.PMap(m.FailOn(1), (1,), None, retries=1), "ValueError")  # unwrapped


def dead_worker_side_effects(seen: Seen) -> None:
    """A call pending on a worker that dies raises; its effect is open."""
    for effect in (True, False):
        r = Run(seen, (2, 3))
        r.ok(m.NewChannel("c", 1, None), ("channel", 1))
        call = r.start(m.RemoteCallFetch(2, m.PutInto("c", 9)))
        r.ok(m.Kill(2))
        r.answer(call, m.Raised(PEE, 2))
        if effect:
            r.ok(m.Take("c"), 9)  # it ran, or its request arrived later
        else:
            r.ok(m.IsReady("c"), False)  # it never ran
            r.ok(m.IsReady("c"), False)
    r = Run(seen, (2,))
    call = r.start(m.RemoteCallFetch(2, m.Const(1)))
    r.ok(m.Kill(2))
    with pytest.raises(Refuted):
        r.answer(call, m.Raised(RE, 2, "ValueError"))  # only PEE, or its reply
    r.answer(call, m.Returned(1))  # the reply got out before the death


def handshakes(seen: Seen) -> None:
    """The connection table, one link at a time."""
    runs = [
        [LinkEvent.DIAL, LinkEvent.COOKIE_OK, LinkEvent.JOIN, LinkEvent.JOIN_COMPLETE],
        [
            LinkEvent.DIAL,
            LinkEvent.COOKIE_OK,
            LinkEvent.IDENTIFY,
            LinkEvent.IDENTIFY_ACK,
        ],
        [LinkEvent.TIMEOUT, LinkEvent.DIAL, LinkEvent.COOKIE_BAD],
        [LinkEvent.DIAL, LinkEvent.SHORT_READ],
        [LinkEvent.DIAL, LinkEvent.TIMEOUT],
        [LinkEvent.DIAL, LinkEvent.COOKIE_OK, LinkEvent.EOF],
        [LinkEvent.DIAL, LinkEvent.COOKIE_OK, LinkEvent.JOIN, LinkEvent.EOF],
        [LinkEvent.DIAL, LinkEvent.COOKIE_OK, LinkEvent.IDENTIFY, LinkEvent.EOF],
    ]
    for events in runs:
        link = m.Handshake(seen)
        for event in events:
            link.feed(event)
    link = m.Handshake(seen)
    with pytest.raises(TransitionError):
        link.feed(LinkEvent.JOIN)  # nothing before the cookie


PROGRAMS: list[Callable[[Seen], None]] = [
    process_group,
    crashes_and_removals,
    remote_calls,
    futures,
    future_loss,
    channels,
    channel_edges,
    channel_loss,
    nested_calls,
    pending_calls_resolve,
    client_sets,
    pools,
    pool_calls_and_pmap,
    unbuffered_channels,
    unbuffered_putter_on_a_dying_worker,
    pool_remotecalls,
    master_worker_topology,
    interrupts,
    pmap_errors_and_retries,
    dead_worker_side_effects,
    handshakes,
]


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.__name__)
def test_program(program: Callable[[Seen], None]) -> None:
    program(set())


def test_every_transition_is_exercised() -> None:
    """Together the programs fire every entry of every lifecycle table."""
    seen: Seen = set()
    for program in PROGRAMS:
        program(seen)
    missing = sorted(all_keys() - seen)
    assert not missing, f"transitions never exercised: {missing}"


def test_every_operation_is_exercised() -> None:
    """Together the programs invoke every operation the model knows."""
    for program in PROGRAMS:
        program(set())
    missing = sorted(op.__name__ for op in get_args(m.Op) if op not in INVOKED)
    assert not missing, f"operations never exercised: {missing}"


# ------------------------------------------------------- engine and tables


def test_engine_rejects_a_missing_entry_with_a_typed_error() -> None:
    with pytest.raises(TransitionError) as caught:
        WORKER.fire(WorkerState.DEAD, WorkerEvent.JOINED)
    assert caught.value.table == "worker"
    assert caught.value.state is WorkerState.DEAD
    assert "JOINED" in str(caught.value)


def test_tables_are_closed_over_their_own_states() -> None:
    for table in ALL_TABLES:
        reachable = {table.initial}
        changed = True
        while changed:
            changed = False
            for (state, _), transition in table.entries.items():
                if state in reachable and transition.target not in reachable:
                    reachable.add(transition.target)
                    changed = True
        assert reachable == set(table.states), table.name
        for final in table.final:
            assert final in reachable


def test_blocking_entries_do_not_change_state() -> None:
    for (state, _), transition in CHANNEL.entries.items():
        if transition.blocks:
            assert transition.target is state


def test_model_has_no_runtime_dependency() -> None:
    code = (
        "import sys, spec.model, spec.refinement, spec.records, spec.lifecycles, "
        "spec.diagrams; "
        "bad = [n for n in sys.modules if n.split('.')[0] in ('ref', 'sim', 'trio')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_state_diagrams_are_current() -> None:
    """docs/state-diagrams.md is what ``python -m spec.diagrams`` writes."""
    assert diagrams.main(["--check"]) == 0, "run: python -m spec.diagrams"


def test_diagram_has_an_edge_per_transition() -> None:
    for table in ALL_TABLES:
        edges = [line for line in diagrams.mermaid(table).splitlines() if " : " in line]
        assert len(edges) == len(table.entries)


# -------------------------------------------------------------- checker


def test_history_round_trips_through_json_lines() -> None:
    r = Run(set())
    r.ok(m.NewChannel("c", 1, None), ("channel", 1))
    r.ok(m.RemoteCall(2, m.PutInto("c", (1, "x")), "f"), ("future", 2))
    r.raises(m.RemoteCallFetch(3, m.Fail()), RE, 3, "ValueError")
    r.ok(m.PMap(m.Plus(1), (1,), None), (2,))
    text = dump_history(r.checker.history)
    assert load_history(text) == r.checker.history
    assert load_history('{"format":"x"}\n' + text) == r.checker.history


def test_overlapping_calls_take_effect_in_either_order() -> None:
    r = Run(set())
    r.ok(m.NewChannel("c", 2, 2), ("channel", 2))
    put = r.start(m.Put("c", 1))
    take = r.start(m.Take("c"))
    r.answer(take, m.Returned(1))  # the take saw the overlapping put
    r.answer(put, m.Returned(("channel", 2)))


def test_refutation_names_what_the_model_allows() -> None:
    r = Run(set())
    cid = r.start(m.RemoteCallFetch(2, m.MyId()))
    with pytest.raises(Refuted) as caught:
        r.answer(cid, m.Returned(3))
    assert "Returned(value=2)" in str(caught.value)
    assert caught.value.allowed == [m.Returned(2)]


def test_negative_capacity_is_refused() -> None:
    r = Run(set())
    cid = r.start(m.NewChannel("z", 2, -1))
    with pytest.raises(ModelError):
        r.answer(cid, m.Returned(("channel", 2)))
