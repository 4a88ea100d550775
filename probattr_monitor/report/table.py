"""The per-token score table: one row per (probe, scored position).

:func:`token_columns` flattens scored probes into plain numpy columns (no pandas
needed); :func:`build_token_table` wraps them in a ``pandas.DataFrame`` with a
fixed column order and dtypes. The helpers at the end write and read the table
as CSV, Parquet and JSON records so that it loads back identically (same
columns, dtypes and values, floats bit-exact).

Columns, in order:

``probe_id`` (str), ``step`` (int64, str, or float64 NaN when no step),
``position``, ``token_id`` (int64), ``token_text`` (str, ``""`` when unknown),
``is_special``, ``excluded`` (bool: special or template token),
``attribution``, ``log_numerator``, ``log_denominator``, ``entropy_prompt``,
``entropy_full``, ``kl``, ``surprisal_prompt``, ``surprisal_full`` (float64,
nats; the surprisals are NaN for results without them), ``<score>_se`` (float64, only when a
result carries standard errors), ``as_class`` (str), ``noise`` (bool; always
False for excluded tokens),
``top_prior``, ``top_posterior`` (str: JSON ``[[id, text, prob], ...]``, text
``null`` without a decoder), ``num_candidates`` (int64), and, only when a result
carries a replacement run (``ScoringConfig(replacement_entropy=True)``),
:data:`REPLACEMENT_COLUMNS`: ``replacement_candidates`` (int64),
``replacement_entropy_greedy``, ``original_share_greedy``,
``replacement_entropy_top_p``, ``original_share_top_p`` (float64; NaN for a
probe scored without one).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from probattr_monitor.engine.result import EXPORT_FIELDS
from probattr_monitor.io_utils import atomic_write, atomic_write_text
from probattr_monitor.report._deps import require_pandas, require_pyarrow
from probattr_monitor.report.noise import NoiseConfig, classify, noise_flags, resolve_noise_config

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from probattr_monitor.engine.result import AttributionResult

logger = logging.getLogger(__name__)

Step = Union[int, str, None]

#: Columns before the score columns.
ID_COLUMNS = ("probe_id", "step", "position", "token_id", "token_text", "is_special", "excluded")
#: Per-position scores (nats), the engine's EXPORT_FIELDS.
SCORE_COLUMNS = tuple(EXPORT_FIELDS)
#: Columns after the scores (and their ``_se`` columns).
TAIL_COLUMNS = ("as_class", "noise", "top_prior", "top_posterior", "num_candidates")

#: Columns of a replacement-entropy run (engine/replacement.py), after the others, only when present.
REPLACEMENT_COLUMNS = ("replacement_candidates", "replacement_entropy_greedy", "original_share_greedy",
                       "replacement_entropy_top_p", "original_share_top_p")

_INT_COLUMNS = ("position", "token_id", "num_candidates", "replacement_candidates")
_BOOL_COLUMNS = ("is_special", "excluded", "noise")
_STR_COLUMNS = ("probe_id", "token_text", "as_class", "top_prior", "top_posterior")

#: Column kinds used to restore dtypes on load.
KINDS = ("int", "float", "bool", "str")


def table_columns(se_fields: Sequence[str] = ()) -> list[str]:
    """Column order of a token table whose results carry stderr for ``se_fields``."""
    se = [f"{name}_se" for name in SCORE_COLUMNS if name in set(se_fields)]
    return [*ID_COLUMNS, *SCORE_COLUMNS, *se, *TAIL_COLUMNS]


def _check_step(step: Step) -> Step:
    if step is None or isinstance(step, str):
        return step
    if isinstance(step, (bool, np.bool_)):
        raise TypeError("step must be an int, a str or None, got a bool")
    if isinstance(step, (int, np.integer)):
        return int(step)
    raise TypeError(f"step must be an int, a str or None, got {type(step).__name__}")


def _mask_for(probe_id: str, res: "AttributionResult", template_masks: Optional[Mapping[str, Any]]) -> np.ndarray:
    n = len(res.positions)
    if not template_masks or probe_id not in template_masks:
        return np.zeros(n, dtype=bool)
    mask = np.asarray(template_masks[probe_id])
    if mask.ndim != 1 or (mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer)):
        raise ValueError(f"template mask of probe {probe_id!r} must be a 1-D boolean array")
    mask = mask.astype(bool)
    if mask.shape[0] == n:
        return mask
    n_prompt = len(res.prompt_ids)
    if mask.shape[0] == n_prompt:
        return mask[np.asarray(res.positions, dtype=np.int64)]
    raise ValueError(
        f"template mask of probe {probe_id!r} has length {mask.shape[0]}; expected "
        f"{n} (one per scored position) or {n_prompt} (one per prompt token)"
    )


def _candidates_json(ids: Any, probs: Any, n: int, decode: Optional[Callable[[int], str]]) -> list[str]:
    if ids is None or probs is None:
        return ["[]"] * n
    ids = np.asarray(ids)
    probs = np.asarray(probs, dtype=np.float64)
    if ids.ndim == 1 and n == 0:
        return []
    if ids.shape[0] != n or probs.shape != ids.shape:
        raise ValueError(f"top candidate arrays have shapes {ids.shape} and {probs.shape}; expected ({n}, k)")
    out = []
    cache: dict[int, Optional[str]] = {}
    for row_ids, row_probs in zip(ids.tolist(), probs.tolist()):
        row = []
        for t, p in zip(row_ids, row_probs):
            t = int(t)
            if decode is not None and t not in cache:
                cache[t] = decode(t)
            row.append([t, cache.get(t), p])
        out.append(json.dumps(row, ensure_ascii=False, allow_nan=True))
    return out


def token_columns(
    scored: Sequence[tuple[str, "AttributionResult"]],
    step: Step = None,
    cfg: Optional[NoiseConfig] = None,
    template_masks: Optional[Mapping[str, Any]] = None,
    decode: Optional[Callable[[int], str]] = None,
) -> dict[str, np.ndarray]:
    """The token table as a dict of 1-D numpy arrays (no pandas needed).

    Same parameters and columns as :func:`build_token_table`; string columns
    are object arrays, ``step`` is an int64, object or float64 (NaN) array.
    """
    cfg = resolve_noise_config(cfg)
    step = _check_step(step)
    parts: dict[str, list] = {}
    se_fields: set[str] = set()
    seen: set[str] = set()
    pieces = []
    for item in scored:
        try:
            probe_id, res = item
        except (TypeError, ValueError):
            raise TypeError("scored must be a sequence of (probe_id, AttributionResult) pairs") from None
        if not isinstance(probe_id, str):
            raise TypeError(f"probe id must be a str, got {type(probe_id).__name__}: {probe_id!r}")
        if probe_id in seen:
            raise ValueError(f"duplicate probe id {probe_id!r}")
        seen.add(probe_id)
        n = len(res.positions)
        for name in ("token_ids", *SCORE_COLUMNS):
            arr = np.asarray(getattr(res, name))
            if arr.shape != (n,):
                raise ValueError(f"probe {probe_id!r}: {name} has shape {arr.shape}, expected ({n},)")
        for name, arr in (res.stderr or {}).items():
            if name in SCORE_COLUMNS:
                if np.asarray(arr).shape != (n,):
                    raise ValueError(f"probe {probe_id!r}: stderr[{name!r}] has shape {np.shape(arr)}, expected ({n},)")
                se_fields.add(name)
            else:
                logger.debug("probe %r: stderr entry %r is not a per-position score; not tabulated", probe_id, name)
        pieces.append((probe_id, res, n))

    total = sum(n for _, _, n in pieces)
    cols: dict[str, np.ndarray] = {}
    cols["probe_id"] = np.array([pid for pid, _, n in pieces for _ in range(n)], dtype=object).reshape(total)
    if step is None:
        cols["step"] = np.full(total, np.nan)
    elif isinstance(step, str):
        cols["step"] = np.full(total, step, dtype=object)
    else:
        cols["step"] = np.full(total, step, dtype=np.int64)

    def cat(fn: Callable[[str, Any, int], np.ndarray], dtype: Any) -> np.ndarray:
        if not pieces:
            return np.zeros(0, dtype=dtype)
        return np.concatenate([np.asarray(fn(pid, r, n), dtype=dtype).reshape(n) for pid, r, n in pieces])

    cols["position"] = cat(lambda p, r, n: r.positions, np.int64)
    cols["token_id"] = cat(lambda p, r, n: r.token_ids, np.int64)

    def texts(pid: str, r: Any, n: int) -> list:
        if r.token_texts is not None:
            if len(r.token_texts) != n:
                raise ValueError(f"probe {pid!r}: {len(r.token_texts)} token_texts for {n} positions")
            return ["" if t is None else str(t) for t in r.token_texts]
        if decode is not None:
            return [str(decode(int(t))) for t in np.asarray(r.token_ids)]
        return [""] * n

    cols["token_text"] = cat(texts, object)
    cols["is_special"] = cat(lambda p, r, n: np.zeros(n, bool) if r.is_special is None else r.is_special, bool)
    cols["excluded"] = cols["is_special"] | cat(lambda p, r, n: _mask_for(p, r, template_masks), bool)
    for name in SCORE_COLUMNS:
        cols[name] = cat(lambda p, r, n, name=name: getattr(r, name), np.float64)
    for name in SCORE_COLUMNS:
        if name in se_fields:
            cols[f"{name}_se"] = cat(
                lambda p, r, n, name=name: (r.stderr or {}).get(name, np.full(n, np.nan)), np.float64
            )
    cols["num_candidates"] = cat(lambda p, r, n: np.full(n, int(r.num_candidates)), np.int64)
    cols["as_class"] = classify(cols["attribution"], cfg)
    cols["noise"] = noise_flags(cols["attribution"], cols["entropy_full"], cfg, cols["num_candidates"]) & ~cols["excluded"]
    cols["top_prior"] = cat(lambda p, r, n: _candidates_json(r.top_prior_ids, r.top_prior_probs, n, decode), object)
    cols["top_posterior"] = cat(
        lambda p, r, n: _candidates_json(r.top_posterior_ids, r.top_posterior_probs, n, decode), object
    )
    order = table_columns(se_fields)
    if any("replacement" in (r.info or {}) for _, r, _ in pieces):
        for name in REPLACEMENT_COLUMNS:
            kind = np.int64 if name == "replacement_candidates" else np.float64
            cols[name] = cat(lambda p, r, n, name=name, kind=kind: _replacement_column(p, r, n, name, kind), kind)
        order = [*order, *REPLACEMENT_COLUMNS]
    return {name: cols[name] for name in order}


def _replacement_column(probe_id: str, res: Any, n: int, name: str, kind: Any) -> np.ndarray:
    """One replacement column of a result: its values, or 0 / NaN for a result without a run."""
    run = (res.info or {}).get("replacement")
    if run is None:
        return np.zeros(n, np.int64) if kind is np.int64 else np.full(n, np.nan)
    values = np.asarray(run["columns"][name], dtype=kind)
    if values.shape != (n,):
        raise ValueError(f"probe {probe_id!r}: {name} has shape {values.shape}, expected ({n},)")
    return values


def build_token_table(
    scored: Sequence[tuple[str, "AttributionResult"]],
    step: Step = None,
    cfg: Optional[NoiseConfig] = None,
    template_masks: Optional[Mapping[str, Any]] = None,
    decode: Optional[Callable[[int], str]] = None,
) -> "pd.DataFrame":
    """Per-token score table of a scored probe set.

    Parameters
    ----------
    scored : sequence of (str, AttributionResult)
        Probe id and its engine result, one pair per probe (ids unique).
    step : int, str or None
        Training step or checkpoint name written in every row.
    cfg : NoiseConfig, optional
        Classes and noise rule for ``as_class`` and ``noise``; defaults to
        ``NoiseConfig()``.
    template_masks : mapping of str to array_like of bool, optional
        Per probe id, ``True`` for chat-template tokens to exclude from the
        metrics, either one flag per scored position or one per prompt token
        (indexed by ``positions``). Special tokens (``is_special``) are always
        excluded.
    decode : callable, optional
        ``decode(token_id) -> str``, for token texts a result lacks and for the
        texts of the top replacement candidates.

    Returns
    -------
    pandas.DataFrame
        One row per (probe, scored position), columns as in the module
        docstring, a ``RangeIndex``.

    Raises
    ------
    TypeError
        On a non-str probe id or an invalid step.
    ValueError
        On duplicate probe ids or arrays of the wrong length.
    """
    cols = token_columns(scored, step=step, cfg=cfg, template_masks=template_masks, decode=decode)
    return frame_from_columns(cols)


def frame_from_columns(cols: Mapping[str, Any]) -> "pd.DataFrame":
    """DataFrame with the token-table dtypes from a mapping of columns."""
    pd = require_pandas()
    df = pd.DataFrame({name: np.asarray(v) for name, v in cols.items()})
    kinds = {name: infer_kind(name, np.asarray(v)) for name, v in cols.items()}
    return apply_kinds(df, kinds)


# ----------------------------------------------------------------- dtypes/schema


def _str_dtype() -> Any:
    """pandas' default string dtype (``object`` on pandas 2, ``str`` on pandas 3)."""
    pd = require_pandas()
    return pd.Series(["a"]).dtype


