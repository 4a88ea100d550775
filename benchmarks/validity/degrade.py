"""Degraded copies of a trained causal LM, and held-out perplexity.

Three transforms, each deterministic for a seed, each the identity at
strength 0 (the original weights, bit for bit):

- :func:`interpolate_to_init`: ``w + s (w0 - w)`` toward a fresh
  initialisation ``w0`` of the same architecture (``torch.lerp``);
- :func:`add_weight_noise`: ``w + s * std(w) * N(0, 1)`` per tensor;
- :func:`drop_layers`: remove ``n`` decoder layers, evenly spread in the middle.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Variant:
    """One rung of the ladder: ``kind`` in {"original", "interp", "noise", "drop"} and its strength."""

    kind: str
    strength: float

    @property
    def name(self) -> str:
        if self.kind == "original":
            return "original"
        if self.kind == "drop":
            return f"drop{int(self.strength)}"
        return f"{self.kind}{self.strength:g}"


def _fresh_init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(copy.deepcopy(model.config))
    finally:
        torch.random.set_rng_state(gen_state)
    return fresh.to(dtype=next(model.parameters()).dtype)


@torch.no_grad()
def interpolate_to_init(model: torch.nn.Module, strength: float, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with every floating tensor moved a fraction ``strength`` toward a fresh init."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    out = copy.deepcopy(model)
    init = dict(_fresh_init(model, seed).state_dict())
    for name, t in out.state_dict().items():
        if t.is_floating_point() and name in init and init[name].shape == t.shape:
            t.copy_(torch.lerp(t, init[name].to(t.dtype), float(strength)))
    return out.eval()


@torch.no_grad()
def add_weight_noise(model: torch.nn.Module, strength: float, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with Gaussian noise of ``strength`` times each parameter tensor's std added.

    Tied parameters (shared tensors) receive the noise once.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for _, p in sorted(out.named_parameters(), key=lambda kv: kv[0]):  # named_parameters skips tied duplicates
        if not p.is_floating_point() or p.numel() < 2:
            continue
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
        p.add_(noise * (float(strength) * p.detach().float().std().to(p.dtype)))
    return out.eval()


def layers_of(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a Llama-style (``model.model.layers``) or GPT-2 (``transformer.h``) model."""
    for path in ("model.layers", "transformer.h"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def dropped_indices(n_layers: int, n_drop: int) -> list[int]:
    """``n_drop`` layer indices evenly spread over the middle (first and last layers are kept)."""
    if not 0 <= n_drop <= max(n_layers - 2, 0):
        raise ValueError(f"can drop 0..{max(n_layers - 2, 0)} of {n_layers} layers, got {n_drop}")
    middle = n_layers - 2
    return [1 + int(np.floor((i + 0.5) * middle / n_drop)) for i in range(n_drop)]


def drop_layers(model: torch.nn.Module, n_drop: int) -> torch.nn.Module:
    """A copy of ``model`` without ``n_drop`` of its middle decoder layers (cache indices renumbered)."""
    out = copy.deepcopy(model)
    layers = layers_of(out)
    drop = set(dropped_indices(len(layers), int(n_drop)))
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    for i, layer in enumerate(kept):
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = i
    layers_parent = out.model if hasattr(out, "model") else out.transformer
    name = "layers" if hasattr(out, "model") else "h"
    setattr(layers_parent, name, torch.nn.ModuleList(kept))
    cfg = out.config
    for attr in ("num_hidden_layers", "n_layer"):
        if hasattr(cfg, attr):
            setattr(cfg, attr, len(kept))
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in drop]
    return out.eval()


def make_variant(model: torch.nn.Module, variant: Variant, seed: int = 0) -> torch.nn.Module:
    if variant.kind == "original":
        return model
    if variant.kind == "interp":
        return interpolate_to_init(model, variant.strength, seed)
    if variant.kind == "noise":
        return add_weight_noise(model, variant.strength, seed)
    if variant.kind == "drop":
        return drop_layers(model, int(variant.strength))
    raise ValueError(f"unknown variant kind {variant.kind!r}")


@dataclass(frozen=True)
class HeldOutLoss:
    """Summed negative log-likelihood (nats) over ``n_tokens`` predicted tokens."""

    nll_sum: float
    n_tokens: int

    @property
    def loss(self) -> float:
        return self.nll_sum / self.n_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def chunk_ids(ids: Sequence[int], length: int, start_id: int | None) -> list[list[int]]:
    """Non-overlapping windows of ``ids``; each starts with ``start_id`` (if given) as pure context."""
    body = length - (start_id is not None)
    out = []
    for s in range(0, len(ids) - 1, body):
        w = list(ids[s : s + body])
        if len(w) < 2 and start_id is None:
            continue
        out.append(([start_id] if start_id is not None else []) + w)
    return out


@torch.no_grad()
def held_out_loss(model: torch.nn.Module, windows: Sequence[Sequence[int]]) -> HeldOutLoss:
    """Negative log-likelihood of every token of every window after its first, one forward per window."""
    total, n = 0.0, 0
    for w in windows:
        x = torch.tensor([list(w)], dtype=torch.long)
        logits = model(input_ids=x).logits[0, :-1].double()
        lp = torch.log_softmax(logits, dim=-1)
        total -= float(lp.gather(1, x[0, 1:, None]).sum())
        n += len(w) - 1
    return HeldOutLoss(total, n)
