"""A report: the per-token table, its metrics and metadata, saved and loaded.

On disk a report is a directory::

    tokens.csv       the token table          (format "csv")
    tokens.parquet   the token table          (format "parquet", needs pyarrow)
    report.json      meta + metrics + records (format "json")
    metrics.json     meta + metrics + flat scalars + the table schema (always)

A save replaces the directory's report as a whole: the files are staged and
committed together, so that a process killed mid-save leaves the old report or
the new one (see :func:`probattr_monitor.io_utils.replace_files`).
``metrics.json``, the manifest, is moved into place last; it lists the saved
formats, holds the column schema that lets each table format load back with
identical dtypes, and records the size and SHA-256 of every table file, which
:meth:`Report.load` checks. Table files of formats the manifest does not list
are removed on save and ignored on load.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from probattr_monitor.io_utils import current_path, file_sha256, jsonable, replace_files
from probattr_monitor.report._deps import require_pandas, require_pyarrow
from probattr_monitor.report.definitions import ATTRIBUTION_SCOPE, PREFIX_SCOPE
from probattr_monitor.report.metrics import compute_metrics
from probattr_monitor.report.noise import NoiseConfig, resolve_noise_config
from probattr_monitor.report.table import (
    Step,
    build_token_table,
    column_kinds,
    read_table_csv,
    read_table_parquet,
    table_from_records,
    table_records,
    write_table_csv,
    write_table_parquet,
)
from probattr_monitor.report.values import SetMetrics

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from probattr_monitor.engine.result import AttributionResult

logger = logging.getLogger(__name__)

#: Identifies report files; bumped on incompatible layout changes.
REPORT_FORMAT = "probattr-monitor/report"
REPORT_VERSION = 1

#: File name of each table format.
TABLE_FILES = {"csv": "tokens.csv", "parquet": "tokens.parquet", "json": "report.json"}
METRICS_FILE = "metrics.json"


def result_scope(results: Sequence["AttributionResult"]) -> str:
    """``"prefix"`` if every result is a gate pass (:func:`~probattr_monitor.engine.prefix.prefix_surprisal`), else ``"attribution"``.

    Raises
    ------
    ValueError
        Gate passes mixed with attribution results: their metrics cannot be pooled.
    """
    from probattr_monitor.engine.prefix import is_prefix_result

    kinds = {is_prefix_result(r) for r in results}
    if kinds == {True, False}:
        raise ValueError("cannot pool gate-pass results (prefix_surprisal) with attribution results in one report")
    return PREFIX_SCOPE if kinds == {True} else ATTRIBUTION_SCOPE


def _dumps(obj: Any) -> str:
    # NaN/Infinity are kept (as Python's json module writes them) so that
    # floats round-trip exactly, like AttributionResult.to_json.
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=True)


def normalize_meta(meta: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """``meta`` converted to plain JSON types (what a saved report loads back as)."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a mapping, got {type(meta).__name__}")
    return json.loads(_dumps(jsonable(meta)))


