"""The command line: ``python -m sim list | run | sweep``.

``run`` runs one scenario with one seed and prints how it ended; ``sweep``
runs a range of seeds and stops at the first failure, printing the command
that reproduces it.  Both exit with status 1 when a run failed.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ._faults import FaultPlan
from ._run import RunResult, sole
from .scenarios import SCENARIOS, run_builtin


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(_glue_negative_seeds(argv))
    if args.command == "list":
        return _list(sys.stdout)

    # Errors name the subcommand's usage, which lists the option at fault.
    command: argparse.ArgumentParser = args.subparser
    # The runtime's warnings (a worker terminated...) help read one run;
    # over a sweep of seeds they are noise.
    level = logging.WARNING if args.command == "run" else logging.ERROR
    logging.basicConfig(level=level, format="%(name)s: %(message)s")
    try:
        faults = FaultPlan.parse(args.faults) if args.faults else None
    except ValueError as exc:
        command.error(f"--faults: {exc}")
    if args.scenario not in SCENARIOS:
        command.error(
            f"unknown scenario {args.scenario!r}; known: {', '.join(SCENARIOS)} "
            "(see 'python -m sim list')"
        )
    if args.command == "run" and args.trace is not None:
        # Checked before the run, which would otherwise fail only at the end.
        target = Path(args.trace)
        folder = target.resolve().parent
        if target.is_dir():
            command.error(f"--trace {args.trace}: is a directory, give a file name")
        if not folder.is_dir():
            command.error(f"--trace {args.trace}: folder {folder} does not exist")
    if args.command == "run":
        return _run(args, faults, sys.stdout)
    return _sweep(args, faults, sys.stdout, sys.stderr)


def _glue_negative_seeds(argv: Sequence[str] | None) -> list[str]:
    """``--seeds -3..-1`` as ``--seeds=-3..-1``.

    argparse takes a value starting with ``-`` for an option unless it
    looks like a plain negative number, which ``-3..-1`` does not.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    glued: list[str] = []
    for word in words:
        if glued and glued[-1] == "--seeds" and _NEGATIVE_RANGE.match(word):
            glued[-1] = f"--seeds={word}"
        else:
            glued.append(word)
    return glued


_NEGATIVE_RANGE = re.compile(r"^-\d+(\.\.-?\d+)?$")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim", description="Run distref's simulated scenarios."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the built-in scenarios")

    run = commands.add_parser("run", help="run one scenario with one seed")
    run.set_defaults(subparser=run)
    _common(run)
    run.add_argument("--seed", type=int, required=True, help="the run's seed")
    run.add_argument("--trace", metavar="FILE", help="write the trace to FILE")

    sweep = commands.add_parser("sweep", help="run one scenario over many seeds")
    sweep.set_defaults(subparser=sweep)
    _common(sweep)
    sweep.add_argument(
        "--seeds",
        type=_seed_range,
        required=True,
        metavar="A..B",
        help="the seeds to run, both ends included (negative seeds too: -3..-1)",
    )
    sweep.add_argument(
        "--keep-going", action="store_true", help="run every seed, report all failures"
    )
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", help="a scenario name from 'python -m sim list'")
    parser.add_argument(
        "--workers", type=_positive, help="how many workers to add (1 or more)"
    )
    parser.add_argument(
        "--faults",
        metavar="SPEC",
        help="extra faults, e.g. 'crash:pid=2,at=1.5;partition:pids=3,heal=10'",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} workers: give 1 or more")
    return value


def _seed_range(text: str) -> range:
    low, sep, high = text.partition("..")
    try:
        first = int(low)
        last = int(high) if sep else first
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not A..B") from None
    if last < first:
        raise argparse.ArgumentTypeError(f"{text!r}: B is below A")
    return range(first, last + 1)


def _list(out: TextIO) -> int:
    width = max(len(name) for name in SCENARIOS)
    for scenario in SCENARIOS.values():
        out.write(
            f"{scenario.name:<{width}}  {scenario.summary} "
            f"(default {scenario.workers} workers)\n"
        )
    return 0


def _run(args: argparse.Namespace, faults: FaultPlan | None, out: TextIO) -> int:
    began = time.perf_counter()
    result = run_builtin(
        args.scenario,
        seed=args.seed,
        workers=args.workers,
        faults=faults,
        trace=args.trace,
    )
    wall = time.perf_counter() - began

    verdict = "ok" if result.ok else f"FAIL: {_describe(result)}"
    if result.ok and isinstance(result.value, str):
        verdict = f"ok ({result.value})"
    out.write(f"{args.scenario} seed {args.seed}: {verdict}\n")
    out.write(
        f"virtual time {result.virtual_ns / 1e9:.6f} s, "
        f"{result.deliveries} deliveries, wall {wall:.3f} s\n"
    )
    if args.trace:
        out.write(f"trace {args.trace}: sha256 {result.trace.digest()}\n")
    if result.error is not None:
        traceback.print_exception(sole(result.error), file=out)
        return 1
    return 0


def _sweep(
    args: argparse.Namespace, faults: FaultPlan | None, out: TextIO, err: TextIO
) -> int:
    seeds: range = args.seeds
    progress = err.isatty()
    failed: list[RunResult[str | None]] = []
    endings: Counter[str] = Counter()
    began = time.perf_counter()

    for done, seed in enumerate(seeds, start=1):
        result = run_builtin(
            args.scenario, seed=seed, workers=args.workers, faults=faults
        )
        if progress:
            err.write(f"\r{args.scenario}: {done}/{len(seeds)} seeds, seed {seed}")
            err.flush()
        if result.ok:
            if isinstance(result.value, str):
                endings[result.value] += 1
            continue
        failed.append(result)
        if progress:
            err.write("\n")
        out.write(f"seed {seed}: FAIL: {_describe(result)}\n")
        out.write(f"reproduce: {_command(args, seed)}\n")
        if not args.keep_going:
            break

    if progress:
        err.write("\n")
    wall = time.perf_counter() - began
    ran = done if seeds else 0
    out.write(
        f"{args.scenario}: {ran - len(failed)} of {ran} seeds passed "
        f"in {wall:.2f} s wall\n"
    )
    if endings:
        tally = ", ".join(f"{name} {n}" for name, n in sorted(endings.items()))
        out.write(f"endings of the passing seeds: {tally}\n")
    if failed:
        out.write(f"first failing seed: {failed[0].seed}\n")
        return 1
    return 0


def _describe(result: RunResult[str | None]) -> str:
    error = sole(result.error) if result.error is not None else None
    if error is None:
        return "ok"
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _command(args: argparse.Namespace, seed: int) -> str:
    words = ["python", "-m", "sim", "run", args.scenario, "--seed", str(seed)]
    if args.workers is not None:
        words += ["--workers", str(args.workers)]
    if args.faults:
        words += ["--faults", args.faults]
    words += ["--trace", f"{args.scenario}-{seed}.jsonl"]
    return shlex.join(words)
