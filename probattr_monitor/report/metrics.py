"""Per-probe sums and set-level metrics of a token score table.

:func:`compute_metrics` classifies the eligible tokens of a table under a
:class:`~probattr_monitor.report.noise.NoiseConfig`, sums them per probe
(:class:`~probattr_monitor.report.values.ProbeMetrics`) and pools the sums over
the set with a seeded probe-level bootstrap interval
(:func:`metrics_from_probes`). Nothing here needs pandas: a table is a
``pandas.DataFrame`` or any mapping of column name to 1-D array.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from probattr_monitor.report.bootstrap import (
    bootstrap_weights,
    percentile_intervals,
    pooled_ratios,
    ratio_arrays,
    validate_bootstrap,
)
from probattr_monitor.report.definitions import (
    ATTRIBUTION_SCOPE,
    METRIC_NAMES,
    NOT_IN_GATE_SCORING,
    PREFIX_METRIC_NAMES,
    PREFIX_SCOPE,
    SCOPES,
    empty_reason,
)
from probattr_monitor.report.noise import AS_CLASSES, NoiseConfig, classify, noise_flags, resolve_noise_config
from probattr_monitor.report.values import MetricValue, ProbeMetrics, SetMetrics


def _column(table: Any, name: str, required: bool = True) -> Optional[np.ndarray]:
    try:
        has = name in table
    except TypeError:
        has = False
    if not has:
        if required:
            raise ValueError(f"score table has no column {name!r}")
        return None
    col = table[name]
    return np.asarray(col.to_numpy() if hasattr(col, "to_numpy") else col)



def _probe_sums(table: Any, cfg: NoiseConfig) -> tuple[list[ProbeMetrics], dict[str, int]]:
    """Aggregate a score table into one :class:`ProbeMetrics` per probe (vectorised)."""
    probe = _column(table, "probe_id")
    n = probe.shape[0]
    a = _column(table, "attribution").astype(np.float64)
    h = _column(table, "entropy_prompt").astype(np.float64)
    hf = _column(table, "entropy_full").astype(np.float64)
    kl = _column(table, "kl").astype(np.float64)
    excluded = _column(table, "excluded", required=False)
    if excluded is None:
        special = _column(table, "is_special", required=False)
        excluded = np.zeros(n, bool) if special is None else special
    excluded = np.asarray(excluded, dtype=bool)
    k = _column(table, "num_candidates", required=cfg.entropy_mode == "normalized")
    surprisals = {}
    for name in ("surprisal_prefix", "surprisal_prompt", "surprisal_full"):
        col = _column(table, name, required=False)
        surprisals[name] = np.full(n, np.nan) if col is None else col.astype(np.float64)
    for name, column in (("replacement_entropy", "replacement_entropy_greedy"),
                         ("original_share", "original_share_greedy")):
        col = _column(table, column, required=False)
        surprisals[name] = np.full(n, np.nan) if col is None else col.astype(np.float64)

    if n == 0:
        return [], {"excluded": 0, "undefined": 0}
    ids, codes = _factorize(probe)
    n_p = len(ids)

    finite_a = np.isfinite(a)
    eligible = ~excluded & finite_a
    cls = classify(a, cfg)
    near = eligible & (cls == "near_zero")
    noise = eligible & noise_flags(a, hf, cfg, k)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=mask.astype(np.float64), minlength=n_p).astype(np.int64)

    def total(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=np.where(mask, values, 0.0), minlength=n_p)

    fin_h = eligible & np.isfinite(h)
    fin_hf = eligible & np.isfinite(hf)
    fin_kl = eligible & np.isfinite(kl)
    fin_hf_nz = near & np.isfinite(hf)
    cols = {
        "n_total": np.bincount(codes, minlength=n_p).astype(np.int64),
        "n_excluded": count(excluded),
        "n_undefined": count(~excluded & ~finite_a),
        "n_tokens": count(eligible),
        "n_negative": count(eligible & (cls == "negative")),
        "n_near_zero": count(near),
        "n_positive": count(eligible & (cls == "positive")),
        "n_high": count(eligible & (cls == "high")),
        "n_noise": count(noise),
        "sum_abs_as": total(np.abs(a), eligible),
        "sum_entropy_prompt": total(h, fin_h),
        "n_entropy_prompt": count(fin_h),
        "sum_entropy_full": total(hf, fin_hf),
        "n_entropy_full": count(fin_hf),
        "sum_kl": total(kl, fin_kl),
        "n_kl": count(fin_kl),
        "sum_entropy_full_near_zero": total(hf, fin_hf_nz),
        "n_entropy_full_near_zero": count(fin_hf_nz),
    }
    for name, values in surprisals.items():
        # The prefix surprisal comes from the full pass alone: it needs no finite AS, so a gate
        # scoring (no attribution, docs/design.md section 10) and an attribution scoring count the
        # same tokens and agree on the gate metric.
        finite = (~excluded if name == "surprisal_prefix" else eligible) & np.isfinite(values)
        cols[f"sum_{name}"] = total(values, finite)
        cols[f"n_{name}"] = count(finite)
    per_probe = []
    for i, pid in enumerate(ids):
        kw = {}
        for name, arr in cols.items():
            kw[name] = int(arr[i]) if name.startswith("n_") else float(arr[i])
        per_probe.append(ProbeMetrics(probe_id=str(pid), **kw))
    extra = {"excluded": int(excluded.sum()), "undefined": int((~excluded & ~finite_a).sum())}
    return per_probe, extra


def _factorize(values: np.ndarray) -> tuple[list, np.ndarray]:
    """Unique values in order of first appearance, and the code of each element."""
    index: dict[Any, int] = {}
    codes = np.empty(values.shape[0], dtype=np.int64)
    for i, v in enumerate(values.tolist()):
        codes[i] = index.setdefault(v, len(index))
    return list(index), codes



def metrics_from_probes(
    per_probe: Sequence[ProbeMetrics],
    cfg: Optional[NoiseConfig] = None,
    n_boot: int = 1000,
    seed: Optional[int] = 0,
    ci: float = 0.95,
    *,
    n_excluded: Optional[int] = None,
    n_undefined: Optional[int] = None,
    scope: str = ATTRIBUTION_SCOPE,
) -> SetMetrics:
    """Set-level metrics and bootstrap intervals from per-probe sums.

    This is the second half of :func:`compute_metrics`; use it directly to
    merge per-probe sums gathered from several workers (e.g. DDP ranks).

    Parameters
    ----------
    per_probe : sequence of ProbeMetrics
        One entry per probe (probe ids must be unique).
    cfg, n_boot, seed, ci
        As in :func:`compute_metrics`.
    scope : {"attribution", "prefix"}
        ``"prefix"``: the sums of a gate scoring, where only
        :data:`~probattr_monitor.report.definitions.PREFIX_METRIC_NAMES` are
        defined; the other metrics are NaN with a note saying why.

    Returns
    -------
    SetMetrics
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    cfg = resolve_noise_config(cfg)
    validate_bootstrap(n_boot, ci, seed)
    per_probe = tuple(per_probe)
    seen: set[str] = set()
    for p in per_probe:
        if p.probe_id in seen:
            raise ValueError(f"duplicate probe id {p.probe_id!r}")
        seen.add(p.probe_id)
    notes: list[str] = []
    num, den = ratio_arrays(per_probe)
    with np.errstate(invalid="ignore", divide="ignore"):
        tot_num, tot_den = num.sum(axis=0), den.sum(axis=0)
        point = np.where(tot_den > 0, tot_num / np.where(tot_den > 0, tot_den, 1.0), np.nan)

    # A bootstrap unit is a probe that defines some metric (in a gate scoring no probe has an
    # eligible AS token, yet each defines the prefix surprisal).
    units = (den > 0).any(axis=1) if per_probe else np.zeros(0, dtype=bool)
    n_units = int(units.sum())
    empty = [p.probe_id for p, unit in zip(per_probe, units) if not unit]
    if not per_probe:
        notes.append("empty probe set: no probes, every metric is undefined")
    elif n_units == 0:
        notes.append("no probe has an eligible token: every metric is undefined")
    if empty and per_probe and n_units > 0:
        shown = ", ".join(repr(e) for e in empty[:10]) + (" ..." if len(empty) > 10 else "")
        notes.append(f"{len(empty)} probe(s) without eligible tokens, left out of the bootstrap: {shown}")

    low = np.full(len(METRIC_NAMES), np.nan)
    high = np.full(len(METRIC_NAMES), np.nan)
    n_def = np.zeros(len(METRIC_NAMES), dtype=np.int64)
    if n_boot > 0 and n_units > 0:
        rng = np.random.default_rng(seed)
        w = bootstrap_weights(rng, n_units, n_boot)
        low, high, n_def = percentile_intervals(pooled_ratios(w, num[units], den[units]), float(ci))
        if n_units == 1:
            notes.append("a single probe has eligible tokens: the intervals are degenerate")
    elif n_boot == 0:
        notes.append("bootstrap disabled (n_boot=0): no intervals")

    values = {}
    for j, name in enumerate(METRIC_NAMES):
        note = ""
        if not np.isfinite(point[j]) and tot_den[j] == 0:
            note = f"undefined: {empty_reason(name)}"
        elif n_boot > 0 and n_def[j] < n_boot:
            note = (
                f"interval from {int(n_def[j])} of {n_boot} resamples "
                f"(the others had {empty_reason(name)})"
                if n_def[j] > 0
                else f"no interval: {empty_reason(name)} in any resample"
            )
        if scope == PREFIX_SCOPE and name not in PREFIX_METRIC_NAMES:
            values[name] = MetricValue(float("nan"), float("nan"), float("nan"), NOT_IN_GATE_SCORING)
            continue
        values[name] = MetricValue(float(point[j]), float(low[j]), float(high[j]), note)

    counts = {c: int(sum(getattr(p, f"n_{c}") for p in per_probe)) for c in AS_CLASSES}
    return SetMetrics(
        **values,
        class_counts=counts,
        n_tokens=int(sum(p.n_tokens for p in per_probe)),
        n_excluded=int(sum(p.n_excluded for p in per_probe)) if n_excluded is None else int(n_excluded),
        n_undefined=int(sum(p.n_undefined for p in per_probe)) if n_undefined is None else int(n_undefined),
        n_probes=len(per_probe),
        n_probes_empty=len(empty),
        per_probe=per_probe,
        config=cfg,
        n_boot=int(n_boot),
        seed=None if seed is None else int(seed),
        ci=float(ci),
        notes=tuple(notes),
        scope=scope,
    )


