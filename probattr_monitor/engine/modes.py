"""Put a model into scoring mode and restore it exactly afterwards."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def scoring_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and ``torch.no_grad`` for the duration, then restore.

    Every submodule's own ``training`` flag is restored (not just the root's:
    a model may deliberately keep some submodules in eval mode while training).
    ``torch.no_grad`` is used rather than ``torch.inference_mode``: tensors
    created under inference mode cannot take part in a later backward pass,
    which breaks training when scoring runs inside a training loop.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield model
    finally:
        for module, was_training in modes:
            module.training = was_training
