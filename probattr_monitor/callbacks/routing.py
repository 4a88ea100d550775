"""Where a callback's reports go: its W&B run while W&B takes them, files otherwise.

Both callbacks route every scoring through one :class:`ReportRouter`: the W&B
sink (when there is a usable run) and the file sink (when files were asked for,
or when there is no W&B run). W&B can be unavailable in several ways, and none
of them may lose a report or stop training:

* wandb is not installed, or no run is active: files (the documented default;
  said once at ``INFO`` level);
* the run is W&B's *disabled* no-op run (``WANDB_MODE=disabled``,
  ``wandb.init(mode="disabled")``), which would silently keep nothing: it counts
  as no run, and files are written instead (one warning);
* the run refuses a report (``run.log`` raises, the run was finished...): that
  report, and every later one W&B does not take, is written to files in the
  fallback directory (one warning, at the first such report; each failure is
  recorded in :attr:`ReportRouter.failures`).

Rank 0 only: the callbacks build a router on the process that writes tables.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from probattr_monitor.distributed import rank_zero_warn
from probattr_monitor.monitor import HistoryEntry
from probattr_monitor.report import Report
from probattr_monitor.sinks import FileSink, WandbSink
from probattr_monitor.sinks.wandb import is_disabled_run

logger = logging.getLogger(__name__)

__all__ = ["ReportRouter", "usable_run"]


def usable_run(run: Any, *, owner: str, files: Path) -> Any:
    """``run``, or ``None`` (with one warning) when it is W&B's disabled no-op run.

    Parameters
    ----------
    run : wandb Run or None
    owner : str
        The callback's class name, for the message.
    files : Path
        Where the reports go instead, for the message.
    """
    if run is not None and is_disabled_run(run):
        rank_zero_warn(f"probattr: the W&B run is disabled (WANDB_MODE=disabled or mode='disabled'): it would keep "
                       f"nothing, so {owner} writes its reports to files in {files} instead", RuntimeWarning)
        return None
    return run


class ReportRouter:
    """Send each scoring to W&B and/or files; fall back to files whenever W&B does not take a report.

    Parameters
    ----------
    wandb_sink : WandbSink, optional
        Built with ``warn=False``: the router says what went wrong and where the
        report went instead.
    file_sink : FileSink, optional
        Files that are always written (an explicit ``log_dir``, or the default
        directory when there is no W&B run).
    fallback_dir : Path
        Where reports W&B does not take are written when ``file_sink`` is ``None``.
    file_kwargs : dict
        ``FileSink`` arguments (``formats``, ``plots``) of the fallback sink.
    owner : str
        The callback's class name, for the messages.
    """

    def __init__(self, *, wandb_sink: Optional[WandbSink], file_sink: Optional[FileSink], fallback_dir: Path,
                 file_kwargs: Optional[dict] = None, owner: str = "probattr") -> None:
        self.wandb_sink = wandb_sink
        self.file_sink = file_sink
        self.fallback_dir = Path(fallback_dir)
        self.file_kwargs = dict(file_kwargs or {})
        self.owner = owner
        self.fallback_sink: Optional[FileSink] = None
        self._config: Optional[dict] = None
        self._said_fallback = False
        #: ``{"step", "event", "error"}`` of every report a sink did not take (warned once).
        self.failures: list[dict] = []

    @property
    def sinks(self) -> list[Any]:
        """The sinks in use: the W&B sink, the file sink, and the fallback file sink once W&B refused a report."""
        return [s for s in (self.wandb_sink, self.file_sink, self.fallback_sink) if s is not None]

    def add_wandb(self, sink: WandbSink) -> None:
        """Start logging to W&B (a run that started after training began); applies the recorded config."""
        self.wandb_sink = sink
        if self._config is not None:
            sink.setup(self._config)

    def setup(self, config: dict) -> None:
        """Record ``config`` in the run config and ``config.json`` (raises on bad configuration: before training)."""
        self._config = config
        for sink in self.sinks:
            sink.setup(config)
        where = []
        if self.wandb_sink is not None:
            where.append("W&B")
        if self.file_sink is not None:
            where.append(f"files in {self.file_sink.directory}")
        logger.info("probattr: %s writes its reports to %s", self.owner, " and ".join(where) or "nowhere")

    # ------------------------------------------------------------------ logging
    def log(self, report: Report, step: int, entry: Optional[HistoryEntry] = None) -> None:
        """Write one scoring's report.

        A complete scoring goes everywhere with its scalars. A partial one goes
        everywhere too, but without W&B scalars (no chart shows values over
        fewer probes beside complete ones). A failed one (nothing scored) is
        recorded as a failure: W&B gets the ``errors`` table only, the files get
        the (empty) report with its errors. With both sinks on, the files are
        written first and W&B logs the figures they drew (each drawn once).
        """
        status = entry.status if entry is not None else report.meta.get("status", "complete")
        # with files asked for, they go first, and W&B logs the figures they drew instead of drawing them again
        files_first = self.file_sink is not None and status != "failed"
        if files_first:
            self._to_files(self.file_sink, report, step)
        took = False
        if self.wandb_sink is not None:
            if status == "failed":
                took = self.wandb_sink.log_failure(step, dict(report.meta.get("errors") or {}))
            else:
                took = self.wandb_sink.log(report, step, log_scalars=False if status == "partial" else None,
                                           figures=self.file_sink.figures if files_first else None)
            if not took:
                self._wandb_refused(step)
        if not files_first:
            for sink in self._file_sinks(wandb_took=took):
                self._to_files(sink, report, step)

    def _file_sinks(self, *, wandb_took: bool) -> Sequence[FileSink]:
        if self.file_sink is not None:
            return [self.file_sink]
        if wandb_took:
            return []
        if self.fallback_sink is None:
            sink = FileSink(self.fallback_dir, **self.file_kwargs)
            try:
                sink.setup(self._config or {})
            except (OSError, TypeError) as err:
                self.failures.append({"step": None, "event": "files", "error": f"{type(err).__name__}: {err}"})
                rank_zero_warn(f"probattr: {self.owner} cannot write files in {self.fallback_dir}: {err!r}",
                               RuntimeWarning)
            self.fallback_sink = sink
        return [self.fallback_sink]

    def _wandb_refused(self, step: int) -> None:
        sink = self.wandb_sink
        failed = [f for f in sink.failures if f.get("step") == int(step)]
        if failed:
            reason = failed[-1]["error"]
            self.failures.append({"step": int(step), "event": "log_wandb", "error": reason})
        else:
            reason = "no active W&B run (finished, or disabled)"
        if not self._said_fallback:
            self._said_fallback = True
            where = self.file_sink.directory if self.file_sink is not None else self.fallback_dir
            rank_zero_warn(f"probattr: W&B did not take the report of step {step} ({reason}); {self.owner} writes it, "
                           f"and every later report W&B does not take, to files in {where}", RuntimeWarning)

    def _to_files(self, sink: FileSink, report: Report, step: int) -> None:
        before = len(sink.failures)
        try:
            sink.log(report, step)  # warns and records, never raises for a write failure
        except Exception as err:  # noqa: BLE001 - a report must never stop training
            sink.failures.append({"step": step, "error": f"{type(err).__name__}: {err}"})
            rank_zero_warn(f"probattr: writing the report of step {step} failed: {err!r}", RuntimeWarning)
        for failure in sink.failures[before:]:
            self.failures.append({"step": int(step), "event": "log_files", "error": failure.get("error")})
