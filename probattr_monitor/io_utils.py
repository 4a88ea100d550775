"""Helpers for writing files: atomic writes and conversion to plain JSON types.

An atomic write never leaves a half-written file for a reader to see.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically.

    ``write`` receives a temporary path in the same directory; once it returns,
    the file is fsynced and renamed over ``path``. On error the temporary file is
    removed and ``path`` is left as it was.

    Parameters
    ----------
    path : str or Path
        Destination. Its parent directory is created if missing.
    write : callable
        ``write(tmp_path)`` produces the file's content at ``tmp_path``.

    Returns
    -------
    Path
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_bytes(data))


def jsonable(value: Any) -> Any:
    """``value`` converted to plain JSON types, recursively.

    Mappings become dicts with str keys; lists, tuples and sets become lists;
    numpy arrays and scalars their Python values; paths and dates strings (ISO
    8601 for dates); an object with ``to_dict()`` its dict; anything else its
    ``str``. Non-finite floats are kept (``json.dumps(allow_nan=True)`` writes
    them).

    Example
    -------
    >>> jsonable({"n": np.int64(3), "ids": np.arange(2), "tags": ("a",)})
    {'n': 3, 'ids': [0, 1], 'tags': ['a']}
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_dict"):
        return jsonable(value.to_dict())
    return str(value)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
