"""Behaviours verified by the repository's own pytest tests.

A few behaviours cannot be observed through the API from inside a scenario:
the bytes of the handshake, the worker's address line, what happens after
the cluster has closed.  Their catalogue entries name pytest node IDs
that check them: ``tests = ["tests/test_x.py::test_y"]`` on ``ref``, or
``tests = { ref = [...], sim = [...] }`` per backend.  The runner asks this
module to run the nodes named for the backend it judges, in a subprocess,
and reports the behaviour as passing only when pytest ran them and all
passed: such a behaviour is a real pass or fail, never a pass by
declaration.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("conformance")

#: The backend a plain list of tests exercises.
TESTED_BACKEND = "ref"

#: Where the repository's tests are, when running from a source checkout.
REPOSITORY = Path(__file__).resolve().parents[1]

#: What a verification's detail starts with when pytest skipped a node.
SKIPPED_MARK = "skipped by pytest:"

#: pytest's exit status when it collected nothing.
_NO_TESTS = 5


class PytestVerifier:
    """Runs the pytest nodes a behaviour names and reports how they went."""

    def __init__(self, root: Path = REPOSITORY, timeout: float = 600.0) -> None:
        self.root = root
        self.timeout = timeout

    def available(self) -> str | None:
        """None when the tests are here to run, else why not."""
        if not (self.root / "tests").is_dir():
            return f"no tests/ folder under {self.root} (not a source checkout)"
        return None

    def verify(self, nodes: Sequence[str]) -> tuple[bool, str]:
        """Run ``nodes``; True only if pytest collected them and all passed."""
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        # Named tests always run, slow or not.
        env = {**os.environ, "DISTREF_SLOW": "1"}
        logger.info("running pytest on %s", " ".join(nodes))
        try:
            done = subprocess.run(
                [*command, *nodes],
                cwd=self.root,
                capture_output=True,
                text=True,
                env=env,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False, f"pytest did not finish within {self.timeout:g} s"

        lines = done.stdout.strip().splitlines()
        tail = lines[-1:] or ["(no output)"]
        summary = f"pytest {' '.join(nodes)}: {tail[0]}"
        if done.returncode == _NO_TESTS:
            return False, f"{summary} (no test collected: is the node ID right?)"
        # A skipped test verified nothing: say so, with pytest's reasons
        # (the runner reports such a behaviour as skipped, not passed).
        skips = [line for line in lines if line.startswith("SKIPPED")]
        if done.returncode == 0 and skips:
            return False, f"{SKIPPED_MARK} {summary}: " + "; ".join(skips)
        return done.returncode == 0, summary
