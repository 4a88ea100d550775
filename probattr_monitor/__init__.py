"""probattr-monitor: convergence monitoring for causal LMs from probabilistic attribution.

The public entry point is :func:`attribute` (DESIGN.md section 3).
"""

import importlib.metadata

from probattr_monitor.engine import AttributionResult, Budget, attribute, attribute_text

__all__ = ["AttributionResult", "Budget", "attribute", "attribute_text"]
__version__ = importlib.metadata.version("probattr-monitor")
