"""Does the model admit an observed history?  A checker for ``spec.model``.

A history is a sequence of *invocations* (call ``cid`` started operation
``op``) and *responses* (call ``cid`` returned or raised), in the order they
were observed.  ``Checker`` keeps every model state consistent with the
history so far (the *candidates*).  A response keeps the states, reachable
through internal moves, in which that call has taken effect with a result
that admits what was observed; if none is left, the history is refuted and
``Refuted`` says what the model would have allowed instead.

Observing a response later than it happened is always safe (the call's
effect may then lie anywhere in a longer interval), so a test harness that
polls for completions may report them late; it must report invocations
before the operation starts.

Recorded runs (simulator trace files, histories recorded from ``ref``) are
read by ``spec.records``; from the command line, ``python -m
spec.refinement TRACE...`` prints the verdict and exits 1 on a refutation.

Two more questions a test needs answered:

* ``must_resolve()``: calls that have a response in every *settled* state
  (one where no required move is left).  A correct system answers them
  eventually; a test waits for them, with a bound.
* ``check_quiet(unresolved)``: after waiting, the calls still unanswered
  must be allowed to be unanswered by some settled state; otherwise the
  system hung on a call it had to answer.

The search keeps distinct states only (``Model.key``), and refuses to grow
past ``limit`` states rather than exhaust memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Literal, TypeAlias

from . import model as m
from .lifecycles import ModelError

__all__ = [
    "Checker",
    "HistoryEvent",
    "Invoke",
    "Refuted",
    "Respond",
    "StateExplosion",
    "check_history",
    "decode",
    "dump_history",
    "encode",
    "load_history",
]


class Refuted(ModelError):
    """The model does not admit the observed history.

    ``history`` is the history up to and including the offending event,
    ``allowed`` what the model would have accepted for that call (empty when
    the complaint is that the call never answered).
    """

    def __init__(
        self,
        message: str,
        history: list[HistoryEvent],
        allowed: list[m.Expect] | None = None,
    ) -> None:
        lines = [message]
        if allowed:
            lines.append("the model allows: " + "; ".join(sorted(map(repr, allowed))))
        lines.append("history (oldest first):")
        lines += [f"  {event}" for event in history]
        super().__init__("\n".join(lines))
        self.history = history
        self.allowed = allowed or []


class StateExplosion(ModelError):
    """The set of candidate states grew past the checker's limit."""


@dataclass(frozen=True, slots=True)
class Invoke:
    """Call ``cid`` started ``op``."""

    cid: int
    op: m.Op

    def __str__(self) -> str:
        return f"[{self.cid}] invoke {self.op}"


@dataclass(frozen=True, slots=True)
class Respond:
    """Call ``cid`` responded with ``outcome``."""

    cid: int
    outcome: m.Outcome

    def __str__(self) -> str:
        return f"[{self.cid}] -> {self.outcome}"


HistoryEvent: TypeAlias = Invoke | Respond


def _dedupe(models: Iterable[m.Model]) -> list[m.Model]:
    unique: dict[tuple[object, ...], m.Model] = {}
    for model in models:
        unique.setdefault(model.key(), model)
    return list(unique.values())


