"""Tail mathematics of the budgeted estimator: sampling, estimation, standard errors.

The tail ``T`` (candidates outside the exact set) is sampled by priority
sampling (Duffield, Lund & Thorup 2007) from a proposal built on the screening
scores. Its contribution to the five sums behind every quantity of
docs/design.md section 2 (``D = sum e^a``, ``N = sum e^b``, ``sum e^a a``,
``sum e^b b``, ``sum e^b (b - a)``) is the generalised regression (GREG)
estimate: Horvitz-Thompson, corrected by controls whose tail totals are known.
Standard errors: a delete-one jackknife over the sampled ids plus two floors.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp

from probattr_monitor.engine.result import SCORE_FIELDS
from probattr_monitor.engine.stats import PositionStats, top_k

#: Weight of the prior in the tail proposal (the rest is the screening softmax).
PRIOR_MIX = 0.1

#: Standard-error floor: the tail's estimated mass is taken as uncertain by at least
#: a relative ``TAIL_FLOOR / sqrt(n)`` (``n`` = ids sampled at random), on top of the
#: jackknife. Chosen by measurement; see the README, section 'Budgeted attribution'.
TAIL_FLOOR = 1.0

#: Smallest standard error reported for an estimated quantity (nats): the
#: estimator's resolution. A tail holding little of the posterior mass is
#: under-estimated in most draws (its few large terms are usually missed),
#: which biases H and H' slightly low; errors this small have no bearing on the
#: AS classes (0.2 nats) or the noise threshold (1 nat).
SE_FLOOR_NATS = 1e-3

#: Names of the per-position standard errors (``AttributionResult.stderr``): one per score.
STDERR_FIELDS = SCORE_FIELDS


class TailQuantities(NamedTuple):
    """The quantities of one position that are functions of the five sums.

    A tuple, so that ``numpy.array(q)`` is the 6-vector the jackknife and the
    floor work on, field by field.
    """

    log_numerator: float
    log_denominator: float
    entropy_prompt: float
    entropy_full: float
    kl: float
    #: ``log D - log N``: the attribution up to the constant ``log P(y | x)``.
    log_ratio: float

    def stderr_order(self) -> np.ndarray:
        """The values in the order of :data:`STDERR_FIELDS` (the attribution's is ``log_ratio``'s)."""
        by_field = self._asdict()
        by_field["attribution"] = self.log_ratio
        return np.array([by_field[name] for name in STDERR_FIELDS])


def proposal(score: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Log proposal weights over the tail: ``(1 - PRIOR_MIX) softmax(score) + PRIOR_MIX softmax(prior)``."""
    return np.logaddexp(
        np.log1p(-PRIOR_MIX) + score - logsumexp(score),
        np.log(PRIOR_MIX) + prior - logsumexp(prior),
    )


