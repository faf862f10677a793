"""Reading recorded runs as model histories, and checking them.

A run is recorded as API-level records (``ref._history`` documents them):
``api_call`` when a public API function is called, then ``api_return`` or
``api_raise`` when it answers.  They come in two kinds of file:

* a simulator trace (``sim --trace`` or ``sim.run(..., trace=path)``):
  a header line naming the format and its version, then events, the
  records among them (format version 2 and later);
* a history recorded from a ``ref`` run: the records alone, one JSON
  object per line, as ``ref._history.recording`` hands them to its sink.

``read_records`` accepts either and returns the records of each cluster
the run opened, in order (from a trace, with the events the model needs
besides: faults, resets and launches).  ``translate`` turns one cluster's
records into a ``spec.refinement`` history: only the master's own
top-level calls count (calls the runtime makes on its own behalf are marked
nested, and calls made inside functions on workers are the model's internal
moves), and a call the model has no operation for is left out and counted.

A simulator's faults become operations of their own, each answered at
once: a crash is ``Crash(pid)``, and so is a reset of a connection between
the master and a worker (by a reset fault or a partition outlasting the
keep-alive), the first time.  Kills and interrupts are API calls, recorded
as such.  Failed launches during an ``addprocs`` set its ``failed``
count (at least 1 when it raised LaunchError: a launch that was merely too
slow is not marked in the trace).  A reset between two workers is not
modelled, and raises ModelError.  A hang never resumed or a partition never
healed makes the final liveness check meaningless, so it is skipped.  Leaving a
call out is sound only when it changes nothing the model tracks, so a run
meant for checking should use the model's vocabulary of remote functions:
the runtime counterparts of ``Const``, ``Fail``, ``MyId``, ``TakeFrom``,
``PutInto``, ``Sleep``, ``Plus``, ``FailOn`` and ``MapMyId``, found by
name in one module (``model_fns`` by default: the tests' module).

``check_file`` does the whole job and ``main`` is the command line,
``python -m spec.refinement TRACE``.  Pure: it reads the text it is given
and imports neither ``ref`` nor ``sim``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import model as m
from .lifecycles import ModelError
from .refinement import Checker, HistoryEvent, Invoke, Refuted, Respond

__all__ = [
    "RECORDED_APIS",
    "SIM_TRACE_FORMAT",
    "FileVerdict",
    "Untranslatable",
    "check_file",
    "check_records",
    "main",
    "read_records",
    "translate",
]

Record = dict[str, Any]

#: The simulator's trace format name, and the first version with records.
SIM_TRACE_FORMAT = "distref-sim-trace"
FIRST_VERSION_WITH_RECORDS = 2
#: The newest trace format version this reader knows (``sim.FORMAT_VERSION``).
LATEST_VERSION = 2

#: The public functions ``ref._history`` wraps, recorded under their names.
RECORDED_FUNCTIONS = (
    "addprocs",
    "rmprocs",
    "procs",
    "workers",
    "nprocs",
    "nworkers",
    "remotecall",
    "remotecall_fetch",
    "remotecall_wait",
    "remote_do",
    "fetch",
    "wait",
    "isready",
    "put",
    "take",
    "close",
    "isopen",
    "isempty",
    "pmap",
    "push",
    "default_worker_pool",
    "interrupt",
)
#: Pool methods it wraps, recorded as "pool.<name>".
RECORDED_POOL_METHODS = ("take", "put", "length", "isready", "workers")
#: Every API name a recording writes: a record naming any other is not
#: from a recording.
RECORDED_APIS = frozenset(
    {
        *RECORDED_FUNCTIONS,
        *(f"pool.{name}" for name in RECORDED_POOL_METHODS),
        "kill",
        "WorkerPool",
        "Future",
        "RemoteChannel",
    }
)

_RECORD_KINDS = frozenset({"api_call", "api_return", "api_raise"})
#: Trace events the translation needs besides the records.
_EVENT_KINDS = frozenset({"fault", "reset", "launch"})
#: Call ids of the operations faults become: below any real call's.
_FAULT_CALLS = -1


class Untranslatable(ModelError):
    """A record the model has no operation for (the call is left out)."""


def read_records(text: str, *, source: str = "input") -> list[list[Record]]:
    """The API records in ``text``, one list per cluster the run opened.

    ``text`` is a simulator trace (header first) or a plain history of
    records.  ModelError, naming the line, for: an empty text; a header of
    another format, or of a version older than 2 (no records) or newer
    than this reader knows; a line that is not a JSON object; in a file
    without header, a line that is not a record; a record missing a field
    or calling an API that is never recorded (``RECORDED_APIS``).
    """
    clusters: list[list[Record]] = [[]]
    seen = trace = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{where}: not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ModelError(f"{where}: not a JSON object")
        if not seen and "format" in record:
            seen = trace = True
            _check_header(record, source)
            continue
        seen = True
        kind = record.get("kind")
        if kind == "cluster":
            if clusters[-1]:
                clusters.append([])
        elif kind in _RECORD_KINDS or kind in _EVENT_KINDS:
            _check_record(record, where)
            clusters[-1].append(record)
        elif not trace:
            # A recorded history holds records only: anything else means
            # the file is not what it was taken for.
            raise ModelError(
                f"{where}: kind={kind!r} is not an API record and the file has "
                f"no {SIM_TRACE_FORMAT!r} header: not a trace or a recorded history"
            )
    if not seen:
        raise ModelError(f"{source}: empty: no header and no records")
    return clusters


def _check_header(header: Record, source: str) -> None:
    if header["format"] != SIM_TRACE_FORMAT:
        raise ModelError(
            f"{source}: format={header['format']!r} is not a simulator trace "
            f"({SIM_TRACE_FORMAT!r})"
        )
    version = header.get("version")
    if not isinstance(version, int) or version < FIRST_VERSION_WITH_RECORDS:
        raise ModelError(
            f"{source}: trace format version={version!r} carries no API history; "
            f"record the run again (version {FIRST_VERSION_WITH_RECORDS} or later)"
        )
    if version > LATEST_VERSION:
        raise ModelError(
            f"{source}: trace format version={version!r} is unknown (this reader "
            f"knows versions {FIRST_VERSION_WITH_RECORDS} to {LATEST_VERSION}); "
            "use a spec as new as the simulator that wrote it"
        )


#: Fields each kind of record must have, with their JSON types.
_FIELDS: dict[str, tuple[tuple[str, type | tuple[type, ...]], ...]] = {
    "api_call": (("call", int), ("pid", int), ("api", str), ("args", list)),
    "api_return": (("call", int), ("value", object)),
    "api_raise": (("call", int), ("error", str)),
    "fault": (("fault", str),),
    "reset": (("a", int), ("b", int)),
    "launch": (),
}


def _check_record(record: Record, where: str) -> None:
    kind = record["kind"]
    for field, types in _FIELDS[kind]:
        if field not in record:
            raise ModelError(f"{where}: {kind} record without {field!r}")
        value = record[field]
        if not isinstance(value, types) or (types is int and isinstance(value, bool)):
            raise ModelError(f"{where}: {kind} record with {field}={value!r}")
    if kind == "api_call" and record["api"] not in RECORDED_APIS:
        raise ModelError(
            f"{where}: api={record['api']!r} is not an API a recording reports "
            "(see spec.records.RECORDED_APIS)"
        )
    if kind == "api_call" and not isinstance(record.get("kwargs", {}), dict):
        raise ModelError(f"{where}: api_call record with kwargs={record['kwargs']!r}")


# ------------------------------------------------------------ translation

FnBuilder = Callable[[list[Any], Mapping[tuple[int, int], str]], m.Fn]

_QUERIES: dict[str, Callable[[], m.Op]] = {
    "procs": m.Procs,
    "workers": m.Workers,
    "nprocs": m.NProcs,
    "nworkers": m.NWorkers,
}
_REF_OPS: dict[str, Callable[[str], m.Op]] = {
    "fetch": m.Fetch,
    "wait": m.Wait,
    "isready": m.IsReady,
    "take": m.Take,
    "close": m.Close,
    "isopen": m.IsOpen,
    "isempty": m.IsEmpty,
}
_CALLS = ("remotecall", "remotecall_fetch", "remotecall_wait", "remote_do")


def _rrid(data: Any) -> tuple[int, int]:
    if not isinstance(data, dict) or "rrid" not in data:
        raise Untranslatable(f"{data!r} is not a reference")
    return (int(data["rrid"][0]), int(data["rrid"][1]))


def _value(data: Any) -> m.Value:
    if isinstance(data, list):
        return tuple(_value(v) for v in data)
    if isinstance(data, dict):
        if "ref" in data:
            return (str(data["ref"]), int(data["where"]))
        if "Removal" in data.get("repr", ""):
            return None  # what rmprocs returns
        raise Untranslatable(f"value {data!r}")
    if isinstance(data, float):
        raise Untranslatable(f"value {data!r}")
    if data is None or isinstance(data, bool | int | str):
        return data
    raise Untranslatable(f"value {data!r}")


def _capacity(data: Any) -> int | None:
    """A channel factory's size argument as the model's capacity."""
    if isinstance(data, dict) and data.get("float") == "inf":
        return None
    if isinstance(data, float) and data == math.inf:
        return None  # written before infinities were encoded
    if isinstance(data, int) and not isinstance(data, bool) and data >= 0:
        return data
    raise Untranslatable(f"channel size {data!r}")


class _Translator:
    def __init__(self, module: str) -> None:
        self.refs: dict[tuple[int, int], str] = {}
        self.pools: dict[int, str] = {}
        self.named: dict[int, str] = {}  # call -> name of what it creates
        self.fns: dict[str, FnBuilder] = {
            f"{module}.const": lambda a, r: m.Const(_value(a[0])),
            f"{module}.fail": lambda a, r: m.Fail(),
            f"{module}.my_id": lambda a, r: m.MyId(),
            f"{module}.take_from": lambda a, r: m.TakeFrom(r[_rrid(a[0])]),
            f"{module}.put_into": lambda a, r: m.PutInto(r[_rrid(a[0])], _value(a[1])),
            f"{module}.sleep_forever": lambda a, r: m.Sleep(),
        }
        self.map_fns: dict[str, Callable[[list[Any]], m.MapFn]] = {
            f"{module}.plus": lambda a: m.Plus(int(a[0])),
            f"{module}.fail_on": lambda a: m.FailOn(int(a[0])),
            f"{module}.map_my_id": lambda a: m.MapMyId(),
        }
        self.module = module

    def _pool(self, data: Any) -> str:
        if not isinstance(data, dict) or "pool" not in data:
            raise Untranslatable(f"{data!r} is not a pool")
        return self.pools.setdefault(data["pool"], f"pool{len(self.pools)}")

    def _ref(self, data: Any) -> str:
        name = self.refs.get(_rrid(data))
        if name is None:
            raise Untranslatable(f"reference {data!r} was not made by a kept call")
        return name

    def op(self, record: Record) -> m.Op:
        api, args, kwargs = record["api"], record["args"], record.get("kwargs", {})
        call = record["call"]
        if api == "addprocs" and args and isinstance(args[0], int):
            return m.AddProcs(args[0])
        if api == "rmprocs" and all(isinstance(a, int) for a in args):
            return m.RmProcs(tuple(args))
        if api == "kill":
            return m.Crash(args[0])
        if api == "interrupt" and all(isinstance(a, int) for a in args) and args:
            return m.Interrupt(tuple(args))
        if api in _QUERIES and not args:
            return _QUERIES[api]()
        if api in _CALLS:
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
        if api == "put" and len(args) == 2 and "ref" in args[0]:
            return m.Put(self._ref(args[0]), _value(args[1]))
        if api in _REF_OPS and args and "ref" in args[0]:
            return _REF_OPS[api](self._ref(args[0]))
        if api.startswith("pool."):
            return self._pool_op(api, args)
        if api == "push":
            return m.PoolPush(self._pool(args[0]), args[1])
        if api == "pmap":
            return self._pmap(args, kwargs)
        raise Untranslatable(api)

    def _pool_op(self, api: str, args: list[Any]) -> m.Op:
        pool = self._pool(args[0])
        if api == "pool.take":
            return m.PoolTake(pool)
        if api == "pool.put":
            return m.PoolPut(pool, args[1])
        if api == "pool.length":
            return m.PoolLength(pool)
        if api == "pool.isready":
            return m.PoolIsReady(pool)
        if api == "pool.workers":
            return m.PoolWorkers(pool)
        raise Untranslatable(api)

    def _pmap(self, args: list[Any], kwargs: dict[str, Any]) -> m.Op:
        if len(args) != 2 or not isinstance(args[0], dict) or "fn" not in args[0]:
            raise Untranslatable("pmap over other than one list")
        if set(kwargs) - {"pool", "on_error", "retry_delays"}:
            raise Untranslatable(f"pmap options {sorted(kwargs)}")
        build = self.map_fns.get(args[0]["fn"])
        if build is None:
            raise Untranslatable(args[0]["fn"])
        on_error: m.Const | None = None
        if "on_error" in kwargs:
            handler = kwargs["on_error"]
            if handler.get("fn") != f"{self.module}.const_on_error":
                raise Untranslatable(f"on_error {handler!r}")
            on_error = m.Const(_value(handler["args"][0]))
        retry = kwargs.get("retry_delays", [])
        if not isinstance(retry, list):
            raise Untranslatable(f"retry_delays {retry!r}")
        pool = kwargs.get("pool")
        return m.PMap(
            build(args[0]["args"]),
            tuple(int(x) for x in args[1]),
            None if pool is None else self._pool(pool),
            on_error=on_error,
            retries=len(retry),
        )

    def _call(self, api: str, call: int, args: list[Any]) -> m.Op:
        if len(args) < 2 or not isinstance(args[0], dict) or "fn" not in args[0]:
            raise Untranslatable(f"{api} without a function and a target")
        fn_name, bound = args[0]["fn"], args[0]["args"]
        target, rest = args[1], args[2:]
        if fn_name == f"{self.module}.stash" and api == "remotecall_fetch":
            return m.Forward(self._ref(rest[1]), target)
        build = self.fns.get(fn_name)
        if build is None:
            raise Untranslatable(fn_name)
        fn = build([*bound, *rest], self.refs)
        if isinstance(target, dict):
            if api == "remotecall_fetch":
                return m.PoolCall(self._pool(target), fn)
            if api == "remotecall":
                self.named[call] = name = f"f{call}"
                return m.PoolRemoteCall(self._pool(target), fn, name)
            raise Untranslatable(f"{api} on a pool")
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
            if factory.get("fn") != "ref._channel.Channel":
                raise Untranslatable(f"channel factory {factory!r}")
            capacity = _capacity(factory["args"][0]) if factory["args"] else 1
        return m.NewChannel(name, pid, capacity)

    def outcome(self, call: int, record: Record) -> m.Outcome:
        if record["kind"] == "api_raise":
            return m.Raised(
                record["error"], record.get("error_pid"), record.get("inner")
            )
        value = record["value"]
        if isinstance(value, dict) and "rrid" in value and call in self.named:
            self.refs[_rrid(value)] = self.named[call]
        if isinstance(value, dict) and "pool" in value:
            return m.Returned(None)
        return m.Returned(_value(value))


@dataclass(frozen=True, slots=True)
class Translation:
    """A cluster's history, and the master's calls left out of it.

    ``liveness``: whether the run may be asked to have answered every call
    it had to (False after a hang never resumed or a partition never
    healed).
    """

    history: list[HistoryEvent]
    skipped: dict[str, int]
    liveness: bool = True


class _Faults:
    """Turns a trace's fault, reset and launch events into history."""

    def __init__(self, history: list[HistoryEvent]) -> None:
        self.history = history
        self.next_cid = _FAULT_CALLS
        self.lost: set[int] = set()
        self.hung: set[int] = set()
        self.cut: set[tuple[int, ...]] = set()
        self.addprocs: tuple[int, int] | None = None  # (call, index in history)
        self.failed_launches = 0

    def _instant(self, op: m.Op) -> None:
        self.history += [Invoke(self.next_cid, op), Respond(self.next_cid, _NONE)]
        self.next_cid -= 1

    def event(self, record: Record) -> None:
        kind = record["kind"]
        if kind == "launch":
            self.failed_launches += bool(record.get("fail"))
        elif kind == "reset":
            # Other resets follow from something already in the history
            # (a process that died resets its connections).
            if record.get("why") in ("fault", "partition"):
                self._reset(int(record["a"]), int(record["b"]))
        else:
            self._fault(record)

    def _reset(self, a: int, b: int) -> None:
        if m.MASTER not in (a, b):
            raise ModelError(
                f"a reset between workers {a} and {b} is not modelled; this "
                "trace cannot be checked"
            )
        pid = b if a == m.MASTER else a
        if pid not in self.lost:
            self.lost.add(pid)
            self._instant(m.Crash(pid))

    def _fault(self, record: Record) -> None:
        fault = record["fault"]
        pid = record.get("pid")
        if record.get("skipped") or fault in _NOT_IN_HISTORY:
            return
        if fault == "crash" and isinstance(pid, int):
            self.lost.add(pid)
            self._instant(m.Crash(pid))
        elif fault == "hang" and isinstance(pid, int):
            self.hung.add(pid)
        elif fault == "resume" and isinstance(pid, int):
            self.hung.discard(pid)
        elif fault == "partition":
            self.cut.add(tuple(record["pids"]))
        elif fault == "heal":
            self.cut.discard(tuple(record["pids"]))
        elif fault not in ("reset", "partition_break"):
            # Those two show as reset events, which _reset handles.
            raise ModelError(f"fault {fault!r} is not modelled")

    def started(self, call: int, op: m.Op) -> None:
        if isinstance(op, m.AddProcs):
            self.addprocs = (call, len(self.history) - 1)
            self.failed_launches = 0

    def answered(self, call: int, outcome: m.Outcome) -> m.Outcome:
        """``outcome`` as the model names it (the call's answer)."""
        if self.addprocs is None or self.addprocs[0] != call:
            return outcome
        if isinstance(outcome, m.Raised) and outcome.error == "LaunchErrorGroup":
            # The group of several launch errors is itself a LaunchError.
            outcome = m.Raised("LaunchError")
        index = self.addprocs[1]
        self.addprocs = None
        failed = self.failed_launches
        if isinstance(outcome, m.Raised) and outcome.error.startswith("LaunchError"):
            failed = max(failed, 1)
        invoke = self.history[index]
        assert isinstance(invoke, Invoke) and isinstance(invoke.op, m.AddProcs)
        if failed:
            op = m.AddProcs(invoke.op.n, min(failed, invoke.op.n))
            self.history[index] = Invoke(call, op)
        return outcome


