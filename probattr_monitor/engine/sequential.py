"""Sequential budgets: spend on a position only until what is read from it is decided.

A :class:`SequentialBudget` is a short ladder of :class:`Budget` stages, cheap
first. Every position is scored with the first stage; the caller's rule
(``undecided``, for the monitor the AS class and noise flag of
:func:`probattr_monitor.report.noise.undecided`) names the positions whose
reading could still change within ``z`` standard errors, and only those are
scored again with the next stage, whose result replaces the earlier one. The
last stage's result is final. Because the budgeted estimator seeds position
``k`` from ``[seed, k]`` and never looks at other positions, a position
escalated to the last stage gets exactly the result that stage would give it
alone (docs/design.md section 7, "Sequential budgets").
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from probattr_monitor.engine.budget import Budget
from probattr_monitor.engine.budgeted import attribute_budgeted
from probattr_monitor.engine.result import AttributionResult
from probattr_monitor.engine.runner import DEFAULT_MEMORY_BUDGET_MB
from probattr_monitor.engine.validation import declared_vocab_size, validate_request

#: The first stage of the default ladder: a 256-id screen, six exact candidates
#: and six sampled ones, no refine stage (the best first stage measured by
#: ``benchmarks/sequential.py``; without a screen the errors miss what the
#: prior does not see, README "Sequential budgets").
FIRST_STAGE = Budget(max_candidates=6, tail_samples=6, screen=256, refine=0)

#: ``info`` counters summed over the stages of a sequential result.
_SUMMED = ("token_forwards", "exact_token_forwards", "screen_token_forwards", "forward_calls", "seconds")


@dataclasses.dataclass(frozen=True)
class SequentialBudget:
    """Budgets tried in turn per position until its reading is decided.

    Parameters
    ----------
    stages : tuple of Budget
        At least one stage, the cheapest first. Default: :data:`FIRST_STAGE`,
        then ``Budget()`` (the monitor's default, so an escalated position
        gets exactly the default result). Opt-in: it halves the cost of
        ``Budget()`` on SmolLM2 but moves the set's noise rate by up to about
        0.03 (README, "Sequential budgets").
    z : float, default 2.0
        A position is decided when its reading stays the same over
        ``estimate ± z * standard error`` of each quantity the rule reads.
        ``0`` stops after the first stage wherever the errors are finite.

    Raises
    ------
    ValueError, TypeError
        No stages, a stage that is not a :class:`Budget`, or ``z`` negative or
        not a finite number.
    """

    stages: tuple = (FIRST_STAGE, Budget())
    z: float = 2.0

    def __post_init__(self) -> None:
        stages = tuple(self.stages) if not isinstance(self.stages, Budget) else (self.stages,)
        if not stages:
            raise ValueError("SequentialBudget.stages must hold at least one Budget")
        for i, stage in enumerate(stages):
            if not isinstance(stage, Budget):
                raise TypeError(f"SequentialBudget.stages[{i}] must be a Budget, got {type(stage).__name__}")
        object.__setattr__(self, "stages", stages)
        if isinstance(self.z, bool) or not isinstance(self.z, numbers.Real) or not np.isfinite(self.z):
            raise TypeError(f"SequentialBudget.z must be a finite number, got {self.z!r}")
        if self.z < 0:
            raise ValueError(f"SequentialBudget.z must be >= 0, got {self.z}")
        object.__setattr__(self, "z", float(self.z))

    def to_info(self) -> dict:
        """The settings as recorded in ``info["budget"]``."""
        return {"stages": [s.to_info() for s in self.stages], "z": self.z}


def attribute_sequential(
    model: torch.nn.Module,
    prompt_ids: Any,
    response_ids: Any,
    spec: SequentialBudget,
    undecided: Callable[[AttributionResult, float], np.ndarray],
    positions: Optional[Sequence[int]] = None,
    batch_size: Optional[int] = None,
    *,
    memory_budget_mb: Optional[float] = None,
    use_cache: Optional[bool] = None,
) -> AttributionResult:
    """Budgeted attribution through the stages of ``spec``.

    Parameters
    ----------
    spec : SequentialBudget
    undecided : callable
        ``undecided(result, z) -> bool array`` aligned with ``result.positions``:
        True where the reading could still change (those go to the next stage).
    positions, batch_size, memory_budget_mb, use_cache
        As for :func:`probattr_monitor.attribute`.

    Returns
    -------
    AttributionResult
        Each position holds the result of the last stage it reached (estimates,
        standard errors and per-position ``info`` arrays alike).
        ``info["method"] == "sequential"``; ``info["stage"]`` is the stage index
        of each position, ``info["positions_per_stage"]`` how many positions
        each stage scored, ``info["budget"]`` the settings; the cost counters
        are summed over the stages.
    """
    if not isinstance(spec, SequentialBudget):
        raise TypeError(f"spec must be a SequentialBudget, got {type(spec).__name__}")
    if memory_budget_mb is None:
        memory_budget_mb = DEFAULT_MEMORY_BUDGET_MB
    prompt, response, pos, bs = validate_request(model, prompt_ids, response_ids, positions, batch_size,
                                                 memory_budget_mb)
    kwargs = {"memory_budget_mb": memory_budget_mb, "use_cache": use_cache}
    start = first_exact_stage(spec.stages, declared_vocab_size(model))
    result = attribute_budgeted(model, prompt, response, spec.stages[start], pos, bs, **kwargs)
    stage = np.full(len(pos), start, dtype=np.int64)
    counts = [0] * start + [len(pos)]
    totals = {name: result.info.get(name, 0) for name in _SUMMED}
    for index, budget in enumerate(spec.stages[start + 1:], start=start + 1):
        todo = np.asarray(undecided(result, spec.z), dtype=bool)
        if todo.shape != (len(pos),):
            raise ValueError(f"undecided returned shape {todo.shape}, expected ({len(pos)},)")
        if not todo.any():
            break
        sub = attribute_budgeted(model, prompt, response, budget, result.positions[todo], bs, **kwargs)
        result = replace_positions(result, sub, todo)
        stage[todo] = index
        counts.append(int(todo.sum()))
        for name in _SUMMED:
            totals[name] = totals[name] + sub.info.get(name, 0)
    counts += [0] * (len(spec.stages) - len(counts))
    info = {**result.info, **totals, "method": "sequential", "budget": spec.to_info(),
            "stage": stage, "positions_per_stage": counts}
    return dataclasses.replace(result, info=info)


def first_exact_stage(stages: Sequence[Budget], vocab_size: Optional[int]) -> int:
    """Index of the stage to start from: the first one that scores its whole universe, else 0.

    A stage whose ``max_candidates + tail_samples`` covers its universe is
    exact (no screen, no sampling), so nothing before it is needed and nothing
    after it can improve on it: on small vocabularies the ladder is that one
    exact stage. ``vocab_size`` ``None`` (unknown) starts from stage 0.
    """
    for index, budget in enumerate(stages):
        size = len(budget.universe) + 1 if budget.universe is not None else vocab_size
        if size is not None and budget.max_candidates + budget.tail_samples >= size:
            return index
    return 0


def replace_positions(base: AttributionResult, sub: AttributionResult, mask: np.ndarray) -> AttributionResult:
    """``base`` with the positions where ``mask`` is True taken from ``sub``.

    ``sub`` must score exactly ``base.positions[mask]`` of the same prompt and
    response. Per-position arrays (scores, standard errors, top candidates and
    ``info`` arrays of the same length) are merged; everything else is
    ``base``'s, except ``num_candidates``, the larger of the two.

    Raises
    ------
    ValueError
        If ``sub`` does not score those positions of the same input.
    """
    mask = np.asarray(mask, dtype=bool)
    n = len(base)
    if mask.shape != (n,) or not np.array_equal(sub.positions, base.positions[mask]):
        raise ValueError("sub must score exactly the masked positions of base")
    if sub.prompt_ids != base.prompt_ids or sub.response_ids != base.response_ids:
        raise ValueError("sub scores another prompt or response than base")

    def merge(a: Any, b: Any) -> Any:
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim == 2 and a.shape[1] != b.shape[1]:
            width = min(a.shape[1], b.shape[1])
            a, b = a[:, :width], b[:, :width]
        out = a.astype(np.result_type(a, b), copy=True)
        out[mask] = b
        return out

    changes: dict[str, Any] = {}
    for f in dataclasses.fields(base):
        value, other = getattr(base, f.name), getattr(sub, f.name)
        if isinstance(value, np.ndarray) and isinstance(other, np.ndarray) and len(value) == n:
            changes[f.name] = merge(value, other)
    changes["stderr"] = {name: merge(arr, sub.stderr[name]) for name, arr in base.stderr.items()
                         if name in sub.stderr}
    info = dict(base.info)
    for name, value in base.info.items():
        other = sub.info.get(name)
        if _per_position(value, n) and _per_position(other, len(sub)):
            merged = merge(value, other)
            info[name] = merged.tolist() if isinstance(value, list) else merged
    changes["info"] = info
    changes["num_candidates"] = max(base.num_candidates, sub.num_candidates)
    return dataclasses.replace(base, **changes)


def _per_position(value: Any, n: int) -> bool:
    return isinstance(value, (list, np.ndarray)) and np.ndim(value) >= 1 and len(value) == n
