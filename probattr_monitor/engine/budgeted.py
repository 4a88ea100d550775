"""Budgeted probabilistic attribution: a few candidates exactly, the tail estimated.

Exact scoring runs one teacher-forced pass over ``v, x_>k, y`` for every
candidate ``v`` at every scored position ``k``. The budgeted estimator spends
that pass on a small set of candidates and estimates the rest of the sums of
docs/design.md section 2, with a standard error for every quantity. Per
position ``k`` (candidate universe ``U``, the whole vocabulary by default,
always holding the original token ``x_k``):

1. **Screen** (:mod:`~probattr_monitor.engine.screening`): upper bounds
   ``s(v)`` of ``a_k(v)`` and ``b_k(v)`` from the first suffix token(s) after ``v``.
2. **Exact set** ``E``: the original token, the prior's nucleus (capped at half
   the slots when screening), then the highest screening scores, up to
   ``max_candidates`` ids, each scored exactly.
3. **Tail** ``T = U \\ E`` (:mod:`~probattr_monitor.engine.tail`):
   ``tail_samples`` ids drawn by priority sampling from a proposal on ``s``,
   scored exactly; ids drawn with certainty join the exact part, the others
   enter a regression (GREG) estimate of the five tail sums.
4. **Estimates and errors**: AS, ``H``, ``H'``, KL, ``log N`` and ``log D`` are
   functions of those sums; their errors a jackknife plus floors.

When ``max_candidates + tail_samples >= |U|`` every candidate is scored and the
result equals exact scoring over ``U`` (no screening is run then). Cost model:
:class:`~probattr_monitor.engine.budget.Budget`; accuracy and cost on real
models: the README, section 'Budgeted attribution'.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from scipy.special import logsumexp

from probattr_monitor.engine.budget import Budget
from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.engine.passes import (
    assemble_result,
    full_pass,
    prompt_token_log_probs,
    response_log_prob,
    with_original,
)
from probattr_monitor.engine.result import AttributionResult
from probattr_monitor.engine.runner import DEFAULT_MEMORY_BUDGET_MB, ModelRunner
from probattr_monitor.engine.screening import reusable_token_forwards, screen_scores
from probattr_monitor.engine.stages import StagedRows
from probattr_monitor.engine.stats import PositionStats, position_stats
from probattr_monitor.engine.tail import STDERR_FIELDS, priority_sample, proposal, tail_estimate
from probattr_monitor.engine.validation import check_candidates, validate_request

logger = logging.getLogger(__name__)


def attribute_budgeted(
    model: torch.nn.Module,
    prompt_ids: Union[Sequence[int], torch.Tensor],
    response_ids: Union[Sequence[int], torch.Tensor],
    budget: Optional[Budget] = None,
    positions: Optional[Sequence[int]] = None,
    batch_size: Optional[int] = None,
    *,
    memory_budget_mb: Optional[float] = None,
    use_cache: Optional[bool] = None,
) -> AttributionResult:
    """Budgeted attribution: same result fields as :func:`probattr_monitor.attribute`, plus standard errors.

    Usually reached as ``attribute(model, prompt, response, candidates=Budget(...))``;
    the other parameters are :func:`probattr_monitor.attribute`'s.

    Parameters
    ----------
    budget : Budget, optional
        The estimator's settings; default ``Budget()``.

    Returns
    -------
    AttributionResult
        Estimates of every per-position quantity; ``stderr`` maps each of
        ``attribution, log_numerator, log_denominator, entropy_prompt,
        entropy_full, kl`` to its per-position standard error (0 where the
        sums are exact). ``num_candidates`` is the universe size (with the
        original token, largest over positions, as for exact scoring). ``info``
        holds ``method="budgeted"``, the budget, ``token_forwards``,
        ``exact_token_forwards`` (the cost of exact scoring over the same
        universe), ``screen_token_forwards`` and per-position arrays
        ``prior_mass_covered`` (share of the universe's prior mass in ``E``),
        ``posterior_mass_covered`` (estimated share of ``N`` in ``E``),
        ``num_exact``, ``num_sampled``, ``num_screened``, ``exact_sums``
        (True where every candidate was scored) and ``reused_token_forwards``
        (tokens of rows resumed from an earlier stage's states, not fed again).

    Raises
    ------
    TypeError
        If ``budget`` is not a :class:`Budget`; otherwise as :func:`probattr_monitor.attribute`.
    """
    if budget is None:
        budget = Budget()
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a Budget, got {type(budget).__name__}")
    if memory_budget_mb is None:
        memory_budget_mb = DEFAULT_MEMORY_BUDGET_MB
    prompt, response, pos, bs = validate_request(model, prompt_ids, response_ids, positions, batch_size,
                                                 memory_budget_mb)
    started = time.perf_counter()
    length = len(prompt) + len(response)
    with scoring_mode(model):
        runner = ModelRunner(model, int(memory_budget_mb * 2**20), use_cache=use_cache)
        full = full_pass(runner, prompt, response)
        universe = check_candidates("all" if budget.universe is None else list(budget.universe), full.vocab_size)
        log_p_response = response_log_prob(full, len(prompt), response)
        stats, errs, extras = [], [], []
        exact_cost = length
        screen_cost = [0]
        set_sizes = []
        for k in pos:
            k = int(k)
            ids = with_original(universe, prompt[k])
            set_sizes.append(len(ids))
            row_cost = length - 1 if runner.path == "full" else length - k - 1
            exact_cost += len(ids) * row_cost
            before = runner.token_forwards
            rest = prompt[k + 1 :] + response

            rows = StagedRows(runner, full, prompt[:k], rest, bs, reuse=budget.reuse_states)
            prior_all = full.log_probs[k - 1].numpy()

            def score_fn(cand, k=k, rows=rows, prior_all=prior_all):
                prompt_part, whole = rows.scores(cand, len(prompt) - k - 1)
                return prior_all[cand] + prompt_part, prior_all[cand] + whole

            def screen_fn(cand, depth, rows=rows):
                start = runner.token_forwards
                out = rows.log_probs(cand, depth, keep=True).sum(axis=1)
                screen_cost[0] += runner.token_forwards - start
                if not np.isfinite(out).all():
                    raise ValueError(f"non-finite screening scores at position {len(rows.prefix)}")
                return out

            prior = prior_all[ids]
            st, se, extra = estimate_position(k, ids, int(prompt[k]), prior, budget, score_fn, screen_fn,
                                              log_p_response, suffix_len=len(rest))
            extra["reused_token_forwards"] = rows.reused_token_forwards  # what was reused, not what could be
            logger.debug("position %d: %d exact, %d sampled, %d token-forwards", k,
                         extra["num_exact"], extra["num_sampled"], runner.token_forwards - before)
            stats.append(st)
            errs.append(se)
            extras.append(extra)
    per_pos = {name: np.array([e[name] for e in extras]) for name in extras[0]} if extras else {}
    stderr = {name: np.array([e[i] for e in errs], dtype=np.float64) for i, name in enumerate(STDERR_FIELDS)}
    info = {
        "method": "budgeted",
        "path": runner.path,
        "budget": budget.to_info(),
        "token_forwards": runner.token_forwards,
        "exact_token_forwards": int(exact_cost),
        "screen_token_forwards": int(screen_cost[0]),
        "forward_calls": runner.forward_calls,
        "largest_batch_rows": runner.largest_batch_rows,
        "seconds": time.perf_counter() - started,
        "num_candidates_per_position": set_sizes,
        **per_pos,
    }
    return assemble_result(prompt, response, pos, stats, log_p_response, max(set_sizes), info, stderr=stderr,
                           prompt_tokens=prompt_token_log_probs(full, prompt, pos))


def estimate_position(
    k: int,
    ids: np.ndarray,
    original_id: int,
    prior: np.ndarray,
    budget: Budget,
    score_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    screen_fn: Callable[[np.ndarray, int], np.ndarray],
    log_p_response: float,
    suffix_len: int,
) -> tuple[PositionStats, np.ndarray, dict]:
    """The budgeted estimate at one position, independent of how scores are computed.

    Parameters
    ----------
    k : int
        The position (seeds the sampler together with ``budget.seed``).
    ids : numpy.ndarray
        Sorted candidate universe (int64), holding ``original_id``.
    original_id : int
        ``x_k``.
    prior : numpy.ndarray
        ``log p(v | x_<k)`` aligned with ``ids``.
    budget : Budget
    score_fn : callable
        ``score_fn(cand_ids) -> (a, b)``: exact ``a_k``, ``b_k`` of the given ids.
    screen_fn : callable
        ``screen_fn(cand_ids, depth) -> sum_{t < depth} log p(s_t | x_<k, v, s_<t)``
        for the given ids, ``s = x_>k + y`` the suffix after ``v``.
    log_p_response : float
    suffix_len : int
        ``len(s) = L - k - 1``, the number of log-probabilities in ``a_k(v)`` and
        ``b_k(v)`` after the prior.

    Returns
    -------
    (PositionStats, numpy.ndarray, dict)
        The estimates, their standard errors in the order of
        :data:`~probattr_monitor.engine.tail.STDERR_FIELDS`, and per-position diagnostics.
    """
    n_u = len(ids)
    original = int(np.searchsorted(ids, original_id))
    extra = {"num_screened": 0, "num_refined": 0, "refine_depth": 0, "reused_token_forwards": 0}
    if budget.max_candidates + budget.tail_samples >= n_u:
        # the whole universe is scored: exact, no screening needed
        a, b = score_fn(ids)
        st = position_stats(ids, a, b, log_p_response)
        extra.update(prior_mass_covered=1.0, posterior_mass_covered=1.0, num_exact=n_u,
                     num_sampled=0, exact_sums=True)
        return st, np.zeros(len(STDERR_FIELDS)), extra

    # 1. screening scores (upper bounds of a_k and b_k, on one scale)
    score, fed, refine_reuse = screen_scores(ids, prior, budget, screen_fn, suffix_len, extra)

    # 2. exact set: original, capped prior nucleus, top screening scores
    in_e = np.zeros(n_u, dtype=bool)
    in_e[original] = True
    by_prior = np.lexsort((ids, -prior))
    if budget.nucleus > 0:
        mass = np.exp(prior[by_prior] - logsumexp(prior))
        n_nuc = int(np.searchsorted(np.cumsum(mass), budget.nucleus * (1 - 1e-12))) + 1
        screened = extra["num_screened"] or extra["num_refined"]
        cap = (budget.max_candidates - 1) // 2 if screened else budget.max_candidates - 1
        in_e[by_prior[: min(n_nuc, cap)]] = True
    free = budget.max_candidates - int(in_e.sum())
    if free > 0:
        by_score = np.lexsort((ids, -score))
        in_e[by_score[~in_e[by_score]][:free]] = True
    exact_idx = np.flatnonzero(in_e)
    tail_idx = np.flatnonzero(~in_e)

    # 3. tail: priority sampling from the proposal
    log_incl = np.zeros(0)
    sample_idx = np.zeros(0, dtype=np.int64)
    if budget.tail_samples > 0 and len(tail_idx) > 0:
        log_w = proposal(score[tail_idx], prior[tail_idx])
        rng = np.random.default_rng([budget.seed, k])
        keep, log_incl = priority_sample(log_w, ids[tail_idx], budget.tail_samples, rng)
        sample_idx = tail_idx[keep]
    # sampled ids above the threshold were certain to be drawn: they join the exact part
    certain = log_incl == 0.0
    fixed_idx = np.concatenate([exact_idx, sample_idx[certain]])
    random_idx = sample_idx[~certain]
    scored = np.concatenate([fixed_idx, random_idx])
    a_all, b_all = score_fn(ids[scored])
    if budget.reuse_states:
        extra["reused_token_forwards"] = reusable_token_forwards(fed, scored, refine_reuse)
    n_e = len(exact_idx)
    exact_sums = len(sample_idx) == len(tail_idx) and bool(np.all(certain))
    extra.update(num_exact=int(n_e), num_sampled=int(len(sample_idx)), exact_sums=exact_sums)
    extra["prior_mass_covered"] = float(np.exp(logsumexp(prior[exact_idx]) - logsumexp(prior)))
    if exact_sums:
        order = np.argsort(ids[scored])
        st = position_stats(ids[scored][order], a_all[order], b_all[order], log_p_response)
        extra["posterior_mass_covered"] = float(np.exp(logsumexp(b_all[:n_e]) - st.log_numerator))
        return st, np.zeros(len(STDERR_FIELDS)), extra

    # 4. estimates and standard errors from the exact part and the sampled tail
    population = np.setdiff1d(tail_idx, sample_idx[certain], assume_unique=True)
    st, se, post_cov = tail_estimate(
        ids[scored], a_all, b_all, len(fixed_idx), n_e, log_incl[~certain],
        (score[fixed_idx], prior[fixed_idx]), (score[random_idx], prior[random_idx]),
        (score[population], prior[population]), log_p_response,
    )
    if len(sample_idx) == 0:
        se = np.full(len(STDERR_FIELDS), np.nan)  # tail ignored (tail_samples=0): error unknown
    extra["posterior_mass_covered"] = post_cov
    return st, se, extra
