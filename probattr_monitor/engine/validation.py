"""Input checking for the engine: every problem is named before any forward pass."""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence

import numpy as np
import torch


def as_token_ids(ids: Any, name: str) -> list[int]:
    """Check and coerce user-given token ids (list, tuple, numpy or 1-D tensor) to ``list[int]``.

    ``name`` names the argument in error messages.

    Raises
    ------
    TypeError
        If ``ids`` is not a sequence of integers or is not one-dimensional.
    ValueError
        If ``ids`` is empty or holds a negative id.
    """
    if isinstance(ids, str):
        raise TypeError(f"{name} must be a sequence of token ids, got a string; tokenize it first "
                        f"(or use attribute_text)")
    if isinstance(ids, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be a sequence of token ids, got {type(ids).__name__}; decode it to a str "
                        f"and tokenize it (or give it to attribute_text as a str)")
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise TypeError(f"{name} must be a 1-D sequence of token ids, got a tensor of shape {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer token ids, got a tensor of dtype {ids.dtype}")
        out = [int(v) for v in ids.tolist()]
    elif isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise TypeError(f"{name} must be a 1-D sequence of token ids, got an array of shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"{name} must hold integer token ids, got an array of dtype {ids.dtype}")
        out = [int(v) for v in ids.tolist()]
    else:
        try:
            items = list(ids)
        except TypeError:
            raise TypeError(f"{name} must be a sequence of token ids, got {type(ids).__name__}") from None
        out = []
        for i, v in enumerate(items):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name}[{i}] must be an integer token id, got {type(v).__name__} {v!r}")
            out.append(int(v))
    if not out:
        raise ValueError(f"{name} is empty: at least one token id is needed")
    for i, v in enumerate(out):
        if v < 0:
            raise ValueError(f"{name}[{i}] = {v} is a negative token id")
    return out


def check_in_vocab(ids: Sequence[int], vocab_size: int, name: str) -> None:
    """Raise ``ValueError`` naming the first id outside ``[0, vocab_size)``."""
    for i, v in enumerate(ids):
        if not 0 <= v < vocab_size:
            raise ValueError(f"{name}[{i}] = {v} is outside the model's vocabulary [0, {vocab_size})")


def check_positions(positions: Optional[Any], prompt_len: int) -> np.ndarray:
    """Validate scored positions; ``None`` means every position ``1 .. prompt_len - 1``.

    Returns
    -------
    numpy.ndarray
        Sorted, unique int64 positions.
    """
    if prompt_len < 2:
        raise ValueError(
            f"prompt has {prompt_len} token(s): at least 2 are needed (position 0 is the "
            f"conditioning token, usually BOS, and is never scored)"
        )
    if positions is None:
        return np.arange(1, prompt_len, dtype=np.int64)
    pos = as_token_ids(positions, "positions") if not isinstance(positions, numbers.Integral) else None
    if pos is None:
        raise TypeError("positions must be a sequence of prompt indices, not a single integer")
    if len(set(pos)) != len(pos):
        dup = sorted({p for p in pos if pos.count(p) > 1})
        raise ValueError(f"positions has duplicate entries: {dup}")
    for p in pos:
        if p == 0:
            raise ValueError("position 0 cannot be scored: it is the conditioning token (usually BOS); "
                             f"valid positions are 1 .. {prompt_len - 1}")
        if not 1 <= p < prompt_len:
            raise ValueError(f"position {p} is out of range for a prompt of {prompt_len} tokens "
                             f"(valid: 1 .. {prompt_len - 1})")
    return np.array(sorted(pos), dtype=np.int64)


def candidate_ids(candidates: Any) -> Optional[list[int]]:
    """The ids of a candidate set, checked for everything but the vocabulary; ``None`` for ``"all"``.

    Raises
    ------
    TypeError, ValueError
        Not ``"all"`` nor a sequence of integer ids, empty, or with duplicates.
    """
    if isinstance(candidates, str):
        if candidates != "all":
            raise ValueError(f"candidates must be 'all' or a sequence of token ids, got the string {candidates!r}")
        return None
    try:
        cand = as_token_ids(candidates, "candidates")
    except ValueError as err:
        if "empty" in str(err):
            raise ValueError("candidates is empty: give 'all' or at least one token id") from None
        raise
    if len(set(cand)) != len(cand):
        dup = sorted({c for c in cand if cand.count(c) > 1})[:10]
        raise ValueError(f"candidates has duplicate ids: {dup}")
    return cand


def check_candidates(candidates: Any, vocab_size: int) -> np.ndarray:
    """Validate the candidate set; ``"all"`` is the whole output vocabulary.

    Returns
    -------
    numpy.ndarray
        Sorted int64 candidate ids (the original token is added per position later).
    """
    cand = candidate_ids(candidates)
    if cand is None:
        return np.arange(vocab_size, dtype=np.int64)
    check_in_vocab(cand, vocab_size, "candidates")
    return np.array(sorted(cand), dtype=np.int64)


