"""What the sinks keep across scorings: the probe history, the token history and the gate's best.

One :meth:`ScoringHistory.add` per scoring appends

* **probe rows** - one per probe (``probe_id``, ``step``, its counts and metric
  values) plus one set-level row (``probe_id == "*"``) that also carries every
  metric's bootstrap interval (``<metric>_ci_low`` / ``<metric>_ci_high``):
  the bootstrap resamples probes, so a single probe has no interval of its own;
* **token rows**, within a budget of ``max_token_rows_per_step`` rows per
  scoring: the gate's noise tokens (the rows flagged ``noise`` in this
  scoring's table, i.e. the tokens ``noise_rate`` counts), then the tokens
  whose ``as_class`` or ``noise`` flag changed since the previous scoring
  (same ``probe_id`` and ``position``). The first scoring has nothing to
  compare with and records its noise tokens only. Rows past the budget are
  dropped and counted in ``dropped_token_rows``;
* the gate metric's best value so far (``min`` or ``max`` by
  :func:`~probattr_monitor.report.gate_mode`) and the step it was reached at.

A step scored again (a resumed run replaying from an earlier checkpoint)
replaces its old rows. :meth:`state_dict` is JSON-ready, so the history can
live in a training checkpoint and survive a resume.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from probattr_monitor.report import DEFAULT_GATE_METRIC, METRIC_NAMES, Report, gate_mode

__all__ = ["DEFAULT_MAX_TOKEN_ROWS_PER_STEP", "HISTORY_FIGURES", "SET_ROW_ID", "ScoringHistory", "render_history_figures"]

#: File stems of the history figures (``<stem>.png``).
HISTORY_FIGURES = ("gate_history", "noise_heatmap")

#: Token rows one scoring may add to the token history.
DEFAULT_MAX_TOKEN_ROWS_PER_STEP = 200
#: ``probe_id`` of the set-level row of each scoring in the probe history.
SET_ROW_ID = "*"
#: Columns of the token history.
TOKEN_COLUMNS = ("step", "probe_id", "position", "token_text", "attribution", "entropy_full", "as_class", "noise",
                 "change")


def _num(x: Any) -> Any:
    if isinstance(x, bool) or x is None:
        return x
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    if isinstance(x, int) or (hasattr(x, "dtype") and getattr(x.dtype, "kind", "") in "iu"):
        return int(x)
    return f


class ScoringHistory:
    """The rows and the best gate value the sinks re-log whole after every scoring.

    Parameters
    ----------
    gate_metric : str
        The metric whose best value is tracked (one of ``METRIC_NAMES``).
    mode : {"min", "max"}, optional
        Default: from the metric's declared direction.
    max_token_rows_per_step : int
        Token rows one scoring adds at most (see the module docstring).

    Raises
    ------
    ValueError
        An unknown metric, a metric without a direction and no ``mode``, a bad budget.
    """

    def __init__(self, gate_metric: str = DEFAULT_GATE_METRIC, mode: Optional[str] = None,
                 max_token_rows_per_step: int = DEFAULT_MAX_TOKEN_ROWS_PER_STEP) -> None:
        if gate_metric not in METRIC_NAMES:
            raise ValueError(f"unknown gate metric {gate_metric!r}; known: {METRIC_NAMES}")
        if mode is None:
            mode = gate_mode(gate_metric)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if isinstance(max_token_rows_per_step, bool) or not isinstance(max_token_rows_per_step, int) \
                or max_token_rows_per_step < 0:
            raise ValueError(f"max_token_rows_per_step must be a non-negative integer, got {max_token_rows_per_step!r}")
        self.gate_metric = gate_metric
        self.mode = mode
        self.max_token_rows_per_step = max_token_rows_per_step
        self.probe_columns: list[str] = []
        self.probe_rows: list[list] = []
        self.token_rows: list[list] = []
        self.dropped_token_rows = 0
        self._last: dict[str, list] = {}  # "probe_id\tposition" -> [as_class, noise] of the previous scoring

    # ------------------------------------------------------------------ rows
    @property
    def steps(self) -> list[int]:
        """Steps in the history, in order."""
        return sorted({int(r[1]) for r in self.probe_rows})

    def add(self, report: Report, step: int) -> None:
        """Append one scoring's rows (replacing any earlier rows of the same step)."""
        step = int(step)
        self.probe_rows = [r for r in self.probe_rows if int(r[1]) != step]
        self.token_rows = [r for r in self.token_rows if int(r[0]) != step]
        frame = report.metrics.per_probe_frame()
        metric_cols = [c for c in frame.columns if c != "probe_id"]
        ci_cols = [f"{m}_ci{s}" for m in METRIC_NAMES for s in ("_low", "_high")]
        columns = ["probe_id", "step"] + metric_cols + ci_cols
        if self.probe_columns and self.probe_columns != columns:
            raise ValueError("the per-probe columns changed between scorings")
        self.probe_columns = columns
        nan = float("nan")
        for rec in frame.to_dict("records"):
            self.probe_rows.append([str(rec["probe_id"]), step] + [_num(rec[c]) for c in metric_cols]
                                   + [nan] * len(ci_cols))
        values = report.metrics.values
        set_row: list = [SET_ROW_ID, step]
        for c in metric_cols:
            set_row.append(float(values[c].value) if c in values else nan)
        for m in METRIC_NAMES:
            mv = values.get(m)
            set_row += [float(mv.low), float(mv.high)] if mv is not None else [nan, nan]
        self.probe_rows.append(set_row)
        self.probe_rows.sort(key=lambda r: (int(r[1]), r[0] == SET_ROW_ID))
        self._add_tokens(report, step)

    def _add_tokens(self, report: Report, step: int) -> None:
        table = report.table
        if not len(table) or "as_class" not in table.columns or report.metrics.gate_scoring:
            return  # a gate scoring has no AS class or noise flag to follow
        current: dict[str, list] = {}
        noise_rows, changed_rows = [], []
        for rec in table.to_dict("records"):
            if rec.get("excluded"):
                continue
            key = f"{rec['probe_id']}\t{int(rec['position'])}"
            cls, noise = str(rec["as_class"]), bool(rec["noise"])
            current[key] = [cls, noise]
            before = self._last.get(key)
            change = []
            if before is not None and before[0] != cls:
                change.append(f"class {before[0]}->{cls}")
            if before is not None and bool(before[1]) != noise:
                change.append(f"noise {bool(before[1])}->{noise}")
            row = [step, str(rec["probe_id"]), int(rec["position"]), str(rec.get("token_text", "")),
                   _num(rec.get("attribution")), _num(rec.get("entropy_full")), cls, noise, "; ".join(change)]
            if noise:
                noise_rows.append(row)
            elif change:
                changed_rows.append(row)
        picked = (noise_rows + changed_rows)[:self.max_token_rows_per_step]
        self.dropped_token_rows += len(noise_rows) + len(changed_rows) - len(picked)
        self.token_rows += picked
        self.token_rows.sort(key=lambda r: int(r[0]))
        self._last = current

    # ------------------------------------------------------------------ gate
    def set_rows(self) -> list[dict]:
        """The set-level row of every scoring, as dicts, in step order."""
        return [dict(zip(self.probe_columns, r)) for r in self.probe_rows if r[0] == SET_ROW_ID]

    def best(self) -> Optional[dict]:
        """``{"value", "step", "ci_low", "ci_high"}`` of the gate metric's best scoring (``None``: none defined)."""
        best = None
        for row in self.set_rows():
            v = row.get(self.gate_metric)
            if v is None or not isinstance(v, float) or math.isnan(v):
                continue
            if best is None or (v < best["value"] if self.mode == "min" else v > best["value"]):
                best = {"value": v, "step": int(row["step"]), "ci_low": row[f"{self.gate_metric}_ci_low"],
                        "ci_high": row[f"{self.gate_metric}_ci_high"]}
        return best

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """JSON-ready state (rows, last token classes, settings)."""
        return {"gate_metric": self.gate_metric, "mode": self.mode,
                "max_token_rows_per_step": self.max_token_rows_per_step, "probe_columns": list(self.probe_columns),
                "probe_rows": [list(r) for r in self.probe_rows], "token_rows": [list(r) for r in self.token_rows],
                "dropped_token_rows": self.dropped_token_rows, "last": {k: list(v) for k, v in self._last.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (the settings given to ``__init__`` win over the saved ones).

        Raises
        ------
        TypeError
            ``state`` is not a dict.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        self.probe_columns = list(state.get("probe_columns", []))
        self.probe_rows = [list(r) for r in state.get("probe_rows", [])]
        self.token_rows = [list(r) for r in state.get("token_rows", [])]
        self.dropped_token_rows = int(state.get("dropped_token_rows", 0))
        self._last = {str(k): list(v) for k, v in (state.get("last") or {}).items()}


def render_history_figures(history: ScoringHistory, directory: Path) -> dict[str, Path]:
    """Draw :data:`HISTORY_FIGURES` of ``history`` into ``directory``: ``{"gate_history": path, "noise_heatmap": path}``.

    Raises
    ------
    ImportError
        Without matplotlib.
    """
    from probattr_monitor.report.plots import plot_gate_history, plot_noise_heatmap

    directory = Path(directory)
    m = history.gate_metric
    rows = history.set_rows()
    best = history.best()
    out = {"gate_history": plot_gate_history(
        [int(r["step"]) for r in rows], [r[m] for r in rows], [r[f"{m}_ci_low"] for r in rows],
        [r[f"{m}_ci_high"] for r in rows], directory / "gate_history.png", metric=m,
        best_step=None if best is None else best["step"])}
    steps = history.steps
    probes = list(dict.fromkeys(r[0] for r in history.probe_rows if r[0] != SET_ROW_ID))
    col = history.probe_columns.index("noise_rate")
    grid = [[float("nan")] * len(steps) for _ in probes]
    for r in history.probe_rows:
        if r[0] != SET_ROW_ID:
            v = r[col]
            grid[probes.index(r[0])][steps.index(int(r[1]))] = float("nan") if v is None else float(v)
    out["noise_heatmap"] = plot_noise_heatmap(probes, steps, grid, directory / "noise_heatmap.png")
    return out
