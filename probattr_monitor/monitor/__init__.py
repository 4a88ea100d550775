"""The framework-agnostic monitor that schedules, scores and reports (docs/design.md section 4).

Users need :class:`ProbAttrMonitor` and :class:`Schedule` (to configure a
callback), :class:`HistoryEntry` / :class:`MonitorState` (what ``history`` and
``monitor.state`` hold) and :func:`training_state_guard`. The key list, the
run-config record and the schedule's event names live in
:mod:`~probattr_monitor.monitor.keys`, :mod:`~probattr_monitor.monitor.run_config`
and :mod:`~probattr_monitor.monitor.schedule`.
"""

from probattr_monitor.monitor.guard import training_state_guard
from probattr_monitor.monitor.monitor import HistoryEntry, MonitorState, ProbAttrMonitor
from probattr_monitor.monitor.schedule import Schedule

__all__ = ["HistoryEntry", "MonitorState", "ProbAttrMonitor", "Schedule", "training_state_guard"]
