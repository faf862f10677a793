"""Tests of ``ref.blocking``, the facade for plain scripts.

The facade keeps a trio loop in a daemon thread and registers an ``atexit``
hook, so each test runs it in a fresh interpreter: a script written to
``tmp_path`` that prints what the test checks, including the OS pids of its
workers, which must all be gone once the script has exited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import leftover_worker

SCRIPT_BOUND = 60.0

PRELUDE = """
import json, os, sys
import ref
from ref import blocking as d

def report(**values):
    print("REPORT " + json.dumps(values), flush=True)
"""

CLOSING_SCRIPT = """
pids = d.addprocs(2)
ospids = [d.remotecall_fetch(os.getpid, p) for p in pids]
report(ospids=ospids)
fut = d.remotecall(pow, 3, 2, 10)
report(
    pids=pids,
    myid=d.myid(),
    on_2=d.remotecall_fetch(ref.myid, 2),
    fetched=d.fetch(fut),
    kw=d.remotecall_fetch(sorted, 3, [2, 3, 1], reverse=True),
)
removal = d.rmprocs(2)
report(removed=removal.pids, workers=d.workers(), nprocs=d.nprocs())
try:
    d.remotecall_fetch(ref.myid, 2)
except ref.ProcessExitedException as exc:
    report(after_removal=type(exc).__name__)
try:
    d.remotecall_fetch(int, 3, "not a number")
except ref.RemoteException as exc:
    report(remote_error=[exc.pid, type(exc.exception).__name__])
d.close()
d.close()
report(closed=True)
"""

FORGETFUL_SCRIPT = """
pids = d.addprocs(2)
report(ospids=[d.remotecall_fetch(os.getpid, p) for p in pids])
"""


def run_script(tmp_path: Path, body: str) -> dict[str, object]:
    """Run PRELUDE + body in a fresh interpreter; return its merged reports."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(body))
    env = dict(os.environ)
    env.pop("DISTREF_WORKER_TIMEOUT", None)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_BOUND,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    reports: dict[str, object] = {}
    for line in done.stdout.splitlines():
        if line.startswith("REPORT "):
            reports.update(json.loads(line.removeprefix("REPORT ")))
    assert done.returncode == 0, done.stderr
    return reports


def assert_gone(ospids: object) -> None:
    assert isinstance(ospids, list) and len(ospids) == 2
    left = {p: why for p in ospids if (why := leftover_worker(p))}
    assert not left, f"workers left behind: {left}"


def test_blocking_facade_end_to_end(tmp_path: Path) -> None:
    reports = run_script(tmp_path, CLOSING_SCRIPT)
    assert reports["pids"] == [2, 3]
    assert reports["myid"] == 1
    assert reports["on_2"] == 2
    assert reports["fetched"] == 1024
    assert reports["kw"] == [3, 2, 1]
    assert reports["removed"] == [2]
    assert reports["workers"] == [3]
    assert reports["nprocs"] == 2
    assert reports["after_removal"] == "ProcessExitedException"
    assert reports["remote_error"] == [3, "ValueError"]
    assert reports["closed"] is True
    assert_gone(reports["ospids"])


def test_script_that_never_closes_leaves_no_worker(tmp_path: Path) -> None:
    """The atexit hook stops the workers before the interpreter is gone.

    The check runs the moment the script has exited: a worker that only
    noticed its stdin closing would still be shutting down then.
    """
    reports = run_script(tmp_path, FORGETFUL_SCRIPT)
    assert_gone(reports["ospids"])
