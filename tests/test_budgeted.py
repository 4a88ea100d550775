"""The budgeted estimator (issue 5): exactness at full budget, convergence, error bars, determinism.

Exact scoring over the same candidate set (``attribute(..., candidates=...)``,
itself checked against a brute-force oracle in ``test_engine_oracle.py``) is
the reference throughout. Models are the tiny random ones of
``helpers/models.py`` with vocabularies of 60-160 ids, so exact scoring is cheap.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from helpers.models import TINY_MODELS, tiny_gpt2, tiny_llama

from probattr_monitor import Budget, attribute  # noqa: E402
from probattr_monitor.engine.budgeted import attribute_budgeted  # noqa: E402
from probattr_monitor.engine.passes import candidate_scores, full_pass as _full_pass  # noqa: E402
from probattr_monitor.engine.stages import StagedRows  # noqa: E402
from probattr_monitor.engine.tail import STDERR_FIELDS  # noqa: E402
from probattr_monitor.engine.modes import scoring_mode  # noqa: E402
from probattr_monitor.engine.result import SCORE_FIELDS
from probattr_monitor.engine.runner import ModelRunner  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(vocab: int, seed: int = 0, n: int = 9, m: int = 3):
    rng = np.random.default_rng(seed)
    return [0] + [int(t) for t in rng.integers(1, vocab, n - 1)], [int(t) for t in rng.integers(1, vocab, m)]


@pytest.fixture(scope="module")
def gpt2_case(one_thread):
    vocab = 120
    model = tiny_gpt2(vocab, 3)
    prompt, response = _pair(vocab, 1)
    exact = attribute(model, prompt, response)
    return model, prompt, response, exact, vocab


def _assert_same(res, ref, atol=1e-9):
    np.testing.assert_array_equal(res.positions, ref.positions)
    for name in SCORE_FIELDS:
        np.testing.assert_allclose(getattr(res, name), getattr(ref, name), atol=atol, rtol=0, err_msg=name)


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"max_candidates": 0}, ValueError, "max_candidates must be at least 1"),
        ({"max_candidates": -3}, ValueError, "max_candidates"),
        ({"max_candidates": 2.5}, TypeError, "max_candidates"),
        ({"max_candidates": True}, TypeError, "max_candidates"),
        ({"tail_samples": -1}, ValueError, "tail_samples must be >= 0"),
        ({"tail_samples": "8"}, TypeError, "tail_samples"),
        ({"nucleus": 1.5}, ValueError, "nucleus"),
        ({"nucleus": -0.1}, ValueError, "nucleus"),
        ({"nucleus": "0.9"}, TypeError, "nucleus"),
        ({"screen": -5}, ValueError, "screen"),
        ({"screen": 1.5}, TypeError, "screen"),
        ({"refine": -1}, ValueError, "refine"),
        ({"refine": 2.0}, TypeError, "refine"),
        ({"refine_depth": 0.0}, ValueError, "refine_depth"),
        ({"refine_depth": 1.5}, ValueError, "refine_depth"),
        ({"refine_depth": "half"}, TypeError, "refine_depth"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 0.5}, TypeError, "seed"),
        ({"universe": []}, ValueError, "universe is empty"),
        ({"universe": [3, 4, 3]}, ValueError, "duplicate"),
        ({"universe": [1, -2]}, ValueError, "negative"),
        ({"universe": "some"}, ValueError, "universe"),
        ({"universe": [1.0, 2.0]}, TypeError, "universe"),
    ],
)
def test_nonsense_budgets_are_rejected_with_clear_errors(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        Budget(**kwargs)


def test_budget_defaults_and_normalisation():
    b = Budget()
    assert (b.max_candidates, b.tail_samples, b.nucleus, b.screen, b.refine, b.refine_depth, b.seed, b.universe) == (
        32, 32, 0.9, 1024, 256, 0.25, 0, None)
    assert Budget(universe=[5, 2, 9]).universe == (2, 5, 9)
    assert Budget(universe="all").universe is None
    assert Budget(universe=np.array([4, 1])).universe == (1, 4)
    assert Budget(screen=False).screen_size == 0 and Budget(screen=7).screen_size == 7
    assert Budget(screen=True).screen_size is None and Budget().screen_size == 1024
    hash(Budget(universe=[1, 2]))  # frozen and hashable
    with pytest.raises(dataclasses.FrozenInstanceError):
        Budget().seed = 3


def test_universe_outside_the_vocabulary_is_named(gpt2_case):
    model, prompt, response, _, vocab = gpt2_case
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        attribute(model, prompt, response, candidates=Budget(universe=[1, vocab + 5]))


def test_bad_inputs_still_checked_on_the_budgeted_path(gpt2_case):
    model, prompt, response, _, _ = gpt2_case
    with pytest.raises(ValueError, match="position"):
        attribute(model, prompt, response, candidates=Budget(), positions=[0])
    with pytest.raises(TypeError, match="budget must be a Budget"):
        attribute_budgeted(model, prompt, response, budget={"max_candidates": 3})


# ---------------------------------------------------------------------- exact at full budget
@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_full_budget_equals_exact(name):
    vocab = 70
    model = TINY_MODELS[name](vocab, 5)
    prompt, response = _pair(vocab, 2, n=7)
    exact = attribute(model, prompt, response)
    # every candidate in the exact set
    all_exact = attribute(model, prompt, response, candidates=Budget(max_candidates=vocab))
    _assert_same(all_exact, exact)
    # few exact candidates, the tail enumerated by the sampler
    all_tail = attribute(model, prompt, response, candidates=Budget(max_candidates=2, tail_samples=vocab))
    _assert_same(all_tail, exact)
    for res in (all_exact, all_tail):
        assert res.info["method"] == "budgeted"
        assert all(np.all(res.stderr[f] == 0) for f in STDERR_FIELDS)
        assert np.all(res.info["exact_sums"]) and np.allclose(res.info["prior_mass_covered"], 1.0)
        assert res.num_candidates == vocab
        np.testing.assert_array_equal(res.top_prior_ids, exact.top_prior_ids)
        np.testing.assert_array_equal(res.top_posterior_ids, exact.top_posterior_ids)


def test_full_budget_over_a_universe_equals_exact_over_it(gpt2_case):
    model, prompt, response, _, vocab = gpt2_case
    universe = list(range(0, vocab, 3))
    exact = attribute(model, prompt, response, candidates=universe)
    budget = Budget(max_candidates=5, tail_samples=len(universe), universe=universe)
    est = attribute(model, prompt, response, candidates=budget)
    _assert_same(est, exact)
    assert est.num_candidates == exact.num_candidates
    assert est.info["num_candidates_per_position"] == exact.info["num_candidates_per_position"]
    assert set(est.info["num_candidates_per_position"]) <= {len(universe), len(universe) + 1}


# ---------------------------------------------------------------------- convergence and error bars
def _errors(model, prompt, response, exact, budget, seeds):
    errs, ses = [], []
    for seed in seeds:
        res = attribute(model, prompt, response, candidates=dataclasses.replace(budget, seed=seed))
        errs.append(np.abs(res.attribution - exact.attribution))
        ses.append(res.stderr["attribution"])
    return np.array(errs), np.array(ses)


def test_estimates_converge_to_exact_as_the_budget_grows(gpt2_case):
    model, prompt, response, exact, vocab = gpt2_case
    means = []
    for tail in (4, 24, 80, vocab):
        errs, _ = _errors(model, prompt, response, exact, Budget(max_candidates=8, tail_samples=tail), range(4))
        means.append(errs.mean())
    assert means[0] > means[1] > means[2] > means[3]
    assert means[3] < 1e-9  # whole vocabulary: exact
    assert means[2] < 0.25 * means[0]


def test_standard_errors_shrink_with_more_tail_samples(gpt2_case):
    model, prompt, response, _, _ = gpt2_case
    mean_se = {}
    for tail in (4, 16, 64):
        res = [attribute(model, prompt, response, candidates=Budget(max_candidates=8, tail_samples=tail, seed=s))
               for s in range(3)]
        mean_se[tail] = {f: np.mean([r.stderr[f] for r in res]) for f in STDERR_FIELDS}
    for f in STDERR_FIELDS:
        assert mean_se[4][f] > mean_se[16][f] > mean_se[64][f] > 0, f


def test_standard_errors_are_roughly_honest(gpt2_case):
    model, prompt, response, exact, _ = gpt2_case
    errs, ses = _errors(model, prompt, response, exact, Budget(max_candidates=8, tail_samples=24), range(6))
    assert np.mean(errs <= 2 * ses) >= 0.8
    assert np.all(errs <= 6 * ses + 1e-6)


def test_no_tail_samples_gives_unknown_error():
    vocab = 60
    model = tiny_gpt2(vocab, 4)
    prompt, response = _pair(vocab, 3, n=5)
    res = attribute(model, prompt, response, candidates=Budget(max_candidates=6, tail_samples=0, screen=False))
    assert all(np.isnan(res.stderr[f]).all() for f in STDERR_FIELDS)
    assert np.isfinite(res.attribution).all()
    assert np.all(res.info["num_sampled"] == 0) and np.all(res.info["num_exact"] == 6)


# ---------------------------------------------------------------------- determinism and cost
def test_deterministic_for_a_seed(gpt2_case):
    model, prompt, response, _, _ = gpt2_case
    b = Budget(max_candidates=6, tail_samples=10, seed=11)
    r1 = attribute(model, prompt, response, candidates=b)
    again = attribute(model, prompt, response, candidates=b)
    for name in SCORE_FIELDS:
        np.testing.assert_array_equal(getattr(r1, name), getattr(again, name))
        np.testing.assert_array_equal(r1.stderr[name], again.stderr[name])
    # other batch sizes change float32 rounding only, not the draw
    r2 = attribute(model, prompt, response, candidates=b, batch_size=3)
    for name in SCORE_FIELDS:
        np.testing.assert_allclose(getattr(r1, name), getattr(r2, name), atol=1e-5, rtol=0)
        np.testing.assert_allclose(r1.stderr[name], r2.stderr[name], atol=1e-5, rtol=1e-4)
    assert r1.info["num_sampled"].tolist() == r2.info["num_sampled"].tolist()
    r3 = attribute(model, prompt, response, candidates=dataclasses.replace(b, seed=12))
    assert not np.allclose(r1.attribution, r3.attribution, atol=1e-12, rtol=0)
    # a position's estimate does not depend on which other positions are scored
    sub = attribute(model, prompt, response, candidates=b, positions=[2, 5])
    np.testing.assert_allclose(sub.attribution, r1.attribution[[1, 4]], atol=1e-9, rtol=0)


def test_global_rng_untouched(gpt2_case):
    model, prompt, response, _, _ = gpt2_case
    np.random.seed(5)
    torch.manual_seed(5)
    attribute(model, prompt, response, candidates=Budget(max_candidates=4, tail_samples=8))
    a, t = np.random.random(), torch.rand(1).item()
    np.random.seed(5)
    torch.manual_seed(5)
    assert (np.random.random(), torch.rand(1).item()) == (a, t)


@pytest.mark.parametrize("screen, refine", [(True, 0), (20, 0), (False, 0), (True, 12), (False, 12)])
def test_cost_accounting(gpt2_case, screen, refine):
    model, prompt, response, exact, vocab = gpt2_case
    b = Budget(max_candidates=6, tail_samples=10, screen=screen, refine=refine, refine_depth=0.5)
    res = attribute(model, prompt, response, candidates=b)
    length = len(prompt) + len(response)
    screened = {True: vocab, 20: 20, False: 0}[screen]
    assert np.all(res.info["num_screened"] == screened)
    suffix = length - res.positions - 1
    depth = np.maximum(2, np.ceil(0.5 * suffix)).astype(int)
    if refine:
        # refined where a half-suffix read is shorter than the whole suffix; 12 ids = MIN_REFINE cut to refine
        np.testing.assert_array_equal(res.info["num_refined"], np.where(depth < suffix, refine, 0))
        np.testing.assert_array_equal(res.info["refine_depth"], np.where(depth < suffix, depth, 0))
        assert res.info["num_refined"].sum() > 0
    else:
        assert np.all(res.info["num_refined"] == 0)
    screen_cost = sum(screened + r * d for r, d in zip(res.info["num_refined"], res.info["refine_depth"]))
    # rows resumed from an earlier stage's states (test_stages.py): a refined id that was screened
    # resumes after its first token
    refine_reuse = int(res.info["num_refined"].sum()) if screened else 0
    expected = length + screen_cost + sum(
        (e + s) * t for t, e, s in zip(suffix, res.info["num_exact"], res.info["num_sampled"])
    ) - int(res.info["reused_token_forwards"].sum())
    assert res.info["token_forwards"] == expected
    assert res.info["screen_token_forwards"] == screen_cost - refine_reuse
    assert res.info["exact_token_forwards"] == exact.info["token_forwards"]
    assert np.all(res.info["num_exact"] == 6) and np.all(res.info["num_sampled"] == 10)
    cov = res.info["prior_mass_covered"]
    assert cov.shape == res.positions.shape and np.all((cov > 0) & (cov <= 1))
    post = res.info["posterior_mass_covered"]
    assert np.all((post > 0) & (post <= 1))


def test_screen_and_refine_sizes_follow_the_mass():
    """A screen covers SCREEN_MASS of the prior (within its bounds); the refine stage likewise."""
    from probattr_monitor.engine import screening as bud

    peaked = np.log(np.r_[0.9995, np.full(999, 0.0005 / 999)])
    assert bud._mass_count(peaked, 0.999, 1, 1000) == 1
    assert bud._mass_count(peaked, 0.999, 64, 1000) == 64  # never below the floor
    flat = np.zeros(1000)
    assert bud._mass_count(flat, 0.999, 64, 1000) == 999
    assert bud._mass_count(flat, 0.999, 64, 256) == 256  # nor above the cap
    vocab = 400
    model = tiny_gpt2(vocab, 6)
    prompt, response = _pair(vocab, 6, n=6)
    res = attribute(model, prompt, response, candidates=Budget(max_candidates=4, tail_samples=4, screen=300,
                                                               refine=100))
    assert np.all((res.info["num_screened"] >= bud.MIN_SCREEN) & (res.info["num_screened"] <= 300))
    refined = res.info["num_refined"][res.info["num_refined"] > 0]
    assert len(refined) and np.all((refined >= bud.MIN_REFINE) & (refined <= 100))


def test_exact_set_of_one_is_the_original_token():
    vocab = 80
    model = tiny_llama(vocab, 2)
    prompt, response = _pair(vocab, 4, n=6)
    res = attribute(model, prompt, response, candidates=Budget(max_candidates=1, tail_samples=0))
    # only the original token: p_k and p'_k put all mass on it, AS = 0 (up to float32 rounding)
    np.testing.assert_allclose(res.attribution, 0.0, atol=1e-5)
    np.testing.assert_array_equal(res.top_prior_ids[:, 0], res.token_ids)
    np.testing.assert_allclose(res.entropy_full, 0.0, atol=1e-12)
    np.testing.assert_allclose(res.info["posterior_mass_covered"], 1.0)


def test_tail_regression_never_makes_a_tail_mass_negative():
    # Sampled tail terms, and controls whose known total is far from what the
    # sample suggests: the regression correction drives the tail sums of D and
    # N below zero while D and N themselves stay positive. The estimate must
    # fall back to Horvitz-Thompson, whose tail is a sum of positive terms.
    from probattr_monitor.engine import tail as bud

    rng = np.random.default_rng(0)
    n = 20
    fixed = np.array([100.0, 100.0, -50.0, -50.0, 10.0])
    x = rng.uniform(0.5, 1.0, size=(n, 4))
    y = 2.0 - x[:, 1]                                    # tail terms fall as the second control grows
    fr = np.stack([y, y, -y, -y, 0.01 * y], axis=1) * 0.1
    inv_p = np.full(n, 10.0)
    sample_total = (x * inv_p[:, None]).sum(axis=0)
    x_total = sample_total * np.array([1.0, 5.0, 1.0, 1.0])   # a "known" total far off the sample's
    t_ht = fixed + (fr * inv_p[:, None]).sum(axis=0)
    fit_w = inv_p / x[:, 0]                               # the estimator's weighted fit, unguarded
    coef = np.linalg.solve((x * fit_w[:, None]).T @ x, (x * fit_w[:, None]).T @ fr)
    t_unguarded = t_ht + (x_total - sample_total) @ coef
    assert 0 < t_unguarded[0] < fixed[0] and 0 < t_unguarded[1] < fixed[1]
    t = bud._tail_totals(fixed, fr, inv_p, x, x_total)
    np.testing.assert_array_equal(t, t_ht)
    # with consistent control totals the regression is used (and differs from HT)
    t_greg = bud._tail_totals(fixed, fr, inv_p, x, sample_total * 1.05)
    assert t_greg[0] > fixed[0] and not np.array_equal(t_greg, t_ht)


# ---------------------------------------------------------------------- screening
@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_screens_are_the_first_suffix_steps_and_upper_bounds(name):
    """The one-token screen and a deeper refine read are sums of the first suffix log-probs, bounding a and b."""
    vocab = 50
    model = TINY_MODELS[name](vocab, 7)
    prompt, response = _pair(vocab, 5, n=6)
    k = 2
    ids = np.arange(vocab, dtype=np.int64)
    with scoring_mode(model):
        runner = ModelRunner(model, 64 * 2**20)
        full = _full_pass(runner, prompt, response)
        rest = prompt[k + 1 :] + response
        rows = StagedRows(runner, full, prompt[:k], rest, 16)  # the stages' reads (the refine resumes the screen's)
        screen = rows.log_probs(ids, 1, keep=True).sum(axis=1)
        deep = rows.log_probs(ids, 3, keep=True).sum(axis=1)
        lp = runner.suffix_log_probs(full, prompt[:k], torch.from_numpy(ids), rest).numpy()
        a, b = candidate_scores(runner, full, prompt, response, k, ids, None)
    np.testing.assert_allclose(screen, lp[:, 0], atol=1e-5)
    np.testing.assert_allclose(deep, lp[:, :3].sum(axis=1), atol=1e-5)
    prior = full.log_probs[k - 1].numpy()
    assert np.all(a <= prior + deep + 1e-5) and np.all(prior + deep <= prior + screen + 1e-5)
    assert np.all(b <= a + 1e-9)


# ---------------------------------------------------------------------- real model
@pytest.mark.slow
def test_smollm2_budgeted_close_to_exact_over_a_universe():
    """SmolLM2 over a 256-id universe: the estimate at ~1/4 of the cost is close to exact."""
    pytest.importorskip("gguf")
    from probattr_monitor.engine.text import encode_prompt
    from probattr_monitor.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("smollm2")
    prompt = encode_prompt(tok, "The cat sat on the mat because it was tired.")
    response = tok(" It slept.", add_special_tokens=False)["input_ids"]
    universe = sorted(set(range(0, 49_152, 193)) | set(prompt))
    positions = [2, len(prompt) - 2]
    exact = attribute(model, prompt, response, candidates=universe, positions=positions)
    est = attribute(model, prompt, response, positions=positions,
                    candidates=Budget(max_candidates=16, tail_samples=32, screen=64, refine=32, universe=universe))
    assert est.info["token_forwards"] * 3 < exact.info["token_forwards"]
    assert est.info["exact_token_forwards"] == exact.info["token_forwards"]
    err = np.abs(est.attribution - exact.attribution)
    assert np.all(err < 0.1) and np.all(err <= 4 * est.stderr["attribution"] + 1e-6)
    assert est.info["path"] == "cache+head"
