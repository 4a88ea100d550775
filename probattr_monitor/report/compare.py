"""Comparison of two metric sets (e.g. two checkpoints) and its text table.

:func:`compare_metrics` gives each metric the difference ``b - a`` with a
bootstrap interval, paired when both sets hold the same probes;
:meth:`Comparison.summary` is the table ``probattr compare`` prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np

from probattr_monitor.report._deps import require_pandas
from probattr_monitor.report.bootstrap import (
    bootstrap_weights,
    percentile_intervals,
    pooled_ratios,
    ratio_arrays,
    validate_bootstrap,
)
from probattr_monitor.report.definitions import METRIC_NAMES
from probattr_monitor.report.values import MetricValue, SetMetrics


@dataclass(frozen=True)
class MetricComparison:
    """One metric of two metric sets, and their difference ``b - a``.

    Attributes
    ----------
    name : str
    a, b : MetricValue
    diff : MetricValue
        ``b.value - a.value`` with a bootstrap interval of the difference
        (paired when :attr:`paired`).
    paired : bool
        Both sets hold the same probe ids; the same resampled probes were
        used for both.
    overlap : bool
        The two intervals of ``a`` and ``b`` overlap (False when either is
        undefined).
    differs : bool
        The interval of the difference excludes 0.
    """

    name: str
    a: MetricValue
    b: MetricValue
    diff: MetricValue
    paired: bool
    overlap: bool
    differs: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "diff": self.diff.to_dict(),
            "paired": self.paired,
            "overlap": self.overlap,
            "differs": self.differs,
        }


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare_metrics`: one :class:`MetricComparison` per metric."""

    metrics: tuple
    paired: bool
    n_boot: int
    seed: Optional[int]
    ci: float

    def __getitem__(self, name: str) -> MetricComparison:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "paired": self.paired,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "ci": self.ci,
            "metrics": [m.to_dict() for m in self.metrics],
        }

    def to_frame(self) -> Any:
        """One row per metric as a ``pandas.DataFrame``."""
        pd = require_pandas()
        rows = []
        for m in self.metrics:
            rows.append(
                {
                    "metric": m.name,
                    "a": m.a.value,
                    "a_low": m.a.low,
                    "a_high": m.a.high,
                    "b": m.b.value,
                    "b_low": m.b.low,
                    "b_high": m.b.high,
                    "diff": m.diff.value,
                    "diff_low": m.diff.low,
                    "diff_high": m.diff.high,
                    "paired": m.paired,
                    "overlap": m.overlap,
                    "differs": m.differs,
                }
            )
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """A plain-text table (what ``probattr compare`` prints)."""
        pct = f"{self.ci:.0%}"
        kind = "paired" if self.paired else "unpaired"
        head = f"{'metric':<30} {'a':>24} {'b':>24} {'b - a (' + kind + ', ' + pct + ')':>34}  verdict"
        lines = [head, "-" * len(head)]

        def fmt(mv: MetricValue) -> str:
            return f"{mv.value:.4g} [{mv.low:.4g}, {mv.high:.4g}]"

        for m in self.metrics:
            verdict = "differs" if m.differs else "no clear difference"
            lines.append(f"{m.name:<30} {fmt(m.a):>24} {fmt(m.b):>24} {fmt(m.diff):>34}  {verdict}")
        return "\n".join(lines)


def compare_metrics(
    a: SetMetrics,
    b: SetMetrics,
    *,
    names: Optional[Iterable[str]] = None,
    n_boot: Optional[int] = None,
    seed: Optional[int] = None,
    ci: Optional[float] = None,
) -> Comparison:
    """Compare two metric sets (e.g. two checkpoints).

    When both sets hold exactly the same probe ids, the difference ``b - a``
    gets a **paired** bootstrap interval: each resample draws probes once and
    recomputes both pooled statistics on the same probes, which cancels most of
    the between-probe variation. Otherwise the two sets are resampled
    independently. A metric *differs* when the interval of the difference
    excludes 0; :attr:`MetricComparison.overlap` also reports whether the two
    individual intervals overlap (a cruder, conservative check).

    Parameters
    ----------
    a, b : SetMetrics
    names : iterable of str, optional
        Metrics to compare (default: all of :data:`METRIC_NAMES`).
    n_boot, seed, ci : optional
        Bootstrap settings; default to those of ``a``.

    Returns
    -------
    Comparison
    """
    names = tuple(METRIC_NAMES if names is None else names)
    for name in names:
        if name not in METRIC_NAMES:
            raise ValueError(f"unknown metric {name!r}; known: {METRIC_NAMES}")
    n_boot = a.n_boot if n_boot is None else n_boot
    seed = a.seed if seed is None else seed
    ci = a.ci if ci is None else ci
    validate_bootstrap(n_boot, ci, seed)
    cols = [METRIC_NAMES.index(n) for n in names]

    ids_a = [p.probe_id for p in a.per_probe]
    ids_b = [p.probe_id for p in b.per_probe]
    paired = bool(ids_a) and set(ids_a) == set(ids_b)
    rng = np.random.default_rng(seed)

    diff_low = np.full(len(METRIC_NAMES), np.nan)
    diff_high = np.full(len(METRIC_NAMES), np.nan)
    if paired:
        b_by_id = {p.probe_id: p for p in b.per_probe}
        pa = list(a.per_probe)
        pb = [b_by_id[i] for i in ids_a]
        num_a, den_a = ratio_arrays(pa)
        num_b, den_b = ratio_arrays(pb)
        if n_boot > 0:
            w = bootstrap_weights(rng, len(pa), n_boot)
            d = pooled_ratios(w, num_b, den_b) - pooled_ratios(w, num_a, den_a)
            diff_low, diff_high, _ = percentile_intervals(d, float(ci))
    else:
        pa = [p for p in a.per_probe if p.n_tokens > 0]
        pb = [p for p in b.per_probe if p.n_tokens > 0]
        if n_boot > 0 and pa and pb:
            num_a, den_a = ratio_arrays(pa)
            num_b, den_b = ratio_arrays(pb)
            wa = bootstrap_weights(rng, len(pa), n_boot)
            wb = bootstrap_weights(rng, len(pb), n_boot)
            d = pooled_ratios(wb, num_b, den_b) - pooled_ratios(wa, num_a, den_a)
            diff_low, diff_high, _ = percentile_intervals(d, float(ci))

    out = []
    for name, j in zip(names, cols):
        ma, mb = a[name], b[name]
        dv = mb.value - ma.value
        note = "" if math.isfinite(dv) else "undefined in a or b"
        diff = MetricValue(float(dv), float(diff_low[j]), float(diff_high[j]), note)
        overlap = bool(max(ma.low, mb.low) <= min(ma.high, mb.high))
        differs = bool(diff.low > 0 or diff.high < 0)
        out.append(MetricComparison(name, ma, mb, diff, paired, overlap, differs))
    return Comparison(tuple(out), paired, int(n_boot), seed, float(ci))
