"""Helpers for writing files: atomic writes and conversion to plain JSON types.

An atomic write never leaves a half-written file for a reader to see;
:func:`replace_files` extends that to a set of files that must change together
(a report's tables and its manifest), and :func:`current_path` is where a
reader finds the current version of one of them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

logger = logging.getLogger(__name__)

#: Prefix of the directory (inside the target directory) where :func:`replace_files` writes.
STAGING_PREFIX = ".probattr-staging-"
#: Name of the directory holding a committed :func:`replace_files` whose files are being moved in.
PENDING_DIR = ".probattr-pending"
#: The plan of a pending update (inside :data:`PENDING_DIR`): the file moved last, the files to remove.
_PLAN_FILE = ".plan.json"


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


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (renames, new files) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def replace_files(
    directory: str | Path,
    writers: Mapping[str, Callable[[Path], None]],
    *,
    last: str,
    remove: Iterable[str] = (),
) -> dict[str, Path]:
    """Replace several files of ``directory`` as one change.

    Every file is first written into a fresh staging directory inside
    ``directory`` (by ``writers[name](path)``, in order, ``last`` called last so
    that it can describe the others, which lie beside its ``path``) and
    fsynced. Renaming the staging directory to :data:`PENDING_DIR` commits the
    change; the files are then moved into place, ``last`` the last of them, and
    the names in ``remove`` deleted before it. A process killed at any instant
    leaves either the old set (an uncommitted staging directory is ignored and
    removed by the next call) or a committed one, which :func:`current_path`
    resolves for readers and the next call finishes first. Other files of the
    directory are never touched.

    Parameters
    ----------
    directory : str or Path
        Created if missing.
    writers : mapping of str to callable
        File name to ``write(path)``; names are plain file names.
    last : str
        The name among ``writers`` moved into place last (a manifest).
    remove : iterable of str
        Names to delete from ``directory`` unless among ``writers``.

    Returns
    -------
    dict of str to Path
        The final path of each written file.

    Raises
    ------
    ValueError
        A name is not a plain file name, or ``last`` is not among ``writers``;
        or an interrupted change found in ``directory`` cannot be finished.
    OSError
        The files cannot be written; the directory is then left as it was.

    Notes
    -----
    Not safe for two processes replacing files of the same directory at once.
    """
    directory = Path(directory)
    names = list(writers)
    removed = [n for n in dict.fromkeys(remove) if n not in writers]
    for name in [*names, *removed]:
        if not name or Path(name).name != name or name in (".", "..") or name.startswith(".probattr-"):
            raise ValueError(f"not a plain file name: {name!r}")
    if last not in writers:
        raise ValueError(f"last={last!r} is not among the files written ({names})")
    directory.mkdir(parents=True, exist_ok=True)
    finish_replace(directory)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=directory))
    try:
        for name in [n for n in names if n != last] + [last]:
            writers[name](staging / name)
            _fsync_file(staging / name)
        (staging / _PLAN_FILE).write_text(json.dumps({"last": last, "remove": removed}), encoding="utf-8")
        _fsync_file(staging / _PLAN_FILE)
        fsync_dir(staging)
        os.rename(staging, directory / PENDING_DIR)  # the commit point
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(directory)
    finish_replace(directory)
    return {name: directory / name for name in names}


def finish_replace(directory: str | Path) -> bool:
    """Finish a :func:`replace_files` interrupted after its commit; remove uncommitted staging.

    Returns
    -------
    bool
        Whether a committed change was found (and is now complete).

    Raises
    ------
    ValueError
        The change's plan is damaged (the message names the directory to remove).
    """
    directory = Path(directory)
    for staging in directory.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(staging, ignore_errors=True)
    pending = directory / PENDING_DIR
    if not pending.is_dir():
        return False
    plan_path = pending / _PLAN_FILE
    try:
        plan = json.loads(plan_path.read_text(encoding="utf-8")) if plan_path.exists() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{plan_path} is damaged ({err}): cannot finish the save interrupted in {directory}; "
            f"remove {pending} to discard it"
        ) from None
    last = plan.get("last")
    for path in sorted(pending.iterdir()):
        if path.name not in (_PLAN_FILE, last):
            os.replace(path, directory / path.name)
    for name in plan.get("remove", ()):
        (directory / name).unlink(missing_ok=True)
    if last and (pending / last).exists():
        fsync_dir(directory)
        os.replace(pending / last, directory / last)
    (pending / _PLAN_FILE).unlink(missing_ok=True)
    pending.rmdir()
    fsync_dir(directory)
    logger.debug("finished replacing files in %s", directory)
    return True


def current_path(directory: str | Path, name: str) -> Path:
    """Where the current version of file ``name`` of ``directory`` is.

    Inside :data:`PENDING_DIR` while a committed :func:`replace_files` has not
    moved it into place yet (its process was killed), else ``directory / name``.
    Reading needs no write access.
    """
    directory = Path(directory)
    pending = directory / PENDING_DIR / name
    return pending if pending.exists() else directory / name


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


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
