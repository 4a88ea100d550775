"""Checkpoint comparison in W&B (issue 15, section 1): the history tables, the gate's best in the
run summary, the gate chart and the noise heat map, read back from real offline run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

wandb = pytest.importorskip("wandb")
pytest.importorskip("matplotlib")

from helpers.lit import PROBES, TinyLitLM, trainer_kwargs, word_tokenizer  # noqa: E402
from helpers.models import one_layer_gpt2  # noqa: E402
from helpers.probes import scoring_config, write_probes  # noqa: E402
from helpers.wandb_offline import (  # noqa: E402
    load_wandb_table,
    wandb_artifacts,
    wandb_history,
    wandb_metric_defs,
    wandb_run_dir,
    wandb_summary,
)
from probattr_monitor.probes import load_probe_set  # noqa: E402
from probattr_monitor.report import DEFAULT_GATE_METRIC  # noqa: E402
from probattr_monitor.scoring import score_probe_set  # noqa: E402
from probattr_monitor.sinks import FileSink, WandbSink  # noqa: E402
from probattr_monitor.sinks.history import SET_ROW_ID, ScoringHistory  # noqa: E402

G = DEFAULT_GATE_METRIC
pytestmark = pytest.mark.usefixtures("one_thread", "offline_wandb")


@pytest.fixture(scope="module")
def reports(tmp_path_factory, one_thread):
    """Three reports of differently seeded tiny models, at steps 3, 6 and 9."""
    tok = word_tokenizer()
    probes = load_probe_set(write_probes(tmp_path_factory.mktemp("probes") / "probes.jsonl", PROBES))
    return [(s, score_probe_set(one_layer_gpt2(len(tok), seed=i), tok, probes, scoring_config(), step=s))
            for i, s in enumerate((3, 6, 9))]


def last_table(run_dir: Path, key: str) -> dict:
    rows = [r for r in wandb_history(run_dir) if f"{key}/_type" in r]
    assert rows, f"no {key} logged"
    return load_wandb_table(run_dir, rows[-1], key)


def check_run_history_and_best(run_dir: Path, history: list) -> dict:
    """Read a finished offline run back: its last probe-history table holds the set row of every scoring in
    ``history`` (a training callback's, three or more) with the gate value the callback recorded, and its
    summary the best of them. Returns the summary."""
    steps = [h.step for h in history]
    assert len(steps) >= 3
    table = last_table(run_dir, "probattr/history/probes")
    data = [dict(zip(table["columns"], r)) for r in table["data"]]
    got = {r["step"]: r[G] for r in data if r["probe_id"] == SET_ROW_ID}
    assert sorted(got) == steps
    for h in history:
        assert got[h.step] == pytest.approx(h.value, rel=1e-9)
    best = min(history, key=lambda h: h.value)
    summary = wandb_summary(run_dir)
    assert summary[f"probattr/best/{G}"] == pytest.approx(best.value, rel=1e-9)
    assert summary["probattr/best/step"] == best.step
    return summary


def changed_tokens(prev, cur) -> set:
    """Independent oracle: (probe_id, position) whose class or noise flag differs between two tables."""
    a = prev[~prev["excluded"]].set_index(["probe_id", "position"])[["as_class", "noise"]]
    b = cur[~cur["excluded"]].set_index(["probe_id", "position"])[["as_class", "noise"]]
    both = a.join(b, lsuffix="_a", rsuffix="_b", how="inner")
    diff = (both["as_class_a"] != both["as_class_b"]) | (both["noise_a"] != both["noise_b"])
    return set(both.index[diff])


def check_history_table(table: dict, steps: list, per_step_metrics: dict) -> None:
    cols = table["columns"]
    data = [dict(zip(cols, r)) for r in table["data"]]
    assert sorted({r["step"] for r in data}) == sorted(steps)
    for step in steps:
        set_rows = [r for r in data if r["step"] == step and r["probe_id"] == SET_ROW_ID]
        assert len(set_rows) == 1
        mv = per_step_metrics[step][G]
        assert set_rows[0][G] == pytest.approx(mv.value, rel=1e-12)
        assert set_rows[0][f"{G}_ci_low"] == pytest.approx(mv.low, rel=1e-12)
        assert set_rows[0][f"{G}_ci_high"] == pytest.approx(mv.high, rel=1e-12)


def best_of(per_step_metrics: dict, mode: str = "min") -> tuple[float, int]:
    pick = min if mode == "min" else max
    step = pick(per_step_metrics, key=lambda s: per_step_metrics[s][G].value)
    return per_step_metrics[step][G].value, step


# --------------------------------------------------------------------------- the sink on its own


def test_history_rows_budget_and_best_against_independent_oracles(reports):
    h = ScoringHistory(max_token_rows_per_step=10_000)
    for step, rep in reports:
        h.add(rep, step)
    for step, rep in reports:
        frame = rep.metrics.per_probe_frame()
        got = {r[0]: r for r in h.probe_rows if r[1] == step and r[0] != SET_ROW_ID}
        col = h.probe_columns.index("noise_rate")
        for _, row in frame.iterrows():
            want = row["noise_rate"]
            assert (math.isnan(want) and math.isnan(got[row["probe_id"]][col])) or got[row["probe_id"]][col] == want
    # token rows: step 3 holds its noise tokens only; later steps the noise tokens plus the changed ones
    tables = {s: r.table for s, r in reports}
    for i, (step, rep) in enumerate(reports):
        t = rep.table
        want = set(zip(t.loc[t["noise"], "probe_id"], t.loc[t["noise"], "position"]))
        if i:
            want |= changed_tokens(tables[reports[i - 1][0]], t)
        got = {(r[1], r[2]) for r in h.token_rows if r[0] == step}
        assert got == want
    assert h.best()["value"] == pytest.approx(best_of({s: r.metrics for s, r in reports})[0])
    # the budget caps every scoring's rows and counts what it dropped
    small = ScoringHistory(max_token_rows_per_step=1)
    for step, rep in reports:
        small.add(rep, step)
    assert all(sum(r[0] == s for r in small.token_rows) <= 1 for s, _ in reports)
    assert small.dropped_token_rows == len(h.token_rows) - len(small.token_rows)
    with pytest.raises(ValueError, match="unknown gate metric"):
        ScoringHistory("nope")


def test_wandb_sink_last_version_holds_every_step_and_the_summary_the_best(reports, tmp_path):
    run = wandb.init(mode="offline", dir=str(tmp_path), project="probattr-history")
    sink = WandbSink(run)
    for step, rep in reports:
        assert sink.log(rep, step), sink.failures
    wandb.finish()
    run_dir = wandb_run_dir(tmp_path)
    metrics = {s: r.metrics for s, r in reports}
    check_history_table(last_table(run_dir, "probattr/history/probes"), [3, 6, 9], metrics)
    tokens = last_table(run_dir, "probattr/history/tokens")
    assert len(tokens["data"]) == len(sink.history.token_rows)
    summary = wandb_summary(run_dir)
    value, step = best_of(metrics)
    assert summary[f"probattr/best/{G}"] == pytest.approx(value)
    assert summary["probattr/best/step"] == step
    assert summary[f"probattr/best/{G}_ci_low"] == pytest.approx(metrics[step][G].low)
    defs = wandb_metric_defs(run_dir)
    assert {"name": f"probattr/{G}", "glob": "", "step_metric": "probattr/step"} in defs
    last = [r for r in wandb_history(run_dir) if "probattr/history/gate_chart_table/_type" in r][-1]
    chart = load_wandb_table(run_dir, last, "probattr/history/gate_chart_table")
    assert len(chart["data"]) == 3 * 3  # three series (value, ci_low, ci_high) x three steps
    assert last["probattr/history/gate_history/_type"] == "image-file"
    assert last["probattr/history/noise_heatmap/_type"] == "image-file"
    # W&B's own step counter never pushed
    assert [r["_step"] for r in wandb_history(run_dir)] == list(range(len(wandb_history(run_dir))))


def test_history_survives_a_resume_through_state_dict(reports, tmp_path):
    first = WandbSink(wandb.init(mode="offline", dir=str(tmp_path / "a"), project="probattr-history"))
    for step, rep in reports[:2]:
        first.log(rep, step)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint holds
    wandb.finish()
    resumed = WandbSink(wandb.init(mode="offline", dir=str(tmp_path / "b"), project="probattr-history"))
    resumed.load_state_dict(state)
    step, rep = reports[2]
    resumed.log(rep, step)
    wandb.finish()
    run_dir = wandb_run_dir(tmp_path / "b")
    metrics = {s: r.metrics for s, r in reports}
    check_history_table(last_table(run_dir, "probattr/history/probes"), [3, 6, 9], metrics)
    assert wandb_summary(run_dir)["probattr/best/step"] == best_of(metrics)[1]


def test_history_past_the_table_cap_goes_to_a_versioned_artifact(reports, tmp_path):
    wandb.init(mode="offline", dir=str(tmp_path), project="probattr-history")
    sink = WandbSink(max_rows_per_table=5, log_plots=False)
    for step, rep in reports:
        sink.log(rep, step)
    wandb.finish()
    run_dir = wandb_run_dir(tmp_path)
    arts = [a for a in wandb_artifacts(run_dir) if a["name"] == "probattr-history-probes"]
    assert arts and all(a["type"] == "probattr-history" for a in arts)
    assert "history.table.json" in arts[-1]["entries"]
    # 3 probes + a set row per scoring: past 5 rows from the second scoring on, never as a table again
    rows = [r for r in wandb_history(run_dir) if "probattr/history/probes/_type" in r]
    assert [r["probattr/step"] for r in rows] == [3]
    assert len(arts) == 2


def test_file_sink_history_figures_and_resume_from_disk(reports, tmp_path):
    sink = FileSink(tmp_path)
    for step, rep in reports[:2]:
        sink.log(rep, step)
    again = FileSink(tmp_path)  # a resumed run writing to the same directory
    again.log(*reports[2][::-1])
    assert again.failures == []
    import pandas as pd

    frame = pd.read_csv(tmp_path / "probe_history.csv", keep_default_na=False, na_values=["nan"])
    assert sorted(set(frame["step"])) == [3, 6, 9]
    set_rows = frame[frame["probe_id"] == SET_ROW_ID].set_index("step")
    for step, rep in reports:
        assert set_rows.loc[step, G] == pytest.approx(rep.metrics[G].value)
    for name in ("gate_history.png", "noise_heatmap.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- the training loops


def test_lightning_wandb_logger_run_holds_the_history_and_the_best(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import WandbLogger

    from probattr_monitor.callbacks import ProbAttrCallback

    pl.seed_everything(0, verbose=False)
    tok = word_tokenizer()
    probes = str(write_probes(tmp_path / "probes.jsonl", PROBES))
    wl = WandbLogger(save_dir=str(tmp_path), offline=True, project="probattr-history")
    cb = ProbAttrCallback(probes=probes, scoring=scoring_config(), every_n_steps=4, wandb="auto", log_plots=True,
                          log_dir=tmp_path / "files")
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(default_root_dir=tmp_path, max_epochs=1, logger=wl,
                                                          log_every_n_steps=50))
    trainer.fit(TinyLitLM(tok))
    run_dir = Path(wl.experiment.dir).parent
    wl.experiment.finish()
    check_run_history_and_best(run_dir, cb.history)
    for name in ("gate_history.png", "noise_heatmap.png"):
        assert (tmp_path / "files" / name).read_bytes()[:4] == b"\x89PNG"


def test_hf_wandb_callback_run_holds_the_history_and_the_best(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from helpers.hf import PROBES as HF_PROBES, make_trainer
    from probattr_monitor.callbacks.hf import ProbAttrTrainerCallback

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "probattr-history")
    probes = write_probes(tmp_path / "probes.jsonl", HF_PROBES)
    cb = ProbAttrTrainerCallback(probes=str(probes), scoring=scoring_config(), every_n_steps=6, plots=True,
                                 wandb="auto", log_dir=tmp_path / "files")
    try:
        trainer = make_trainer(tmp_path, [cb], report_to=["wandb"], metric_for_best_model=f"probattr_{G}",
                               greater_is_better=False)
        trainer.train()
    finally:
        wandb.finish()
    summary = check_run_history_and_best(wandb_run_dir(tmp_path), cb.history)
    assert np.isfinite(summary[f"probattr/best/{G}_ci_high"])
    for name in ("gate_history.png", "noise_heatmap.png"):
        assert (tmp_path / "files" / name).read_bytes()[:4] == b"\x89PNG"


def test_lightning_resume_from_a_checkpoint_keeps_the_wandb_history(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    from probattr_monitor.callbacks import ProbAttrCallback

    tok = word_tokenizer()
    probes = str(write_probes(tmp_path / "probes.jsonl", PROBES))

    def fit(where, epochs, ckpt_path=None):
        pl.seed_everything(0, verbose=False)
        wl = WandbLogger(save_dir=str(where), offline=True, project="probattr-history")
        cb = ProbAttrCallback(probes=probes, scoring=scoring_config(), every_n_steps=4, wandb="auto",
                              log_plots=False)
        ck = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        trainer = pl.Trainer(callbacks=[cb, ck], **trainer_kwargs(default_root_dir=where, max_epochs=epochs,
                                                                  logger=wl, log_every_n_steps=50,
                                                                  enable_checkpointing=True))
        trainer.fit(TinyLitLM(tok), ckpt_path=ckpt_path)
        run_dir = Path(wl.experiment.dir).parent
        wl.experiment.finish()
        return cb, run_dir

    first, _ = fit(tmp_path / "a", 1)
    before = [h.step for h in first.history]
    second, run_dir = fit(tmp_path / "b", 2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    after = [h.step for h in second.history]
    assert len(after) > len(before) >= 2
    table = last_table(run_dir, "probattr/history/probes")
    steps = sorted({r[table["columns"].index("step")] for r in table["data"]})
    assert steps == after  # the steps scored before the resume are in the resumed run's last version


def test_hf_resume_from_a_checkpoint_keeps_the_wandb_history(tmp_path, monkeypatch):
    """As the Lightning test above, with the HF Trainer: the history tables travel in ``trainer_state.json``."""
    pytest.importorskip("transformers")
    from helpers.hf import PROBES as HF_PROBES, make_trainer
    from probattr_monitor.callbacks.hf import ProbAttrTrainerCallback

    monkeypatch.setenv("WANDB_PROJECT", "probattr-history")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    probes = write_probes(tmp_path / "probes.jsonl", HF_PROBES)

    def train(where, max_steps, resume=None):
        cb = ProbAttrTrainerCallback(probes=str(probes), scoring=scoring_config(), every_n_steps=4, plots=False,
                                     wandb="auto")
        try:
            trainer = make_trainer(where, [cb], report_to=["wandb"], max_steps=max_steps, save_strategy="steps",
                                   save_steps=4)
            trainer.train(resume_from_checkpoint=resume)
            run_dir = Path(wandb.run.dir).parent
        finally:
            wandb.finish()
        return cb, run_dir

    first, _ = train(tmp_path / "a", 8)
    assert [h.step for h in first.history] == [4, 8]
    second, run_dir = train(tmp_path / "b", 12, resume=str(tmp_path / "a" / "out" / "checkpoint-8"))
    assert [h.step for h in second.history] == [4, 8, 12]
    table = last_table(run_dir, "probattr/history/probes")
    steps = sorted({r[table["columns"].index("step")] for r in table["data"]})
    assert steps == [4, 8, 12]  # the steps scored before the resume are in the resumed run's last version
