"""Exact probabilistic attribution: every candidate of the set scored by its own pass.

The sums of docs/design.md section 2 run over the whole candidate set; usually
reached through :func:`probattr_monitor.attribute` with ``candidates="all"`` or
a sequence of ids.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

import torch

from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.engine.passes import (
    assemble_result,
    candidate_scores,
    full_pass,
    prompt_token_log_probs,
    response_log_prob,
    with_original,
)
from probattr_monitor.engine.result import AttributionResult
from probattr_monitor.engine.runner import DEFAULT_MEMORY_BUDGET_MB, ModelRunner
from probattr_monitor.engine.stats import position_stats
from probattr_monitor.engine.validation import check_candidates, validate_request


def attribute_exact(
    model: torch.nn.Module,
    prompt_ids: Union[Sequence[int], torch.Tensor],
    response_ids: Union[Sequence[int], torch.Tensor],
    candidates: Union[str, Sequence[int]] = "all",
    positions: Optional[Sequence[int]] = None,
    batch_size: Optional[int] = None,
    *,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    use_cache: Optional[bool] = None,
) -> AttributionResult:
    """Exact attribution over ``candidates``; parameters and result as :func:`probattr_monitor.attribute`.

    For each scored position ``k`` and candidate ``v``, one teacher-forced pass
    over ``v, x_>k, y`` (the prefix ``x_<k`` taken from a shared KV cache)
    gives both ``a_k(v)`` and ``b_k(v)``.

    Raises
    ------
    ValueError, TypeError
        For bad input or a model that cannot be scored (see :func:`probattr_monitor.attribute`).
    """
    prompt, response, pos, bs = validate_request(model, prompt_ids, response_ids, positions, batch_size,
                                                 memory_budget_mb)
    started = time.perf_counter()
    with scoring_mode(model):
        runner = ModelRunner(model, int(memory_budget_mb * 2**20), use_cache=use_cache)
        full = full_pass(runner, prompt, response)
        cand = check_candidates(candidates, full.vocab_size)
        log_p_response = response_log_prob(full, len(prompt), response)
        stats = []
        set_sizes = []
        for k in pos:
            ids = with_original(cand, prompt[k])
            a, b = candidate_scores(runner, full, prompt, response, int(k), ids, bs)
            stats.append(position_stats(ids, a, b, log_p_response))
            set_sizes.append(len(ids))
    info: dict[str, Any] = {
        "method": "exact",
        "path": runner.path,
        "token_forwards": runner.token_forwards,
        "forward_calls": runner.forward_calls,
        "largest_batch_rows": runner.largest_batch_rows,
        "seconds": time.perf_counter() - started,
        "num_candidates_per_position": set_sizes,
    }
    return assemble_result(prompt, response, pos, stats, log_p_response, max(set_sizes), info,
                           prompt_tokens=prompt_token_log_probs(full, prompt, pos))
