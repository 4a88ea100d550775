"""Tokenizer conventions shared by the text-level engine, scoring and the probe sets.

Plain-text tokenization (no special tokens), the BOS policy, special-token ids
and token texts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Sequence


def ids_from_encoding(value: Any, *, what: str = "token ids") -> list[int]:
    """Normalise a tokenizer output to a flat ``list[int]``.

    Accepts a list/tuple of ints, a batch of one such list, a 1-D (or ``1 x n``)
    tensor or array, or a mapping / ``BatchEncoding`` with an ``input_ids`` key
    (transformers 5 returns one from ``apply_chat_template(tokenize=True)``).
    An empty output gives an empty list.

    Raises
    ------
    TypeError
        If ``value`` holds no integer ids (``what`` names them in the message).
    """
    if isinstance(value, Mapping):
        if "input_ids" not in value:
            raise TypeError(f"expected {what}, got a mapping without 'input_ids'")
        value = value["input_ids"]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        value = value[0]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a sequence of {what}, got {type(value).__name__}")
    out: list[int] = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int):
            try:
                import numpy as np  # local: only needed for numpy scalars

                if isinstance(v, np.integer):
                    out.append(int(v))
                    continue
            except ImportError:  # pragma: no cover - numpy is a dependency
                pass
            raise TypeError(f"expected integer {what}, got {type(v).__name__} {v!r}")
        out.append(v)
    return out


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without any special tokens added by the tokenizer.

    Uses ``tokenizer(text, add_special_tokens=False)`` (Hugging Face
    tokenizers), or ``tokenizer.encode(text, add_special_tokens=False)`` for a
    tokenizer that is not callable.
    """
    if callable(tokenizer):
        return ids_from_encoding(tokenizer(text, add_special_tokens=False))
    return ids_from_encoding(tokenizer.encode(text, add_special_tokens=False))


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
