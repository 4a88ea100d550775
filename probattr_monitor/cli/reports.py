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

    Every directory is checked before anything is printed: one that cannot be
    read is an error naming the directory, the file where that can be told,
    and the cause -- never a traceback, and never a checkpoint that merely
    fails a gate.

    Raises
    ------
    CLIError
        A directory is missing or holds no readable, consistent report (exit
        status 3).
    """
    from probattr_monitor.report import Report

    out = []
    for d in directories:
        if not Path(d).is_dir():
            raise CLIError(f"not a directory: {d} (give directories written by 'probattr score')")
        try:
            report = Report.load(d)
        except Exception as exc:  # noqa: BLE001 -- a corrupted file can fail in any library's way
            raise CLIError(f"cannot read the report in {d}: {describe_load_error(Path(d), exc)}") from None
        out.append(ScoredCheckpoint(d, report))
    return out


def describe_load_error(directory: Path, exc: BaseException) -> str:
    """The cause of a failed :meth:`Report.load`, naming the file when the error does not.

    Errors of the report reader name their file; those of the JSON, CSV and
    Parquet libraries often do not. For those, a report JSON file of
    ``directory`` that does not parse is named as the culprit.
    """
    from probattr_monitor.report.report import METRICS_FILE, TABLE_FILES

    if isinstance(exc, RecursionError):
        text = "nested too deeply to be a report (maximum recursion depth exceeded while reading it)"
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        expected = (FileNotFoundError, ValueError, KeyError, OSError, ImportError)
        if not text or not isinstance(exc, expected) or isinstance(exc, UnicodeDecodeError):
            text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    names = (METRICS_FILE, *TABLE_FILES.values())
    if any(name in text for name in names):
        return text
    culprit = _unparsable_json(directory, (METRICS_FILE, TABLE_FILES["json"]))
    if culprit is not None:
        return f"{culprit}: {text}"
    return f"{text} (while reading {directory / METRICS_FILE} and its token table)"


def _unparsable_json(directory: Path, names: tuple) -> Any:
    """The first of ``names`` in ``directory`` that exists and is not valid JSON, or ``None``."""
    for name in names:
        path = directory / name
        if not path.is_file():
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError, OSError):
            return path
    return None


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
