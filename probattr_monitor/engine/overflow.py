"""Naming the cause of an ``IndexError`` raised inside a model's forward.

An embedding lookup out of range is either a token id outside the vocabulary
or an input longer than the model's position table; torch says "index out of
range in self" for both. The engine checks ids against the declared
vocabulary and lengths against the declared context window before any
forward (:mod:`probattr_monitor.engine.validation`); when a model declares
neither and its forward still raises, :func:`find_index_overflow` re-runs that
forward with a hook on every ``torch.nn.Embedding`` that stops it at the first
lookup out of range, which tells the two causes apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

VOCABULARY = "vocabulary"
POSITIONS = "positions"


@dataclass(frozen=True)
class IndexOverflow:
    """The first embedding lookup out of range in a forward.

    Attributes
    ----------
    kind : str
        :data:`VOCABULARY` (the table was indexed by the token ids themselves)
        or :data:`POSITIONS` (by anything else: position ids).
    table : str
        Dotted name of the embedding module in the model.
    rows : int
        Its number of rows (vocabulary size, or number of positions).
    index : int
        The index out of range (the largest looked up, or a negative one).
    """

    kind: str
    table: str
    rows: int
    index: int


class _Stop(Exception):
    def __init__(self, overflow: IndexOverflow):
        super().__init__(overflow)
        self.overflow = overflow


def find_index_overflow(model: torch.nn.Module, input_ids: torch.Tensor,
                        forward: Callable[[], Any]) -> Optional[IndexOverflow]:
    """Re-run ``forward()`` (a forward of ``model`` on ``input_ids``) to find the embedding lookup out of range.

    Returns ``None`` when no ``torch.nn.Embedding`` is indexed out of range
    (the ``IndexError`` came from elsewhere) or the re-run fails otherwise.
    The hooks are removed before returning.
    """

    def hook_for(name: str, table: torch.nn.Embedding):
        def hook(module, args, kwargs):
            index = args[0] if args else kwargs.get("input")
            if not isinstance(index, torch.Tensor) or index.numel() == 0:
                return None
            largest, smallest = int(index.max()), int(index.min())
            if largest < table.num_embeddings and smallest >= 0:
                return None
            by_ids = tuple(index.shape) == tuple(input_ids.shape) and torch.equal(index.to(input_ids.device), input_ids)
            raise _Stop(IndexOverflow(VOCABULARY if by_ids else POSITIONS, name or "<model>",
                                      int(table.num_embeddings), largest if smallest >= 0 else smallest))

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name, module), with_kwargs=True)
               for name, module in model.named_modules() if isinstance(module, torch.nn.Embedding)]
    try:
        forward()
    except _Stop as stop:
        return stop.overflow
    except Exception:  # noqa: BLE001 - a diagnosis that fails just finds nothing
        return None
    finally:
        for handle in handles:
            handle.remove()
    return None


def too_long_message(length: int, overflow: IndexOverflow) -> str:
    """``"input of 70 tokens is longer than the model's 64 positions (...)"``."""
    return (f"input of {length} tokens is longer than the model's {overflow.rows} positions "
            f"(its position embedding {overflow.table!r} has {overflow.rows} rows)")
