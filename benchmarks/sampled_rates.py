"""Replay Poisson sampling of positions on a fully scored per-token table (benchmark helper).

Given a report scored with today's default (every position of every probe), the
noise rate a sampled scoring would report is replayed over seeds: a seeded
Poisson sample of the table's positions at a given share, the Hájek
rate and its CI (:mod:`probattr_monitor.report.sampling`). The replay is exact
for the sampling lever alone: the budgeted estimator seeds position ``k`` from
``[seed, k]`` and its result does not depend on which other positions are
scored, so a sampled position gets the same flag as in the full table. It does
not replay a change of the per-position estimator (screen, refine, sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probattr_monitor.report.sampling import hajek_mean, inclusion_probabilities, poisson_sample, sample_size_for


@dataclass(frozen=True)
class ReplaySummary:
    """How a sampled noise rate compares with the full table's over seeds."""

    share: float
    positions: int
    full_rate: float
    p95_abs_error: float
    mean_sampled: float
    coverage: float
    positions_needed_for_001: int


def replay_noise_rate(noise: np.ndarray, share: float, seeds: int = 200, seed0: int = 0,
                      weights: np.ndarray | None = None) -> ReplaySummary:
    """Replay a ``share`` Poisson sample of the flags ``noise`` (one per scored position) ``seeds`` times."""
    y = np.asarray(noise, dtype=float)
    n = y.size
    pi = inclusion_probabilities(n, share * n, weights)
    truth = float(y.mean())
    errs, covered, sizes = [], 0, []
    for s in range(seed0, seed0 + seeds):
        m = poisson_sample(pi, s)
        est = hajek_mean(y[m], pi[m])
        errs.append(abs(est.value - truth))
        covered += est.ci_low <= truth <= est.ci_high
        sizes.append(int(m.sum()))
    return ReplaySummary(share, n, truth, float(np.quantile(errs, 0.95)), float(np.mean(sizes)),
                         covered / seeds, sample_size_for(truth, 0.01, n) if 0 < truth < 1 else 0)
