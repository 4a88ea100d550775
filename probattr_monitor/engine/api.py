"""The public entry point :func:`attribute`: checks the request, then runs the exact or budgeted path."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch

from probattr_monitor.engine.budget import Budget
from probattr_monitor.engine.budgeted import attribute_budgeted
from probattr_monitor.engine.exact import attribute_exact
from probattr_monitor.engine.result import AttributionResult
from probattr_monitor.engine.runner import DEFAULT_MEMORY_BUDGET_MB
from probattr_monitor.engine.sequential import SequentialBudget
from probattr_monitor.engine.validation import validate_request


def attribute(
    model: torch.nn.Module,
    prompt_ids: Union[Sequence[int], torch.Tensor],
    response_ids: Union[Sequence[int], torch.Tensor],
    candidates: Union[str, Sequence[int], Any] = "all",
    positions: Optional[Sequence[int]] = None,
    batch_size: Optional[int] = None,
    *,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    use_cache: Optional[bool] = None,
) -> AttributionResult:
    """Probabilistic attribution score, contextual entropies and KL of prompt tokens.

    For each scored prompt position ``k`` and candidate ``v``, one teacher-forced
    pass over ``v, x_>k, y`` (with the prefix ``x_<k`` taken from a shared KV
    cache) gives both ``a_k(v)`` and ``b_k(v)``; the quantities of
    docs/design.md section 2 follow from them.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM whose output has ``.logits`` (any Hugging Face
        ``*ForCausalLM``). Scored under ``torch.no_grad`` in eval mode; every
        submodule's train/eval mode is restored afterwards.
    prompt_ids : sequence of int or 1-D tensor
        The prompt exactly as the model conditions on it (BOS included by the
        caller if the model uses one). At least 2 tokens.
    response_ids : sequence of int or 1-D tensor
        The response ``y`` (at least 1 token).
    candidates : "all", sequence of int, or Budget
        ``"all"``: every id of the model's output vocabulary (paper-exact).
        A sequence: exact over that subset; the original token at each position
        is always added. A :class:`~probattr_monitor.engine.budget.Budget`:
        the budgeted estimator (a few candidates exactly, the tail estimated by
        importance sampling), with standard errors in ``result.stderr`` and
        its cost in ``result.info``; see ``Budget`` for the cost model.
    positions : sequence of int, optional
        Prompt indices to score, each in ``[1, len(prompt_ids) - 1]``; default all.
    batch_size : int, optional
        Candidates per forward pass; default: chosen from ``memory_budget_mb``.
        Results do not depend on it beyond floating-point rounding.
    memory_budget_mb : float
        Bound on the engine's transient tensors, in MiB (a positive, finite
        number); no ``[batch, length, vocab]`` logits beyond it are materialised.
    use_cache : bool, optional
        ``None`` detects KV-cache support; ``False`` forces one full forward
        per candidate (the fallback for models without a cache).

    Returns
    -------
    AttributionResult
        Per-position float64 arrays ``attribution``, ``log_numerator``,
        ``log_denominator``, ``entropy_prompt``, ``entropy_full``, ``kl`` aligned
        with ``positions``, and ``log_p_response``.

    Raises
    ------
    ValueError, TypeError
        For bad input, naming the problem: empty or out-of-vocabulary ids, bad
        positions, candidates, batch size or memory budget, an input longer
        than the model's context window (checked before any forward where the
        config declares one; otherwise ``"input of N tokens is longer than
        the model's M positions"``), a model that is not a causal LM,
        non-finite logits.
    torch.OutOfMemoryError, RuntimeError
        Out of memory, and any other error of the model's own forward, go
        through unchanged; an out-of-memory error carries where it happened
        and the rows of that forward
        (:func:`probattr_monitor.engine.memory.oom_site`), so that a caller can
        retry at half that batch.

    Example
    -------
    >>> res = attribute(model, prompt_ids, response_ids, candidates=Budget())  # doctest: +SKIP
    >>> res.attribution, res.stderr["attribution"]  # doctest: +SKIP
    """
    prompt, response, pos, bs = validate_request(model, prompt_ids, response_ids, positions, batch_size,
                                                 memory_budget_mb)
    if isinstance(candidates, SequentialBudget):
        raise TypeError("candidates=SequentialBudget(...) stops on the noise rule, which attribute() does not "
                        "know: score through ScoringConfig(candidates=...) (score_probe, the monitor, "
                        "`probattr score`) or call probattr_monitor.engine.sequential.attribute_sequential")
    if isinstance(candidates, Budget):
        return attribute_budgeted(model, prompt, response, candidates, pos, bs,
                                  memory_budget_mb=memory_budget_mb, use_cache=use_cache)
    return attribute_exact(model, prompt, response, candidates, pos, bs,
                           memory_budget_mb=memory_budget_mb, use_cache=use_cache)
