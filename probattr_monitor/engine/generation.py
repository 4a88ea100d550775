"""Response generation for text-level scoring: greedy and the paper's top-p mode."""

from __future__ import annotations

import collections
import logging
from typing import Optional

import torch

from probattr_monitor.engine.memory import GENERATION, forward_site
from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.engine.overflow import POSITIONS, find_index_overflow, too_long_message
from probattr_monitor.engine.runner import cache_keyword, output_cache

logger = logging.getLogger(__name__)


def _next_logits(model, ids: torch.Tensor, cache):
    """Logits for the last position, reusing ``cache`` when the model supports it."""
    if cache is not None:
        out = model(input_ids=ids[:, -1:], use_cache=True, **{cache_keyword(model): cache})
    else:
        try:
            out = model(input_ids=ids, use_cache=True)
        except TypeError:
            out = model(ids)
    new_cache = output_cache(out)
    return out.logits[:, -1, :].float(), new_cache


def sample_responses(
    model: torch.nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    num_samples: int = 1,
    top_p: Optional[float] = None,
    eos_token_id: Optional[int] = None,
    seed: int = 0,
) -> list[list[int]]:
    """Generate ``num_samples`` continuations of ``prompt_ids``.

    ``top_p=None`` is greedy decoding; otherwise nucleus sampling (temperature 1,
    no top-k) with a private ``torch.Generator`` seeded by ``seed`` — the global
    RNG is never touched. Each continuation stops after ``eos_token_id`` (which
    is kept) or ``max_new_tokens`` tokens.

    An out-of-memory error goes through unchanged, with its
    :func:`~probattr_monitor.engine.memory.oom_site` (stage ``"generation"``).

    Raises
    ------
    ValueError
        A bad ``max_new_tokens`` or ``top_p``, or (for a model whose config
        declares no context window) an input that outgrew the model's
        position table: ``"input of N tokens is longer than the model's M positions"``.
    """
    return sample_batch(model, [list(prompt_ids)] * num_samples, max_new_tokens, top_p, eos_token_id, seed)


def sample_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    top_p: Optional[float] = None,
    eos_token_id: Optional[int] = None,
    seed: int = 0,
) -> list[list[int]]:
    """One batched generation of a continuation for each of ``prompts`` (all of one length).

    The same decoding as :func:`sample_responses` (which is this function on
    ``num_samples`` copies of one prompt); the rows share one private generator
    seeded by ``seed``, so a row's sample depends on the batch it was drawn in.

    Raises
    ------
    ValueError
        Prompts of different lengths or none, and the errors of :func:`sample_responses`.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not prompts or len({len(p) for p in prompts}) != 1 or not prompts[0]:
        raise ValueError("sample_batch needs at least one prompt, all non-empty and of one length")
    prompt_len = len(prompts[0])
    num_samples = len(prompts)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    ids = torch.tensor(prompts, dtype=torch.long, device=device)
    done = torch.zeros(num_samples, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(num_samples)]
    cache = None
    with scoring_mode(model), forward_site(GENERATION, num_samples, prompt_len + max_new_tokens - 1):
        for _ in range(max_new_tokens):
            try:
                logits, cache = _next_logits(model, ids, cache)
            except IndexError as err:
                overflow = find_index_overflow(model, ids, lambda: model(ids))
                if overflow is None or overflow.kind != POSITIONS:
                    raise
                raise ValueError(f"generating the response: {too_long_message(ids.shape[1], overflow)} "
                                 f"({prompt_len} prompt + {ids.shape[1] - prompt_len} generated "
                                 f"tokens)") from err
            if top_p is None:
                nxt = logits.argmax(dim=-1).cpu()
            else:
                nxt = _nucleus(logits.cpu(), top_p, gen)
            for i in range(num_samples):
                if not done[i]:
                    out[i].append(int(nxt[i]))
                    if eos_token_id is not None and int(nxt[i]) == eos_token_id:
                        done[i] = True
            if bool(done.all()):
                break
            ids = torch.cat([ids, nxt[:, None].to(device)], dim=1)
    return out


def _nucleus(logits: torch.Tensor, top_p: float, gen: torch.Generator) -> torch.Tensor:
    probs = torch.softmax(logits.double(), dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    cum = sorted_p.cumsum(dim=-1)
    keep = (cum - sorted_p) < top_p  # smallest prefix whose mass reaches top_p
    sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
    choice = torch.multinomial(sorted_p, 1, generator=gen)[:, 0]
    return order.gather(1, choice[:, None])[:, 0]


def greedy_response(model, prompt_ids, max_new_tokens=20, eos_token_id=None) -> list[int]:
    """The greedy continuation (stops after EOS, which is kept)."""
    return sample_responses(model, prompt_ids, max_new_tokens, 1, None, eos_token_id)[0]


def top_p_response(
    model, prompt_ids, max_new_tokens=20, top_p=0.9, num_samples=20, eos_token_id=None, seed=0
) -> list[int]:
    """The paper's top-p response: the most frequent of ``num_samples`` nucleus samples.

    Ties go to the sample drawn first. The paper used 500 samples.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    samples = sample_responses(model, prompt_ids, max_new_tokens, num_samples, top_p, eos_token_id, seed)
    counts = collections.Counter(tuple(s) for s in samples)
    best = max(counts.values())
    for s in samples:
        if counts[tuple(s)] == best:
            logger.debug("top-p response chosen by %d of %d samples", best, num_samples)
            return list(s)
    raise AssertionError("unreachable")
