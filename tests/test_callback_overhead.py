"""benchmarks/callback_overhead.py: both examples trained with and without their callback (tiny sizes).

The benchmark's figures are timings (not asserted here); what is asserted is
what makes them comparable: the two runs of a pair train the same number of
steps, the callback scored on the example's schedule, and its own time is
accounted per scoring.
"""

from __future__ import annotations

import pytest

from benchmarks.callback_overhead import hf_overhead, lightning_overhead

pytestmark = pytest.mark.usefixtures("one_thread")


def _check(res: dict, scorings: int) -> None:
    assert res["n_scorings"] == scorings
    assert res["seconds_with"] > 0 and res["seconds_without"] > 0
    assert 0 < res["callback_seconds"] < res["seconds_with"]
    assert res["accounted_share"] == pytest.approx(res["callback_seconds"] / res["seconds_with"])
    assert res["score_s_per_scoring"] > 0 and res["log_s_per_scoring"] >= 0
    assert [s for s, _ in res["noise_rate"]] and all(0 <= v <= 1 for _, v in res["noise_rate"])
    assert res["scoring_token_forwards"] > 0 and res["training_tokens"] > 0
    assert res["work_ratio"] == pytest.approx(res["scoring_token_forwards"] / (3 * res["training_tokens"]))


def test_hf_pair_trains_the_same_steps_and_scores_at_every_evaluation(tmp_path):
    default, every = hf_overhead(max_steps=4, eval_steps=2, batch_size=4, use_wandb=False, workdir=tmp_path,
                                 attribution_every=("auto", 1))
    for res in (default, every):
        assert res["framework"] == "hf" and res["steps"] == 4
        _check(res, scorings=2)
        assert res["training_tokens"] == 4 * 4 * 64  # steps x batch x block
        assert res["seconds_without"] == default["seconds_without"]  # one run without, shared
    assert default["scopes"] == ["attribution", "prefix"] and every["scopes"] == ["attribution", "attribution"]
    assert [s for s, _ in default["noise_rate"]] == [2] and [s for s, _ in every["noise_rate"]] == [2, 4]
    # the same weights at each step: the gate scoring reads the attribution scoring's gate value
    assert [s for s, _ in default["gate"]] == [2, 4]
    for (_, a), (_, b) in zip(default["gate"], every["gate"]):
        assert a == pytest.approx(b, abs=1e-6)
    gate_forwards = default["per_scope"]["prefix"]["token_forwards"]
    assert 0 < 50 * gate_forwards < every["per_scope"]["attribution"]["token_forwards"] / 2


def test_lightning_pair_scores_once_per_epoch(tmp_path):
    (res,) = lightning_overhead(epochs=1, n_train=128, use_wandb=False, workdir=tmp_path)
    assert res["framework"] == "lightning" and res["epochs"] == 1
    _check(res, scorings=1)
