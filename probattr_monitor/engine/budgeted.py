"""Budgeted probabilistic attribution: a few candidates exactly, the tail estimated.

Exact scoring (:func:`probattr_monitor.attribute` with ``candidates="all"``)
runs one teacher-forced pass over ``v, x_>k, y`` for *every* candidate ``v`` at
every scored position ``k``. The budgeted estimator spends that pass on a small
set of candidates only and estimates the rest of the sums of DESIGN.md
section 2 by importance sampling, with a standard error for every quantity.

Per scored position ``k`` (candidate universe ``U``, the whole vocabulary by
default, always holding the original token ``x_k``):

1. **Screen.** A forward of the single token ``v`` after the shared prefix
   cache ``x_<k`` gives ``log p(x_{k+1} | x_<k, v)`` (``y_1`` at the last
   prompt position). The screened ids are the top-prior ids that hold
   ``SCREEN_MASS`` of the universe's prior mass, at least ``MIN_SCREEN`` and
   at most ``screen`` of them: a flat prior (the first token after BOS, say)
   gets a wide screen, a peaked one a narrow one. Because every term of
   ``a_k`` and ``b_k`` is a log-probability, the screening score
   ``log p(v | x_<k) + log p(x_{k+1} | x_<k, v)`` is an upper bound of
   ``a_k(v)`` and ``b_k(v)`` that sees past the prior (a token with a low
   prior that the next token strongly calls for scores high).
   **Refine.** The best-screened ids (those holding ``REFINE_MASS`` of the
   screen's predicted mass, at least ``MIN_REFINE`` and at most ``refine``)
   are forwarded again over the first ``refine_depth`` of the suffix: a
   deeper upper bound, which ranks candidates by how well they explain the
   rest of the prompt rather than one token of it (on SmolLM2 this matters
   most at the first prompt positions, whose long suffix the first token
   says little about). Every id then has a score ``s(v)`` from the deepest
   stage that saw it; the others' missing terms are filled in by the mean
   (log-mean-exp) of the stage they skipped, so all scores share one scale.
2. **Exact set** ``E``: the original token, the prior's nucleus (the smallest
   top-prior set holding ``nucleus`` of the universe's prior mass, capped at
   half the slots when screening), then the highest screening scores, up to
   ``max_candidates`` ids. Each is scored exactly.
3. **Tail** ``T = U \\ E``: ``tail_samples`` distinct ids are drawn by priority
   sampling (Duffield, Lund & Thorup 2007) with weights from the proposal
   ``q = (1 - PRIOR_MIX) * softmax_T(s) + PRIOR_MIX * prior restricted to T`` and scored
   exactly. Ids whose weight is above the sampling threshold are drawn with
   certainty and join the exact part; each other one contributes
   ``f(v) / pi(v)`` (``pi`` = its inclusion probability, Horvitz-Thompson) to
   the five tail sums ``D = sum e^a``, ``N = sum e^b``, ``sum e^a a``,
   ``sum e^b b`` and ``sum e^b (b - a)``, corrected by a regression on the
   controls ``e^s``, ``e^s s``, ``p(v | x_<k)`` and ``p(v | x_<k) log p(v | x_<k)``,
   whose totals over the tail are known from the screen and the prior
   (generalised regression estimator). ``a - s`` varies little between
   candidates, so the controls absorb most of the sampling noise; at the last
   prompt position ``a`` *is* the log prior, and one position earlier it is
   ``s``, so ``D`` and ``H`` come out (almost) exact there.
4. **Estimates and errors.** AS, ``H``, ``H'``, KL, ``log N`` and ``log D``
   are functions of those five sums. Their standard errors: a delete-one
   jackknife over the randomly sampled ids (refitting the regression each
   time), plus a floor for the tail's mass being off by a relative
   ``TAIL_FLOOR / sqrt(n)`` -- a sample that happened to miss the rare large
   terms otherwise looks too precise (and never below ``SE_FLOOR_NATS``,
   the estimator's resolution). On the benchmark
   (``benchmarks/budgeted.py``, figures in the README) at least 90 % of AS,
   H and H' errors fell within two standard errors; KL's errors are
   optimistic on high-entropy models.

When ``max_candidates + tail_samples >= |U|`` every candidate is scored and the
result equals exact scoring over ``U`` (no screening is run then).

Cost, in token-forwards (``info["token_forwards"]``; ``T_k = L - k - 1`` the
suffix length at ``k``): the full pass ``L``, plus per position the screen
(one per screened id), the refine stage (``refine_depth * T_k`` per refined id)
and ``T_k`` per exactly scored or sampled id. See :class:`Budget`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import time
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from scipy.special import logsumexp

from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.engine.result import AttributionResult
from probattr_monitor.engine.runner import FullPass, ModelRunner
from probattr_monitor.engine.stats import PositionStats, position_stats, top_k
from probattr_monitor.engine.validation import as_token_ids, check_candidates, validate_request

logger = logging.getLogger(__name__)

#: Weight of the prior in the tail proposal (the rest is the screening softmax).
PRIOR_MIX = 0.1

#: Prior mass the screen covers (top-prior ids), within ``[MIN_SCREEN, Budget.screen]`` ids.
SCREEN_MASS = 0.999

#: Fewest ids screened when a screen is asked for (fewer only if the universe is smaller).
MIN_SCREEN = 64

#: Predicted mass the refine stage covers (best-screened ids), within ``[MIN_REFINE, Budget.refine]``.
REFINE_MASS = 0.999

#: Fewest ids refined when a refine stage is asked for.
MIN_REFINE = 32

#: Standard-error floor: the tail's estimated mass is taken as uncertain by at least
#: a relative ``TAIL_FLOOR / sqrt(n)`` (``n`` = ids sampled at random), on top of the
#: jackknife. Calibrated on ``benchmarks/budgeted.py`` (0.5 left 4 % of the small
#: model's H' errors outside two standard errors, 1.0 2 %).
TAIL_FLOOR = 1.0

#: Smallest standard error reported for an estimated quantity (nats): the
#: estimator's resolution. A tail holding ~1e-3 of the posterior mass is
#: under-estimated in most draws (its few large terms are usually missed), which
#: biases H and H' low by a few 1e-3 nats (seen on SmolLM2); errors below 1e-3
#: have no bearing on the AS classes (0.2 nats) or the noise threshold (1 nat).
SE_FLOOR_NATS = 1e-3

#: Names of the per-position standard errors (``AttributionResult.stderr``).
STDERR_FIELDS = ("attribution", "log_numerator", "log_denominator", "entropy_prompt", "entropy_full", "kl")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Settings of the budgeted estimator (pass as ``attribute(..., candidates=Budget(...))``).

    Parameters
    ----------
    max_candidates : int, default 32
        Size of the exact set ``E`` per position (original token, prior nucleus,
        top screening scores), at least 1.
    tail_samples : int, default 32
        Distinct tail candidates drawn per position by priority sampling and
        scored exactly; 0 ignores the tail (sums over ``E`` only). Standard
        errors are NaN where fewer than two ids were sampled at random.
    nucleus : float, default 0.9
        Prior mass (of the universe) whose nucleus goes into ``E`` (capped at
        half of ``max_candidates`` when screening, all of it otherwise).
        0 disables the nucleus.
    screen : bool or int, default 1024
        An int ``m``: screen at most ``m`` ids, the top-prior ones holding
        ``SCREEN_MASS`` of the prior mass (at least ``min(m, MIN_SCREEN)``);
        ``True``: screen every id of the universe; ``False`` (or 0): no
        screening, the screening score is the prior.
    refine : int, default 256
        Re-screen at most this many of the best-screened ids (those holding
        ``REFINE_MASS`` of the predicted mass, at least ``min(refine,
        MIN_REFINE)``) over the first ``refine_depth`` of the suffix; 0: no
        refine stage.
    refine_depth : float, default 0.25
        Share of the suffix ``v, x_>k, y`` the refine stage reads (at least 2
        tokens; the stage is skipped where that is the whole suffix).
    seed : int, default 0
        Seed of the tail sampler. Position ``k`` draws from
        ``numpy.random.default_rng([seed, k])``: results are deterministic for
        a seed and do not depend on which other positions are scored.
    universe : sequence of int, optional
        Candidate ids the estimator is restricted to (the original token is
        always added); default: the whole output vocabulary. With a universe,
        the estimate targets exact scoring with ``candidates=universe``.

    Cost model
    ----------
    In token-forwards (the engine's cost unit, ``info["token_forwards"]``), with
    ``L = len(prompt) + len(response)``, ``T_k = L - k - 1`` the suffix length at
    position ``k``, ``U_k`` the universe, ``S_k`` the screened and ``R_k`` the
    refined ids and ``d_k = max(2, ceil(refine_depth * T_k))``::

        budgeted = L + sum_k [ |S_k| + |R_k| * d_k + (|E_k| + sampled_k) * T_k ]
        exact    = L + sum_k  |U_k| * T_k

    with ``|S_k| <= screen``, ``|R_k| <= refine``, ``|E_k| <= max_candidates``
    and ``sampled_k <= tail_samples``. The defaults cost at most
    ``1024 + 64 T_k + 64 T_k`` per position: on a 49,152-token vocabulary
    about 1/300 of exact scoring for ``T_k = 30``. (On models without a KV
    cache every row also carries the prefix: ``k + 1`` per screened id,
    ``k + d_k`` per refined one, ``L - 1`` per scored one.)
    ``info["exact_token_forwards"]`` reports what exact scoring would have
    cost, and ``info["screen_token_forwards"]`` what the two screening stages
    did.

    Raises
    ------
    ValueError, TypeError
        For budgets that make no sense: fewer than one candidate, negative
        samples, a nucleus outside ``[0, 1]``, a negative seed, screen or
        refine size, a refine depth outside ``(0, 1]``, an empty or duplicated
        universe.
    """

    max_candidates: int = 32
    tail_samples: int = 32
    nucleus: float = 0.9
    screen: Union[bool, int] = 1024
    refine: int = 256
    refine_depth: float = 0.25
    seed: int = 0
    universe: Optional[tuple] = None

    def __post_init__(self) -> None:
        _check_int(self.max_candidates, "max_candidates")
        if self.max_candidates < 1:
            raise ValueError(
                f"Budget.max_candidates must be at least 1 (the original token is always scored "
                f"exactly), got {self.max_candidates}"
            )
        _check_int(self.tail_samples, "tail_samples")
        if self.tail_samples < 0:
            raise ValueError(f"Budget.tail_samples must be >= 0 (0 ignores the tail), got {self.tail_samples}")
        if isinstance(self.nucleus, bool) or not isinstance(self.nucleus, numbers.Real):
            raise TypeError(f"Budget.nucleus must be a number in [0, 1], got {type(self.nucleus).__name__}")
        if not 0.0 <= float(self.nucleus) <= 1.0:
            raise ValueError(f"Budget.nucleus must be a prior mass in [0, 1], got {self.nucleus}")
        if not isinstance(self.screen, bool):
            _check_int(self.screen, "screen", "True, False or a non-negative number of ids to screen")
            if self.screen < 0:
                raise ValueError(f"Budget.screen must be True, False or a non-negative int, got {self.screen}")
        _check_int(self.refine, "refine", "a non-negative number of ids to refine")
        if self.refine < 0:
            raise ValueError(f"Budget.refine must be a non-negative int (0: no refine stage), got {self.refine}")
        if isinstance(self.refine_depth, bool) or not isinstance(self.refine_depth, numbers.Real):
            raise TypeError(f"Budget.refine_depth must be a share of the suffix in (0, 1], "
                            f"got {type(self.refine_depth).__name__}")
        if not 0.0 < float(self.refine_depth) <= 1.0:
            raise ValueError(f"Budget.refine_depth must be a share of the suffix in (0, 1], got {self.refine_depth}")
        _check_int(self.seed, "seed")
        if self.seed < 0:
            raise ValueError(f"Budget.seed must be a non-negative integer, got {self.seed}")
        if self.universe is not None:
            if isinstance(self.universe, str):
                if self.universe != "all":
                    raise ValueError(f"Budget.universe must be 'all', None or a sequence of token ids, "
                                     f"got the string {self.universe!r}")
                object.__setattr__(self, "universe", None)
                return
            try:
                ids = as_token_ids(self.universe, "Budget.universe")
            except ValueError as err:
                if "empty" in str(err):
                    raise ValueError("Budget.universe is empty: give None (whole vocabulary) or "
                                     "at least one token id") from None
                raise
            if len(set(ids)) != len(ids):
                dup = sorted({c for c in ids if ids.count(c) > 1})[:10]
                raise ValueError(f"Budget.universe has duplicate ids: {dup}")
            object.__setattr__(self, "universe", tuple(sorted(ids)))

    @property
    def screen_size(self) -> Optional[int]:
        """Ids screened per position: ``None`` = the whole universe, 0 = none."""
        if self.screen is True:
            return None
        if self.screen is False:
            return 0
        return int(self.screen)


