"""Scoring engine: probabilistic attribution of one prompt/response pair, exact or budgeted.

The other names live in their modules (e.g.
:func:`probattr_monitor.engine.budgeted.attribute_budgeted`).
"""

from probattr_monitor.engine.api import attribute
from probattr_monitor.engine.budget import Budget
from probattr_monitor.engine.result import AttributionResult
from probattr_monitor.engine.text import attribute_text

__all__ = ["AttributionResult", "Budget", "attribute", "attribute_text"]
