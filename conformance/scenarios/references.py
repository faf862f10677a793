"""Scenarios for remote references: Future, RemoteChannel, RRIDs, timedwait.

Issue 4 of the catalogue, the parts that are not garbage collection (those
are in :mod:`conformance.scenarios.refcount`, which reuses the helpers
here).  Everything a worker runs is a module-level function of this module,
so it travels by reference; state kept by such a function (``_kept``,
``_records``, gates) is kept per process (``_shipped.PerProcess``), and
keys are fresh per scenario because the master keeps the module loaded
from one scenario to the next.  A function that must call back into
the cluster receives the API object ``d``.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import os
import re
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import trio

from conformance.registry import scenario
from spec.api import (
    RRID,
    ChannelRef,
    DistributedAPI,
    FutureAlreadySetError,
    InvalidStateError,
    LocalChannel,
    ReferenceNotFoundError,
    RemoteException,
    RemoteRef,
)

from ._shipped import PerProcess

#: Seconds a wait that should succeed may take before the scenario fails.
PATIENCE = 10.0
#: Seconds a wait that should still be pending is watched before moving on.
PENDING = 0.3

# ================================================================ waiting


def new_key() -> str:
    """A key no other scenario (or earlier run) has used."""
    return uuid.uuid4().hex


@contextlib.contextmanager
def within(seconds: float, what: str) -> Iterator[None]:
    """Bound the block; running out is an assertion failure, not a hang."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise AssertionError(f"{what}: not done within {seconds:g} s") from None


async def until(
    d: DistributedAPI,
    probe: Callable[[], Awaitable[bool]],
    what: str,
    secs: float = PATIENCE,
) -> None:
    """Poll ``probe`` with ``d.timedwait`` until it is true, or fail."""
    with within(secs + PATIENCE, f"timedwait for {what}"):
        status = await d.timedwait(probe, secs, pollint=0.02)
    assert status == "ok", f"{what}: still not so after {secs:g} s ({status!r})"


