"""Tables, the JSON/CSV export (written atomically) and the paper's Figs. 7-8 of a faithfulness evaluation."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from probattr_monitor.evaluate.metrics import DIRECTIONS
from probattr_monitor.io_utils import atomic_write, atomic_write_text, jsonable

__all__ = ["ARROWS", "rows", "summary_rows", "markdown_table", "read_evaluations", "write_outputs", "write_figures"]

logger = logging.getLogger(__name__)

#: The paper's arrows: up means higher is better.
ARROWS = {"higher": "↑", "lower": "↓"}
_COLUMNS = ("model", "probe", "decoding", "method", *DIRECTIONS)


def rows(model: str, evaluations: Sequence[Any]) -> list:
    """One dict per model x probe x decoding x method, with the four metrics."""
    return [{"model": model, "probe": e.probe_id, "decoding": e.decoding, "method": m.method, **m.scores.to_dict()}
            for e in evaluations for m in e.methods]


def summary_rows(table: Sequence[dict]) -> list:
    """Mean of each metric over probes, and the share of probes where the method is best, per decoding x method."""
    out = []
    keys = sorted({(r["model"], r["decoding"]) for r in table}, key=str)
    for model, decoding in keys:
        part = [r for r in table if r["model"] == model and r["decoding"] == decoding]
        methods = list(dict.fromkeys(r["method"] for r in part))
        probes = list(dict.fromkeys(r["probe"] for r in part))
        for method in methods:
            row: dict = {"model": model, "decoding": decoding, "method": method, "probes": len(probes)}
            for metric, direction in DIRECTIONS.items():
                vals = np.array([r[metric] for r in part if r["method"] == method], dtype=float)
                row[metric] = float(np.nanmean(vals)) if np.any(np.isfinite(vals)) else float("nan")
                wins = 0
                for probe in probes:
                    here = {r["method"]: r[metric] for r in part if r["probe"] == probe}
                    finite = {k: v for k, v in here.items() if math.isfinite(v)}
                    if finite and method in finite:
                        best = (max if direction == "higher" else min)(finite.values())
                        wins += finite[method] == best
                row[f"{metric}_best"] = wins
            out.append(row)
    return out


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(table: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table; metric headers carry their direction arrow."""
    head = [f"{c} {ARROWS[DIRECTIONS[c]]}" if c in DIRECTIONS else c for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in table]
    return "\n".join(lines) + "\n"


def _csv_text(table: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buf.getvalue()


def write_outputs(out: Path, model: str, evaluations: Sequence[Any], meta: dict) -> dict:
    """Write ``faithfulness.json``, ``faithfulness.csv``, ``summary.csv`` and ``faithfulness.md`` atomically."""
    out = Path(out)
    table = rows(model, evaluations)
    summary = summary_rows(table)
    doc = {"meta": meta, "directions": DIRECTIONS, "rows": table, "summary": summary,
           "prompts": [e.to_record() for e in evaluations]}
    sum_cols = ["model", "decoding", "method", "probes", *DIRECTIONS, *(f"{m}_best" for m in DIRECTIONS)]
    written = {
        "json": atomic_write_text(out / "faithfulness.json", json.dumps(jsonable(doc), indent=1, allow_nan=True)),
        "csv": atomic_write_text(out / "faithfulness.csv", _csv_text(table, _COLUMNS)),
        "summary": atomic_write_text(out / "summary.csv", _csv_text(summary, sum_cols)),
        "markdown": atomic_write_text(out / "faithfulness.md", "## Per model, probe and decoding\n\n"
                                      + markdown_table(table, _COLUMNS) + "\n## Mean over probes "
                                      "(`*_best`: probes where the method is best)\n\n"
                                      + markdown_table(summary, sum_cols)),
    }
    return written


def read_evaluations(path: Path) -> tuple:
    """``(meta, evaluations)`` of a ``faithfulness.json`` written by :func:`write_outputs`.

    Raises
    ------
    ValueError
        The file is not valid JSON or not a faithfulness export.
    OSError
        The file cannot be read.
    """
    from probattr_monitor.evaluate.runner import PromptEvaluation

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("meta"), dict) or not isinstance(doc.get("prompts"), list):
        raise ValueError(f"{path} is not a faithfulness export (no 'meta' and 'prompts')")
    return doc["meta"], [PromptEvaluation.from_record(rec) for rec in doc["prompts"]]


def write_figures(out: Path, table: Sequence[dict]) -> list:
    """One PNG per model x decoding: a panel per metric, bars per method over probes (the paper's Figs. 7-8)."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib is not installed: faithfulness figures skipped")
        return []
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    paths = []
    for model, decoding in sorted({(r["model"], r["decoding"]) for r in table}, key=str):
        part = [r for r in table if r["model"] == model and r["decoding"] == decoding]
        methods = list(dict.fromkeys(r["method"] for r in part))
        probes = list(dict.fromkeys(r["probe"] for r in part))
        fig, axes = plt.subplots(1, len(DIRECTIONS), figsize=(4.2 * len(DIRECTIONS), 3.6), squeeze=False)
        width = 0.8 / max(1, len(methods))
        for ax, (metric, direction) in zip(axes[0], DIRECTIONS.items()):
            for i, method in enumerate(methods):
                vals = [next((r[metric] for r in part if r["probe"] == p and r["method"] == method), np.nan)
                        for p in probes]
                ax.bar(np.arange(len(probes)) + i * width, vals, width, label=method)
            ax.set_title(f"{metric} {ARROWS[direction]}")
            ax.set_xticks(np.arange(len(probes)) + 0.4 - width / 2)
            ax.set_xticklabels(probes, rotation=45, ha="right", fontsize=7)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{model}, {decoding} responses (replacement operator)")
        fig.tight_layout()
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{model}_{decoding}")
        path = out / f"faithfulness_{safe}.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
        paths.append(path)
    return paths
