"""The ``probattr`` command line, end to end on a tiny GPT-2 saved to temporary directories.

Two "checkpoints" (same tokenizer, different random weights) are scored, then
compared and selected; a Lightning-style ``.ckpt`` is scored with ``--config``;
the expected errors exit with their own status (2 usage, 3 input) and a one-line message, no traceback.
"""

from __future__ import annotations

import dataclasses

import json
import math
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
from probattr_monitor.cli.candidates import CandidateSpec, parse_candidates
from probattr_monitor.cli.checkpoint import detect_prefix
from probattr_monitor.cli.errors import CLIError
from probattr_monitor.probes import load_probe_set
from probattr_monitor.engine.budget import Budget
from probattr_monitor.report import Report
from probattr_monitor.scoring import ScoringConfig

REPO = Path(__file__).resolve().parents[1]

# Short prompts made of words of the paper probes: cheap to score exactly.
PROBES = (
    {"id": "tim", "prompt": "Tim was nervous about his talk , but he took deep breaths"},
    {"id": "surfer", "prompt": "The surfer checked the weather forecast and headed to the beach"},
    {"id": "chang", "prompt": "Dr. Chang packed her tent and food for the journey"},
)

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_thread):
    """Two HF model directories, a Lightning-style .ckpt, and a probe file."""
    root = tmp_path_factory.mktemp("cli")
    tok = trained_word_tokenizer([p.prompt for p in load_probe_set("paper")], ["<eos>", "<unk>"],
                                 eos_token="<eos>", unk_token="<unk>")
    for seed in (1, 2):
        checkpoint_gpt2(len(tok), seed).save_pretrained(root / f"ckpt-{seed}")
        tok.save_pretrained(root / f"ckpt-{seed}")
    lit = root / "lightning"
    lit.mkdir()
    state = checkpoint_gpt2(len(tok), 3).state_dict()
    torch.save({"state_dict": {"model." + k: v for k, v in state.items()}, "global_step": 7,
                "hyper_parameters": {"lr": 0.001}}, lit / "step-7.ckpt")
    write_probes(root / "probes.jsonl", PROBES)
    return root


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def scored(files):
    """Both HF checkpoints scored with --candidates all (once for the module)."""
    runs = {}
    for seed, extra in ((1, []), (2, ["--no-plots"])):
        out = files / "runs" / f"ckpt-{seed}"
        code = main(["score", "--model", str(files / f"ckpt-{seed}"), "--probes", str(files / "probes.jsonl"),
                     "--candidates", "all", "--max-new-tokens", "3", "--limit-probes", "2", "--n-boot", "200",
                     "--out", str(out), "-q", *extra])
        assert code == 0
        runs[seed] = out
    return runs


# --------------------------------------------------------------------------- help


