"""Design-based estimation of pooled rates: oracles by enumeration and by simulation."""

import itertools
import math

import numpy as np
import pytest

from probattr_monitor.report.sampling import (
    ht_mean,
    ht_variance,
    inclusion_probabilities,
    poisson_sample,
    sample_size_for,
)


def _enumerate(y, pi):
    """Every Poisson sample of a tiny population with its probability (brute-force oracle)."""
    n = len(y)
    for mask in itertools.product([False, True], repeat=n):
        m = np.array(mask)
        prob = float(np.prod(np.where(m, pi, 1 - pi)))
        yield m, prob


def test_ht_mean_and_variance_estimator_unbiased_by_enumeration():
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0.0])
    pi = np.array([0.9, 0.2, 0.5, 0.3, 0.7, 0.4, 0.6, 0.25])
    mean_e = var_e = sq_e = 0.0
    for m, prob in _enumerate(y, pi):
        est = ht_mean(y[m], pi[m], len(y))
        mean_e += prob * est.value
        var_e += prob * est.se ** 2
        sq_e += prob * est.value ** 2
    assert mean_e == pytest.approx(y.mean(), abs=1e-12)
    true_var = sq_e - mean_e ** 2
    assert true_var == pytest.approx(ht_variance(y, pi), abs=1e-12)
    assert var_e == pytest.approx(true_var, abs=1e-12)


def test_ci_coverage_by_simulation_on_a_synthetic_population():
    rng = np.random.default_rng(1)
    n = 2000
    entropy = rng.gamma(2.0, 1.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(entropy - 1.5)))).astype(float)  # flag depends on entropy
    weights = np.where(entropy > np.median(entropy), 1.0, 2.0)  # strata from a cheap quantity
    pi = inclusion_probabilities(n, 300, weights)
    truth = y.mean()
    covered = 0
    seeds = 1000
    for s in range(seeds):
        m = poisson_sample(pi, s)
        est = ht_mean(y[m], pi[m], n)
        covered += est.ci_low <= truth <= est.ci_high
    assert 0.93 <= covered / seeds <= 0.97


def test_inclusion_probabilities_sum_and_cap():
    pi = inclusion_probabilities(5, 3, [10, 1, 1, 1, 1])
    assert pi.sum() == pytest.approx(3)
    assert pi[0] == 1.0 and np.allclose(pi[1:], 0.5)
    assert np.allclose(inclusion_probabilities(4, 2), 0.5)


@pytest.mark.parametrize("args, match", [
    ((0, 1), "positive integer"),
    ((4, 0), "expected_sampled"),
    ((4, 5), "expected_sampled"),
    ((4, 2, [1, 1]), "4 entries"),
    ((4, 2, [1, -1, 1, 1]), "non-negative"),
    ((4, 3, [1, 1, 0, 0]), "positive weights"),
])
def test_inclusion_probabilities_reject_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        inclusion_probabilities(*args)


def test_poisson_sample_deterministic_for_a_seed():
    pi = np.full(500, 0.3)
    a, b, c = poisson_sample(pi, 7), poisson_sample(pi, 7), poisson_sample(pi, 8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    state = np.random.get_state()[1].copy()
    poisson_sample(pi, 7)
    assert np.array_equal(state, np.random.get_state()[1])


def test_ht_mean_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        ht_mean([1, 0], [0.5], 10)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ht_mean([1], [0.0], 10)
    with pytest.raises(ValueError, match="smaller"):
        ht_mean([1, 1], [1, 1], 1)


def test_sample_size_for_rate_precision():
    # 0.01 half-width on a rate near 0.6 needs ~9,220 positions from an infinite population;
    # from 950 positions it needs nearly all of them.
    assert sample_size_for(0.6, 0.01, 10 ** 9) == math.ceil(1.959963984540054 ** 2 * 0.24 / 1e-4)
    assert sample_size_for(0.6, 0.01, 950) > 860


def test_replay_of_a_share_of_positions_reports_error_and_coverage():
    from benchmarks.sampled_rates import replay_noise_rate

    rng = np.random.default_rng(0)
    flags = rng.random(950) < 0.6
    full = replay_noise_rate(flags, 1.0, seeds=5)
    assert full.p95_abs_error == 0.0 and full.mean_sampled == 950
    tenth = replay_noise_rate(flags, 0.1, seeds=400)
    # SRS floor at n = 95 of 950: SE ~ sqrt(p(1-p)/95 * 0.9) ~ 0.048, p95 |error| ~ 0.09
    assert 0.07 < tenth.p95_abs_error < 0.12
    assert 0.90 <= tenth.coverage <= 0.98
    assert tenth.positions_needed_for_001 > 850


def test_hajek_mean_bias_small_by_enumeration_and_coverage_by_simulation():
    from probattr_monitor.report.sampling import hajek_mean

    y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1.0])
    pi = np.full(10, 0.6)
    expect = total = 0.0
    for m, prob in _enumerate(y, pi):
        if m.any():
            expect += prob * hajek_mean(y[m], pi[m]).value
            total += prob
    assert abs(expect / total - y.mean()) < 1e-12  # equal pi: conditionally unbiased given n >= 1
    rng = np.random.default_rng(3)
    pop = (rng.random(950) < 0.6).astype(float)
    pis = inclusion_probabilities(950, 95)
    covered = 0
    for s in range(1000):
        m = poisson_sample(pis, s)
        est = hajek_mean(pop[m], pis[m])
        covered += est.ci_low <= pop.mean() <= est.ci_high
    assert 0.92 <= covered / 1000 <= 0.97
    with pytest.raises(ValueError, match="empty"):
        hajek_mean([], [])


def test_monitor_cost_replays_a_saved_report_side_by_side(tmp_path, capsys):
    from benchmarks.monitor_cost import main
    from helpers.lit import PROBES, word_tokenizer
    from helpers.models import one_layer_gpt2
    from helpers.probes import scoring_config, write_probes
    from probattr_monitor.probes import load_probe_set
    from probattr_monitor.scoring import score_probe_set

    tok = word_tokenizer()
    probes = load_probe_set(write_probes(tmp_path / "probes.jsonl", PROBES))
    report = score_probe_set(one_layer_gpt2(len(tok), seed=0), tok, probes, scoring_config(), step=1)
    report.save(tmp_path / "rep")
    main(["--replay-report", str(tmp_path / "rep"), "--share", "0.5", "--seeds", "50"])
    out = capsys.readouterr().out
    n = int((~report.table["excluded"].astype(bool)).sum())
    rate = report.table[~report.table["excluded"].astype(bool)]["noise"].astype(bool).mean()
    assert f"{n} scored positions, noise rate {rate:.4f}" in out
    assert "Poisson sample, Hajek" in out and "today (every position)" in out
