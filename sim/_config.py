"""What a simulated cluster's machines and links are like.

Every random quantity of the simulated world is a ``Distribution`` drawn
from the run's seeded generator.  The three shapes use only
``random.Random.random()`` underneath (directly, or through
``uniform`` and ``lognormvariate``), the one method whose sequence Python
promises to keep across versions, so a seed keeps meaning the same
latencies after a Python upgrade.

Durations are seconds (floats) in configuration and integer nanoseconds
inside the network and in traces.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


def to_ns(seconds: float) -> int:
    """Seconds as integer nanoseconds (the unit of traces)."""
    return round(seconds * 1e9)


def _check_duration(owner: str, name: str, value: float) -> None:
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"{owner}: {name}={value!r} must be a finite number >= 0")


def _check_bandwidth(value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"bandwidth={value!r} must be positive bytes/s or None")


class Distribution(Protocol):
    """A source of non-negative durations, in seconds."""

    def draw(self, rng: random.Random) -> float:
        """One duration, drawn from ``rng``."""
        ...

    def describe(self) -> dict[str, object]:
        """A JSON-ready description, for the trace header."""
        ...


@dataclass(frozen=True)
class Constant:
    """Always ``seconds``; draws nothing from the generator."""

    seconds: float

    def __post_init__(self) -> None:
        _check_duration("Constant", "seconds", self.seconds)

    def draw(self, rng: random.Random) -> float:
        return self.seconds

    def describe(self) -> dict[str, object]:
        return {"constant": self.seconds}


@dataclass(frozen=True)
class Uniform:
    """Uniform between ``low`` and ``high`` seconds."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _check_duration("Uniform", "low", self.low)
        _check_duration("Uniform", "high", self.high)
        if self.high < self.low:
            raise ValueError(f"Uniform: high={self.high!r} is below low={self.low!r}")

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def describe(self) -> dict[str, object]:
        return {"uniform": [self.low, self.high]}


@dataclass(frozen=True)
class LogNormal:
    """Log-normal with the given ``median`` (seconds) and shape ``sigma``.

    The long right tail models the occasional slow packet; ``cap`` bounds
    it so that one unlucky draw cannot stall a run for hours.
    """

    median: float
    sigma: float
    cap: float = 10.0

    def __post_init__(self) -> None:
        _check_duration("LogNormal", "median", self.median)
        _check_duration("LogNormal", "sigma", self.sigma)
        _check_duration("LogNormal", "cap", self.cap)
        if self.median <= 0:
            raise ValueError(f"LogNormal: median={self.median!r} must be positive")

    def draw(self, rng: random.Random) -> float:
        return min(self.cap, rng.lognormvariate(math.log(self.median), self.sigma))

    def describe(self) -> dict[str, object]:
        return {"lognormal": [self.median, self.sigma, self.cap]}


@dataclass(frozen=True)
class LinkConfig:
    """Overrides for the link between two pids; ``None`` keeps the default."""

    latency: Distribution | None = None
    bandwidth: float | None = None

    def __post_init__(self) -> None:
        _check_bandwidth(self.bandwidth)


@dataclass(frozen=True)
class NetworkConfig:
    """The simulated network and machines of one cluster.

    ``latency`` is drawn per chunk written to a connection (each
    ``send_all``); ``bandwidth`` (bytes per second, ``None`` for unlimited)
    adds a serialisation delay, one chunk after another per direction.
    ``links`` overrides either for a pair of pids, given in any order.

    Bandwidth is unlimited by default on purpose: payload sizes can depend
    on the machine (a traceback carries file paths), and with a finite
    bandwidth they would change timing, and so the run, between two
    checkouts of the same code.

    ``window`` is how many bytes a direction holds that the reader has not
    read yet (socket buffers, both ends together); a writer waits when it
    is full, as with TCP.

    ``connect_timeout`` is how long a connection attempt across a partition
    waits before it fails.  ``launch_delay`` is how long a simulated worker
    takes to start and announce its address.
    """

    latency: Distribution = Uniform(0.0001, 0.001)
    bandwidth: float | None = None
    links: Mapping[tuple[int, int], LinkConfig] = field(default_factory=dict)
    window: int = 1 << 20
    connect_timeout: float = 20.0
    launch_delay: Distribution = Uniform(0.05, 0.5)

    def __post_init__(self) -> None:
        _check_bandwidth(self.bandwidth)
        if self.window < 1:
            raise ValueError(f"NetworkConfig: window={self.window!r} must be >= 1")
        _check_duration("NetworkConfig", "connect_timeout", self.connect_timeout)

    def link(self, a: int, b: int) -> tuple[Distribution, float | None]:
        """The latency and bandwidth between pids ``a`` and ``b``."""
        override = self.links.get((a, b)) or self.links.get((b, a))
        if override is None:
            return self.latency, self.bandwidth
        latency = override.latency or self.latency
        bandwidth = self.bandwidth if override.bandwidth is None else override.bandwidth
        return latency, bandwidth

    def describe(self) -> dict[str, object]:
        """A JSON-ready description, for the trace header."""
        links = {
            f"{a}-{b}": {
                "latency": None if o.latency is None else o.latency.describe(),
                "bandwidth": o.bandwidth,
            }
            for (a, b), o in sorted(self.links.items())
        }
        return {
            "latency": self.latency.describe(),
            "bandwidth": self.bandwidth,
            "links": links,
            "window": self.window,
            "connect_timeout": self.connect_timeout,
            "launch_delay": self.launch_delay.describe(),
        }
