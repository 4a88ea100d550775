"""The budgeted estimator over SmolLM2's whole vocabulary, replayed from stored fixtures (issue 13).

``tests/fixtures/full_vocab/`` holds positions of SmolLM2 scored exactly over
all 49,152 ids by ``benchmarks/full_vocab.py`` (hours of CPU to make, seconds
to replay). The first tests check on a tiny model that a fixture replays the
product's estimator exactly as a real run does; the last replays ``Budget()``
on the stored SmolLM2 positions and holds it to the issue's targets.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks.full_vocab import (FIXTURE_DIR, check, choose, head_depth, load_fixture, load_fixtures, replay,
                                   save_fixture, score_position)
from helpers.models import tiny_gpt2
from probattr_monitor import Budget, attribute

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT, RESPONSE, K = [1, 5, 9, 12, 3, 40, 77], [7, 8, 150], 4
SMALL = Budget(max_candidates=4, tail_samples=6, screen=40, refine=12)  # well below a 200-id vocabulary


@pytest.fixture(scope="module")
def scored(one_thread, tmp_path_factory):
    model = tiny_gpt2(200, 0)
    fx = score_position(model, PROMPT, RESPONSE, K, "toy", model_name="tiny")
    path = tmp_path_factory.mktemp("fv") / "position-00.npz"
    save_fixture(fx, path)
    return model, fx, load_fixture(path)


def test_a_fixture_holds_exact_scoring_over_the_whole_vocabulary(scored):
    model, fx, loaded = scored
    exact = attribute(model, PROMPT, RESPONSE, candidates="all", positions=[K])
    st = loaded.exact()
    assert loaded.vocab_size == 200 and loaded.suffix_len == len(PROMPT) + len(RESPONSE) - K - 1
    assert st.attribution == pytest.approx(exact.attribution[0], abs=1e-4)  # float32 storage
    assert st.entropy_full == pytest.approx(exact.entropy_full[0], abs=1e-4)
    assert loaded.head.shape == (200, head_depth(loaded.suffix_len))
    assert loaded.exact_token_forwards == 200 * loaded.suffix_len + len(PROMPT) + len(RESPONSE)
    for name in ("prior", "a", "b", "head"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fx, name))
    assert (loaded.probe, loaded.position, loaded.prompt, loaded.response) == ("toy", K, tuple(PROMPT),
                                                                                 tuple(RESPONSE))


@pytest.mark.parametrize("seed", [0, 3])
def test_the_replay_is_the_estimator_a_real_run_computes(scored, seed):
    model, _, fx = scored
    budget = dataclasses.replace(SMALL, seed=seed)
    real = attribute(model, PROMPT, RESPONSE, candidates=budget, positions=[K])
    st, se, extra, cost = replay(fx, budget)
    assert extra["num_exact"] + extra["num_sampled"] < 200  # really budgeted
    assert st.attribution == pytest.approx(real.attribution[0], abs=1e-4)
    assert st.entropy_full == pytest.approx(real.entropy_full[0], abs=1e-4)
    assert se[0] == pytest.approx(real.stderr["attribution"][0], rel=1e-3, abs=1e-6)
    assert cost == real.info["token_forwards"] - len(PROMPT) - len(RESPONSE)  # the full pass is not counted


def test_a_budget_reading_deeper_than_stored_is_refused(scored):
    _, _, fx = scored
    with pytest.raises(ValueError, match="stores"):
        replay(fx, dataclasses.replace(SMALL, refine_depth=1.0 / fx.suffix_len * (fx.head.shape[1] + 1)))


def test_check_reports_errors_against_exact_and_zero_where_the_budget_covers_everything(scored):
    _, _, fx = scored
    full = check([fx], Budget(max_candidates=100, tail_samples=100), seeds=2)
    assert full["abs_dAS_max"] < 1e-9 and full["noise_flag_agreement"] == 1.0
    small = check([fx], SMALL, seeds=3)
    assert small["token_forwards_per_position"] < small["exact_token_forwards_per_position"]
    with pytest.raises(ValueError, match="no full-vocabulary fixtures"):
        check([], SMALL)


def test_the_variant_table_replays_every_budget_in_order(scored):
    from benchmarks.full_vocab import VARIANTS, variant_table

    _, _, fx = scored
    rows = variant_table([fx], seeds=1)
    assert [r["budget"] for r in rows] == list(VARIANTS)
    # no screen and no refine is the cheapest of the first four (same exact and sampled sizes)
    cost = {r["budget"]: r["token_forwards_per_position"] for r in rows}
    assert cost["no screen, no refine"] < cost["screen 256, no refine"] <= cost["no refine"] < cost["Budget() (default)"]


def test_positions_are_spread_over_the_probes_and_late():
    picks = choose(38, 12)
    assert len(picks) == 12 and len({p for p, _ in picks}) == 12 and {o for _, o in picks} == {0, 1}
    assert len(choose(3, 7)) == 7


def test_budget_meets_the_targets_over_the_whole_smollm2_vocabulary():
    fixtures = load_fixtures(FIXTURE_DIR)
    assert len(fixtures) >= 12, f"expected the stored SmolLM2 fixtures in {FIXTURE_DIR}"
    assert all(fx.vocab_size == 49_152 for fx in fixtures)
    fig = check(fixtures, Budget(), seeds=20)
    assert fig["abs_dAS_p95"] <= 0.05
    assert fig["within_2se_AS"] >= 0.90