def check_positive_int(value: Any, name: str) -> int:
    """A positive integer (``bool`` is not one); ``name`` names the argument in the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def check_batch_size(batch_size: Any) -> Optional[int]:
    """``None`` (pick from the memory budget) or a positive integer."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"batch_size must be a positive integer or None, got {type(batch_size).__name__}")
    return check_positive_int(batch_size, "batch_size")


def check_memory_budget_mb(memory_budget_mb: Any) -> float:
    """The engine's memory budget: a positive, finite number of MiB (``bool`` and strings are not).

    The one check of ``memory_budget_mb``, used by :func:`~probattr_monitor.attribute`,
    :func:`~probattr_monitor.engine.text.attribute_text` and ``ScoringConfig``.

    Raises
    ------
    TypeError
        If it is not a real number.
    ValueError
        If it is NaN, infinite, zero or negative.
    """
    return check_positive_finite(
        memory_budget_mb,
        not_a_number="memory_budget_mb must be a positive number of MiB, got {type} {value!r}",
        not_positive="memory_budget_mb must be a positive, finite number of MiB, got {value!r}")


def check_positive_finite(value: Any, *, not_a_number: str, not_positive: str) -> float:
    """``value`` as a float, after checking it is a positive, finite real number (``bool`` and strings are not).

    The check shared by the budgets' validators (:func:`check_memory_budget_mb`,
    :func:`~probattr_monitor.monitor.monitor.check_time_budget`), each with its
    own messages.

    Parameters
    ----------
    value : Any
        The value to check.
    not_a_number, not_positive : str
        The messages of the ``TypeError`` and the ``ValueError``: ``str.format``
        templates of ``value`` and ``type`` (the name of its type).

    Returns
    -------
    float

    Raises
    ------
    TypeError
        ``not_a_number``, for a value that is not a real number.
    ValueError
        ``not_positive``, for NaN, an infinity, zero or a negative value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(not_a_number.format(value=value, type=type(value).__name__))
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(not_positive.format(value=value, type=type(value).__name__))
    return number


def check_model(model: Any) -> torch.nn.Module:
    """A causal LM is a ``torch.nn.Module`` returning an object with ``.logits``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a causal language model (a torch.nn.Module returning .logits), "
                        f"got {type(model).__name__}")
    return model


def context_limit(model: Any) -> Optional[int]:
    """The model's context window in tokens, if its config declares one."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_fits_context(model: Any, length: int, what: str = "prompt + response",
                       counting: Optional[str] = None) -> None:
    """Raise ``ValueError`` if ``length`` tokens exceed the model's context window.

    Parameters
    ----------
    model
        The model; a window is known only if its config declares one (:func:`context_limit`).
    length : int
        Tokens needed.
    what : str
        What needs them, for the message (``"probe 'p1'"``).
    counting : str, optional
        What the count is made of, for the message (``"prompt + response"``).

    Raises
    ------
    ValueError
        ``"<what> needs <length> tokens (<counting>) but the model's context window is <limit>"``.
    """
    limit = context_limit(model)
    if limit is not None and length > limit:
        made_of = "" if counting is None else f" ({counting})"
        raise ValueError(f"{what} needs {length} tokens{made_of} but the model's context window is {limit}")


def declared_vocab_size(model: Any) -> Optional[int]:
    """Vocabulary size the model declares (embedding rows), checked before any forward."""
    get_in = getattr(model, "get_input_embeddings", None)
    if callable(get_in):
        try:
            emb = get_in()
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, torch.nn.Embedding):
            return int(emb.num_embeddings)
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def validate_prompt(
    model: Any, prompt_ids: Any, positions: Any, batch_size: Any, memory_budget_mb: Any, name: str = "prompt_ids"
) -> tuple[list[int], np.ndarray, Optional[int]]:
    """The checks of a request that need neither its response nor a forward pass.

    ``name`` names the prompt in messages (``"prompt"`` for :func:`attribute_text`).

    Returns
    -------
    (prompt, positions, batch_size)
        Ids as ``list[int]``, sorted positions, and the batch size or ``None``.
    """
    check_model(model)
    prompt = as_token_ids(prompt_ids, name)
    pos = check_positions(positions, len(prompt))
    bs = check_batch_size(batch_size)
    check_memory_budget_mb(memory_budget_mb)
    declared = declared_vocab_size(model)
    if declared is not None:
        check_in_vocab(prompt, declared, name)
    return prompt, pos, bs


def validate_request(
    model: Any, prompt_ids: Any, response_ids: Any, positions: Any, batch_size: Any, memory_budget_mb: Any
) -> tuple[list[int], list[int], np.ndarray, Optional[int]]:
    """Every check of an attribution request that needs no forward pass.

    Returns
    -------
    (prompt, response, positions, batch_size)
        Ids as ``list[int]``, sorted positions, and the batch size or ``None``.
    """
    prompt, pos, bs = validate_prompt(model, prompt_ids, positions, batch_size, memory_budget_mb)
    response = as_token_ids(response_ids, "response_ids")
    declared = declared_vocab_size(model)
    if declared is not None:
        check_in_vocab(response, declared, "response_ids")
    check_fits_context(model, len(prompt) + len(response))
    return prompt, response, pos, bs