_NONE = m.Returned(None)

#: Faults that add nothing to the history: ``kill`` and ``interrupt`` come
#: from API calls, recorded as such; slowness is timing only.
_NOT_IN_HISTORY = frozenset({"kill", "interrupt", "slow", "slow_end"})


def translate(records: Iterable[Record], *, module: str = "model_fns") -> Translation:
    """The model history of the master's top-level calls in ``records``.

    ``module`` names the module of the runtime counterparts of the model's
    functions.  A call with no model operation is left out (counted by API
    name in ``skipped``), and so is its answer.
    """
    translator = _Translator(module)
    history: list[HistoryEvent] = []
    faults = _Faults(history)
    skipped: dict[str, int] = {}
    kept: set[int] = set()
    defaults: set[int] = set()
    for record in records:
        if record["kind"] in _EVENT_KINDS:
            faults.event(record)
            continue
        call = record["call"]
        if record["kind"] == "api_call":
            if record["pid"] != m.MASTER or record.get("nested"):
                continue
            if record["api"] == "default_worker_pool":
                defaults.add(call)
                continue
            try:
                op = translator.op(record)
            except (Untranslatable, KeyError, IndexError, TypeError, ValueError):
                skipped[record["api"]] = skipped.get(record["api"], 0) + 1
                continue
            kept.add(call)
            history.append(Invoke(call, op))
            faults.started(call, op)
        elif call in defaults and record["kind"] == "api_return":
            translator.pools[record["value"]["pool"]] = "default"
        elif call in kept:
            outcome = faults.answered(call, translator.outcome(call, record))
            history.append(Respond(call, outcome))
    return Translation(history, skipped, not faults.hung and not faults.cut)


