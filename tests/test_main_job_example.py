"""The README's first command: examples/lightning_train.py (at tiny sizes here) prints the main job's summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")
pytest.importorskip("wandb")

from helpers.wandb_offline import load_wandb_table, wandb_history, wandb_summary  # noqa: E402
from probattr_monitor.report import DEFAULT_GATE_METRIC  # noqa: E402
from probattr_monitor.sinks.history import SET_ROW_ID  # noqa: E402

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
    # Issue 15's "done": the offline run read back holds the history table with every scoring
    # and the gate metric's best in its summary.
    steps = sorted(int(line.split()[0]) for line in rows)
    history = [r for r in wandb_history(runs[0]) if "probattr/history/probes/_type" in r]
    assert history, "no probattr/history/probes table logged"
    table = load_wandb_table(runs[0], history[-1], "probattr/history/probes")
    data = [dict(zip(table["columns"], r)) for r in table["data"]]
    set_rows = {r["step"]: r[DEFAULT_GATE_METRIC] for r in data if r["probe_id"] == SET_ROW_ID}
    assert sorted(set_rows) == steps
    summary = wandb_summary(runs[0])
    best_step = min(set_rows, key=set_rows.get)
    assert summary["probattr/best/step"] == best_step
    assert summary[f"probattr/best/{DEFAULT_GATE_METRIC}"] == pytest.approx(set_rows[best_step], rel=1e-9)