def test_help_mentions_every_subcommand(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    for cmd in ("score", "compare", "select", "probes"):
        assert cmd in out
    for cmd, words in (("score", ["--candidates", "--decoding", "--config", "--trust-remote-code", "budgeted estimator"]),
                       ("compare", ["--plot", "--json"]), ("select", ["--metric", "--max", "--mode"])):
        code, out, _ = _run(capsys, cmd, "--help")
        assert code == 0
        for w in words:
            assert w in out, (cmd, w)


def test_usage_error_exits_2(capsys):
    code, _, err = _run(capsys, "score", "--out", "x")
    assert code == 2
    assert "probattr: error:" in err and "--model" in err
    code, _, err = _run(capsys, "score", "--model", "m", "--out", "x", "--candidates", "1,two")
    assert code == 2 and "'two' is not a token id" in err


def test_probes_lists_builtin_sets(capsys):
    code, out, _ = _run(capsys, "probes")
    assert code == 0 and "paper" in out and "reasonable-en" in out


# --------------------------------------------------------------------------- score / compare / select


def test_score_writes_report_metrics_and_plots(scored, files):
    out = scored[1]
    for name in ("metrics.json", "tokens.csv", "report.json", "tokens.html", "entropy_vs_as.png",
                 "kl_vs_as.png", "tokens_tim.png", "tokens_surfer.png"):
        assert (out / name).is_file(), name
    assert not (scored[2] / "entropy_vs_as.png").exists()  # --no-plots
    report = Report.load(out)
    assert report.step == "ckpt-1"
    assert report.metrics.n_probes == 2  # --limit-probes
    assert set(report.table["probe_id"]) == {"tim", "surfer"}
    assert report.meta["candidates_spec"]["kind"] == "all"
    assert report.meta["scoring"]["max_new_tokens"] == 3
    assert report.meta["model"]["kind"] == "hf-directory"
    assert report.meta["probes"]["fingerprint"] == Report.load(scored[2]).meta["probes"]["fingerprint"]
    assert math.isfinite(report.metrics.noise_rate.value)


def test_score_prints_summary(files, capsys, tmp_path):
    code, out, err = _run(capsys, "score", "--model", files / "ckpt-1", "--probes", files / "probes.jsonl",
                          "--candidates", "5,9,", "--max-new-tokens", "2", "--limit-probes", "1", "--step", "1000",
                          "--n-boot", "50", "--no-plots", "--formats", "json", "--out", tmp_path / "r")
    assert code == 0, err
    assert "noise_rate =" in out and "1/1 probes" in out
    assert "Traceback" not in err
    report = Report.load(tmp_path / "r")
    assert report.step == 1000  # integer labels are stored as numbers
    assert report.meta["candidates_spec"] == {"kind": "ids", "source": "list", "n": 2,
                                              "vocab_size": report.meta["candidates_spec"]["vocab_size"]}
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["metrics.json", "report.json"]


def test_compare_two_checkpoints(scored, capsys, tmp_path):
    a, b = scored[1], scored[2]
    code, out, err = _run(capsys, "compare", a, b, "--plot", tmp_path / "noise.png")
    assert code == 0, err
    assert "ckpt-1" in out and "ckpt-2" in out and "noise_rate" in out
    assert "paired" in out and "b - a" in out
    assert "changed AS class" in out
    assert "NOT scored on the same probes" not in out
    assert (tmp_path / "noise.png").is_file()

    code, out, _ = _run(capsys, "compare", a, b, "--json")
    data = json.loads(out)
    assert code == 0 and data["same_probes"] is True
    assert [c["label"] for c in data["checkpoints"]] == ["ckpt-1", "ckpt-2"]
    assert data["comparison"]["paired"] is True
    expected = len(Report.load(a).diff_classes(Report.load(b)))
    assert data["changed_tokens"]["count"] == expected
    assert len(data["changed_tokens"]["first"]) == min(expected, 20)


def test_select_best_passing_checkpoint(scored, capsys):
    a, b = scored[1], scored[2]
    va, vb = (Report.load(d).metrics.mean_entropy_full.value for d in (a, b))
    assert va != vb
    low, high = (a, b) if va < vb else (b, a)
    gate = (va + vb) / 2

    # mean_entropy_full declares no direction of its own: --mode is required
    code, out, _ = _run(capsys, "select", a, b, "--metric", "mean_entropy_full", "--max", 1e9, "--mode", "min")
    assert code == 0 and out.startswith(f"selected: {low}")
    code, out, _ = _run(capsys, "select", a, b, "--metric", "mean_entropy_full", "--max", 1e9, "--mode", "max")
    assert code == 0 and out.startswith(f"selected: {high}")
    code, out, _ = _run(capsys, "select", a, b, "--metric", "mean_entropy_full", "--min", gate, "--mode", "min",
                        "--json")
    data = json.loads(out)
    assert code == 0 and data["selected"] == str(high)
    assert [c["passes"] for c in data["checkpoints"]] == [high == a, high == b]
    assert "< min" in next(c["reason"] for c in data["checkpoints"] if not c["passes"])


def test_select_defaults_to_the_lowest_mean_surprisal_prefix(scored, capsys):
    a, b = scored[1], scored[2]
    va, vb = (Report.load(d).metrics.mean_surprisal_prefix.value for d in (a, b))
    assert math.isfinite(va) and math.isfinite(vb) and va != vb
    low = a if va < vb else b
    for dirs in ((a, b), (b, a)):  # the lowest wins whichever is given first
        code, out, err = _run(capsys, "select", *dirs)
        assert code == 0, err
        assert out.startswith(f"selected: {low}") and "mean_surprisal_prefix =" in out
    code, out, _ = _run(capsys, "select", a, b, "--json")
    data = json.loads(out)
    assert code == 0 and (data["metric"], data["mode"], data["selected"]) == ("mean_surprisal_prefix", "min", str(low))
    # the metric's own direction is the default mode: an explicit --mode max picks the other one
    code, out, _ = _run(capsys, "select", a, b, "--mode", "max")
    assert code == 0 and out.startswith(f"selected: {b if low == a else a}")


def test_select_metric_without_a_direction_needs_mode(scored, capsys):
    code, out, err = _run(capsys, "select", scored[1], scored[2], "--metric", "mean_kl")
    assert code == 2 and out == ""
    assert "--mode" in err and "mean_kl" in err and "Traceback" not in err
    code, out, err = _run(capsys, "select", scored[1], scored[2], "--metric", "mean_kl", "--mode", "max")
    assert code == 0, err
    assert out.startswith("selected: ")


def test_select_none_passes_exits_1(scored, capsys):
    code, out, err = _run(capsys, "select", scored[1], scored[2], "--metric", "noise_rate", "--max", -1)
    assert code == 1
    assert "no checkpoint passes the gate noise_rate <= -1" in err
    assert out.count("fails: value") == 2


def test_console_entry_point_in_a_subprocess(scored):
    """`python -m probattr_monitor.cli` runs the same `main` as the `probattr` script."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "probattr_monitor.cli", "select", str(scored[1]), str(scored[2]),
           "--metric", "noise_rate", "--max", "1", "--path-only"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in (str(scored[1]), str(scored[2]))
    assert proc.stderr == ""


# --------------------------------------------------------------------------- Lightning checkpoints


def test_score_lightning_checkpoint_with_config(files, scored, capsys, tmp_path):
    out = tmp_path / "lit"
    code, stdout, err = _run(capsys, "score", "--model", files / "lightning" / "step-7.ckpt",
                             "--config", files / "ckpt-1", "--probes", "paper", "--limit-probes", "1",
                             "--candidates", "8", "--max-new-tokens", "2", "--n-boot", "50", "--no-plots",
                             "--formats", "csv", "--out", out)
    assert code == 0, err
    report = Report.load(out)
    assert report.step == "step-7"
    assert report.meta["model"]["kind"] == "checkpoint"
    assert report.meta["model"]["state_dict_prefix"] == "model."
    assert report.meta["model"]["global_step"] == 7
    assert report.meta["candidates_spec"]["kind"] == "budget"
    assert report.metrics.n_tokens > 0

    # different probe sets: compared, with a warning and without the paired test
    code, stdout, _ = _run(capsys, "compare", scored[1], out)
    assert code == 0
    assert "NOT scored on the same probes" in stdout and "b - a" not in stdout


def test_checkpoint_weights_load_exactly(files, tmp_path):
    from probattr_monitor.cli.loading import load_model

    loaded = load_model(str(files / "lightning" / "step-7.ckpt"), config=str(files / "ckpt-1" / "config.json"))
    expected = checkpoint_gpt2(loaded.model.config.vocab_size, 3).state_dict()
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert loaded.meta["tokenizer"] == str(files / "ckpt-1")


def test_checkpoint_without_config_is_an_error(files, capsys, tmp_path):
    ckpt = tmp_path / "alone.ckpt"
    ckpt.write_bytes((files / "lightning" / "step-7.ckpt").read_bytes())
    code, _, err = _run(capsys, "score", "--model", ckpt, "--probes", "paper", "--out", tmp_path / "o")
    assert code == 3
    assert f"checkpoint {ckpt} has no model config: pass --config" in err
    assert "Traceback" not in err


def test_checkpoint_with_foreign_keys_is_an_error(files, capsys, tmp_path):
    ckpt = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"encoder.layer.weight": torch.zeros(2, 2)}}, ckpt)
    code, _, err = _run(capsys, "score", "--model", ckpt, "--config", files / "ckpt-1", "--probes", "paper",
                        "--out", tmp_path / "o")
    assert code == 3 and "do not match the model built from the config" in err


def test_checkpoint_with_python_objects_is_refused(files, capsys, tmp_path):
    ckpt = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Path("x")}, ckpt)
    code, _, err = _run(capsys, "score", "--model", ckpt, "--config", files / "ckpt-1", "--probes", "paper",
                        "--out", tmp_path / "o")
    assert code == 3 and "weights_only=True" in err


def test_detect_prefix():
    expected = {"transformer.wte.weight", "lm_head.weight"}
    keys = ["net.transformer.wte.weight", "net.lm_head.weight", "loss.weight"]
    assert detect_prefix(keys, expected) == ("net.", 2)
    assert detect_prefix(sorted(expected), expected) == ("", 2)


# --------------------------------------------------------------------------- input errors


def test_missing_model_is_an_error(capsys, tmp_path):
    code, _, err = _run(capsys, "score", "--model", tmp_path / "nope", "--probes", "paper", "--out", tmp_path / "o")
    assert code == 3
    assert "probattr: error: model not found:" in err and "Traceback" not in err


def test_model_dir_without_tokenizer_needs_tokenizer_option(files, capsys, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((files / "ckpt-1" / name).read_bytes())
    args = ["score", "--model", bare, "--probes", files / "probes.jsonl", "--limit-probes", "1",
            "--candidates", "5,9", "--max-new-tokens", "2", "--n-boot", "20", "--no-plots", "--formats", "json",
            "--out", tmp_path / "o"]
    code, _, err = _run(capsys, *args)
    assert code == 3 and "has no tokenizer files: pass --tokenizer" in err
    code, _, err = _run(capsys, *args, "--tokenizer", files / "ckpt-1")
    assert code == 0, err
    assert Report.load(tmp_path / "o").meta["model"]["tokenizer"] == str(files / "ckpt-1")


def test_bad_probe_file_names_file_and_line(files, capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "promt": "typo"}\n', encoding="utf-8")
    code, _, err = _run(capsys, "score", "--model", files / "ckpt-1", "--probes", bad, "--out", tmp_path / "o")
    assert code == 3
    assert f"{bad}:2:" in err and "promt" in err
    assert not (tmp_path / "o").exists()


def test_compare_and_select_need_report_dirs(capsys, tmp_path):
    code, _, err = _run(capsys, "compare", tmp_path / "missing")
    assert code == 3 and "not a directory" in err
    code, _, err = _run(capsys, "select", tmp_path, "--max", "0.1")
    assert code == 3 and "cannot read the report" in err


# --------------------------------------------------------------------------- --candidates


def test_parse_candidates(tmp_path):
    assert parse_candidates("all") == CandidateSpec("all")
    assert parse_candidates(" Budget") == CandidateSpec("budget")
    assert parse_candidates("12") == CandidateSpec("count", count=12)
    assert parse_candidates("3, 1,2") == CandidateSpec("ids", ids=(3, 1, 2), source="list")
    ids = tmp_path / "ids.txt"
    ids.write_text("# candidate ids\n1 2, 3\n\n4  # four\n", encoding="utf-8")
    assert parse_candidates(f"@{ids}").ids == (1, 2, 3, 4)
    ids.write_text("1\n2\nx3\n", encoding="utf-8")
    with pytest.raises(CLIError, match=rf"{ids}:3: 'x3' is not a token id"):
        parse_candidates(f"@{ids}")
    with pytest.raises(CLIError, match="at least 1"):
        parse_candidates("0")
    with pytest.raises(CLIError, match="outside the model's vocabulary"):
        parse_candidates("1,500").resolve(100)


def test_count_and_budget_candidates_resolve_to_budgets():
    """'budget' is the default Budget (the monitor's default too); N sets max_candidates; both seeded."""
    budget, meta = parse_candidates("budget").resolve(101, seed=4)
    assert budget == Budget(seed=4) and meta["kind"] == "budget"
    budget, meta = parse_candidates("5").resolve(101, seed=4)
    assert budget == Budget(max_candidates=5, seed=4) and meta["max_candidates"] == 5
    assert ScoringConfig().candidates == Budget()


def test_sequential_candidates_resolve_to_the_seeded_default_ladder():
    from probattr_monitor.engine.sequential import SequentialBudget

    spec, meta = parse_candidates("Sequential").resolve(101, seed=3)
    default = SequentialBudget()
    assert isinstance(spec, SequentialBudget) and spec.z == default.z and meta["kind"] == "sequential"
    assert spec.stages == tuple(dataclasses.replace(s, seed=3) for s in default.stages)

# --------------------------------------------------------------------------- exit statuses


def test_every_help_documents_the_exit_statuses(capsys):
    for argv in (["--help"], ["score", "--help"], ["compare", "--help"], ["select", "--help"], ["probes", "--help"]):
        code, out, _ = _run(capsys, *argv)
        assert code == 0
        assert "exit status:" in out, argv
        for line in ("1  select: no checkpoint passes the gate", "2  usage error", "3  input/output error",
                     "4  score: no probe could be scored", "5  internal error"):
            assert line in out, (argv, line)


def test_unexpected_exception_exits_5_with_its_traceback(capsys, monkeypatch):
    """A bug is not exit status 1, which `select` uses for "no checkpoint passes"."""
    from probattr_monitor.cli import probes_cmd

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(probes_cmd, "run", broken)
    code, _, err = _run(capsys, "probes")
    assert code == 5
    assert "Traceback" in err and "probattr: internal error: ZeroDivisionError: a bug" in err


def test_closed_stdout_exits_141_without_a_traceback():
    """`probattr probes | head -0`: stdout closed before the output is written (128 + SIGPIPE, not 1)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "probattr_monitor.cli", "probes"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr
