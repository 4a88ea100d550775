"""HTML views of a probe's tokens coloured by AS (no matplotlib needed).

:func:`tokens_html` renders one probe as an HTML fragment or page, each token
with a tooltip of its scores; :func:`tokens_page` puts every probe of a report
on one page. Files are written atomically.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from probattr_monitor.io_utils import atomic_write_text
from probattr_monitor.report.token_view import probe_tokens, token_colours

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def tokens_html(
    table: "pd.DataFrame",
    probe_id: str,
    *,
    vmax: Optional[float] = None,
    full_document: bool = False,
) -> str:
    """Prompt tokens of one probe as HTML, each coloured by its AS.

    Each token is a ``<span>`` with inline styles (diverging colour: blue
    negative, white near zero, red positive) and a ``title`` tooltip with AS,
    H, H', KL, class and noise flag. Excluded tokens are grey; noise tokens
    get a dashed outline. Needs no matplotlib.

    Parameters
    ----------
    table : pandas.DataFrame
        A token table (:func:`~probattr_monitor.report.table.build_token_table`).
    probe_id : str
    vmax : float, optional
        ``|AS|`` of full saturation; default ``clip(max |AS|, 0.5, 3)``.
    full_document : bool
        Return a complete ``<!DOCTYPE html>`` page instead of a ``<div>``.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If ``probe_id`` is not in the table.
    """
    view = probe_tokens(table, probe_id, vmax)
    rows, excluded, vmax = view.rows, view.excluded, view.vmax
    spans = []
    for i, r in enumerate(rows.itertuples(index=False)):
        text = str(r.token_text)
        tip = (
            f"position {r.position} | token {r.token_id}\n"
            f"AS = {r.attribution:.4f}\nH = {r.entropy_prompt:.4f}\nH' = {r.entropy_full:.4f}\n"
            f"KL = {r.kl:.4f}\nclass: {r.as_class}" + (" | noise token" if bool(r.noise) else "")
            + (" | excluded" if excluded[i] else "")
        )
        bg, fg = token_colours(r.attribution, excluded[i], vmax)
        style = f"background-color:{bg};color:{fg};" + ("font-style:italic;" if excluded[i] else "")
        if bool(r.noise) and not excluded[i]:
            style += "outline:1px dashed #000000;"
        style += "padding:1px 0;border-radius:2px;"
        shown = html.escape(text.replace("\r", "").replace("\n", "\u21b5") if text else "\u2205")
        span = f'<span class="probattr-token" style="{style}" title="{html.escape(tip, quote=True)}">{shown}</span>'
        if "\n" in text:
            span += "<br>"
        spans.append(span)
    legend = (
        f'<div style="font-size:0.8em;color:#555;margin-top:0.5em;">'
        f"AS colour scale: blue &lt; 0 &lt; red, saturated at |AS| = {vmax:.3g}; "
        f"grey: excluded (special/template); dashed outline: noise token</div>"
    )
    body = (
        f'<div class="probattr-probe" data-probe-id="{html.escape(str(probe_id), quote=True)}" '
        f'style="font-family:monospace;white-space:pre-wrap;line-height:1.8;">'
        + "".join(spans)
        + "</div>"
        + legend
    )
    if not full_document:
        return body
    title = html.escape(f"probe {probe_id}: tokens by attribution score")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{title}</title></head><body><h3>{title}</h3>{body}</body></html>\n"
    )


def write_tokens_html(table: "pd.DataFrame", probe_id: str, path: Union[str, Path], *, vmax: Optional[float] = None) -> Path:
    """Write :func:`tokens_html` as a full HTML page, atomically; returns the path."""
    return atomic_write_text(path, tokens_html(table, probe_id, vmax=vmax, full_document=True))


def tokens_page(report: Any) -> str:
    """Every probe of ``report`` on one HTML page, with its response when the meta records it.

    Parameters
    ----------
    report : Report
        Its ``meta["responses"]`` (probe id to response text), when present,
        adds each probe's response under its tokens.

    Returns
    -------
    str
        A complete ``<!DOCTYPE html>`` page.
    """
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
    return "\n".join(parts)


def write_tokens_page(report: Any, path: Union[str, Path]) -> Path:
    """Write :func:`tokens_page` atomically; returns the path."""
    return atomic_write_text(path, tokens_page(report))
