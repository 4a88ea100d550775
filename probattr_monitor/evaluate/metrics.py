"""Faithfulness metrics of a token attribution under the replacement operator, each with its direction.

Every metric takes a *scorer*, ``score(removed) -> log P(y | x')`` for a bool
matrix ``removed[B, P]`` of removed positions (``perturbation.ReplacementOperator.score``
or any function with that contract), and an attribution vector ``a[P]`` over
the same positions. Larger ``a_k`` means "token ``k`` supports the response"; a
ranking is by ``a`` descending, ties by position. ``f0`` is the unperturbed score.

- **infidelity** (Yeh et al., 2019), lower is better:
  ``min_{beta >= 0} mean_i (beta * a . I_i - (f0 - f(x with I_i removed)))^2`` over
  ``M`` random masks ``I_i`` shared by all methods (each position removed with
  probability 1/2). The scale ``beta`` is fitted because methods' units differ
  (AS is in nats, Input x Gradient is not); ``beta >= 0`` so that a sign-flipped
  attribution is not rewarded. 0 is a perfect prediction of every drop.
- **naopc** (Edin et al., 2025), higher is better: the area over the deletion
  curve ``AOPC = mean_{k=0..P} (f0 - f(top-k removed))``, normalised as
  ``(AOPC - AOPC_min) / (AOPC_max - AOPC_min)`` with the bounds found by greedy
  search (beam width 1: the order that removes the most damaging, or the least
  damaging, remaining token at each step). 1 matches the best order found.
- **comprehensiveness** (DeYoung et al., 2020), higher is better:
  ``mean_q (f0 - f(top-k_q removed))`` with ``k_q = max(1, round(q P))`` over
  the fractions ``q`` of :data:`FRACTIONS`.
- **sufficiency** (DeYoung et al., 2020), lower is better:
  ``mean_q (f0 - f(all but the top-k_q removed))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["BOUND_SEARCHES", "DIRECTIONS", "FRACTIONS", "DeletionBounds", "FaithfulnessScores", "MetricContext",
           "comprehensiveness", "deletion_bounds", "deletion_curve", "infidelity", "naopc", "ranking",
           "sufficiency"]

#: The one place each metric's direction is declared: which way is better.
DIRECTIONS = {"infidelity": "lower", "naopc": "higher", "comprehensiveness": "higher", "sufficiency": "lower"}

#: Shares of the prompt positions kept or removed by comprehensiveness and sufficiency (DeYoung et al.'s bins).
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)

Scorer = Callable[[np.ndarray], np.ndarray]


def ranking(attribution: Sequence[float]) -> np.ndarray:
    """Positions (indices into ``attribution``) by attribution descending, ties by position."""
    a = np.asarray(attribution, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"an attribution must be a non-empty 1-D vector, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("an attribution contains NaN or infinite values")
    return np.lexsort((np.arange(a.size), -a))


def _top_masks(order: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    masks = np.zeros((len(ks), order.size), dtype=bool)
    for row, k in enumerate(ks):
        masks[row, order[:k]] = True
    return masks


def _ks(n_positions: int, fractions: Sequence[float]) -> list[int]:
    return [min(n_positions, max(1, int(round(q * n_positions)))) for q in fractions]


def deletion_curve(order: np.ndarray, score: Scorer, f0: float) -> np.ndarray:
    """Drops ``f0 - f(top-k removed)`` for ``k = 0 .. P`` (first entry 0)."""
    masks = _top_masks(order, range(1, order.size + 1))
    return np.concatenate([[0.0], f0 - score(masks)])


@dataclass(frozen=True)
class DeletionBounds:
    """The greedy search's best and worst AOPC, and the orders that reach them."""

    aopc_max: float
    aopc_min: float
    order_max: tuple
    order_min: tuple


#: How the NAOPC bounds are searched: ``greedy`` (``P (P + 1)`` rows) or ``single`` (``P`` rows).
BOUND_SEARCHES = ("greedy", "single")


