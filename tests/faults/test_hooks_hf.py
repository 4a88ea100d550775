"""Faults around the Hugging Face Trainer callback, in real ``Trainer.train`` runs (tiny GPT-2, CPU).

What a user relies on, case by case: a scoring that produced nothing (NaN
logits at the first or a later evaluation) moves no gate (``EarlyStoppingCallback``
at its defaults, ``metric_for_best_model`` with ``load_best_model_at_end`` or
``save_strategy="best"``, a plateau scheduler) and training reaches its last
step with the weights of a run without the callback; W&B unavailable in any way
never loses a report (files take it) and is said once; a time budget that runs
out mid-set gives a partial scoring, recorded as such, that no gate sees; a model
that is not a causal LM, or a probe that cannot fit, fails before the first
training step with a message naming its cause.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from transformers import EarlyStoppingCallback, TrainerCallback  # noqa: E402

from helpers.warnings_record import all_warnings, probattr_warnings  # noqa: E402
from helpers.hf import PROBES, BlockDataset, make_corpus, make_tokenizer, make_trainer, state_dict_copy  # noqa: E402
from helpers.hf import training_args  # noqa: E402
from helpers.probes import scoring_config, write_probes  # noqa: E402
from probattr_monitor.callbacks.hf import ProbAttrTrainerCallback  # noqa: E402
from probattr_monitor.monitor import ProbAttrMonitor  # noqa: E402
from probattr_monitor.report import DEFAULT_GATE_METRIC  # noqa: E402
from probattr_monitor.sinks import read_history  # noqa: E402

KEY = f"eval_probattr_{DEFAULT_GATE_METRIC}"  # the README's gate
GATED = dict(metric_for_best_model=f"probattr_{DEFAULT_GATE_METRIC}", greater_is_better=False)

pytestmark = pytest.mark.usefixtures("one_thread", "offline_wandb")


@pytest.fixture
def probes(tmp_path):
    return write_probes(tmp_path / "probes.jsonl", PROBES)


def callback(probes, **kw):
    kw.setdefault("scoring", scoring_config())
    kw.setdefault("plots", False)
    kw.setdefault("wandb", False)
    return ProbAttrTrainerCallback(probes=str(probes), **kw)


def inject_faults(trainer, *, nan_steps=(), raise_steps=(), sleep_s: float = 0.0) -> None:
    """Scoring's forwards (eval mode, no labels: training and evaluation always pass labels) return NaN
    logits at the global steps in ``nan_steps``, raise an exception no scoring code expects
    (``ZeroDivisionError``, so that it escapes the whole scoring) at those in ``raise_steps``, and sleep
    ``sleep_s`` each."""
    nan_steps, raise_steps = set(nan_steps), set(raise_steps)

    def hook(module, args, kwargs, output):
        if module.training or "labels" in kwargs:
            return output
        if sleep_s:
            time.sleep(sleep_s)
        step = trainer.state.global_step
        if step in raise_steps:
            raise ZeroDivisionError(f"the model broke at step {step}")
        if step in nan_steps:
            output.logits = output.logits * float("nan")
        return output

    trainer.model.register_forward_hook(hook, with_kwargs=True)


class GateRecorder(TrainerCallback):
    """Listed after EarlyStoppingCallback: its counter after each evaluation; the best metric and checkpoint
    at each step begin (after the evaluation of the previous step) and at train end."""

    def __init__(self, es=None):
        self.es, self.counters, self.best = es, {}, {}

    def on_evaluate(self, args, state, control, **kwargs):
        if self.es is not None:
            self.counters[state.global_step] = self.es.early_stopping_patience_counter

    def _best(self, state):
        self.best[state.global_step] = (state.best_metric, state.best_model_checkpoint, state.best_global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._best(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._best(state)


def plain_run(tmp_path, **overrides):
    trainer = make_trainer(tmp_path / "plain", [], **overrides)
    trainer.train()
    return state_dict_copy(trainer.model)


def same_weights(a: dict, model) -> bool:
    b = model.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def eval_record(trainer, step: int) -> dict:
    (record,) = [r for r in trainer.state.log_history if "eval_loss" in r and r["step"] == step]
    return record


# --------------------------------------------------------------------------- a scoring that produced nothing


@pytest.mark.parametrize("fault", ["nan-logits", "forward-raises"])
@pytest.mark.parametrize("failed_step", [4, 8], ids=["first-evaluation", "later-evaluation"])
def test_failed_scoring_moves_no_gate_and_training_reaches_its_last_step(tmp_path, probes, failed_step, fault):
    """README's gates: EarlyStoppingCallback at its defaults (patience 1) after the callback, best model by the
    default gate metric; every probe failing (NaN logits) or the scoring itself raising."""
    plain = plain_run(tmp_path)
    cb = callback(probes, log_dir=tmp_path / "files")
    es = EarlyStoppingCallback()
    rec = GateRecorder(es)
    trainer = make_trainer(tmp_path / "run", [cb, es, rec], save_strategy="steps", save_steps=4, **GATED)
    inject_faults(trainer, **{"nan_steps" if fault == "nan-logits" else "raise_steps": [failed_step]})
    with all_warnings() as record:
        trainer.train()

    # training reached its last step, with the weights of a run without the callback
    assert trainer.state.global_step == 12 and same_weights(plain, trainer.model)

    # recorded everywhere, said once
    assert [(h.step, h.status) for h in cb.history] == [(s, "failed" if s == failed_step else "complete")
                                                         for s in (4, 8, 12)]
    assert [f["step"] for f in cb.failures] == [failed_step]
    lines = {h["step"]: h for h in read_history(tmp_path / "files")}
    assert sorted(lines) == [4, 8, 12] and lines[failed_step]["n_errors"] == (3 if fault == "nan-logits" else 1)

    # nothing logged for the failed evaluation; the others carry their values
    assert not any(k.startswith("eval_probattr_") for k in eval_record(trainer, failed_step))
    assert all(eval_record(trainer, h.step)[KEY] == h.value for h in cb.history if h.complete)

    # the gates never saw it: patience counter, best metric and best checkpoint unchanged
    assert rec.counters[failed_step] == rec.counters.get(failed_step - 4, 0)
    assert rec.best[failed_step] == rec.best[failed_step - 1]
    good = [h for h in cb.history if h.complete]
    best = min(good, key=lambda h: h.value)
    assert trainer.state.best_metric == best.value and trainer.state.best_global_step == best.step
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best.step}")
    assert len(probattr_warnings(record, f"scoring at step {failed_step}")) == 1


@pytest.mark.parametrize("save", ["load-best-model-at-end", "save-best"])
def test_every_scoring_failing_never_crashes_best_model_selection(tmp_path, probes, save):
    """The Trainer needs metric_for_best_model in every evaluation (KeyError otherwise): a NaN is never a best."""
    plain = plain_run(tmp_path)
    cb = callback(probes)
    rec = GateRecorder()
    extra = (dict(save_strategy="steps", save_steps=4, load_best_model_at_end=True) if save == "load-best-model-at-end"
             else dict(save_strategy="best"))
    trainer = make_trainer(tmp_path / "run", [cb, EarlyStoppingCallback(), rec], **GATED, **extra)
    inject_faults(trainer, nan_steps=[4, 8, 12])
    with all_warnings() as record:
        trainer.train()
    assert trainer.state.global_step == 12 and same_weights(plain, trainer.model)  # no best model to load
    assert trainer.state.best_metric is None and trainer.state.best_model_checkpoint is None
    assert all(v == (None, None, None) for v in rec.best.values())
    assert [h.status for h in cb.history] == ["failed"] * 3
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "out").glob("checkpoint-*"))
    assert checkpoints == ([] if save == "save-best" else ["checkpoint-12", "checkpoint-4", "checkpoint-8"])
    assert [len(probattr_warnings(record, f"scoring at step {s} (evaluate) failed")) for s in (4, 8, 12)] == [1, 1, 1]


def test_failed_scoring_leaves_a_plateau_scheduler_alone(tmp_path, probes):
    cb = callback(probes)
    trainer = make_trainer(tmp_path, [cb], lr_scheduler_type="reduce_lr_on_plateau",
                           lr_scheduler_kwargs={"patience": 0, "factor": 0.5}, eval_steps=2, logging_steps=1,
                           **GATED)
    inject_faults(trainer, nan_steps=[2, 4, 6, 8, 10, 12])
    with all_warnings() as record:
        trainer.train()
    lrs = [r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r]
    assert len(lrs) == 12 and len(set(lrs)) == 1  # never reduced: no NaN counted as a bad epoch
    assert trainer.lr_scheduler.num_bad_epochs == 0
    assert len(probattr_warnings(record, "scoring at step 2 (evaluate) failed")) == 1


# --------------------------------------------------------------------------- W&B unavailable


def test_wandb_not_installed_files_take_every_report(tmp_path, probes, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    caplog.set_level(logging.INFO, logger="probattr_monitor.callbacks.routing")
    cb = callback(probes, wandb="auto", every_n_steps=6)
    trainer = make_trainer(tmp_path, [cb])
    trainer.train()
    assert trainer.state.global_step == 12
    files = Path(trainer.args.output_dir) / "probattr"
    assert [h["step"] for h in read_history(files)] == [4, 6, 8, 12]
    said = [r.getMessage() for r in caplog.records if "writes its reports to" in r.getMessage()]
    assert said == [f"probattr: ProbAttrTrainerCallback writes its reports to files in {files}"]


@pytest.mark.parametrize("how", ["user-wandb-init-disabled", "report-to-wandb-disabled"])
def test_disabled_wandb_run_is_no_run_files_take_the_reports(tmp_path, probes, monkeypatch, how):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    report_to = []
    if how == "user-wandb-init-disabled":
        wandb.init(mode="disabled")
    else:
        report_to = ["wandb"]  # HF's WandbCallback starts the (disabled) run at train begin
    cb = callback(probes, wandb="auto", every_n_steps=6)
    trainer = make_trainer(tmp_path, [cb], report_to=report_to)
    with all_warnings() as record:
        trainer.train()
    assert trainer.state.global_step == 12
    files = Path(trainer.args.output_dir) / "probattr"
    assert [h["step"] for h in read_history(files)] == [4, 6, 8, 12]
    assert (files / "step-00000006" / "tokens.csv").exists()
    assert len(probattr_warnings(record, "W&B run is disabled")) == 1


def test_offline_wandb_run_holds_every_report(tmp_path, probes, monkeypatch):
    from helpers.wandb_offline import read_wandb_records, wandb_run_dir

    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "probattr-faults")
    cb = callback(probes, wandb="auto", every_n_steps=6, attribution_every=1)  # a token table at every scoring
    trainer = make_trainer(tmp_path, [cb], report_to=["wandb"])
    with all_warnings() as record:
        trainer.train()
    import wandb

    wandb.finish()
    assert trainer.state.global_step == 12 and cb.report_failures == []
    assert not [w for w in record if str(w.message).startswith("probattr:")]
    rows = read_wandb_records(wandb_run_dir(tmp_path))["history"]
    assert [r["probattr/step"] for r in rows if "probattr/tokens/_type" in r] == [4, 6, 8, 12]
    assert not (Path(trainer.args.output_dir) / "probattr").exists()  # W&B took everything


def test_failed_scoring_is_recorded_in_the_wandb_run_without_values(tmp_path, probes, monkeypatch):
    from helpers.wandb_offline import load_wandb_table, read_wandb_records, wandb_run_dir

    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "probattr-faults")
    cb = callback(probes, wandb="auto", attribution_every=1)  # a token table at every scoring
    trainer = make_trainer(tmp_path, [cb], report_to=["wandb"])
    inject_faults(trainer, nan_steps=[8])
    with all_warnings():
        trainer.train()
    wandb.finish()
    assert trainer.state.global_step == 12
    run_dir = wandb_run_dir(tmp_path)
    rows = read_wandb_records(run_dir)["history"]
    (failed,) = [r for r in rows if "probattr/errors/_type" in r]
    assert failed["probattr/step"] == 8 and "probattr/tokens/_type" not in failed
    errors = load_wandb_table(run_dir, failed, "probattr/errors")
    assert [r[0] for r in errors["data"]] == ["p1", "p2", "p3"] and "non-finite" in errors["data"][0][1]
    assert [r["probattr/step"] for r in rows if "probattr/tokens/_type" in r] == [4, 12]
    assert [r["probattr/step"] for r in rows if "probattr/noise_rate" in r] == [4, 12]  # no value for step 8
    assert not any("eval/probattr_noise_rate" in r for r in rows if r.get("train/global_step") == 8)


def test_wandb_run_whose_log_raises_files_take_the_reports(tmp_path, probes, monkeypatch):
    wandb = pytest.importorskip("wandb")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="probattr-faults")

    def refuse(*args, **kwargs):
        raise ConnectionError("W&B is down")

    monkeypatch.setattr(run, "log", refuse)  # the real offline run, refusing every log call
    cb = callback(probes, wandb="auto")
    trainer = make_trainer(tmp_path, [cb])
    with all_warnings() as record:
        trainer.train()
    monkeypatch.undo()  # the run's own log again, before the fixture finishes it
    assert trainer.state.global_step == 12
    files = Path(trainer.args.output_dir) / "probattr"
    assert [h["step"] for h in read_history(files)] == [4, 8, 12]
    assert [f["step"] for f in cb.report_failures] == [4, 8, 12]
    assert len(probattr_warnings(record, "W&B did not take the report")) == 1
    assert not probattr_warnings(record, "logging step")  # the sink itself did not warn a second time


# --------------------------------------------------------------------------- a time budget that runs out


def test_time_budget_expiring_mid_set_gives_a_partial_scoring_no_gate_sees(tmp_path, probes):
    plain = plain_run(tmp_path)
    monitor = ProbAttrMonitor(str(probes), scoring=scoring_config(), time_budget_s=0.04)
    cb = ProbAttrTrainerCallback(monitor, wandb=False, plots=False, log_dir=tmp_path / "files")
    es = EarlyStoppingCallback()
    rec = GateRecorder(es)
    trainer = make_trainer(tmp_path / "run", [cb, es, rec], save_strategy="steps", save_steps=4, **GATED)
    inject_faults(trainer, sleep_s=0.05)  # each scoring forward takes 50 ms: p1 outlasts the budget
    with all_warnings() as record:
        trainer.train()
    assert trainer.state.global_step == 12 and same_weights(plain, trainer.model)
    assert [(h.step, h.status, h.n_scored) for h in cb.history] == [(4, "partial", 1), (8, "partial", 1),
                                                                    (12, "partial", 1)]
    assert set(cb.history[0].errors) == {"p2", "p3"} and cb.failures == []
    assert not any(k.startswith("eval_probattr_") for r in trainer.state.log_history for k in r)
    assert trainer.state.best_metric is None and set(rec.counters.values()) == {0}
    lines = read_history(tmp_path / "files")
    assert [(h["step"], h["n_probes"], h["n_errors"]) for h in lines] == [(4, 1, 2), (8, 1, 2), (12, 1, 2)]
    assert len(probattr_warnings(record, "was partial: 1 of 3 probes scored")) == 3  # one per scoring


# --------------------------------------------------------------------------- fail before the first step


def test_model_that_is_not_a_causal_lm_fails_at_train_begin(tmp_path, probes):
    from transformers import GPT2Config, GPT2ForSequenceClassification, Trainer

    tok = make_tokenizer()
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1,
                                                     n_head=2, num_labels=2, pad_token_id=tok.pad_token_id))
    before = state_dict_copy(model)
    trainer = Trainer(model=model, args=training_args(tmp_path / "out"), processing_class=tok,
                      train_dataset=BlockDataset(tok, make_corpus(40, seed=1)),
                      eval_dataset=BlockDataset(tok, make_corpus(20, seed=2)), callbacks=[callback(probes)])
    with pytest.raises(ValueError, match=r"cannot score the Trainer's model \(GPT2ForSequenceClassification\): it "
                                         r"must be a causal LM.*logits have shape \(1, 2\)"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fixed_response_longer_than_the_context_fails_at_trainer_init(tmp_path):
    path = write_probes(tmp_path / "long.jsonl", [{"id": "wordy", "prompt": "the cat sees the ball",
                                                   "response": " ".join(["at night ."] * 12)}])
    with pytest.raises(ValueError, match=r"probe 'wordy' .* needs 42 tokens \(prompt 6 \+ fixed response 36\) "
                                         r"but the model's context window is 32"):
        make_trainer(tmp_path, [callback(path)])