class Pending:
    """An operation started in the background: its outcome, once done."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    async def outcome(self, secs: float = PATIENCE) -> Any:
        """Wait for the operation; return its result or raise its error."""
        with within(secs, self.what):
            await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result

    async def still_pending(self, secs: float = PENDING) -> None:
        """Assert that the operation has not finished after ``secs``."""
        await trio.sleep(secs)
        assert not self.done.is_set(), (
            f"{self.what} finished although it should still wait "
            f"(result {self.result!r}, error {self.error!r})"
        )


def start(
    nursery: trio.Nursery,
    what: str,
    fn: Callable[..., Awaitable[Any]],
    *args: Any,
) -> Pending:
    """Run ``fn(*args)`` in ``nursery``; its outcome is kept, never raised."""
    pending = Pending(what)

    async def run() -> None:
        try:
            pending.result = await fn(*args)
        except Exception as exc:
            pending.error = exc
        finally:
            pending.done.set()

    nursery.start_soon(run)
    return pending


@contextlib.asynccontextmanager
async def background() -> AsyncIterator[trio.Nursery]:
    """A nursery whose leftover tasks are cancelled when the block ends.

    A failure of the block itself comes out as raised, not wrapped in an
    exception group, so an ``AssertionError`` stays a failure.
    """
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def holders(d: DistributedAPI, owner: int, rrid: RRID) -> frozenset[int] | None:
    """The holders ``owner`` records for ``rrid``; None if it stores nothing."""
    table = await d.remotecall_fetch(d.live_refs, owner)
    found: frozenset[int] | None = table.get(rrid)
    return found


async def until_holders(
    d: DistributedAPI, owner: int, rrid: RRID, expected: frozenset[int] | None
) -> None:
    """Wait until ``owner`` records exactly ``expected`` (None: no entry)."""
    seen: list[frozenset[int] | None] = []

    async def probe() -> bool:
        now = await holders(d, owner, rrid)
        seen.append(now)
        return now == expected

    with within(2 * PATIENCE, f"timedwait for the holders of {tuple(rrid)}"):
        status = await d.timedwait(probe, PATIENCE, pollint=0.02)
    assert status == "ok", (
        f"process {owner} should record holders {_show(expected)} for "
        f"{tuple(rrid)}, but after {PATIENCE:g} s it records "
        f"{_show(seen[-1] if seen else None)} ({status!r})"
    )


def _show(pids: frozenset[int] | None) -> str:
    return "no entry" if pids is None else str(sorted(pids))


def drop_and_collect() -> None:
    """Run the garbage collector (after the caller dropped its references)."""
    gc.collect()


# ================================================ what workers run for us

_kept: PerProcess[dict[str, Any]] = PerProcess(dict)
_records: PerProcess[dict[str, list[Any]]] = PerProcess(dict)
_gates: PerProcess[dict[str, trio.Event]] = PerProcess(dict)


def return_value(value: Any) -> Any:
    """Return the argument: a value (or reference) travelling back."""
    return value


def keep(key: str, value: Any) -> None:
    """Hold ``value`` in this process under ``key`` until ``drop_kept``."""
    _kept.here()[key] = value


def kept(key: str) -> Any:
    """The value this process holds under ``key``."""
    return _kept.here()[key]


def kept_is(key: str, value: Any) -> bool:
    """Whether ``value`` arrived as the very object held under ``key``."""
    return _kept.here()[key] is value


def drop_kept(key: str) -> None:
    """Let go of what this process holds under ``key`` and collect garbage."""
    _kept.here().pop(key, None)
    gc.collect()


async def fetch_kept(d: DistributedAPI, key: str) -> Any:
    return await d.fetch(_kept.here()[key])


async def put_kept(
    d: DistributedAPI, key: str, value: Any
) -> list[BaseException] | None:
    """``put`` into the held reference; return ``[error]`` if it raised.

    The error travels inside a list because ``remotecall_fetch`` raises a
    ``RemoteException`` that is returned as the value itself.
    """
    try:
        await d.put(_kept.here()[key], value)
    except Exception as exc:
        return [exc]
    return None


async def forward_kept(d: DistributedAPI, key: str, pid: int, new_key: str) -> None:
    """Send the held reference on to ``pid``, which holds it as ``new_key``."""
    await d.remotecall_fetch(keep, pid, new_key, _kept.here()[key])


async def fetch_arg(d: DistributedAPI, ref: Any) -> Any:
    return await d.fetch(ref)


async def apply(d: DistributedAPI, name: str, *args: Any) -> Any:
    """``await d.<name>(*args)`` in this process."""
    return await getattr(d, name)(*args)


async def outcome_of(d: DistributedAPI, name: str, *args: Any) -> Any:
    """Like ``apply`` but the raised error is returned in a list, not raised."""
    try:
        return await getattr(d, name)(*args)
    except Exception as exc:
        return [exc]


def record(key: str, item: Any) -> None:
    _records.here().setdefault(key, []).append(item)


def records(key: str) -> list[Any]:
    return list(_records.here().get(key, []))


async def wait_gate(key: str, value: Any) -> Any:
    """Block until ``open_gate(key)`` ran in this process; return ``value``."""
    record(key, "waiting")
    await _gates.here().setdefault(key, trio.Event()).wait()
    return value


def open_gate(key: str) -> None:
    _gates.here().setdefault(key, trio.Event()).set()


def make_channel(d: DistributedAPI, capacity: float, key: str) -> LocalChannel:
    """A channel factory that records which process called it."""
    record(key, d.myid())
    return d.Channel(capacity)


def sized_channel(d: DistributedAPI, capacity: float) -> LocalChannel:
    return d.Channel(capacity)


def sized(d: DistributedAPI, capacity: float) -> Callable[[], LocalChannel]:
    """A factory for ``RemoteChannel``: a channel of ``capacity``."""
    return functools.partial(sized_channel, d, capacity)


class ReferenceScenarioError(Exception):
    """A distinctive exception that channel factories raise."""


def failing_factory(message: str) -> LocalChannel:
    raise ReferenceScenarioError(message)


def not_a_channel_factory() -> object:
    return 42


async def fetch_many(d: DistributedAPI, ref: Any, n: int) -> list[Any]:
    """Fetch ``ref`` in ``n`` concurrent tasks of this process."""
    results: list[Any] = []

    async def one() -> None:
        results.append(await d.fetch(ref))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return results


async def drain(d: DistributedAPI, rc: ChannelRef) -> list[Any]:
    """Iterate over ``rc`` in this process until it ends."""
    return [item async for item in rc]


async def take_identities(d: DistributedAPI, rc: ChannelRef, n: int) -> int:
    """Take ``n`` values here; how many distinct objects they are."""
    items = [await d.take(rc) for _ in range(n)]
    return len({id(item) for item in items})


class WhereIndexed:
    """A value whose indexing reports the process it was indexed on."""

    def __init__(self, d: DistributedAPI) -> None:
        self.d = d

    def __getitem__(self, key: Any) -> tuple[Any, int]:
        return key, self.d.myid()


async def put_unshippable_head(d: DistributedAPI, rc: ChannelRef) -> None:
    """From the owner, put a value that cannot travel but can be indexed."""
    await d.put(rc, {"small": 7, "lock": threading.Lock()})


async def put_where_indexed(d: DistributedAPI, rc: ChannelRef) -> None:
    await d.put(rc, WhereIndexed(d))


def make_where_indexed(d: DistributedAPI) -> WhereIndexed:
    return WhereIndexed(d)


async def inspect_backing(
    d: DistributedAPI, rrid: RRID, replacement: Any
) -> tuple[float, int, Any, Any]:
    """On the owner: read and change the channel behind ``rrid`` directly."""
    chan = d.channel_from_id(rrid)
    size = len(chan)
    head = await d.fetch(chan)
    taken = await d.take(chan)
    await d.put(chan, replacement)
    return chan.capacity, size, head, taken


def backing_state(d: DistributedAPI, rrid: RRID) -> tuple[float, int]:
    """On the owner: capacity and length of the channel behind ``rrid``."""
    chan = d.channel_from_id(rrid)
    return chan.capacity, len(chan)


def channel_from_id_error(d: DistributedAPI, rrid: RRID) -> BaseException | None:
    try:
        d.channel_from_id(rrid)
    except Exception as exc:
        return exc
    return None


def new_refs(d: DistributedAPI, other: int) -> list[RRID]:
    """Create several references here; return their RRIDs in order."""
    made: list[RemoteRef] = [
        d.Future(),
        d.RemoteChannel(other),
        d.Future(other),
        d.RemoteChannel(),
    ]
    _kept.here()[new_key()] = made
    return [d.remoteref_id(r) for r in made]


def channel_identity(d: DistributedAPI, p: int) -> list[tuple[int, int]]:
    """(where, whence) of RemoteChannel(p) and RemoteChannel() made here."""
    return [
        (rc.where, rc.rrid.whence) for rc in (d.RemoteChannel(p), d.RemoteChannel())
    ]


def future_identity(d: DistributedAPI) -> tuple[int, int]:
    fut = d.Future()
    return fut.where, d.myid()


async def make_and_touch(d: DistributedAPI, key: str, p: int) -> RRID:
    """Create RemoteChannel(p) here, keep it, and make p create its storage."""
    rc = d.RemoteChannel(p)
    _kept.here()[key] = rc
    await d.isready(rc)
    return rc.rrid


_captured: PerProcess[list[str]] = PerProcess(list)
_capturing: set[int] = set()


class _Collector(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        # The line belongs to the process whose task logged it, even where
        # processes share an interpreter and so this handler.
        if os.getpid() in _capturing:
            _captured.here().append(f"{record.levelname}: {record.getMessage()}")


_collector = _Collector(level=logging.WARNING)
_saved_levels: dict[str, int] = {}


def capture_log(name: str) -> None:
    """From now on, collect what this process logs on ``name`` (WARNING+)."""
    _captured.here().clear()
    _capturing.add(os.getpid())
    logger = logging.getLogger(name)
    if _collector not in logger.handlers:
        logger.addHandler(_collector)
    _saved_levels.setdefault(name, logger.level)
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)


def captured() -> list[str]:
    return list(_captured.here())


def stop_capture(name: str) -> None:
    """Undo ``capture_log(name)``.

    Where processes share one interpreter (a simulator) they share the
    logger too, so this ends every process's capture, not only this one's.
    """
    _capturing.clear()
    logger = logging.getLogger(name)
    logger.removeHandler(_collector)
    if name in _saved_levels:
        logger.setLevel(_saved_levels.pop(name))


# ====================================================== shared assertions


def assert_remote(error: object, pid: int, kind: type[BaseException]) -> None:
    """``error`` is a RemoteException from ``pid`` carrying a ``kind``."""
    assert isinstance(error, RemoteException), (
        f"expected RemoteException from {pid} carrying {kind.__name__}, got {error!r}"
    )
    assert error.pid == pid, f"RemoteException from {error.pid}, expected {pid}"
    assert isinstance(error.exception, kind), (
        f"RemoteException carries {error.exception!r}, expected {kind.__name__}"
    )


def assert_closed_error(error: object, owner: int, me: int) -> None:
    """The closed-channel error: plain when local, wrapped when remote."""
    if owner != me:
        assert_remote(error, owner, InvalidStateError)
        assert isinstance(error, RemoteException)
        error = error.exception
    assert isinstance(error, InvalidStateError), (
        f"expected InvalidStateError from a closed local channel, got {error!r}"
    )
    assert error.state == "closed", f"state is {error.state!r}, expected 'closed'"


async def raised(what: str, op: Awaitable[Any]) -> BaseException:
    """Await ``op``, which must raise; return what it raised."""
    try:
        with within(PATIENCE, what):
            value = await op
    except AssertionError:
        raise
    except Exception as exc:
        return exc
    raise AssertionError(f"{what} returned {value!r} instead of raising")


async def owners(d: DistributedAPI) -> tuple[int, int]:
    """A worker to own remote channels (the master owns the local ones)."""
    [w] = await d.addprocs(1)
    return d.myid(), w


# ================================================================ Future


@scenario("future.default-pid-is-caller")
async def future_default_pid_is_caller(d: DistributedAPI) -> None:
    fut = d.Future()
    assert fut.where == d.myid() == 1, f"Future() on the master: where={fut.where}"
    [w] = await d.addprocs(1)
    with within(PATIENCE, "Future() on a worker"):
        where, me = await d.remotecall_fetch(future_identity, w, d)
    assert (where, me) == (w, w), f"Future() on worker {w} has where={where}"


@scenario("future.remote-put-fetch-anywhere")
async def future_put_fetched_everywhere(d: DistributedAPI) -> None:
    w1, w2, w3 = await d.addprocs(3)
    key = new_key()
    fut = d.Future(w1)
    with within(PATIENCE, "handing the Future to every worker"):
        for w in (w1, w2, w3):
            await d.remotecall_fetch(keep, w, key, fut)
        error = await d.remotecall_fetch(put_kept, w2, d, key, ("value", 42))
    assert error is None, f"put on worker {w2} raised {error}"

    with within(PATIENCE, "fetching on the master"):
        assert await d.fetch(fut) == ("value", 42)
    for w in (w3, w1, w2):
        with within(PATIENCE, f"fetching on worker {w}"):
            got = await d.remotecall_fetch(fetch_kept, w, d, key)
        assert got == ("value", 42), f"fetch on worker {w} returned {got!r}"


@scenario("future.second-holder-put-refused")
async def future_second_holder_put_refused(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    for owner in (w1, 1):
        key = new_key()
        fut = d.Future(owner)
        with within(PATIENCE, "handing the Future to a second holder"):
            await d.remotecall_fetch(keep, w2, key, fut)
        with within(PATIENCE, "the first put"):
            await d.put(fut, "first")
        with within(PATIENCE, "the second holder's put"):
            error = await d.remotecall_fetch(put_kept, w2, d, key, "second")
        assert error is not None, "the second holder's put did not raise"
        assert_remote(error[0], owner, FutureAlreadySetError)
        with within(PATIENCE, "fetching after the refused put"):
            assert await d.fetch(fut) == "first"
            got = await d.remotecall_fetch(fetch_kept, w2, d, key)
        assert got == "first", f"the second holder fetched {got!r}"


@scenario("future.channel-operations-unsupported")
async def future_channel_operations_raise_type_error(d: DistributedAPI) -> None:
    [w] = await d.addprocs(1)
    for fut in (d.Future(), d.Future(w), await d.remotecall(return_value, w, 1)):
        for name in ("take", "close", "isopen", "isempty"):
            error = await raised(f"{name}(Future)", getattr(d, name)(fut))
            assert isinstance(error, TypeError), (
                f"{name} on {fut!r} raised {error!r}, expected TypeError"
            )
    with within(PATIENCE, "fetch after the refused operations"):
        assert await d.fetch(fut) == 1


@scenario("future.concurrent-fetchers-complete")
async def future_concurrent_fetchers(d: DistributedAPI) -> None:
    w1, w2, w3 = await d.addprocs(3)
    key = new_key()
    fut = await d.remotecall(wait_gate, w1, key, ["the", "value"])
    async with background() as nursery:
        local = [start(nursery, f"master fetcher {i}", d.fetch, fut) for i in range(20)]
        remote = [
            start(
                nursery,
                f"fetchers on {w}",
                d.remotecall_fetch,
                fetch_many,
                w,
                d,
                fut,
                10,
            )
            for w in (w2, w3)
        ]
        await trio.sleep(PENDING)
        assert not any(p.done.is_set() for p in local + remote), (
            "a fetch returned before the value existed"
        )
        with within(PATIENCE, "opening the gate"):
            await d.remotecall_fetch(open_gate, w1, key)
        for pending in local:
            assert await pending.outcome() == ["the", "value"]
        for pending in remote:
            got = await pending.outcome()
            assert got == [["the", "value"]] * 10, f"{pending.what} got {got!r}"


@scenario("future.fetched-copy-carries-value")
async def future_fetched_copy_outlives_owner(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    key = new_key()
    fut = await d.remotecall(return_value, w1, {"payload": 7})
    with within(PATIENCE, "fetching, then sending the fetched Future on"):
        assert await d.fetch(fut) == {"payload": 7}
        await d.remotecall_fetch(keep, w2, key, fut)
    with within(PATIENCE, "removing the owner"):
        await d.rmprocs(w1)
    assert w1 not in d.procs(), f"worker {w1} is still listed"
    with within(PATIENCE, "fetching copies without the owner"):
        kept_value = await d.remotecall_fetch(fetch_kept, w2, d, key)
        sent_value = await d.remotecall_fetch(fetch_arg, w2, d, fut)
        own_value = await d.fetch(fut)
    assert kept_value == {"payload": 7}, f"copy sent earlier gave {kept_value!r}"
    assert sent_value == {"payload": 7}, f"copy sent afterwards gave {sent_value!r}"
    assert own_value == {"payload": 7}


def _numbers(text: str) -> Counter[int]:
    return Counter(int(n) for n in re.findall(r"\d+", text))


def _shows(text: str, ref: RemoteRef) -> bool:
    wanted = Counter([ref.where, ref.rrid.whence, ref.rrid.id])
    found = _numbers(text)
    return all(found[n] >= count for n, count in wanted.items())


@scenario("future.repr-shows-identity")
async def repr_shows_identity(d: DistributedAPI) -> None:
    [w] = await d.addprocs(1)
    for _ in range(3):
        d.Future()  # so that the ids below differ from the pids
    fut = await d.remotecall(return_value, w, 1234567)
    before = repr(fut)
    assert "Future" in before, f"repr of a Future: {before!r}"
    assert _shows(before, fut), f"{before!r} lacks where/whence/id of {fut.rrid}"
    with within(PATIENCE, "fetch"):
        await d.fetch(fut)
    after = repr(fut)
    assert _shows(after, fut), f"{after!r} lacks where/whence/id of {fut.rrid}"
    assert after != before, f"repr does not show that the value is cached: {after!r}"
    assert "1234567" not in before, f"repr of an unfetched Future: {before!r}"

    rc = d.RemoteChannel(w)
    text = repr(rc)
    assert "RemoteChannel" in text, f"repr of a RemoteChannel: {text!r}"
    assert _shows(text, rc), f"{text!r} lacks where/whence/id of {rc.rrid}"


# ========================================================= RemoteChannel


@scenario("remote_channel.default-capacity-one")
async def remote_channel_default_capacity_one(d: DistributedAPI) -> None:
    for owner in await owners(d):
        rc = d.RemoteChannel(owner)
        async with background() as nursery:
            first = start(nursery, "first put", d.put, rc, "a")
            await first.outcome()
            second = start(nursery, f"second put (owner {owner})", d.put, rc, "b")
            await second.still_pending()
            with within(PATIENCE, "take"):
                assert await d.take(rc) == "a"
            await second.outcome()
            with within(PATIENCE, "take"):
                assert await d.take(rc) == "b"


@scenario("remote_channel.where-and-whence")
async def remote_channel_where_and_whence(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    for rc, where in (
        (d.RemoteChannel(w1), w1),
        (d.RemoteChannel(pid=w1), w1),
        (d.RemoteChannel(), 1),
    ):
        assert rc.where == where, f"{rc!r}: where={rc.where}, expected {where}"
        assert rc.rrid.whence == 1, f"{rc!r} created on 1 has whence {rc.rrid.whence}"
    with within(PATIENCE, "creating channels on a worker"):
        made = await d.remotecall_fetch(channel_identity, w2, d, w1)
    assert made == [(w1, w2), (w2, w2)], f"(where, whence) on worker {w2}: {made}"

    rc = d.RemoteChannel(w1)
    with within(PATIENCE, "put"):
        await d.put(rc, "x")
    assert await holders(d, w1, rc.rrid) is not None, (
        f"worker {w1} stores nothing for {rc.rrid}"
    )
    assert rc.rrid not in d.live_refs(), "the channel is also stored on the master"


async def _fill(d: DistributedAPI, rc: ChannelRef, n: int) -> None:
    for i in range(n):
        with within(PENDING * 10, f"put number {i + 1} of {n}"):
            await d.put(rc, i)


@scenario("remote_channel.factory-runs-on-owner")
async def remote_channel_factory_runs_on_owner(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    for owner in (w1, 1):
        key = new_key()
        rc = d.RemoteChannel(functools.partial(make_channel, d, 10, key), owner)
        assert rc.where == owner
        await _fill(d, rc, 10)
        async with background() as nursery:
            eleventh = start(nursery, "the eleventh put", d.put, rc, 10)
            await eleventh.still_pending()
            with within(PATIENCE, "take"):
                assert await d.take(rc) == 0
            await eleventh.outcome()
        with within(PATIENCE, "reading the records"):
            calls = {p: await d.remotecall_fetch(records, p, key) for p in (1, w1, w2)}
        expected = {p: [owner] if p == owner else [] for p in (1, w1, w2)}
        assert calls == expected, f"factory calls by process: {calls}"
        with within(PATIENCE, "looking at the owner's channel"):
            capacity, size = await d.remotecall_fetch(backing_state, owner, d, rc.rrid)
        assert (capacity, size) == (10, 10), (
            f"owner's channel: capacity {capacity}, {size} items"
        )


@scenario("remote_channel.factory-failure-raises")
async def remote_channel_factory_failure_raises(d: DistributedAPI) -> None:
    [w] = await d.addprocs(1)
    for owner in (w, 1):
        failing = d.RemoteChannel(
            functools.partial(failing_factory, "no channel"), owner
        )
        error = await raised("put with a failing factory", d.put(failing, 1))
        assert_remote(error, owner, ReferenceScenarioError)
        wrong = d.RemoteChannel(not_a_channel_factory, owner)
        error = await raised("isready with a factory returning 42", d.isready(wrong))
        assert isinstance(error, RemoteException), f"got {error!r}"
        assert error.pid == owner, f"RemoteException from {error.pid}, not {owner}"


@scenario("put.channel-returns-channel")
async def put_returns_channel(d: DistributedAPI) -> None:
    for owner in await owners(d):
        rc = d.RemoteChannel(owner)
        with within(PATIENCE, "put"):
            returned = await d.put(rc, "a")
        assert returned is rc, f"put returned {returned!r}, not the channel"
        async with background() as nursery:
            second = start(
                nursery, f"put into a full channel ({owner})", d.put, rc, "b"
            )
            await second.still_pending()
            with within(PATIENCE, "take"):
                assert await d.take(rc) == "a"
            assert await second.outcome() is rc
        with within(PATIENCE, "take"):
            assert await d.take(rc) == "b"


@scenario("take.channel-removes-oldest")
async def take_removes_oldest(d: DistributedAPI) -> None:
    for owner in await owners(d):
        rc = d.RemoteChannel(sized(d, 3), owner)
        with within(PATIENCE, "puts and takes"):
            for item in ("a", "b", "c"):
                await d.put(rc, item)
            taken = [await d.take(rc) for _ in range(3)]
        assert taken == ["a", "b", "c"], f"took {taken} from owner {owner}"
        async with background() as nursery:
            waiting = start(nursery, f"take on empty ({owner})", d.take, rc)
            await waiting.still_pending()
            with within(PATIENCE, "put"):
                await d.put(rc, "d")
            assert await waiting.outcome() == "d"
        with within(PATIENCE, "isempty"):
            assert await d.isempty(rc), "take left the value in the channel"


@scenario("fetch.channel-does-not-remove")
async def fetch_does_not_remove(d: DistributedAPI) -> None:
    for owner in await owners(d):
        rc = d.RemoteChannel(sized(d, 2), owner)
        with within(PATIENCE, "puts, fetches and takes"):
            await d.put(rc, "a")
            await d.put(rc, "b")
            assert await d.fetch(rc) == "a"
            assert await d.fetch(rc) == "a", "fetch removed the value"
            assert await d.take(rc) == "a"
            assert await d.fetch(rc) == "b"
            assert await d.take(rc) == "b"
        async with background() as nursery:
            waiting = start(nursery, f"fetch on empty ({owner})", d.fetch, rc)
            await waiting.still_pending()
            with within(PATIENCE, "put"):
                await d.put(rc, "c")
            assert await waiting.outcome() == "c"
        with within(PATIENCE, "take"):
            assert await d.take(rc) == "c", "fetch removed the value"


@scenario("isready.channel-has-value")
async def isready_channel(d: DistributedAPI) -> None:
    for owner in await owners(d):
        rc = d.RemoteChannel(owner)
        with within(PATIENCE, "isready"):
            assert await d.isready(rc) is False, "empty channel reported ready"
            await d.put(rc, "x")
            assert await d.isready(rc) is True
            assert await d.isready(rc) is True, "isready removed the value"
            assert await d.take(rc) == "x"
            assert await d.isready(rc) is False, "isready after take"


@scenario("wait.channel-returns-channel")
async def wait_channel(d: DistributedAPI) -> None:
    for owner in await owners(d):
        rc = d.RemoteChannel(owner)
        async with background() as nursery:
            waiting = start(nursery, f"wait on empty ({owner})", d.wait, rc)
            await waiting.still_pending()
            with within(PATIENCE, "put"):
                await d.put(rc, "x")
            returned = await waiting.outcome()
        assert returned is rc, f"wait returned {returned!r}"
        with within(PATIENCE, "isready and take"):
            assert await d.isready(rc), "wait removed the value"
            assert await d.take(rc) == "x"


@scenario("isempty.channel-does-not-consume")
async def isempty_channel(d: DistributedAPI) -> None:
    for owner in await owners(d):
        rc = d.RemoteChannel(owner)
        with within(PATIENCE, "isempty"):
            assert await d.isempty(rc) is True
            await d.put(rc, "x")
            assert await d.isempty(rc) is False
            assert await d.isempty(rc) is False, "isempty consumed the value"
            assert await d.take(rc) == "x"
            assert await d.isempty(rc) is True


@scenario("close.channel-closes-for-all")
async def close_for_all(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    for owner, closer in ((w1, w2), (1, w2), (w1, 1)):
        rc = d.RemoteChannel(owner)
        everyone = (1, w1, w2)
        with within(PATIENCE, "isopen everywhere"):
            before = {
                p: await d.remotecall_fetch(apply, p, d, "isopen", rc) for p in everyone
            }
        assert before == dict.fromkeys(everyone, True), f"isopen before close: {before}"
        with within(PATIENCE, f"close from {closer}"):
            await d.remotecall_fetch(apply, closer, d, "close", rc)
            after = {
                p: await d.remotecall_fetch(apply, p, d, "isopen", rc) for p in everyone
            }
        assert after == dict.fromkeys(everyone, False), (
            f"isopen after close by {closer} (owner {owner}): {after}"
        )


@scenario("put.closed-channel-raises")
async def put_closed_raises(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    for owner in (1, w1):
        rc = d.RemoteChannel(owner)
        with within(PATIENCE, "close"):
            await d.close(rc)
        error = await raised("put on a closed channel", d.put(rc, "x"))
        assert_closed_error(error, owner, d.myid())
        with within(PATIENCE, "put from another worker"):
            [error] = await d.remotecall_fetch(outcome_of, w2, d, "put", rc, "y")
        assert_closed_error(error, owner, w2)
        with within(PATIENCE, "put from the owner"):
            [error] = await d.remotecall_fetch(outcome_of, owner, d, "put", rc, "z")
        assert_closed_error(error, owner, owner)


@scenario("take.closed-channel-drains-then-raises")
async def take_drains_after_close(d: DistributedAPI) -> None:
    for owner in await owners(d):
        rc = d.RemoteChannel(sized(d, 3), owner)
        with within(PATIENCE, "fill, close, drain"):
            await d.put(rc, "a")
            await d.put(rc, "b")
            await d.close(rc)
            assert await d.fetch(rc) == "a"
            assert await d.take(rc) == "a"
            assert await d.fetch(rc) == "b"
            assert await d.take(rc) == "b"
        error = await raised("take on closed and empty", d.take(rc))
        assert_closed_error(error, owner, d.myid())
        error = await raised("fetch on closed and empty", d.fetch(rc))
        assert_closed_error(error, owner, d.myid())


async def _produce(d: DistributedAPI, rc: ChannelRef, items: list[Any]) -> None:
    for item in items:
        await d.put(rc, item)
    await d.close(rc)


@scenario("remote_channel.iteration-until-closed")
async def iteration_until_closed(d: DistributedAPI) -> None:
    local, w = await owners(d)
    items = list(range(6))
    for owner in (local, w):
        rc = d.RemoteChannel(owner)
        async with background() as nursery:
            producer = start(nursery, "producer", _produce, d, rc, items)
            with within(PATIENCE, f"iterating over a channel owned by {owner}"):
                got = [item async for item in rc]
            await producer.outcome()
        assert got == items, f"iteration (owner {owner}) gave {got}"

    # On a worker, over a channel the master owns, closed while it waits.
    rc = d.RemoteChannel()
    async with background() as nursery:
        consumer = start(nursery, "worker's loop", d.remotecall_fetch, drain, w, d, rc)
        with within(PATIENCE, "puts"):
            await d.put(rc, "x")
            await d.put(rc, "y")
        await consumer.still_pending()
        with within(PATIENCE, "close"):
            await d.close(rc)
        got = await consumer.outcome()
    assert got == ["x", "y"], f"iteration on worker {w} gave {got}"


@scenario("remote_channel.operations-from-any-process")
async def operations_from_any_process(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    rc = d.RemoteChannel(sized(d, 2), w1)

    async def on(pid: int, name: str, *args: Any) -> Any:
        with within(PATIENCE, f"{name} on process {pid}"):
            return await d.remotecall_fetch(apply, pid, d, name, rc, *args)

    for pid in (1, w2, w1):
        tag = f"from {pid}"
        assert await on(pid, "isempty") is True
        assert await on(pid, "isready") is False
        assert await on(pid, "put", tag) == rc
        assert await on(pid, "isready") is True
        assert await on(pid, "isempty") is False
        assert await on(pid, "fetch") == tag
        assert await on(pid, "wait") == rc
        assert await on(pid, "getindex", slice(0, 4)) == "from"
        assert await on(pid, "take") == tag
        # A value put here is taken by the next process, through the owner.
        assert await on(pid, "put", ("relay", pid)) == rc
        nxt = {1: w2, w2: w1, w1: 1}[pid]
        assert await on(nxt, "take") == ("relay", pid)
        assert await on(pid, "isopen") is True
    with within(PATIENCE, "owner's channel"):
        state = await d.remotecall_fetch(backing_state, w1, d, rc.rrid)
    assert state == (2, 0), f"owner's channel (capacity, length): {state}"
    assert await on(w2, "close") is None
    for pid in (1, w1, w2):
        assert await on(pid, "isopen") is False, f"isopen on {pid} after close"


@scenario("remote_channel.local-put-shares-object")
async def local_put_shares_object(d: DistributedAPI) -> None:
    [w] = await d.addprocs(1)
    shared: list[int] = []
    local = d.RemoteChannel(sized(d, 3))
    with within(PATIENCE, "puts and takes on the local channel"):
        for _ in range(3):
            await d.put(local, shared)
        taken = [await d.take(local) for _ in range(3)]
    assert all(item is shared for item in taken), "a local put copied the value"

    remote = d.RemoteChannel(sized(d, 3), w)
    with within(PATIENCE, "puts into the remote channel"):
        for _ in range(3):
            await d.put(remote, shared)
        distinct = await d.remotecall_fetch(take_identities, w, d, remote, 3)
    assert distinct == 3, f"the owner received {distinct} distinct objects, not 3"


@scenario("getitem.indexes-value")
async def getindex_indexes_value(d: DistributedAPI) -> None:
    [w] = await d.addprocs(1)
    fut = await d.remotecall(return_value, w, {"a": 1, "b": [2, 3]})
    with within(PATIENCE, "getindex on a Future"):
        assert await d.getindex(fut, "b") == [2, 3]
        assert await d.getindex(fut, "a") == 1
        assert await d.getindex(fut, "a") == (await d.fetch(fut))["a"]
    where = await d.remotecall(make_where_indexed, w, d)
    with within(PATIENCE, "getindex on a Future"):
        got = await d.getindex(where, "k")
    assert got == ("k", d.myid()), f"a Future was indexed on {got[1]}, not locally"

    rc = d.RemoteChannel(sized(d, 2), w)
    with within(PATIENCE, "getindex on a RemoteChannel"):
        await d.remotecall_fetch(put_where_indexed, w, d, rc)
        await d.put(rc, {"k": "newer value"})
        got = await d.getindex(rc, "k")
        assert got == ("k", w), f"getindex gave {got!r}, not the head indexed on {w}"
        assert await d.getindex(rc, "k") == ("k", w), "getindex removed the head"
        await d.take(rc)
        assert await d.getindex(rc, "k") == "newer value"
        await d.take(rc)
        await d.remotecall_fetch(put_unshippable_head, w, d, rc)
        small = await d.getindex(rc, "small")
    assert small == 7, f"getindex on the unshippable head gave {small!r}"


# ================================================================= RRIDs


@scenario("remoteref_id.returns-rrid")
async def remoteref_id_returns_rrid(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    made: list[tuple[RemoteRef, int]] = [
        (d.Future(), 1),
        (d.Future(w1), 1),
        (d.RemoteChannel(w1), 1),
        (await d.remotecall(return_value, w1, 0), 1),
        (await d.remotecall_fetch(d.RemoteChannel, w2, w1), w2),
        (await d.remotecall_fetch(d.Future, w2, w1), w2),
    ]
    for ref, whence in made:
        rrid = d.remoteref_id(ref)
        assert isinstance(rrid, RRID), f"remoteref_id({ref!r}) = {rrid!r}"
        assert rrid == ref.rrid, f"remoteref_id({ref!r}) = {rrid}, rrid {ref.rrid}"
        assert rrid.whence == whence, f"{ref!r} made on {whence}: whence {rrid.whence}"
        assert isinstance(rrid.id, int) and rrid.id > 0, f"{ref!r}: id {rrid.id}"


@scenario("rrid.ids-unique-per-creator")
async def rrid_ids_unique(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    ids: list[RRID] = []
    refs: list[RemoteRef] = []
    for _ in range(3):
        refs.append(d.Future())
        refs.append(d.RemoteChannel(w1))
        refs.append(await d.remotecall(return_value, w1, 1))
        await d.remotecall_fetch(return_value, w1, 2)
        await d.remotecall_wait(return_value, w2, 3)
        refs.append(d.Future(w2))
        refs.append(d.RemoteChannel())
    ids = [d.remoteref_id(r) for r in refs]
    assert all(r.whence == 1 for r in ids), f"whence on the master: {ids}"
    numbers = [r.id for r in ids]
    assert numbers[0] > 0 and all(a < b for a, b in itertools.pairwise(numbers)), (
        f"ids on the master are not increasing: {numbers}"
    )
    everyone = set(ids)
    for w in (w1, w2):
        for _ in range(2):
            with within(PATIENCE, f"creating references on {w}"):
                made = await d.remotecall_fetch(new_refs, w, d, 1)
            assert all(r.whence == w for r in made), f"whence on {w}: {made}"
            numbers = [r.id for r in made]
            assert numbers[0] > 0 and all(
                a < b for a, b in itertools.pairwise(numbers)
            ), f"ids on {w} are not increasing: {numbers}"
            assert everyone.isdisjoint(made), f"RRIDs repeat: {made}"
            everyone.update(made)


@scenario("rrid.equality-by-rrid")
async def rrid_equality(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    fut = await d.remotecall(return_value, w1, "v")
    twin = d.Future(w1)
    assert fut == fut and hash(fut) == hash(fut)
    assert fut != twin, "two Futures with different RRIDs compare equal"
    assert d.RemoteChannel(w1) != d.RemoteChannel(w1)
    assert len({fut, twin, fut}) == 2

    rrid, first_hash = fut.rrid, hash(fut)
    key = new_key()
    with within(PATIENCE, "handing the Future to a worker, then fetching it"):
        await d.remotecall_fetch(keep, w2, key, fut)
        await d.fetch(fut)
    assert hash(fut) == first_hash, "hash changed when the value was cached"
    # Drop this (fetched) object; the worker's unfetched copy comes back as
    # a new object of the same RRID, which must hash the same.
    del fut
    drop_and_collect()
    with within(PATIENCE, "getting the worker's copy back"):
        back = await d.remotecall_fetch(kept, w2, key)
    assert back.rrid == rrid, f"returned {back!r}, expected RRID {rrid}"
    assert hash(back) == first_hash, "hash differs between objects of one RRID"
    assert back == back and back != twin

    rc = d.RemoteChannel(w1)
    with within(PATIENCE, "round trip of a RemoteChannel"):
        await d.remotecall_fetch(keep, w2, key, rc)
        rc_back = await d.remotecall_fetch(kept, w2, key)
    assert rc_back == rc and hash(rc_back) == hash(rc)


@scenario("rrid.one-local-object-per-rrid")
async def rrid_one_object(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    for ref in (
        d.Future(w1),
        await d.remotecall(return_value, w1, 5),
        d.RemoteChannel(w1),
        d.RemoteChannel(),
    ):
        with within(PATIENCE, "round trips"):
            back = await d.remotecall_fetch(return_value, w2, ref)
            pair = await d.remotecall_fetch(return_value, w2, [ref, ref])
        assert back is ref, f"{ref!r} came back as another object {back!r}"
        assert pair[0] is ref and pair[1] is ref, "a pair came back as copies"
        key = new_key()
        for w in (w2, w1):
            with within(PATIENCE, f"sending the reference twice to {w}"):
                await d.remotecall_fetch(keep, w, key, ref)
                same = await d.remotecall_fetch(kept_is, w, key, ref)
            assert same, f"worker {w} holds two objects for {ref.rrid}"
    with within(PATIENCE, "references a worker creates"):
        made = await d.remotecall_fetch(d.RemoteChannel, w2, w1)
        again = await d.remotecall_fetch(return_value, w2, made)
    assert again is made


@scenario("rrid.arriving-value-adopted")
async def rrid_arriving_value_adopted(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    fut = await d.remotecall(return_value, w1, ("adopted", 1))
    with within(PATIENCE, "wait"):
        await d.wait(fut)
    with within(PATIENCE, "fetching on a worker and sending the copy back"):
        back = await d.remotecall_fetch(fetch_then_return, w2, d, fut)
    assert back is fut, "the fetched copy became a second object"
    # The master no longer needs the owner: the owner frees the value...
    await until_holders(d, w1, fut.rrid, None)
    # ...and the master's object answers without it.
    with within(PATIENCE, "removing the owner"):
        await d.rmprocs(w1)
    with within(PATIENCE, "fetch without the owner"):
        assert await d.fetch(fut) == ("adopted", 1)
        assert await d.isready(fut)


async def fetch_then_return(d: DistributedAPI, ref: Any) -> Any:
    await d.fetch(ref)
    return ref


@scenario("channel_from_id.returns-backing-channel")
async def channel_from_id_backing(d: DistributedAPI) -> None:
    [w] = await d.addprocs(1)
    rc = d.RemoteChannel(sized(d, 4), w)
    with within(PATIENCE, "using the channel on its owner"):
        await d.put(rc, "first")
        capacity, size, head, taken = await d.remotecall_fetch(
            inspect_backing, w, d, rc.rrid, "from the owner"
        )
    assert (capacity, size, head, taken) == (4, 1, "first", "first"), (
        f"owner's channel: capacity {capacity}, {size} items, "
        f"head {head!r}, took {taken!r}"
    )
    with within(PATIENCE, "take"):
        assert await d.take(rc) == "from the owner"

    local = d.RemoteChannel()
    with within(PATIENCE, "put"):
        await d.put(local, "x")
    chan = d.channel_from_id(d.remoteref_id(local))
    assert len(chan) == 1 and chan.capacity == 1
    with within(PATIENCE, "take from the backing channel"):
        assert await d.take(chan) == "x"
        assert await d.isempty(local), "the backing channel is another channel"


@scenario("channel_from_id.fails-off-owner")
async def channel_from_id_off_owner(d: DistributedAPI) -> None:
    w1, w2 = await d.addprocs(2)
    rc = d.RemoteChannel(w1)
    key = new_key()
    with within(PATIENCE, "using the channel and handing it to a worker"):
        await d.put(rc, "x")
        await d.remotecall_fetch(keep, w2, key, rc)
    try:
        d.channel_from_id(rc.rrid)
    except ReferenceNotFoundError:
        pass
    else:
        raise AssertionError("channel_from_id on the master returned a channel")
    with within(PATIENCE, "channel_from_id on the workers"):
        off_owner = await d.remotecall_fetch(channel_from_id_error, w2, d, rc.rrid)
        on_owner = await d.remotecall_fetch(channel_from_id_error, w1, d, rc.rrid)
    assert isinstance(off_owner, ReferenceNotFoundError), (
        f"channel_from_id on worker {w2} (a holder): {off_owner!r}"
    )
    assert on_owner is None, f"channel_from_id on the owner raised {on_owner!r}"


# ============================================================= timedwait


class Calls:
    """A timedwait callback that records when it was called."""

    def __init__(self, answers: Callable[[int], bool]) -> None:
        self.times: list[float] = []
        self.answers = answers

    def __call__(self) -> bool:
        self.times.append(trio.current_time())
        return self.answers(len(self.times))


@scenario("timedwait.ok-when-true")
async def timedwait_ok(d: DistributedAPI) -> None:
    at_once = Calls(lambda n: True)
    began = trio.current_time()
    with within(PATIENCE, "timedwait"):
        status = await d.timedwait(at_once, 5.0, pollint=1.0)
    assert status == "ok", f"timedwait returned {status!r}"
    assert len(at_once.times) == 1, f"called {len(at_once.times)} times"
    assert at_once.times[0] - began < 0.5, "the first call came after a wait"
    assert trio.current_time() - began < 0.5, "returned 'ok' only after waiting"

    third = Calls(lambda n: n >= 3)
    began = trio.current_time()
    with within(PATIENCE, "timedwait"):
        status = await d.timedwait(third, 5.0, pollint=0.05)
    assert status == "ok" and len(third.times) == 3, (status, third.times)
    assert trio.current_time() - third.times[-1] < 0.5, "returned late"

    async def truthy() -> int:
        return 1

    with within(PATIENCE, "timedwait"):
        assert await d.timedwait(truthy, 1.0) == "ok"


@scenario("timedwait.timed-out")
async def timedwait_timed_out(d: DistributedAPI) -> None:
    never = Calls(lambda n: False)
    began = trio.current_time()
    with within(PATIENCE, "timedwait"):
        status = await d.timedwait(never, 0.4, pollint=0.05)
    took = trio.current_time() - began
    assert status == "timed_out", f"timedwait returned {status!r}"
    assert 0.39 <= took < 3.0, f"timed out after {took:.3f} s, not 0.4 s"
    assert len(never.times) >= 2, f"called only {len(never.times)} times"

    with within(PATIENCE, "timedwait"):
        assert await d.timedwait(lambda: 0, 0.1) == "timed_out"


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


@scenario("timedwait.polls-every-pollint")
async def timedwait_pollint(d: DistributedAPI) -> None:
    for pollint, secs in ((0.2, 1.0), (None, 0.5)):
        never = Calls(lambda n: False)
        with within(PATIENCE, "timedwait"):
            if pollint is None:
                await d.timedwait(never, secs)
            else:
                await d.timedwait(never, secs, pollint=pollint)
        step = 0.1 if pollint is None else pollint
        gaps = _gaps(never.times)
        expected = round(secs / step)
        assert expected - 1 <= len(gaps) <= expected + 1, (
            f"pollint {step}: {len(never.times)} calls in {secs} s: {never.times}"
        )
        # The last interval may be cut short by the timeout.
        assert all(gap >= step * 0.9 for gap in gaps[:-1]), (
            f"pollint {step}: calls closer than pollint: {gaps}"
        )
        assert all(gap < step * 3 for gap in gaps), (
            f"pollint {step}: calls too far apart: {gaps}"
        )


@scenario("timedwait.pollint-minimum")
async def timedwait_pollint_minimum(d: DistributedAPI) -> None:
    for bad in (0.0009, 0.0, -1.0):
        error = await raised(
            f"timedwait with pollint={bad}", d.timedwait(lambda: True, 1.0, pollint=bad)
        )
        assert isinstance(error, ValueError), f"pollint={bad} raised {error!r}"
    with within(PATIENCE, "timedwait"):
        assert await d.timedwait(lambda: True, 1.0, pollint=0.001) == "ok"


@scenario("timedwait.callback-error-propagates")
async def timedwait_callback_error(d: DistributedAPI) -> None:
    def boom() -> bool:
        raise ReferenceScenarioError("at once")

    error = await raised("timedwait", d.timedwait(boom, 1.0))
    assert isinstance(error, ReferenceScenarioError), f"raised {error!r}"

    calls = Calls(lambda n: False)

    def later() -> bool:
        calls()
        if len(calls.times) == 3:
            raise ReferenceScenarioError("third call")
        return False

    error = await raised("timedwait", d.timedwait(later, 5.0, pollint=0.02))
    assert isinstance(error, ReferenceScenarioError) and len(calls.times) == 3, (
        error,
        calls.times,
    )

    async def async_boom() -> bool:
        raise ReferenceScenarioError("async")

    error = await raised("timedwait", d.timedwait(async_boom, 1.0))
    assert isinstance(error, ReferenceScenarioError), f"raised {error!r}"