def check_records(
    records: Iterable[Record],
    workers: Iterable[int] = (),
    *,
    module: str = "model_fns",
    topology: m.Topology = "all_to_all",
) -> Checker:
    """Check one cluster's records against the model; raises Refuted.

    The model starts with ``workers`` running.  Calls left unanswered at
    the end must be ones the model allows to be still waiting.
    """
    translation = translate(records, module=module)
    checker = Checker(m.Model.start(workers, topology=topology))
    for event in translation.history:
        if isinstance(event, Invoke):
            checker.invoke(event.cid, event.op)
        else:
            checker.respond(event.cid, event.outcome)
    if translation.liveness:
        checker.check_quiet(checker.pending())
    return checker


@dataclass(frozen=True, slots=True)
class FileVerdict:
    """What ``check_file`` found: calls checked and left out, per cluster."""

    clusters: int
    checked: int
    skipped: dict[str, int]


def check_file(
    path: str | Path, *, module: str = "model_fns", topology: m.Topology = "all_to_all"
) -> FileVerdict:
    """Check every cluster recorded in the file at ``path``; raises Refuted.

    Each cluster starts without workers: its records must include the
    ``addprocs`` calls that made them.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(
            f"{path}: not UTF-8 text (byte {exc.start}): not a trace or a "
            "recorded history"
        ) from None
    checked = 0
    skipped: dict[str, int] = {}
    clusters = read_records(text, source=str(path))
    for index, records in enumerate(clusters):
        translation = translate(records, module=module)
        for api, n in translation.skipped.items():
            skipped[api] = skipped.get(api, 0) + n
        checked += sum(isinstance(e, Invoke) for e in translation.history)
        try:
            check_records(records, module=module, topology=topology)
        except Refuted as exc:
            exc.add_note(f"{path}: cluster {index}")
            raise
    return FileVerdict(len(clusters), checked, skipped)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m spec.refinement TRACE...``: 0 admitted, 1 refuted, 2 bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m spec.refinement",
        description="Decide whether the model admits recorded runs: simulator "
        "traces or histories recorded from ref.",
    )
    parser.add_argument("files", nargs="+", metavar="TRACE", help="files to check")
    parser.add_argument(
        "--functions",
        default="model_fns",
        metavar="MODULE",
        help="module of the model's remote functions (default: model_fns)",
    )
    parser.add_argument(
        "--topology",
        choices=["all_to_all", "master_worker"],
        default="all_to_all",
        help="the cluster's topology (default: all_to_all)",
    )
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        try:
            verdict = check_file(path, module=args.functions, topology=args.topology)
        except Refuted as exc:
            notes = "".join(f"{n}\n" for n in getattr(exc, "__notes__", []))
            sys.stdout.write(f"{path}: REFUTED\n{exc}\n{notes}")
            status = max(status, 1)
            continue
        except (OSError, ModelError) as exc:
            # Most messages start with the file's name already: once is enough.
            message = str(exc)
            if isinstance(exc, OSError) and exc.strerror:
                message = exc.strerror
            if not message.startswith(path):
                message = f"{path}: {message}"
            sys.stderr.write(f"cannot check {message}\n")
            status = 2
            continue
        left_out = ", ".join(
            f"{api} x{n}" for api, n in sorted(verdict.skipped.items())
        )
        sys.stdout.write(
            f"{path}: admitted ({verdict.checked} calls in {verdict.clusters} "
            f"cluster(s); left out: {left_out or 'none'})\n"
        )
    return status
