"""The gate pass: one forward over the prompt, and nothing else (docs/design.md section 10).

The default gate metric, ``mean_surprisal_prefix``, is the mean of
``-log p(x_k | x_<k)`` over the prompt's scored tokens: the plain causal loss
of the prompt. It needs neither the response nor a single candidate pass, so a
*gate scoring* of the training monitor computes it from one forward pass over
the prompt (``len(prompt)`` token-forwards) instead of the attribution's
thousands per position. The values are the ones an attribution scoring reports
for the same prompt (its full pass runs over ``prompt + response``, and causal
attention makes the prompt's rows independent of the response), up to
floating-point rounding.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.engine.passes import full_pass, prompt_token_log_probs
from probattr_monitor.engine.result import AttributionResult
from probattr_monitor.engine.runner import DEFAULT_MEMORY_BUDGET_MB, ModelRunner
from probattr_monitor.engine.validation import check_fits_context, validate_prompt

__all__ = ["PREFIX_METHOD", "is_prefix_result", "prefix_surprisal"]

#: ``result.info["method"]`` of a gate-pass result.
PREFIX_METHOD = "prefix"


def prefix_surprisal(
    model: torch.nn.Module,
    prompt_ids: Union[Sequence[int], torch.Tensor],
    positions: Optional[Sequence[int]] = None,
    *,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> AttributionResult:
    """``log p(x_k | x_<k)`` of each scored prompt token, from one forward pass over the prompt.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM whose output has ``.logits``; run under ``torch.no_grad``
        in eval mode, every submodule's mode restored afterwards.
    prompt_ids : sequence of int or 1-D tensor
        The prompt exactly as the model conditions on it (at least 2 tokens).
    positions : sequence of int, optional
        Prompt indices, each in ``[1, len(prompt_ids) - 1]``; default all.
    memory_budget_mb : float
        As in :func:`probattr_monitor.attribute` (checked the same way).

    Returns
    -------
    AttributionResult
        ``token_log_prob`` (so :attr:`~AttributionResult.surprisal_prefix`) is
        set; every attribution quantity (AS, entropies, KL, the other two
        surprisals, ``log_p_response``) is NaN and the candidate columns are
        empty, since no candidate was scored; ``response_ids`` is empty and
        ``num_candidates`` is 1. ``info["method"]`` is ``"prefix"`` and
        ``info["token_forwards"]`` is ``len(prompt_ids)``.

    Raises
    ------
    ValueError, TypeError
        Bad input, a prompt longer than the model's context, or a model that is
        not a causal LM (as :func:`probattr_monitor.attribute`).
    """
    prompt, pos, _ = validate_prompt(model, prompt_ids, positions, None, memory_budget_mb)
    check_fits_context(model, len(prompt), "prompt")
    started = time.perf_counter()
    with scoring_mode(model):
        runner = ModelRunner(model, int(memory_budget_mb * 2**20), use_cache=False)
        full = full_pass(runner, prompt, [])
        token_log_prob, _ = prompt_token_log_probs(full, prompt, pos)
    n = len(pos)
    nan = np.full(n, np.nan)
    empty_ids = np.zeros((n, 0), dtype=np.int64)
    empty_probs = np.zeros((n, 0), dtype=np.float64)
    info: dict[str, Any] = {
        "method": PREFIX_METHOD,
        "path": runner.path,
        "token_forwards": runner.token_forwards,
        "forward_calls": runner.forward_calls,
        "seconds": time.perf_counter() - started,
    }
    return AttributionResult(
        positions=pos.astype(np.int64),
        token_ids=np.array([prompt[k] for k in pos], dtype=np.int64),
        attribution=nan, log_numerator=nan.copy(), log_denominator=nan.copy(),
        entropy_prompt=nan.copy(), entropy_full=nan.copy(), kl=nan.copy(),
        log_p_response=float("nan"),
        top_prior_ids=empty_ids, top_prior_probs=empty_probs,
        top_posterior_ids=empty_ids.copy(), top_posterior_probs=empty_probs.copy(),
        prompt_ids=tuple(prompt), response_ids=(), num_candidates=1,
        token_log_prob=token_log_prob, info=info,
    )


def is_prefix_result(result: AttributionResult) -> bool:
    """Whether ``result`` came from :func:`prefix_surprisal` (a gate pass: no attribution in it)."""
    return result.info.get("method") == PREFIX_METHOD
