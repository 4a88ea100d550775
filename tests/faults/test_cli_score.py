"""Faults: ``probattr score`` with an output directory it cannot write, numeric options
that are not numbers, and a checkpoint that cannot score a single probe.

What a user relies on: whatever can be checked before the model is loaded is
checked first -- an unwritable ``--out`` fails at once (exit status 3), naming
the path and the cause, before the model is loaded or a probe scored; a bad
option value is a usage error (2) naming the option; a checkpoint that scores
nothing exits 4 (not 1, which ``select`` uses for "no checkpoint passes") and
leaves the report already in ``--out`` as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.models import checkpoint_gpt2
from helpers.probes import write_probes
from helpers.word_tokenizers import trained_word_tokenizer
from probattr_monitor.cli import main
from probattr_monitor.report import Report

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
EXIT_USAGE, EXIT_INPUT, EXIT_SCORING = 2, 3, 4
PROBES = ({"id": "cat", "prompt": "the cat sat on the mat"}, {"id": "dog", "prompt": "a dog ran to the park"})
QUICK = ("--candidates", "all", "--max-new-tokens", "2", "--n-boot", "0", "--no-plots", "--formats", "json")


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_thread):
    """A tiny GPT-2 directory, the same with NaN weights (a diverged checkpoint), a broken one, a probe file."""
    root = tmp_path_factory.mktemp("cli-score-faults")
    tok = trained_word_tokenizer([p["prompt"] for p in PROBES], ["<eos>", "<unk>"], eos_token="<eos>",
                                 unk_token="<unk>")
    good = checkpoint_gpt2(len(tok), 1)
    good.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    diverged = checkpoint_gpt2(len(tok), 1)
    with torch.no_grad():
        diverged.transformer.ln_f.weight.fill_(float("nan"))
    diverged.save_pretrained(root / "diverged")
    tok.save_pretrained(root / "diverged")
    broken = root / "broken"  # loading it fails with its own error: reaching it means --out was not checked first
    broken.mkdir()
    tok.save_pretrained(broken)
    (broken / "config.json").write_text("{ this is not a model config", encoding="utf-8")
    write_probes(root / "probes.jsonl", PROBES)
    (root / "a-file").write_text("not a directory\n", encoding="utf-8")
    return root


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- --out


# (case id, --out under the module's directory, what the message says about it)
UNWRITABLE = [("under-a-file", ("a-file", "report"), "a-file is a file"),
              ("deep-under-a-file", ("a-file", "x", "y"), "a-file is a file"),
              ("is-a-file", ("a-file",), "exists and is not a directory")]


@pytest.mark.parametrize("parts, cause", [c[1:] for c in UNWRITABLE], ids=[c[0] for c in UNWRITABLE])
def test_unwritable_out_fails_before_the_model_is_loaded(files, capsys, parts, cause):
    """The broken model would fail to load with its own message: the --out error comes first."""
    out_dir = files.joinpath(*parts)
    code, out, err = _run(capsys, "score", "--model", files / "broken", "--probes", files / "probes.jsonl",
                          "--out", out_dir, *QUICK)
    assert code == EXIT_INPUT, err
    assert f"--out {out_dir}" in err and cause in err
    assert "cannot load the model" not in err and "Traceback" not in err and out == ""


def test_unwritable_out_starts_no_scoring_in_a_real_process(files):
    """With a loadable model and -v: the command stops at the --out check, nothing is scored."""
    out_dir = files / "a-file" / "report"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "probattr_monitor.cli", "score", "--model", str(files / "model"),
                           "--probes", str(files / "probes.jsonl"), "--out", str(out_dir), "-v", *QUICK],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == EXIT_INPUT, proc.stderr
    assert f"--out {out_dir}: cannot create the directory" in proc.stderr and "a-file is a file" in proc.stderr
    assert "probe set 'probes': 2 probes" in proc.stderr  # the probe file was checked ...
    assert "scoring" not in proc.stderr  # ... but no model was run
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def _writable(directory: Path) -> bool:
    try:
        (directory / ".probattr-test-write").touch()
    except OSError:
        return False
    (directory / ".probattr-test-write").unlink()
    return True


@pytest.fixture
def read_only_dir(tmp_path):
    """An existing directory no file can be created in: chmod 0o500, or (as root, who ignores modes) /sys/kernel."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o500)
    if not _writable(directory):
        yield directory
    elif Path("/sys/kernel").is_dir() and not _writable(Path("/sys/kernel")):
        yield Path("/sys/kernel")
    else:
        pytest.skip("no directory this user cannot write")
    directory.chmod(0o700)


