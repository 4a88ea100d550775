"""The figures every sink attaches to a scoring: shared by the W&B and file sinks."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from probattr_monitor.report import NoiseConfig, Report

logger = logging.getLogger(__name__)

#: How many probes get a "prompt tokens coloured by AS" figure per scoring.
DEFAULT_MAX_TOKEN_PLOTS = 3


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "probe"


def noise_config_of(report: Report) -> NoiseConfig:
    """The noise rule the report was built with (default rule if it does not say)."""
    data = report.meta.get("noise_config")
    if isinstance(data, dict):
        try:
            return NoiseConfig.from_dict(data)
        except (TypeError, ValueError):
            logger.debug("report meta has an unreadable noise_config; plotting with the default rule")
    return NoiseConfig()


def render_plots(report: Report, directory: Path, *, max_token_plots: int = DEFAULT_MAX_TOKEN_PLOTS,
                 html: bool = False) -> dict[str, Path]:
    """Write the report's figures into ``directory``.

    Returns ``name -> path`` with ``entropy_vs_as`` (the paper's Fig. 2),
    ``kl_vs_as`` (Fig. 4) and ``tokens/<probe_id>`` (prompt tokens coloured by
    AS) for the first ``max_token_plots`` probes; with ``html`` also
    ``tokens_html/<probe_id>``. An empty report gives no figures.

    Raises
    ------
    ImportError
        matplotlib is missing (the ``plots`` extra).
    """
    from probattr_monitor.report.html_views import write_tokens_html
    from probattr_monitor.report.plots import plot_entropy_vs_as, plot_kl_vs_as, plot_tokens_by_as

    table: Any = report.table
    if len(table) == 0:
        return {}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = noise_config_of(report)
    step = report.step
    suffix = "" if step is None else f" (step {step})"
    out: dict[str, Path] = {
        "entropy_vs_as": plot_entropy_vs_as(table, directory / "entropy_vs_as.png", cfg=cfg,
                                            title=f"contextual entropy vs AS{suffix}"),
        "kl_vs_as": plot_kl_vs_as(table, directory / "kl_vs_as.png", cfg=cfg, title=f"KL(p'||p) vs AS{suffix}"),
    }
    probe_ids = list(dict.fromkeys(str(p) for p in table["probe_id"].tolist()))
    for pid in probe_ids[: max(0, int(max_token_plots))]:
        name = _safe_name(pid)
        out[f"tokens/{pid}"] = plot_tokens_by_as(table, pid, directory / f"tokens_{name}.png")
        if html:
            out[f"tokens_html/{pid}"] = write_tokens_html(table, pid, directory / f"tokens_{name}.html")
    return out
