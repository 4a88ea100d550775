"""File sink: the same tables and figures as the W&B sink, written under a directory.

Layout::

    <directory>/config.json              probe-set manifest + fingerprint, scoring settings, schedule
    <directory>/history.jsonl            one line per scoring: {"step": ..., "noise_rate": ..., ...}
    <directory>/step-00000120/           one report per scoring (Report.save)
        tokens.csv, report.json, metrics.json
        entropy_vs_as.png, kl_vs_as.png, tokens_<probe>.png, tokens_<probe>.html
    <directory>/history_state.json       the ScoringHistory of every scoring (probe and token rows)
    <directory>/probe_history.csv        its probe rows: one per probe and step, plus the set row "*"
    <directory>/gate_history.png         gate metric by step with its interval band (plots)
    <directory>/noise_heatmap.png        noise rate per probe by step (plots)

Each report directory is replaced as a whole (:meth:`Report.save`) before its
line is added to ``history.jsonl``, so every line names a complete report.
``history.jsonl`` is rewritten whole and atomically, keyed by step (a step
logged again, e.g. after resuming from an earlier checkpoint, replaces its old
line), so a reader never sees a torn or duplicated line; a torn line left by
another writer is skipped by :func:`read_history` and dropped at the next
rewrite.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from probattr_monitor.io_utils import atomic_write_text
from probattr_monitor.report import Report
from probattr_monitor.report.figures import DEFAULT_MAX_TOKEN_PLOTS, render_plots
from probattr_monitor.report.definitions import DEFAULT_GATE_METRIC
from probattr_monitor.report.report import TABLE_FILES, normalize_meta
from probattr_monitor.sinks.history import ScoringHistory, render_history_figures

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.jsonl"
HISTORY_STATE_FILE = "history_state.json"
PROBE_HISTORY_FILE = "probe_history.csv"


def step_dir_name(step: int) -> str:
    """``step-00000120``: the directory of one scoring."""
    return f"step-{int(step):08d}"


def read_history(directory: str | Path) -> list[dict[str, Any]]:
    """The lines of ``history.jsonl`` in ``directory`` (empty list if there is none).

    A line that is not a JSON object (torn by a process killed while another
    writer appended it, invalid UTF-8, a crash's trailing NUL bytes) is
    skipped with a warning naming the file and line; the rest are returned.
    :class:`FileSink` rewrites the file without such lines at its next scoring.
    """
    path = Path(directory) / HISTORY_FILE
    if not path.exists():
        return []
    out = []
    raw = path.read_bytes().split(b"\n")
    for n, line in enumerate(raw, start=1):
        if not line.strip(b" \t\r\x00"):
            continue
        try:
            entry = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            entry = None
        if isinstance(entry, dict):
            out.append(entry)
        else:
            where = "last line (a torn write?)" if n == len(raw) else f"line {n}"
            logger.warning("probattr: %s %s is not a JSON object; skipped", path, where)
    return out


class FileSink:
    """Write each scoring's report, figures and scalars under ``directory``.

    Parameters
    ----------
    directory : str or Path
        Created on :meth:`setup` (or the first :meth:`log`).
    formats : sequence of {"csv", "parquet", "json"}
        Table formats of each report (see :meth:`Report.save`).
    plots : bool
        Also write the figures (PNG) and the coloured-token HTML pages.
    max_token_plots : int
        Probes that get a coloured-token figure per scoring.
    gate_metric : str
        The metric of ``gate_history.png``.
    gate_mode : {"min", "max"}, optional
        Default: from the metric's direction.

    The history (``history_state.json``) is read back from ``directory`` at
    the first :meth:`log`, so a resumed run writing to the same directory
    keeps the rows of the scorings before the resume.

    Raises
    ------
    ValueError
        An unknown format.
    """

    def __init__(self, directory: str | Path, *, formats: Sequence[str] = ("csv", "json"), plots: bool = True,
                 max_token_plots: int = DEFAULT_MAX_TOKEN_PLOTS, gate_metric: str = DEFAULT_GATE_METRIC,
                 gate_mode: Optional[str] = None) -> None:
        formats = tuple(dict.fromkeys(formats))
        unknown = [f for f in formats if f not in TABLE_FILES]
        if unknown:
            raise ValueError(f"unknown report formats {unknown}; known: {sorted(TABLE_FILES)}")
        if "parquet" in formats:
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise ImportError(
                    "FileSink(formats=('parquet',...)) needs pyarrow: pip install 'probattr-monitor[io]'"
                ) from None
        self.directory = Path(directory)
        self.formats = formats
        self.plots = bool(plots)
        self.max_token_plots = int(max_token_plots)
        self._plots_unavailable = False
        self.history = ScoringHistory(gate_metric, gate_mode)
        self._history_loaded = False
        #: ``{"step": ..., "error": ...}`` for every call that failed (warned, not raised).
        self.failures: list[dict] = []
        #: Steps logged so far by this sink.
        self.logged_steps: list[int] = []
        #: The figures the last :meth:`log` drew, ``name -> path`` (empty if it drew none), for
        #: another sink of the same scoring to use instead of drawing them again.
        self.figures: dict[str, Path] = {}

    @property
    def history_path(self) -> Path:
        return self.directory / HISTORY_FILE

    def setup(self, config: dict) -> None:
        """Write ``config.json`` (atomically).

        Raises
        ------
        TypeError
            ``config`` is not a dict.
        OSError
            The directory cannot be created or written.
        """
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.directory / CONFIG_FILE,
                          json.dumps(normalize_meta(config), indent=2, ensure_ascii=False, allow_nan=True))

    def log(self, report: Report, step: int, name: Optional[str] = None) -> Optional[Path]:
        """Save the report to ``step-XXXXXXXX/`` and add its scalars to ``history.jsonl``.

        ``name`` overrides the directory's name: ``probattr watch`` gives a
        second checkpoint of the same step (Lightning's ``-v1.ckpt``) its own
        directory. ``history.jsonl`` keeps one line per report directory (a
        report logged again under the same name replaces its line).

        Returns the report directory, or ``None`` if it could not be written
        (the failure is warned about and recorded in :attr:`failures`, never raised).
        """
        name = name or step_dir_name(step)
        out = self.directory / name
        self.figures = {}
        try:
            report.save(out, self.formats)
        except Exception as err:
            self._fail(step, "saving the report", err)
            return None
        if self.plots and not self._plots_unavailable:
            try:
                self.figures = render_plots(report, out, max_token_plots=self.max_token_plots, html=True)
            except ImportError as err:
                self._plots_unavailable = True
                warnings.warn(f"probattr: no figures written: {err}", RuntimeWarning, stacklevel=2)
            except Exception as err:
                self._fail(step, "drawing the figures", err)
        try:
            self._append_history(report, int(step), name)
        except Exception as err:
            self._fail(step, f"updating {HISTORY_FILE}", err)
            return out
        if report.meta.get("status", "complete") != "partial":
            try:
                self._write_scoring_history(report, int(step), figures=not report.metrics.gate_scoring)
            except Exception as err:
                self._fail(step, f"updating {HISTORY_STATE_FILE} and the history figures", err)
        self.logged_steps.append(int(step))
        return out

    def _append_history(self, report: Report, step: int, name: str) -> None:
        line = {
            "step": step,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            **report.metrics.scalars(prefix=""),
            "n_errors": len(report.meta.get("errors") or {}),
            "report": name,
        }
        lines = [h for h in read_history(self.directory) if h.get("report", step_dir_name(h["step"])) != name]
        lines.append(line)
        text = "".join(json.dumps(h, ensure_ascii=False, allow_nan=True) + "\n" for h in lines)
        atomic_write_text(self.history_path, text)

    def _write_scoring_history(self, report: Report, step: int, figures: bool = True) -> None:
        if not self._history_loaded:
            self._history_loaded = True
            path = self.directory / HISTORY_STATE_FILE
            if path.exists():
                self.history.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
        self.history.add(report, step)
        atomic_write_text(self.directory / HISTORY_STATE_FILE,
                          json.dumps(self.history.state_dict(), ensure_ascii=False, allow_nan=True))
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self.history.probe_columns)
        writer.writerows(self.history.probe_rows)
        atomic_write_text(self.directory / PROBE_HISTORY_FILE, buf.getvalue())
        if figures and self.plots and not self._plots_unavailable:  # not at a gate scoring (its cost)
            try:
                render_history_figures(self.history, self.directory)
            except ImportError:
                self._plots_unavailable = True

    def _fail(self, step: Any, what: str, err: BaseException) -> None:
        self.failures.append({"step": step, "error": f"{what}: {type(err).__name__}: {err}"})
        warnings.warn(f"probattr: {what} for step {step} in {self.directory} failed: {err!r}",
                      RuntimeWarning, stacklevel=3)
