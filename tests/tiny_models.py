"""Tiny, deterministic causal language models for the engine's tests.

Every factory builds a float32 model in eval mode, with dropout 0 unless asked
otherwise, from a seed, without touching the global RNG state of the caller.
The weights are drawn with a much larger spread than the libraries' defaults so
that the next-token distributions are far from uniform, depend strongly on the
context, and differ between seeds: a test that compares the engine with a
brute-force oracle then has something to discriminate (with default GPT-2
initialisation, every conditional is within 1e-3 of uniform and almost any
wrong formula would pass).

Factories
---------
tiny_gpt2(vocab_size, seed)
    ``transformers.GPT2LMHeadModel`` (2 layers, 2 heads, width 16, 64 positions).
tiny_llama(vocab_size, seed)
    ``transformers.LlamaForCausalLM`` (2 layers, 2 query heads, 1 key/value head,
    width 16, rotary positions).
NoCacheLM(vocab_size, seed)
    A plain ``torch.nn.Module`` causal LM (learned positions + one causal
    self-attention block + MLP + linear head) with no KV-cache support at all:
    it ignores ``use_cache``/``past_key_values`` and its output carries only
    ``.logits``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import torch
from torch import nn

__all__ = ["tiny_gpt2", "tiny_llama", "NoCacheLM", "LogitsOnly"]


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
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=16,
        n_layer=2,
        n_head=2,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=vocab_size - 1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    _spread_weights(model, seed, gain=0.5)
    return model.float().eval()


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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
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
