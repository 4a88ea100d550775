"""Faults: ``probattr compare`` / ``select`` on report directories that were written by
``Report.save`` and then damaged, and ``select`` gates that are not numbers.

What a user relies on: a report that cannot be read is an error of its own
(exit status 3) whose one-line message names the directory, the file and the
cause -- never a traceback, never exit status 1 (which ``select`` reserves for
"no checkpoint passes"), and nothing printed on stdout that a script could take
for a result. A gate of NaN or infinity is a usage error (2) naming the option,
rejected before any report is read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from helpers.results import make_result  # noqa: E402
from probattr_monitor.cli import main  # noqa: E402
from probattr_monitor.report import Report  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EXIT_NONE_PASSES, EXIT_USAGE, EXIT_INPUT = 1, 2, 3


def _report(step: int, n_tokens: int, seed: int) -> Report:
    rng = np.random.default_rng(seed)
    result = make_result(rng.normal(0, 1, n_tokens), rng.uniform(0, 4, n_tokens))
    return Report.from_results([("p1", result)], step=step, n_boot=20,
                               meta={"probes": {"name": "faults", "fingerprint": "f" * 64}})


@pytest.fixture
def saved(tmp_path):
    """Two good report directories (steps 1 and 2, different token counts) written by Report.save."""
    dirs = {}
    for step, n in ((1, 6), (2, 9)):
        dirs[step] = tmp_path / f"step-{step}"
        _report(step, n, seed=step).save(dirs[step], ("csv", "parquet", "json"))
    return dirs


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_invalid_json(path: Path) -> None:
    path.write_text(path.read_text(encoding="utf-8")[:40], encoding="utf-8")


def _corrupt_deep_json(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")


def _corrupt_wrong_types(path: Path) -> None:
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["columns"] = 5
    path.write_text(json.dumps(manifest), encoding="utf-8")


def _json_only(directory: Path) -> None:
    (directory / "tokens.parquet").unlink()
    (directory / "tokens.csv").unlink()


# (case id, file damaged, how, words of which the message must carry one: the cause)
CORRUPTIONS = [
    ("truncated-parquet", "tokens.parquet", _truncate, ("corrupt", "magic bytes", "truncated")),
    ("invalid-json-metrics", "metrics.json", _corrupt_invalid_json, ("expecting", "invalid json")),
    ("too-deep-json-metrics", "metrics.json", _corrupt_deep_json, ("nested too deeply", "recursion")),
    ("wrong-types-in-metrics", "metrics.json", _corrupt_wrong_types, ("typeerror", "columns")),
]


@pytest.mark.parametrize("command", ["compare", "select"])
@pytest.mark.parametrize("case, name, corrupt, cause", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupted_report_is_an_input_error_naming_the_file(saved, capsys, command, case, name, corrupt, cause):
    bad = saved[2]
    corrupt(bad / name)
    code, out, err = _run(capsys, command, saved[1], bad, *(["--max", "1"] if command == "select" else []))
    assert code == EXIT_INPUT, err
    assert "Traceback" not in err
    assert f"cannot read the report in {bad}" in err
    assert name in err and any(word in err.lower() for word in cause), err
    assert out == ""  # no partial table, no selection a script could pick up


def test_invalid_report_json_of_a_json_only_save_names_it(saved, capsys):
    bad = saved[2]
    _json_only(bad)
    _corrupt_invalid_json(bad / "report.json")
    code, out, err = _run(capsys, "compare", saved[1], bad)
    assert code == EXIT_INPUT and "Traceback" not in err and out == ""
    assert f"cannot read the report in {bad}" in err and "report.json" in err


def test_table_swapped_in_from_another_save_is_refused(saved, capsys):
    """A token table copied over from another report does not load as a mixed report."""
    shutil.copy(saved[2] / "tokens.parquet", saved[1] / "tokens.parquet")
    code, out, err = _run(capsys, "select", saved[1], saved[2], "--max", "1")
    assert code == EXIT_INPUT and "Traceback" not in err and out == ""
    assert f"cannot read the report in {saved[1]}" in err and "tokens.parquet" in err


def test_select_over_a_corrupted_report_never_exits_1_in_a_real_process(saved):
    """`python -m probattr_monitor.cli select`: a crash is no longer the status of "none passes"."""
    _truncate(saved[2] / "tokens.parquet")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "probattr_monitor.cli", "select", str(saved[1]), str(saved[2]),
                           "--max", "1", "--path-only"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == EXIT_INPUT, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert str(saved[2]) in proc.stderr and "tokens.parquet" in proc.stderr


def test_select_none_passes_still_exits_1(saved, capsys):
    """The documented status of a gate nobody passes is unchanged."""
    code, _, err = _run(capsys, "select", saved[1], saved[2], "--max", "-1")
    assert code == EXIT_NONE_PASSES and "no checkpoint passes the gate" in err


NON_FINITE = [("--max", "nan"), ("--max", "NaN"), ("--min", "nan"), ("--max", "inf"), ("--min", "-inf"),
              ("--max", "1e999"), ("--min", "-Infinity")]


@pytest.mark.parametrize("flag, value", NON_FINITE, ids=[f"{f}={v}" for f, v in NON_FINITE])
def test_non_finite_select_threshold_is_a_usage_error(saved, capsys, flag, value):
    """`--max nan` made every checkpoint fail the gate (exit 1, "none passes"): now rejected at parsing."""
    code, out, err = _run(capsys, "select", saved[1], saved[2], f"{flag}={value}")
    assert code == EXIT_USAGE and out == ""
    assert f"argument {flag}:" in err and "finite" in err and repr(value) in err
    assert "Traceback" not in err


def test_non_finite_threshold_is_rejected_before_any_report_is_read(tmp_path, capsys):
    code, _, err = _run(capsys, "select", tmp_path / "missing", "--max", "nan")
    assert code == EXIT_USAGE and "argument --max:" in err and "not a directory" not in err
