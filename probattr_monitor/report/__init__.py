"""Per-token tables, convergence metrics, reports and figures.

Importing this package needs only numpy: pandas (token tables, reports),
pyarrow (Parquet) and matplotlib (PNG figures) are imported when first used and
raise an ImportError naming the extra to install when missing.
"""

from probattr_monitor.report.metrics import (
    AS_CLASSES,
    DEFAULT_ENTROPY_MODE,
    DEFAULT_ENTROPY_THRESHOLD,
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    UNDEFINED_CLASS,
    Comparison,
    MetricComparison,
    MetricValue,
    NoiseConfig,
    ProbeMetrics,
    SetMetrics,
    classify,
    compare_metrics,
    compute_metrics,
    is_near_zero,
    metrics_from_probes,
    noise_flags,
    normalized_entropy,
)
from probattr_monitor.report.report import Report
from probattr_monitor.report.table import build_token_table, reclassify, token_columns

__all__ = [
    "AS_CLASSES",
    "DEFAULT_ENTROPY_MODE",
    "DEFAULT_ENTROPY_THRESHOLD",
    "HIGHER_IS_BETTER",
    "METRIC_NAMES",
    "UNDEFINED_CLASS",
    "Comparison",
    "MetricComparison",
    "MetricValue",
    "NoiseConfig",
    "ProbeMetrics",
    "Report",
    "SetMetrics",
    "build_token_table",
    "classify",
    "compare_metrics",
    "compute_metrics",
    "is_near_zero",
    "metrics_from_probes",
    "noise_flags",
    "normalized_entropy",
    "reclassify",
    "token_columns",
]
