"""What ``probattr watch`` remembers across restarts, and the gate it keeps: ``watch-state.json`` and ``best.json``.

Both files are replaced atomically (:func:`~probattr_monitor.io_utils.atomic_write_text`)
after each checkpoint, so a watcher killed at any moment restarts from the last
checkpoint it finished and never scores one twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from probattr_monitor.cli.errors import CLIError
from probattr_monitor.io_utils import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["BEST_FILE", "BEST_LINK", "STATE_FILE", "Scored", "WatchState"]

STATE_FILE = "watch-state.json"
BEST_FILE = "best.json"
BEST_LINK = "best"
_VERSION = 1


@dataclass
class Scored:
    """One checkpoint the watcher has dealt with.

    ``status`` is the monitor's (``complete``, ``partial``, ``failed``), or
    ``unreadable`` when the checkpoint could not be loaded; ``value`` is the
    gate metric (NaN unless complete or partial).
    """

    name: str
    step: int
    status: str
    value: float
    seconds: float
    error: Optional[str] = None


@dataclass
class WatchState:
    """The checkpoints scored so far and the best one by the gate metric."""

    metric: str
    mode: str
    fingerprint: str
    scored: dict = field(default_factory=dict)
    best: Optional[str] = None

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, out: Path, metric: str, mode: str, fingerprint: str) -> "WatchState":
        """The state saved in ``out``, or a fresh one.

        Raises
        ------
        CLIError
            The file is unreadable, or was written for another gate metric, mode or probe set
            (its scores would not be comparable: use another ``--out``).
        """
        path = out / STATE_FILE
        if not path.exists():
            return cls(metric, mode, fingerprint)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            scored = {k: Scored(**v) for k, v in data["scored"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CLIError(f"cannot read the watch state {path}: {exc}") from None
        for key, now in (("metric", metric), ("mode", mode), ("fingerprint", fingerprint)):
            if data.get(key) != now:
                raise CLIError(f"{path} was written with {key} {data.get(key)!r}, not {now!r}: its scores are "
                               f"not comparable; use another --out or remove it")
        logger.info("resuming from %s: %d checkpoint(s) already scored", path, len(scored))
        return cls(metric, mode, fingerprint, scored, data.get("best"))

    def save(self, out: Path) -> None:
        data = {"version": _VERSION, "metric": self.metric, "mode": self.mode, "fingerprint": self.fingerprint,
                "best": self.best, "scored": {k: asdict(v) for k, v in self.scored.items()}}
        atomic_write_text(out / STATE_FILE, json.dumps(data, indent=2, allow_nan=True))

    # ------------------------------------------------------------------ gate
    def add(self, entry: Scored) -> bool:
        """Record ``entry``; returns whether it is the new best (complete scorings only)."""
        self.scored[entry.name] = entry
        if entry.status != "complete" or not math.isfinite(entry.value):
            return False
        best = self.scored.get(self.best) if self.best else None
        better = best is None or (entry.value < best.value if self.mode == "min" else entry.value > best.value)
        if better:
            self.best = entry.name
        return better

    def write_best(self, out: Path, directory: Path, link: bool) -> None:
        """``best.json`` (and the ``best`` link with ``link``) for the current best checkpoint."""
        if self.best is None:
            return
        entry = self.scored[self.best]
        target = (directory / entry.name).resolve()
        data = {"checkpoint": entry.name, "path": str(target), "step": entry.step, "metric": self.metric,
                "mode": self.mode, "value": entry.value, "n_scored": len(self.scored)}
        atomic_write_text(out / BEST_FILE, json.dumps(data, indent=2, allow_nan=True))
        if link:
            tmp = out / f".{BEST_LINK}.tmp-{os.getpid()}"
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(target, tmp)
            os.replace(tmp, out / BEST_LINK)
