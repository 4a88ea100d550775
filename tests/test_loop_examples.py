"""The plain-PyTorch and accelerate loop examples run at tiny sizes: score, gate, save, resume, continue."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

TINY = {"every_n_steps": 3, "n_train": 200, "batch_size": 8, "n_layer": 1, "n_embd": 32}


def _check_history(monitor, steps):
    assert [h.step for h in monitor.state.history] == steps
    assert all(h.status == "complete" and h.n_scored == len(monitor.probe_set) for h in monitor.state.history)
    values = [h.value for h in monitor.state.history]
    best = min(values)  # mean_surprisal_prefix: lower is better
    assert monitor.state.best_value == best
    assert monitor.state.best_step == steps[values.index(best)]
    # the default cadence ("auto"): the first scoring attributes, the next ones are gate scorings
    assert [h.scope for h in monitor.state.history] == ["attribution"] + ["prefix"] * (len(steps) - 1)
    for h in monitor.state.history:
        assert h.scalars["probattr/mean_surprisal_prefix_ci_low"] <= h.value \
            <= h.scalars["probattr/mean_surprisal_prefix_ci_high"]
        if h.scope == "attribution":
            assert math.isfinite(h.scalars["probattr/noise_rate"])
            assert h.scalars["probattr/noise_rate_ci_low"] <= h.scalars["probattr/noise_rate"] \
                <= h.scalars["probattr/noise_rate_ci_high"]
        else:
            assert "probattr/noise_rate" not in h.scalars


@pytest.mark.parametrize("module_name", ["plain_loop", "accelerate_loop"])
def test_loop_example_scores_gates_saves_and_resumes(tmp_path, module_name):
    if module_name == "accelerate_loop":
        pytest.importorskip("accelerate")
    module = __import__(module_name)
    first = module.train(tmp_path, steps=6, **TINY)
    _check_history(first["monitor"], [3, 6])
    ckpt = torch.load(first["last_path"], weights_only=False)
    assert ckpt["step"] == 6
    assert ckpt["probattr"]["state"]["best_step"] == first["monitor"].state.best_step
    assert [h["step"] for h in ckpt["probattr"]["state"]["history"]] == [3, 6]
    best = torch.load(first["best_path"], weights_only=False)
    assert best["step"] == first["monitor"].state.best_step  # the best checkpoint is the gate's step

    resumed = module.train(tmp_path, steps=9, resume=True, **TINY)
    # the restored history continues: steps 3 and 6 from the checkpoint, 9 scored after the resume
    _check_history(resumed["monitor"], [3, 6, 9])
    assert [h.value for h in resumed["monitor"].state.history[:2]] == [h.value for h in first["monitor"].state.history]
    # the model continued from the checkpoint's weights, not from a fresh initialisation
    fresh = module.train(tmp_path / "fresh", steps=3, **TINY)
    assert resumed["monitor"].state.history[2].value != fresh["monitor"].state.history[0].value


@pytest.mark.slow  # a subprocess run; kept out of the default suite's 10-minute budget
def test_plain_loop_script_runs(tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLES / "plain_loop.py"), "--out", str(tmp_path), "--steps", "4",
                          "--every-n-steps", "2", "--n-train", "200"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "best by mean_surprisal_prefix (min): step" in out.stdout
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()