def test_read_only_out_fails_before_the_model_is_loaded(files, capsys, read_only_dir):
    code, _, err = _run(capsys, "score", "--model", files / "broken", "--probes", files / "probes.jsonl",
                        "--out", read_only_dir, *QUICK)
    assert code == EXIT_INPUT, err
    assert f"--out {read_only_dir}: the directory is not writable" in err
    assert "cannot load the model" not in err and "Traceback" not in err


def test_out_created_for_a_run_that_fails_is_not_left_behind(files, capsys, tmp_path):
    out_dir = tmp_path / "new" / "runs" / "step-1"
    code, _, err = _run(capsys, "score", "--model", files / "broken", "--probes", files / "probes.jsonl",
                        "--out", out_dir, *QUICK)
    assert code == EXIT_INPUT and "cannot load the model" in err
    assert not (tmp_path / "new").exists()


def test_writable_out_is_written(files, capsys, tmp_path):
    out_dir = tmp_path / "new" / "step-1"
    code, _, err = _run(capsys, "score", "--model", files / "model", "--probes", files / "probes.jsonl",
                        "--out", out_dir, *QUICK)
    assert code == 0, err
    assert Report.load(out_dir).metrics.n_probes == 2
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # the write check left nothing


# --------------------------------------------------------------------------- nothing scored


def test_checkpoint_that_scores_nothing_exits_4_and_keeps_the_previous_report(files, capsys, tmp_path):
    out_dir = tmp_path / "step"
    code, _, err = _run(capsys, "score", "--model", files / "model", "--probes", files / "probes.jsonl",
                        "--out", out_dir, "--step", "1", *QUICK)
    assert code == 0, err
    before = Report.load(out_dir)
    code, out, err = _run(capsys, "score", "--model", files / "diverged", "--probes", files / "probes.jsonl",
                          "--out", out_dir, "--step", "2", *QUICK)
    assert code == EXIT_SCORING
    assert "no probe could be scored (2 failed" in err and "non-finite" in err and "Traceback" not in err
    after = Report.load(out_dir)
    assert after.step == 1 and after.metrics.to_dict() == before.metrics.to_dict()


# --------------------------------------------------------------------------- numeric options

BAD_VALUES = [
    ("--limit-probes", "0"), ("--limit-probes", "-3"), ("--limit-probes", "nan"), ("--limit-probes", "1.5"),
    ("--max-new-tokens", "0"), ("--max-new-tokens", "inf"), ("--num-samples", "0"), ("--batch-size", "-1"),
    ("--threads", "0"), ("--seed", "-1"), ("--seed", "nan"), ("--seed", "1.5"), ("--top-p", "nan"),
    ("--top-p", "0"), ("--top-p", "1.5"), ("--top-p", "inf"), ("--entropy-threshold", "nan"),
    ("--entropy-threshold", "inf"), ("--entropy-threshold", "-0.5"), ("--n-boot", "-1"), ("--n-boot", "nan"),
]


@pytest.mark.parametrize("flag, value", BAD_VALUES, ids=[f"{f}={v}" for f, v in BAD_VALUES])
def test_bad_numeric_option_is_a_usage_error_naming_it(files, capsys, tmp_path, flag, value):
    """Rejected while parsing: the model (broken here) is never reached, --out never created."""
    code, out, err = _run(capsys, "score", "--model", files / "broken", "--probes", files / "probes.jsonl",
                          "--out", tmp_path / "o", f"{flag}={value}")
    assert code == EXIT_USAGE, err
    assert f"argument {flag}: expected" in err and repr(value) in err
    assert "Traceback" not in err and out == "" and not (tmp_path / "o").exists()
