"""Scoring engine: exact probabilistic attribution of one prompt/response pair."""

from probattr_monitor.engine.budgeted import Budget, attribute_budgeted
from probattr_monitor.engine.exact import attribute
from probattr_monitor.engine.result import AttributionResult
from probattr_monitor.engine.text import attribute_text

__all__ = ["AttributionResult", "Budget", "attribute", "attribute_budgeted", "attribute_text"]