@dataclass(eq=False)
class Report:
    """Per-token table, metrics and metadata of one probe set at one step.

    Attributes
    ----------
    table : pandas.DataFrame
        See :func:`probattr_monitor.report.table.build_token_table`.
    metrics : SetMetrics
        See :func:`probattr_monitor.report.metrics.compute_metrics`.
    meta : dict
        JSON-ready metadata (step, model name, probe-set name and fingerprint,
        scoring settings, noise config, timestamps); normalised to plain JSON
        types on construction.

    Notes
    -----
    ``==`` compares tables (dtypes and values, NaN equal to NaN), metrics and
    meta.
    """

    table: Any
    metrics: SetMetrics
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.meta = normalize_meta(self.meta)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Report):
            return NotImplemented
        return (
            list(self.table.columns) == list(other.table.columns)
            and bool(self.table.equals(other.table))
            and self.metrics == other.metrics
            and self.meta == other.meta
        )

    @property
    def step(self) -> Step:
        """The report's step (from ``meta["step"]``)."""
        return self.meta.get("step")

    # ------------------------------------------------------------- construction

    @classmethod
    def from_results(
        cls,
        scored: Sequence[tuple[str, "AttributionResult"]],
        *,
        step: Step = None,
        cfg: Optional[NoiseConfig] = None,
        template_masks: Optional[Mapping[str, Any]] = None,
        decode: Optional[Callable[[int], str]] = None,
        n_boot: int = 1000,
        seed: Optional[int] = 0,
        ci: float = 0.95,
        meta: Optional[Mapping[str, Any]] = None,
    ) -> "Report":
        """Build the table and metrics of scored probes.

        Parameters
        ----------
        scored, step, cfg, template_masks, decode
            As in :func:`~probattr_monitor.report.table.build_token_table`.
        n_boot, seed, ci
            As in :func:`~probattr_monitor.report.metrics.compute_metrics`.
        meta : mapping, optional
            Extra metadata (model name, probe-set name and fingerprint,
            scoring settings...); ``step``, ``noise_config``, ``bootstrap``
            and ``created_at`` are added unless given.

        Returns
        -------
        Report
        """
        cfg = resolve_noise_config(cfg)
        scope = result_scope([r for _, r in scored])
        table = build_token_table(scored, step=step, cfg=cfg, template_masks=template_masks, decode=decode)
        metrics = compute_metrics(table, cfg, n_boot=n_boot, seed=seed, ci=ci, scope=scope)
        full = {
            "step": step,
            "noise_config": cfg.to_dict(),
            "bootstrap": {"n_boot": n_boot, "seed": seed, "ci": ci},
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        }
        full.update(dict(meta or {}))
        return cls(table=table, metrics=metrics, meta=full)

    # ------------------------------------------------------------------ saving

    def save(self, directory: str | Path, formats: Sequence[str] = ("csv", "parquet", "json")) -> dict[str, Path]:
        """Write the report to ``directory``, replacing the report there as a whole.

        Every file is written into a staging directory first and the set is
        committed at once (:func:`probattr_monitor.io_utils.replace_files`):
        a process killed at any instant of the save leaves a directory that
        loads as the old report or as this one, never a mix. ``metrics.json``
        records a checksum of every table file, which :meth:`load` verifies.
        Table files of formats not in ``formats`` left by an earlier save are
        removed; other files of the directory (figures...) are kept.

        Parameters
        ----------
        directory : str or Path
            Created if missing.
        formats : sequence of {"csv", "parquet", "json"}
            Table formats to write (``tokens.csv``, ``tokens.parquet``,
            ``report.json``); ``metrics.json`` is always written.

        Returns
        -------
        dict of str to Path
            Written path per format, plus ``"metrics"``.

        Raises
        ------
        ValueError
            On an unknown format.
        ImportError
            For ``"parquet"`` without pyarrow (the ``io`` extra).
        OSError
            The directory cannot be written; the report there is left as it was.
        """
        formats = tuple(dict.fromkeys(formats))
        unknown = [f for f in formats if f not in TABLE_FILES]
        if unknown:
            raise ValueError(f"unknown report formats {unknown}; known: {sorted(TABLE_FILES)}")
        if "parquet" in formats:
            require_pyarrow()
        directory = Path(directory)
        kinds = column_kinds(self.table)
        schema = [[name, kind] for name, kind in kinds.items()]
        header = {"format": REPORT_FORMAT, "version": REPORT_VERSION}
        writers: dict[str, Callable[[Path], None]] = {}
        for fmt in formats:
            if fmt == "csv":
                writers[TABLE_FILES[fmt]] = lambda p: write_table_csv(self.table, p, atomic=False)
            elif fmt == "parquet":
                writers[TABLE_FILES[fmt]] = lambda p: write_table_parquet(self.table, p, atomic=False)
            else:
                payload = {
                    **header,
                    "meta": self.meta,
                    "metrics": self.metrics.to_dict(),
                    "columns": schema,
                    "records": table_records(self.table),
                }
                writers[TABLE_FILES[fmt]] = lambda p: p.write_text(_dumps(payload), encoding="utf-8")

        def write_manifest(path: Path) -> None:
            files = {}
            for fmt in formats:
                staged = path.parent / TABLE_FILES[fmt]
                files[TABLE_FILES[fmt]] = {"sha256": file_sha256(staged), "bytes": staged.stat().st_size}
            manifest = {
                **header,
                "save_id": uuid.uuid4().hex,
                "meta": self.meta,
                "scalars": self.metrics.scalars(),
                "metrics": self.metrics.to_dict(),
                "columns": schema,
                "n_rows": int(len(self.table)),
                "formats": list(formats),
                "files": files,
            }
            path.write_text(_dumps(manifest), encoding="utf-8")

        writers[METRICS_FILE] = write_manifest
        stale = [name for fmt, name in TABLE_FILES.items() if fmt not in formats]
        paths = replace_files(directory, writers, last=METRICS_FILE, remove=stale)
        written = {fmt: paths[TABLE_FILES[fmt]] for fmt in formats}
        written["metrics"] = paths[METRICS_FILE]
        logger.info("saved report (%d rows, formats %s) to %s", len(self.table), list(formats), directory)
        return written

    @classmethod
    def load(cls, directory: str | Path, fmt: Optional[str] = None) -> "Report":
        """Load a report written by :meth:`save`.

        Only the table formats that ``metrics.json`` lists are read (files of
        other formats are ignored), and each is checked against the checksum
        ``metrics.json`` records for it. A save interrupted after its commit
        is read as the new report (nothing is written).

        Parameters
        ----------
        directory : str or Path
        fmt : {"csv", "parquet", "json"}, optional
            Table format to read. By default, of the saved formats whose file
            is there: Parquet if pyarrow is installed, else JSON, else CSV.

        Returns
        -------
        Report
            Equal to the saved one (same table dtypes and values, metrics and
            meta).

        Raises
        ------
        FileNotFoundError
            If the directory holds no report, or not in the requested format.
        ValueError
            On an unknown format, or a file (named in the message) that is not
            a report file, cannot be read, or does not match ``metrics.json``
            (damaged, or from another save).
        """
        directory = Path(directory)
        if fmt is not None and fmt not in TABLE_FILES:
            raise ValueError(f"unknown report format {fmt!r}; known: {sorted(TABLE_FILES)}")
        manifest_path = current_path(directory, METRICS_FILE)
        full_json: Optional[dict[str, Any]] = None
        if manifest_path.exists():
            manifest = _load_json(manifest_path)
            if manifest_path.parent != directory:
                logger.info("%s: reading the report of a save interrupted after its commit", directory)
        else:
            report_json = current_path(directory, TABLE_FILES["json"])
            if not report_json.exists():
                raise FileNotFoundError(f"no report in {directory} (neither {METRICS_FILE} nor report.json)")
            manifest = full_json = _load_json(report_json)
            manifest_path = report_json
        saved = _saved_formats(directory, manifest, manifest_path)
        if fmt is None:
            fmt = _default_format(directory, saved)
        elif fmt not in saved:
            raise FileNotFoundError(
                f"report in {directory} has no {fmt} table ({TABLE_FILES[fmt]}); "
                f"{manifest_path.name} lists {', '.join(saved) or 'none'}"
            )
        path = current_path(directory, TABLE_FILES[fmt])
        if not path.exists():
            raise FileNotFoundError(f"report in {directory} has no {fmt} table: {path} is missing")
        if full_json is None:
            _verify_file(path, manifest, manifest_path)
        try:
            kinds = {str(name): str(kind) for name, kind in manifest["columns"]}
            metrics = SetMetrics.from_dict(manifest["metrics"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{manifest_path} is not a valid report manifest: {type(err).__name__}: {err}") from None
        try:
            if fmt == "csv":
                table = read_table_csv(path, kinds)
            elif fmt == "parquet":
                table = read_table_parquet(path, kinds)
            else:
                payload = full_json if full_json is not None else _load_json(path)
                kinds = {str(name): str(kind) for name, kind in payload["columns"]}
                table = table_from_records(payload["records"], kinds)
        except (ImportError, OSError):
            raise
        except Exception as err:
            raise ValueError(f"cannot read the {fmt} table {path}: {type(err).__name__}: {err}") from None
        _check_consistent(table, metrics, manifest.get("n_rows"), path.name)
        return cls(table=table, metrics=metrics, meta=manifest.get("meta") or {})

    # --------------------------------------------------------------- analysis

    def diff_classes(self, other: "Report") -> "pd.DataFrame":
        """Tokens whose AS class differs between this report (a) and ``other`` (b).

        Tokens are matched on ``(probe_id, position, token_id)``; tokens present
        in only one report are not listed.

        Returns
        -------
        pandas.DataFrame
            Columns ``probe_id, position, token_id, token_text, as_class_a,
            as_class_b, attribution_a, attribution_b, noise_a, noise_b``, sorted
            by probe (in order of this report) and position.
        """
        pd = require_pandas()
        key = ["probe_id", "position", "token_id"]
        cols = ["as_class", "attribution", "noise"]
        a = self.table[key + ["token_text"] + cols]
        b = other.table[key + cols]
        merged = a.merge(b, on=key, how="inner", suffixes=("_a", "_b"), sort=False)
        changed = merged[merged["as_class_a"] != merged["as_class_b"]]
        out = changed[
            key
            + ["token_text", "as_class_a", "as_class_b", "attribution_a", "attribution_b", "noise_a", "noise_b"]
        ]
        return pd.DataFrame(out).reset_index(drop=True)


def _check_consistent(table: Any, metrics: SetMetrics, n_rows: Optional[int], name: str) -> None:
    """Raise if the table and the metrics do not describe the same save."""
    problem = None
    if n_rows is not None and int(n_rows) != len(table):
        problem = f"{name} has {len(table)} rows but {METRICS_FILE} expects {n_rows}"
    elif metrics.per_probe:
        expected = {p.probe_id: p.n_total for p in metrics.per_probe}
        got = dict(Counter(str(v) for v in table["probe_id"].tolist()))
        if got != expected:
            problem = f"the probes of {name} and their token counts differ from the metrics'"
    if problem:
        raise ValueError(f"{problem}: the files come from different saves")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON (damaged or truncated?): {err}") from None
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a report file") from None
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        raise ValueError(f"{path} is not a probattr-monitor report file")
    try:
        version = int(data.get("version", 0))
    except (TypeError, ValueError):
        raise ValueError(f"{path} has an invalid report version {data.get('version')!r}") from None
    if version > REPORT_VERSION:
        raise ValueError(
            f"{path} has report version {data.get('version')}; this probattr-monitor reads up to {REPORT_VERSION}"
        )
    return data


def _saved_formats(directory: Path, manifest: Mapping[str, Any], manifest_path: Path) -> list[str]:
    """The table formats of the save ``manifest`` describes (what exists, for manifests that list none)."""
    listed = manifest.get("formats")
    if manifest_path.name == TABLE_FILES["json"]:
        return ["json"]  # report.json alone holds the whole report
    if listed is None:  # no list recorded: every table file present
        return [f for f, name in TABLE_FILES.items() if current_path(directory, name).exists()]
    if not isinstance(listed, list) or any(f not in TABLE_FILES for f in listed):
        raise ValueError(f"{manifest_path} lists unknown table formats {listed!r}")
    return list(listed)


def _default_format(directory: Path, saved: Sequence[str]) -> str:
    """Of the saved formats whose file is there: Parquet if pyarrow is installed, else JSON, else CSV."""
    present = [f for f in saved if current_path(directory, TABLE_FILES[f]).exists()]
    if "parquet" in present:
        try:
            import pyarrow  # noqa: F401

            return "parquet"
        except ImportError:
            logger.info("pyarrow missing: reading the JSON/CSV table instead of Parquet")
    for fmt in ("json", "csv", "parquet"):  # parquet last: raises the ImportError naming the extra
        if fmt in present:
            return fmt
    if saved:
        missing = ", ".join(TABLE_FILES[f] for f in saved)
        raise FileNotFoundError(f"report in {directory} has no token table: {missing} missing")
    raise FileNotFoundError(f"report in {directory} has no token table")


def _verify_file(path: Path, manifest: Mapping[str, Any], manifest_path: Path) -> None:
    """Raise unless ``path`` is the file ``manifest`` recorded (size and SHA-256); manifests without checksums pass."""
    files = manifest.get("files")
    if files is None:
        return  # written before checksums were recorded
    entry = files.get(path.name) if isinstance(files, Mapping) else None
    if not isinstance(entry, Mapping):
        raise ValueError(f"{manifest_path} records no checksum for {path.name}")
    size = path.stat().st_size
    if entry.get("bytes") != size or entry.get("sha256") != file_sha256(path):
        raise ValueError(
            f"{path} does not match {manifest_path} ({size} bytes, {entry.get('bytes')} recorded; checksum "
            f"differs): the file is damaged or comes from another save"
        )
