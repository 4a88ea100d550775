"""Put a model into scoring mode and restore every submodule's train/eval mode afterwards."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def preserved_module_modes(model: torch.nn.Module) -> Iterator[None]:
    """Snapshot every submodule's own ``training`` flag and restore it on exit.

    Every submodule is restored, not just the root: a model may deliberately
    keep some submodules in eval mode while training.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, was_training in modes:
            module.training = was_training


@contextlib.contextmanager
def scoring_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and ``torch.no_grad`` for the duration, then restore the modes.

    ``torch.no_grad`` is used rather than ``torch.inference_mode``: tensors
    created under inference mode cannot take part in a later backward pass,
    which breaks training when scoring runs inside a training loop.
    """
    with preserved_module_modes(model):
        model.eval()
        with torch.no_grad():
            yield model
