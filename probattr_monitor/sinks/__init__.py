"""Where a scoring's report goes besides the framework's scalar loggers.

* :class:`WandbSink` - per-token and per-probe ``wandb.Table`` objects and the
  figures, logged against a ``define_metric`` step key; the run config records
  the probe-set fingerprint and the scoring settings.
* :class:`FileSink` - the same tables and figures as files, plus a
  ``history.jsonl`` of the scalars (read back with :func:`read_history`), under
  a directory.

Both share the contract ``setup(config)`` (may raise on bad configuration)
then ``log(report, step)`` (never raises for a logging failure: warns and
records it in ``failures``). Importing this package does not import wandb.
File names and table keys live in :mod:`~probattr_monitor.sinks.files` and
:mod:`~probattr_monitor.sinks.wandb`.
"""

from probattr_monitor.sinks.files import FileSink, read_history
from probattr_monitor.sinks.history import ScoringHistory
from probattr_monitor.sinks.wandb import WandbSink

__all__ = ["FileSink", "ScoringHistory", "WandbSink", "read_history"]
