"""Small tokenizer helpers shared by the probe modules (private)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def as_id_list(value: Any, *, what: str = "token ids") -> list[int]:
    """Normalise a tokenizer output to a flat ``list[int]``.

    Accepts a list/tuple of ints, a batch of one such list, a 1-D (or ``1 x n``)
    tensor or array, or a mapping / ``BatchEncoding`` with an ``input_ids`` key
    (transformers 5 returns one from ``apply_chat_template(tokenize=True)``).
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
    """Token ids of ``text`` without any special tokens added by the tokenizer."""
    if callable(tokenizer):
        return as_id_list(tokenizer(text, add_special_tokens=False))
    return as_id_list(tokenizer.encode(text, add_special_tokens=False))
