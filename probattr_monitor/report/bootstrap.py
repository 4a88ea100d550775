"""The probe-level percentile bootstrap of the pooled metrics.

Probes are the resampled units: a resample draws probes with replacement
(:func:`bootstrap_weights`), pools each metric's numerator and denominator over
the draw (:func:`pooled_ratios`), and the interval is the percentile range of
the resampled values (:func:`percentile_intervals`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from probattr_monitor.report.definitions import METRIC_NAMES, RATIO_FIELDS
from probattr_monitor.report.values import ProbeMetrics


def validate_bootstrap(n_boot: int, ci: float, seed: Optional[int]) -> None:
    """Check bootstrap settings.

    Raises
    ------
    ValueError
        If ``n_boot`` is not an integer ``>= 0``, ``ci`` is not in ``(0, 1)``,
        or ``seed`` is neither an int nor ``None``.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be an integer >= 0, got {n_boot!r}")
    if not isinstance(ci, (int, float, np.floating)) or not 0.0 < float(ci) < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an int or None, got {seed!r}")


def ratio_arrays(per_probe: Sequence[ProbeMetrics]) -> tuple[np.ndarray, np.ndarray]:
    """``(P, M)`` numerator and denominator arrays, metrics in :data:`METRIC_NAMES` order."""
    num = np.array(
        [[getattr(p, RATIO_FIELDS[m][0]) for m in METRIC_NAMES] for p in per_probe],
        dtype=np.float64,
    ).reshape(len(per_probe), len(METRIC_NAMES))
    den = np.array(
        [[getattr(p, RATIO_FIELDS[m][1]) for m in METRIC_NAMES] for p in per_probe],
        dtype=np.float64,
    ).reshape(len(per_probe), len(METRIC_NAMES))
    return num, den


def bootstrap_weights(rng: np.random.Generator, n_units: int, n_boot: int) -> np.ndarray:
    """Resampling weights of a nonparametric bootstrap.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_units : int
        Units (probes) resampled with replacement, ``n_units`` per resample.
    n_boot : int
        Number of resamples.

    Returns
    -------
    numpy.ndarray
        ``(n_boot, n_units)`` float array: how many times each unit is drawn in
        each resample (rows sum to ``n_units``).
    """
    if n_units == 0 or n_boot == 0:
        return np.zeros((n_boot, n_units), dtype=np.float64)
    idx = rng.integers(0, n_units, size=(n_boot, n_units))
    flat = idx + (np.arange(n_boot) * n_units)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n_units).reshape(n_boot, n_units).astype(np.float64)


def pooled_ratios(weights: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Pooled ratio per resample: ``(B, M)``, NaN where the denominator is 0."""
    nb = weights @ num
    db = weights @ den
    out = np.full(nb.shape, np.nan)
    np.divide(nb, db, out=out, where=db > 0)
    return out


def percentile_intervals(samples: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column percentile interval ignoring NaN.

    Returns
    -------
    low, high, n_defined : numpy.ndarray
        The interval bounds of each column (NaN where no sample is defined) and
        the count of defined (non-NaN) samples per column.
    """
    alpha = (1.0 - ci) / 2.0
    m = samples.shape[1]
    low = np.full(m, np.nan)
    high = np.full(m, np.nan)
    n_def = np.sum(~np.isnan(samples), axis=0)
    for j in range(m):
        if n_def[j] == 0:
            continue
        col = samples[:, j]
        col = col[~np.isnan(col)]
        low[j], high[j] = np.quantile(col, [alpha, 1.0 - alpha])
    return low, high, n_def
