"""Reading saved report directories and formatting their metrics (``compare``, ``select``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probattr_monitor.cli.errors import CLIError


@dataclass
class ScoredCheckpoint:
    """A report directory given on the command line."""

    directory: str
    report: Any

    @property
    def step(self) -> Any:
        return self.report.step

    @property
    def label(self) -> str:
        """The step if recorded, else the directory name."""
        step = self.report.step
        return str(step) if step is not None else (Path(self.directory).resolve().name or self.directory)

    @property
    def fingerprint(self) -> Any:
        return (self.report.meta.get("probes") or {}).get("fingerprint")


def load_scored(directories: list) -> list:
    """Load every directory's report.

    Raises
    ------
    CLIError
        A directory is missing or holds no readable report.
    """
    from probattr_monitor.report import Report

    out = []
    for d in directories:
        if not Path(d).is_dir():
            raise CLIError(f"not a directory: {d} (give directories written by 'probattr score')")
        try:
            out.append(ScoredCheckpoint(d, Report.load(d)))
        except (FileNotFoundError, ValueError, KeyError, ImportError, json.JSONDecodeError) as exc:
            raise CLIError(f"cannot read the report in {d}: {exc}") from None
    return out


def unique_labels(items: list) -> list:
    """Column labels, made unique by appending the directory where steps repeat."""
    labels = [c.label for c in items]
    return [f"{lab} ({c.directory})" if labels.count(lab) > 1 else lab for lab, c in zip(labels, items)]


def fmt_value(mv: Any, digits: int = 4) -> str:
    """``value [low, high]`` of a MetricValue."""
    def f(x: float) -> str:
        return "nan" if x is None or math.isnan(x) else f"{x:.{digits}f}"

    if math.isnan(mv.low) and math.isnan(mv.high):
        return f(mv.value)
    return f"{f(mv.value)} [{f(mv.low)}, {f(mv.high)}]"


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return jsonable(obj.item())
    return obj


def dumps(obj: Any) -> str:
    """Strict, indented JSON of ``obj``."""
    return json.dumps(jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)


def table(rows: list, header: list) -> str:
    """A plain left-aligned text table."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
