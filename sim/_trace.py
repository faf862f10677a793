"""The trace of a simulated run: canonical JSON lines.

Line 1 is the header: the format name and version, the scenario, the seed,
the configuration each cluster of the run was given (and what was drawn
from the seed for it), and the versions of every package that can change a
run.  Then one line per event, in the order they happened: ``seq`` (from
0), ``t`` (virtual nanoseconds since the run began), ``kind`` and the
event's own fields.

Every line is ``json.dumps`` with sorted keys and no spaces, and every time
is an integer, so the same scenario, seed and versions give the same bytes
whatever ``PYTHONHASHSEED`` is; compare two runs with a digest.

Event kinds: ``cluster``, ``launch``, ``listen``, ``connect``, ``send``,
``deliver``, ``drop``, ``eof``, ``reset``, ``fault``, ``call_start``,
``call_end``, ``exit``, ``end``, and the API-level history: ``api_call``
(a public API function was called: the operation and its canonical
arguments), then ``api_return`` (its canonical result) or ``api_raise``
(the exception's class, the pid it names, the class it wraps), with the
fields ``ref._history`` documents.  ``spec.records`` reads that history
back and ``python -m spec.refinement TRACE`` checks it against the model.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import trio

#: The name in every header; readers check it before anything else.
FORMAT = "distref-sim-trace"
#: Bumped whenever a field changes meaning or an event kind is renamed
#: (2: the API-level history, ``api_call``/``api_return``/``api_raise``).
FORMAT_VERSION = 2

_VERSIONED_PACKAGES = ("distref", "trio", "cloudpickle")


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def _one_shot_encoder() -> Callable[[object], str]:
    """``_ENCODER.encode``, minus the set-up it repeats on every call.

    ``JSONEncoder.encode`` builds the C encoder anew for each object; this
    builds it once, with the same options, when the C accelerator exists.
    The output is the same (``test_sim_run`` checks every line against
    ``json.dumps``); only the check for circular containers is left out,
    and an event holds none.
    """
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:
        return _ENCODER.encode
    iterencode = make_encoder(
        None,  # no markers: no check for circular containers
        _ENCODER.default,
        json.encoder.encode_basestring_ascii,
        None,  # no indent
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )

    def encode(obj: object) -> str:
        return "".join(iterencode(obj, 0))

    return encode


#: One JSON line: sorted keys, no spaces, ASCII, no NaN.
canonical = _one_shot_encoder()


def versions() -> dict[str, str]:
    """The versions a trace depends on: Python and the packages that run."""
    found = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def now_ns() -> int:
    """The current virtual time in integer nanoseconds."""
    return round(trio.current_time() * 1e9)


class Trace:
    """Collects one run's events; writes them after the header at the end.

    Events are kept in memory and the file is written when the run ends,
    because the header names configuration that is only known once the
    scenario has opened its cluster.  A disabled trace records nothing and
    costs one attribute test per event.
    """

    def __init__(self, *, enabled: bool, scenario: str, seed: int) -> None:
        self.enabled = enabled
        self.scenario = scenario
        self.seed = seed
        self.clusters: list[dict[str, object]] = []
        self._lines: list[str] = []

    def event(self, kind: str, **fields: object) -> None:
        """Record one event at the current virtual time."""
        if not self.enabled:
            return
        record = {"seq": len(self._lines), "t": now_ns(), "kind": kind, **fields}
        self._lines.append(canonical(record))

    def header(self) -> str:
        return canonical(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "scenario": self.scenario,
                "seed": self.seed,
                "config": {"clusters": self.clusters},
                "versions": versions(),
            }
        )

    def text(self) -> str:
        """The whole trace, header first, one line per event."""
        return "".join(f"{line}\n" for line in [self.header(), *self._lines])

    def digest(self) -> str:
        """SHA-256 of ``text()``: equal digests mean identical traces."""
        return hashlib.sha256(self.text().encode("ascii")).hexdigest()

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.text(), encoding="ascii")

    @property
    def events(self) -> int:
        return len(self._lines)
