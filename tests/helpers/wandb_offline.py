"""Read an offline W&B run directory back from disk.

An offline run writes ``run-<id>.wandb``, a LevelDB-style log of W&B's own
protobuf ``Record`` messages: a 7-byte file header, then 32 KiB blocks of
records, each with a 7-byte header (CRC, length, kind: full, or the first,
middle and last pieces of a record split across blocks), a block's tail
padded with zeros. ``wandb.finish()`` can return before the ``wandb-core``
service has written the last records (seen with wandb 0.31 on a busy machine),
so every reader here waits until the log ends with its ``exit`` record.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "finished_records",
    "load_wandb_table",
    "read_records",
    "read_wandb_records",
    "wandb_artifacts",
    "wandb_config",
    "wandb_history",
    "wandb_metric_defs",
    "wandb_run_dir",
    "wandb_summary",
]

_BLOCK = 32768
_HEADER = 7  # file: ":W&B" + 2-byte magic + 1-byte version; record: crc (4) + length (2) + kind (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_TIMEOUT_S = 60.0


def _log_file(run_dir: Path) -> Path:
    paths = sorted(Path(run_dir).glob("run-*.wandb"))
    if len(paths) != 1:
        raise ValueError(f"expected one run-*.wandb file in {run_dir}, found {paths}")
    return paths[0]


def read_records(run_dir: Path) -> Iterator[Any]:
    """Every complete protobuf ``Record`` of the run's log, in order, as it is on disk now.

    Raises
    ------
    ValueError
        No single ``run-*.wandb`` file, or not a W&B transaction log (yet).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = _log_file(run_dir).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{run_dir} holds no W&B transaction log")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # too little room for a header: the rest of the block is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        if pos + _HEADER + length > len(data):  # a record still being written
            return
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(chunk if kind == _FULL else pending + chunk)
            pending = b""
            yield record


def finished_records(run_dir: Path, timeout: float = _TIMEOUT_S) -> list:
    """Every record of the run, once its log ends with the ``exit`` record.

    Raises
    ------
    AssertionError
        The run was not completely written within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(read_records(run_dir))
        except (ValueError, OSError):  # no log yet
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"the W&B run in {run_dir} was not completely written within {timeout} s")
        time.sleep(0.2)


def wandb_run_dir(wandb_dir: Path, *, timeout: float = _TIMEOUT_S) -> Path:
    """The single ``offline-run-*`` directory under ``wandb_dir/wandb``, once fully written."""
    runs = sorted((Path(wandb_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {wandb_dir}, found {runs}"
    finished_records(runs[0], timeout)
    return runs[0]


def _item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_wandb_records(run_dir: Path, timeout: float = _TIMEOUT_S) -> dict[str, Any]:
    """What the finished run logged.

    Returns
    -------
    dict
        ``history``: one dict per logged row (nested keys joined with ``/``,
        values JSON-decoded); ``config``: ``wandb.init(config=...)`` then every
        later update; ``metrics``: one dict per ``define_metric`` record, with
        ``name``, ``glob_name``, ``step_metric`` and ``step_sync``.
    """
    out: dict[str, Any] = {"history": [], "config": {}, "metrics": []}
    for rec in finished_records(run_dir, timeout):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({_item_key(it): json.loads(it.value_json) for it in rec.history.item})
        elif kind in ("config", "run"):  # the run record carries wandb.init(config=...)
            updates = rec.config.update if kind == "config" else rec.run.config.update
            for it in updates:
                out["config"][_item_key(it)] = json.loads(it.value_json)
        elif kind == "metric":
            m = rec.metric
            out["metrics"].append({"name": m.name, "glob_name": m.glob_name, "step_metric": m.step_metric,
                                   "step_sync": m.options.step_sync})
    return out


def wandb_history(run_dir: Path) -> list[dict]:
    """The ``history`` rows of :func:`read_wandb_records`."""
    return read_wandb_records(run_dir)["history"]


def wandb_config(run_dir: Path) -> dict:
    """The run ``config`` of :func:`read_wandb_records`."""
    return read_wandb_records(run_dir)["config"]


def wandb_metric_defs(run_dir: Path) -> list[dict]:
    """``define_metric`` records as ``name``, ``glob`` and ``step_metric``."""
    return [{"name": m["name"], "glob": m["glob_name"], "step_metric": m["step_metric"]}
            for m in read_wandb_records(run_dir)["metrics"]]


def load_wandb_table(run_dir: Path, row: dict, key: str) -> dict:
    """The ``.table.json`` a history row points to (``{"columns": [...], "data": [[...]]}``)."""
    path = Path(run_dir) / "files" / row[f"{key}/path"]
    return json.loads(path.read_text(encoding="utf-8"))


def wandb_summary(run_dir: Path, timeout: float = _TIMEOUT_S) -> dict[str, Any]:
    """The run summary as its ``summary`` records leave it (later updates win; nested keys joined with ``/``)."""
    out: dict[str, Any] = {}
    for rec in finished_records(run_dir, timeout):
        if rec.WhichOneof("record_type") == "summary":
            for it in rec.summary.update:
                out[_item_key(it)] = json.loads(it.value_json)
    return out


def wandb_artifacts(run_dir: Path, timeout: float = _TIMEOUT_S) -> list[dict]:
    """Every ``log_artifact`` record: ``name``, ``type`` and the manifest's entry paths."""
    out = []
    for rec in finished_records(run_dir, timeout):
        if rec.WhichOneof("record_type") == "artifact":
            a = rec.artifact
            out.append({"name": a.name, "type": a.type, "entries": [e.path for e in a.manifest.contents],
                        "local_paths": [e.local_path for e in a.manifest.contents]})
    return out
