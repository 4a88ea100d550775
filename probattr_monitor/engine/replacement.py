"""Replacement entropy and share of original responses (the paper's section 4.3).

For each prompt position ``k`` the candidates are the most probable tokens of the
prior ``p(. | x_<k)`` (the model's own next-token output at ``k - 1``) that
together hold ``mass`` of its probability (default 90 %). Each candidate is put
in place of ``x_k``, the rest of the prompt unchanged (:func:`replace_token`),
and the response is regenerated, greedy and with the paper's top-p scheme (the
most frequent of ``num_samples`` nucleus samples), in one batched generation per
position and decoding. Responses are counted as the same only when every token
matches. The **replacement entropy** is the entropy (nats) of the normalised
response-frequency distribution over the candidates; the **original share** is
the fraction of candidates whose response equals the unmodified prompt's
response under the same decoding.

Why the prior: the paper (section 4.3) takes the top tokens from "the LLM output
... converted to probabilities, sorted in descending order", before any response
exists, and uses the same candidates for greedy and top-p. The model's output at
``k - 1`` is ``p(x_k | x_<k)``; ``p'_k`` would need the response and a sweep over
the vocabulary, and would differ between the two decodings.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from probattr_monitor.engine.generation import sample_batch
from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.engine.validation import check_fits_context, check_positive_int

logger = logging.getLogger(__name__)

#: The decodings a replacement run can regenerate with.
REPLACEMENT_DECODINGS = ("greedy", "top-p")

#: Default bound on the candidates regenerated per position.
DEFAULT_MAX_CANDIDATES = 32

#: Default probability mass the candidates hold (the paper's 90 %).
DEFAULT_MASS = 0.9


def replace_token(prompt_ids: Sequence[int], k: int, v: int) -> list[int]:
    """``prompt_ids`` with the token at index ``k`` replaced by ``v``, everything else unchanged.

    Raises
    ------
    IndexError
        ``k`` outside ``[0, len(prompt_ids) - 1]``.
    """
    ids = [int(t) for t in prompt_ids]
    if not 0 <= k < len(ids):
        raise IndexError(f"position {k} is outside the prompt of {len(ids)} tokens")
    ids[k] = int(v)
    return ids


def mass_candidates(probs: Any, mass: float = DEFAULT_MASS) -> tuple[np.ndarray, float]:
    """The most probable ids whose cumulative probability first reaches ``mass``.

    Ids are sorted by descending probability (ties: the lower id first). The set is
    the smallest such prefix, the rule of nucleus sampling.

    Returns
    -------
    ids : numpy.ndarray
        int64 ids, most probable first.
    covered : float
        Their total probability.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"probs must be a non-empty 1-D array, got shape {p.shape}")
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    order = np.argsort(-p, kind="stable")
    sorted_p = p[order]
    before = np.cumsum(sorted_p) - sorted_p
    keep = before < mass * float(sorted_p.sum()) - 1e-12
    keep[0] = True
    ids = order[keep].astype(np.int64)
    return ids, float(p[ids].sum() / sorted_p.sum())


def response_entropy(responses: Sequence[Sequence[int]]) -> float:
    """Entropy (nats) of the frequency distribution of exact-match responses."""
    if not responses:
        raise ValueError("response_entropy needs at least one response")
    counts = np.array(list(collections.Counter(tuple(r) for r in responses).values()), dtype=np.float64)
    q = counts / counts.sum()
    return float(-(q * np.log(q)).sum()) + 0.0


