"""Rows resumed from an earlier stage's KV states (``Budget(reuse_states=True)``, docs/design.md section 7).

The reference is the same engine feeding every row whole: resuming must give
the same log-probabilities and estimates (up to float rounding of a different
batch), spend exactly the token-forwards the cost model says, and fall back to
whole rows where it cannot keep states (no KV cache, no room in the memory
budget).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from helpers.models import tiny_gpt2, tiny_llama

from probattr_monitor import Budget, attribute
from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.engine.passes import full_pass
from probattr_monitor.engine.result import SCORE_FIELDS
from probattr_monitor.engine.runner import ModelRunner
from probattr_monitor.engine.stages import StagedRows
from probattr_monitor.engine.tail import STDERR_FIELDS

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 150
# a budget that screens, refines and samples a tail at every position of a 150-id vocabulary
STAGED = Budget(max_candidates=8, tail_samples=8, screen=96, refine=24, refine_depth=0.5)


def _pair(seed: int, n: int = 10, m: int = 4):
    rng = np.random.default_rng(seed)
    return [0] + [int(t) for t in rng.integers(1, VOCAB, n - 1)], [int(t) for t in rng.integers(1, VOCAB, m)]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def case(request, one_thread):
    model = (tiny_gpt2 if request.param == "gpt2" else tiny_llama)(VOCAB, 4)
    prompt, response = _pair(2)
    return model, prompt, response


def _assert_same_estimates(res, ref):
    np.testing.assert_array_equal(res.positions, ref.positions)
    for name in SCORE_FIELDS:
        np.testing.assert_allclose(getattr(res, name), getattr(ref, name), atol=1e-5, rtol=0, err_msg=name)
    for name in STDERR_FIELDS:
        np.testing.assert_allclose(res.stderr[name], ref.stderr[name], atol=1e-5, rtol=0, err_msg=name)
    for name in ("num_exact", "num_sampled", "num_screened", "num_refined", "refine_depth"):
        np.testing.assert_array_equal(res.info[name], ref.info[name], err_msg=name)


def test_resumed_rows_give_the_estimates_of_whole_rows_for_fewer_token_forwards(case):
    model, prompt, response = case
    resumed = attribute(model, prompt, response, candidates=STAGED)
    whole = attribute(model, prompt, response, candidates=dataclasses.replace(STAGED, reuse_states=False))
    _assert_same_estimates(resumed, whole)
    reused = resumed.info["reused_token_forwards"]
    assert np.all(whole.info["reused_token_forwards"] == 0)
    assert np.all(reused[resumed.info["num_refined"] > 0] > 0)
    assert whole.info["token_forwards"] - resumed.info["token_forwards"] == int(reused.sum()) > 0
    # what resuming saves: a token per refined id (all were screened first: the refine stage reads the
    # best-screened ids), and per scored id the tokens its deepest screening stage fed, at most the depth
    scored = resumed.info["num_exact"] + resumed.info["num_sampled"]
    depth = np.maximum(resumed.info["refine_depth"], 1)
    assert np.all(reused >= resumed.info["num_refined"])
    assert np.all(reused <= resumed.info["num_refined"] + scored * depth)
    assert resumed.info["budget"]["reuse_states"] is True and whole.info["budget"]["reuse_states"] is False


def test_cost_model_counts_the_resumed_tokens(case):
    model, prompt, response = case
    res = attribute(model, prompt, response, candidates=STAGED)
    info = res.info
    suffix = len(prompt) + len(response) - res.positions - 1
    per_position = (info["num_screened"] + info["num_refined"] * info["refine_depth"]
                    + (info["num_exact"] + info["num_sampled"]) * suffix - info["reused_token_forwards"])
    assert info["token_forwards"] == len(prompt) + len(response) + int(per_position.sum())


def test_staged_rows_match_whole_rows_for_every_mix_of_stored_depths(case):
    """Ids kept at depth 1, at depth 3 and never seen, read together to the end of the suffix."""
    model, prompt, response = case
    k = 4
    rest = prompt[k + 1:] + response
    with scoring_mode(model):
        runner = ModelRunner(model, 2**28)
        full = full_pass(runner, prompt, response)
        whole = runner.suffix_log_probs(full, prompt[:k], torch.arange(VOCAB), rest).numpy()
        rows = StagedRows(runner, full, prompt[:k], rest, batch_size=7)
        first = np.arange(0, 60)
        np.testing.assert_allclose(rows.log_probs(first, 1, keep=True), whole[first, :1], atol=1e-5)
        deeper = np.arange(30, 90)  # half kept at depth 1, half new
        np.testing.assert_allclose(rows.log_probs(deeper, 3, keep=True), whole[deeper, :3], atol=1e-5)
        before = runner.token_forwards
        every = np.array([149, 5, 45, 89, 100, 31, 0])  # depth 1, depth 3 and never-read ids, unsorted
        np.testing.assert_allclose(rows.log_probs(every, len(rest)), whole[every], atol=1e-5)
    fed = {149: len(rest), 5: len(rest) - 1, 45: len(rest) - 3, 89: len(rest) - 3, 100: len(rest),
           31: len(rest) - 3, 0: len(rest) - 1}
    assert runner.token_forwards - before == sum(fed.values())
    assert rows.reused_token_forwards == 30 + sum(len(rest) - f for f in fed.values())  # 30: ids 30-59 at depth 3


def test_without_a_kv_cache_every_row_is_fed_whole(case):
    model, prompt, response = case
    res = attribute(model, prompt, response, candidates=STAGED, use_cache=False)
    ref = attribute(model, prompt, response, candidates=STAGED)
    assert res.info["path"] == "full"
    assert np.all(res.info["reused_token_forwards"] == 0)
    _assert_same_estimates(res, ref)


def test_states_beyond_the_memory_budget_are_not_kept(case, monkeypatch):
    model, prompt, response = case
    from probattr_monitor.engine import stages

    monkeypatch.setattr(stages, "KEPT_STATES_SHARE", 0.0)  # no room for any kept state
    res = attribute(model, prompt, response, candidates=STAGED)
    monkeypatch.undo()
    ref = attribute(model, prompt, response, candidates=STAGED)
    assert np.all(res.info["reused_token_forwards"] == 0)
    assert res.info["token_forwards"] - ref.info["token_forwards"] == int(ref.info["reused_token_forwards"].sum())
    _assert_same_estimates(res, ref)


def test_reuse_states_must_be_a_bool():
    with pytest.raises(TypeError, match="reuse_states must be True or False"):
        Budget(reuse_states="yes")
    assert Budget().reuse_states is True


def test_resumed_rows_benchmark_times_both_settings_on_the_same_position_and_bounds_the_ratio():
    from benchmarks.resumed_rows import SETTINGS, ratio_interval, timed

    model = tiny_llama(VOCAB, seed=0)
    prompt, response = _pair(3)
    resumed = timed(model, prompt, response, 2, dataclasses.replace(SETTINGS["resumed"], **_small()))
    whole = timed(model, prompt, response, 2, dataclasses.replace(SETTINGS["whole"], **_small()))
    assert resumed[0] > 0 and whole[0] > 0
    assert resumed[1] < whole[1]  # the screen's and refine stage's rows are resumed, not fed again
    assert resumed[2] == pytest.approx(whole[2], abs=1e-5)
    w, r = np.array([10.0, 20.0, 30.0]), np.array([8.0, 19.0, 25.0])
    point, low, high = ratio_interval(w, r, seeds=2_000)
    assert point == pytest.approx(60.0 / 52.0)
    assert min(w / r) <= low <= point <= high <= max(w / r)


def _small() -> dict:
    """STAGED's sizes: screen, refine and sample a tail on a 150-id vocabulary."""
    return {f.name: getattr(STAGED, f.name) for f in dataclasses.fields(STAGED) if f.name != "reuse_states"}
