"""Screening scores of the budgeted estimator: cheap upper bounds of ``a_k(v)`` and ``b_k(v)``.

Every term of ``a_k`` and ``b_k`` (docs/design.md section 2) is a
log-probability, so the prior plus the log-probabilities of the first few
suffix tokens after ``v`` bound both from above. The screen reads one token
for the top-prior ids; the refine stage reads a longer start of the suffix for
the best-screened ids. The scores rank the candidates and build the tail proposal.
The reads themselves are :class:`~probattr_monitor.engine.stages.StagedRows`'s.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.special import logsumexp

from probattr_monitor.engine.budget import Budget

#: Prior mass the screen covers (top-prior ids), within ``[MIN_SCREEN, Budget.screen]`` ids.
SCREEN_MASS = 0.999

#: Fewest ids screened when a screen is asked for (fewer only if the universe is smaller).
MIN_SCREEN = 64

#: Predicted mass the refine stage covers (best-screened ids), within ``[MIN_REFINE, Budget.refine]``.
REFINE_MASS = 0.999

#: Fewest ids refined when a refine stage is asked for.
MIN_REFINE = 32


def screen_scores(
    ids: np.ndarray,
    prior: np.ndarray,
    budget: Budget,
    screen_fn: Callable[[np.ndarray, int], np.ndarray],
    suffix_len: int,
    extra: dict,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Screening scores of every id: the prior, deepened by the screen and refine stages.

    An id's score comes from the deepest stage that saw it; for the ids a
    stage skipped, its mean gain over the ids it saw (log-mean-exp of the
    extra log-probability, capped at 0) stands in, so that all scores predict
    ``a_k`` on one scale.

    Parameters
    ----------
    ids, prior : numpy.ndarray
        The candidate universe and ``log p(v | x_<k)`` aligned with it.
    budget : Budget
        Its ``screen``, ``refine`` and ``refine_depth`` set the stage sizes.
    screen_fn : callable
        ``screen_fn(cand_ids, depth)``: the log-probability of the first
        ``depth`` suffix tokens after each id.
    suffix_len : int
        Length of the suffix ``x_>k + y``.
    extra : dict
        Receives ``num_screened``, and ``num_refined`` and ``refine_depth``
        when a refine stage runs.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, int)
        The scores; per id the tokens the deepest stage that saw it fed (0, 1
        or the refine depth); and how many refined ids were screened first.
        The last two give :func:`reusable_token_forwards`.
    """
    n_u = len(ids)
    score = prior.copy()
    fed = np.zeros(n_u, dtype=np.int64)
    refine_reuse = 0
    m = budget.screen_size
    if m is None:
        m = n_u
    elif m > 0:
        m = _mass_count(prior, SCREEN_MASS, min(m, MIN_SCREEN), min(m, n_u))
    if m > 0:
        screened = np.lexsort((ids, -prior))[:m]
        step = screen_fn(ids[screened], 1)
        score += min(0.0, float(logsumexp(step) - np.log(m)))
        score[screened] = prior[screened] + step
        fed[screened] = 1
        extra["num_screened"] = int(m)
    depth = max(2, math.ceil(budget.refine_depth * suffix_len))
    if budget.refine > 0 and depth < suffix_len:
        m2 = _mass_count(score, REFINE_MASS, min(budget.refine, MIN_REFINE), min(budget.refine, n_u))
        refined = np.lexsort((ids, -score))[:m2]
        deep = prior[refined] + screen_fn(ids[refined], depth)
        score += min(0.0, float(logsumexp(deep - score[refined]) - np.log(m2)))
        score[refined] = deep
        refine_reuse = int(fed[refined].sum())  # refined rows resume after the screen's token
        fed[refined] = depth
        extra.update(num_refined=int(m2), refine_depth=int(depth))
    return score, fed, refine_reuse


def reusable_token_forwards(fed: np.ndarray, scored: np.ndarray, refine_reuse: int) -> int:
    """Token-forwards an engine that resumes rows from earlier stages does not spend at one position.

    A refined id that was screened resumes after its first token
    (``refine_reuse``, counted by :func:`screen_scores`); an exactly scored id
    resumes after the ``fed[id]`` tokens its deepest screening stage fed
    (:class:`~probattr_monitor.engine.stages.StagedRows`). The cost model of
    :class:`~probattr_monitor.engine.budget.Budget` subtracts this.
    """
    return int(refine_reuse + fed[scored].sum())


def _mass_count(log_w: np.ndarray, mass: float, lo: int, hi: int) -> int:
    """How many of the largest ``log_w`` hold ``mass`` of their total, clipped to ``[lo, hi]``."""
    w = np.exp(np.sort(log_w)[::-1] - logsumexp(log_w))
    return int(min(max(int(np.searchsorted(np.cumsum(w), mass)) + 1, lo), hi))
