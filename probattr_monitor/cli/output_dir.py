"""``score --out DIR``: make sure the report can be written before any scoring starts.

Scoring a checkpoint takes minutes; finding out only then that ``DIR`` cannot
be written loses them. :func:`prepare_output_dir` creates the directory and
writes (and removes) a small file in it, the way the report files are written;
:func:`discard_if_unused` removes a directory it created when the command
fails before writing anything.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

from probattr_monitor.cli.errors import CLIError

logger = logging.getLogger(__name__)

__all__ = ["prepare_output_dir", "discard_if_unused"]


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _file_above(out: Path) -> Optional[Path]:
    """The nearest existing ancestor of ``out`` that is not a directory, if any."""
    for parent in out.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _first_missing(out: Path) -> Optional[Path]:
    """The top-most directory that creating ``out`` will create (``out`` itself or a missing parent)."""
    if out.exists():
        return None
    top = out
    for parent in out.parents:
        if parent.exists():
            break
        top = parent
    return top


def _write_check(out: Path, option: str) -> None:
    """Create, write, fsync and remove a hidden file in ``out``, as the report writer's temporary files are."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".probattr-write-check-", suffix=".tmp", dir=out)
    except OSError as exc:
        raise CLIError(f"{option} {out}: the directory is not writable: {_reason(exc)}") from None
    try:
        os.write(fd, b"probattr")
        os.fsync(fd)
    except OSError as exc:
        raise CLIError(f"{option} {out}: cannot write a file in the directory: {_reason(exc)}") from None
    finally:
        os.close(fd)
        Path(probe).unlink(missing_ok=True)


def prepare_output_dir(out: Path, option: str = "--out") -> Optional[Path]:
    """Create ``out`` if missing and check that files can be created in it.

    Parameters
    ----------
    out : Path
        The output directory.
    option : str
        The option named in messages.

    Returns
    -------
    Path or None
        The top-most directory this call created (``out`` or its first missing
        parent), for :func:`discard_if_unused`; ``None`` if ``out`` existed.

    Raises
    ------
    CLIError
        ``out`` is an existing file, lies under a file, cannot be created, or a
        file cannot be written in it. The message names the path and the cause.
    """
    if out.exists() and not out.is_dir():
        raise CLIError(f"{option} {out} exists and is not a directory")
    created = _first_missing(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = _file_above(out)
        where = f" ({blocker} is a file, not a directory)" if blocker is not None else ""
        raise CLIError(f"{option} {out}: cannot create the directory: {_reason(exc)}{where}") from None
    try:
        _write_check(out, option)
    except CLIError:
        discard_if_unused(out, created)
        raise
    logger.debug("%s %s is writable%s", option, out, "" if created is None else f" (created {created})")
    return created


def discard_if_unused(out: Path, created: Optional[Path]) -> None:
    """Remove the directories :func:`prepare_output_dir` created, from ``out`` up to ``created``, while empty."""
    if created is None:
        return
    directory = out
    while True:
        try:
            directory.rmdir()  # only succeeds when empty
        except OSError:
            return
        if directory == created or directory == directory.parent:
            return
        directory = directory.parent
