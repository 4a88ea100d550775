"""The passes shared by exact and budgeted scoring.

One full pass over ``prompt + response`` gives ``log P(y | x)`` and every
prior ``log p(v | x_<k)``; one teacher-forced pass over ``v, x_>k, y`` per
candidate gives ``a_k(v)`` and ``b_k(v)`` (docs/design.md section 2). The
per-position statistics are stacked into an :class:`AttributionResult`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from probattr_monitor.engine.overflow import POSITIONS, VOCABULARY, too_long_message
from probattr_monitor.engine.result import AttributionResult
from probattr_monitor.engine.runner import FullPass, ModelRunner
from probattr_monitor.engine.stats import PositionStats
from probattr_monitor.engine.validation import check_in_vocab, declared_vocab_size


def full_pass(runner: ModelRunner, prompt: list[int], response: list[int]) -> FullPass:
    """The one forward pass over ``prompt + response``, with its errors named.

    Out-of-memory errors and any other ``RuntimeError`` of the model go
    through unchanged (an out-of-memory error carries its
    :func:`~probattr_monitor.engine.memory.oom_site`).

    Raises
    ------
    ValueError
        A token id outside the model's vocabulary, an input longer than the
        model's position table (``"input of N tokens is longer than the
        model's M positions"``), or non-finite logits.
    TypeError
        The model is not a causal LM (no ``.logits`` of shape
        ``[batch, length, vocab]``, or a forward that cannot take token ids).
    """
    try:
        full = runner.full_pass(prompt + response)
    except IndexError as err:
        raise ValueError(_index_error_message(runner, prompt, response, err)) from err
    check_in_vocab(prompt, full.vocab_size, "prompt_ids")
    check_in_vocab(response, full.vocab_size, "response_ids")
    return full


def _index_error_message(runner: ModelRunner, prompt: list[int], response: list[int], err: IndexError) -> str:
    """What an ``IndexError`` of the full pass means: an id outside the vocabulary, or too long an input."""
    ids = prompt + response
    overflow = runner.diagnose_index_error(ids)
    if overflow is not None and overflow.kind == VOCABULARY:
        check_in_vocab(prompt, overflow.rows, "prompt_ids")
        check_in_vocab(response, overflow.rows, "response_ids")
    if overflow is not None and overflow.kind == POSITIONS:
        return (f"{too_long_message(len(ids), overflow)}: prompt_ids + response_ids = "
                f"{len(prompt)} + {len(response)} tokens")
    if overflow is not None:
        return f"token id {overflow.index} is outside the model's vocabulary [0, {overflow.rows})"
    declared = declared_vocab_size(runner.model)
    if declared is not None:  # the ids were checked against it before the forward
        return (f"an index was out of range in the model's forward over {len(ids)} tokens; every id is inside "
                f"its vocabulary [0, {declared}), so the input may be longer than the model's positions: {err}")
    return (f"an index was out of range in the model's forward over {len(ids)} tokens (a token id outside "
            f"its vocabulary, or an input longer than its positions; the largest id is {max(ids)}): {err}")


def response_log_prob(full: FullPass, prompt_len: int, response: list[int]) -> float:
    """``log P(y | x)`` from the full pass (row ``t`` predicts token ``t + 1``)."""
    rows = torch.arange(prompt_len - 1, prompt_len - 1 + len(response))
    return float(full.log_probs[rows, torch.tensor(response)].sum())


def prompt_token_log_probs(full: FullPass, prompt: list[int], positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The prompt's own tokens from the full pass, at each scored position ``k``.

    Returns
    -------
    (token_log_prob, token_log_joint)
        ``log p(x_k | x_<k)`` and ``a_k(x_k) = sum_{k <= i < n} log p(x_i | x_<i)``.
    """
    n = len(prompt)
    rows = torch.arange(0, n - 1)
    token_lp = full.log_probs[rows, torch.tensor(prompt[1:])].numpy()  # token_lp[i - 1] = log p(x_i | x_<i)
    suffix = np.cumsum(token_lp[::-1])[::-1]  # suffix[k - 1] = sum over i >= k
    idx = np.asarray(positions, dtype=np.int64) - 1
    return token_lp[idx].astype(np.float64), suffix[idx].astype(np.float64)


def with_original(cand: np.ndarray, original: int) -> np.ndarray:
    """The sorted candidate ids ``cand`` with the original token ``original`` added if missing."""
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
    """``a_k(v)`` and ``b_k(v)`` for every candidate ``v`` in ``ids`` (float64).

    Raises
    ------
    ValueError
        If any score is non-finite.
    """
    n = len(prompt)
    rest = prompt[k + 1 :] + response
    prior = full.log_probs[k - 1].numpy()
    bs = batch_size or runner.default_batch_size(k, len(rest) + 1, full.vocab_size)
    a = np.empty(len(ids), dtype=np.float64)
    b = np.empty(len(ids), dtype=np.float64)
    for start in range(0, len(ids), bs):
        chunk = torch.from_numpy(ids[start : start + bs])
        lp = runner.suffix_log_probs(full, prompt[:k], chunk, rest).numpy()
        prompt_part, response_part = suffix_sums(lp, n - k - 1, k)
        a_chunk = prior[ids[start : start + bs]] + prompt_part
        a[start : start + bs] = a_chunk
        b[start : start + bs] = a_chunk + response_part
    return a, b


def suffix_sums(lp: np.ndarray, n_prompt_rest: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate row of ``lp`` (``[rows, len(x_>k + y)]``): the rest of the prompt's and the response's sums.

    The first ``n_prompt_rest`` columns are ``x_>k`` (``a_k = prior + the
    first sum``), the others ``y`` (``b_k = a_k + the second``; docs/design.md
    section 2).

    Raises
    ------
    ValueError
        If any sum is non-finite.
    """
    prompt_part = lp[:, :n_prompt_rest].sum(axis=1)
    response_part = lp[:, n_prompt_rest:].sum(axis=1)
    if not (np.isfinite(prompt_part).all() and np.isfinite(response_part).all()):
        raise ValueError(f"non-finite (NaN or inf) candidate scores at position {k}")
    return prompt_part, response_part


def assemble_result(
    prompt: list[int],
    response: list[int],
    pos: np.ndarray,
    stats: Sequence[PositionStats],
    log_p_response: float,
    num_candidates: int,
    info: dict,
    stderr: Optional[dict] = None,
    prompt_tokens: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> AttributionResult:
    """Stack per-position statistics into an :class:`AttributionResult`.

    ``prompt_tokens`` (:func:`prompt_token_log_probs`) is exact, so the
    surprisals' standard errors are those of ``log_denominator`` and
    ``log_numerator`` (and zero for the prefix surprisal).
    """
    stderr = dict(stderr or {})
    token_log_prob, token_log_joint = prompt_tokens if prompt_tokens is not None else (None, None)
    if token_log_joint is not None and stderr:
        stderr["surprisal_prefix"] = np.zeros(len(pos))
    if token_log_joint is not None:
        for name, source in (("surprisal_prompt", "log_denominator"), ("surprisal_full", "log_numerator")):
            if source in stderr:
                stderr[name] = stderr[source]

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
        token_log_joint=token_log_joint,
        token_log_prob=token_log_prob,
        stderr=stderr,
        info=info,
    )
