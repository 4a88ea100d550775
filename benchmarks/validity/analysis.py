"""Measures of the signal-validity study: rank correlation, gate regret, resolution.

For one run (a sequence of scored checkpoints with their true excess loss) and
one signal:

* **Spearman** of the signal with the true excess loss (``+1``: the signal
  ranks checkpoints exactly as their distance from the truth);
* **gate regret**: the true excess loss of the checkpoint the gate selects (min
  or max of the signal, by its direction), divided by the best checkpoint's
  (``1.0``: the gate picked the best). Where the truth is a held-out loss
  (the english regime: no true entropy is known, so no excess), it is the
  ratio of the two checkpoints' held-out perplexities, ``exp(L_picked -
  L_best)`` (:func:`loss_regret`; again ``1.0`` at the best);
* **resolution**: over pairs of checkpoints whose excess loss differs by about
  10 %, how many probes a paired comparison needs for the signal's difference to
  be two standard errors from zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr


@dataclass(frozen=True)
class RunMeasure:
    signal: str
    spearman: float
    regret: float
    picked_step: int
    best_step: int


def spearman(values: Sequence[float], truth: Sequence[float]) -> float:
    v, t = np.asarray(values, float), np.asarray(truth, float)
    ok = np.isfinite(v) & np.isfinite(t)
    if ok.sum() < 3 or np.ptp(v[ok]) == 0:
        return float("nan")
    return float(spearmanr(v[ok], t[ok]).statistic)


def kendall(values: Sequence[float], truth: Sequence[float]) -> float:
    v, t = np.asarray(values, float), np.asarray(truth, float)
    ok = np.isfinite(v) & np.isfinite(t)
    if ok.sum() < 3:
        return float("nan")
    return float(kendalltau(v[ok], t[ok]).statistic)


def gate_pick(values: Sequence[float], lower_is_better: bool) -> Optional[int]:
    """Index the gate selects (the first of ties, as Lightning's ModelCheckpoint keeps the first best)."""
    v = np.asarray(values, float)
    if not np.isfinite(v).any():
        return None
    v = np.where(np.isfinite(v), v, np.inf if lower_is_better else -np.inf)
    return int(np.argmin(v) if lower_is_better else np.argmax(v))


def regret(values: Sequence[float], excess: Sequence[float], lower_is_better: bool) -> float:
    i = gate_pick(values, lower_is_better)
    e = np.asarray(excess, float)
    if i is None:
        return float("nan")
    return float(e[i] / e.min())


def loss_regret(values: Sequence[float], loss: Sequence[float], lower_is_better: bool) -> float:
    """Held-out perplexity of the checkpoint the gate selects over the best one's, ``exp(L_i - min L)``."""
    i = gate_pick(values, lower_is_better)
    l = np.asarray(loss, float)
    if i is None:
        return float("nan")
    return float(np.exp(l[i] - l.min()))


def bootstrap_spearman_ci(per_probe_num: np.ndarray, per_probe_den: np.ndarray, excess: Sequence[float], *,
                          n_boot: int = 500, seed: int = 0, ci: float = 0.95) -> tuple[float, float]:
    """Interval of the Spearman correlation when the probe set is resampled (same probes for every checkpoint).

    ``per_probe_num`` and ``per_probe_den`` are ``[checkpoints, probes]``.
    """
    rng = np.random.default_rng(seed)
    n_ck, n_p = per_probe_num.shape
    out = []
    for _ in range(n_boot):
        idx = rng.integers(0, n_p, size=n_p)
        d = per_probe_den[:, idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            vals = per_probe_num[:, idx].sum(axis=1) / d
        out.append(spearman(vals, excess))
    out = np.asarray(out)
    out = out[np.isfinite(out)]
    if not len(out):
        return float("nan"), float("nan")
    lo, hi = np.quantile(out, [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi)


def probes_needed(per_probe_num: np.ndarray, per_probe_den: np.ndarray, excess: Sequence[float], *,
                  ratio: float = 1.10, tolerance: float = 0.05, z: float = 1.96) -> float:
    """Median probe count that tells apart checkpoint pairs whose excess differs by ``ratio`` (±tolerance).

    For each such pair the paired difference of the pooled signal is linearised
    per probe (``num_p - value * den_p`` over the mean denominator), its per-probe
    standard deviation gives the standard error at ``n`` probes, and the count
    is ``(z * sd / |difference|)^2``. NaN when no pair qualifies.
    """
    e = np.asarray(excess, float)
    n_ck, n_p = per_probe_num.shape
    counts = []
    for i in range(n_ck):
        for j in range(n_ck):
            if i == j or not (e[j] > 0 and abs(e[i] / e[j] - ratio) <= tolerance):
                continue
            vi = per_probe_num[i].sum() / per_probe_den[i].sum()
            vj = per_probe_num[j].sum() / per_probe_den[j].sum()
            diff = vi - vj
            li = (per_probe_num[i] - vi * per_probe_den[i]) / per_probe_den[i].mean()
            lj = (per_probe_num[j] - vj * per_probe_den[j]) / per_probe_den[j].mean()
            sd = float(np.std(li - lj, ddof=1))
            if diff == 0 or not math.isfinite(sd):
                continue
            counts.append((z * sd / abs(diff)) ** 2)
    return float(np.median(counts)) if counts else float("nan")