def infer_kind(name: str, values: Any) -> str:
    """Kind (``int``, ``float``, ``bool`` or ``str``) of a token-table column."""
    if name in _INT_COLUMNS:
        return "int"
    if name in _BOOL_COLUMNS:
        return "bool"
    if name in _STR_COLUMNS:
        return "str"
    dt = getattr(values, "dtype", None)
    if dt is None:
        dt = np.asarray(values).dtype
    if dt == bool:
        return "bool"
    try:
        if np.issubdtype(dt, np.integer):
            return "int"
        if np.issubdtype(dt, np.floating):
            return "float"
    except TypeError:  # pandas extension dtypes
        pass
    return "str"


def column_kinds(df: "pd.DataFrame") -> dict[str, str]:
    """``column -> kind`` of a table, the schema saved next to the files."""
    return {str(c): infer_kind(str(c), df[c]) for c in df.columns}


def apply_kinds(df: "pd.DataFrame", kinds: Mapping[str, str]) -> "pd.DataFrame":
    """Cast each column of ``df`` to its kind's dtype; column order follows ``kinds``.

    ``int`` becomes int64, ``float`` float64, ``bool`` bool and ``str``
    pandas' default string dtype. String values read back from text formats
    (``"True"``, ``""`` for NaN...) are converted.
    """
    pd = require_pandas()
    missing = [c for c in kinds if c not in df.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}")
    out = {}
    str_dtype = _str_dtype()
    for name, kind in kinds.items():
        s = df[name]
        if kind == "int":
            if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
                s = s.map(int)
            out[name] = s.astype(np.int64)
        elif kind == "float":
            if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
                s = s.map(lambda v: math.nan if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else float(v))
            out[name] = s.astype(np.float64)
        elif kind == "bool":
            if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
                s = s.map(_to_bool)
            out[name] = s.astype(bool)
        elif kind == "str":
            out[name] = s.astype(object).map(lambda v: "" if v is None else str(v)).astype(str_dtype)
        else:
            raise ValueError(f"unknown column kind {kind!r} for {name!r}")
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def _to_bool(v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if v in ("True", "true", "1", 1):
        return True
    if v in ("False", "false", "0", 0):
        return False
    raise ValueError(f"not a boolean: {v!r}")


def reclassify(table: "pd.DataFrame", cfg: Optional[NoiseConfig] = None) -> "pd.DataFrame":
    """Copy of ``table`` with ``as_class`` and ``noise`` recomputed under ``cfg``."""
    cfg = resolve_noise_config(cfg)
    out = table.copy()
    a = out["attribution"].to_numpy(dtype=np.float64)
    out["as_class"] = classify(a, cfg)
    out["as_class"] = out["as_class"].astype(_str_dtype())
    noise = noise_flags(a, out["entropy_full"].to_numpy(dtype=np.float64), cfg, out["num_candidates"].to_numpy())
    if "excluded" in out:
        noise &= ~out["excluded"].to_numpy(dtype=bool)
    out["noise"] = noise
    return out


def parse_candidates(value: str) -> list[tuple[int, Optional[str], float]]:
    """Parse a ``top_prior``/``top_posterior`` cell into ``(id, text, prob)`` tuples."""
    return [(int(t), txt, float(p)) for t, txt, p in json.loads(value)]


# ------------------------------------------------------------------ file formats


def write_table_csv(df: "pd.DataFrame", path: str | Path, *, atomic: bool = True) -> Path:
    """Write the table as CSV (NaN as an empty field, floats exact); atomically unless ``atomic=False``."""
    text = df.to_csv(index=False, na_rep="", lineterminator="\n")
    if not atomic:
        Path(path).write_text(text, encoding="utf-8")
        return Path(path)
    return atomic_write_text(path, text)


def read_table_csv(path: str | Path, kinds: Mapping[str, str]) -> "pd.DataFrame":
    """Read a table written by :func:`write_table_csv`, restoring ``kinds``."""
    pd = require_pandas()
    df = pd.read_csv(
        path,
        dtype=object,
        keep_default_na=False,
        na_values=[],
        encoding="utf-8",
    )
    return apply_kinds(df, kinds)


def write_table_parquet(df: "pd.DataFrame", path: str | Path, *, atomic: bool = True) -> Path:
    """Write the table as Parquet (needs pyarrow: the ``io`` extra); atomically unless ``atomic=False``."""
    require_pyarrow()
    if not atomic:
        df.to_parquet(path, engine="pyarrow", index=False)
        return Path(path)
    return atomic_write(path, lambda p: df.to_parquet(p, engine="pyarrow", index=False))


def read_table_parquet(path: str | Path, kinds: Mapping[str, str]) -> "pd.DataFrame":
    """Read a table written by :func:`write_table_parquet`, restoring ``kinds``."""
    require_pyarrow()
    pd = require_pandas()
    return apply_kinds(pd.read_parquet(path, engine="pyarrow"), kinds)


def table_records(df: "pd.DataFrame") -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (python scalars; NaN kept as float NaN)."""
    cols = list(df.columns)
    arrays = [df[c].to_numpy(dtype=object) for c in cols]
    records = []
    for i in range(len(df)):
        rec = {}
        for c, arr in zip(cols, arrays):
            v = arr[i]
            if isinstance(v, np.generic):
                v = v.item()
            rec[c] = v
        records.append(rec)
    return records


def table_from_records(records: Sequence[Mapping[str, Any]], kinds: Mapping[str, str]) -> "pd.DataFrame":
    """Inverse of :func:`table_records` (``null`` floats become NaN)."""
    pd = require_pandas()
    cols = {name: [r.get(name) for r in records] for name in kinds}
    df = pd.DataFrame({name: pd.Series(v, dtype=object) for name, v in cols.items()})
    return apply_kinds(df, kinds)