def _check_int(value: Any, name: str, what: str = "an integer") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Budget.{name} must be {what}, got {type(value).__name__} {value!r}")


# ---------------------------------------------------------------------- entry point
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
    """Budgeted attribution: same result fields as :func:`attribute`, plus standard errors.

    Usually reached as ``attribute(model, prompt, response, candidates=Budget(...))``.

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
        ``num_exact``, ``num_sampled``, ``num_screened`` and ``exact_sums``
        (True where every candidate was scored).
    """
    from probattr_monitor.engine.exact import (
        DEFAULT_MEMORY_BUDGET_MB,
        _full_pass,
        _with_original,
        assemble_result,
        candidate_scores,
        response_log_prob,
    )

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
        full = _full_pass(runner, prompt, response)
        universe = check_candidates("all" if budget.universe is None else list(budget.universe), full.vocab_size)
        log_p_response = response_log_prob(full, len(prompt), response)
        stats, errs, extras = [], [], []
        exact_cost = length
        screen_cost = [0]
        set_sizes = []
        for k in pos:
            k = int(k)
            ids = _with_original(universe, prompt[k])
            set_sizes.append(len(ids))
            row_cost = length - 1 if runner.path == "full" else length - k - 1
            exact_cost += len(ids) * row_cost
            before = runner.token_forwards
            rest = prompt[k + 1 :] + response

            def score_fn(cand, k=k):
                return candidate_scores(runner, full, prompt, response, k, cand, bs)

            def screen_fn(cand, depth, k=k, rest=rest):
                start = runner.token_forwards
                out = _screen_log_probs(runner, full, prompt[:k], cand, rest[:depth], bs)
                screen_cost[0] += runner.token_forwards - start
                return out

            prior = full.log_probs[k - 1].numpy()[ids]
            st, se, extra = estimate_position(k, ids, int(prompt[k]), prior, budget, score_fn, screen_fn,
                                              log_p_response, suffix_len=len(rest))
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
        "budget": {
            "max_candidates": budget.max_candidates,
            "tail_samples": budget.tail_samples,
            "nucleus": budget.nucleus,
            "screen": budget.screen,
            "refine": budget.refine,
            "refine_depth": budget.refine_depth,
            "seed": budget.seed,
            "universe_size": None if budget.universe is None else len(budget.universe),
        },
        "token_forwards": runner.token_forwards,
        "exact_token_forwards": int(exact_cost),
        "screen_token_forwards": int(screen_cost[0]),
        "forward_calls": runner.forward_calls,
        "seconds": time.perf_counter() - started,
        "num_candidates_per_position": set_sizes,
        **per_pos,
    }
    return assemble_result(prompt, response, pos, stats, log_p_response, max(set_sizes), info, stderr=stderr)


