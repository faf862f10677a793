"""Traces: random programs recorded by the runtime, checked by the model.

``random_program`` is an async program of user operations drawn from a
``random.Random``: it runs unchanged under ``trio.run`` on ``ref`` and under
``sim.run``, with blocking operations started in background tasks so calls
overlap.  It uses only the functions of ``model_fns``, so the model knows
what each remote call does.

``translate`` turns the records of ``ref._history.recording`` into a model
history (``spec.refinement.Invoke``/``Respond``): only the master's own
top-level calls count (calls the runtime makes on its own behalf are marked
nested, and calls made inside functions on workers are the model's internal
moves); reads of ``live_refs`` are skipped, since they change nothing.
``check_records`` runs the history through the checker, including the
final check that no call left unanswered had to answer.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
from collections.abc import Iterable
from typing import Any

import model_fns as fns
import trio

import ref
from spec import model as m
from spec.refinement import Checker, HistoryEvent, Invoke, Respond

Record = dict[str, Any]

#: How many calls of a random program may wait in the background at once.
MAX_OVERLAP = 3

_FNS = {
    "model_fns.const": lambda args, refs: m.Const(_value(args[0])),
    "model_fns.fail": lambda args, refs: m.Fail(),
    "model_fns.my_id": lambda args, refs: m.MyId(),
    "model_fns.take_from": lambda args, refs: m.TakeFrom(refs[_rrid(args[0])]),
    "model_fns.put_into": lambda args, refs: m.PutInto(
        refs[_rrid(args[0])], _value(args[1])
    ),
    "model_fns.sleep_forever": lambda args, refs: m.Sleep(),
}
_MAP_FNS = {
    "model_fns.plus": lambda args: m.Plus(args[0]),
    "model_fns.fail_on": lambda args: m.FailOn(args[0]),
    "model_fns.map_my_id": lambda args: m.MapMyId(),
}
_QUERIES = {
    "procs": m.Procs,
    "workers": m.Workers,
    "nprocs": m.NProcs,
    "nworkers": m.NWorkers,
}
_REF_OPS = {
    "fetch": m.Fetch,
    "wait": m.Wait,
    "isready": m.IsReady,
    "take": m.Take,
    "close": m.Close,
    "isopen": m.IsOpen,
    "isempty": m.IsEmpty,
}


class Untranslatable(Exception):
    """A record the model has no operation for (the call is skipped)."""


def _rrid(data: Any) -> tuple[int, int]:
    return (data["rrid"][0], data["rrid"][1])


def _value(data: Any) -> m.Value:
    if isinstance(data, list):
        return tuple(_value(v) for v in data)
    if isinstance(data, dict):
        if "ref" in data:
            return (data["ref"], data["where"])
        if "Removal" in data.get("repr", ""):
            return None  # what rmprocs returns
        raise Untranslatable(f"value {data!r}")
    if isinstance(data, float):
        raise Untranslatable(f"value {data!r}")
    return data  # type: ignore[no-any-return]


class _Translator:
    def __init__(self) -> None:
        self.refs: dict[tuple[int, int], str] = {}
        self.pools: dict[int, str] = {}
        self.named: dict[int, str] = {}  # call -> name of what it creates

    def _pool(self, data: Any) -> str:
        if data is None:
            raise Untranslatable("no pool")
        return self.pools.setdefault(data["pool"], f"pool{len(self.pools)}")

    def op(self, record: Record) -> m.Op:
        api, args, kwargs = record["api"], record["args"], record["kwargs"]
        call = record["call"]
        if api == "addprocs":
            return m.AddProcs(args[0])
        if api == "rmprocs":
            return m.RmProcs(tuple(args))
        if api == "kill":
            return m.Crash(args[0])
        if api in _QUERIES:
            return _QUERIES[api]()
        if api in ("remotecall", "remotecall_fetch", "remotecall_wait", "remote_do"):
            return self._call(api, call, args)
        if api == "Future":
            self.named[call] = name = f"f{call}"
            return m.NewFuture(name, args[0] if args else 1)
        if api == "RemoteChannel":
            return self._channel(call, args)
        if api == "WorkerPool":
            return m.NewPool(
                self._pool(args[0]), tuple(args[1]) if len(args) > 1 else ()
            )
        if api == "put":
            return m.Put(self.refs[_rrid(args[0])], _value(args[1]))
        if api in _REF_OPS:
            return _REF_OPS[api](self.refs[_rrid(args[0])])
        if api == "pool.take":
            return m.PoolTake(self._pool(args[0]))
        if api == "pool.put":
            return m.PoolPut(self._pool(args[0]), args[1])
        if api == "pool.length":
            return m.PoolLength(self._pool(args[0]))
        if api == "pool.isready":
            return m.PoolIsReady(self._pool(args[0]))
        if api == "pool.workers":
            return m.PoolWorkers(self._pool(args[0]))
        if api == "push":
            return m.PoolPush(self._pool(args[0]), args[1])
        if api == "pmap":
            pool = kwargs.get("pool")
            fn = _MAP_FNS[args[0]["fn"]](args[0]["args"])
            items = tuple(args[1])
            return m.PMap(fn, items, None if pool is None else self._pool(pool))
        raise Untranslatable(api)

    def _call(self, api: str, call: int, args: list[Any]) -> m.Op:
        fn_name, bound = args[0]["fn"], args[0]["args"]
        target, rest = args[1], args[2:]
        if fn_name in ("model_fns.stash", "model_fns.unstash") and api.endswith(
            "fetch"
        ):
            if fn_name == "model_fns.stash":
                return m.Forward(self.refs[_rrid(rest[1])], target)
            raise Untranslatable("unstash: the name is the test's")
        build = _FNS.get(fn_name)
        if build is None:
            raise Untranslatable(fn_name)
        fn = build([*bound, *rest], self.refs)
        if isinstance(target, dict):
            if api != "remotecall_fetch":
                raise Untranslatable(f"{api} on a pool")
            return m.PoolCall(self._pool(target), fn)
        if api in ("remotecall", "remotecall_wait"):
            self.named[call] = name = f"f{call}"
            kind = m.RemoteCall if api == "remotecall" else m.RemoteCallWait
            return kind(target, fn, name)
        if api == "remotecall_fetch":
            return m.RemoteCallFetch(target, fn)
        return m.RemoteDo(target, fn)

    def _channel(self, call: int, args: list[Any]) -> m.Op:
        self.named[call] = name = f"c{call}"
        if args and isinstance(args[0], int):
            return m.NewChannel(name, args[0], 1)
        factory = args[0] if args else None
        pid = args[1] if len(args) > 1 else 1
        capacity: int | None = 1
        if factory is not None:
            if factory["fn"] != "ref._channel.Channel":
                raise Untranslatable(f"channel factory {factory['fn']}")
            size = factory["args"][0] if factory["args"] else 1
            capacity = None if size == math.inf else int(size)
        return m.NewChannel(name, pid, capacity)

    def outcome(self, call: int, record: Record) -> m.Outcome:
        if record["kind"] == "api_raise":
            return m.Raised(record["error"], record["error_pid"], record["inner"])
        value = record["value"]
        if isinstance(value, dict) and "rrid" in value and call in self.named:
            self.refs[_rrid(value)] = self.named[call]
        if isinstance(value, dict) and "pool" in value:
            return m.Returned(None)
        return m.Returned(_value(value))


def translate(records: Iterable[Record]) -> list[HistoryEvent]:
    """The model history of the master's top-level calls in ``records``."""
    translator = _Translator()
    history: list[HistoryEvent] = []
    kept: set[int] = set()
    defaults: set[int] = set()
    for record in records:
        call = record["call"]
        if record["kind"] == "api_call":
            if record["pid"] != 1 or record["nested"]:
                continue
            if record["api"] == "default_worker_pool":
                defaults.add(call)
                continue
            try:
                op = translator.op(record)
            except Untranslatable:
                continue
            kept.add(call)
            history.append(Invoke(call, op))
        elif call in defaults and record["kind"] == "api_return":
            translator.pools[record["value"]["pool"]] = "default"
        elif call in kept:
            history.append(Respond(call, translator.outcome(call, record)))
    return history


