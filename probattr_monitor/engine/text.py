"""Text-level attribution: tokenizer, BOS policy and response generation on top of :func:`attribute`."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

import numpy as np

from probattr_monitor.engine.api import attribute
from probattr_monitor.engine.budget import Budget
from probattr_monitor.engine.generation import greedy_response, top_p_response
from probattr_monitor.engine.result import AttributionResult
from probattr_monitor.engine.runner import DEFAULT_MEMORY_BUDGET_MB
from probattr_monitor.engine.validation import (
    as_token_ids,
    candidate_ids,
    check_fits_context,
    check_in_vocab,
    check_model,
    check_positive_int,
    declared_vocab_size,
    validate_prompt,
)
from probattr_monitor.tokenization import encode_text, prepend_bos_ids, special_ids, token_texts

DECODINGS = ("greedy", "top-p")

#: The keyword arguments :func:`attribute_text` passes on to :func:`~probattr_monitor.attribute`.
ENGINE_KWARGS = ("memory_budget_mb", "use_cache")


def encode_prompt(tokenizer: Any, prompt: str, add_bos: bool = True) -> list[int]:
    """Tokenize ``prompt`` without the tokenizer's own special tokens, then apply the BOS policy."""
    ids = encode_text(tokenizer, prompt)
    return prepend_bos_ids(tokenizer, ids) if add_bos else ids


def make_response(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    decoding: str = "greedy",
    max_new_tokens: int = 20,
    top_p: float = 0.9,
    num_samples: int = 20,
    seed: int = 0,
) -> list[int]:
    """Generate the response to score: greedy, or the paper's most frequent top-p sample.

    Raises
    ------
    ValueError, TypeError
        Before any forward: bad prompt ids, an unknown ``decoding``, a
        ``max_new_tokens`` that is not a positive integer, or a prompt that
        leaves no room for ``max_new_tokens`` in the model's context window.
    """
    check_model(model)
    prompt_ids = as_token_ids(prompt_ids, "prompt_ids")
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    check_positive_int(max_new_tokens, "max_new_tokens")
    declared = declared_vocab_size(model)
    if declared is not None:
        check_in_vocab(prompt_ids, declared, "prompt_ids")
    check_fits_context(model, len(prompt_ids) + max_new_tokens, "generating the response",
                       f"{len(prompt_ids)} prompt + {max_new_tokens} max_new_tokens")
    eos = getattr(tokenizer, "eos_token_id", None)
    if decoding == "greedy":
        return greedy_response(model, prompt_ids, max_new_tokens, eos)
    return top_p_response(model, prompt_ids, max_new_tokens, top_p, num_samples, eos, seed)


def attribute_text(
    model: Any,
    tokenizer: Any,
    prompt: Union[str, Sequence[int]],
    response: Union[str, Sequence[int], None] = None,
    *,
    candidates: Any = "all",
    positions: Optional[Sequence[int]] = None,
    batch_size: Optional[int] = None,
    add_bos: bool = True,
    decoding: str = "greedy",
    max_new_tokens: int = 20,
    top_p: float = 0.9,
    num_samples: int = 20,
    seed: int = 0,
    **engine_kwargs: Any,
) -> AttributionResult:
    """Attribute a text prompt, generating the response when none is given.

    Parameters
    ----------
    model, tokenizer
        A causal LM and its tokenizer.
    prompt : str or sequence of int
        Text (tokenized without special tokens, then the BOS policy of
        :func:`probattr_monitor.tokenization.conditioning_token_id` applies:
        BOS if the tokenizer has one, else EOS as the paper did for GPT-2), or
        ready token ids taken as-is.
    response : str, sequence of int or None
        The response to score. ``None`` generates one with ``decoding``:
        ``"greedy"`` (default) or ``"top-p"`` (the paper's: the most frequent of
        ``num_samples`` nucleus samples with ``top_p``), at most
        ``max_new_tokens`` tokens, stopping after EOS.
    candidates, positions, batch_size, **engine_kwargs
        Passed to :func:`probattr_monitor.attribute` (``engine_kwargs``: any of
        :data:`ENGINE_KWARGS`).

    Returns
    -------
    AttributionResult
        With ``token_texts``, ``is_special`` and ``response_text`` filled in.

    Raises
    ------
    ValueError, TypeError
        As :func:`probattr_monitor.attribute`, and before any generation:
        ids that are not integers (floats, ``bool``, strings, bytes), bad
        ``positions``, ``candidates``, ``batch_size`` or ``memory_budget_mb``,
        or a prompt that leaves no room for ``max_new_tokens`` in the model's
        context window.
    """
    unknown = sorted(set(engine_kwargs) - set(ENGINE_KWARGS))
    if unknown:
        raise TypeError(f"attribute_text got unexpected keyword argument(s) {unknown}; "
                        f"the engine takes {list(ENGINE_KWARGS)}")
    check_model(model)
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt is an empty string")
        prompt_ids = encode_prompt(tokenizer, prompt, add_bos)
    else:
        prompt_ids = as_token_ids(prompt, "prompt")
    prompt_ids, _, _ = validate_prompt(model, prompt_ids, positions, batch_size,
                                       engine_kwargs.get("memory_budget_mb", DEFAULT_MEMORY_BUDGET_MB), "prompt")
    if not isinstance(candidates, Budget):
        cand = candidate_ids(candidates)
        declared = declared_vocab_size(model)
        if cand is not None and declared is not None:
            check_in_vocab(cand, declared, "candidates")
    if response is None:
        response_ids = make_response(
            model, tokenizer, prompt_ids, decoding, max_new_tokens, top_p, num_samples, seed
        )
    elif isinstance(response, str):
        if not response:
            raise ValueError("response is an empty string")
        response_ids = encode_text(tokenizer, response)
    else:
        response_ids = as_token_ids(response, "response")
    res = attribute(model, prompt_ids, response_ids, candidates=candidates, positions=positions,
                    batch_size=batch_size, **engine_kwargs)
    return with_token_texts(res, tokenizer, decoding=decoding if response is None else "given")


def with_token_texts(res: AttributionResult, tokenizer: Any, decoding: Optional[str] = None) -> AttributionResult:
    """``res`` with token texts, special-token flags and the decoded response filled in.

    ``decoding``, when given, is recorded in ``info["decoding"]``.
    """
    specials = special_ids(tokenizer)
    info = dict(res.info) if decoding is None else dict(res.info, decoding=decoding)
    return dataclasses.replace(
        res,
        token_texts=tuple(token_texts(tokenizer, res.token_ids)),
        is_special=np.array([int(t) in specials for t in res.token_ids], dtype=bool),
        response_text=tokenizer.decode(list(res.response_ids)),
        info=info,
    )
