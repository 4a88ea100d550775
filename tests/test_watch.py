"""``probattr watch``: a tiny model trains in a subprocess while ``watch`` scores its checkpoints in another.

Oracles: the watcher's value for a checkpoint equals ``probattr score`` of the
same checkpoint run on its own; ``best.json`` names the checkpoint with the
lowest gate value in ``history.jsonl``; the W&B run read back from its offline
directory holds the callbacks' keys (:func:`scalar_keys`) against ``probattr/step``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.hf import PROBES as HF_PROBES
from helpers.lit import PROBES as LIT_PROBES
from helpers.probes import write_probes
from helpers.wandb_offline import read_wandb_records, wandb_run_dir
from probattr_monitor.cli.watch_find import Candidate, Settler, find_candidates
from probattr_monitor.monitor.keys import scalar_keys
from probattr_monitor.sinks import read_history

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCORING = ["--candidates", "all", "--max-new-tokens", "3", "--n-boot", "50", "--no-plots", "--threads", "1"]


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true",
                TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]))


def _train(kind: str, out: Path, env: dict, pause_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "helpers.watch_train", kind, str(out), "--pause-s", str(pause_s)],
                            env=env, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _watch(directory: Path, probes: Path, env: dict, *extra: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probattr_monitor.cli", "watch", str(directory), "--probes",
                           str(probes), *SCORING, *extra], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    import time

    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None or path.exists(), f"training exited early: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.2)


def _state(out: Path) -> dict:
    return json.loads((out / "watch-state.json").read_text())


@pytest.mark.slow  # a subprocess run; kept out of the default suite's 10-minute budget
def test_watch_scores_hf_checkpoints_while_training_logs_to_wandb_and_resumes(tmp_path):
    env = _env(tmp_path)
    probes = write_probes(tmp_path / "probes.jsonl", HF_PROBES)
    run_dir = tmp_path / "hf"
    train = _train("hf", run_dir, env, pause_s=3.0)
    ckpts = run_dir / "out"
    _wait_for(ckpts, train)
    watch = _watch(ckpts, probes, env, "--stop-after", "3", "--poll-s", "0.5", "--settle-s", "1", "--link-best",
                   "--wandb-project", "watch-test", "--wandb-run-id", "train0001", "--wandb-dir", str(tmp_path))
    assert train.wait(timeout=300) == 0, train.stderr.read()[-2000:]
    assert watch.returncode == 0, watch.stderr[-3000:]
    out = ckpts / "probattr-watch"

    history = read_history(out)
    assert [h["step"] for h in history] == [2, 4, 6]
    values = {h["step"]: h["mean_surprisal_prefix"] for h in history}
    best = json.loads((out / "best.json").read_text())
    best_step = min(values, key=values.get)
    assert best["step"] == best_step and best["checkpoint"] == f"checkpoint-{best_step}"
    assert best["value"] == pytest.approx(values[best_step], rel=1e-12)
    assert best["mode"] == "min" and best["metric"] == "mean_surprisal_prefix"
    assert (out / "best").resolve() == (ckpts / f"checkpoint-{best_step}").resolve()
    assert {v["status"] for v in _state(out)["scored"].values()} == {"complete"}

    # the same checkpoint scored on its own by `probattr score` gives the same value
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "-m", "probattr_monitor.cli", "score", "--model", str(ckpts / "checkpoint-4"),
                           "--probes", str(probes), "--out", str(single), *SCORING, "--formats", "csv"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    alone = json.loads((single / "metrics.json").read_text())
    assert values[4] == pytest.approx(alone["metrics"]["metrics"]["mean_surprisal_prefix"]["value"], rel=1e-9)

    # W&B: the run resumed by id (offline: its own offline-run-*-train0001 directory), the callbacks' keys
    wb = wandb_run_dir(tmp_path)
    assert wb.name.endswith("-train0001")
    rows = [r for r in read_wandb_records(wb)["history"] if "probattr/step" in r]
    assert [r["probattr/step"] for r in rows] == [2, 4, 6]
    for row in rows:
        assert set(scalar_keys("probattr")) <= set(row)
        assert row["probattr/mean_surprisal_prefix"] == pytest.approx(values[row["probattr/step"]], rel=1e-9)

    # restart: nothing is scored again, the state and the gate stay
    before = (out / "watch-state.json").read_text()
    again = _watch(ckpts, probes, env, "--once", "--settle-s", "0")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "scored 0 checkpoint(s) this run, 3 in all" in again.stdout
    assert (out / "watch-state.json").read_text() == before
    assert len(read_history(out)) == 3


def test_watch_scores_lightning_ckpts_while_training(tmp_path):
    env = _env(tmp_path)
    probes = write_probes(tmp_path / "probes.jsonl", LIT_PROBES)
    run_dir = tmp_path / "lit"
    train = _train("lightning", run_dir, env, pause_s=2.0)
    _wait_for(run_dir / "config.json", train)
    watch = _watch(run_dir, probes, env, "--stop-after", "3", "--poll-s", "0.5", "--settle-s", "1",
                   "--out", str(tmp_path / "scores"))
    assert train.wait(timeout=300) == 0, train.stderr.read()[-2000:]
    assert watch.returncode == 0, watch.stderr[-3000:]
    state = _state(tmp_path / "scores")
    assert sorted(state["scored"]) == ["epoch=0-step=9.ckpt", "epoch=1-step=18.ckpt", "epoch=2-step=27.ckpt"]
    assert [h["step"] for h in read_history(tmp_path / "scores")] == [9, 18, 27]
    best = json.loads((tmp_path / "scores" / "best.json").read_text())
    assert best["checkpoint"] == min(state["scored"].values(), key=lambda e: e["value"])["name"]


def test_a_second_checkpoint_of_the_same_step_gets_its_own_report(tmp_path):
    """Lightning saves ``...-v1.ckpt`` when a resumed run saves a step again: neither report overwrites the other."""
    import shutil

    env = _env(tmp_path)
    probes = write_probes(tmp_path / "probes.jsonl", LIT_PROBES)
    run_dir = tmp_path / "lit"
    train = _train("lightning", run_dir, env, pause_s=0.0)
    assert train.wait(timeout=300) == 0, train.stderr.read()[-2000:]
    # step 9 saved again, with other weights (those of step 27), as a resumed run would
    shutil.copy(run_dir / "epoch=2-step=27.ckpt", run_dir / "epoch=0-step=9-v1.ckpt")
    for name in ("epoch=1-step=18.ckpt", "epoch=2-step=27.ckpt"):
        (run_dir / name).unlink()
    out = tmp_path / "scores"
    watch = _watch(run_dir, probes, env, "--once", "--settle-s", "0", "--out", str(out))
    assert watch.returncode == 0, watch.stderr[-3000:]
    state = _state(out)
    assert sorted(state["scored"]) == ["epoch=0-step=9-v1.ckpt", "epoch=0-step=9.ckpt"]
    values = sorted(e["value"] for e in state["scored"].values())
    assert values[0] != values[1]
    history = read_history(out)
    assert [h["step"] for h in history] == [9, 9]
    reports = [h["report"] for h in history]
    second = next(n for n, e in state["scored"].items() if e["value"] == history[1]["mean_surprisal_prefix"])
    assert reports[0] == "step-00000009" and reports[1] == "step-00000009-" + second.replace("=", "_")
    assert sorted(h["mean_surprisal_prefix"] for h in history) == values
    for name in reports:
        assert any((out / name).iterdir()), name


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_checkpoint_being_written_is_not_ready_until_it_stops_changing(tmp_path):
    data = os.urandom(4096)
    path = tmp_path / "epoch=0-step=5.ckpt"
    path.write_bytes(data[:1000])  # half written
    (tmp_path / "epoch=0-step=9.ckpt.tmp").write_bytes(data)  # a writer's temporary name: never a candidate
    (tmp_path / "last.ckpt").write_bytes(data)  # overwritten at every save: skipped
    clock = _Clock()
    settler = Settler(5.0, clock)
    [cand] = find_candidates(tmp_path)
    assert cand.step == 5 and cand.kind == "lightning"
    assert not settler.is_ready(cand)
    clock.now = 4.0
    with path.open("ab") as f:
        f.write(data[1000:])  # still being written: the window starts again
    assert not settler.is_ready(cand)
    clock.now = 8.0
    assert not settler.is_ready(cand)
    clock.now = 9.5
    assert settler.is_ready(cand)


def test_an_hf_checkpoint_without_trainer_state_is_not_read(tmp_path):
    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"\0" * 64)
    settler = Settler(0.0, _Clock())
    [cand] = find_candidates(tmp_path)
    assert cand == Candidate("checkpoint-3", ckpt, "hf", 3)
    assert not settler.is_ready(cand)  # the Trainer writes trainer_state.json last
    (ckpt / "trainer_state.json").write_text("{}")
    assert settler.is_ready(cand)


def test_watch_once_does_not_read_a_half_written_checkpoint(tmp_path):
    """End to end: a checkpoint dir without trainer_state.json and a ``.ckpt.tmp`` being written are left alone."""
    env = _env(tmp_path)
    probes = write_probes(tmp_path / "probes.jsonl", LIT_PROBES)
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "config.json").write_text("{}")
    (run / "checkpoint-2" / "model.safetensors").write_bytes(b"\0" * 64)  # garbage: reading it would fail
    (run / "epoch=0-step=3.ckpt.tmp").write_bytes(b"\0" * 64)
    proc = _watch(run, probes, env, "--once", "--settle-s", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "scored 0 checkpoint(s) this run, 0 in all" in proc.stdout
    assert not (run / "probattr-watch" / "watch-state.json").exists()
    assert "cannot score" not in proc.stderr
