"""Gate scorings (docs/design.md section 9): the default gate from one forward pass per prompt.

``ProbAttrMonitor(attribution_every=K)`` attributes on every K-th scoring and, in
between, runs gate scorings that compute only the prefix-surprisal metric. These
tests check the gate pass against an independent oracle (one forward per prefix),
that a gate scoring reports the same gate value as an attribution scoring, the
cadence, its state across a resume, the setup checks of both callbacks, and real
Lightning and HF Trainer runs with W&B offline.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.models import tiny_gpt2
from helpers.probes import scoring_config, write_probes
from probattr_monitor import attribute
from probattr_monitor.engine.prefix import is_prefix_result, prefix_surprisal
from probattr_monitor.monitor import ProbAttrMonitor, Schedule
from probattr_monitor.monitor.keys import gate_scalar_names, scalar_names
from probattr_monitor.report import Report, compute_metrics
from probattr_monitor.report.definitions import NOT_IN_GATE_SCORING, PREFIX_METRIC_NAMES

pytestmark = pytest.mark.usefixtures("one_thread", "offline_wandb")

PROMPTS = ([1, 5, 7, 9, 11, 3, 8], [2, 4, 4, 6, 12], [1, 30, 2])


def oracle_prefix_log_probs(model, prompt):
    """``log p(x_k | x_<k)`` by one separate forward over each prefix ``x_<k`` (no shared pass)."""
    out = []
    with torch.no_grad():
        for k in range(1, len(prompt)):
            logits = model(input_ids=torch.tensor([prompt[:k]])).logits[0, -1].double()
            out.append(float(torch.log_softmax(logits, -1)[prompt[k]]))
    return np.array(out)


# --------------------------------------------------------------------------- the gate pass


@pytest.mark.parametrize("prompt", PROMPTS)
def test_gate_pass_matches_one_forward_per_prefix(prompt):
    model = tiny_gpt2(50, 0).eval()
    res = prefix_surprisal(model, prompt)
    assert is_prefix_result(res)
    np.testing.assert_allclose(-res.surprisal_prefix, oracle_prefix_log_probs(model, prompt), atol=1e-5)
    assert res.info["token_forwards"] == len(prompt) and res.info["forward_calls"] == 1
    assert list(res.positions) == list(range(1, len(prompt)))
    for name in ("attribution", "entropy_prompt", "entropy_full", "kl", "surprisal_prompt", "surprisal_full"):
        assert np.isnan(getattr(res, name)).all(), name
    assert res.response_ids == () and res.top_prior_ids.shape == (len(prompt) - 1, 0)


def test_gate_pass_equals_the_attribution_pass_and_costs_a_prompt():
    model = tiny_gpt2(50, 0)
    prompt = list(PROMPTS[0])
    full = attribute(model, prompt, [4, 8, 2], candidates="all")
    gate = prefix_surprisal(model, prompt, positions=[2, 5])
    np.testing.assert_allclose(gate.surprisal_prefix, full.surprisal_prefix[[1, 4]], atol=1e-5)
    assert full.info["token_forwards"] > 100 * gate.info["token_forwards"]


def test_gate_pass_refuses_bad_input():
    model = tiny_gpt2(50, 0)
    with pytest.raises(ValueError, match="at least 2"):
        prefix_surprisal(model, [1])
    with pytest.raises(ValueError, match="outside"):
        prefix_surprisal(model, [1, 99])


def test_gate_pass_leaves_the_model_in_training_mode():
    model = tiny_gpt2(50, 0).train()
    prefix_surprisal(model, [1, 2, 3])
    assert model.training and torch.is_grad_enabled()


# --------------------------------------------------------------------------- report and metrics


def _reports(model):
    gate = Report.from_results([(f"p{i}", prefix_surprisal(model, p)) for i, p in enumerate(PROMPTS)], step=3,
                               n_boot=200)
    full = Report.from_results([(f"p{i}", attribute(model, p, [4, 8, 2])) for i, p in enumerate(PROMPTS)], step=3,
                               n_boot=200)
    return gate, full


def test_gate_report_gives_the_attribution_reports_gate_value_and_interval():
    gate, full = _reports(tiny_gpt2(50, 0))
    assert gate.metrics.scope == "prefix" and full.metrics.scope == "attribution"
    for name in PREFIX_METRIC_NAMES:
        g, f = gate.metrics[name], full.metrics[name]
        assert g.value == pytest.approx(f.value, abs=1e-6)
        assert (g.low, g.high) == pytest.approx((f.low, f.high), abs=1e-6)  # same probes resampled, same seed
    assert math.isnan(gate.metrics["noise_rate"].value)
    assert gate.metrics["noise_rate"].note == NOT_IN_GATE_SCORING


def test_gate_report_logs_only_what_it_computed_and_survives_a_save(tmp_path):
    gate, full = _reports(tiny_gpt2(50, 0))
    scalars = gate.metrics.scalars(prefix="")
    assert list(scalars) == gate_scalar_names()
    assert all(math.isfinite(v) for v in scalars.values())
    assert list(full.metrics.scalars(prefix="")) == scalar_names()
    from probattr_monitor.report.figures import scoring_figures

    assert gate.metrics.gate_scoring and not full.metrics.gate_scoring
    assert scoring_figures(gate) == {} and scoring_figures(full)  # no AS to draw in a gate scoring
    gate.save(tmp_path / "g")
    loaded = Report.load(tmp_path / "g")
    assert loaded.metrics.scope == "prefix" and loaded.metrics.scalars(prefix="") == scalars


def test_gate_and_attribution_results_cannot_be_pooled():
    model = tiny_gpt2(50, 0)
    with pytest.raises(ValueError, match="cannot pool"):
        Report.from_results([("a", prefix_surprisal(model, PROMPTS[0])),
                             ("b", attribute(model, PROMPTS[1], [4]))])


def test_prefix_surprisal_counts_tokens_whose_attribution_is_not_finite():
    table = {"probe_id": np.array(["a", "a", "b"]), "attribution": np.array([0.1, np.nan, 0.2]),
             "entropy_prompt": np.ones(3), "entropy_full": np.ones(3), "kl": np.zeros(3),
             "surprisal_prefix": np.array([1.0, 3.0, 2.0])}
    m = compute_metrics(table, n_boot=0)
    assert m.n_tokens == 2 and m.n_undefined == 1
    assert m["mean_surprisal_prefix"].value == pytest.approx(2.0)  # all three tokens
    assert m["mean_abs_as"].value == pytest.approx(0.15)  # the finite AS only


# --------------------------------------------------------------------------- the monitor's cadence


@pytest.fixture
def word_probes(tmp_path):
    from helpers.lit import PROBES

    return str(write_probes(tmp_path / "probes.jsonl", PROBES))


@pytest.fixture(scope="module")
def lit_tok():
    from helpers.lit import word_tokenizer

    return word_tokenizer()


def _monitor(probes, tok, **kw):
    return ProbAttrMonitor(probes, tokenizer=tok, scoring=scoring_config(), **kw)


def test_monitor_attributes_every_kth_scoring_and_gates_in_between(word_probes, lit_tok):
    from helpers.lit import TinyLitLM

    model = TinyLitLM(lit_tok).model
    monitor = _monitor(word_probes, lit_tok, attribution_every=3)
    reports = [monitor.run(model, step) for step in range(7)]
    assert [h.scope for h in monitor.state.history] == ["attribution", "prefix", "prefix"] * 2 + ["attribution"]
    gate_values = {r.metrics["mean_surprisal_prefix"].value for r in reports}
    assert len(gate_values) == 1 or max(gate_values) - min(gate_values) < 1e-6  # same weights, same gate value
    forwards = [r.meta["token_forwards"] for r in reports]
    assert forwards[1] * 50 < forwards[0]
    assert forwards[1] == sum(n + 1 for n in reports[1].table.groupby("probe_id").size())  # one pass per prompt
    for h in monitor.state.history:
        assert h.status == "complete" and math.isfinite(h.value)
        assert set(h.scalars) == {f"probattr/{n}" for n in (scalar_names() if h.scope == "attribution"
                                                             else gate_scalar_names())}
    # resumed from a checkpoint, the cadence goes on where it was
    resumed = _monitor(word_probes, lit_tok, attribution_every=3)
    resumed.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert resumed.attribution_due() is False
    resumed.run(model, 7)
    resumed.run(model, 8)
    assert [h.scope for h in resumed.state.history[-2:]] == ["prefix", "prefix"]
    assert resumed.attribution_due() is True


def test_monitor_without_attribution_in_the_loop_and_a_forced_one(word_probes, lit_tok):
    from helpers.lit import TinyLitLM

    model = TinyLitLM(lit_tok).model
    monitor = _monitor(word_probes, lit_tok, attribution_every=None)
    monitor.run(model, 1)
    monitor.run(model, 2, attribution=True)
    assert [h.scope for h in monitor.state.history] == ["prefix", "attribution"]
    assert monitor.every_scoring_keys() == [f"probattr/{n}" for n in gate_scalar_names()]


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (True, TypeError), (2.0, TypeError),
                                        ("3", TypeError)])
def test_monitor_refuses_a_bad_attribution_every(word_probes, bad, error):
    with pytest.raises(error, match="attribution_every"):
        ProbAttrMonitor(word_probes, attribution_every=bad)


def test_monitor_refuses_to_gate_on_an_attribution_metric_between_attributions(word_probes):
    with pytest.raises(ValueError, match="metric='noise_rate' reads a value that only attribution scorings log"):
        ProbAttrMonitor(word_probes, metric="noise_rate", attribution_every=5)
    assert ProbAttrMonitor(word_probes, metric="noise_rate").attribution_every == 1


# --------------------------------------------------------------------------- Lightning


def test_lightning_run_with_gate_scorings_gates_checkpoints_and_logs_to_wandb(word_probes, lit_tok, tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    from helpers.lit import TinyLitLM, trainer_kwargs
    from helpers.wandb_offline import read_wandb_records
    from probattr_monitor.callbacks import ProbAttrCallback

    pl.seed_everything(0, verbose=False)
    wl = WandbLogger(save_dir=str(tmp_path), offline=True, project="probattr-gate")
    cb = ProbAttrCallback(probes=word_probes, scoring=scoring_config(), every_n_steps=2, log_plots=False,
                          attribution_every=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="probattr/mean_surprisal_prefix", mode="min",
                           every_n_train_steps=2, save_top_k=1)
    trainer = pl.Trainer(callbacks=[cb, ckpt], **trainer_kwargs(default_root_dir=tmp_path, max_epochs=1, logger=wl,
                                                                enable_checkpointing=True, log_every_n_steps=50))
    trainer.fit(TinyLitLM(lit_tok))
    run_dir = Path(wl.experiment.dir).parent
    wl.experiment.finish()
    steps = [h.step for h in cb.history]
    assert len(steps) >= 4
    assert [h.scope for h in cb.history] == [("attribution" if i % 3 == 0 else "prefix") for i in range(len(steps))]
    best = min((h for h in cb.history if h.step % 2 == 0), key=lambda h: h.value)  # the steps the checkpoint saw
    assert ckpt.best_model_score is not None and float(ckpt.best_model_score) == pytest.approx(best.value, rel=1e-6)
    assert ckpt.best_model_path.endswith(f"step={best.step}.ckpt")
    rows = read_wandb_records(run_dir)["history"]
    gate_rows = [r for r in rows if "probattr/mean_surprisal_prefix" in r]
    assert [r["probattr/step"] for r in gate_rows] == steps
    table_steps = [r["probattr/step"] for r in rows if "probattr/tokens/_type" in r]
    assert table_steps == [h.step for h in cb.history if h.scope == "attribution"]
    noise_steps = [r["probattr/step"] for r in rows if "probattr/noise_rate" in r]
    assert noise_steps == table_steps  # no NaN stand-in logged at a gate scoring
    gate_forwards = [t["token_forwards"] for t, h in zip(cb.timings, cb.history) if h.scope == "prefix"]
    full_forwards = [t["token_forwards"] for t, h in zip(cb.timings, cb.history) if h.scope == "attribution"]
    assert max(gate_forwards) * 50 < min(full_forwards)


def test_lightning_refuses_a_checkpoint_on_a_key_gate_scorings_do_not_log(word_probes, lit_tok, tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.callbacks import ModelCheckpoint

    from helpers.lit import TinyLitLM, trainer_kwargs
    from probattr_monitor.callbacks import ProbAttrCallback

    cb = ProbAttrCallback(probes=word_probes, scoring=scoring_config(), log_plots=False, wandb=False,
                          attribution_every=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="probattr/noise_rate", mode="min")
    trainer = pl.Trainer(callbacks=[cb, ckpt], **trainer_kwargs(default_root_dir=tmp_path, enable_checkpointing=True))
    with pytest.raises(ValueError, match="only attribution scorings log.*attribution_every=2"):
        trainer.fit(TinyLitLM(lit_tok))
    assert cb.history == []


# --------------------------------------------------------------------------- HF Trainer


def test_hf_trainer_with_gate_scorings_selects_the_best_model(tmp_path):
    pytest.importorskip("transformers")
    from helpers.hf import PROBES, make_trainer
    from probattr_monitor.callbacks.hf import ProbAttrTrainerCallback

    probes = write_probes(tmp_path / "probes.jsonl", PROBES)
    cb = ProbAttrTrainerCallback(probes=str(probes), scoring=scoring_config(), plots=False, wandb=False,
                                 attribution_every=2)
    trainer = make_trainer(tmp_path, [cb], metric_for_best_model="probattr_mean_surprisal_prefix",
                           greater_is_better=False, save_strategy="steps", save_steps=4, load_best_model_at_end=True)
    trainer.train()
    assert [h.scope for h in cb.history] == ["attribution", "prefix", "attribution"]
    best = min(cb.history, key=lambda h: h.value)
    assert trainer.state.best_metric == pytest.approx(best.value)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best.step}")
    evals = [r for r in trainer.state.log_history if "eval_probattr_mean_surprisal_prefix" in r]
    assert [("eval_probattr_noise_rate" in r) for r in evals] == [True, False, True]


def test_hf_refuses_metric_for_best_model_that_gate_scorings_do_not_produce(tmp_path):
    pytest.importorskip("transformers")
    from helpers.hf import PROBES, make_trainer
    from probattr_monitor.callbacks.hf import ProbAttrTrainerCallback

    probes = write_probes(tmp_path / "probes.jsonl", PROBES)
    cb = ProbAttrTrainerCallback(probes=str(probes), scoring=scoring_config(), plots=False, wandb=False,
                                 attribution_every=4)
    with pytest.raises(ValueError, match="metric_for_best_model=.*only attribution scorings log.*other evaluations.*"
                                         "'probattr_mean_surprisal_prefix'"):
        make_trainer(tmp_path, [cb], metric_for_best_model="probattr_noise_rate", greater_is_better=False)
    assert cb.history == []


def test_hf_callback_with_a_monitor_takes_attribution_every_from_it(word_probes):
    from probattr_monitor.callbacks.hf import ProbAttrTrainerCallback

    with pytest.raises(ValueError, match="attribution_every on the ProbAttrMonitor"):
        ProbAttrTrainerCallback(ProbAttrMonitor(word_probes), attribution_every=2)
    cb = ProbAttrTrainerCallback(ProbAttrMonitor(word_probes, schedule=Schedule(), attribution_every=2))
    assert cb.monitor.attribution_every == 2


# --------------------------------------------------------------------------- the cost benchmark


def test_monitor_cost_prices_the_default_cadence_from_a_real_gate_scoring(word_probes, lit_tok, capsys):
    from benchmarks.monitor_cost import gate_scoring_cost
    from helpers.lit import TinyLitLM
    from probattr_monitor.probes import load_probe_set, render
    from probattr_monitor.scoring import build_report, score_probes

    model = TinyLitLM(lit_tok).model
    probes = load_probe_set(word_probes)
    config = scoring_config()
    head = list(probes)[:2]
    attributed = build_report(score_probes(model, lit_tok, head, config), lit_tok, config)
    budget = {"rows": [{"probe": p.id} for p in head], "set_token_forwards_estimate": 1e6,
              "set_seconds_estimate": 100.0, "gate_value": attributed.metrics["mean_surprisal_prefix"].value}
    whole_rows = {"set_token_forwards_estimate": 1.2e6}  # the baseline scored beside it
    out = gate_scoring_cost(model, lit_tok, probes, budget, n_scored=2, every=10, repeats=1, baseline=whole_rows)
    prompts = sum(len(render(p, lit_tok).ids) for p in probes)
    assert out["gate_token_forwards"] == prompts
    assert out["gate_value_on_scored_probes"] == pytest.approx(budget["gate_value"], abs=1e-6)
    assert out["mean_token_forwards_per_scoring"] == pytest.approx((1e6 + 9 * prompts) / 10)
    assert out["today_over_default_cadence"] == pytest.approx(1e6 / out["mean_token_forwards_per_scoring"])
    assert out["baseline_over_default_cadence"] == pytest.approx(1.2e6 / out["mean_token_forwards_per_scoring"])
    printed = capsys.readouterr().out
    assert "mean per scoring, default cadence" in printed and "fewer than the baseline" in printed


def test_monitor_cost_floor_prices_the_scorings_at_the_models_raw_forward_speed(lit_tok, capsys):
    from benchmarks.monitor_cost import TARGET_SECONDS, raw_forward_floor
    from helpers.lit import TinyLitLM

    model = TinyLitLM(lit_tok).model
    scorings = {"default": {"token_forwards_per_second": 500.0, "set_token_forwards_estimate": 4e6}}
    out = raw_forward_floor(model, scorings, {"mean_token_forwards_per_scoring": 4e5})
    rate = out["tokens_per_second"]
    assert rate > 0 and out["rows"] == 64
    assert out["scorings"]["default"]["share_of_raw_speed"] == pytest.approx(500.0 / rate)
    assert out["scorings"]["default"]["set_minutes_at_raw_speed"] == pytest.approx(4e6 / rate / 60)
    assert out["default_cadence_mean_minutes_at_raw_speed"] == pytest.approx(4e5 / rate / 60)
    assert out["token_forwards_in_target_at_raw_speed"] == pytest.approx(TARGET_SECONDS * rate)
    assert out["attribution_over_target_token_forwards"] == pytest.approx(4e6 / (TARGET_SECONDS * rate))
    assert "the floor: raw model(ids).logits forward" in capsys.readouterr().out


def _plateau_module(tok, key):
    from helpers.lit import TinyLitLM

    class PlateauLM(TinyLitLM):
        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=self.lr)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", patience=5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": key, "interval": "epoch"}}

    return PlateauLM(tok)


def test_lightning_plateau_scheduler_on_an_attribution_key(word_probes, lit_tok, tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from helpers.lit import trainer_kwargs
    from probattr_monitor.callbacks import ProbAttrCallback

    # "auto": the scheduler reads noise_rate, so every scoring attributes
    cb = ProbAttrCallback(probes=word_probes, scoring=scoring_config(), log_plots=False, wandb=False)
    pl.Trainer(callbacks=[cb], **trainer_kwargs(default_root_dir=tmp_path, max_epochs=2)).fit(
        _plateau_module(lit_tok, "probattr/noise_rate"))
    assert cb.monitor.attribution_every == 1 and [h.scope for h in cb.history] == ["attribution"] * 2
    # explicit: refused before the first step
    cb = ProbAttrCallback(probes=word_probes, scoring=scoring_config(), log_plots=False, wandb=False,
                          attribution_every=3)
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(default_root_dir=tmp_path / "b", max_epochs=2))
    with pytest.raises(ValueError, match="lr scheduler monitoring 'probattr/noise_rate'.*attribution_every=1"):
        trainer.fit(_plateau_module(lit_tok, "probattr/noise_rate"))
    assert trainer.global_step == 0 and cb.history == []


def test_a_gate_scoring_records_no_response_and_the_monitor_keeps_the_last_attribution(word_probes, lit_tok):
    from helpers.lit import TinyLitLM

    model = TinyLitLM(lit_tok).model
    monitor = _monitor(word_probes, lit_tok, attribution_every=3)
    first = monitor.run(model, 1)
    gate = monitor.run(model, 2)
    assert set(first.meta["responses"]) == {p.id for p in monitor.probe_set} and gate.meta["responses"] == {}
    assert monitor.last_attribution_report is first
