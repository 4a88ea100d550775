"""Figures written by ``probattr score`` next to the report."""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def safe_name(text: str) -> str:
    """``text`` reduced to a file-name-safe form."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "probe"


def write_tokens_page(report: Any, path: Path) -> Path:
    """One HTML page with every probe's tokens coloured by AS (no matplotlib needed)."""
    from probattr_monitor.io_utils import atomic_write_text
    from probattr_monitor.report.html_views import tokens_html

    table = report.table
    probes = list(dict.fromkeys(str(p) for p in table["probe_id"].tolist()))
    title = html.escape(f"probattr: prompt tokens by attribution score (step {report.step})")
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head><body>",
             f"<h2>{title}</h2>"]
    responses = report.meta.get("responses") or {}
    for pid in probes:
        parts.append(f"<h3>{html.escape(pid)}</h3>")
        parts.append(tokens_html(table, pid))
        if pid in responses:
            parts.append(f"<p><b>response:</b> <code>{html.escape(str(responses[pid]))}</code></p>")
    parts.append("</body></html>\n")
    return atomic_write_text(path, "\n".join(parts))


def write_score_plots(report: Any, out: Path) -> list[Path]:
    """``tokens.html``, and with matplotlib ``entropy_vs_as.png``, ``kl_vs_as.png``, ``tokens_<probe>.png``.

    A figure that fails is reported as a warning; the report itself is already saved.
    """
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
    from probattr_monitor.report.plots import plot_entropy_vs_as, plot_kl_vs_as, plot_tokens_by_as

    cfg = report.metrics.config
    jobs = [("entropy_vs_as.png", lambda p: plot_entropy_vs_as(report.table, p, cfg=cfg)),
            ("kl_vs_as.png", lambda p: plot_kl_vs_as(report.table, p, cfg=cfg))]
    used: set = set()
    for pid in dict.fromkeys(str(p) for p in report.table["probe_id"].tolist()):
        name = safe_name(pid)
        while name in used:
            name += "_"
        used.add(name)
        jobs.append((f"tokens_{name}.png", lambda p, pid=pid: plot_tokens_by_as(report.table, pid, p)))
    for filename, job in jobs:
        try:
            written.append(job(out / filename))
        except (ValueError, OSError, RuntimeError) as exc:
            logger.warning("could not write %s: %s", filename, exc)
    return written
