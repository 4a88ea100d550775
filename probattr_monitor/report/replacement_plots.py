"""The paper's Fig. 6: replacement entropy and share of original responses against AS.

Drawn from a token table with the replacement columns
(``ScoringConfig(replacement_entropy=True)``); one circle per eligible token, one
colour per decoding, circle area proportional to the number of candidates.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from probattr_monitor.io_utils import atomic_write
from probattr_monitor.report._deps import require_matplotlib

logger = logging.getLogger(__name__)

#: ``(column suffix, label, colour)`` of each decoding drawn.
_DECODINGS = (("greedy", "greedy", "#1f77b4"), ("top_p", "top-p", "#d62728"))


def has_replacement_columns(table: Any) -> bool:
    """True when ``table`` carries replacement values for at least one token."""
    if "replacement_candidates" not in table:
        return False
    return bool((np.asarray(table["replacement_candidates"], dtype=np.int64) > 0).any())


def _plot(table: Any, path: Union[str, Path], stem: str, ylabel: str, title: str, dpi: int) -> Path:
    require_matplotlib()
    from matplotlib.figure import Figure

    if not has_replacement_columns(table):
        raise ValueError("the table has no replacement columns: score with replacement_entropy=True "
                         "(probattr score --replacement-entropy)")
    a = table["attribution"].to_numpy(dtype=np.float64)
    keep = np.isfinite(a) & (table["replacement_candidates"].to_numpy(dtype=np.int64) > 0)
    if "excluded" in table:
        keep &= ~table["excluded"].to_numpy(dtype=bool)
    n = table["replacement_candidates"].to_numpy(dtype=np.float64)
    fig = Figure(figsize=(6.4, 4.2), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    size_scale = 240.0 / max(1.0, float(n[keep].max()) if keep.any() else 1.0)
    for suffix, label, colour in _DECODINGS:
        y = table[f"{stem}_{suffix}"].to_numpy(dtype=np.float64)
        m = keep & np.isfinite(y)
        if m.any():
            ax.scatter(a[m], y[m], s=12 + size_scale * n[m], alpha=0.45, color=colour, edgecolors="k",
                       linewidths=0.4, label=f"{label} ({int(m.sum())} tokens)")
    ax.set_xscale("symlog", linthresh=0.2)
    ax.set_xlabel("attribution score AS (nats)")
    ax.set_ylabel(ylabel)
    ax.set_title(title + " (circle area: number of candidates)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Gg]lyph.*missing.*")
        atomic_write(path, lambda p: fig.savefig(p, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi))
    logger.debug("wrote figure %s", path)
    return path


def plot_replacement_entropy_vs_as(table: Any, path: Union[str, Path], *, title: Optional[str] = None,
                                   dpi: int = 120) -> Path:
    """Replacement entropy (nats) of every eligible token against its AS (the paper's Fig. 6-a).

    Raises
    ------
    ValueError
        The table has no replacement columns.
    ImportError
        matplotlib is missing.
    """
    return _plot(table, path, "replacement_entropy", "replacement entropy (nats)",
                 title or "replacement entropy vs AS", dpi)


def plot_original_share_vs_as(table: Any, path: Union[str, Path], *, title: Optional[str] = None,
                              dpi: int = 120) -> Path:
    """Share of regenerated responses equal to the original against AS (the paper's Fig. 6-b).

    Raises
    ------
    ValueError
        The table has no replacement columns.
    ImportError
        matplotlib is missing.
    """
    return _plot(table, path, "original_share", "share of original responses",
                 title or "share of original responses vs AS", dpi)
