"""Tiny, deterministic causal language models for the tests.

Every factory builds a float32 model from a seed without touching the caller's
global RNG state (except :func:`trainer_gpt2`, which seeds it on purpose, as
the Trainer tests always did). The engine's models (:func:`tiny_gpt2`,
:func:`tiny_llama`, :class:`NoCacheLM`) are in eval mode with dropout 0 and
weights drawn with a much larger spread than the libraries' defaults, so that
the next-token distributions are far from uniform, depend strongly on the
context, and differ between seeds: a test that compares the engine with a
brute-force oracle then has something to discriminate (with default GPT-2
initialisation, every conditional is within 1e-3 of uniform and almost any
wrong formula would pass).

Factories
---------
gpt2_lm(vocab_size, seed, ...)
    The one parametrised ``transformers.GPT2LMHeadModel`` factory (width 16,
    2 heads) behind every GPT-2 below.
tiny_gpt2(vocab_size, seed)
    Engine tests: 2 layers, 64 positions, wide weights, eval mode.
one_layer_gpt2(vocab_size, seed)
    Sink and Lightning tests: 1 layer, 32 positions, GPT-2's own initialisation, no dropout.
trainer_gpt2(tokenizer, seed)
    HF Trainer tests: 1 layer, 32 positions, ``initializer_range`` 0.5, dropout 0.1.
checkpoint_gpt2(vocab_size, seed)
    CLI tests: 2 layers, 96 positions, weights ``N(0, 1)`` (vectors ``N(0, 0.3^2)``), eval mode.
tiny_llama(vocab_size, seed)
    ``transformers.LlamaForCausalLM`` (2 layers, 2 query heads, 1 key/value head,
    width 16, rotary positions).
NoCacheLM(vocab_size, seed)
    A plain ``torch.nn.Module`` causal LM (learned positions + one causal
    self-attention block + MLP + linear head) with no KV-cache support at all:
    it ignores ``use_cache``/``past_key_values`` and its output carries only
    ``.logits``.
TINY_MODELS
    ``{"gpt2": tiny_gpt2, "llama": tiny_llama, "nocache": NoCacheLM}`` (read-only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType, SimpleNamespace
from typing import Callable, Optional

import torch
from torch import nn

__all__ = [
    "TINY_MODELS",
    "LogitsOnly",
    "NoCacheLM",
    "checkpoint_gpt2",
    "gpt2_lm",
    "one_layer_gpt2",
    "tiny_gpt2",
    "tiny_llama",
    "trainer_gpt2",
]


def _seeded(build: Callable[[], nn.Module], seed: int, *, isolate_rng: bool = True) -> nn.Module:
    """``build()`` right after ``torch.manual_seed(seed)``; with ``isolate_rng`` the global RNG is restored after."""
    if not isolate_rng:
        torch.manual_seed(seed)
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _spread_weights(model: nn.Module, seed: int, gain: float) -> None:
    """Re-draw every parameter of ``model`` from a wide normal distribution.

    Matrices get ``N(0, (gain / sqrt(fan_in))^2)`` (embeddings: ``N(0, gain^2)``),
    norm scales ``1 + N(0, 0.3^2)``, biases ``N(0, 0.3^2)``. Tied parameters are
    visited once, so ties survive.
    """
    gen = torch.Generator().manual_seed(10_007 * seed + 17)
    with torch.no_grad():
        for name, p in model.named_parameters():
            lname = name.lower()
            if p.dim() >= 2:
                if "wte" in lname or "wpe" in lname or "embed" in lname or lname.startswith("pos."):
                    std = gain
                else:
                    # GPT-2 Conv1D stores [in, out]; nn.Linear stores [out, in].
                    fan_in = p.shape[0] if "transformer.h." in name else p.shape[1]
                    std = gain / math.sqrt(fan_in)
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif "norm" in lname or "ln_" in lname:
                if lname.endswith("bias"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
                else:
                    p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _normal_weights(model: nn.Module) -> None:
    """Re-draw every parameter from the global RNG: matrices ``N(0, 1)``, vectors ``N(0, 0.3^2)``."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1.0 if p.dim() >= 2 else 0.3)


