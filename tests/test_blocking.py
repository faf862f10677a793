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

import pytest
import trio
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


NEWER_API_SCRIPT = """
import functools, operator, time
import trio

def square(x):
    return x * x

def greeting():
    return getattr(sys.modules["__main__"], "greeting", None)

async def nap(started, seconds):
    await ref.put(started, ref.myid())
    await trio.sleep(seconds)

cookie = d.cluster_cookie("sesame")
pids = d.addprocs(2)
report(ospids=[d.fetchfrom(p, os.getpid) for p in pids], cookie=cookie)

rc = d.RemoteChannel(functools.partial(ref.Channel, 4), 2)
d.put(rc, [10, 20, 30])
d.put(rc, "second")
before = [d.isready(rc), d.isempty(rc), d.isopen(rc), d.getindex(rc, 1)]
took = d.take(rc)
d.close(rc)
after = [d.isopen(rc), d.take(rc), d.isempty(rc)]
mine = d.RemoteChannel()
d.put(mine, "here")
report(channel=[before, took, after], local=[
    mine.rrid in d.live_refs(), d.take(d.channel_from_id(mine.rrid))])

fut = d.spawnat(2, time.sleep, 0.3)
report(timedwait=[d.timedwait(lambda: d.isready(fut), 20, pollint=0.05),
                  d.timedwait(lambda: False, 0.2, pollint=0.05)])

pool = d.WorkerPool([3])
caching = d.CachingPool(pids)
report(
    pmap=d.pmap(square, range(12)),
    pool=d.pmap(lambda _: ref.myid(), range(4), pool=pool),
    caching=sorted(set(d.pmap(lambda _: ref.myid(), range(20), pool=caching))),
    cleared=d.clear(caching) is caching,
    remote=[d.remote(ref.myid, pool)(), d.remote(ref.myid)() in pids],
)
d.push(pool, 2)
default = d.default_worker_pool()
member = d.take(default)
d.put(default, member)
report(pushed=d.workers(pool), default=[member in pids, d.isready(default)])

report(
    spawnat=[d.fetch(d.spawnat(2, ref.myid)), d.fetch(d.spawnat(d.ANY, ref.myid))],
    fetchfrom=d.fetchfrom(3, ref.myid),
    fetch_any=d.fetch_any(ref.myid),
)
d.define_globals({"greeting": "hi"}, procs=pids)
said = [d.everywhere(greeting, procs=3), d.everywhere(greeting, procs=pids)]
d.clear_globals("greeting", pids=[3])
said.append(d.everywhere(greeting, procs=3))
task = d.distributed_for(square, range(4))
d.wait(task)
report(everywhere=said, reduced=d.distributed_for(square, range(10), operator.add),
       loop_done=task.done)

started = d.RemoteChannel(1)
sleeper = d.remotecall(nap, 2, started, 30.0)
assert d.take(started) == 2
d.interrupt(2)
try:
    d.fetch(sleeper)
except ref.RemoteException as exc:
    report(interrupted=type(exc.exception).__name__)
d.close()
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


def test_blocking_facade_covers_channels_pools_pmap_and_the_macros(
    tmp_path: Path,
) -> None:
    reports = run_script(tmp_path, NEWER_API_SCRIPT)
    assert reports["cookie"] == "sesame".ljust(16)
    assert reports["channel"] == [
        [True, False, True, 20],
        [10, 20, 30],
        [False, "second", True],
    ]
    assert reports["local"] == [True, "here"]
    assert reports["timedwait"] == ["ok", "timed_out"]
    assert reports["pmap"] == [x * x for x in range(12)]
    assert reports["pool"] == [3, 3, 3, 3]
    assert reports["caching"] == [2, 3]
    assert reports["cleared"] is True
    assert reports["remote"] == [3, True]
    assert reports["pushed"] == [2, 3]
    assert reports["default"] == [True, True]
    assert reports["spawnat"][0] == 2 and reports["spawnat"][1] in (2, 3)
    assert reports["fetchfrom"] == 3 and reports["fetch_any"] in (2, 3)
    assert reports["everywhere"] == ["hi", None, None]
    assert reports["reduced"] == sum(x * x for x in range(10))
    assert reports["loop_done"] is True
    assert reports["interrupted"] == "KeyboardInterrupt"
    assert_gone(reports["ospids"])


BAD_INPUT_SCRIPT = """
def error_of(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return None

def fail(x):
    raise KeyError(x)

report(
    cookie=error_of(d.cluster_cookie, 5),
    rmprocs_float=error_of(d.rmprocs, 2.0),
    rmprocs_str=error_of(d.rmprocs, "x"),
    delays=error_of(d.pmap, fail, [1], retry_delays=[-1]),
)
d.close()
"""


def test_the_facade_refuses_bad_arguments_as_the_api_does(tmp_path: Path) -> None:
    reports = run_script(tmp_path, BAD_INPUT_SCRIPT)
    assert reports["cookie"] == [
        "TypeError",
        "cluster_cookie: cookie=5 is not a str; pass at most 16 ASCII characters",
    ]
    assert reports["rmprocs_float"][:1] == ["TypeError"]  # type: ignore[index]
    assert "2.0" in reports["rmprocs_float"][1]  # type: ignore[index]
    assert reports["rmprocs_str"][:1] == ["TypeError"]  # type: ignore[index]
    assert "'x'" in reports["rmprocs_str"][1]  # type: ignore[index]
    assert reports["delays"][:1] == ["ValueError"]  # type: ignore[index]
    assert "retry_delays gave -1" in reports["delays"][1]  # type: ignore[index]


def test_the_facade_inside_trio_run_says_to_use_the_async_api() -> None:
    from ref import blocking

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"await ref\.addprocs"):
            blocking.addprocs(1)
        with pytest.raises(RuntimeError, match=r"inside trio\.run"):
            blocking.myid()

    trio.run(main)
    assert blocking._loop is None, "the refused calls started a cluster"
