"""Candidate convergence signals, computed from a report's per-token table.

Every signal is a pooled ratio ``sum over probes of numerator / sum of
denominator`` of per-probe sums, like the report's own set metrics, so one
probe-level bootstrap serves them all. The product's metrics are recomputed
here from the table with :func:`probattr_monitor.report.compute_metrics`, so the
study scores exactly what the product would log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from probattr_monitor.report import METRIC_NAMES, NoiseConfig, compute_metrics
from probattr_monitor.report.definitions import OPTIONAL_METRIC_NAMES, RATIO_FIELDS

#: Thresholds (nats of H') at which the paper's noise rate is also evaluated.
NOISE_THRESHOLDS = (0.5, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class Signal:
    """A candidate signal: per-probe numerator and denominator sums from a token table."""

    name: str
    per_probe: Callable  # table -> (probe ids, numerators, denominators)
    description: str


def _eligible(table):
    keep = ~table["excluded"].to_numpy(bool) & np.isfinite(table["attribution"].to_numpy(float))
    return table[keep]


def _ratio_signal(name: str, numerator: Callable, description: str, where: Callable | None = None) -> Signal:
    def per_probe(table):
        t = _eligible(table)
        if where is not None:
            t = t[where(t)]
        values = numerator(t)
        ok = np.isfinite(values)
        probe = t["probe_id"].to_numpy(str)
        ids = sorted(set(_eligible(table)["probe_id"].astype(str)))
        num = np.array([values[ok & (probe == p)].sum() for p in ids])
        den = np.array([float((ok & (probe == p)).sum()) for p in ids])
        return ids, num, den

    return Signal(name, per_probe, description)


def _product_metric(name: str, cfg: NoiseConfig, label: str | None = None) -> Signal:
    num_field, den_field = RATIO_FIELDS[name]

    def per_probe(table):
        per = compute_metrics(table, cfg, n_boot=0).per_probe
        return ([p.probe_id for p in per], np.array([float(getattr(p, num_field)) for p in per]),
                np.array([float(getattr(p, den_field)) for p in per]))

    return Signal(label or name, per_probe, f"the product's {name} (H' threshold {cfg.entropy_threshold:g} nats)")


def product_signals() -> list[Signal]:
    """The report's set metrics at the default NoiseConfig, and the noise rate at other thresholds."""
    out = [_product_metric(name, NoiseConfig()) for name in METRIC_NAMES]
    for t in NOISE_THRESHOLDS:
        out.append(_product_metric("noise_rate", NoiseConfig(entropy_threshold=t), f"noise_rate@{t:g}"))
    return out


def _col(name):
    return lambda t: t[name].to_numpy(float)


def derived_signals() -> list[Signal]:
    """Signals built on the prompt tokens' own surprisals that the product does not log (diagnostics)."""
    return [
        _ratio_signal("calibration_gap_prompt", lambda t: t["surprisal_prompt"].to_numpy(float)
                      - t["entropy_prompt"].to_numpy(float), "mean surprisal minus entropy of p_k"),
        _ratio_signal("calibration_gap_full", lambda t: t["surprisal_full"].to_numpy(float)
                      - t["entropy_full"].to_numpy(float), "mean surprisal minus entropy of p'_k"),
        _ratio_signal("surprising_near_zero_rate@1", lambda t: (
            (np.abs(t["attribution"].to_numpy(float)) <= 0.2) & (t["surprisal_full"].to_numpy(float) >= 1.0)
        ).astype(float), "share of tokens with |AS| <= 0.2 whose own surprisal given everything is >= 1 nat"),
    ]


def with_prefix_surprisal(table):
    """``table`` with a ``surprisal_prefix`` column, recovered exactly where the scorer did not write one.

    Runs scored before the engine exported ``-log p(x_k | x_<k)`` still hold
    ``a_k(x_k) = log_denominator - surprisal_prompt``, the log-probability of
    ``x_k..x_{n-1}`` given ``x_<k``; with every position scored, consecutive
    differences give each token's own causal log-probability.
    """
    if "surprisal_prefix" in table and np.isfinite(table["surprisal_prefix"].to_numpy(float)).any():
        return table
    out = table.copy()
    a = (out["log_denominator"] - out["surprisal_prompt"]).to_numpy(float)
    prefix = np.full(len(out), np.nan)
    for _, idx in out.groupby("probe_id", sort=False).indices.items():
        order = idx[np.argsort(out["position"].to_numpy()[idx])]
        pos = out["position"].to_numpy()[order]
        if not np.array_equal(pos, np.arange(pos[0], pos[0] + len(pos))):
            continue  # not every position scored: leave NaN
        lp = a[order] - np.append(a[order][1:], 0.0)
        prefix[order] = -lp
    out["surprisal_prefix"] = prefix
    return out


def replacement_signals() -> list[Signal]:
    """The opt-in replacement metrics (paper section 4.3) as candidate signals.

    They need reports scored with ``ScoringConfig(replacement_entropy=True)``;
    on other reports their denominators are zero and their values NaN, so
    :func:`all_signals` leaves them out unless asked.
    """
    return [_product_metric(name, NoiseConfig()) for name in OPTIONAL_METRIC_NAMES]


def all_signals(with_replacement: bool = False) -> list[Signal]:
    """Every candidate signal the study measures."""
    return product_signals() + derived_signals() + (replacement_signals() if with_replacement else [])


#: Signals for which a higher value is better (every other one: lower is better).
HIGHER_BETTER = ("positive_rate", "high_rate", "mean_abs_as", "mean_kl", "mean_original_share")


def lower_is_better(name: str) -> bool:
    """The gate's direction for a signal, fixed before looking at the runs."""
    return name.split("@")[0] not in HIGHER_BETTER


def pooled(ids, num, den) -> float:
    total = den.sum()
    return float(num.sum() / total) if total > 0 else float("nan")


def bootstrap_ci(num: np.ndarray, den: np.ndarray, *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95):
    """Percentile interval of the pooled ratio over probes resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(n_boot, len(num)))
    d = den[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        vals = num[idx].sum(axis=1) / d
    vals = vals[np.isfinite(vals)]
    lo, hi = np.quantile(vals, [(1 - ci) / 2, (1 + ci) / 2]) if len(vals) else (np.nan, np.nan)
    return float(lo), float(hi)