class Checker:
    """Feed a history event by event; raises ``Refuted`` on a violation."""

    def __init__(self, start: m.Model, *, limit: int = 50_000) -> None:
        start.check()
        self.candidates: list[m.Model] = [start]
        self.history: list[HistoryEvent] = []
        self.ops: dict[int, m.Op] = {}
        self.limit = limit

    # -------------------------------------------------------------- search

    def _closure(self, models: list[m.Model], *, optional: bool) -> Iterator[m.Model]:
        """``models`` and every state internal moves reach from them."""
        seen = {model.key() for model in models}
        frontier = list(models)
        yield from frontier
        while frontier:
            nxt = []
            for model in frontier:
                for _, succ in model.successors(optional=optional):
                    key = succ.key()
                    if key in seen:
                        continue
                    seen.add(key)
                    if len(seen) > self.limit:
                        raise StateExplosion(
                            f"more than {self.limit} candidate states; shorten "
                            "the history or overlap fewer calls"
                        )
                    succ.check()
                    nxt.append(succ)
                    yield succ
            frontier = nxt

    def settled(self) -> list[m.Model]:
        """Candidate states after every required move has been made."""
        return [
            model
            for model in self._closure(self.candidates, optional=False)
            if next(model.successors(optional=False), None) is None
        ]

    # ------------------------------------------------------------- feeding

    def invoke(self, cid: int, op: m.Op) -> None:
        """Call ``cid`` started ``op``."""
        if cid in self.ops:
            raise ModelError(f"call id {cid} was already invoked")
        self.history.append(Invoke(cid, op))
        self.ops[cid] = op
        for model in self.candidates:
            model.invoke(cid, op)

    def respond(self, cid: int, outcome: m.Outcome) -> None:
        """Call ``cid`` answered ``outcome``; Refuted if no state allows it."""
        if cid not in self.ops:
            raise ModelError(f"response for call {cid}, which was never invoked")
        self.history.append(Respond(cid, outcome))
        kept: list[m.Model] = []
        allowed: list[m.Expect] = []
        for model in self._closure(self.candidates, optional=True):
            expect = model.expected(cid)
            if not model.is_done(cid) or expect is None:
                continue
            if m.admits(expect, outcome):
                survivor = model.clone()
                survivor.finish(cid)
                kept.append(survivor)
            elif expect not in allowed:
                allowed.append(expect)
        if not kept:
            raise Refuted(
                f"call {cid} ({self.ops[cid]}) answered {outcome}, which the "
                "model does not allow",
                list(self.history),
                allowed,
            )
        del self.ops[cid]
        self.candidates = _dedupe(kept)

    # ------------------------------------------------------------ liveness

    def pending(self) -> set[int]:
        """Calls invoked and not yet answered."""
        return set(self.ops)

    def must_resolve(self) -> set[int]:
        """Unanswered calls that answer in every settled state."""
        settled = self.settled()
        return {
            cid
            for cid in self.ops
            if settled and all(model.is_done(cid) for model in settled)
        }

    def expectations(self, cid: int) -> list[m.Expect]:
        """Every response the model would accept for ``cid`` now."""
        found: list[m.Expect] = []
        for model in self._closure(self.candidates, optional=True):
            expect = model.expected(cid)
            if model.is_done(cid) and expect is not None and expect not in found:
                found.append(expect)
        return found

    def may_respond(self, cid: int) -> bool:
        """Whether some reachable state has a response ready for ``cid``."""
        return any(
            model.is_done(cid)
            for model in self._closure(self.candidates, optional=True)
        )

    def check_quiet(self, unresolved: Iterable[int]) -> None:
        """The system went quiet with ``unresolved`` calls unanswered.

        Raises Refuted unless some settled state leaves all of them
        unanswered too (so none of them had to answer).
        """
        waiting = set(unresolved)
        if not waiting:
            return
        if any(
            not any(model.is_done(cid) for cid in waiting) for model in self.settled()
        ):
            return
        must = sorted(self.must_resolve() & waiting)
        named = ", ".join(f"[{cid}] {self.ops[cid]}" for cid in must) or sorted(waiting)
        raise Refuted(
            f"the system went quiet, but these calls had to answer: {named}",
            list(self.history),
        )


def check_history(start: m.Model, history: Iterable[HistoryEvent]) -> Checker:
    """Run ``history`` through a Checker from ``start``; returns the checker."""
    checker = Checker(start)
    for event in history:
        if isinstance(event, Invoke):
            checker.invoke(event.cid, event.op)
        else:
            checker.respond(event.cid, event.outcome)
    return checker


# ------------------------------------------------------------- encoding
#
# Histories travel as JSON lines: {"invoke": cid, "op": ...} and
# {"respond": cid, "outcome": ...}.  Model dataclasses encode as objects with
# a "type" field; tuples as lists, restored as tuples.

_TYPES: dict[str, type] = {
    name: obj
    for name, obj in vars(m).items()
    if isinstance(obj, type) and is_dataclass(obj) and obj.__module__ == m.__name__
}

JSON: TypeAlias = Any


def encode(obj: object) -> JSON:
    """A model value, operation or outcome as plain JSON data."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, JSON] = {"type": type(obj).__name__}
        for f in fields(obj):
            out[f.name] = encode(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple | list):
        return [encode(item) for item in obj]
    if isinstance(obj, frozenset):
        return {"set": sorted((encode(item) for item in obj), key=json.dumps)}
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    raise ModelError(f"cannot encode {obj!r}")


def decode(data: JSON) -> Any:
    """The inverse of ``encode``."""
    if isinstance(data, list):
        return tuple(decode(item) for item in data)
    if isinstance(data, dict):
        if "set" in data and len(data) == 1:
            return frozenset(decode(item) for item in data["set"])
        kind = _TYPES.get(data.get("type", ""))
        if kind is None:
            raise ModelError(f"unknown model type in {data!r}")
        return kind(**{k: decode(v) for k, v in data.items() if k != "type"})
    return data


def dump_history(history: Iterable[HistoryEvent]) -> str:
    """A history as JSON lines."""
    lines = []
    for event in history:
        if isinstance(event, Invoke):
            record: Mapping[str, JSON] = {"invoke": event.cid, "op": encode(event.op)}
        else:
            record = {"respond": event.cid, "outcome": encode(event.outcome)}
        lines.append(json.dumps(record, sort_keys=True, separators=(",", ":")))
    return "".join(f"{line}\n" for line in lines)


def load_history(text: str) -> list[HistoryEvent]:
    """Parse JSON lines written by ``dump_history`` (other lines are skipped).

    Lines without an "invoke" or "respond" key (a trace header, network
    events) are ignored, so a history can be read out of a larger trace.
    """
    events: list[HistoryEvent] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        kind: Literal["invoke", "respond"] | None = (
            "invoke"
            if "invoke" in record
            else "respond"
            if "respond" in record
            else None
        )
        if kind == "invoke":
            events.append(Invoke(int(record["invoke"]), decode(record["op"])))
        elif kind == "respond":
            events.append(Respond(int(record["respond"]), decode(record["outcome"])))
    return events


if __name__ == "__main__":
    # The command line lives in spec.records, which builds on this module.
    from spec.records import main

    raise SystemExit(main())