def priority_sample(
    log_w: np.ndarray, ids: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Priority sampling of ``n`` distinct items with log weights ``log_w``.

    Each item gets the priority ``w / u`` (``u`` uniform in ``(0, 1]``); the
    ``n`` highest are drawn (ties broken by lower id), and the ``n + 1``-th
    priority ``tau`` sets each drawn item's inclusion probability
    ``min(1, w / tau)``.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Indices into ``log_w`` of the drawn items and their log inclusion
        probabilities (0 for items drawn with certainty; all of them when
        ``n >= len(log_w)``).
    """
    u = 1.0 - rng.random(len(log_w))  # (0, 1]
    log_r = log_w - np.log(u)
    order = np.lexsort((ids, -log_r))
    if n >= len(log_w):
        return order, np.zeros(len(order))
    keep = order[:n]
    log_tau = log_r[order[n]]
    return keep, np.minimum(0.0, log_w[keep] - log_tau)


def tail_estimate(cand, a, b, n_fixed, n_exact, log_incl, s_fixed, s_random, s_population, log_p_response):
    """Sums over the fixed ids + a regression estimate of the sampled tail, with standard errors.

    ``a``, ``b`` hold ``n_fixed`` ids scored with weight 1 first (the exact set,
    its first ``n_exact``, then the ids sampled with certainty), then the ids
    sampled at random with log inclusion probabilities ``log_incl`` from the
    population described by ``s_population`` (``s_fixed``, ``s_random`` for
    the scored ones). ``s_*`` are ``(screening score, log prior)`` pairs of arrays.

    Each of the five tail sums is the GREG estimate: the Horvitz-Thompson sum
    corrected by the controls ``x = (e^s, e^s s, e^prior, e^prior prior)``
    (fewer for small samples), with coefficients fitted on the sample (weights
    ``1 / (pi e^s)``; with ``e^s`` alone this is the ratio estimator).
    ``a - s`` varies little between candidates, so the controls absorb most of
    the sampling noise, including that of the priority threshold.

    Returns
    -------
    (PositionStats, numpy.ndarray, float)
        The estimates; their standard errors in the order of
        :data:`STDERR_FIELDS` (jackknife plus the floor of :func:`_floor_var`,
        at least :data:`SE_FLOOR_NATS`; NaN with fewer than two ids sampled at
        random); the estimated share of ``N`` in the exact set.
    """
    ca, cb = float(a.max()), float(b.max())
    ea, eb = np.exp(a - ca), np.exp(b - cb)
    # the five sums, per item: D, N, sum e^a a, sum e^b b, sum e^b (b - a) (shifted)
    f = np.stack([ea, eb, ea * (a - ca), eb * (b - cb), eb * (b - a)], axis=1)
    fixed, fr = f[:n_fixed].sum(axis=0), f[n_fixed:]
    inv_p = np.exp(-log_incl)
    n_r = len(fr)
    # regression controls, as many as the sample supports
    n_ctrl = 4 if n_r >= 16 else (2 if n_r >= 8 else (1 if n_r >= 3 else 0))
    xr = x_total = None
    if n_ctrl:
        cs = float(s_population[0].max())
        cp = float(s_population[1].max())

        def controls(sp):
            score, prior = sp
            x1 = np.exp(score - cs)
            x3 = np.exp(prior - cp)
            return np.stack([x1, x1 * (score - cs), x3, x3 * (prior - cp)], axis=1)[:, :n_ctrl]

        xr = controls(s_random)
        x_total = controls(s_population).sum(axis=0)
    t = _tail_totals(fixed, fr, inv_p, xr, x_total)
    q = _quantities(t, ca, cb)
    if n_r >= 2:
        var = _jackknife_var(fixed, fr, inv_p, xr, x_total, ca, cb) + _floor_var(t, fixed, n_r, ca, cb)
        se_q = TailQuantities(*np.sqrt(var))
    else:
        se_q = TailQuantities(*np.full(len(q), np.nan))
    se = np.maximum(se_q.stderr_order(), SE_FLOOR_NATS)
    prior_ids, prior_probs = top_k(cand, a - q.log_denominator)
    post_ids, post_probs = top_k(cand, b - q.log_numerator)
    st = PositionStats(
        log_numerator=float(q.log_numerator),
        log_denominator=float(q.log_denominator),
        attribution=float(log_p_response - (q.log_numerator - q.log_denominator)),
        entropy_prompt=float(q.entropy_prompt),
        entropy_full=float(q.entropy_full),
        kl=float(q.kl),
        top_prior_ids=prior_ids,
        top_prior_probs=prior_probs,
        top_posterior_ids=post_ids,
        top_posterior_probs=post_probs,
    )
    post_cov = float(min(1.0, eb[:n_exact].sum() / t[1]))
    return st, se, post_cov


def _tail_totals(fixed, fr, inv_p, xr, x_total):
    """The five sums: fixed part + GREG (or, failing that, Horvitz-Thompson) estimate of the tail."""
    t_ht = fixed + (fr * inv_p[:, None]).sum(axis=0)
    if xr is None or len(fr) <= xr.shape[1]:
        return t_ht
    fit_w = inv_p / np.maximum(xr[:, 0], 1e-300)
    gram = (xr * fit_w[:, None]).T @ xr
    try:
        coef = np.linalg.solve(gram, (xr * fit_w[:, None]).T @ fr)
    except np.linalg.LinAlgError:
        return t_ht
    t = t_ht + (x_total - (xr * inv_p[:, None]).sum(axis=0)) @ coef
    # the tail sums of D and N add positive terms: a regression that drives
    # either below its exactly scored part has extrapolated, not estimated
    if not (np.isfinite(t).all() and t[0] > fixed[0] and t[1] > fixed[1]):
        return t_ht
    return t


def _quantities(t, ca, cb) -> TailQuantities:
    """The quantities from the five (shifted) sums ``t``; ``ca``, ``cb`` the shifts of ``a``, ``b``."""
    t0, t1, t2, t3, t4 = t
    log_d = ca + np.log(t0)
    log_n = cb + np.log(t1)
    return TailQuantities(
        log_numerator=log_n,
        log_denominator=log_d,
        entropy_prompt=max(0.0, np.log(t0) - t2 / t0),
        entropy_full=max(0.0, np.log(t1) - t3 / t1),
        kl=max(0.0, t4 / t1 - np.log(t1) + np.log(t0) + ca - cb),
        log_ratio=log_d - log_n,
    )


def _jackknife_var(fixed, fr, inv_p, xr, x_total, ca, cb) -> np.ndarray:
    """Delete-one jackknife variance of :func:`_quantities` over the randomly sampled ids.

    Each replicate drops one sampled id, reweights the others by ``n / (n - 1)``
    and refits the regression (the with-replacement jackknife of unequal-
    probability samples). It carries the regression fit and the non-linearity
    of the log and entropy terms, which the delta method leaves out.
    """
    n = len(fr)
    keep = np.ones(n, dtype=bool)
    reps = np.empty((n, len(TailQuantities._fields)))
    for i in range(n):
        keep[i] = False
        w = inv_p[keep] * (n / (n - 1))
        t = _tail_totals(fixed, fr[keep], w, None if xr is None else xr[keep], x_total)
        reps[i] = _quantities(t, ca, cb)
        keep[i] = True
    return (n - 1) / n * ((reps - reps.mean(axis=0)) ** 2).sum(axis=0)


def _floor_var(t, fixed, n, ca, cb) -> np.ndarray:
    """Variance floor: the tail's mass off by a relative ``TAIL_FLOOR / sqrt(n)``.

    A sample that happened to miss the rare large terms looks precise; this
    floor keeps the reported error at least as large as the effect of a
    tail mass uncertain by ``1 / sqrt(n)``-order (every tail term scaled by
    ``1 + delta``, which moves ``a`` and ``b`` of the tail by ``delta``).
    """
    tail = t - fixed
    direction = np.array([tail[0], tail[1], tail[2] + tail[0], tail[3] + tail[1], tail[4]])
    delta = TAIL_FLOOR / np.sqrt(n)
    up = np.array(_quantities(t + delta * direction, ca, cb))
    down = np.array(_quantities(t - delta * direction, ca, cb))
    return ((up - down) / 2) ** 2
