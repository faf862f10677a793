"""One Slurm task's worker: ``python -m ref.managers.slurm_task --toward ADDR``.

What ``SlurmManager`` runs in every task of its srun step.  It is
``python -m ref.worker`` with one difference: the worker listens on the
local address that routes toward ``ADDR`` (the master), which differs from
node to node, so it cannot be spelled on srun's one command line.  The
cookie comes on stdin, as for every worker.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .._transports import start_worker
from ..elastic import route_address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ref.managers.slurm_task")
    parser.add_argument(
        "--toward", required=True, help="the master's address (picks ours)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        start_worker(bind_to=route_address(args.toward, 9), stderr_to_stdout=True)
    except ValueError as exc:
        sys.stderr.write(f"ref.managers.slurm_task: {exc}\n")
        return 2
    except SystemExit as done:
        return int(done.code or 0)


if __name__ == "__main__":
    sys.exit(main())