# ---------------------------------------------------------------------- one position
def estimate_position(
    k: int,
    ids: np.ndarray,
    original_id: int,
    prior: np.ndarray,
    budget: Budget,
    score_fn,
    screen_fn,
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
        :data:`STDERR_FIELDS`, and per-position diagnostics.
    """
    n_u = len(ids)
    original = int(np.searchsorted(ids, original_id))
    extra = {"num_screened": 0, "num_refined": 0, "refine_depth": 0}
    if budget.max_candidates + budget.tail_samples >= n_u:
        # the whole universe is scored: exact, no screening needed
        a, b = score_fn(ids)
        st = position_stats(ids, a, b, log_p_response)
        extra.update(prior_mass_covered=1.0, posterior_mass_covered=1.0, num_exact=n_u,
                     num_sampled=0, exact_sums=True)
        return st, np.zeros(len(STDERR_FIELDS)), extra

    # 1. screening scores (upper bounds of a_k and b_k, on one scale)
    score = _screen_scores(ids, prior, budget, screen_fn, suffix_len, extra)

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
        log_w = _proposal(score[tail_idx], prior[tail_idx])
        rng = np.random.default_rng([budget.seed, k])
        u = 1.0 - rng.random(len(tail_idx))  # (0, 1]
        log_r = log_w - np.log(u)
        n = budget.tail_samples
        order = np.lexsort((ids[tail_idx], -log_r))
        if n >= len(tail_idx):
            keep = order
            log_incl = np.zeros(len(keep))
        else:
            keep = order[:n]
            log_tau = log_r[order[n]]
            log_incl = np.minimum(0.0, log_w[keep] - log_tau)
        sample_idx = tail_idx[keep]
    # sampled ids above the threshold were certain to be drawn: they join the exact part
    certain = log_incl == 0.0
    fixed_idx = np.concatenate([exact_idx, sample_idx[certain]])
    random_idx = sample_idx[~certain]
    scored = np.concatenate([fixed_idx, random_idx])
    a_all, b_all = score_fn(ids[scored])
    n_e = len(exact_idx)
    exact_sums = len(sample_idx) == len(tail_idx) and bool(np.all(certain))
    extra.update(num_exact=int(n_e), num_sampled=int(len(sample_idx)), exact_sums=exact_sums)
    extra["prior_mass_covered"] = float(np.exp(logsumexp(prior[exact_idx]) - logsumexp(prior)))
    if exact_sums:
        order = np.argsort(ids[scored])
        st = position_stats(ids[scored][order], a_all[order], b_all[order], log_p_response)
        extra["posterior_mass_covered"] = float(np.exp(logsumexp(b_all[:n_e]) - st.log_numerator))
        return st, np.zeros(len(STDERR_FIELDS)), extra

    population = np.setdiff1d(tail_idx, sample_idx[certain], assume_unique=True)
    st, se, post_cov = _tail_estimate(
        ids[scored], a_all, b_all, len(fixed_idx), n_e, log_incl[~certain],
        (score[fixed_idx], prior[fixed_idx]), (score[random_idx], prior[random_idx]),
        (score[population], prior[population]), log_p_response,
    )
    if len(sample_idx) == 0:
        se = np.full(len(STDERR_FIELDS), np.nan)  # tail ignored (tail_samples=0): error unknown
    extra["posterior_mass_covered"] = post_cov
    return st, se, extra


def _screen_scores(ids, prior, budget, screen_fn, suffix_len, extra) -> np.ndarray:
    """Screening scores of every id: the prior, deepened by the screen and refine stages.

    Each stage reads a longer start of the suffix for fewer ids (the screen:
    one token, for the top-prior ids; the refine stage: ``d`` tokens, for the
    best-screened ids). An id's score comes from the deepest stage that saw
    it; for the ids a stage skipped, its mean gain over the ids it saw
    (log-mean-exp of the extra log-probability, capped at 0) stands in, so
    that all scores predict ``a_k`` on one scale. Records stage sizes in ``extra``.
    """
    n_u = len(ids)
    score = prior.copy()
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
        extra["num_screened"] = int(m)
    depth = max(2, math.ceil(budget.refine_depth * suffix_len))
    if budget.refine > 0 and depth < suffix_len:
        m2 = _mass_count(score, REFINE_MASS, min(budget.refine, MIN_REFINE), min(budget.refine, n_u))
        refined = np.lexsort((ids, -score))[:m2]
        deep = prior[refined] + screen_fn(ids[refined], depth)
        score += min(0.0, float(logsumexp(deep - score[refined]) - np.log(m2)))
        score[refined] = deep
        extra.update(num_refined=int(m2), refine_depth=int(depth))
    return score


def _mass_count(log_w: np.ndarray, mass: float, lo: int, hi: int) -> int:
    """How many of the largest ``log_w`` hold ``mass`` of their total, clipped to ``[lo, hi]``."""
    w = np.exp(np.sort(log_w)[::-1] - logsumexp(log_w))
    return int(min(max(int(np.searchsorted(np.cumsum(w), mass)) + 1, lo), hi))


def _proposal(score: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Log proposal weights over the tail: ``(1 - PRIOR_MIX) softmax(score) + PRIOR_MIX softmax(prior)``."""
    return np.logaddexp(
        np.log1p(-PRIOR_MIX) + score - logsumexp(score),
        np.log(PRIOR_MIX) + prior - logsumexp(prior),
    )


def _tail_estimate(cand, a, b, n_fixed, n_exact, log_incl, s_fixed, s_random, s_population, log_p_response):
    """Sums over the fixed ids + a regression estimate of the sampled tail, with standard errors.

    ``a``, ``b`` hold ``n_fixed`` ids scored with weight 1 first (the exact set,
    its first ``n_exact``, then the ids sampled with certainty), then the ids
    sampled at random with log inclusion probabilities ``log_incl`` from the
    population described by ``s_population`` (``s_fixed``, ``s_random`` for
    the scored ones).

    Each of the five tail sums is the generalised regression (GREG) estimate:
    the Horvitz-Thompson sum corrected by the controls
    ``x = (e^s, e^s s, e^prior, e^prior prior)`` (fewer for small samples),
    whose totals over the population are known, with coefficients fitted on
    the sample (weights ``1 / (pi e^s)``; with ``e^s`` alone this is the ratio
    estimator). ``s_*`` are ``(screening score, log prior)`` pairs of arrays.
    ``a - s`` varies little between candidates, so the controls
    absorb most of the sampling noise, including that of the priority
    threshold. Standard errors: delete-one jackknife over the randomly sampled
    ids (refitting the regression; it carries the non-linearity of the logs
    and entropies) plus the floor of :func:`_floor_var`; NaN with fewer than
    two ids sampled at random.
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
        se_q = np.sqrt(_jackknife_var(fixed, fr, inv_p, xr, x_total, ca, cb) + _floor_var(t, fixed, n_r, ca, cb))
    else:
        se_q = np.full(len(q), np.nan)
    log_n, log_d, ent_p, ent_q, kl, _ = q
    # STDERR_FIELDS order: attribution, log_numerator, log_denominator, entropy_prompt, entropy_full, kl
    se = np.maximum(np.array([se_q[5], se_q[0], se_q[1], se_q[2], se_q[3], se_q[4]]), SE_FLOOR_NATS)
    t1 = t[1]
    prior_ids, prior_probs = top_k(cand, a - log_d)
    post_ids, post_probs = top_k(cand, b - log_n)
    st = PositionStats(
        log_numerator=float(log_n),
        log_denominator=float(log_d),
        attribution=float(log_p_response - (log_n - log_d)),
        entropy_prompt=float(ent_p),
        entropy_full=float(ent_q),
        kl=float(kl),
        top_prior_ids=prior_ids,
        top_prior_probs=prior_probs,
        top_posterior_ids=post_ids,
        top_posterior_probs=post_probs,
    )
    post_cov = float(min(1.0, eb[:n_exact].sum() / t1))
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


def _quantities(t, ca, cb):
    """``(log N, log D, H, H', KL, log D - log N)`` from the five (shifted) sums."""
    t0, t1, t2, t3, t4 = t
    log_d = ca + np.log(t0)
    log_n = cb + np.log(t1)
    ent_p = max(0.0, np.log(t0) - t2 / t0)
    ent_q = max(0.0, np.log(t1) - t3 / t1)
    kl = max(0.0, t4 / t1 - np.log(t1) + np.log(t0) + ca - cb)
    return np.array([log_n, log_d, ent_p, ent_q, kl, log_d - log_n])


def _jackknife_var(fixed, fr, inv_p, xr, x_total, ca, cb):
    """Delete-one jackknife variance of :func:`_quantities` over the randomly sampled ids.

    Each replicate drops one sampled id, reweights the others by ``n / (n - 1)``
    and refits the regression (the with-replacement jackknife of unequal-
    probability samples). It carries the regression fit and the non-linearity
    of the log and entropy terms, which the delta method leaves out.
    """
    n = len(fr)
    keep = np.ones(n, dtype=bool)
    reps = np.empty((n, 6))
    for i in range(n):
        keep[i] = False
        w = inv_p[keep] * (n / (n - 1))
        t = _tail_totals(fixed, fr[keep], w, None if xr is None else xr[keep], x_total)
        reps[i] = _quantities(t, ca, cb)
        keep[i] = True
    return (n - 1) / n * ((reps - reps.mean(axis=0)) ** 2).sum(axis=0)


def _floor_var(t, fixed, n, ca, cb):
    """Variance floor: the tail's mass off by a relative ``TAIL_FLOOR / sqrt(n)``.

    A sample that happened to miss the rare large terms looks precise; this
    floor keeps the reported error at least as large as the effect of a
    tail mass uncertain by ``1 / sqrt(n)``-order (every tail term scaled by
    ``1 + delta``, which moves ``a`` and ``b`` of the tail by ``delta``).
    """
    tail = t - fixed
    direction = np.array([tail[0], tail[1], tail[2] + tail[0], tail[3] + tail[1], tail[4]])
    delta = TAIL_FLOOR / np.sqrt(n)
    up, down = _quantities(t + delta * direction, ca, cb), _quantities(t - delta * direction, ca, cb)
    return ((up - down) / 2) ** 2


# ---------------------------------------------------------------------- screening
def _screen_log_probs(
    runner: ModelRunner,
    full: FullPass,
    prefix_ids: list,
    first_tokens: np.ndarray,
    targets: list,
    batch_size: Optional[int],
) -> np.ndarray:
    """``sum_t log p(targets[t] | x_<k, v, targets[:t])`` for every ``v`` in ``first_tokens``.

    ``targets`` is the start of the suffix (``x_{k+1}`` alone for the
    one-token screen, the first ``d`` suffix tokens for the refine stage);
    each row forwards ``v`` and all but the last target after the prefix
    cache, like :meth:`ModelRunner.suffix_log_probs`.
    """
    k = len(prefix_ids)
    bs = batch_size or runner.default_batch_size(k, len(targets), full.vocab_size)
    out = np.empty(len(first_tokens), dtype=np.float64)
    for start in range(0, len(first_tokens), bs):
        chunk = torch.from_numpy(np.ascontiguousarray(first_tokens[start : start + bs]))
        lp = runner.suffix_log_probs(full, prefix_ids, chunk, targets)
        out[start : start + len(chunk)] = lp.sum(dim=1).numpy()
    if not np.isfinite(out).all():
        raise ValueError(f"non-finite screening scores at position {k}")
    return out
