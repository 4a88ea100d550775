"""The ``--candidates`` option: ``all``, a list of token ids, ``@file``, or a count N.

Parsing happens in two steps so that a malformed value fails before the model
is loaded: :func:`parse_candidates` checks the syntax, and
:meth:`CandidateSpec.resolve` turns it into what
:class:`~probattr_monitor.scoring.ScoringConfig` takes once the vocabulary size
is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probattr_monitor.cli.errors import CLIError

HELP = (
    "candidate tokens per position: 'all' (the whole vocabulary, paper-exact; the default); "
    "a comma-separated list of token ids ('11,42,1000', or '42,' for a single id); "
    "'@FILE' (token ids separated by commas or whitespace, '#' starts a comment); "
    "or a count N: the budgeted estimator with at most N exact candidates when this "
    "installation has one (probattr_monitor.engine.budgeted), otherwise exact scoring over "
    "N token ids evenly spaced over the vocabulary (numpy.linspace, deterministic). "
    "The token in the prompt is always a candidate. The choice is recorded in the report."
)

_INT = re.compile(r"[+-]?\d+")


def budget_class() -> Any:
    """The engine's ``Budget`` class, or ``None`` when this installation has no budgeted estimator."""
    try:
        from probattr_monitor.engine.budgeted import Budget
    except ImportError:
        return None
    return Budget


@dataclass(frozen=True)
class CandidateSpec:
    """A parsed ``--candidates`` value.

    Attributes
    ----------
    kind : {"all", "ids", "count"}
    ids : tuple of int
        The listed ids (``kind == "ids"``).
    count : int
        N (``kind == "count"``).
    source : str
        ``"@FILE"`` or ``"list"`` for ids; empty otherwise.
    """

    kind: str
    ids: tuple = ()
    count: int = 0
    source: str = ""

    def resolve(self, vocab_size: int, seed: int = 0) -> tuple[Any, dict]:
        """The ``candidates`` argument of the scoring config, and a description for the report.

        ``seed`` seeds the budgeted estimator's tail sampler (count N with a ``Budget``).

        Raises
        ------
        CLIError
            A listed id is outside ``[0, vocab_size)``.
        """
        if self.kind == "all":
            return "all", {"kind": "all", "vocab_size": vocab_size}
        if self.kind == "ids":
            bad = [i for i in self.ids if not 0 <= i < vocab_size]
            if bad:
                raise CLIError(f"--candidates {self.source}: token id {bad[0]} is outside the model's "
                               f"vocabulary [0, {vocab_size})")
            ids = sorted(set(self.ids))
            return ids, {"kind": "ids", "source": self.source, "n": len(ids), "vocab_size": vocab_size}
        budget = budget_class()
        if budget is not None:
            return budget(max_candidates=self.count, seed=seed), {"kind": "budget", "max_candidates": self.count,
                                                                  "vocab_size": vocab_size}
        if self.count >= vocab_size:
            return "all", {"kind": "all", "requested": self.count, "vocab_size": vocab_size,
                           "note": f"N={self.count} covers the whole vocabulary"}
        ids = evenly_spaced_ids(self.count, vocab_size)
        return ids, {"kind": "evenly-spaced", "n": self.count, "vocab_size": vocab_size,
                     "note": "exact over N ids from numpy.linspace(0, vocab_size - 1, N)"}


def evenly_spaced_ids(n: int, vocab_size: int) -> list[int]:
    """``n`` distinct token ids spread evenly over ``[0, vocab_size)`` (deterministic)."""
    import numpy as np

    return sorted({int(i) for i in np.linspace(0, vocab_size - 1, n).round().astype(np.int64)})


def parse_candidates(value: str) -> CandidateSpec:
    """Check the syntax of a ``--candidates`` value.

    Raises
    ------
    CLIError
        Empty value, a non-integer id, N < 1, or an unreadable ``@FILE``.
    """
    text = value.strip()
    if text.lower() == "all":
        return CandidateSpec("all")
    if text.startswith("@"):
        return CandidateSpec("ids", ids=tuple(_read_id_file(text[1:])), source=text)
    if _INT.fullmatch(text):
        n = int(text)
        if n < 1:
            raise CLIError(f"--candidates: a count must be at least 1, got {n}")
        return CandidateSpec("count", count=n)
    parts = [p.strip() for p in text.split(",")]
    if not text or not any(parts):
        raise CLIError("--candidates: give 'all', a count N, a comma-separated list of ids or @FILE")
    ids = []
    for part in parts:
        if not part:
            continue
        if not _INT.fullmatch(part):
            raise CLIError(f"--candidates: {part!r} is not a token id (give 'all', a count N, "
                           "a comma-separated list of ids or @FILE)")
        ids.append(int(part))
    return CandidateSpec("ids", ids=tuple(ids), source="list")


def _read_id_file(name: str) -> list[int]:
    if not name:
        raise CLIError("--candidates: '@' must be followed by a file name")
    path = Path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CLIError(f"--candidates: file not found: {name}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"--candidates: cannot read {name}: {exc}") from None
    ids = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        for tok in re.split(r"[\s,]+", line.split("#", 1)[0].strip()):
            if not tok:
                continue
            if not _INT.fullmatch(tok):
                raise CLIError(f"{name}:{lineno}: {tok!r} is not a token id")
            ids.append(int(tok))
    if not ids:
        raise CLIError(f"--candidates: {name} lists no token ids")
    return ids
