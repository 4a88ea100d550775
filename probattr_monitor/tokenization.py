"""Tokenizer conventions shared by the text-level engine and the probe sets."""

from __future__ import annotations

from typing import Any, Optional, Sequence


def conditioning_token_id(tokenizer: Any) -> Optional[int]:
    """The token prepended to every prompt (the BOS policy).

    The model must condition position 0 on *something*: attribution is never
    computed for position 0, so the first real prompt token is scorable only if
    a conditioning token precedes it. Policy:

    1. the tokenizer's BOS token, if it has one;
    2. otherwise its EOS token, as the paper did for GPT-2 (GPT-2 was trained
       with ``<|endoftext|>`` as the document separator, so it is the natural
       start-of-text);
    3. otherwise ``None`` (the prompt is used as tokenized, and its first token
       is not scored).
    """
    for attr in ("bos_token_id", "eos_token_id"):
        tid = getattr(tokenizer, attr, None)
        if isinstance(tid, int):
            return tid
    return None


def prepend_bos_ids(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """Apply :func:`conditioning_token_id`: prepend it unless ``ids`` already starts with it."""
    ids = list(ids)
    tid = conditioning_token_id(tokenizer)
    if tid is None or (ids and ids[0] == tid):
        return ids
    return [tid] + ids


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (BOS, EOS, pad, chat markers...)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        tid = getattr(tokenizer, attr, None)
        if isinstance(tid, int):
            ids.add(tid)
    return ids


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Readable text of each token (``decode([id])``, keeping leading spaces)."""
    return [tokenizer.decode([int(i)]) for i in ids]