def gpt2_lm(
    vocab_size: int,
    seed: int,
    *,
    n_positions: int,
    n_layer: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: Optional[int] = None,
    dropout: Optional[float] = None,
    initializer_range: Optional[float] = None,
    reinit: Optional[Callable[[nn.Module], None]] = None,
    isolate_rng: bool = True,
):
    """A randomly initialised ``GPT2LMHeadModel`` of width 16 with 2 heads, in train mode.

    Parameters
    ----------
    vocab_size, seed : int
        Vocabulary size and seed of the weights (``torch.manual_seed(seed)``
        right before the model is built).
    n_positions, n_layer, bos_token_id, eos_token_id : int
        The matching ``GPT2Config`` fields.
    pad_token_id, initializer_range : optional
        ``GPT2Config`` fields, left at GPT-2's defaults when None.
    dropout : float, optional
        Residual, embedding and attention dropout; None leaves GPT-2's default (0.1).
    reinit : callable, optional
        ``reinit(model)`` right after construction, under the same seed (it may
        re-draw the weights from the global RNG or from its own generator).
    isolate_rng : bool, default True
        Restore the caller's global RNG state afterwards; False leaves it seeded.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    kw = dict(vocab_size=vocab_size, n_positions=n_positions, n_embd=16, n_layer=n_layer, n_head=2,
              bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    if pad_token_id is not None:
        kw["pad_token_id"] = pad_token_id
    if initializer_range is not None:
        kw["initializer_range"] = initializer_range
    if dropout is not None:
        kw.update(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    config = GPT2Config(**kw)

    def build():
        model = GPT2LMHeadModel(config)
        if reinit is not None:
            reinit(model)
        return model

    return _seeded(build, seed, isolate_rng=isolate_rng)


def tiny_gpt2(vocab_size: int, seed: int, dropout: float = 0.0):
    """A randomly initialised 2-layer ``GPT2LMHeadModel`` in eval mode (float32).

    Parameters
    ----------
    vocab_size : int
        Size of the (output) vocabulary ``V``.
    seed : int
        Seed of the weights; different seeds give clearly different models.
    dropout : float, default 0.0
        Residual, embedding and attention dropout (non-zero only for tests that
        check the engine scores in eval mode).
    """
    model = gpt2_lm(vocab_size, seed, n_positions=64, n_layer=2, bos_token_id=0, eos_token_id=vocab_size - 1,
                    dropout=dropout, reinit=lambda m: _spread_weights(m, seed, gain=0.5))
    return model.float().eval()


def one_layer_gpt2(vocab_size: int, seed: int = 0):
    """A 1-layer, 32-position GPT-2 (no dropout, GPT-2's own initialisation), in train mode.

    ``bos_token_id`` 0 and ``eos_token_id`` 1, as in :func:`helpers.word_tokenizers.fixed_word_tokenizer`.
    """
    return gpt2_lm(vocab_size, seed, n_positions=32, n_layer=1, bos_token_id=0, eos_token_id=1, dropout=0.0)


def trainer_gpt2(tokenizer, seed: int = 0, *, n_layer: int = 1, init_range: float = 0.5, dropout: float = 0.1):
    """A tiny ``GPT2LMHeadModel`` (width 16, 2 heads, 32 positions) for ``tokenizer``, in train mode.

    ``init_range`` is GPT-2's ``initializer_range``: the default 0.02 gives a
    nearly uniform model (noise rate ~1); 0.5 gives peaked distributions.
    Dropout is on by default so that training consumes the RNG (a callback that
    disturbed the RNG state would change the final weights). The global RNG is
    left seeded with ``seed``.
    """
    return gpt2_lm(len(tokenizer), seed, n_positions=32, n_layer=n_layer, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                   initializer_range=init_range, dropout=dropout, isolate_rng=False)


def checkpoint_gpt2(vocab_size: int, seed: int):
    """A 2-layer, 96-position GPT-2 with weights far wider than GPT-2's init, in eval mode.

    Conditionals are far from uniform; ``bos_token_id`` = ``eos_token_id`` = 0;
    dropout is GPT-2's default (inactive in eval mode).
    """
    model = gpt2_lm(vocab_size, seed, n_positions=96, n_layer=2, bos_token_id=0, eos_token_id=0,
                    reinit=_normal_weights)
    return model.eval()


def tiny_llama(vocab_size: int, seed: int):
    """A randomly initialised 2-layer ``LlamaForCausalLM`` in eval mode (float32).

    Uses grouped-query attention (2 query heads, 1 key/value head), rotary
    positions and untied input/output embeddings.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=vocab_size - 1,
        pad_token_id=None,
    )
    model = _seeded(lambda: LlamaForCausalLM(config), seed)
    _spread_weights(model, seed, gain=1.5)
    return model.float().eval()