@dataclass(frozen=True)
class ReplacementResult:
    """Replacement entropy and share of original responses per scored position.

    Attributes
    ----------
    positions : numpy.ndarray
        Prompt indices ``k`` (int64).
    num_candidates : numpy.ndarray
        Candidates regenerated at each position (int64), at most ``max_candidates``.
    truncated : numpy.ndarray
        True where the mass set had more candidates than ``max_candidates``.
    mass_covered : numpy.ndarray
        Prior probability the regenerated candidates hold.
    entropy : dict of str to numpy.ndarray
        Per decoding (``"greedy"``, ``"top-p"``), the replacement entropy in nats.
    original_share : dict of str to numpy.ndarray
        Per decoding, the fraction of candidates whose response equals the original.
    original : dict of str to tuple of int
        Per decoding, the unmodified prompt's response compared against.
    mass, max_candidates, num_samples, top_p, seed, max_new_tokens
        The settings (recorded in every report).
    generated_tokens : int
        Tokens generated, summed over every batched row and step.
    token_forwards : int
        Token-forwards of the generations with a KV cache (each row feeds the
        prompt once, then one token per further step), plus the one prior pass.
    """

    positions: np.ndarray
    num_candidates: np.ndarray
    truncated: np.ndarray
    mass_covered: np.ndarray
    entropy: dict
    original_share: dict
    original: dict
    mass: float
    max_candidates: int
    num_samples: int
    top_p: float
    seed: int
    max_new_tokens: int
    generated_tokens: int = 0
    token_forwards: int = 0
    candidates: tuple = field(default=(), repr=False)

    def settings(self) -> dict:
        """The settings and cost counters, JSON-friendly."""
        return {
            "mass": self.mass,
            "max_candidates": self.max_candidates,
            "num_samples": self.num_samples,
            "top_p": self.top_p,
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            "decodings": list(self.entropy),
            "truncated_positions": int(np.sum(self.truncated)),
            "generated_tokens": self.generated_tokens,
            "token_forwards": self.token_forwards,
        }


