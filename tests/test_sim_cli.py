"""``python -m sim``: list, run, sweep, and reproducing a failing seed."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sim._cli import main
from sim._faults import FaultPlan
from sim.scenarios import SCENARIOS


def _python_m_sim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_list_names_every_builtin_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(SCENARIOS)
    assert {"ping", "kill-pending", "partition", "slow-launch", "many-workers"} <= set(
        listed
    )


def test_run_prints_the_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "ping", "--seed", "4", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ping seed 4: ok\n")
    assert "deliveries" in out


def test_a_failing_run_exits_non_zero_with_the_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["run", "ping", "--seed", "4", "--faults", "fail-launch:launch=1"])
    assert code == 1
    assert "FAIL: LaunchError" in capsys.readouterr().out


def test_running_twice_with_a_trace_writes_identical_files(tmp_path: Path) -> None:
    for name in ("first.jsonl", "second.jsonl"):
        done = _python_m_sim(
            "run", "partition", "--seed", "12", "--trace", name, cwd=tmp_path
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "partition seed 12: ok" in done.stdout
    first = (tmp_path / "first.jsonl").read_bytes()
    assert first == (tmp_path / "second.jsonl").read_bytes()
    assert b'"fault":"partition"' in first


def test_a_sweep_of_passing_seeds_exits_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["sweep", "kill-pending", "--seeds", "1..5"]) == 0
    assert "5 of 5 seeds passed" in capsys.readouterr().out


def test_a_sweep_counts_the_endings_of_scenarios_that_name_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["sweep", "pmap-crashes", "--seeds", "0..1"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 seeds passed" in out
    [line] = [x for x in out.splitlines() if x.startswith("endings of the passing")]
    counts = [int(word.strip(",")) for word in line.split(": ")[1].split()[1::2]]
    assert sum(counts) == 2, line


def test_a_failing_sweep_prints_a_command_that_reproduces_it(tmp_path: Path) -> None:
    done = _python_m_sim(
        "sweep",
        "ping",
        "--seeds",
        "3..9",
        "--faults",
        "fail-launch:launch=1",
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.count(": FAIL: LaunchError") == 1
    first = next(
        line.split(": ")[1]
        for line in done.stdout.splitlines()
        if line.startswith("first failing seed")
    )
    [command] = [
        line.removeprefix("reproduce: ")
        for line in done.stdout.splitlines()
        if line.startswith("reproduce: ")
    ]
    words = shlex.split(command)
    assert words[:4] == ["python", "-m", "sim", "run"]
    assert words[words.index("--seed") + 1] == first == "3"

    again = _python_m_sim(*words[3:], cwd=tmp_path)
    assert again.returncode == 1, again.stdout
    assert (tmp_path / f"ping-{first}.jsonl").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "no-such-scenario", "--seed", "1"],
        ["run", "ping", "--seed", "1", "--faults", "explode:pid=2"],
        ["sweep", "ping", "--seeds", "9..3"],
        ["run", "ping", "--seed", "1", "--workers", "0"],
        ["sweep", "ping", "--seeds", "1..2", "--workers", "many"],
        ["run", "ping", "--seed", "1", "--trace", "no-such-folder/trace.jsonl"],
        ["run", "ping", "--seed", "1", "--trace", "."],
        ["run", "ping", "--seed", "1", "--faults", "crash"],
    ],
)
def test_bad_arguments_exit_with_status_2(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit) as exited:
        main(argv)

    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_faults_missing_a_field_name_it_under_the_subcommands_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["sweep", "ping", "--seeds", "1..2", "--faults", "crash;reset:at=1"])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m sim sweep"), err
    assert "Crash: missing pid (e.g. crash:pid=...)" in err


def test_a_fault_missing_several_fields_names_them_all() -> None:
    with pytest.raises(
        ValueError, match=r"Reset: missing a, b \(e.g. reset:a=...,b=...\)"
    ):
        FaultPlan.parse("reset:at=1")


def test_a_trace_naming_a_directory_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "ping", "--seed", "1", "--trace", str(tmp_path)])

    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert "is a directory" in captured.err
    assert captured.out == ""  # refused before running anything


def test_a_sweep_over_negative_seeds_runs_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["sweep", "ping", "--seeds", "-3..-1", "--workers", "1"]) == 0
    assert "3 of 3 seeds passed" in capsys.readouterr().out
    assert main(["sweep", "ping", "--seeds", "-2", "--workers", "1"]) == 0
    assert "1 of 1 seeds passed" in capsys.readouterr().out


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    child = subprocess.Popen(
        [sys.executable, "-m", "sim", "list"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Closed before the interpreter has even started: every write fails.
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    err = child.stderr.read().decode()
    child.stderr.close()
    child.wait(timeout=120)
    assert "BrokenPipeError" not in err, err
    assert "Traceback" not in err, err
