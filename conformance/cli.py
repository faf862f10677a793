"""``python -m conformance``: run the suite and report.

    python -m conformance [--backend NAME ...] [--json FILE] [--junit FILE]
                          [--timeout S] [--seed N] [--only SUBSTRING] [--list]

By default every discovered backend is judged; one that cannot run here is
shown with every behaviour skipped and the reason, rather than stopping the
run.  The exit status is 0 when nothing failed or errored, 1 when something
did (or the catalogue and the scenarios disagree, or either cannot be
loaded), and 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO, cast

from conformance.backends import Backend, discover_backends
from conformance.registry import ScenarioImportError, ScenarioSpec, all_scenarios
from conformance.report import format_text, write_json, write_junit
from conformance.runner import DEFAULT_TIMEOUT, BehaviourLike, run_suite

__all__ = ["CatalogueError", "build_parser", "load_catalogue", "main"]

logger = logging.getLogger("conformance")


class CatalogueError(Exception):
    """The behaviour catalogue (``spec.catalogue``) could not be loaded."""


def load_catalogue() -> tuple[BehaviourLike, ...]:
    """Every behaviour of ``spec/behaviours.toml``, in catalogue order."""
    # Imported by name so that this package neither fails to import nor
    # fails to type-check while the catalogue module is being written.
    try:
        catalogue = importlib.import_module("spec.catalogue")
        behaviours = catalogue.load_behaviours()
    except Exception as exc:
        raise CatalogueError(
            f"cannot load the behaviour catalogue: {type(exc).__name__}: {exc}"
        ) from exc
    return tuple(cast(Sequence[BehaviourLike], behaviours))


def build_parser(backend_names: Sequence[str]) -> argparse.ArgumentParser:
    """The argument parser; ``--backend`` accepts only ``backend_names``."""
    parser = argparse.ArgumentParser(
        prog="python -m conformance",
        description="Run the distref conformance suite against its backends.",
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=list(backend_names),
        metavar="NAME",
        help=f"judge this backend, repeatable (default: {', '.join(backend_names)})",
    )
    parser.add_argument(
        "--json", type=_report_path, metavar="FILE", help="write a JSON report"
    )
    parser.add_argument(
        "--junit", type=_report_path, metavar="FILE", help="write JUnit XML"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds each scenario may run (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed for seeded backends"
    )
    parser.add_argument(
        "--only",
        metavar="SUBSTRING",
        help="judge only behaviours whose ID contains SUBSTRING",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the backends and scenarios, run nothing",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log each scenario run"
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    backends: Sequence[Backend] | None = None,
    behaviours: Sequence[BehaviourLike] | None = None,
    scenarios: Sequence[ScenarioSpec] | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Parse ``argv``, run, report; return the exit status.

    ``backends``, ``behaviours`` and ``scenarios`` default to the discovered
    backends, the real catalogue and the real scenario package; passing them
    lets a harness (or a test) run the same command on its own.
    """
    out = sys.stdout if stdout is None else stdout
    available = tuple(discover_backends()) if backends is None else tuple(backends)
    args = build_parser([b.name for b in available]).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(name)s: %(levelname)s: %(message)s",
    )

    chosen = _choose(available, args.backend)
    try:
        found = tuple(all_scenarios()) if scenarios is None else tuple(scenarios)
        if args.list:
            out.write(_listing(chosen, found))
            return 0
        catalogue = load_catalogue() if behaviours is None else tuple(behaviours)
    except (ScenarioImportError, CatalogueError) as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return 1

    if args.only is not None and not any(args.only in b.id for b in catalogue):
        print(f"conformance: no behaviour ID contains {args.only!r}", file=sys.stderr)
        return 2
    # Scenarios provoke errors on purpose; the runtime's logs of them would
    # bury the table.  Only the printing to the terminal is filtered, and
    # only for this run: scenarios that watch the runtime's logger still see
    # every record.  -v shows them.
    # Likewise the workers' output that the master relays to its stdout
    # ("From worker N: ..."): it is set aside unless -v.
    quieted = [] if args.verbose else _terminal_handlers()
    relayed = contextlib.nullcontext() if args.verbose else _set_aside_stdout()
    for handler in quieted:
        handler.addFilter(_quiet_runtime)
    try:
        with relayed:
            report = run_suite(
                catalogue,
                found,
                chosen,
                seed=args.seed,
                timeout=args.timeout,
                only=args.only,
            )
    finally:
        for handler in quieted:
            handler.removeFilter(_quiet_runtime)

    out.write(format_text(report, colour=_wants_colour(out)) + "\n")
    if args.json is not None:
        write_json(report, args.json)
    if args.junit is not None:
        write_junit(report, args.junit)
    return 0 if report.ok else 1


class _Discard(io.TextIOBase):
    """A text stream that drops what is written to it."""

    def write(self, text: str) -> int:
        return len(text)


def _set_aside_stdout() -> contextlib.AbstractContextManager[object]:
    """Send what is written to ``sys.stdout`` during the run nowhere."""
    return contextlib.redirect_stdout(_Discard())


def _terminal_handlers() -> list[logging.Handler]:
    """The root handlers that print to the process's own stderr."""
    return [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is sys.stderr
    ]


def _quiet_runtime(record: logging.LogRecord) -> bool:
    return not (record.name == "ref" or record.name.startswith("ref."))


def _choose(available: Sequence[Backend], names: list[str] | None) -> list[Backend]:
    if not names:
        return list(available)

    # In the order asked for, each once.
    by_name = {backend.name: backend for backend in available}
    return [by_name[name] for name in dict.fromkeys(names)]


def _report_path(text: str) -> Path:
    """A file a report can be written to, checked before the run, not after."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is a folder; name a file to write the report to"
        )
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"cannot write a report to {text!r}: folder {str(path.parent)!r} "
            "does not exist"
        )
    return path


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _wants_colour(out: TextIO) -> bool:
    # NO_COLOR (https://no-color.org) wins even on a terminal.
    return out.isatty() and "NO_COLOR" not in os.environ


def _listing(backends: Sequence[Backend], scenarios: Sequence[ScenarioSpec]) -> str:
    lines = ["backends:"]
    for backend in backends:
        reason = backend.available()
        state = "available" if reason is None else f"unavailable: {reason}"
        caps = ", ".join(sorted(backend.capabilities)) or "-"
        lines.append(f"  {backend.name}  [{caps}]  {state}")

    lines.append(f"scenarios ({len(scenarios)}):")
    for spec in scenarios:
        needs = f"  needs {', '.join(spec.needs)}" if spec.needs else ""
        lines.append(f"  {spec.name}  covers {', '.join(spec.behaviours)}{needs}")
    return "\n".join(lines) + "\n"
