"""Per-token tables, convergence metrics, reports and figures.

Importing this package needs only numpy: pandas (token tables, reports),
pyarrow (Parquet) and matplotlib (PNG figures) are imported when first used and
raise an ImportError naming the extra to install when missing.
"""

from probattr_monitor.report.compare import Comparison, MetricComparison, compare_metrics
from probattr_monitor.report.definitions import DEFAULT_GATE_METRIC, HIGHER_IS_BETTER, METRIC_NAMES, gate_mode
from probattr_monitor.report.metrics import compute_metrics, metrics_from_probes
from probattr_monitor.report.noise import (
    AS_CLASSES,
    DEFAULT_ENTROPY_MODE,
    DEFAULT_ENTROPY_THRESHOLD,
    NoiseConfig,
    classify,
    noise_flags,
)
from probattr_monitor.report.report import Report
from probattr_monitor.report.table import build_token_table, reclassify
from probattr_monitor.report.values import MetricValue, ProbeMetrics, SetMetrics

__all__ = [
    "AS_CLASSES",
    "DEFAULT_ENTROPY_MODE",
    "DEFAULT_ENTROPY_THRESHOLD",
    "DEFAULT_GATE_METRIC",
    "HIGHER_IS_BETTER",
    "METRIC_NAMES",
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
    "gate_mode",
    "metrics_from_probes",
    "noise_flags",
    "reclassify",
]
