"""The response-length study's data path (benchmarks/validity/response_length.py, issue 13).

A tiny run (4 training steps of a 1-layer GPT-2, 2 kept checkpoints, 3 probes)
is trained once per module with its weights kept, and scored again at two
response lengths. The ranking statistics are checked on hand-made inputs.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from benchmarks.validity import response_length as rl
from benchmarks.validity.languages import grammar_language
from benchmarks.validity.runs import RunSpec, checkpoint_model, checkpoint_path

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = (5, 20)
SPEC = RunSpec("grammar", "scratch", 0, steps=4, score_at=(2, 4), num_probes=3, prompt_tokens=5, width=16,
               layers=1, batch_size=8)


@pytest.fixture(scope="module")
def language():
    return grammar_language()


@pytest.fixture(scope="module")
def trained(one_thread, tmp_path_factory, language):
    run_dir = tmp_path_factory.mktemp("resplen") / SPEC.name
    record = rl.train_run(SPEC, language, run_dir)
    result = rl.rescore_run(SPEC, language, run_dir, record, LENGTHS)
    return run_dir, record, result


def test_weights_are_kept_at_every_scored_step(trained):
    run_dir, record, _ = trained
    assert [c["step"] for c in record.checkpoints] == [2, 4]
    for step in (2, 4):
        assert checkpoint_path(run_dir, step).is_file()
    first = checkpoint_model(SPEC, grammar_language().vocab_size, checkpoint_path(run_dir, 2)).state_dict()
    last = checkpoint_model(SPEC, grammar_language().vocab_size, checkpoint_path(run_dir, 4)).state_dict()
    final = torch.load(run_dir / "final.pt", weights_only=True)
    assert all(torch.equal(last[k], final[k]) for k in final)  # the last kept step is the final model
    assert not all(torch.equal(first[k], final[k]) for k in final)  # the earlier one is not


def test_keeping_weights_changes_neither_the_record_nor_the_reports(trained, tmp_path, language):
    from benchmarks.validity.runs import run_one
    from probattr_monitor.report import Report

    run_dir, record, _ = trained
    plain = run_one(SPEC, language, tmp_path / "plain")  # the default: no weights kept
    assert not (tmp_path / "plain" / "checkpoints").exists()
    assert plain.checkpoints == record.checkpoints
    for step in (2, 4):
        name = f"step-{step:08d}"
        kept, default = Report.load(run_dir / "reports" / name), Report.load(tmp_path / "plain" / "reports" / name)
        assert kept.metrics == default.metrics and kept.table.equals(default.table)


def test_records_hold_every_checkpoint_at_every_length(trained):
    run_dir, record, result = trained
    assert result.newly_scored == 4
    got = {(s.step, s.max_new_tokens) for s in result.scorings}
    assert got == {(st, m) for st in (2, 4) for m in LENGTHS}
    truth = {c["step"]: c["excess_loss"] for c in record.checkpoints}
    for s in result.scorings:
        assert rl.scoring_path(run_dir, s.step, s.max_new_tokens).is_file()
        assert s.config["max_new_tokens"] == s.max_new_tokens and s.excess_loss == truth[s.step]
        assert len(s.probe_ids) == SPEC.num_probes and all(1 <= n <= s.max_new_tokens for n in s.response_tokens)
        assert set(s.metrics) == set(rl.METRICS)
        for name in rl.METRICS:
            num, den = np.array(s.per_probe[name]["num"]), np.array(s.per_probe[name]["den"])
            assert s.value(name) == pytest.approx(num.sum() / den.sum())  # the per-probe sums pool to the value
            assert s.metrics[name]["low"] <= s.value(name) <= s.metrics[name]["high"]
    by = {(s.step, s.max_new_tokens): s for s in result.scorings}
    # the longer bound scores more: more token-forwards, longer responses
    assert by[(4, 20)].token_forwards > by[(4, 5)].token_forwards
    assert sum(by[(4, 20)].response_tokens) > sum(by[(4, 5)].response_tokens)


def test_prefix_surprisal_does_not_read_the_response(trained):
    run_dir, _, result = trained
    by = {(s.step, s.max_new_tokens): s for s in result.scorings}
    for step in (2, 4):
        short, ref = by[(step, 5)], by[(step, 20)]
        np.testing.assert_allclose(short.per_probe[rl.PREFIX_METRIC]["num"], ref.per_probe[rl.PREFIX_METRIC]["num"],
                                   rtol=0, atol=1e-6)
        assert short.per_probe[rl.PREFIX_METRIC]["den"] == ref.per_probe[rl.PREFIX_METRIC]["den"]
        # while a metric that reads the response does move with its length
        assert abs(short.value("mean_surprisal_full") - ref.value("mean_surprisal_full")) > 1e-6
    summary = rl.summarise_run(result.scorings, run_dir, reference=20)
    assert summary.prefix_max_abs_diff < 1e-6
    # the m = 20 rescoring of the kept weights is what the callback logged during training
    assert summary.reference_max_abs_diff < 1e-9
    assert summary.steps == [2, 4] and summary.mean_response_tokens[5] <= 5
    assert {(s.metric, s.max_new_tokens) for s in summary.metrics} == {(k, m) for k in rl.METRICS for m in LENGTHS}
    text = rl.render_markdown([summary], reference=20)
    assert "### grammar.scratch.s0" in text and "| `mean_surprisal_prefix` | 5 |" in text
    compact = rl.render_compact([summary], reference=20).splitlines()
    assert len(compact) == 2 + len(rl.METRICS) and "ρ with excess loss, m = 5 / 20" in compact[0]
    assert compact[2].startswith("| grammar.scratch.s0 | `noise_rate` |")
    rho = rl.render_spearman([summary]).splitlines()
    assert len(rho) == 2 + len(rl.METRICS) and rho[0] == "| run | metric | m = 5 | m = 20 |"


def test_resume_skips_recorded_work_and_rescores_changed_settings(trained, monkeypatch, tmp_path, language):
    run_dir, record, first = trained
    copy = tmp_path / SPEC.name
    shutil.copytree(run_dir, copy)

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(rl, "run_one", no_training)
    again = rl.train_run(SPEC, language, copy)
    assert again.checkpoints == record.checkpoints
    real_score = rl.score_probes
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[3].max_new_tokens)
        return real_score(*args, **kwargs)

    monkeypatch.setattr(rl, "score_probes", counting)
    result = rl.rescore_run(SPEC, language, copy, again, LENGTHS)
    assert result.newly_scored == 0 and not calls
    assert sorted((s.step, s.max_new_tokens) for s in result.scorings) == sorted(
        (s.step, s.max_new_tokens) for s in first.scorings)
    # a scoring recorded with other settings is scored again and replaced
    path = rl.scoring_path(copy, 4, 5)
    data = json.loads(path.read_text())
    data["config"]["max_new_tokens"] = 7
    path.write_text(json.dumps(data))
    result = rl.rescore_run(SPEC, language, copy, again, LENGTHS)
    assert result.newly_scored == 1 and calls == [5]
    assert json.loads(path.read_text())["config"]["max_new_tokens"] == 5


def test_a_recorded_run_without_kept_weights_is_refused(trained, tmp_path, language):
    run_dir, _, _ = trained
    copy = tmp_path / SPEC.name
    shutil.copytree(run_dir, copy)
    checkpoint_path(copy, 2).unlink()
    with pytest.raises(FileNotFoundError, match=r"steps \[2\]"):
        rl.train_run(SPEC, language, copy)


def test_ranking_statistics_on_hand_made_values():
    steps = [10, 20, 30, 40]
    truth = np.array([4.0, 3.0, 2.0, 1.0])  # the last checkpoint is the best
    values = {20: [4.0, 3.0, 2.0, 1.0], 5: [4.5, 3.5, 2.5, 1.5], 40: [1.0, 2.0, 3.0, 4.0]}
    per_probe = {m: (np.outer(v, np.ones(6)), np.ones((4, 6))) for m, v in values.items()}
    widths = {m: [0.1, 0.2, 0.3, 0.4] for m in values}
    out = {s.max_new_tokens: s for s in rl.length_statistics(steps, truth, values, per_probe, widths,
                                                            "mean_surprisal_prefix", 20, n_boot=50)}
    ref, shifted, reversed_ = out[20], out[5], out[40]
    assert ref.kendall_vs_reference == pytest.approx(1.0) and ref.mean_abs_change == 0.0
    assert ref.spearman == pytest.approx(1.0) and ref.picked_step == 40 and ref.regret == pytest.approx(1.0)
    # a constant shift changes the values, not the ranking
    assert shifted.mean_abs_change == pytest.approx(0.5) and shifted.max_abs_change == pytest.approx(0.5)
    assert shifted.kendall_vs_reference == pytest.approx(1.0) and shifted.picked_step == 40
    # the reversed order: tau -1, rho -1, the gate picks the worst checkpoint (4x the best's excess loss)
    assert reversed_.kendall_vs_reference == pytest.approx(-1.0) and reversed_.spearman == pytest.approx(-1.0)
    assert reversed_.picked_step == 10 and reversed_.regret == pytest.approx(4.0)
    assert reversed_.max_abs_change == pytest.approx(3.0) and reversed_.mean_abs_change == pytest.approx(2.0)
    assert ref.mean_ci_width == pytest.approx(0.25)
    lo, hi = reversed_.spearman_ci  # identical probes: every resample gives the same rho
    assert lo == pytest.approx(-1.0) and hi == pytest.approx(-1.0)
    # a partial swap: one discordant pair of six
    swap = rl.length_statistics(steps, truth, {20: values[20], 10: [4.0, 3.0, 1.0, 2.0]},
                                {20: per_probe[20], 10: (np.outer([4.0, 3.0, 1.0, 2.0], np.ones(6)), np.ones((4, 6)))},
                                {20: widths[20], 10: widths[20]}, "noise_rate", 20, n_boot=10)
    assert swap[0].max_new_tokens == 10 and swap[0].kendall_vs_reference == pytest.approx(4 / 6)
    assert swap[0].picked_step == 30 and swap[0].regret == pytest.approx(2.0)


def test_summarise_refuses_incomplete_or_mixed_scorings(trained):
    _, _, result = trained
    complete = result.scorings
    with pytest.raises(ValueError, match="missing"):
        rl.summarise_run([s for s in complete if not (s.step == 2 and s.max_new_tokens == 5)], reference=20)
    with pytest.raises(ValueError, match="reference"):
        rl.summarise_run([s for s in complete if s.max_new_tokens != 20], reference=20)
    other = [type(s)(**{**s.__dict__, "run": "other"}) for s in complete[:1]]
    with pytest.raises(ValueError, match="one run"):
        rl.summarise_run(list(complete) + other, reference=20)
