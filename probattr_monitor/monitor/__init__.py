"""The framework-agnostic monitor that schedules, scores and reports (DESIGN.md section 4)."""

from probattr_monitor.monitor.guard import training_state_guard
from probattr_monitor.monitor.monitor import HistoryEntry, MonitorState, ProbAttrMonitor
from probattr_monitor.monitor.schedule import EVENTS, Schedule

__all__ = ["EVENTS", "HistoryEntry", "MonitorState", "ProbAttrMonitor", "Schedule", "training_state_guard"]
