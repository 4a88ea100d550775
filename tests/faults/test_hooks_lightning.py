"""Faults around the Lightning callback, in real ``Trainer.fit`` runs (tiny GPT-2, CPU).

What a user relies on, case by case: a scoring that produced nothing (NaN
logits at the first or a later scoring) moves no gate (``EarlyStopping`` and
``ModelCheckpoint`` at their defaults, as in the README) and training reaches
its last step with the weights of a run without the callback; W&B unavailable
in any way never loses a report (files take it) and is said once; a time budget
that runs out mid-set gives a partial scoring, recorded as such, that no gate
sees; a configuration that can never score (or never fit) fails before the
first training step with a message naming its cause.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint  # noqa: E402

from helpers.warnings_record import all_warnings, probattr_warnings  # noqa: E402
from helpers.lit import PROBES, TinyLitLM, trainer_kwargs, word_tokenizer  # noqa: E402
from helpers.probes import scoring_config, write_probes  # noqa: E402
from probattr_monitor.callbacks import ProbAttrCallback  # noqa: E402
from probattr_monitor.report import DEFAULT_GATE_METRIC  # noqa: E402
from probattr_monitor.sinks import read_history  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "offline_wandb")

KEY = f"probattr/{DEFAULT_GATE_METRIC}"  # the README's gate key
STEPS_PER_EPOCH = 9  # 360 sentences, batch 40


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    return str(write_probes(tmp_path_factory.mktemp("probes") / "probes.jsonl", PROBES))


class FaultyLM(TinyLitLM):
    """:class:`TinyLitLM` whose ``forward`` (the path scoring takes; training and validation call the HF child)
    misbehaves in eval mode only: NaN logits at the global steps in ``nan_steps``, an exception no scoring code
    expects (``ZeroDivisionError``, so that it escapes the whole scoring) at those in ``raise_steps``, and a
    ``sleep_s`` pause per call."""

    def __init__(self, tok, *, nan_steps=(), raise_steps=(), sleep_s: float = 0.0, **kw):
        super().__init__(tok, **kw)
        self.nan_steps, self.raise_steps = set(nan_steps), set(raise_steps)
        self.sleep_s = sleep_s

    def forward(self, input_ids, **kwargs):
        out = super().forward(input_ids, **kwargs)
        if not self.training:
            if self.sleep_s:
                time.sleep(self.sleep_s)
            trainer = getattr(self, "_trainer", None)
            step = None if trainer is None else trainer.global_step
            if step in self.raise_steps:
                raise ZeroDivisionError(f"the model broke at step {step}")
            if step in self.nan_steps:
                out.logits = out.logits * float("nan")
        return out


class GateRecorder(Callback):
    """At each epoch start and at fit end: EarlyStopping's wait count and best score, ModelCheckpoint's best."""

    def __init__(self, es: EarlyStopping, ckpt: ModelCheckpoint):
        self.es, self.ckpt, self.rows = es, ckpt, []

    def _row(self, trainer):
        best = self.ckpt.best_model_score
        self.rows.append({"step": trainer.global_step, "wait": self.es.wait_count,
                          "es_best": float(self.es.best_score), "ckpt_path": self.ckpt.best_model_path,
                          "ckpt_best": None if best is None else float(best),
                          "ckpt_k": sorted(self.ckpt.best_k_models)})

    def on_train_epoch_start(self, trainer, pl_module):
        self._row(trainer)

    def on_fit_end(self, trainer, pl_module):
        self._row(trainer)


def make_callback(probes, **kw):
    kw.setdefault("scoring", scoring_config())
    kw.setdefault("log_plots", False)
    kw.setdefault("wandb", False)
    return ProbAttrCallback(probes=probes, **kw)


def fit(module, callbacks, root, **kw):
    kw.setdefault("default_root_dir", root)
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(**kw))
    trainer.fit(module)
    return trainer


def plain_weights(tok, root, **module_kw):
    pl.seed_everything(0, verbose=False)
    module = FaultyLM(tok, dropout=0.1, **module_kw)
    fit(module, [], root, max_epochs=3)
    return module.state_dict()


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- a scoring that produced nothing


@pytest.mark.parametrize("fault", ["nan-logits", "forward-raises"])
@pytest.mark.parametrize("failed_step", [9, 18], ids=["first-scoring", "later-scoring"])
def test_failed_scoring_moves_no_gate_and_training_reaches_its_last_step(tok, probes, tmp_path, failed_step, fault):
    """README's gates at their defaults: a scoring that produced nothing neither stops the run nor moves the best
    checkpoint, whether every probe failed (NaN logits) or the scoring itself raised."""
    faults = {"nan_steps" if fault == "nan-logits" else "raise_steps": [failed_step]}
    plain = plain_weights(tok, tmp_path / "plain", **faults)
    pl.seed_everything(0, verbose=False)
    module = FaultyLM(tok, dropout=0.1, **faults)
    cb = make_callback(probes, log_dir=tmp_path / "files")
    es = EarlyStopping(monitor=KEY, mode="min", patience=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=KEY, mode="min")
    rec = GateRecorder(es, ckpt)
    with all_warnings() as record:
        trainer = fit(module, [cb, es, rec, ckpt], tmp_path, max_epochs=3, enable_checkpointing=True)

    # training reached its last step, with the weights of a run without the callback
    assert trainer.global_step == 3 * STEPS_PER_EPOCH and module.n_training_steps == 27
    assert es.stopped_epoch == 0 and not trainer.should_stop
    assert same_weights(plain, module.state_dict())

    # the failure is recorded everywhere, and said once
    assert [(h.step, h.status) for h in cb.history] == [(s, "failed" if s == failed_step else "complete")
                                                         for s in (9, 18, 27)]
    assert [f["step"] for f in cb.failures] == [failed_step]
    assert ("no probe was scored" if fault == "nan-logits" else "ZeroDivisionError: the model broke at step") in (
        cb.failures[0]["error"])
    lines = {h["step"]: h for h in read_history(tmp_path / "files")}
    assert sorted(lines) == [9, 18, 27] and lines[failed_step]["n_errors"] == (3 if fault == "nan-logits" else 1)
    saved = json.loads((tmp_path / "files" / f"step-{failed_step:08d}" / "metrics.json").read_text())
    assert saved["meta"]["status"] == "failed"

    # the gates never saw it: wait count and both bests unchanged across the failed epoch
    by_step = {r["step"]: r for r in rec.rows}
    before, after = by_step[failed_step - STEPS_PER_EPOCH], by_step[failed_step]
    assert (after["wait"], after["es_best"]) == (before["wait"], before["es_best"])
    assert (after["ckpt_path"], after["ckpt_best"], after["ckpt_k"]) == (
        before["ckpt_path"], before["ckpt_best"], before["ckpt_k"])
    assert not any(f"step={failed_step}" in p for r in rec.rows for p in r["ckpt_k"])
    good = [h for h in cb.history if h.complete]
    best = min(good, key=lambda h: h.value)
    assert ckpt.best_model_score is not None and math.isfinite(float(ckpt.best_model_score))
    assert float(ckpt.best_model_score) == pytest.approx(best.value, rel=1e-6)
    assert f"step={best.step}" in ckpt.best_model_path
    assert cb.monitor.state.best_step == best.step
    # the gates are themselves again after the run
    assert es.strict is True and ckpt.save_top_k == 1
    assert len(probattr_warnings(record, f"scoring at step {failed_step}")) == 1


def test_every_scoring_failing_never_stops_nor_crashes_the_run(tok, probes, tmp_path):
    """Nothing ever scored: the monitored key never exists, and the strict defaults still neither raise nor stop."""
    pl.seed_everything(0, verbose=False)
    module = FaultyLM(tok, nan_steps=[9, 18])
    cb = make_callback(probes)
    es = EarlyStopping(monitor=KEY, mode="min")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=KEY, mode="min", save_last=True)
    with all_warnings() as record:
        trainer = fit(module, [cb, es, ckpt], tmp_path, max_epochs=2, enable_checkpointing=True)
    assert trainer.global_step == 18 and [h.status for h in cb.history] == ["failed", "failed"]
    assert ckpt.best_model_path == "" and ckpt.best_k_models == {}
    assert es.wait_count == 0 and KEY not in trainer.callback_metrics
    assert [len(probattr_warnings(record, f"scoring at step {s} (validation_end) failed")) for s in (9, 18)] == [1, 1]


class PlateauLM(FaultyLM):
    """Its learning rate follows ``ReduceLROnPlateau`` on the noise rate (patience 0: any bad epoch halves it)."""

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", patience=0, factor=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": KEY, "interval": "epoch"}}


def test_failed_scorings_leave_a_plateau_scheduler_alone(tok, probes, tmp_path):
    pl.seed_everything(0, verbose=False)
    module = PlateauLM(tok, nan_steps=[9, 18, 27])
    cb = make_callback(probes)
    with all_warnings() as record:
        trainer = fit(module, [cb], tmp_path, max_epochs=3)
    (config,) = trainer.lr_scheduler_configs
    assert trainer.global_step == 27
    assert trainer.optimizers[0].param_groups[0]["lr"] == module.lr  # never halved: no NaN counted as bad
    assert config.scheduler.num_bad_epochs == 0 and config.strict is True
    assert [h.status for h in cb.history] == ["failed"] * 3
    assert len(probattr_warnings(record, "scoring at step 9 (validation_end) failed")) == 1


# ----------------------------------------------------------------------------- W&B unavailable


def test_wandb_not_installed_files_take_every_report(tok, probes, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    caplog.set_level(logging.INFO, logger="probattr_monitor.callbacks.routing")
    pl.seed_everything(0, verbose=False)
    cb = make_callback(probes, wandb="auto", every_n_steps=6)
    trainer = fit(TinyLitLM(tok), [cb], tmp_path, max_epochs=1)
    assert trainer.global_step == 9
    files = tmp_path / "probattr"
    assert [h["step"] for h in read_history(files)] == [6, 9]
    assert [type(s).__name__ for s in cb.sinks] == ["FileSink"]
    said = [r.getMessage() for r in caplog.records if "writes its reports to" in r.getMessage()]
    assert said == [f"probattr: ProbAttrCallback writes its reports to files in {files}"]


@pytest.mark.parametrize("how", ["wandb-init-disabled", "wandb-logger-disabled"])
def test_disabled_wandb_run_is_no_run_files_take_the_reports(tok, probes, tmp_path, monkeypatch, how):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = False
    if how == "wandb-init-disabled":
        wandb.init(mode="disabled")
    else:
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(save_dir=str(tmp_path), mode="disabled", project="probattr-faults")
    pl.seed_everything(0, verbose=False)
    cb = make_callback(probes, wandb="auto", every_n_steps=6)
    with all_warnings() as record:
        trainer = fit(TinyLitLM(tok), [cb], tmp_path, max_epochs=1, logger=logger)
    assert trainer.global_step == 9
    files = Path(trainer.log_dir or tmp_path) / "probattr"
    assert [h["step"] for h in read_history(files)] == [6, 9]
    assert (files / "step-00000006" / "tokens.csv").exists()
    assert [type(s).__name__ for s in cb.sinks] == ["FileSink"]
    assert len(probattr_warnings(record, "W&B run is disabled")) == 1


def test_offline_wandb_run_holds_every_report(tok, probes, tmp_path):
    from helpers.wandb_offline import read_wandb_records
    from lightning.pytorch.loggers import WandbLogger

    wl = WandbLogger(save_dir=str(tmp_path), offline=True, project="probattr-faults")
    pl.seed_everything(0, verbose=False)
    cb = make_callback(probes, wandb="auto", every_n_steps=6, attribution_every=1)  # a token table every scoring
    with all_warnings() as record:
        trainer = fit(TinyLitLM(tok), [cb], tmp_path, max_epochs=1, logger=wl)
    assert trainer.global_step == 9 and cb.report_failures == []
    assert not [w for w in record if str(w.message).startswith("probattr:")]
    run_dir = Path(wl.experiment.dir).parent
    wl.experiment.finish()
    rows = read_wandb_records(run_dir)["history"]
    assert [r["probattr/step"] for r in rows if "probattr/tokens/_type" in r] == [6, 9]
    assert not (tmp_path / "probattr").exists()  # W&B took everything: no files asked for, none written


def test_failed_scoring_is_recorded_in_the_wandb_run_without_values(tok, probes, tmp_path):
    from helpers.wandb_offline import load_wandb_table, read_wandb_records
    from lightning.pytorch.loggers import WandbLogger

    wl = WandbLogger(save_dir=str(tmp_path), offline=True, project="probattr-faults")
    pl.seed_everything(0, verbose=False)
    cb = make_callback(probes, wandb="auto", every_n_steps=6, attribution_every=1)  # a token table every scoring
    with all_warnings():
        trainer = fit(FaultyLM(tok, nan_steps=[6]), [cb], tmp_path, max_epochs=1, logger=wl)
    assert trainer.global_step == 9
    run_dir = Path(wl.experiment.dir).parent
    wl.experiment.finish()
    rows = read_wandb_records(run_dir)["history"]
    (failed,) = [r for r in rows if "probattr/errors/_type" in r]
    assert failed["probattr/step"] == 6 and "probattr/tokens/_type" not in failed
    errors = load_wandb_table(run_dir, failed, "probattr/errors")
    assert [r[0] for r in errors["data"]] == ["p1", "p2", "p3"] and "non-finite" in errors["data"][0][1]
    assert [r["probattr/step"] for r in rows if "probattr/tokens/_type" in r] == [9]
    assert [r["probattr/step"] for r in rows if "probattr/noise_rate" in r] == [9]  # no value for step 6


def test_wandb_run_whose_log_raises_files_take_the_reports(tok, probes, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="probattr-faults")

    def refuse(*args, **kwargs):
        raise ConnectionError("W&B is down")

    monkeypatch.setattr(run, "log", refuse)  # the real offline run, refusing every log call
    pl.seed_everything(0, verbose=False)
    cb = make_callback(probes, wandb="auto", every_n_steps=3)
    with all_warnings() as record:
        trainer = fit(TinyLitLM(tok), [cb], tmp_path, max_epochs=1)
    monkeypatch.undo()  # the run's own log again, before the fixture finishes it
    assert trainer.global_step == 9 and [h.step for h in cb.history] == [3, 6, 9]
    files = tmp_path / "probattr"
    assert [h["step"] for h in read_history(files)] == [3, 6, 9]
    assert [f["step"] for f in cb.report_failures] == [3, 6, 9]
    assert all("W&B is down" in f["error"] for f in cb.report_failures)
    assert len(probattr_warnings(record, "W&B did not take the report")) == 1
    assert not probattr_warnings(record, "logging step")  # the sink itself did not warn a second time


# ----------------------------------------------------------------------------- a time budget that runs out


def test_time_budget_expiring_mid_set_gives_a_partial_scoring_no_gate_sees(tok, probes, tmp_path):
    plain = plain_weights(tok, tmp_path / "plain", sleep_s=0.05)
    pl.seed_everything(0, verbose=False)
    module = FaultyLM(tok, dropout=0.1, sleep_s=0.05)  # each scoring forward takes 50 ms: p1 outlasts the budget
    cb = make_callback(probes, time_budget_s=0.04, log_dir=tmp_path / "files")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=KEY, mode="min")
    with all_warnings() as record:
        trainer = fit(module, [cb, ckpt], tmp_path, max_epochs=3, enable_checkpointing=True)
    assert trainer.global_step == 27 and same_weights(plain, module.state_dict())
    assert [(h.step, h.status, h.n_scored) for h in cb.history] == [(9, "partial", 1), (18, "partial", 1),
                                                                    (27, "partial", 1)]
    assert set(cb.history[0].errors) == {"p2", "p3"} and "time budget" in cb.history[0].errors["p2"]
    assert cb.failures == [] and cb.monitor.state.best_step is None
    assert ckpt.best_k_models == {} and KEY not in trainer.callback_metrics
    lines = read_history(tmp_path / "files")
    assert [(h["step"], h["n_probes"], h["n_errors"]) for h in lines] == [(9, 1, 2), (18, 1, 2), (27, 1, 2)]
    saved = json.loads((tmp_path / "files" / "step-00000009" / "metrics.json").read_text())
    assert saved["meta"]["status"] == "partial"
    assert len(probattr_warnings(record, "was partial: 1 of 3 probes scored")) == 3  # one per scoring


# ----------------------------------------------------------------------------- never scoring: fail before step 1


@pytest.mark.parametrize(
    "case",
    ["validation-every-5-epochs-of-2", "max-steps-before-validation", "every-n-steps-beyond-max-steps",
     "every-n-epochs-beyond-max-steps", "fixed-response-too-long"],
)
def test_configuration_that_never_scores_fails_before_the_first_step(case, tok, probes, tmp_path):
    pl.seed_everything(0, verbose=False)
    cb_kw, fit_kw = {}, {"max_epochs": 2}
    if case == "validation-every-5-epochs-of-2":
        fit_kw["check_val_every_n_epoch"] = 5
        match = r"check_val_every_n_epoch=5\) but max_epochs=2"
    elif case == "max-steps-before-validation":
        fit_kw["max_steps"] = 3
        match = r"first validation comes after 9 training batches .* max_steps=3"
    elif case == "every-n-steps-beyond-max-steps":
        cb_kw = {"every_n_steps": 10}  # and on_validation_end=True, the default: neither ever comes
        fit_kw["max_steps"] = 3
        match = r"every_n_steps=10 but the run has 3 optimizer steps \(max_steps=3\)"
    elif case == "every-n-epochs-beyond-max-steps":
        cb_kw = {"every_n_epochs": 2, "on_validation_end": False}
        fit_kw["max_steps"] = 5
        match = r"every_n_epochs=2 but max_steps=5 ends it in epoch 1"
    else:
        long = tmp_path / "long.jsonl"
        long.write_text(json.dumps({"id": "wordy", "prompt": "the cat sees the ball",
                                    "response": " ".join(["a child helps her mother"] * 7)}) + "\n")
        probes = str(long)
        match = r"probe 'wordy' .* needs 41 tokens \(prompt 6 \+ fixed response 35\) but the model's context window is 32"
    module = TinyLitLM(tok)
    cb = make_callback(probes, **cb_kw)
    with pytest.raises(ValueError, match=match):
        fit(module, [cb], tmp_path, **fit_kw)
    assert module.n_training_steps == 0 and cb.history == []