def compute_metrics(
    table: Any,
    cfg: Optional[NoiseConfig] = None,
    n_boot: int = 1000,
    seed: Optional[int] = 0,
    ci: float = 0.95,
    scope: str = ATTRIBUTION_SCOPE,
) -> SetMetrics:
    """Per-probe and set-level metrics of a token score table.

    AS classes and noise flags are recomputed from the raw score columns with
    ``cfg`` (the table's ``as_class``/``noise`` columns are not read), so one
    table can be analysed under several configurations. Excluded (special or
    template) tokens and tokens with a non-finite AS are left out.

    Parameters
    ----------
    table : pandas.DataFrame or mapping of str to array_like
        Columns ``probe_id``, ``attribution``, ``entropy_prompt``,
        ``entropy_full``, ``kl``; ``excluded`` (or ``is_special``) if any token
        is to be left out; ``num_candidates`` in normalized entropy mode. See
        :func:`probattr_monitor.report.table.build_token_table`.
    cfg : NoiseConfig, optional
        Classes and noise rule; defaults to ``NoiseConfig()``.
    n_boot : int
        Bootstrap resamples (0 disables the intervals).
    seed : int or None
        Seed of the ``numpy.random.Generator`` of the bootstrap.
    ci : float
        Coverage of the percentile interval, in ``(0, 1)``.
    scope : {"attribution", "prefix"}
        As in :func:`metrics_from_probes` (``"prefix"`` for a gate scoring's table).

    Returns
    -------
    SetMetrics
        Undefined metrics are NaN with a ``note``; nothing raises on empty
        tables or probes without eligible tokens.

    Raises
    ------
    ValueError
        On a missing column or invalid bootstrap settings.
    """
    cfg = resolve_noise_config(cfg)
    validate_bootstrap(n_boot, ci, seed)
    per_probe, extra = _probe_sums(table, cfg)
    return metrics_from_probes(
        per_probe,
        cfg,
        n_boot=n_boot,
        seed=seed,
        ci=ci,
        n_excluded=extra["excluded"],
        n_undefined=extra["undefined"],
        scope=scope,
    )
