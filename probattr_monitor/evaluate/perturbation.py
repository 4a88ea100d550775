"""The replacement operator every method is evaluated under (the paper's section 5: "we use replacement").

Removing a prompt token ``x_k`` means putting in its place the replacement
``r_k = argmax_{v != x_k} p(v | x_<k)``: the model's own most likely other
token at ``k`` given the original prefix. The replacements are computed once
per prompt from one forward pass and shared by every method and every metric,
so that all methods are compared under identical perturbations; the prompt
keeps its length and tokenisation. Position 0 (the start token) is never
removed. The score perturbed is ``f(x) = log P(y | x)`` of the fixed response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["ReplacementOperator", "response_log_prob"]

#: Rows per forward when scoring perturbed prompts.
DEFAULT_ROWS = 16


def _logits(model: Any, **inputs: Any) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out[0]


def response_log_prob(model: Any, prompts: torch.Tensor, response: torch.Tensor, rows: int = DEFAULT_ROWS) -> np.ndarray:
    """``log P(y | x')`` (nats, float64) for each prompt row ``x'`` of ``prompts`` ``[B, n]``, teacher-forced."""
    n, m = prompts.shape[1], response.shape[0]
    out = []
    with torch.no_grad():
        for start in range(0, prompts.shape[0], rows):
            chunk = prompts[start:start + rows]
            ids = torch.cat([chunk, response.expand(chunk.shape[0], m)], dim=1)
            logp = torch.log_softmax(_logits(model, input_ids=ids)[:, n - 1:n + m - 1].double(), dim=-1)
            out.append(logp.gather(-1, response.expand(chunk.shape[0], m).unsqueeze(-1)).squeeze(-1).sum(-1))
    return torch.cat(out).cpu().numpy()


@dataclass(frozen=True)
class ReplacementOperator:
    """Scores a prompt with any subset of its positions replaced.

    Attributes
    ----------
    model
        The causal LM (eval mode, its output has ``.logits``).
    prompt, response : torch.Tensor
        1-D token ids (long), on the model's device.
    replacements : torch.Tensor
        ``r_k`` per prompt position; ``r_0 = x_0`` (position 0 is never removed).
    positions : numpy.ndarray
        The removable positions ``1 .. n - 1``.
    """

    model: Any
    prompt: torch.Tensor
    response: torch.Tensor
    replacements: torch.Tensor
    positions: np.ndarray

    @classmethod
    def build(cls, model: Any, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> "ReplacementOperator":
        """Compute the replacements ``r_k`` from one forward pass over the prompt."""
        device = next(model.parameters()).device
        prompt = torch.as_tensor(list(prompt_ids), dtype=torch.long, device=device)
        response = torch.as_tensor(list(response_ids), dtype=torch.long, device=device)
        with torch.no_grad():
            logits = _logits(model, input_ids=prompt[None])[0, :-1].double()
        logits[torch.arange(len(prompt) - 1), prompt[1:]] = -torch.inf
        repl = torch.cat([prompt[:1], logits.argmax(-1)])
        return cls(model, prompt, response, repl, np.arange(1, len(prompt)))

    @property
    def n_positions(self) -> int:
        return len(self.positions)

    def perturbed(self, removed: np.ndarray) -> torch.Tensor:
        """Prompt rows ``[B, n]`` with ``removed`` (bool ``[B, n_positions]``) positions replaced."""
        removed = np.atleast_2d(np.asarray(removed, dtype=bool))
        full = np.zeros((removed.shape[0], len(self.prompt)), dtype=bool)
        full[:, self.positions] = removed
        mask = torch.as_tensor(full, device=self.prompt.device)
        return torch.where(mask, self.replacements.expand_as(mask), self.prompt.expand_as(mask))

    def score(self, removed: np.ndarray) -> np.ndarray:
        """``log P(y | x')`` for each row of ``removed`` (bool ``[B, n_positions]``)."""
        return response_log_prob(self.model, self.perturbed(removed), self.response)

    def original_score(self) -> float:
        return float(self.score(np.zeros((1, self.n_positions), dtype=bool))[0])
