"""Design-based estimation of a pooled per-position rate from a Poisson sample of positions.

Scoring every position of every probe with the budgeted estimator is what makes a
default scoring cost millions of token-forwards. A set-level rate (the noise
rate, the near-zero rate) can instead be estimated from a *Poisson sample* of
positions: position ``i`` is scored with probability ``pi_i`` (independently,
from a seeded generator), and the population mean of the 0/1 flag ``y_i`` over
all ``N`` positions is estimated by Horvitz–Thompson::

    mean_hat = (1 / N) * sum_{i sampled} y_i / pi_i

which is exactly unbiased for any ``pi_i > 0`` (``N`` is known: every position
gets the cheap full pass). Its variance under Poisson sampling and the
unbiased variance estimator are::

    Var      = (1 / N^2) * sum_{i all}     (1 - pi_i) / pi_i   * y_i^2
    Var_hat  = (1 / N^2) * sum_{i sampled} (1 - pi_i) / pi_i^2 * y_i^2

The inclusion probabilities may depend on anything known before sampling (for
instance strata of the prior entropy the full pass gives); they must not depend
on the ``y`` being estimated. Unsampled positions are absent from per-token
tables, never imputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class RateEstimate:
    """A Horvitz–Thompson estimate of a population mean with its normal CI."""

    value: float
    se: float
    ci_low: float
    ci_high: float
    sampled: int
    population: int


def inclusion_probabilities(n_positions: int, expected_sampled: float,
                            weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """Inclusion probabilities summing to ``expected_sampled`` (capped at 1).

    Parameters
    ----------
    n_positions : int
        Population size ``N`` (at least 1).
    expected_sampled : float
        Expected sample size, in ``(0, N]``.
    weights : sequence of float, optional
        Non-negative size measures known before sampling (e.g. per stratum of
        prior entropy); ``pi_i`` is proportional to them, with any ``pi_i``
        that would exceed 1 set to 1 and the rest rescaled. Default: equal.

    Raises
    ------
    ValueError
        For an empty population, an expected size outside ``(0, N]``, weights
        of the wrong length, negative or non-finite, or with fewer positive
        weights than ``expected_sampled``.
    """
    if int(n_positions) != n_positions or n_positions < 1:
        raise ValueError(f"n_positions must be a positive integer, got {n_positions}")
    if not 0 < expected_sampled <= n_positions:
        raise ValueError(f"expected_sampled must be in (0, {n_positions}], got {expected_sampled}")
    w = np.ones(n_positions) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n_positions,):
        raise ValueError(f"weights must have {n_positions} entries, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    if np.count_nonzero(w) < expected_sampled:
        raise ValueError(f"only {np.count_nonzero(w)} positive weights for an expected sample of "
                         f"{expected_sampled}")
    pi = np.zeros(n_positions)
    free = w > 0
    remaining = float(expected_sampled)
    while True:
        pi[free] = remaining * w[free] / w[free].sum()
        over = free & (pi >= 1.0)
        if not over.any():
            break
        pi[over] = 1.0
        free &= ~over
        remaining = float(expected_sampled) - float(np.count_nonzero(pi == 1.0))
        if remaining <= 0 or not free.any():
            break
    return np.clip(pi, 0.0, 1.0)


def poisson_sample(pi: Sequence[float], seed: int) -> np.ndarray:
    """Boolean mask of the positions drawn, each independently with probability ``pi_i``.

    Deterministic for a seed (``numpy.random.default_rng(seed)``); the global
    RNG is not touched.
    """
    p = np.asarray(pi, dtype=float)
    if np.any(p < 0) or np.any(p > 1):
        raise ValueError("inclusion probabilities must lie in [0, 1]")
    return np.random.default_rng(seed).random(p.shape) < p


def ht_mean(y_sampled: Sequence[float], pi_sampled: Sequence[float], n_positions: int,
            z: float = 1.959963984540054) -> RateEstimate:
    """Horvitz–Thompson mean over ``n_positions`` from the sampled values and their ``pi``.

    The CI is ``value ± z * se``, clipped to ``[0, 1]`` when every ``y`` is in
    ``[0, 1]``.

    Raises
    ------
    ValueError
        If the arrays differ in length, any ``pi`` is not in ``(0, 1]``, or the
        population is smaller than the sample.
    """
    y = np.asarray(y_sampled, dtype=float)
    p = np.asarray(pi_sampled, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"y and pi differ in shape: {y.shape} vs {p.shape}")
    if np.any(p <= 0) or np.any(p > 1):
        raise ValueError("sampled inclusion probabilities must lie in (0, 1]")
    if n_positions < y.size or n_positions < 1:
        raise ValueError(f"population of {n_positions} smaller than the sample of {y.size}")
    value = float(np.sum(y / p) / n_positions)
    var = float(np.sum((1.0 - p) / p ** 2 * y ** 2) / n_positions ** 2)
    se = math.sqrt(max(var, 0.0))
    lo, hi = value - z * se, value + z * se
    if y.size and np.all((y >= 0) & (y <= 1)):
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return RateEstimate(value, se, lo, hi, int(y.size), int(n_positions))


def ht_variance(y_all: Sequence[float], pi_all: Sequence[float]) -> float:
    """True design variance of :func:`ht_mean` over the whole population (for planning)."""
    y = np.asarray(y_all, dtype=float)
    p = np.asarray(pi_all, dtype=float)
    return float(np.sum((1.0 - p) / p * y ** 2) / y.size ** 2)


def sample_size_for(p: float, half_width: float, n_positions: int, z: float = 1.959963984540054) -> int:
    """Positions a simple random sample needs for a ``±half_width`` CI on a rate ``p``.

    With the finite-population correction: ``n0 = z^2 p (1 - p) / h^2``,
    ``n = n0 / (1 + (n0 - 1) / N)``.
    """
    n0 = z ** 2 * p * (1.0 - p) / half_width ** 2
    return int(math.ceil(n0 / (1.0 + (n0 - 1.0) / n_positions)))


def hajek_mean(y_sampled: Sequence[float], pi_sampled: Sequence[float],
               z: float = 1.959963984540054) -> RateEstimate:
    """Hájek (ratio) mean: ``sum(y / pi) / sum(1 / pi)`` with its linearised variance.

    Not exactly unbiased (the bias is of order ``1 / n``), but for a rate under
    Poisson sampling far more precise than :func:`ht_mean`, whose variance
    carries the randomness of the sample size: the linearised variance is
    ``sum (1 - pi) / pi^2 * (y - value)^2 / (sum 1 / pi)^2``, close to the simple
    random sample's ``p (1 - p) / n * (1 - n / N)`` at equal ``pi``.

    Raises
    ------
    ValueError
        For an empty sample, arrays of different lengths or ``pi`` outside ``(0, 1]``.
    """
    y = np.asarray(y_sampled, dtype=float)
    p = np.asarray(pi_sampled, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"y and pi differ in shape: {y.shape} vs {p.shape}")
    if y.size == 0:
        raise ValueError("the sample is empty: no position was drawn")
    if np.any(p <= 0) or np.any(p > 1):
        raise ValueError("sampled inclusion probabilities must lie in (0, 1]")
    n_hat = float(np.sum(1.0 / p))
    value = float(np.sum(y / p) / n_hat)
    var = float(np.sum((1.0 - p) / p ** 2 * (y - value) ** 2) / n_hat ** 2)
    se = math.sqrt(max(var, 0.0))
    lo, hi = value - z * se, value + z * se
    if np.all((y >= 0) & (y <= 1)):
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return RateEstimate(value, se, lo, hi, int(y.size), int(round(n_hat)))
