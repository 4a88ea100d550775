"""Weights & Biases sink: per-token tables, per-probe summary, figures, run config.

W&B pitfalls this sink is built around (docs/design.md section 5):

* never ``wandb.log(..., step=...)``: an explicit step behind W&B's own counter
  silently drops data. Every call logs ``f"{prefix}/step"`` instead, declared
  with ``define_metric`` as the x-axis of every ``f"{prefix}/*"`` key;
* a ``wandb.Table`` that is logged, changed and logged again is not updated:
  every call builds fresh tables;
* tables are capped (:attr:`wandb.Table.MAX_ROWS`, 10,000 rows by default): the
  token table is split into ``tokens_part1 .. tokens_partN`` past the cap;
* tables come from one process only: on a distributed run only global rank 0
  logs (the caller should also only call it there);
* offline mode (``WANDB_MODE=offline``) works with no server;
* a *disabled* run (``WANDB_MODE=disabled``, ``wandb.init(mode="disabled")``)
  is W&B's no-op run: it takes every call and keeps nothing, so it counts as no
  run at all (:func:`is_disabled_run`); the callbacks then write files.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

from probattr_monitor.distributed import is_rank_zero
from probattr_monitor.report import Report
from probattr_monitor.report.definitions import DEFAULT_GATE_METRIC
from probattr_monitor.report.figures import DEFAULT_MAX_TOKEN_PLOTS, render_plots, scoring_figures
from probattr_monitor.sinks.history import (DEFAULT_MAX_TOKEN_ROWS_PER_STEP, TOKEN_COLUMNS, ScoringHistory,
                                            render_history_figures)

logger = logging.getLogger(__name__)

__all__ = ["WandbSink", "current_run", "is_disabled_run", "is_wandb_run", "table_keys"]


def current_run(*, import_wandb: bool = True) -> Any:
    """The active ``wandb.run`` (started by ``wandb.init``, Lightning's ``WandbLogger`` or HF's ``WandbCallback``).

    Parameters
    ----------
    import_wandb : bool
        ``False``: return ``None`` without importing wandb when nobody has
        imported it yet (then no run can be active).

    Returns
    -------
    wandb Run or None
        ``None`` without an active run or without wandb installed.
    """
    if not import_wandb and "wandb" not in sys.modules:
        return None
    try:
        wandb = importlib.import_module("wandb")
    except ImportError:
        return None
    return getattr(wandb, "run", None)


def is_wandb_run(obj: Any) -> bool:
    """Whether ``obj`` looks like a W&B run object (has ``log`` and ``define_metric``)."""
    return not isinstance(obj, (bool, str)) and callable(getattr(obj, "log", None)) and callable(
        getattr(obj, "define_metric", None))


def is_disabled_run(run: Any) -> bool:
    """Whether ``run`` is W&B's disabled no-op run (``WANDB_MODE=disabled`` or ``wandb.init(mode="disabled")``).

    Such a run accepts ``log``, ``define_metric`` and ``config.update`` and
    keeps nothing: logging to it loses the report.
    """
    if run is None:
        return False
    if getattr(run, "disabled", False) is True:
        return True
    mode = getattr(getattr(run, "settings", None), "mode", None)
    return isinstance(mode, str) and mode == "disabled"


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.strip("/") or "/" in prefix.strip("/"):
        raise ValueError(f"prefix must be a non-empty name without '/', got {prefix!r}")
    return prefix.strip("/")


def table_keys(prefix: str, n_rows: int, max_rows_per_table: int) -> list[str]:
    """Keys the token table is logged under: ``{prefix}/tokens`` or ``{prefix}/tokens_part1..N``."""
    n_parts = max(1, math.ceil(n_rows / max_rows_per_table))
    if n_parts == 1:
        return [f"{prefix}/tokens"]
    return [f"{prefix}/tokens_part{i}" for i in range(1, n_parts + 1)]


class WandbSink:
    """Log each scoring's report to a W&B run.

    Parameters
    ----------
    run : wandb Run, optional
        The run to log to (e.g. ``WandbLogger.experiment``). ``None``: the
        active ``wandb.run`` at call time (a run created by ``wandb.init``,
        by Lightning's ``WandbLogger`` or by HF's ``WandbCallback``). Without an
        active run, or with a disabled one (:func:`is_disabled_run`), every
        call is a no-op that returns ``False`` (logged once at debug level).
    prefix : str
        Keys are ``f"{prefix}/..."``.
    log_scalars : bool
        Also log the report's scalars (``{prefix}/noise_rate``...) in the same
        ``wandb.log`` call. Leave it ``False`` when the training framework
        already sends them to W&B (Lightning's ``WandbLogger``, HF's
        ``WandbCallback``), so nothing is logged twice.
    max_rows_per_table : int
        Rows per token table; more rows are split into several tables. Values
        above :attr:`wandb.Table.MAX_ROWS` are lowered to it.
    log_plots : bool
        Attach the figures (entropy vs AS, KL vs AS, tokens coloured by AS for
        the first ``max_token_plots`` probes) as ``wandb.Image``.
    warn : bool
        Warn (``RuntimeWarning``) at the first call that fails; later failures
        are only recorded in :attr:`failures`. ``False``: never warn (the
        callbacks say it themselves, with where the report went instead).
    history : bool
        Keep a :class:`~probattr_monitor.sinks.history.ScoringHistory` and
        re-log it whole at every scoring (``{prefix}/history/*``), with the
        gate chart, the noise heat map and the gate's best in the run summary.
    gate_metric : str
        The metric the history's chart and summary follow.
    gate_mode : {"min", "max"}, optional
        Default: from the metric's direction (``report.HIGHER_IS_BETTER``).
    max_token_rows_per_step : int
        Token-history rows one scoring adds at most.

    What one :meth:`log` call writes (a single ``wandb.log``, no ``step=``)::

        {prefix}/step                      the training step (x-axis of every {prefix}/* key)
        {prefix}/tokens                    per-token attribution table
          (or {prefix}/tokens_part1..N     past max_rows_per_table rows)
        {prefix}/probes                    per-probe summary table
        {prefix}/errors                    probes that failed (only when some did)
        {prefix}/plots/entropy_vs_as       figures (log_plots)
        {prefix}/plots/kl_vs_as
        {prefix}/plots/tokens/<probe_id>
        {prefix}/noise_rate, ...           scalars (log_scalars)
        {prefix}/history/probes            every scoring so far: one row per probe and step,
                                           plus a set row (probe_id "*") with the intervals
        {prefix}/history/tokens            budgeted token rows of every scoring so far
        {prefix}/history/gate_chart        line series: gate metric, ci_low, ci_high by step
        {prefix}/history/gate_history      the same as an image (log_plots)
        {prefix}/history/noise_heatmap     noise rate per probe by step (log_plots)

    A history table longer than the table cap (``max_rows_per_table``, at
    most :attr:`wandb.Table.MAX_ROWS`) is logged instead as a versioned
    Artifact ``{prefix}-history-probes`` / ``{prefix}-history-tokens`` (type
    ``probattr-history``) whose latest version holds the whole table. After
    each scoring the run summary holds ``{prefix}/best/{gate_metric}``,
    ``{prefix}/best/step`` and ``{prefix}/best/{gate_metric}_ci_low|high``;
    ``define_metric`` declares the gate metric and its bounds with
    ``summary=min|max`` too (for whoever logs those scalars).
    :meth:`state_dict` / :meth:`load_state_dict` carry the history over a resume.

    :meth:`setup` records the configuration under ``run.config[prefix]``.
    """

    def __init__(
        self,
        run: Any = None,
        *,
        prefix: str = "probattr",
        log_scalars: bool = False,
        max_rows_per_table: int = 10_000,
        log_plots: bool = True,
        max_token_plots: int = DEFAULT_MAX_TOKEN_PLOTS,
        warn: bool = True,
        history: bool = True,
        gate_metric: str = DEFAULT_GATE_METRIC,
        gate_mode: Optional[str] = None,
        max_token_rows_per_step: int = DEFAULT_MAX_TOKEN_ROWS_PER_STEP,
    ) -> None:
        self.prefix = _check_prefix(prefix)
        if isinstance(max_rows_per_table, bool) or not isinstance(max_rows_per_table, int) or max_rows_per_table < 1:
            raise ValueError(f"max_rows_per_table must be a positive integer, got {max_rows_per_table!r}")
        if isinstance(max_token_plots, bool) or not isinstance(max_token_plots, int) or max_token_plots < 0:
            raise ValueError(f"max_token_plots must be a non-negative integer, got {max_token_plots!r}")
        self._run = run
        self.history: Optional[ScoringHistory] = (
            ScoringHistory(gate_metric, gate_mode, max_token_rows_per_step) if history else None)
        self._artifacts: list[tuple[str, Any]] = []
        self.log_scalars = bool(log_scalars)
        self.max_rows_per_table = max_rows_per_table
        self.log_plots = bool(log_plots)
        self.max_token_plots = max_token_plots
        self._config: Optional[dict] = None
        self._set_up: set = set()
        self._said_no_run = False
        self._plots_unavailable = False
        self.warn = bool(warn)
        self._warned = False
        #: ``{"step": ..., "error": ...}`` for every call that failed (warned, not raised).
        self.failures: list[dict] = []
        #: Steps logged so far by this sink.
        self.logged_steps: list[int] = []

    # ------------------------------------------------------------------ run
    @property
    def step_key(self) -> str:
        return f"{self.prefix}/step"

    def _resolve_run(self) -> Any:
        run = self._run if self._run is not None else current_run()
        if is_disabled_run(run):
            run = None
        if run is None and not self._said_no_run:
            logger.debug("probattr: no active (enabled) W&B run; the W&B sink does nothing")
            self._said_no_run = True
        return run

    @property
    def run(self) -> Any:
        """The run :meth:`log` would log to now (``None``: no active run, or a disabled one)."""
        return self._resolve_run()

    def _apply_setup(self, run: Any) -> None:
        ident = getattr(run, "id", None) or id(run)
        if ident in self._set_up:
            return
        if self._config is not None:
            run.config.update({self.prefix: self._config}, allow_val_change=True)
        run.define_metric(self.step_key)
        run.define_metric(f"{self.prefix}/*", step_metric=self.step_key, step_sync=True)
        if self.history is not None:
            m = f"{self.prefix}/{self.history.gate_metric}"
            for key in (m, f"{m}_ci_low", f"{m}_ci_high"):
                run.define_metric(key, step_metric=self.step_key, step_sync=True, summary=self.history.mode)
        self._set_up.add(ident)

    def setup(self, config: dict) -> None:
        """Record ``config`` (probe-set fingerprint, scoring settings...) in the run config.

        Applied now if a run is active, else to the first run :meth:`log` finds.

        Raises
        ------
        TypeError
            ``config`` is not a dict.
        """
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        self._config = copy.deepcopy(config)
        self._set_up.clear()
        if not is_rank_zero():
            return
        run = self._resolve_run()
        if run is not None:
            self._apply_setup(run)

    # ------------------------------------------------------------------ logging
    def payload(self, report: Report, step: int, *, image_dir: Optional[Path] = None,
                log_scalars: Optional[bool] = None, figures: Optional[Mapping[str, Path]] = None) -> dict[str, Any]:
        """The dict one :meth:`log` call passes to ``wandb.log`` (images need ``image_dir``).

        ``log_scalars`` overrides the sink's setting for this call. ``figures``
        (``name -> path``, as :func:`~probattr_monitor.report.figures.render_plots`
        returns) are figures of this report already drawn by another sink: when
        they hold every figure this sink logs, they are logged instead of being
        drawn again into ``image_dir``.
        """
        import wandb

        p = self.prefix
        data: dict[str, Any] = {self.step_key: int(step)}
        table = report.table
        cap = min(self.max_rows_per_table, int(getattr(wandb.Table, "MAX_ROWS", self.max_rows_per_table)))
        gate_scoring = report.metrics.gate_scoring  # no attribution: no token table (and no figure)
        keys = [] if gate_scoring else table_keys(p, len(table), cap)
        for i, key in enumerate(keys):
            part = table.iloc[i * cap:(i + 1) * cap].reset_index(drop=True)
            data[key] = wandb.Table(dataframe=part, allow_mixed_types=True)
        data[f"{p}/probes"] = wandb.Table(dataframe=report.metrics.per_probe_frame(), allow_mixed_types=True)
        errors = report.meta.get("errors") or {}
        if errors:
            data[f"{p}/errors"] = wandb.Table(columns=["probe_id", "error"],
                                              data=[[str(k), str(v)] for k, v in errors.items()])
        if self.log_plots and image_dir is not None and not self._plots_unavailable:
            try:
                plots = self._drawn(report, figures) or render_plots(report, image_dir,
                                                                     max_token_plots=self.max_token_plots)
            except ImportError as err:
                self._plots_unavailable = True
                warnings.warn(f"probattr: no figures logged to W&B: {err}", RuntimeWarning, stacklevel=3)
            except Exception as err:  # a figure must never cost the tables
                warnings.warn(f"probattr: drawing the figures of step {step} failed: {err!r}",
                              RuntimeWarning, stacklevel=3)
            else:
                for name, path in plots.items():
                    data[f"{p}/plots/{name}"] = wandb.Image(str(path))
        if self.log_scalars if log_scalars is None else log_scalars:
            data.update(report.metrics.scalars(prefix=f"{p}/"))
        if self.history is not None and report.meta.get("status", "complete") != "partial":
            self.history.add(report, step)
            # a gate scoring moves only the gate: its native line chart is re-logged, the images wait
            # for the next attribution scoring (drawing them costs more than the gate scoring itself)
            self._history_payload(data, cap, None if gate_scoring else image_dir)
        return data

    def _drawn(self, report: Report, figures: Optional[Mapping[str, Path]]) -> dict[str, Path]:
        """The figures this sink logs, taken from ``figures`` when all of them are there (else empty)."""
        if not figures:
            return {}
        names = scoring_figures(report, max_token_plots=self.max_token_plots, step_titles=True)
        if not names or any(n not in figures or not Path(figures[n]).is_file() for n in names):
            return {}
        return {n: Path(figures[n]) for n in names}

    def _history_payload(self, data: dict[str, Any], cap: int, image_dir: Optional[Path]) -> None:
        import wandb

        h, p = self.history, self.prefix
        for name, columns, rows in (("probes", h.probe_columns, h.probe_rows),
                                    ("tokens", list(TOKEN_COLUMNS), h.token_rows)):
            table = wandb.Table(columns=list(columns), data=[list(r) for r in rows], allow_mixed_types=True)
            if len(rows) <= cap:
                data[f"{p}/history/{name}"] = table
            else:
                self._artifacts.append((f"{p}-history-{name}", table))
        rows = h.set_rows()
        m = h.gate_metric
        steps = [int(r["step"]) for r in rows]
        data[f"{p}/history/gate_chart"] = wandb.plot.line_series(
            xs=steps, ys=[[r[m] for r in rows], [r[f"{m}_ci_low"] for r in rows], [r[f"{m}_ci_high"] for r in rows]],
            keys=[m, f"{m}_ci_low", f"{m}_ci_high"], title=f"{p}: {m} by step (bootstrap interval)", xname="step")
        if self.log_plots and image_dir is not None and not self._plots_unavailable:
            try:
                figures = render_history_figures(h, image_dir)
            except ImportError:
                self._plots_unavailable = True
            except Exception as err:  # a figure must never cost the tables
                warnings.warn(f"probattr: drawing the history figures failed: {err!r}", RuntimeWarning, stacklevel=4)
            else:
                for name, path in figures.items():
                    data[f"{p}/history/{name}"] = wandb.Image(str(path))

    def _after_log(self, run: Any) -> None:
        import wandb

        for name, table in self._artifacts:
            art = wandb.Artifact(name, type="probattr-history")
            art.add(table, "history")
            run.log_artifact(art)
        self._artifacts = []
        best = self.history.best() if self.history is not None else None
        if best is not None:
            m = f"{self.prefix}/best/{self.history.gate_metric}"
            run.summary[m] = best["value"]
            run.summary[f"{self.prefix}/best/step"] = best["step"]
            run.summary[f"{m}_ci_low"] = best["ci_low"]
            run.summary[f"{m}_ci_high"] = best["ci_high"]

    def state_dict(self) -> dict:
        """The history (:meth:`ScoringHistory.state_dict`), JSON-ready; ``{}`` with ``history=False``."""
        return {"history": self.history.state_dict()} if self.history is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (after a resume the next scoring re-logs the whole history)."""
        if self.history is not None and isinstance(state, dict) and state.get("history"):
            self.history.load_state_dict(state["history"])

    def log(self, report: Report, step: int, *, log_scalars: Optional[bool] = None,
            figures: Optional[Mapping[str, Path]] = None) -> bool:
        """Log one scoring in a single ``wandb.log`` call; never raises for a logging failure.

        Parameters
        ----------
        report : Report
        step : int
        log_scalars : bool, optional
            Overrides the sink's ``log_scalars`` for this call (the callbacks
            pass ``False`` for a partial scoring, whose values no chart should
            show beside complete ones).
        figures : mapping of str to Path, optional
            This report's figures as another sink drew them (:meth:`payload`).

        Returns
        -------
        bool
            Whether W&B took the report: ``False`` without an (enabled) run,
            off rank 0, or when the call failed (recorded in :attr:`failures`).
        """
        def build(tmp: Path) -> dict[str, Any]:
            return self.payload(report, step, image_dir=tmp, log_scalars=log_scalars, figures=figures)

        return self._log(step, build)

    def log_failure(self, step: int, errors: dict) -> bool:
        """Record a scoring that produced nothing: ``{prefix}/step`` and the ``{prefix}/errors`` table, no scalars.

        Returns whether W&B took it (as :meth:`log`).
        """
        def build(tmp: Path) -> dict[str, Any]:
            import wandb

            rows = [[str(k), str(v)] for k, v in (errors or {"<scoring>": "nothing was scored"}).items()]
            return {self.step_key: int(step), f"{self.prefix}/errors": wandb.Table(columns=["probe_id", "error"],
                                                                                   data=rows)}

        return self._log(step, build)

    def _log(self, step: int, build: Any) -> bool:
        try:
            if not is_rank_zero():
                return False
            run = self._resolve_run()
            if run is None:
                return False
            self._apply_setup(run)
            with tempfile.TemporaryDirectory(prefix="probattr-wandb-") as tmp:
                self._artifacts = []
                run.log(build(Path(tmp)))  # no step=: W&B's counter stays in charge; f"{prefix}/step" is the x-axis
                self._after_log(run)
            self.logged_steps.append(int(step))
            return True
        except Exception as err:
            self.failures.append({"step": int(step), "error": f"{type(err).__name__}: {err}"})
            if self.warn and not self._warned:
                self._warned = True
                warnings.warn(f"probattr: logging step {step} to W&B failed: {err!r}; later failures are recorded "
                              "in WandbSink.failures", RuntimeWarning, stacklevel=3)
            else:
                logger.debug("probattr: logging step %s to W&B failed: %r", step, err)
            return False
