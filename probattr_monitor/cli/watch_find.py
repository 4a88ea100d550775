"""Finding checkpoints in a training run's directory, and telling a finished one from one being written.

Two layouts are recognised under ``DIR`` (not recursively):

* a Hugging Face Trainer checkpoint: a directory ``checkpoint-<step>/``;
* a Lightning (or plain PyTorch) checkpoint: a file ``*.ckpt`` (``*.pt``,
  ``*.pth``). ``last*.ckpt`` is skipped: Lightning overwrites it in place (or
  makes it a link) at every save, so it is always a copy of another checkpoint.

The readiness rule (:func:`is_ready`), which never lets a checkpoint still
being written be read:

* HF: the Trainer writes ``trainer_state.json`` last (after the weights,
  optimizer, scheduler and RNG states, transformers 5.x ``_save_checkpoint``),
  so the directory must hold ``trainer_state.json`` and a weights file
  (``model.safetensors``, ``pytorch_model.bin`` or a sharded index with every
  shard it names);
* Lightning: no file whose name ends in ``.tmp``, ``.part`` or ``.partial``
  is ever a candidate (writers that save to a temporary name and rename it are
  safe by construction);
* both: the *signature* (every file's name, size and modification time) must be
  unchanged between two looks at least ``settle_s`` seconds apart. Lightning's
  ``torch.save`` writes the file in place, so this stable window is what keeps a
  half-written ``.ckpt`` from being read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from probattr_monitor.cli.checkpoint import CHECKPOINT_SUFFIXES

__all__ = ["Candidate", "Settler", "find_candidates", "has_complete_files", "signature"]

_HF_DIR = re.compile(r"^checkpoint-(\d+)$")
_STEP_IN_NAME = re.compile(r"(?:^|[-_=])step[=_-]?(\d+)")
_PARTIAL_SUFFIXES = (".tmp", ".part", ".partial")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Candidate:
    """A checkpoint found under the watched directory.

    Attributes
    ----------
    name : str
        Its name relative to the directory (the key of the watch state).
    path : Path
    kind : {"hf", "lightning"}
    step : int or None
        The step in its name (``checkpoint-<N>``, ``...step=<N>...``), if any.
    """

    name: str
    path: Path
    kind: str
    step: Optional[int]


def find_candidates(directory: Path) -> list[Candidate]:
    """Every checkpoint directly under ``directory``, ordered by step (then name); none is checked for readiness."""
    out = []
    for entry in directory.iterdir():
        name = entry.name
        if entry.is_dir():
            m = _HF_DIR.match(name)
            if m:
                out.append(Candidate(name, entry, "hf", int(m.group(1))))
        elif entry.is_file() and entry.suffix in CHECKPOINT_SUFFIXES and not name.startswith("last"):
            if name.endswith(_PARTIAL_SUFFIXES):
                continue
            m = _STEP_IN_NAME.search(entry.stem)
            out.append(Candidate(name, entry, "lightning", int(m.group(1)) if m else None))
    return sorted(out, key=lambda c: (c.step if c.step is not None else -1, c.name))


def has_complete_files(cand: Candidate) -> bool:
    """Whether every file the writer produces last is there (HF: ``trainer_state.json`` and the weights)."""
    if cand.kind != "hf":
        return cand.path.is_file()
    p = cand.path
    if not (p / "trainer_state.json").is_file() or not (p / "config.json").is_file():
        return False
    if any((p / w).is_file() for w in _HF_WEIGHTS):
        return True
    for index in _HF_INDEXES:
        if (p / index).is_file():
            try:
                shards = set(json.loads((p / index).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return False
            return bool(shards) and all((p / s).is_file() for s in shards)
    return False


def signature(path: Path) -> Optional[tuple]:
    """``(name, size, mtime_ns)`` of the file, or of every file under the directory; ``None`` if it vanished."""
    try:
        if path.is_file():
            st = path.stat()
            return ((path.name, st.st_size, st.st_mtime_ns),)
        items = []
        for f in sorted(path.rglob("*")):
            if f.is_file():
                st = f.stat()
                items.append((str(f.relative_to(path)), st.st_size, st.st_mtime_ns))
        return tuple(items)
    except OSError:  # deleted (e.g. save_total_limit) while we looked
        return None


class Settler:
    """Remembers each candidate's signature and when it was first seen unchanged.

    Parameters
    ----------
    settle_s : float
        How long a candidate's signature must stay the same before it is ready.
    clock : callable
        ``time.monotonic`` (a test may pass another).
    """

    def __init__(self, settle_s: float, clock) -> None:
        self.settle_s = float(settle_s)
        self.clock = clock
        self._seen: dict[str, tuple] = {}

    def is_ready(self, cand: Candidate) -> bool:
        """Whether ``cand`` is complete and has not changed for ``settle_s`` seconds (see the module's rule)."""
        if not has_complete_files(cand):
            self._seen.pop(cand.name, None)
            return False
        sig = signature(cand.path)
        now = self.clock()
        if sig is None:
            self._seen.pop(cand.name, None)
            return False
        prev = self._seen.get(cand.name)
        if prev is None or prev[0] != sig:
            self._seen[cand.name] = (sig, now)
            return self.settle_s <= 0
        return now - prev[1] >= self.settle_s

    def forget(self, name: str) -> None:
        """Drop what is remembered of ``name`` (once scored)."""
        self._seen.pop(name, None)