def prior_probs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """``p(. | x_<k)`` at every position (row ``k - 1`` predicts ``x_k``), float64."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.tensor([ids], dtype=torch.long, device=device)
    with scoring_mode(model):
        try:
            out = model(input_ids=x)
        except TypeError:
            out = model(x)
    return torch.softmax(out.logits[0].double(), dim=-1).cpu()


def _check(prompt_ids, positions, decodings, mass, max_candidates, num_samples, top_p, max_new_tokens):
    if isinstance(prompt_ids, torch.Tensor):
        prompt_ids = prompt_ids.tolist()
    ids = [int(t) for t in prompt_ids]
    if len(ids) < 2:
        raise ValueError(f"the prompt needs at least 2 tokens (a start token and one to replace), got {len(ids)}")
    if positions is None:
        pos = list(range(1, len(ids)))
    else:
        pos = [int(k) for k in positions]
        bad = [k for k in pos if not 1 <= k < len(ids)]
        if bad:
            raise ValueError(f"positions must be in [1, {len(ids) - 1}], got {bad}")
    if isinstance(decodings, str):
        decodings = (decodings,)
    decodings = tuple(decodings)
    unknown = [d for d in decodings if d not in REPLACEMENT_DECODINGS]
    if not decodings or unknown:
        raise ValueError(f"decodings must be a non-empty subset of {REPLACEMENT_DECODINGS}, got {decodings}")
    if isinstance(mass, bool) or not isinstance(mass, (int, float)) or not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass!r}")
    check_positive_int(max_candidates, "max_candidates")
    check_positive_int(num_samples, "num_samples")
    check_positive_int(max_new_tokens, "max_new_tokens")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    return ids, pos, decodings


def replacement_entropy(
    model: torch.nn.Module,
    prompt_ids: Sequence[int],
    *,
    positions: Optional[Sequence[int]] = None,
    decodings: Sequence[str] = REPLACEMENT_DECODINGS,
    mass: float = DEFAULT_MASS,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    max_new_tokens: int = 20,
    top_p: float = 0.9,
    num_samples: int = 20,
    eos_token_id: Optional[int] = None,
    seed: int = 0,
) -> ReplacementResult:
    """Replacement entropy and share of original responses at each prompt position.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM whose output has ``.logits``.
    prompt_ids : sequence of int
        The prompt as the model conditions on it (start token included).
    positions : sequence of int, optional
        Indices in ``[1, n - 1]``; default all.
    decodings : sequence of {"greedy", "top-p"}
        How responses are regenerated; both by default.
    mass : float
        Probability mass of the prior the candidates hold (the paper's 0.9).
    max_candidates : int
        Cap on the candidates per position: the most probable ``max_candidates``
        of the mass set are kept (``truncated`` records where the cap bit).
    max_new_tokens, top_p, num_samples, eos_token_id, seed
        The response settings. ``"top-p"`` is the paper's scheme: each
        candidate's response is the most frequent of ``num_samples`` nucleus
        samples, drawn in the same batch (``num_candidates * num_samples`` rows).
        The generator of position ``k`` is seeded with ``seed + k``.

    Returns
    -------
    ReplacementResult

    Raises
    ------
    ValueError
        A prompt shorter than 2 tokens, positions out of range, unknown or no
        decodings, a mass outside (0, 1], a non-positive cap, sample count or
        response length, or a prompt + response longer than the model's context.
    """
    ids, pos, decodings = _check(prompt_ids, positions, decodings, mass, max_candidates, num_samples,
                                 top_p, max_new_tokens)
    check_fits_context(model, len(ids) + max_new_tokens, "replacement entropy", "prompt + response")
    n = len(ids)
    prior = prior_probs(model, ids)
    cost = [0, n]  # generated tokens, token-forwards (the prior pass)
    gen = dict(max_new_tokens=max_new_tokens, top_p=top_p, num_samples=num_samples, eos_token_id=eos_token_id)
    original = {d: tuple(_generate(model, [ids], d, seed, cost, **gen)[0]) for d in decodings}
    n_cand = np.zeros(len(pos), np.int64)
    truncated = np.zeros(len(pos), bool)
    covered = np.zeros(len(pos))
    entropy = {d: np.zeros(len(pos)) for d in decodings}
    share = {d: np.zeros(len(pos)) for d in decodings}
    cand_lists = []
    for i, k in enumerate(pos):
        cand, _ = mass_candidates(prior[k - 1].numpy(), mass)
        truncated[i] = cand.size > max_candidates
        cand = cand[:max_candidates]
        cand_lists.append(tuple(int(v) for v in cand))
        n_cand[i] = cand.size
        covered[i] = float(prior[k - 1, torch.as_tensor(cand)].sum())
        prompts = [replace_token(ids, k, int(v)) for v in cand]
        for d in decodings:
            responses = _generate(model, prompts, d, seed + k, cost, **gen)
            entropy[d][i] = response_entropy(responses)
            share[d][i] = sum(tuple(r) == original[d] for r in responses) / len(responses)
        logger.debug("replacement entropy at %d: %d candidates, %s", k, cand.size,
                     {d: entropy[d][i] for d in decodings})
    generated, forwards = cost
    return ReplacementResult(
        positions=np.asarray(pos, np.int64), num_candidates=n_cand, truncated=truncated,
        mass_covered=covered, entropy=entropy, original_share=share, original=original,
        mass=float(mass), max_candidates=int(max_candidates), num_samples=int(num_samples),
        top_p=float(top_p), seed=int(seed), max_new_tokens=int(max_new_tokens),
        generated_tokens=int(generated), token_forwards=int(forwards), candidates=tuple(cand_lists),
    )


def _generate(model, prompts, decoding, seed, cost, *, max_new_tokens, top_p, num_samples, eos_token_id):
    """One batched generation of each prompt's response under ``decoding``; adds its cost to ``cost``.

    ``"top-p"`` runs ``num_samples`` rows per prompt and keeps each prompt's most
    frequent sample, as :func:`~probattr_monitor.engine.generation.top_p_response` does.
    """
    reps = 1 if decoding == "greedy" else num_samples
    rows = [p for p in prompts for _ in range(reps)]
    samples = sample_batch(model, rows, max_new_tokens, None if decoding == "greedy" else top_p,
                           eos_token_id, seed)
    steps = max(len(s) for s in samples)  # the batch runs until its longest row stops
    cost[0] += len(rows) * steps
    cost[1] += len(rows) * (len(prompts[0]) + steps - 1)
    if reps == 1:
        return samples
    return [_most_frequent(samples[j * reps:(j + 1) * reps]) for j in range(len(prompts))]


def _most_frequent(samples: Sequence[Sequence[int]]) -> list[int]:
    """The paper's top-p choice: the most frequent sample, ties to the first drawn."""
    counts = collections.Counter(tuple(s) for s in samples)
    best = max(counts.values())
    for s in samples:
        if counts[tuple(s)] == best:
            return list(s)
    raise AssertionError("unreachable")


def replacement_columns(res: ReplacementResult) -> dict[str, np.ndarray]:
    """The per-position columns a token table gets from ``res``, keyed by column name."""
    cols: dict[str, np.ndarray] = {"replacement_candidates": res.num_candidates.astype(np.int64)}
    for d in REPLACEMENT_DECODINGS:
        tag = d.replace("-", "_")
        nan = np.full(len(res.positions), math.nan)
        cols[f"replacement_entropy_{tag}"] = res.entropy.get(d, nan).astype(np.float64)
        cols[f"original_share_{tag}"] = res.original_share.get(d, nan).astype(np.float64)
    return cols
