"""From the candidate scores a_k(v), b_k(v) to AS, entropies and KL (docs/design.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from probattr_monitor.engine.result import TOP_K


@dataclass(frozen=True)
class PositionStats:
    """Quantities of one scored position over a candidate set."""

    log_numerator: float
    log_denominator: float
    attribution: float
    entropy_prompt: float
    entropy_full: float
    kl: float
    top_prior_ids: np.ndarray
    top_prior_probs: np.ndarray
    top_posterior_ids: np.ndarray
    top_posterior_probs: np.ndarray


def entropy_from_log_probs(log_p: np.ndarray) -> float:
    """Shannon entropy (nats) of a normalised distribution given by its log-probabilities."""
    p = np.exp(log_p)
    terms = np.where(p > 0, p * log_p, 0.0)
    return float(max(0.0, -terms.sum()))


def kl_from_log_probs(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """KL(p || q) in nats, for normalised log-probabilities over the same support."""
    p = np.exp(log_p)
    terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return float(max(0.0, terms.sum()))


def top_k(candidate_ids: np.ndarray, log_p: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable candidates (ties broken by lower id) and their probabilities."""
    order = np.lexsort((candidate_ids, -log_p))[:k]
    return candidate_ids[order].astype(np.int64), np.exp(log_p[order])


def position_stats(
    candidate_ids: np.ndarray, a: np.ndarray, b: np.ndarray, log_p_response: float
) -> PositionStats:
    """Exact quantities of one position from a_k and b_k over the candidate set.

    Parameters
    ----------
    candidate_ids : numpy.ndarray
        Candidate ids ``v`` (int64), aligned with ``a`` and ``b``.
    a : numpy.ndarray
        ``a_k(v) = log p(v | x_<k) + sum_{i>k} log p(x_i | x_<k, v, x_(k..i))``.
    b : numpy.ndarray
        ``b_k(v) = a_k(v) + sum_j log p(y_j | x_<k, v, x_>k, y_<j)``.
    log_p_response : float
        ``log P(y | x)``.
    """
    log_d = float(logsumexp(a))
    log_n = float(logsumexp(b))
    log_p = a - log_d
    log_q = b - log_n
    prior_ids, prior_probs = top_k(candidate_ids, log_p)
    post_ids, post_probs = top_k(candidate_ids, log_q)
    return PositionStats(
        log_numerator=log_n,
        log_denominator=log_d,
        attribution=float(log_p_response - (log_n - log_d)),
        entropy_prompt=entropy_from_log_probs(log_p),
        entropy_full=entropy_from_log_probs(log_q),
        kl=kl_from_log_probs(log_q, log_p),
        top_prior_ids=prior_ids,
        top_prior_probs=prior_probs,
        top_posterior_ids=post_ids,
        top_posterior_probs=post_probs,
    )
