"""probattr-monitor: convergence monitoring for causal LMs from probabilistic attribution.

Everything a user needs is importable from here (``docs/api.md`` lists it):
:func:`attribute` is the engine's contract (docs/design.md section 3), and the
monitor, its settings, probe sets, reports and model loading sit on top of it.
The training callbacks live in :mod:`probattr_monitor.callbacks`, imported
lazily so that one framework never imports the other.
"""

from probattr_monitor.engine import AttributionResult, Budget, attribute, attribute_text
from probattr_monitor.models import load_model_and_tokenizer
from probattr_monitor.monitor import ProbAttrMonitor, Schedule
from probattr_monitor.probes import ProbeSet, load_probe_set
from probattr_monitor.report import NoiseConfig, Report, SetMetrics
from probattr_monitor.scoring import ScoringConfig
from probattr_monitor.version import __version__

__all__ = [
    "AttributionResult",
    "Budget",
    "NoiseConfig",
    "ProbAttrMonitor",
    "ProbeSet",
    "Report",
    "Schedule",
    "ScoringConfig",
    "SetMetrics",
    "attribute",
    "attribute_text",
    "load_model_and_tokenizer",
    "load_probe_set",
]
