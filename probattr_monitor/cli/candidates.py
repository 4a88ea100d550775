"""The ``--candidates`` option: ``budget``, a count N, ``all``, a list of token ids, or ``@file``.

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

from probattr_monitor.cli.errors import EXIT_USAGE, CLIError

HELP = (
    "candidate tokens per position: 'budget' (the default: the budgeted estimator with its default "
    "Budget, the training monitor's default too); 'sequential' (opt-in, the default SequentialBudget: a cheap budget first, the default Budget only "
    "where a token's AS class or noise flag is still open); a count N (the budgeted estimator with at most N "
    "exactly scored candidates per position); 'all' (the whole vocabulary, paper-exact, |V| "
    "forwards per position); a comma-separated list of token ids ('11,42,1000', or '42,' for a "
    "single id); or '@FILE' (token ids separated by commas or whitespace, '#' starts a comment), "
    "exact over the listed ids. The token in the prompt is always a candidate. The choice is "
    "recorded in the report."
)

_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class CandidateSpec:
    """A parsed ``--candidates`` value.

    Attributes
    ----------
    kind : {"budget", "sequential", "all", "ids", "count"}
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

        ``seed`` seeds the budgeted estimator's tail sampler.

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
        import dataclasses

        from probattr_monitor.engine.budget import Budget  # the engine (torch) loads only when scoring

        if self.kind == "sequential":
            from probattr_monitor.engine.sequential import SequentialBudget

            default = SequentialBudget()
            spec = SequentialBudget(stages=tuple(dataclasses.replace(s, seed=seed) for s in default.stages),
                                    z=default.z)
            return spec, {"kind": "sequential", "stages": [s.to_info() for s in spec.stages], "z": spec.z,
                          "vocab_size": vocab_size}
        budget = Budget(seed=seed) if self.kind == "budget" else Budget(max_candidates=self.count, seed=seed)
        return budget, {"kind": "budget", "max_candidates": budget.max_candidates,
                        "tail_samples": budget.tail_samples, "screen": budget.screen, "vocab_size": vocab_size}


def parse_candidates(value: str) -> CandidateSpec:
    """Check the syntax of a ``--candidates`` value.

    Raises
    ------
    CLIError
        Empty value, a non-integer id or N < 1 (exit status 2), or an
        unreadable or invalid ``@FILE`` (exit status 3).
    """
    text = value.strip()
    if text.lower() in ("all", "budget", "sequential"):
        return CandidateSpec(text.lower())
    if text.startswith("@"):
        return CandidateSpec("ids", ids=tuple(_read_id_file(text[1:])), source=text)
    if _INT.fullmatch(text):
        n = int(text)
        if n < 1:
            raise CLIError(f"--candidates: a count must be at least 1, got {n}", code=EXIT_USAGE)
        return CandidateSpec("count", count=n)
    parts = [p.strip() for p in text.split(",")]
    if not text or not any(parts):
        raise CLIError("--candidates: give 'budget', 'all', a count N, a comma-separated list of ids or @FILE",
                       code=EXIT_USAGE)
    ids = []
    for part in parts:
        if not part:
            continue
        if not _INT.fullmatch(part):
            raise CLIError(f"--candidates: {part!r} is not a token id (give 'budget', 'all', a count N, "
                           "a comma-separated list of ids or @FILE)", code=EXIT_USAGE)
        ids.append(int(part))
    return CandidateSpec("ids", ids=tuple(ids), source="list")


def _read_id_file(name: str) -> list[int]:
    if not name:
        raise CLIError("--candidates: '@' must be followed by a file name", code=EXIT_USAGE)
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
