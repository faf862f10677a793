"""Reading recorded runs as model histories (``spec.records``), offline.

The records here are written by hand in the documented format, so these
tests pin the reader without running a cluster; the trace campaign
(test_trace_refinement.py) reads real ones.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from spec import model as m
from spec import records
from spec.lifecycles import ModelError
from spec.refinement import Invoke, Refuted, Respond

HEADER = {"format": records.SIM_TRACE_FORMAT, "version": 2, "seed": 0}


def call(n: int, api: str, *args: Any, pid: int = 1, **kwargs: Any) -> dict[str, Any]:
    return {
        "kind": "api_call",
        "call": n,
        "pid": pid,
        "api": api,
        "args": list(args),
        "kwargs": kwargs,
        "nested": False,
    }


def ret(n: int, value: Any) -> dict[str, Any]:
    return {"kind": "api_return", "call": n, "value": value}


def raised(n: int, error: str, pid: int | None = None) -> dict[str, Any]:
    return {
        "kind": "api_raise",
        "call": n,
        "error": error,
        "error_pid": pid,
        "inner": None,
    }


def fn(name: str, *args: Any) -> dict[str, Any]:
    return {"fn": f"model_fns.{name}", "args": list(args)}


def trace(*events: dict[str, Any]) -> str:
    lines = [HEADER, *({"seq": i, "t": i, **e} for i, e in enumerate(events))]
    return "".join(json.dumps(line) + "\n" for line in lines)


def ops(text: str) -> list[m.Op]:
    [cluster] = records.read_records(text)
    history = records.translate(cluster).history
    return [e.op for e in history if isinstance(e, Invoke)]


def test_calls_become_operations_and_answers_outcomes() -> None:
    text = trace(
        call(0, "addprocs", 2),
        ret(0, [2, 3]),
        call(1, "remotecall_fetch", fn("my_id"), 3),
        ret(1, 3),
        call(2, "remotecall_fetch", fn("fail"), 2),
        {**raised(2, "RemoteException", 2), "inner": "ValueError"},
        call(3, "RemoteChannel", {"fn": "ref._channel.Channel", "args": [0]}, 2),
        ret(3, {"ref": "channel", "where": 2, "rrid": [1, 5]}),
        call(4, "pmap", fn("fail_on", 2), [1, 2], on_error=fn("const_on_error", 0)),
        ret(4, [1, 0]),
        call(5, "remotecall_fetch", {"fn": "elsewhere.f", "args": []}, 2),
        ret(5, None),
    )
    [cluster] = records.read_records(text)
    translation = records.translate(cluster)
    assert [e.op for e in translation.history if isinstance(e, Invoke)] == [
        m.AddProcs(2),
        m.RemoteCallFetch(3, m.MyId()),
        m.RemoteCallFetch(2, m.Fail()),
        m.NewChannel("c3", 2, 0),
        m.PMap(m.FailOn(2), (1, 2), None, on_error=m.Const(0)),
    ]
    answers = [e.outcome for e in translation.history if isinstance(e, Respond)]
    assert answers[2] == m.Raised("RemoteException", 2, "ValueError")
    assert translation.skipped == {"remotecall_fetch": 1}
    records.check_records(cluster)


def test_worker_calls_and_nested_calls_are_not_the_masters() -> None:
    text = trace(
        call(0, "procs", pid=2),
        ret(0, [1, 2]),
        {**call(1, "procs"), "nested": True},
        ret(1, [1]),
    )
    assert ops(text) == []


def test_faults_become_operations_answered_at_once() -> None:
    text = trace(
        call(0, "addprocs", 3),
        ret(0, [2, 3, 4]),
        {"kind": "fault", "fault": "crash", "pid": 2},
        {"kind": "fault", "fault": "crash", "pid": 9, "skipped": True},
        {"kind": "fault", "fault": "interrupt", "pid": 3},  # so does this
        {"kind": "reset", "a": 4, "b": 1, "why": "fault"},
        {"kind": "reset", "a": 4, "b": 1, "why": "fault"},  # once is enough
        {"kind": "reset", "a": 3, "b": 2, "why": "reset by peer"},
        {"kind": "fault", "fault": "kill", "pid": 3},  # the API call says it
    )
    assert ops(text) == [m.AddProcs(3), m.Crash(2), m.Crash(4)]


def test_a_failed_launch_counts_against_its_addprocs() -> None:
    text = trace(
        call(0, "addprocs", 2),
        {"kind": "launch", "fail": True},
        {"kind": "launch", "fail": False},
        raised(0, "LaunchErrorGroup"),
    )
    [cluster] = records.read_records(text)
    history = records.translate(cluster).history
    assert history == [
        Invoke(0, m.AddProcs(2, failed=1)),
        Respond(0, m.Raised("LaunchError")),
    ]


def test_faults_the_model_lacks_are_refused() -> None:
    between_workers = trace({"kind": "reset", "a": 3, "b": 2, "why": "fault"})
    with pytest.raises(ModelError, match="between workers 3 and 2"):
        ops(between_workers)
    with pytest.raises(ModelError, match="not modelled"):
        ops(trace({"kind": "fault", "fault": "meteor", "pid": 2}))


def test_a_hang_never_resumed_waives_the_liveness_check() -> None:
    hung = [
        call(0, "addprocs", 1),
        ret(0, [2]),
        {"kind": "fault", "fault": "hang", "pid": 2},
        call(1, "remotecall_fetch", fn("const", 1), 2),
    ]
    [cluster] = records.read_records(trace(*hung))
    assert not records.translate(cluster).liveness
    records.check_records(cluster)  # the call may wait for ever
    resumed = [*hung, {"kind": "fault", "fault": "resume", "pid": 2}]
    [cluster] = records.read_records(trace(*resumed))
    assert records.translate(cluster).liveness
    with pytest.raises(Refuted, match="had to answer"):
        records.check_records(cluster)


def test_clusters_are_checked_apart(tmp_path: Path) -> None:
    path = tmp_path / "two.jsonl"
    path.write_text(
        trace(
            {"kind": "cluster", "index": 0},
            call(0, "addprocs", 1),
            ret(0, [2]),
            {"kind": "cluster", "index": 1},
            call(1, "addprocs", 1),
            ret(1, [2]),  # pids start again in a new cluster
        ),
        encoding="ascii",
    )
    verdict = records.check_file(path)
    assert (verdict.clusters, verdict.checked) == (2, 2)


def test_a_ref_history_file_has_no_header(tmp_path: Path) -> None:
    path = tmp_path / "ref.jsonl"
    lines = [call(0, "nprocs"), ret(0, 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    with pytest.raises(Refuted):
        records.check_file(path)  # a fresh cluster has one process
    lines[1] = ret(0, 1)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    assert records.check_file(path).checked == 1


def test_old_and_foreign_files_are_refused_with_the_reason() -> None:
    with pytest.raises(ModelError, match="version=1"):
        records.read_records(json.dumps({**HEADER, "version": 1}))
    with pytest.raises(ModelError, match="not a simulator trace"):
        records.read_records('{"format":"other","version":2}\n')
    with pytest.raises(ModelError, match="line 2: not JSON"):
        records.read_records(json.dumps(call(0, "nprocs")) + "\nnope\n")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty: no header and no records"),
        ("\n  \n", "empty: no header and no records"),
        ("{}", "line 1: kind=None is not an API record"),
        ('{"kind":"end"}', "line 1: kind='end' is not an API record"),
        (json.dumps({**HEADER, "version": 99}), "version=99 is unknown"),
        ('{"kind":"api_call","call":0,"api":"procs","args":[]}', "without 'pid'"),
        ('{"kind":"api_call","call":0,"pid":true,"api":"procs","args":[]}', "pid=True"),
        ('{"kind":"api_return","value":1}', "api_return record without 'call'"),
        ('{"kind":"fault"}', "fault record without 'fault'"),
        ("\n" + json.dumps(call(0, "frobnicate")), "line 2: api='frobnicate'"),
    ],
)
def test_what_is_not_a_recording_is_refused_naming_the_line(
    text: str, problem: str
) -> None:
    with pytest.raises(ModelError, match=re.escape(problem)) as info:
        records.read_records(text, source="in.jsonl")
    assert str(info.value).startswith("in.jsonl")


def test_the_command_line_refuses_bad_files_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        "empty.jsonl": (b"", "empty"),
        "binary.jsonl": (bytes(range(128, 256)), "not UTF-8 text (byte 0)"),
        "frob.jsonl": (json.dumps(call(0, "frobnicate")).encode(), "line 1: api="),
    }
    for name, (data, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert records.main([str(path)]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.count("\n") == 1 and str(path) in err and problem in err


def test_the_recorded_api_names_match_the_recording() -> None:
    from ref import _history

    assert {
        *_history.RECORDED,
        *(f"pool.{name}" for name in _history.POOL_METHODS),
        "kill",
        "WorkerPool",
        "Future",
        "RemoteChannel",
    } == records.RECORDED_APIS


def test_the_newest_trace_version_is_the_simulators() -> None:
    import sim

    assert records.LATEST_VERSION == sim.FORMAT_VERSION
