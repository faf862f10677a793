"""Faults: what can go wrong in a simulated cluster, and when it does.

A ``FaultPlan`` lists faults to inject.  Each timed fault fires either at a
virtual time (``at``, seconds since the run began) or after a number of
chunks were delivered on the cluster's network (``after``), whichever is
given (neither: at the start).  Launch faults name a launch by its number
(the first worker ever launched in the cluster is launch 1).
``RandomFaults`` draws further faults from the seed at given rates.

The faults, and what the runtime sees:

* ``Crash``: the worker dies like ``kill -9``.  Silence first: it is marked
  dead, its peers get a reset after what was already in flight, anything
  it sends afterwards is dropped; only then are its tasks cancelled.
* ``Reset``: the connections between two pids break at both ends at once.
* ``Partition``: the listed pids are cut off from the rest.  Connections
  across stall (nothing is lost); after ``break_after`` seconds they reset,
  as keep-alive expiry would; at ``heal`` seconds the cut ends and what was
  held is delivered in order.
* ``Slow``: each I/O step of the process costs ``step`` seconds.
* ``Hang``: the process stops (like SIGSTOP) for ``duration`` seconds, or
  for good: it neither reads nor writes, and its connections stay open.
* ``FailLaunch``: the launch command fails; ``addprocs`` gets LaunchError.
* ``SlowLaunch``: the worker takes ``delay`` seconds to start, longer than
  the worker timeout by default, so the launcher gives up on it.

``FaultPlan.parse`` reads the command-line form, faults separated by ``;``
and fields by ``,``: ``crash:pid=2,at=1.5;partition:pids=2+3,heal=10``.
"""

from __future__ import annotations

import dataclasses
import math
import random
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._cluster import World, WorldTasks


class _Timed:
    """When a timed fault fires: at ``at`` seconds, or ``after`` deliveries."""

    at: float | None
    after: int | None

    def _check_trigger(self) -> None:
        if self.at is not None and self.after is not None:
            raise ValueError(
                f"{type(self).__name__}: give at={self.at!r} or after={self.after!r}, "
                "not both"
            )
        if self.at is not None and not self.at >= 0:
            raise ValueError(f"{type(self).__name__}: at={self.at!r} must be >= 0")
        if self.after is not None and self.after < 0:
            raise ValueError(
                f"{type(self).__name__}: after={self.after!r} must be >= 0"
            )


def _check_worker(owner: str, pid: int) -> None:
    if pid < 2:
        raise ValueError(f"{owner}: pid={pid!r} must be a worker pid (2 or more)")


@dataclass(frozen=True)
class Crash(_Timed):
    """Kill worker ``pid`` (the master cannot be crashed)."""

    pid: int
    at: float | None = None
    after: int | None = None

    def __post_init__(self) -> None:
        _check_worker("Crash", self.pid)
        self._check_trigger()


@dataclass(frozen=True)
class Reset(_Timed):
    """Reset every connection between pids ``a`` and ``b``."""

    a: int
    b: int
    at: float | None = None
    after: int | None = None

    def __post_init__(self) -> None:
        if self.a == self.b:
            raise ValueError(f"Reset: a={self.a!r} and b={self.b!r} must differ")
        self._check_trigger()


@dataclass(frozen=True)
class Partition(_Timed):
    """Cut ``pids`` off from every other process.

    ``heal`` and ``break_after`` count from the moment the partition began;
    ``heal=None`` never heals it.
    """

    pids: tuple[int, ...]
    at: float | None = None
    after: int | None = None
    heal: float | None = None
    break_after: float = 30.0

    def __post_init__(self) -> None:
        if not self.pids:
            raise ValueError("Partition: pids=() must name at least one process")
        self._check_trigger()


@dataclass(frozen=True)
class Slow(_Timed):
    """Make every I/O step of ``pid`` cost ``step`` seconds, for ``duration``."""

    pid: int
    step: float = 0.05
    at: float | None = None
    after: int | None = None
    duration: float | None = None

    def __post_init__(self) -> None:
        if not self.step > 0:
            raise ValueError(f"Slow: step={self.step!r} must be positive")
        self._check_trigger()


@dataclass(frozen=True)
class Hang(_Timed):
    """Stop ``pid`` for ``duration`` seconds (``None``: for good)."""

    pid: int
    at: float | None = None
    after: int | None = None
    duration: float | None = None

    def __post_init__(self) -> None:
        _check_worker("Hang", self.pid)
        self._check_trigger()


@dataclass(frozen=True)
class FailLaunch:
    """Launch number ``launch`` fails before the worker announces itself."""

    launch: int = 1


@dataclass(frozen=True)
class SlowLaunch:
    """Launch number ``launch`` takes ``delay`` seconds to announce itself."""

    launch: int = 1
    delay: float = 3600.0


