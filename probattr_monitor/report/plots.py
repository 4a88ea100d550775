"""Matplotlib figures of token tables and metrics (the optional ``plots`` extra).

* :func:`plot_tokens_by_as`: prompt tokens coloured by AS;
* :func:`plot_entropy_vs_as`: H and H' against AS, the mean of each AS range
  dashed (the paper's Fig. 2); :func:`plot_kl_vs_as`: KL against AS (Fig. 4);
* :func:`plot_metrics_over_checkpoints`: set-level metrics with their intervals
  across steps or checkpoints.

Figures use the object-oriented API (``matplotlib.figure.Figure``, Agg canvas):
pyplot's global state is never touched. Every file is written atomically; the
path's suffix picks the format.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from probattr_monitor.io_utils import atomic_write
from probattr_monitor.report._deps import require_matplotlib
from probattr_monitor.report.definitions import DEFAULT_GATE_METRIC, METRIC_NAMES
from probattr_monitor.report.noise import AS_CLASSES, NoiseConfig, classify, resolve_noise_config
from probattr_monitor.report.token_view import MID_RGB, NEG_RGB, POS_RGB, probe_tokens, token_colours
from probattr_monitor.report.values import SetMetrics

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

logger = logging.getLogger(__name__)


def _display(text: str) -> str:
    """Token text with invisible characters made visible (newline, tab, empty)."""
    if text == "":
        return "\u2205"
    return text.replace("\r", "").replace("\n", "\u21b5").replace("\t", "\u2192")


def _figure(figsize: tuple[float, float], dpi: int) -> Any:
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi)


def _save(fig: Any, path: Union[str, Path], dpi: int) -> Path:
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Gg]lyph.*missing.*")
        atomic_write(path, lambda p: fig.savefig(p, format=fmt, dpi=dpi))
    logger.debug("wrote figure %s", path)
    return path


def plot_tokens_by_as(
    table: "pd.DataFrame",
    probe_id: str,
    path: Union[str, Path],
    *,
    vmax: Optional[float] = None,
    width_in: float = 10.0,
    fontsize: float = 12.0,
    dpi: int = 120,
) -> Path:
    """Prompt tokens of one probe laid out as text, coloured by AS (PNG).

    Parameters
    ----------
    table : pandas.DataFrame
        A token table.
    probe_id : str
    path : str or Path
        Output file; its suffix picks the format (``.png`` by default).
    vmax : float, optional
        ``|AS|`` of full saturation; default ``clip(max |AS|, 0.5, 3)``.
    width_in, fontsize, dpi
        Figure width (inches), token font size (points) and resolution.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        If ``probe_id`` is not in the table.
    ImportError
        Without matplotlib (the ``plots`` extra).
    """
    view = probe_tokens(table, probe_id, vmax)
    require_matplotlib()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize

    rows, a, excluded, vmax = view.rows, view.attribution, view.excluded, view.vmax
    noise = rows["noise"].to_numpy(dtype=bool)
    texts = [str(t) for t in rows["token_text"]]

    # Monospace layout in inches: a glyph is ~0.6 em wide.
    char_w = 0.6 * fontsize / 72.0
    line_h = 1.9 * fontsize / 72.0
    margin = 0.3
    usable = width_in - 2 * margin
    placed = []  # (x, line, display text, index)
    x, line = 0.0, 0
    for i, t in enumerate(texts):
        shown = _display(t)
        w = char_w * max(len(shown), 1) + 0.04
        if x > 0 and x + w > usable:
            x, line = 0.0, line + 1
        placed.append((x, line, shown, i))
        x += w
        if "\n" in t:
            x, line = 0.0, line + 1
    n_lines = (placed[-1][1] + 1) if placed else 1
    title_h, cbar_h = 0.6, 1.0
    height = title_h + n_lines * line_h + cbar_h
    fig = _figure((width_in, height), dpi)
    trans = fig.dpi_scale_trans
    step = rows["step"].iloc[0] if "step" in rows else None
    step_s = "" if step is None or (isinstance(step, float) and math.isnan(step)) else f" (step {step})"
    fig.text(margin, height - 0.35, f"probe {probe_id}{step_s}: prompt tokens coloured by AS",
             transform=trans, fontsize=fontsize, weight="bold", va="center")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Gg]lyph.*missing.*")
        for x, ln, shown, i in placed:
            y = height - title_h - (ln + 0.5) * line_h
            bg, fg = token_colours(a[i], excluded[i], vmax)
            box = {"boxstyle": "square,pad=0.15", "facecolor": bg, "edgecolor": "none"}
            if noise[i] and not excluded[i]:
                box.update(edgecolor="black", linestyle="--", linewidth=0.8)
            fig.text(margin + x, y, shown, transform=trans, family="monospace", fontsize=fontsize,
                     color=fg, va="center", ha="left", bbox=box)
    cmap = LinearSegmentedColormap.from_list(
        "probattr_as", [tuple(c / 255 for c in NEG_RGB), tuple(c / 255 for c in MID_RGB), tuple(c / 255 for c in POS_RGB)]
    )
    cax = fig.add_axes((0.25, 0.55 / height, 0.5, 0.15 / height))
    cb = fig.colorbar(ScalarMappable(norm=Normalize(-vmax, vmax), cmap=cmap), cax=cax, orientation="horizontal")
    cb.set_label("attribution score AS (nats); grey = excluded, dashed = noise token", fontsize=9)
    return _save(fig, path, dpi)


def _eligible(table: "pd.DataFrame", probe_ids: Optional[Sequence[str]]) -> "pd.DataFrame":
    rows = table
    if probe_ids is not None:
        rows = rows[rows["probe_id"].isin(list(probe_ids))]
    mask = np.isfinite(rows["attribution"].to_numpy(dtype=np.float64))
    if "excluded" in rows:
        mask &= ~rows["excluded"].to_numpy(dtype=bool)
    return rows[mask]


def _class_ranges(cfg: NoiseConfig, lo: float, hi: float) -> dict[str, tuple[float, float]]:
    bounds = {
        "negative": (lo, cfg.negative_below),
        "near_zero": (cfg.negative_below, cfg.near_zero_max),
        "positive": (cfg.near_zero_max, cfg.high_above),
        "high": (cfg.high_above, hi),
    }
    return {c: (max(b0, lo), min(b1, hi)) for c, (b0, b1) in bounds.items()}


def _scatter_with_range_means(
    ax: Any,
    a: np.ndarray,
    series: Sequence[tuple[str, np.ndarray, str, str]],
    cfg: NoiseConfig,
    xscale: str,
) -> None:
    classes = classify(a, cfg)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (-1.0, 1.0)
    ranges = _class_ranges(cfg, lo, hi)
    for label, y, color, marker in series:
        ax.scatter(a, y, s=14, alpha=0.55, color=color, marker=marker, label=label, linewidths=0.8)
        for c in AS_CLASSES:
            m = (classes == c) & np.isfinite(y)
            if not m.any():
                continue
            x0, x1 = ranges[c]
            if x1 <= x0:  # a single value: give the segment a visible width
                x0, x1 = x0 - 0.05, x1 + 0.05
            ax.hlines(float(np.mean(y[m])), x0, x1, colors=color, linestyles="dashed", linewidth=1.6)
    for b in (cfg.negative_below, cfg.near_zero_max, cfg.high_above):
        if lo <= b <= hi:
            ax.axvline(b, color="#999999", linestyle=":", linewidth=0.8)
    if xscale == "symlog":
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("symlog", linthresh=1.0)
        base = [0.0, cfg.negative_below, cfg.near_zero_max, cfg.high_above]
        for mag in (1.0, 10.0, 100.0, 1000.0):
            base += [m * mag for m in (1.0, 2.0, 5.0)] + [-m * mag for m in (1.0, 2.0, 5.0)]
        ticks = sorted({t for t in base if lo - 1e-12 <= t <= hi + 1e-12})
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.set_xlabel("attribution score AS (nats)")
    ax.grid(alpha=0.3)


def _no_data(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#777777")


@dataclass(frozen=True)
class _AgainstAs:
    """A scatter against AS: ``(label, column, colour, marker)`` per series, its y label and default title."""

    series: tuple[tuple[str, str, str, str], ...]
    ylabel: str
    default_title: str


_ENTROPY_VS_AS = _AgainstAs(
    (("H (prompt)", "entropy_prompt", "#1f77b4", "o"), ("H' (prompt + response)", "entropy_full", "#ff7f0e", "x")),
    "contextual entropy (nats)",
    "Contextual entropy vs attribution",
)
_KL_VS_AS = _AgainstAs((("KL(p' || p)", "kl", "#2ca02c", "o"),), "KL divergence (nats)", "KL vs attribution")


def _plot_against_as(
    table: "pd.DataFrame",
    path: Union[str, Path],
    spec: _AgainstAs,
    *,
    cfg: Optional[NoiseConfig],
    probe_ids: Optional[Sequence[str]],
    xscale: str,
    title: Optional[str],
    dpi: int,
) -> Path:
    """The figure of ``spec``: its series against AS, the mean of each AS range dashed.

    Without ``title`` the title is the spec's default with the number of tokens drawn.
    """
    cfg = resolve_noise_config(cfg)
    if xscale not in ("symlog", "linear"):
        raise ValueError(f"xscale must be 'symlog' or 'linear', got {xscale!r}")
    rows = _eligible(table, probe_ids)
    fig = _figure((8.0, 5.0), dpi)
    ax = fig.add_subplot(1, 1, 1)
    a = rows["attribution"].to_numpy(dtype=np.float64)
    if a.size:
        columns = [(label, rows[col].to_numpy(dtype=np.float64), color, marker) for label, col, color, marker in spec.series]
        _scatter_with_range_means(ax, a, columns, cfg, xscale)
        ax.legend(loc="best", fontsize=9, title="dashed: mean per AS range", title_fontsize=8)
    else:
        _no_data(ax, "no eligible tokens")
    ax.set_ylabel(spec.ylabel)
    ax.set_title(title or f"{spec.default_title} ({len(a)} tokens)")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_entropy_vs_as(
    table: "pd.DataFrame",
    path: Union[str, Path],
    *,
    cfg: Optional[NoiseConfig] = None,
    probe_ids: Optional[Sequence[str]] = None,
    xscale: str = "symlog",
    title: Optional[str] = None,
    dpi: int = 120,
) -> Path:
    """H and H' of every eligible token against its AS (the paper's Fig. 2).

    Each AS range (negative, near-zero, positive, high; boundaries from
    ``cfg``) gets a dashed horizontal segment at the mean H and mean H' of its
    tokens; the near-zero H' segment is the paper's threshold-free line.
    Excluded tokens and tokens with a non-finite AS are left out.

    Parameters
    ----------
    table : pandas.DataFrame
        A token table (one or several probes).
    path : str or Path
        Output file (``.png`` by default).
    cfg : NoiseConfig, optional
        Range boundaries; defaults to ``NoiseConfig()``.
    probe_ids : sequence of str, optional
        Restrict to these probes.
    xscale : {"symlog", "linear"}
    title : str, optional
    dpi : int

    Returns
    -------
    Path
    """
    return _plot_against_as(table, path, _ENTROPY_VS_AS, cfg=cfg, probe_ids=probe_ids, xscale=xscale,
                            title=title, dpi=dpi)


def plot_kl_vs_as(
    table: "pd.DataFrame",
    path: Union[str, Path],
    *,
    cfg: Optional[NoiseConfig] = None,
    probe_ids: Optional[Sequence[str]] = None,
    xscale: str = "symlog",
    title: Optional[str] = None,
    dpi: int = 120,
) -> Path:
    """KL(p' || p) of every eligible token against its AS (the paper's Fig. 4).

    Same layout as :func:`plot_entropy_vs_as` (dashed mean KL per AS range).

    Parameters
    ----------
    table, path, cfg, probe_ids, xscale, title, dpi
        As in :func:`plot_entropy_vs_as`.

    Returns
    -------
    Path
    """
    return _plot_against_as(table, path, _KL_VS_AS, cfg=cfg, probe_ids=probe_ids, xscale=xscale,
                            title=title, dpi=dpi)


def plot_metrics_over_checkpoints(
    history: Sequence[tuple[Union[int, str, None], SetMetrics]],
    path: Union[str, Path],
    metric: Union[str, Sequence[str]] = DEFAULT_GATE_METRIC,
    *,
    title: Optional[str] = None,
    dpi: int = 120,
) -> Path:
    """Set-level metrics across steps or checkpoints, with interval bands.

    Parameters
    ----------
    history : sequence of (step, SetMetrics)
        In the order to plot. Integer steps are placed on a numeric axis;
        otherwise (checkpoint names) evenly, labelled.
    path : str or Path
        Output file (``.png`` by default).
    metric : str or sequence of str
        One or more of :data:`~probattr_monitor.report.definitions.METRIC_NAMES`;
        one panel each.
    title : str, optional
    dpi : int

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        On an unknown metric name.
    """
    names = [metric] if isinstance(metric, str) else list(metric)
    if not names:
        raise ValueError("metric must name at least one metric")
    for name in names:
        if name not in METRIC_NAMES:
            raise ValueError(f"unknown metric {name!r}; known: {METRIC_NAMES}")
    steps = [s for s, _ in history]
    numeric = bool(steps) and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in steps)
    x = np.asarray(steps, dtype=np.float64) if numeric else np.arange(len(steps), dtype=np.float64)
    fig = _figure((8.0, 2.6 * len(names) + 0.6), dpi)
    for k, name in enumerate(names):
        ax = fig.add_subplot(len(names), 1, k + 1)
        vals = np.array([m[name].value for _, m in history], dtype=np.float64)
        low = np.array([m[name].low for _, m in history], dtype=np.float64)
        high = np.array([m[name].high for _, m in history], dtype=np.float64)
        if len(history):
            ci = history[0][1].ci
            ax.fill_between(x, low, high, alpha=0.25, color="#1f77b4", linewidth=0, label=f"{ci:.0%} bootstrap interval")
            ax.plot(x, vals, marker="o", color="#1f77b4", label=name)
            ax.legend(loc="best", fontsize=8)
        else:
            _no_data(ax, "no checkpoints")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if not numeric and len(steps):
            ax.set_xticks(x)
            ax.set_xticklabels(["-" if s is None else str(s) for s in steps], rotation=30, ha="right", fontsize=8)
    fig.axes[-1].set_xlabel("step" if numeric else "checkpoint")
    fig.suptitle(title or "probattr metrics across checkpoints")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_gate_history(
    steps: Sequence[int],
    values: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    path: Union[str, Path],
    *,
    metric: str = DEFAULT_GATE_METRIC,
    best_step: Optional[int] = None,
    dpi: int = 120,
) -> Path:
    """The gate metric against step with its bootstrap interval band, the best step marked.

    Parameters
    ----------
    steps, values, lows, highs : sequences of equal length
        One entry per scoring, in step order.
    path : str or Path
    metric : str
        Axis label.
    best_step : int, optional
        Drawn as a dashed vertical line.
    dpi : int

    Returns
    -------
    Path
    """
    x = np.asarray(steps, dtype=np.float64)
    fig = _figure((8.0, 3.2), dpi)
    ax = fig.add_subplot(1, 1, 1)
    if len(x):
        ax.fill_between(x, np.asarray(lows, dtype=np.float64), np.asarray(highs, dtype=np.float64), alpha=0.25,
                        color="#1f77b4", linewidth=0, label="bootstrap interval")
        ax.plot(x, np.asarray(values, dtype=np.float64), marker="o", color="#1f77b4", label=metric)
        if best_step is not None:
            ax.axvline(float(best_step), color="#d62728", linestyle="--", linewidth=1, label=f"best: step {best_step}")
        ax.legend(loc="best", fontsize=8)
    else:
        _no_data(ax, "no scorings")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.suptitle(f"probattr gate metric {metric} by step")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_noise_heatmap(
    probe_ids: Sequence[str],
    steps: Sequence[int],
    rates: Any,
    path: Union[str, Path],
    *,
    dpi: int = 120,
) -> Path:
    """Per-probe noise rate by step as a heat map (rows: probes, columns: steps; NaN cells blank).

    Parameters
    ----------
    probe_ids : sequence of str
    steps : sequence of int
    rates : array-like, shape (len(probe_ids), len(steps))
    path : str or Path
    dpi : int

    Returns
    -------
    Path
    """
    data = np.asarray(rates, dtype=np.float64).reshape(len(probe_ids), len(steps))
    fig = _figure((max(4.0, 0.5 * len(steps) + 2.5), max(2.5, 0.3 * len(probe_ids) + 1.5)), dpi)
    ax = fig.add_subplot(1, 1, 1)
    if data.size:
        im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, label="noise rate")
        ax.set_xticks(np.arange(len(steps)))
        ax.set_xticklabels([str(s) for s in steps], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(np.arange(len(probe_ids)))
        ax.set_yticklabels([_display(str(p)) for p in probe_ids], fontsize=7)
    else:
        _no_data(ax, "no scorings")
    ax.set_xlabel("step")
    ax.set_ylabel("probe")
    fig.suptitle("probattr noise rate per probe by step")
    fig.tight_layout()
    return _save(fig, path, dpi)
