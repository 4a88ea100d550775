"""The README's first command: examples/lightning_train.py (at tiny sizes here) prints the main job's summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")
pytest.importorskip("wandb")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_train.py"


def test_lightning_example_prints_the_summary_and_leaves_an_offline_run(tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLE), "--out", str(tmp_path), "--epochs", "2", "--n-train", "256"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    rows = [line for line in text.splitlines() if line.strip()[:1].isdigit() and "(" in line]
    assert len(rows) == 2  # one per validation (4 steps per epoch, 2 epochs)
    assert "best checkpoint by probattr/mean_surprisal_prefix" in text and "why: ModelCheckpoint" in text
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert f"wandb sync {runs[0]}" in text
