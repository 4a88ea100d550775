"""Probe files and scoring settings for the tiny word-level models of the callback, sink and CLI tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

from probattr_monitor.scoring import ScoringConfig

__all__ = ["scoring_config", "write_probes"]


def write_probes(path: Path, probes: Iterable[Mapping]) -> Path:
    """Write ``probes`` (one JSON object per probe) to the JSONL file ``path`` and return the path."""
    path = Path(path)
    path.write_text("".join(json.dumps(dict(p)) + "\n" for p in probes), encoding="utf-8")
    return path


def scoring_config() -> ScoringConfig:
    """Exact over the whole (tiny) vocabulary, short responses, few bootstrap draws."""
    return ScoringConfig(candidates="all", max_new_tokens=3, n_boot=50)
