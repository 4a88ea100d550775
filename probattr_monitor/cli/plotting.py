"""Figures written by ``probattr score`` next to the report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def write_score_plots(report: Any, out: Path) -> list[Path]:
    """``tokens.html``, and with matplotlib ``entropy_vs_as.png``, ``kl_vs_as.png``, ``tokens_<probe>.png``.

    The PNGs are those of :func:`probattr_monitor.report.figures.scoring_figures`
    for every probe. A figure that fails is reported as a warning; the report
    itself is already saved.
    """
    from probattr_monitor.report.figures import scoring_figures
    from probattr_monitor.report.html_views import write_tokens_page

    written: list[Path] = []
    if len(report.table) == 0:
        logger.warning("no scored tokens: no plots written")
        return written
    try:
        written.append(write_tokens_page(report, out / "tokens.html"))
    except (ValueError, OSError, KeyError) as exc:
        logger.warning("could not write tokens.html: %s", exc)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.warning("matplotlib is not installed: PNG plots skipped "
                       "(pip install 'probattr-monitor[plots]', or pass --no-plots)")
        return written
    for figure in scoring_figures(report, cfg=report.metrics.config).values():
        try:
            written.append(figure.write(out))
        except (ValueError, OSError, RuntimeError) as exc:
            logger.warning("could not write %s: %s", figure.file_name, exc)
    return written