@dataclass(frozen=True)
class RandomFaults:
    """Faults drawn from the seed.

    ``crash``, ``reset``, ``partition``, ``hang`` and ``slow`` are rates per
    virtual second for the whole cluster, between ``start`` and ``stop``
    seconds, at most ``limit`` of them; each picks its target among the
    live workers.  ``fail_launch`` and ``slow_launch`` are probabilities
    per launch.  Partitions, hangs and slow spells last a duration drawn
    uniformly from 0 to ``2 * spell`` seconds; partitions break after
    ``break_after`` seconds if still in place.
    """

    crash: float = 0.0
    reset: float = 0.0
    partition: float = 0.0
    hang: float = 0.0
    slow: float = 0.0
    fail_launch: float = 0.0
    slow_launch: float = 0.0
    start: float = 0.0
    stop: float = math.inf
    limit: int = 3
    spell: float = 10.0
    break_after: float = 30.0

    def __post_init__(self) -> None:
        for name in ("crash", "reset", "partition", "hang", "slow"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"RandomFaults: {name}={getattr(self, name)!r} < 0")
        for name in ("fail_launch", "slow_launch"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(
                    f"RandomFaults: {name}={getattr(self, name)!r} must be a "
                    "probability between 0 and 1"
                )

    def timed_rates(self) -> list[tuple[str, float]]:
        return [
            ("crash", self.crash),
            ("reset", self.reset),
            ("partition", self.partition),
            ("hang", self.hang),
            ("slow", self.slow),
        ]


TimedFault = Crash | Reset | Partition | Slow | Hang
Fault = TimedFault | FailLaunch | SlowLaunch

#: Names used by ``FaultPlan.parse`` and in traces.
FAULT_KINDS: dict[str, type[Fault] | type[RandomFaults]] = {
    "crash": Crash,
    "reset": Reset,
    "partition": Partition,
    "slow": Slow,
    "hang": Hang,
    "fail-launch": FailLaunch,
    "slow-launch": SlowLaunch,
    "random": RandomFaults,
}


def fault_kind(fault: Fault | RandomFaults) -> str:
    for name, cls in FAULT_KINDS.items():
        if type(fault) is cls:
            return name
    raise TypeError(f"not a fault: {fault!r}")


def describe_fault(fault: Fault | RandomFaults) -> dict[str, object]:
    """A JSON-ready description of one fault (kind and every field)."""
    fields: dict[str, object] = {"kind": fault_kind(fault)}
    for field in dataclasses.fields(fault):
        value = getattr(fault, field.name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, float) and math.isinf(value):
            value = "inf"
        fields[field.name] = value
    return fields


@dataclass(frozen=True)
class FaultPlan:
    """The faults of one simulated cluster."""

    faults: tuple[Fault, ...] = ()
    random: RandomFaults | None = None

    def __add__(self, other: FaultPlan) -> FaultPlan:
        """Both plans' faults; ``other``'s random rates win if it has any."""
        return FaultPlan(self.faults + other.faults, other.random or self.random)

    def describe(self) -> dict[str, object]:
        return {
            "faults": [describe_fault(f) for f in self.faults],
            "random": None if self.random is None else describe_fault(self.random),
        }

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """Read ``kind:field=value,...;kind:...`` (see the module docstring)."""
        faults: list[Fault] = []
        drawn: RandomFaults | None = None
        for part in (p.strip() for p in spec.split(";")):
            if not part:
                continue
            name, _, body = part.partition(":")
            kind = FAULT_KINDS.get(name.strip())
            if kind is None:
                raise ValueError(
                    f"unknown fault {name.strip()!r} in {spec!r}; "
                    f"known: {', '.join(FAULT_KINDS)}"
                )
            made = _build(kind, body)
            if isinstance(made, RandomFaults):
                drawn = made
            else:
                faults.append(made)
        return cls(tuple(faults), drawn)


def _build(kind: type[Fault] | type[RandomFaults], body: str) -> Fault | RandomFaults:
    hints = typing.get_type_hints(kind)
    kwargs: dict[str, object] = {}
    for item in (i.strip() for i in body.split(",")):
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints:
            raise ValueError(
                f"{kind.__name__}: cannot read {item!r}; fields are "
                f"{', '.join(f.name for f in dataclasses.fields(kind))}"
            )
        kwargs[key] = _convert(kind.__name__, key, hints[key], raw.strip())
    missing = [
        f.name
        for f in dataclasses.fields(kind)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(
            f"{kind.__name__}: missing {', '.join(missing)} "
            f"(e.g. {fault_kind_name(kind)}:{'=...,'.join(missing)}=...)"
        )
    try:
        return kind(**kwargs)  # type: ignore[arg-type]  # checked by the class
    except TypeError as exc:
        raise ValueError(f"{kind.__name__}: {exc}") from None


def fault_kind_name(kind: type[Fault] | type[RandomFaults]) -> str:
    """The name ``FaultPlan.parse`` knows ``kind`` by."""
    return next(name for name, cls in FAULT_KINDS.items() if cls is kind)


def _convert(owner: str, key: str, hint: object, raw: str) -> object:
    args = typing.get_args(hint)
    try:
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if args and type(None) in args:
            if raw.lower() == "none":
                return None
            inner = next(a for a in args if a is not type(None))
            return _convert(owner, key, inner, raw)
        if typing.get_origin(hint) is tuple:
            return tuple(int(p) for p in raw.split("+") if p)
    except ValueError:
        raise ValueError(f"{owner}: {key}={raw!r} is not a valid value") from None
    raise ValueError(f"{owner}: cannot read field {key}")


class FaultInjector:
    """Fires one cluster's planned and random faults at the world."""

    def __init__(self, world: World, plan: FaultPlan, rng: random.Random) -> None:
        self._world = world
        self._plan = plan
        self._rng = rng
        timed: list[TimedFault] = [
            f
            for f in plan.faults
            if isinstance(f, Crash | Reset | Partition | Slow | Hang)
        ]
        # Stable sorts keep the plan's order among faults due together.
        self._by_time = sorted(
            (f for f in timed if f.after is None), key=lambda f: f.at or 0.0
        )
        self._by_count = sorted(
            (f for f in timed if f.after is not None), key=lambda f: f.after or 0
        )
        self._launches = 0

    def start(self, nursery: trio.Nursery | WorldTasks) -> None:
        nursery.start_soon(self._fire_timed)
        if self._plan.random is not None:
            nursery.start_soon(self._fire_random, self._plan.random)

    async def _fire_timed(self) -> None:
        while self._by_time:
            await trio.sleep_until(self._by_time[0].at or 0.0)
            self.apply(self._by_time.pop(0))

    def unfired(self) -> list[Fault]:
        """The planned faults not injected so far, in the plan's order.

        Timed faults still waiting for their time or delivery count, and
        launch faults naming a launch that has not happened.
        """
        waiting = set(map(id, self._by_time + self._by_count))
        return [
            f
            for f in self._plan.faults
            if id(f) in waiting
            or (isinstance(f, FailLaunch | SlowLaunch) and f.launch > self._launches)
        ]

    def delivered(self, count: int) -> None:
        """Called after each delivery: fire faults due at ``count``."""
        while self._by_count and (self._by_count[0].after or 0) <= count:
            self.apply(self._by_count.pop(0))

    def launch(self, number: int, timeout: float) -> tuple[bool, float | None]:
        """Whether launch ``number`` fails, and its delay if one is imposed.

        A randomly slow launch takes twice the worker ``timeout``.
        """
        self._launches = max(self._launches, number)
        fail = any(
            isinstance(f, FailLaunch) and f.launch == number for f in self._plan.faults
        )
        delay = None
        for f in self._plan.faults:
            if isinstance(f, SlowLaunch) and f.launch == number:
                delay = f.delay
        drawn = self._plan.random
        if drawn is not None:
            # Always two draws per launch, so later draws keep their place.
            fail_draw, slow_draw = self._rng.random(), self._rng.random()
            fail = fail or fail_draw < drawn.fail_launch
            if slow_draw < drawn.slow_launch and delay is None:
                delay = timeout * 2
        return fail, delay

    def apply(self, fault: TimedFault) -> None:
        """Inject ``fault`` now."""
        world = self._world
        if isinstance(fault, Crash):
            world.crash(fault.pid)
        elif isinstance(fault, Reset):
            world.reset(fault.a, fault.b)
        elif isinstance(fault, Partition):
            world.partition(fault.pids, heal=fault.heal, break_after=fault.break_after)
        elif isinstance(fault, Slow):
            world.slow(fault.pid, fault.step, duration=fault.duration)
        else:
            world.hang(fault.pid, duration=fault.duration)

    async def _fire_random(self, drawn: RandomFaults) -> None:
        rates = drawn.timed_rates()
        total = sum(rate for _, rate in rates)
        if total <= 0:
            return
        await trio.sleep_until(drawn.start)
        for _ in range(drawn.limit):
            wait = self._rng.expovariate(total)
            if trio.current_time() + wait > drawn.stop:
                return
            await trio.sleep(wait)

            kind = _pick(rates, self._rng.random() * total)
            spell = self._rng.uniform(0, 2 * drawn.spell)
            pick = self._rng.random()
            workers = self._world.live_workers()
            if not workers:
                continue
            target = workers[int(pick * len(workers))]
            self.apply(_random_fault(kind, target, spell, drawn))


def _pick(rates: list[tuple[str, float]], point: float) -> str:
    for name, rate in rates:
        if point < rate:
            return name
        point -= rate
    return next(name for name, rate in reversed(rates) if rate > 0)


def _random_fault(
    kind: str, target: int, spell: float, drawn: RandomFaults
) -> TimedFault:
    if kind == "crash":
        return Crash(target)
    if kind == "reset":
        # The master link matters most: it is the one every call uses.
        return Reset(1, target)
    if kind == "partition":
        return Partition((target,), heal=spell, break_after=drawn.break_after)
    if kind == "hang":
        return Hang(target, duration=spell)
    return Slow(target, duration=spell)
