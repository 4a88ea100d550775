"""Sequential budgets (issue 13): the decision rule, the merge, and the ladder against its stages.

The reference for every escalated position is the last stage scored alone
(the budgeted estimator seeds position ``k`` from ``[seed, k]`` and never reads
other positions), and for the whole ladder exact scoring over the vocabulary
(a budget covering it is exact, ``test_budgeted.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.models import tiny_gpt2

from probattr_monitor import Budget, attribute
from probattr_monitor.engine.result import SCORE_FIELDS
from probattr_monitor.engine.sequential import SequentialBudget, attribute_sequential, replace_positions
from probattr_monitor.report import NoiseConfig, classify, noise_flags
from probattr_monitor.report.noise import undecided

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 150
CHEAP = Budget(max_candidates=4, tail_samples=4, screen=0, refine=0)
NEAR = Budget(max_candidates=100, tail_samples=40, screen=0, refine=0)  # 140 of 150 ids: budgeted, nearly exact
EXACT = Budget(max_candidates=VOCAB)  # covers the vocabulary: exact


@pytest.fixture(scope="module")
def case(one_thread):
    rng = np.random.default_rng(3)
    prompt = [0] + [int(t) for t in rng.integers(1, VOCAB, 13)]
    response = [int(t) for t in rng.integers(1, VOCAB, 4)]
    return tiny_gpt2(VOCAB, 5), prompt, response


def _rule(cfg=None):
    def rule(res, z):
        return undecided(res.attribution, res.stderr["attribution"], res.entropy_full,
                         res.stderr["entropy_full"], cfg, z)
    return rule


def test_undecided_reads_the_class_edges_and_the_threshold():
    a = np.array([0.0, 0.15, 0.15, 1.0, 0.0, 0.0, -0.1, 4.0, 0.0])
    se_a = np.array([0.05, 0.1, 0.01, 0.1, 0.01, 0.01, 0.2, 2.0, np.nan])
    h = np.array([3.0, 3.0, 1.05, 1.05, 1.05, 0.2, 3.0, 3.0, 3.0])
    se_h = np.array([0.1, 0.1, 0.1, 0.1, 0.01, 0.3, 0.1, 0.1, 0.1])
    got = undecided(a, se_a, h, se_h, NoiseConfig(), z=2.0)
    # decided near-zero noise; AS interval crosses 0.2; H' interval crosses 1.0; positive AS (flag off
    # whatever H' is); H' above within 2 SE; H' below; AS crosses -0.2; AS crosses 3.0; unknown error
    assert got.tolist() == [False, True, True, False, False, False, True, True, True]
    assert not undecided(a[:-1], se_a[:-1], h[:-1], se_h[:-1], z=0.0).any()  # finite errors, z = 0: decided
    with pytest.raises(ValueError, match="z must be"):
        undecided(a, se_a, h, se_h, z=-1.0)


def test_replace_positions_equals_scoring_those_positions_alone(case):
    model, prompt, response = case
    base = attribute(model, prompt, response, candidates=CHEAP)
    mask = np.zeros(len(base), dtype=bool)
    mask[[1, 4, 7]] = True
    sub = attribute(model, prompt, response, candidates=EXACT, positions=base.positions[mask])
    merged = replace_positions(base, sub, mask)
    for name in SCORE_FIELDS:
        np.testing.assert_array_equal(getattr(merged, name)[mask], getattr(sub, name))
        np.testing.assert_array_equal(getattr(merged, name)[~mask], getattr(base, name)[~mask])
    np.testing.assert_array_equal(merged.stderr["attribution"][mask], 0.0)
    assert merged.info["num_exact"][mask].tolist() == list(sub.info["num_exact"])
    with pytest.raises(ValueError, match="masked positions"):
        replace_positions(base, sub, ~mask)


def test_escalated_positions_get_the_last_stage_result(case):
    model, prompt, response = case
    spec = SequentialBudget(stages=(CHEAP, Budget(max_candidates=8, tail_samples=8, screen=32, refine=0)), z=2.0)
    res = attribute_sequential(model, prompt, response, spec, _rule())
    stage = res.info["stage"]
    assert res.info["method"] == "sequential" and res.info["positions_per_stage"][0] == len(res)
    assert 0 < stage.sum() < len(res), "the case must escalate some positions and not others"
    cheap = attribute(model, prompt, response, candidates=CHEAP)
    last = attribute(model, prompt, response, candidates=spec.stages[1])
    first_todo = _rule()(cheap, 2.0)
    np.testing.assert_array_equal(stage == 1, first_todo)
    for name in SCORE_FIELDS:
        np.testing.assert_allclose(getattr(res, name)[stage == 1], getattr(last, name)[stage == 1], atol=1e-9)
        np.testing.assert_array_equal(getattr(res, name)[stage == 0], getattr(cheap, name)[stage == 0])
    assert res.info["token_forwards"] < last.info["token_forwards"]


def test_ladder_reads_like_exact_where_it_stops(case):
    """Escalated positions get the last stage's result; the decided ones mostly carry exact's class and flag."""
    model, prompt, response = case
    res = attribute_sequential(model, prompt, response, SequentialBudget(stages=(CHEAP, NEAR), z=3.0), _rule())
    near = attribute(model, prompt, response, candidates=NEAR)
    exact = attribute(model, prompt, response, candidates="all")
    up = res.info["stage"] == 1
    assert up.any()
    np.testing.assert_allclose(res.attribution[up], near.attribution[up], atol=1e-9)
    assert (classify(res.attribution) == classify(exact.attribution)).mean() >= 0.9
    assert (noise_flags(res.attribution, res.entropy_full) == noise_flags(exact.attribution,
                                                                          exact.entropy_full)).mean() >= 0.9


def test_a_stage_covering_the_vocabulary_is_the_whole_ladder(case):
    """On a small vocabulary the ladder is its first exact stage: the result equals exact scoring."""
    model, prompt, response = case
    res = attribute_sequential(model, prompt, response, SequentialBudget(stages=(CHEAP, EXACT, NEAR)), _rule())
    exact = attribute(model, prompt, response, candidates="all")
    assert res.info["positions_per_stage"] == [0, len(res), 0] and (res.info["stage"] == 1).all()
    for name in SCORE_FIELDS:
        np.testing.assert_allclose(getattr(res, name), getattr(exact, name), atol=1e-9)


def test_z_zero_stops_after_the_first_stage(case):
    model, prompt, response = case
    res = attribute_sequential(model, prompt, response, SequentialBudget(stages=(CHEAP, NEAR), z=0.0), _rule())
    finite = np.isfinite(attribute(model, prompt, response, candidates=CHEAP).stderr["attribution"])
    assert (res.info["stage"][finite] == 0).all()


def test_bad_specs_fail_when_made():
    with pytest.raises(ValueError, match="at least one"):
        SequentialBudget(stages=())
    with pytest.raises(TypeError, match=r"stages\[1\]"):
        SequentialBudget(stages=(Budget(), "all"))
    with pytest.raises(ValueError, match=">= 0"):
        SequentialBudget(z=-0.5)
    with pytest.raises(TypeError, match="finite"):
        SequentialBudget(z=float("nan"))
    assert SequentialBudget(stages=Budget()).stages == (Budget(),)


def test_scoring_config_runs_the_ladder_and_records_it(tmp_path):
    from helpers.lit import PROBES, word_tokenizer
    from helpers.models import one_layer_gpt2
    from helpers.probes import write_probes
    from probattr_monitor.probes import load_probe_set
    from probattr_monitor.scoring import ScoringConfig, score_probe_set

    tok = word_tokenizer()
    probes = load_probe_set(write_probes(tmp_path / "probes.jsonl", PROBES))
    model = one_layer_gpt2(len(tok), seed=0)
    near = Budget(max_candidates=len(tok) // 2, tail_samples=len(tok) // 4, screen=0, refine=0)
    seq = score_probe_set(model, tok, probes, ScoringConfig(candidates=SequentialBudget(stages=(CHEAP, near)),
                                                            max_new_tokens=3, n_boot=50), step=1)
    exact = score_probe_set(model, tok, probes, ScoringConfig(candidates="all", max_new_tokens=3, n_boot=50), step=1)
    assert len(seq.table) == len(exact.table)  # every position has a row
    assert seq.meta["scoring"]["candidates"]["sequential"]["z"] == 2.0
    assert "attribution_se" in seq.table.columns
    assert seq.metrics.noise_rate.value == pytest.approx(exact.metrics.noise_rate.value, abs=0.1)
    # the monitor's default ladder on a tiny vocabulary is its exact last stage: exact scoring
    default = score_probe_set(model, tok, probes, ScoringConfig(candidates=SequentialBudget(), max_new_tokens=3,
                                                                n_boot=50), step=1)
    assert default.metrics.noise_rate.value == exact.metrics.noise_rate.value
    np.testing.assert_allclose(default.table["attribution"], exact.table["attribution"], atol=1e-9)


def test_template_tokens_are_never_escalated(case):
    from probattr_monitor.scoring import undecided_rule

    model, prompt, response = case
    cheap = attribute(model, prompt, response, candidates=CHEAP)
    mask = [False] * len(prompt)
    everywhere = undecided_rule(NoiseConfig(), mask)(cheap, 50.0)
    assert everywhere.all()
    mask[3] = mask[5] = True
    todo = undecided_rule(NoiseConfig(), mask)(cheap, 50.0)
    assert todo.tolist() == [k not in (3, 5) for k in cheap.positions]


def test_attribute_refuses_a_sequential_budget_with_directions(case):
    model, prompt, response = case
    with pytest.raises(TypeError, match="ScoringConfig"):
        attribute(model, prompt, response, candidates=SequentialBudget())
