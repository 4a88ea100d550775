"""Exact probabilistic attribution (DESIGN.md sections 2 and 3)."""

from __future__ import annotations

import logging
import time
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.engine.result import AttributionResult
from probattr_monitor.engine.runner import FullPass, ModelRunner
from probattr_monitor.engine.stats import PositionStats, position_stats
from probattr_monitor.engine.validation import (
    check_candidates,
    check_in_vocab,
    validate_request,
)

logger = logging.getLogger(__name__)

#: Default bound on the engine's transient tensors (logits chunks, batch activations).
DEFAULT_MEMORY_BUDGET_MB = 1024


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
    cache) gives both ``a_k(v)`` and ``b_k(v)``; the quantities of DESIGN.md
    section 2 follow from them.

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
        is always added. A :class:`~probattr_monitor.engine.budgeted.Budget`:
        the budgeted estimator (a few candidates exactly, the tail estimated by
        importance sampling), with standard errors in ``result.stderr`` and
        its cost in ``result.info``; see ``Budget`` for the cost model.
    positions : sequence of int, optional
        Prompt indices to score, each in ``[1, len(prompt_ids) - 1]``; default all.
    batch_size : int, optional
        Candidates per forward pass; default: chosen from ``memory_budget_mb``.
        Results do not depend on it beyond floating-point rounding.
    memory_budget_mb : float
        Bound on the engine's transient tensors; no ``[batch, length, vocab]``
        logits beyond it are materialised.
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
        positions or candidates, a model that is not a causal LM, non-finite logits.
    """
    prompt, response, pos, bs = validate_request(model, prompt_ids, response_ids, positions, batch_size,
                                                 memory_budget_mb)
    from probattr_monitor.engine.budgeted import Budget, attribute_budgeted

    if isinstance(candidates, Budget):
        return attribute_budgeted(model, prompt, response, candidates, pos, bs,
                                  memory_budget_mb=memory_budget_mb, use_cache=use_cache)
    started = time.perf_counter()
    with scoring_mode(model):
        runner = ModelRunner(model, int(memory_budget_mb * 2**20), use_cache=use_cache)
        full = _full_pass(runner, prompt, response)
        cand = check_candidates(candidates, full.vocab_size)
        log_p_response = response_log_prob(full, len(prompt), response)
        stats = []
        set_sizes = []
        for k in pos:
            ids = _with_original(cand, prompt[k])
            a, b = candidate_scores(runner, full, prompt, response, int(k), ids, bs)
            stats.append(position_stats(ids, a, b, log_p_response))
            set_sizes.append(len(ids))
    info = {
        "method": "exact",
        "path": runner.path,
        "token_forwards": runner.token_forwards,
        "forward_calls": runner.forward_calls,
        "seconds": time.perf_counter() - started,
        "num_candidates_per_position": set_sizes,
    }
    return assemble_result(prompt, response, pos, stats, log_p_response, max(set_sizes), info)


def _full_pass(runner: ModelRunner, prompt: list[int], response: list[int]) -> FullPass:
    try:
        full = runner.full_pass(prompt + response)
    except IndexError as err:
        raise ValueError(f"a token id is outside the model's vocabulary: {err}") from err
    except (TypeError, ValueError):
        raise
    except RuntimeError as err:
        raise TypeError(
            f"model could not be run as a causal LM on input_ids of shape [1, {len(prompt) + len(response)}]: {err}"
        ) from err
    check_in_vocab(prompt, full.vocab_size, "prompt_ids")
    check_in_vocab(response, full.vocab_size, "response_ids")
    return full


def response_log_prob(full: FullPass, prompt_len: int, response: list[int]) -> float:
    """``log P(y | x)`` from the full pass (row ``t`` predicts token ``t + 1``)."""
    rows = torch.arange(prompt_len - 1, prompt_len - 1 + len(response))
    return float(full.log_probs[rows, torch.tensor(response)].sum())


def _with_original(cand: np.ndarray, original: int) -> np.ndarray:
    if np.any(cand == original):
        return cand
    return np.sort(np.append(cand, np.int64(original)))


def candidate_scores(
    runner: ModelRunner,
    full: FullPass,
    prompt: list[int],
    response: list[int],
    k: int,
    ids: np.ndarray,
    batch_size: Optional[int],
) -> tuple[np.ndarray, np.ndarray]:
    """``a_k(v)`` and ``b_k(v)`` for every candidate ``v`` in ``ids`` (float64)."""
    n = len(prompt)
    rest = prompt[k + 1 :] + response
    n_prompt_rest = n - k - 1
    prior = full.log_probs[k - 1].numpy()
    bs = batch_size or runner.default_batch_size(k, len(rest) + 1, full.vocab_size)
    a = np.empty(len(ids), dtype=np.float64)
    b = np.empty(len(ids), dtype=np.float64)
    for start in range(0, len(ids), bs):
        chunk = torch.from_numpy(ids[start : start + bs])
        lp = runner.suffix_log_probs(full, prompt[:k], chunk, rest).numpy()
        prompt_part = lp[:, :n_prompt_rest].sum(axis=1)
        response_part = lp[:, n_prompt_rest:].sum(axis=1)
        a_chunk = prior[ids[start : start + bs]] + prompt_part
        a[start : start + bs] = a_chunk
        b[start : start + bs] = a_chunk + response_part
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"non-finite (NaN or inf) candidate scores at position {k}")
    return a, b


def assemble_result(
    prompt: list[int],
    response: list[int],
    pos: np.ndarray,
    stats: Sequence[PositionStats],
    log_p_response: float,
    num_candidates: int,
    info: dict,
    stderr: Optional[dict] = None,
) -> AttributionResult:
    """Stack per-position statistics into an :class:`AttributionResult`."""

    def col(name: str) -> np.ndarray:
        return np.array([getattr(s, name) for s in stats], dtype=np.float64)

    def top(name: str, dtype) -> np.ndarray:
        width = min(len(getattr(s, name)) for s in stats) if stats else 0
        return np.array([getattr(s, name)[:width] for s in stats], dtype=dtype).reshape(len(stats), width)

    return AttributionResult(
        positions=pos.astype(np.int64),
        token_ids=np.array([prompt[k] for k in pos], dtype=np.int64),
        attribution=col("attribution"),
        log_numerator=col("log_numerator"),
        log_denominator=col("log_denominator"),
        entropy_prompt=col("entropy_prompt"),
        entropy_full=col("entropy_full"),
        kl=col("kl"),
        log_p_response=float(log_p_response),
        top_prior_ids=top("top_prior_ids", np.int64),
        top_prior_probs=top("top_prior_probs", np.float64),
        top_posterior_ids=top("top_posterior_ids", np.int64),
        top_posterior_probs=top("top_posterior_probs", np.float64),
        prompt_ids=tuple(prompt),
        response_ids=tuple(response),
        num_candidates=int(num_candidates),
        stderr=stderr or {},
        info=info,
    )
