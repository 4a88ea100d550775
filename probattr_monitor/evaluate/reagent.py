"""ReAgent, the recursive attribution generator (Zhao and Shan, 2024), for a fixed response.

Reference: Zhao Z. and Shan B., "ReAGent: A Model-agnostic Feature
Attribution Method for Generative Language Models", AAAI 2024 ReLM workshop,
arXiv:2402.00794. This module follows Inseq 0.7.1's implementation
(``inseq/attr/feat/ops/reagent.py`` and ``reagent_core/``: the
``DeltaProbImportanceScoreEvaluator``, the ``UniformTokenReplacer``, the
``TopKStoppingConditionEvaluator`` and the ``AggregateRationalizer``), step
for step, with three departures, each needed here:

- **Token replacer.** Inseq samples a replacement uniformly among the
  vocabulary tokens sharing the original's part-of-speech tag (NLTK's
  perceptron tagger, whose data is downloaded at run time), the paper
  predicts replacements with RoBERTa; neither can be downloaded on an offline
  machine. The default replacer here (``"model"``) samples
  ``v ~ p(v | x_<k), v != x_k`` from the evaluated model itself, given the
  original prefix: like the paper's masked LM it proposes tokens plausible in
  context, it needs no second model or tokenizer, and it is the distribution
  whose argmax is the replacement every metric removes a token with
  (:mod:`.perturbation`). ``"uniform"`` samples uniformly among the other
  tokens of the vocabulary (the original ReAGent code's uniform sampler).
  Neither ever proposes the original token.
- **Target.** Inseq attributes one next token; here the target is the whole
  fixed response ``y`` (``m`` tokens, teacher-forced), through its per-token
  geometric-mean probability ``p(y | x) = exp(log P(y | x) / m)``, which lies
  in ``[0, 1]`` as the method's rescaling needs, equals Inseq's target
  probability when ``m = 1``, and is monotone in ``log P(y | x)``, the score
  every other method attributes. The stopping condition asks every response
  token to be among the top-``k`` predictions at its position.
- **Positions.** Only prompt positions ``1 .. n - 1`` are replaced and scored;
  position 0 (the start token) is never removed, as for every method here.

The algorithm, for ``R`` probes run in parallel (a batch; a ReAgent probe is
one run from a random start, not a prompt of a probe set): each probe starts
from random logit scores ``s``; each step replaces a random share of the
positions, measures ``delta = p(y | x) - p(y | x_replaced)`` and adds
``logit((d + 1) / 2)`` to ``s``, with ``d = delta`` at replaced positions and
``-delta`` at kept ones; the importance is ``softmax(s)``. A probe stops when,
with its ``keep_top_n`` most important positions kept and all others
replaced, the response is still predicted (top-``k`` at every position); the
attribution is the mean importance of the probes that stopped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from probattr_monitor.evaluate.perturbation import DEFAULT_ROWS

__all__ = ["REPLACERS", "ReagentResult", "ReagentSettings", "forwards_per_prompt", "reagent_attribution"]

logger = logging.getLogger(__name__)

#: Token replacers by name (see the module docstring).
REPLACERS = ("model", "uniform")

#: ``(d + 1) / 2`` is clamped to ``[EPS, 1 - EPS]`` before the logit, so that a full drop stays finite.
EPS = 1e-6


@dataclass(frozen=True)
class ReagentSettings:
    """ReAgent's parameters (defaults: Inseq 0.7.1's ``Reagent``).

    Attributes
    ----------
    keep_top_n : int
        Positions kept (the most important) when the stopping condition is tested; all others are replaced.
    stopping_top_k : int
        A probe stops when every response token is among this many top predictions.
    replacing_ratio : float
        Share of positions replaced at each step (each position independently), in ``(0, 1)``.
    max_steps : int
        Steps before the probes that have not stopped are given up.
    num_probes : int
        ReAgent's probes (independent runs from different random starts, batched; not the prompts of a probe
        set); the attribution is the mean over those that stopped.
    replacer : {"model", "uniform"}
        How replacement tokens are sampled (:data:`REPLACERS`).
    seed : int
        Seed of the method's own torch generator (the global RNG is not touched).
    """

    keep_top_n: int = 5
    stopping_top_k: int = 3
    replacing_ratio: float = 0.3
    max_steps: int = 3000
    num_probes: int = 16
    replacer: str = "model"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("keep_top_n", "stopping_top_k", "max_steps", "num_probes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ReagentSettings.{name} must be a positive integer, got {value!r}")
        if not 0.0 < float(self.replacing_ratio) < 1.0:
            raise ValueError(f"ReagentSettings.replacing_ratio must be in (0, 1), got {self.replacing_ratio!r}")
        if self.replacer not in REPLACERS:
            raise ValueError(f"ReagentSettings.replacer must be one of {REPLACERS}, got {self.replacer!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"ReagentSettings.seed must be a non-negative integer, got {self.seed!r}")

    def to_dict(self) -> dict:
        return {"keep_top_n": self.keep_top_n, "stopping_top_k": self.stopping_top_k,
                "replacing_ratio": self.replacing_ratio, "max_steps": self.max_steps,
                "num_probes": self.num_probes, "replacer": self.replacer, "seed": self.seed}


@dataclass(frozen=True)
class ReagentResult:
    """ReAgent's attribution of one prompt and what it cost.

    Attributes
    ----------
    attribution : numpy.ndarray
        Importance per prompt position ``[n]`` (float64, non-negative, summing to 1 over ``1 .. n - 1``;
        position 0 is 0).
    steps : int
        Steps run (at most ``max_steps``).
    stopped : int
        Probes that met the stopping condition (when none did, all are averaged and a warning is logged).
    model_calls : int
        Forward calls of the model.
    row_forwards : int
        Sequences fed to the model (the first over the prompt, the others over prompt + response).
    """

    attribution: np.ndarray
    steps: int
    stopped: int
    model_calls: int
    row_forwards: int


class _ResponseStats:
    """Teacher-forced response statistics of prompt rows, counting the forwards."""

    def __init__(self, model: Any, response: torch.Tensor, top_k: int) -> None:
        self.model, self.response, self.top_k = model, response, top_k
        self.calls = self.rows = 0

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += ids.shape[0]
        out = self.model(input_ids=ids)
        return out.logits if hasattr(out, "logits") else out[0]

    def __call__(self, prompts: torch.Tensor) -> tuple:
        """Per row: the geometric-mean response probability and whether every response token is in the top-k."""
        n, m = prompts.shape[1], self.response.shape[0]
        probs, hits = [], []
        for start in range(0, prompts.shape[0], DEFAULT_ROWS):
            chunk = prompts[start:start + DEFAULT_ROWS]
            target = self.response.expand(chunk.shape[0], m)
            logits = self.logits(torch.cat([chunk, target], dim=1))[:, n - 1:n + m - 1].double()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
            probs.append(torch.exp(logp.mean(-1)))
            top = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1).indices
            hits.append((top == target.unsqueeze(-1)).any(-1).all(-1))
        return torch.cat(probs).cpu(), torch.cat(hits).cpu()


class _Sampler:
    """Replacement tokens ``[R, P]`` for positions ``1 .. n - 1``, never the original token."""

    def __init__(self, kind: str, prompt: torch.Tensor, counter: _ResponseStats, gen: torch.Generator) -> None:
        self.kind, self.gen = kind, gen
        self.originals = prompt[1:].cpu()
        with torch.no_grad():
            logits = counter.logits(prompt[None])[0, :-1].double().cpu()
        self.vocab = logits.shape[-1]
        if kind == "model":
            logits[torch.arange(len(self.originals)), self.originals] = -torch.inf
            self.probs = torch.softmax(logits, dim=-1)

    def __call__(self, rows: int) -> torch.Tensor:
        if self.kind == "model":
            return torch.multinomial(self.probs, rows, replacement=True, generator=self.gen).T
        draw = torch.randint(0, self.vocab - 1, (rows, len(self.originals)), generator=self.gen)
        return draw + (draw >= self.originals).long()


def reagent_attribution(model: Any, prompt: torch.Tensor, response: torch.Tensor,
                        settings: ReagentSettings) -> ReagentResult:
    """ReAgent's importance of every prompt position for ``log P(y | x)`` of the fixed response.

    Parameters
    ----------
    model
        A causal LM in eval mode whose output has ``.logits``.
    prompt, response : torch.Tensor
        1-D token ids (long) on the model's device; the prompt has at least 2 tokens.
    settings : ReagentSettings
        The method's parameters and seed.

    Returns
    -------
    ReagentResult
        The attribution ``[n]`` (position 0 is 0) and the steps and forwards spent. The same model, inputs and
        settings give the same result (all sampling uses one seeded CPU generator).

    Raises
    ------
    ValueError
        If the prompt has under 2 tokens or the response is empty.
    """
    n, positions = prompt.shape[0], prompt.shape[0] - 1
    if positions < 1 or response.shape[0] < 1:
        raise ValueError("ReAgent needs a prompt of at least 2 tokens and a non-empty response")
    s = settings
    gen = torch.Generator().manual_seed(s.seed)
    stats = _ResponseStats(model, response, s.stopping_top_k)
    rows = s.num_probes
    with torch.no_grad():
        sample = _Sampler(s.replacer, prompt, stats, gen)
        originals = sample.originals.expand(rows, positions)
        device = prompt.device

        def with_prompt(tail: torch.Tensor) -> torch.Tensor:
            return torch.cat([prompt[:1].expand(rows, 1), tail.to(device)], dim=1)

        p0_all, hit0 = stats(prompt[None])
        p0 = p0_all[0]
        if not bool(hit0[0]):
            logger.warning("ReAgent: the response is not within the top %d predictions even on the original "
                           "prompt, so probes are unlikely to stop before max_steps (%d)", s.stopping_top_k,
                           s.max_steps)
        scores = torch.rand(rows, positions, generator=gen, dtype=torch.float64)
        stopped = torch.zeros(rows, dtype=torch.bool)
        keep_n = min(s.keep_top_n, positions)
        steps = 0
        while steps < s.max_steps:
            steps += 1
            replaced = torch.rand(rows, positions, generator=gen) < s.replacing_ratio
            perturbed = torch.where(replaced, sample(rows), originals)
            delta = (p0 - stats(with_prompt(perturbed))[0])[:, None]
            signed = torch.where(replaced, delta, -delta)
            update = scores + torch.logit((signed * 0.5 + 0.5).clamp(EPS, 1.0 - EPS))
            scores = torch.where(stopped[:, None], scores, update)
            importance = torch.softmax(scores, dim=-1)
            kept = torch.zeros(rows, positions, dtype=torch.bool)
            kept.scatter_(1, importance.topk(keep_n, dim=-1).indices, True)
            test = torch.where(kept, originals, sample(rows))
            stopped |= stats(with_prompt(test))[1]
            if bool(stopped.all()):
                break
    importance = torch.softmax(scores, dim=-1)
    n_stopped = int(stopped.sum())
    if n_stopped:
        mean = importance[stopped].mean(0)
    else:
        logger.warning("ReAgent: no probe met the stopping condition in %d steps; averaging all %d probes",
                       steps, rows)
        mean = importance.mean(0)
    out = np.zeros(n, dtype=np.float64)
    out[1:] = mean.numpy()
    logger.debug("ReAgent: %d steps, %d of %d probes stopped, %d model calls", steps, n_stopped, rows, stats.calls)
    return ReagentResult(out, steps, n_stopped, stats.calls, stats.rows)


def forwards_per_prompt(steps: int, settings: ReagentSettings) -> int:
    """Model calls ReAgent makes on one prompt that ran ``steps`` steps.

    One over the prompt (the replacer's prior, or the vocabulary size for ``"uniform"``), one for the original
    response probability, and per step two batches of ``num_probes`` rows (the update and the stopping test),
    each split into calls of at most ``DEFAULT_ROWS`` rows.
    """
    per_batch = math.ceil(settings.num_probes / DEFAULT_ROWS)
    return 1 + 1 + 2 * steps * per_batch
