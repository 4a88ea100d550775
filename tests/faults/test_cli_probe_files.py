"""Faults: probe files whose values are nested deeper than Python's parsers can recurse.

What a user relies on: a hostile or broken probe file is reported as a
``ProbeSetError`` naming the file and the line (``probattr probes`` and
``probattr score`` exit with status 3, one line, no traceback, nothing
created), never a bare ``RecursionError``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from probattr_monitor.cli import main
from probattr_monitor.probes import ProbeSetError, load_probe_set

REPO = Path(__file__).resolve().parents[2]
EXIT_INPUT = 3
DEPTH = 100_000
GOOD_JSONL = '{"id": "ok", "prompt": "a fine probe"}\n'
GOOD_YAML = "- id: ok\n  prompt: a fine probe\n"


def _nested_jsonl(path: Path) -> tuple[Path, int]:
    path.write_text(GOOD_JSONL + "\n" + '{"id": "deep", "prompt": "x", "tags": ' + "[" * DEPTH + "]" * DEPTH
                    + "}\n", encoding="utf-8")
    return path, 3


def _nested_yaml_flow(path: Path) -> tuple[Path, int]:
    path.write_text(GOOD_YAML + "- id: deep\n  prompt: x\n  tags: " + "[" * DEPTH + "]" * DEPTH + "\n",
                    encoding="utf-8")
    return path, 5


def _nested_yaml_object(path: Path) -> tuple[Path, int]:
    path.write_text(GOOD_YAML + "- id: deep\n  prompt: x\n  tags: " + "{a: " * DEPTH + "1" + "}" * DEPTH + "\n",
                    encoding="utf-8")
    return path, 5


FILES = [("jsonl-array", "deep.jsonl", _nested_jsonl), ("yaml-flow-list", "deep.yaml", _nested_yaml_flow),
         ("yaml-flow-mapping", "deep.yml", _nested_yaml_object)]


@pytest.mark.parametrize("name, write", [f[1:] for f in FILES], ids=[f[0] for f in FILES])
def test_nested_probe_file_is_a_probe_set_error_naming_file_and_line(tmp_path, name, write):
    path, line = write(tmp_path / name)
    with pytest.raises(ProbeSetError) as info:
        load_probe_set(path)
    assert info.value.source == str(path) and info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ") and "nested too deeply" in str(info.value)


def test_moderately_nested_tags_report_a_short_message(tmp_path):
    """Nested just below the parser's limit: the field's problem, with the value shortened."""
    path = tmp_path / "nested.jsonl"
    path.write_text('{"id": "a", "prompt": "x", "tags": ' + "[" * 900 + "]" * 900 + "}\n", encoding="utf-8")
    expected = r"nested\.jsonl:1: probe 'a': field 'tags' must be a list of strings"
    with pytest.raises(ProbeSetError, match=expected) as info:
        load_probe_set(path)
    assert len(str(info.value)) < 300  # not the 1800 brackets of the value


@pytest.mark.parametrize("name, write", [f[1:] for f in FILES], ids=[f[0] for f in FILES])
def test_probes_command_reports_a_nested_file_in_one_line(tmp_path, capsys, name, write):
    path, line = write(tmp_path / name)
    code = main(["probes", str(path)])
    out, err = capsys.readouterr()
    assert code == EXIT_INPUT
    assert f"{path}:{line}:" in err and "nested too deeply" in err
    assert "Traceback" not in err and "RecursionError" not in err and out == ""


def test_score_rejects_a_nested_probe_file_before_anything_in_a_real_process(tmp_path):
    """The model does not exist: reaching it would be another error; --out is never created."""
    path, line = _nested_jsonl(tmp_path / "deep.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "probattr_monitor.cli", "score", "--model", str(tmp_path / "none"),
                           "--probes", str(path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == EXIT_INPUT, proc.stderr
    assert f"{path}:{line}:" in proc.stderr and "nested too deeply" in proc.stderr
    assert "Traceback" not in proc.stderr and "model not found" not in proc.stderr
    assert not (tmp_path / "out").exists()
