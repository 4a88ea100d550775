"""What the HTML and PNG views of a probe's tokens share.

The diverging AS palette (blue negative, white near zero, red positive; grey
for excluded tokens), its default saturation, and the rows of one probe in
position order (:func:`probe_tokens`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

# ColorBrewer RdBu end points.
NEG_RGB = (33, 102, 172)
MID_RGB = (247, 247, 247)
POS_RGB = (178, 24, 43)
EXCLUDED_BG = "#d9d9d9"
EXCLUDED_FG = "#737373"

#: Colour saturation of the token views: ``|AS|`` at or above this is fully coloured
#: (the paper's "high" boundary); the default scale adapts below it.
DEFAULT_VMAX = 3.0


def as_rgb(value: float, vmax: float) -> tuple[int, int, int]:
    """RGB (0-255) of an AS value on the diverging scale ``[-vmax, vmax]``."""
    if not math.isfinite(value):
        return (200, 200, 200)
    t = max(-1.0, min(1.0, value / vmax)) if vmax > 0 else 0.0
    end = POS_RGB if t >= 0 else NEG_RGB
    t = abs(t)
    return tuple(int(round(m + (e - m) * t)) for m, e in zip(MID_RGB, end))  # type: ignore[return-value]


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _text_on(rgb: Sequence[int]) -> str:
    lum = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255.0
    return "#000000" if lum > 0.55 else "#ffffff"


def token_colours(attribution: float, excluded: bool, vmax: float) -> tuple[str, str]:
    """``(background, text)`` hex colours of one token."""
    if excluded:
        return EXCLUDED_BG, EXCLUDED_FG
    rgb = as_rgb(float(attribution), vmax)
    return _hex(rgb), _text_on(rgb)


def _default_vmax(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    if finite.size == 0:
        return 1.0
    return float(min(max(finite.max(), 0.5), DEFAULT_VMAX))


@dataclass(frozen=True)
class ProbeTokens:
    """The rows of one probe, sorted by position, with what colours them.

    Attributes
    ----------
    rows : pandas.DataFrame
    attribution : numpy.ndarray
        AS per row (float64).
    excluded : numpy.ndarray
        Excluded (special or template) flag per row.
    vmax : float
        ``|AS|`` of full saturation.
    """

    rows: Any
    attribution: np.ndarray
    excluded: np.ndarray
    vmax: float


def probe_tokens(table: "pd.DataFrame", probe_id: str, vmax: Optional[float] = None) -> ProbeTokens:
    """The tokens of ``probe_id`` in position order.

    Parameters
    ----------
    table : pandas.DataFrame
        A token table.
    probe_id : str
    vmax : float, optional
        ``|AS|`` of full saturation; default ``clip(max |AS|, 0.5, 3)`` over the
        non-excluded tokens.

    Raises
    ------
    ValueError
        If ``probe_id`` is not in the table.
    """
    rows = table[table["probe_id"] == probe_id]
    if len(rows) == 0:
        raise ValueError(f"probe {probe_id!r} is not in the table")
    rows = rows.sort_values("position", kind="stable")
    a = rows["attribution"].to_numpy(dtype=np.float64)
    excluded = rows["excluded"].to_numpy(dtype=bool) if "excluded" in rows else np.zeros(len(rows), bool)
    vmax = _default_vmax(a[~excluded]) if vmax is None else float(vmax)
    return ProbeTokens(rows, a, excluded, vmax)
