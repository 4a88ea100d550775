"""Which figures one scoring gets, and the names of their files.

:func:`scoring_figures` lists them, ``name -> ScoringFigure``: H and H' against
AS (``entropy_vs_as``), KL against AS (``kl_vs_as``), then the prompt tokens of
each probe coloured by AS (``tokens/<probe_id>``, and ``tokens_html/<probe_id>``
as HTML on request). The file and W&B sinks write them all with
:func:`render_plots`; ``probattr score`` writes them one by one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from probattr_monitor.report.html_views import write_tokens_html
from probattr_monitor.report.noise import NoiseConfig
from probattr_monitor.report.plots import plot_entropy_vs_as, plot_kl_vs_as, plot_tokens_by_as
from probattr_monitor.report.replacement_plots import (
    has_replacement_columns,
    plot_original_share_vs_as,
    plot_replacement_entropy_vs_as,
)
from probattr_monitor.report.report import Report

logger = logging.getLogger(__name__)

#: How many probes get a "prompt tokens coloured by AS" figure per scoring in the sinks.
DEFAULT_MAX_TOKEN_PLOTS = 3


def safe_file_stem(text: str) -> str:
    """``text`` reduced to a file-name-safe stem.

    Runs of characters other than ASCII letters, digits, ``.``, ``_`` and ``-``
    become ``_``; leading and trailing ``.`` and ``_`` are stripped; an empty
    result becomes ``"probe"``.

    Example
    -------
    >>> safe_file_stem("capital of France?")
    'capital_of_France'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "probe"


def noise_config_of(report: Report) -> NoiseConfig:
    """The noise rule the report was built with (default rule if it does not say)."""
    data = report.meta.get("noise_config")
    if isinstance(data, dict):
        try:
            return NoiseConfig.from_dict(data)
        except (TypeError, ValueError):
            logger.debug("report meta has an unreadable noise_config; plotting with the default rule")
    return NoiseConfig()


@dataclass(frozen=True)
class ScoringFigure:
    """One figure of a scoring: its file name and how to draw it.

    Attributes
    ----------
    file_name : str
        Name of the file inside the output directory.
    draw : callable
        ``draw(path) -> path`` writes the figure to ``path`` (atomically).
    """

    file_name: str
    draw: Callable[[Path], Path]

    def write(self, directory: Union[str, Path]) -> Path:
        """Draw the figure into ``directory``; returns its path."""
        return self.draw(Path(directory) / self.file_name)


def scoring_figures(
    report: Report,
    *,
    cfg: Optional[NoiseConfig] = None,
    max_token_plots: Optional[int] = None,
    html: bool = False,
    step_titles: bool = False,
) -> dict[str, ScoringFigure]:
    """The figures of one scoring, in drawing order; nothing is drawn yet.

    Parameters
    ----------
    report : Report
    cfg : NoiseConfig, optional
        AS range boundaries of the scatter plots; default: the rule recorded
        in the report's meta (:func:`noise_config_of`).
    max_token_plots : int, optional
        Token figures for the first this many probes only (default: all).
    html : bool
        Also an HTML token view per probe (``tokens_html/<probe_id>``).
    step_titles : bool
        Title the scatter plots with the report's step instead of the default
        titles (which count the tokens drawn).

    Returns
    -------
    dict of str to ScoringFigure
        ``entropy_vs_as`` (``entropy_vs_as.png``), ``kl_vs_as``
        (``kl_vs_as.png``), for a table with replacement columns
        ``replacement_entropy_vs_as`` and ``original_share_vs_as`` (the paper's
        Fig. 6, ``<name>.png``), ``tokens/<probe_id>`` (``tokens_<stem>.png``) and
        with ``html`` ``tokens_html/<probe_id>`` (``tokens_<stem>.html``), where
        ``<stem>`` is :func:`safe_file_stem` of the probe id, with ``_``
        appended until it is unique. Empty for a report without tokens, and
        for a gate scoring's (``report.metrics.gate_scoring``: no AS to draw).
    """
    table = report.table
    if len(table) == 0 or report.metrics.gate_scoring:
        return {}
    cfg = noise_config_of(report) if cfg is None else cfg
    entropy_title = kl_title = None
    if step_titles:
        suffix = "" if report.step is None else f" (step {report.step})"
        entropy_title, kl_title = f"contextual entropy vs AS{suffix}", f"KL(p'||p) vs AS{suffix}"
    figures = {
        "entropy_vs_as": ScoringFigure(
            "entropy_vs_as.png", lambda p: plot_entropy_vs_as(table, p, cfg=cfg, title=entropy_title)
        ),
        "kl_vs_as": ScoringFigure("kl_vs_as.png", lambda p: plot_kl_vs_as(table, p, cfg=cfg, title=kl_title)),
    }
    if has_replacement_columns(table):
        figures["replacement_entropy_vs_as"] = ScoringFigure(
            "replacement_entropy_vs_as.png", lambda p: plot_replacement_entropy_vs_as(table, p))
        figures["original_share_vs_as"] = ScoringFigure(
            "original_share_vs_as.png", lambda p: plot_original_share_vs_as(table, p))
    probe_ids = list(dict.fromkeys(str(p) for p in table["probe_id"].tolist()))
    if max_token_plots is not None:
        probe_ids = probe_ids[: max(0, int(max_token_plots))]
    used: set[str] = set()
    for pid in probe_ids:
        stem = safe_file_stem(pid)
        while stem in used:
            stem += "_"
        used.add(stem)
        figures[f"tokens/{pid}"] = ScoringFigure(
            f"tokens_{stem}.png", lambda p, pid=pid: plot_tokens_by_as(table, pid, p)
        )
        if html:
            figures[f"tokens_html/{pid}"] = ScoringFigure(
                f"tokens_{stem}.html", lambda p, pid=pid: write_tokens_html(table, pid, p)
            )
    return figures


def render_plots(
    report: Report,
    directory: Union[str, Path],
    *,
    max_token_plots: int = DEFAULT_MAX_TOKEN_PLOTS,
    html: bool = False,
) -> dict[str, Path]:
    """Write the sinks' figures of ``report`` into ``directory``.

    The figures of :func:`scoring_figures` with step titles and the report's
    own noise rule, token figures for the first ``max_token_plots`` probes.

    Returns
    -------
    dict of str to Path
        ``name -> path``; empty for a report without tokens.

    Raises
    ------
    ImportError
        matplotlib is missing (the ``plots`` extra).
    """
    figures = scoring_figures(report, max_token_plots=max_token_plots, html=html, step_titles=True)
    if not figures:
        return {}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {name: figure.write(directory) for name, figure in figures.items()}
