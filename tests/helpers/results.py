"""Hand-built :class:`~probattr_monitor.engine.result.AttributionResult` objects (no engine, no model).

:func:`make_result` fills every field from the attribution scores and simple
defaults; a keyword overrides any of them, so each test module states only the
values its answers depend on.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from probattr_monitor.engine.result import AttributionResult

__all__ = ["make_result"]


def _float_array(values, n: int, default: float) -> np.ndarray:
    return np.full(n, default, dtype=np.float64) if values is None else np.asarray(values, dtype=np.float64)


def _tiled(row: Sequence, n: int, dtype) -> np.ndarray:
    return np.tile(np.asarray(row, dtype=dtype), (n, 1))


def make_result(
    attribution,
    entropy_full=None,
    entropy_prompt=None,
    kl=None,
    *,
    token_ids=None,
    log_numerator=None,
    log_denominator=None,
    log_p_response: float = -2.0,
    top_k: int = 2,
    top_prior=None,
    top_posterior=None,
    response_ids: Sequence[int] = (1, 2, 3),
    num_candidates: int = 100,
    texts: Optional[Sequence[str]] = None,
    is_special=None,
    stderr: Optional[dict] = None,
    token_log_joint=None,
    token_log_prob=None,
) -> AttributionResult:
    """An ``AttributionResult`` at positions ``1..n`` of a prompt ``0..n``.

    Parameters
    ----------
    attribution : array-like of float
        AS per position; its length ``n`` sets every other array's.
    entropy_full, entropy_prompt, kl : array-like of float, optional
        Default ones, ones and 0.1 everywhere.
    token_ids : array-like of int, optional
        Default ``10 .. 10 + n - 1``.
    log_numerator, log_denominator : array-like of float, optional
        Default ``-1 - attribution`` and ``-1``.
    log_p_response : float, default -2.0
    top_k : int, default 2
        Width of the default top-candidate arrays: prior ids ``0..top_k-1`` with
        probabilities ``linspace(0.5, 0.1)``, posterior ids reversed with ``linspace(0.6, 0.2)``.
    top_prior, top_posterior : (ids row, probs row), optional
        One row of candidate ids and one of probabilities, repeated at every position.
    response_ids : sequence of int, default (1, 2, 3)
    num_candidates : int, default 100
    texts : sequence of str, optional
        Token texts (``token_texts``).
    is_special : array-like of bool, optional
    stderr : dict of str to array, optional
        Standard errors (default none), passed as given.
    token_log_joint, token_log_prob : array-like of float, optional
        The prompt tokens' own scores, giving the surprisals; default
        ``log_denominator - 1`` (surprisal_prompt 1 nat) and -1.5.
    """
    a = np.asarray(attribution, dtype=np.float64)
    n = a.shape[0]
    if top_prior is None:
        top_prior = (np.arange(top_k), np.linspace(0.5, 0.1, top_k))
    if top_posterior is None:
        top_posterior = (np.arange(top_k)[::-1], np.linspace(0.6, 0.2, top_k))
    log_den = _float_array(log_denominator, n, -1.0)
    return AttributionResult(
        positions=np.arange(1, n + 1, dtype=np.int64),
        token_ids=np.arange(10, 10 + n, dtype=np.int64) if token_ids is None else np.asarray(token_ids, np.int64),
        attribution=a,
        log_numerator=-1.0 - a if log_numerator is None else np.asarray(log_numerator, dtype=np.float64),
        log_denominator=log_den,
        entropy_prompt=_float_array(entropy_prompt, n, 1.0),
        entropy_full=_float_array(entropy_full, n, 1.0),
        kl=_float_array(kl, n, 0.1),
        log_p_response=log_p_response,
        top_prior_ids=_tiled(top_prior[0], n, np.int64),
        top_prior_probs=_tiled(top_prior[1], n, np.float64),
        top_posterior_ids=_tiled(top_posterior[0], n, np.int64),
        top_posterior_probs=_tiled(top_posterior[1], n, np.float64),
        prompt_ids=tuple(range(n + 1)),
        response_ids=tuple(response_ids),
        num_candidates=num_candidates,
        token_texts=None if texts is None else tuple(texts),
        is_special=None if is_special is None else np.asarray(is_special, dtype=bool),
        stderr=stderr or {},
        token_log_joint=log_den - 1.0 if token_log_joint is None else np.asarray(token_log_joint, np.float64),
        token_log_prob=_float_array(token_log_prob, n, -1.5),
    )