def check_records(records: list[Record], workers: Iterable[int] = ()) -> Checker:
    """Check a recorded run against the model; raises Refuted if refuted.

    Calls left unanswered at the end of the trace must be ones the model
    allows to be still waiting.
    """
    checker = Checker(m.Model.start(workers))
    for event in translate(records):
        if isinstance(event, Invoke):
            checker.invoke(event.cid, event.op)
        else:
            checker.respond(event.cid, event.outcome)
    checker.check_quiet(checker.pending())
    return checker


# --------------------------------------------------------------- programs


async def random_program(rng: random.Random, steps: int = 30) -> None:
    """A random user program on the current cluster (recorded by the caller).

    Operations that may block run in background tasks; after the last step
    the program waits a while, then cancels whatever still waits.
    """
    channels: list[Any] = []
    futures: list[Any] = []
    pools: list[Any] = []
    fetching: set[Any] = set()
    counter = iter(range(1000, 10**9))

    def live() -> list[int]:
        return [p for p in ref.procs() if p != 1]

    def some_fn(target: int) -> tuple[Any, tuple[Any, ...]]:
        kind = rng.randrange(6)
        if kind == 3 and channels:
            return fns.take_from, (rng.choice(channels),)
        if kind == 4 and channels:
            return fns.put_into, (rng.choice(channels), next(counter))
        if kind == 5 and target != 1:
            return fns.sleep_forever, ()
        return [
            (fns.const, (rng.randrange(4),)),
            (fns.fail, ()),
            (fns.my_id, ()),
        ][kind % 3]

    async def quietly(afn: Any, *args: Any) -> None:
        # The recording has the error; the checker judges it.
        with contextlib.suppress(Exception):
            await afn(*args)

    # At most a few calls overlap: every waiting call multiplies the states
    # the checker must consider.
    outstanding = 0

    async def background(afn: Any, *args: Any) -> None:
        nonlocal outstanding
        try:
            await quietly(afn, *args)
        finally:
            outstanding -= 1

    def spawn(afn: Any, *args: Any) -> None:
        nonlocal outstanding
        if outstanding < MAX_OVERLAP:
            outstanding += 1
            nursery.start_soon(background, afn, *args)

    async with trio.open_nursery() as nursery:
        await quietly(ref.addprocs, 2)
        for _ in range(steps):
            workers = live()
            targets = [1, *workers]
            choice = rng.randrange(12)
            if choice == 0 and len(workers) < 4:
                await quietly(ref.addprocs, 1)
            elif choice == 1 and len(workers) >= 2:
                how = rng.randrange(2)
                pid = rng.choice(workers)
                if how:
                    await quietly(ref.rmprocs, pid)
                else:
                    await quietly(ref.faults.kill, pid)
                    with trio.move_on_after(10):
                        while pid in ref.procs():
                            await trio.sleep(0.01)
            elif choice == 2:
                target = rng.choice(targets)
                f, args = some_fn(target)
                api = rng.choice([ref.remotecall, ref.remotecall_fetch, ref.remote_do])
                if api is ref.remotecall:
                    with contextlib.suppress(Exception):
                        futures.append(await ref.remotecall(f, target, *args))
                else:
                    spawn(api, f, target, *args)
            elif choice == 3:
                capacity = rng.choice([1, 2, math.inf])
                factory = functools.partial(ref.Channel, capacity)
                channels.append(ref.RemoteChannel(factory, rng.choice(targets)))
            elif choice in (4, 5) and channels:
                chan = rng.choice(channels)
                if choice == 4:
                    spawn(ref.put, chan, next(counter))
                else:
                    spawn(ref.take, chan)
            elif choice == 6 and channels:
                chan = rng.choice(channels)
                op = rng.choice([ref.isready, ref.isempty, ref.isopen, ref.close])
                await quietly(op, chan)
            elif choice == 7:
                futures.append(ref.Future(rng.choice(targets)))
            elif choice == 8 and futures:
                fut = rng.choice(futures)
                if rng.randrange(2):
                    fetching.add(fut)
                    spawn(ref.fetch, fut)
                elif fut not in fetching:
                    # A put overtaking a pending fetch of the same Future
                    # strands the fetch (test_trace_refinement.
                    # test_fetch_overtaken_by_own_put_answers).
                    await quietly(ref.put, fut, next(counter))
            elif choice == 9:
                pools.append(ref.WorkerPool(rng.sample(workers, k=len(workers) // 2)))
            elif choice == 10 and pools:
                # Only takes that will not wait: a take waiting on a pool
                # whose last member then leaves never wakes in ref (see
                # test_waiting_take_fails_when_last_member_leaves).
                pool = rng.choice(pools)
                if await pool.isready():
                    await quietly(pool.take)
            elif choice == 11:
                items = list(range(rng.randrange(1, 4)))
                await quietly(ref.pmap, functools.partial(fns.plus, 1), items)
            await trio.sleep(0)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