def deletion_bounds(n_positions: int, score: Scorer, f0: float, search: str = "greedy") -> DeletionBounds:
    """Search for the most and least damaging deletion orders.

    ``greedy`` (beam width 1, as Edin et al.'s beam search with one beam)
    costs ``P (P + 1)`` scored rows: at each step every remaining position is
    tried. ``single`` costs ``P`` rows: the orders by each token's own drop,
    descending and ascending (weaker bounds, so NAOPC may leave ``[0, 1]``).
    """
    if search not in BOUND_SEARCHES:
        raise ValueError(f"unknown NAOPC bound search {search!r}; choose from {BOUND_SEARCHES}")
    if search == "single":
        single = f0 - score(np.eye(n_positions, dtype=bool))
        hi, lo = ranking(single), ranking(-single)
        return DeletionBounds(float(np.mean(deletion_curve(hi, score, f0))),
                              float(np.mean(deletion_curve(lo, score, f0))), tuple(map(int, hi)), tuple(map(int, lo)))
    result = {}
    for name, pick in (("max", np.argmax), ("min", np.argmin)):
        removed = np.zeros(n_positions, dtype=bool)
        order, drops = [], [0.0]
        for _ in range(n_positions):
            left = np.flatnonzero(~removed)
            trial = np.repeat(removed[None], left.size, axis=0)
            trial[np.arange(left.size), left] = True
            d = f0 - score(trial)
            best = int(pick(d))
            removed[left[best]] = True
            order.append(int(left[best]))
            drops.append(float(d[best]))
        result[name] = (float(np.mean(drops)), tuple(order))
    return DeletionBounds(result["max"][0], result["min"][0], result["max"][1], result["min"][1])


def naopc(curve: np.ndarray, bounds: DeletionBounds) -> float:
    """Normalised AOPC of a deletion curve; NaN when the bounds coincide (nothing to rank)."""
    span = bounds.aopc_max - bounds.aopc_min
    if span <= 1e-12:
        return float("nan")
    return float((np.mean(curve) - bounds.aopc_min) / span)


def infidelity(attribution: Sequence[float], masks: np.ndarray, drops: np.ndarray) -> float:
    """Scale-fitted infidelity of ``attribution`` against the measured ``drops`` of ``masks``."""
    a = np.asarray(attribution, dtype=float)
    pred = masks.astype(float) @ a
    d = np.asarray(drops, dtype=float)
    pp = float(np.mean(pred * pred))
    beta = max(0.0, float(np.mean(pred * d)) / pp) if pp > 0 else 0.0
    return float(np.mean((beta * pred - d) ** 2))


def comprehensiveness(curve: np.ndarray, fractions: Sequence[float] = FRACTIONS) -> float:
    """Mean drop when the top ``k_q`` positions are removed, read off the deletion curve."""
    return float(np.mean([curve[k] for k in _ks(curve.size - 1, fractions)]))


def sufficiency(order: np.ndarray, score: Scorer, f0: float, fractions: Sequence[float] = FRACTIONS) -> float:
    """Mean drop when only the top ``k_q`` positions are kept (all others removed)."""
    masks = ~_top_masks(order, _ks(order.size, fractions))
    return float(np.mean(f0 - score(masks)))


@dataclass(frozen=True)
class MetricContext:
    """What every method of one prompt shares: ``f0``, the random masks and their drops, the deletion bounds."""

    f0: float
    masks: np.ndarray
    drops: np.ndarray
    bounds: DeletionBounds

    @classmethod
    def build(cls, n_positions: int, score: Scorer, n_masks: int, seed: int,
              bound_search: str = "greedy") -> "MetricContext":
        f0 = float(score(np.zeros((1, n_positions), dtype=bool))[0])
        rng = np.random.default_rng(seed)
        masks = rng.random((n_masks, n_positions)) < 0.5
        return cls(f0, masks, f0 - score(masks), deletion_bounds(n_positions, score, f0, bound_search))


@dataclass(frozen=True)
class FaithfulnessScores:
    """The four metrics of one attribution (directions in :data:`DIRECTIONS`)."""

    infidelity: float
    naopc: float
    comprehensiveness: float
    sufficiency: float

    @classmethod
    def evaluate(cls, attribution: Sequence[float], score: Scorer, ctx: MetricContext) -> "FaithfulnessScores":
        a = np.asarray(attribution, dtype=float)
        if a.shape != (ctx.masks.shape[1],):
            raise ValueError(f"attribution has shape {a.shape}, expected ({ctx.masks.shape[1]},)")
        order = ranking(a)
        curve = deletion_curve(order, score, ctx.f0)
        return cls(infidelity(a, ctx.masks, ctx.drops), naopc(curve, ctx.bounds), comprehensiveness(curve),
                   sufficiency(order, score, ctx.f0))

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in DIRECTIONS}