@dataclass
class LogitsOnly:
    """Model output carrying nothing but ``logits`` (no cache, no loss)."""

    logits: torch.Tensor


class NoCacheLM(nn.Module):
    """A strictly causal LM with no KV-cache support.

    ``forward(input_ids, attention_mask=None, position_ids=None, **kwargs)``
    returns :class:`LogitsOnly` with ``logits`` of shape ``[B, T, V]``.
    ``use_cache``, ``past_key_values`` and any other keyword are ignored, so an
    engine that tries to feed it a cached prefix and only the new tokens gets
    wrong answers (the new tokens would be read as a fresh sequence). Like a
    transformers model it honours ``attention_mask`` (masked keys are not
    attended to; every query still sees itself, so padded rows stay finite)
    and ``position_ids`` (default ``0..T-1``).

    Parameters
    ----------
    vocab_size : int
        Vocabulary size ``V``.
    seed : int
        Seed of the weights.
    with_config : bool, default True
        Attach ``config = SimpleNamespace(vocab_size=V)``; with False the model
        has no ``config`` at all and the vocabulary is only visible as the last
        dimension of the logits.
    """

    def __init__(self, vocab_size: int, seed: int, with_config: bool = True):
        super().__init__()
        d, max_pos = 16, 64
        rng = torch.get_rng_state()  # the layers' default init is re-drawn below: leave the caller's RNG as it was
        self.embed = nn.Embedding(vocab_size, d)
        self.pos = nn.Embedding(max_pos, d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)
        self.head = nn.Linear(d, vocab_size)
        torch.set_rng_state(rng)
        self.vocab_size = vocab_size
        if with_config:
            self.config = SimpleNamespace(vocab_size=vocab_size)
        _spread_weights(self, seed, gain=1.0)
        self.eval()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> LogitsOnly:
        bsz, t = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device).expand(bsz, t)
        h = self.embed(input_ids) + self.pos(position_ids)
        q, k, v = self.q(h), self.k(h), self.v(h)
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # [B, T, T]
        allowed = torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
        allowed = allowed.expand(bsz, t, t)
        if attention_mask is not None:
            eye = torch.eye(t, dtype=torch.bool, device=h.device)
            allowed = allowed & (attention_mask[:, None, :].bool() | eye)
        scores = scores.masked_fill(~allowed, float("-inf"))
        h = h + self.o(torch.softmax(scores, dim=-1) @ v)
        h = h + self.down(torch.tanh(self.up(self.norm(h))))
        return LogitsOnly(logits=self.head(h))


#: The engine tests' three model families, by name (read-only).
TINY_MODELS = MappingProxyType({"gpt2": tiny_gpt2, "llama": tiny_llama, "nocache": NoCacheLM})
