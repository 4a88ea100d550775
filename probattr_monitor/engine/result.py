"""Typed results of the attribution engine and their per-row export."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from probattr_monitor.io_utils import atomic_write_text, jsonable

#: Per-position float64 quantities, in nats, in the order they are exported.
SCORE_FIELDS = (
    "attribution",
    "log_numerator",
    "log_denominator",
    "entropy_prompt",
    "entropy_full",
    "kl",
)

#: Per-position surprisals of the prompt token itself, in nats: ``-log p(x_k | x_<k)``
#: (the plain causal loss), ``-log p_k(x_k)`` and ``-log p'_k(x_k)`` (docs/design.md
#: section 2). They are exported with the scores; ``surprisal_prompt - surprisal_full
#: = attribution`` holds.
SURPRISAL_FIELDS = ("surprisal_prefix", "surprisal_prompt", "surprisal_full")

#: Every per-position quantity of a result, in export order.
EXPORT_FIELDS = SCORE_FIELDS + SURPRISAL_FIELDS

#: How many replacement candidates of p_k and p'_k a result keeps per position.
TOP_K = 5


@dataclass(frozen=True)
class AttributionResult:
    """Probabilistic attribution of one prompt/response pair.

    Every per-position array is aligned with :attr:`positions`. All
    log-quantities are natural logs (nats) in float64.

    Attributes
    ----------
    positions : numpy.ndarray
        Scored prompt indices ``k`` (int64), each in ``[1, len(prompt_ids) - 1]``.
    token_ids : numpy.ndarray
        The prompt token ``x_k`` at each scored position (int64).
    attribution : numpy.ndarray
        AS_k = log P(y|x) - log P(y|x_-k) (docs/design.md section 2, eq. 3/7).
    log_numerator : numpy.ndarray
        log P(x_>k, y | x_<k) over the candidate set (eq. 8).
    log_denominator : numpy.ndarray
        log P(x_>k | x_<k) over the candidate set (eq. 9).
    entropy_prompt : numpy.ndarray
        H_k, entropy of p_k = P(x_k = . | rest of prompt) (eq. 13).
    entropy_full : numpy.ndarray
        H'_k, entropy of p'_k = P(x_k = . | rest of prompt, response) (eq. 14).
    kl : numpy.ndarray
        KL(p'_k || p_k) (eq. 15).
    log_p_response : float
        log P(y | x).
    top_prior_ids, top_prior_probs : numpy.ndarray
        ``[len(positions), TOP_K]`` most probable candidates of p_k and their
        probabilities (fewer columns when the candidate set is smaller).
    top_posterior_ids, top_posterior_probs : numpy.ndarray
        The same for p'_k.
    prompt_ids, response_ids : tuple of int
        The token ids scored, exactly as the model conditioned on them.
    num_candidates : int
        Size of the candidate set the sums ran over (the vocabulary size for
        ``candidates="all"``). The original token is added to a given subset at
        each position where it is missing, so sets can differ by one between
        positions: this is the largest; ``info["num_candidates_per_position"]``
        has each.
    token_texts : tuple of str, optional
        Text of each scored prompt token (filled by :func:`attribute_text`).
    is_special : numpy.ndarray, optional
        Boolean flag per scored position: the token is a special token of the
        tokenizer (BOS/EOS, chat-template markers).
    response_text : str, optional
        Decoded response (filled by :func:`attribute_text`).
    token_log_joint : numpy.ndarray, optional
        ``a_k(x_k) = log P(x_k, x_>k | x_<k)`` of the prompt's own token at each
        position (from the full pass). It gives :attr:`surprisal_prompt` and
        :attr:`surprisal_full`, which are NaN without it.
    token_log_prob : numpy.ndarray, optional
        ``log p(x_k | x_<k)`` at each position (from the full pass); gives
        :attr:`surprisal_prefix`, NaN without it.
    stderr : dict of str to numpy.ndarray
        Standard error of each estimated quantity (empty for exact scoring).
    info : dict
        Free-form scoring metadata (cost counters, settings; ``largest_batch_rows``
        is the largest candidate batch the model was run on).
    """

    positions: np.ndarray
    token_ids: np.ndarray
    attribution: np.ndarray
    log_numerator: np.ndarray
    log_denominator: np.ndarray
    entropy_prompt: np.ndarray
    entropy_full: np.ndarray
    kl: np.ndarray
    log_p_response: float
    top_prior_ids: np.ndarray
    top_prior_probs: np.ndarray
    top_posterior_ids: np.ndarray
    top_posterior_probs: np.ndarray
    prompt_ids: tuple
    response_ids: tuple
    num_candidates: int
    token_texts: Optional[tuple] = None
    is_special: Optional[np.ndarray] = None
    response_text: Optional[str] = None
    token_log_joint: Optional[np.ndarray] = None
    token_log_prob: Optional[np.ndarray] = None
    stderr: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    @property
    def surprisal_prefix(self) -> np.ndarray:
        """``-log p(x_k | x_<k)``: the prompt token's plain causal loss (nats), exact in every mode."""
        if self.token_log_prob is None:
            return np.full(len(self), np.nan)
        return -self.token_log_prob

    @property
    def surprisal_prompt(self) -> np.ndarray:
        """``-log p_k(x_k)``: how surprising the prompt's token is given the rest of the prompt (nats)."""
        if self.token_log_joint is None:
            return np.full(len(self), np.nan)
        return self.log_denominator - self.token_log_joint

    @property
    def surprisal_full(self) -> np.ndarray:
        """``-log p'_k(x_k)``: the same given the rest of the prompt and the response (nats)."""
        if self.token_log_joint is None:
            return np.full(len(self), np.nan)
        return self.log_numerator - self.token_log_joint - self.log_p_response

    def to_rows(self, decode: Optional[Any] = None) -> list[dict]:
        """One dict per scored position (the export schema).

        Parameters
        ----------
        decode : callable, optional
            ``decode(token_id) -> str`` used for candidate texts; when omitted,
            candidate texts are left out and only ids are written.

        Returns
        -------
        list of dict
            Keys: ``position, token_id, token_text, is_special``, the
            :data:`EXPORT_FIELDS` (plus ``<name>_se`` where standard errors
            exist), and ``top_prior`` / ``top_posterior``: lists of
            ``{"id", "text", "prob"}`` dicts.
        """
        rows = []
        for i in range(len(self)):
            row: dict[str, Any] = {
                "position": int(self.positions[i]),
                "token_id": int(self.token_ids[i]),
                "token_text": None if self.token_texts is None else self.token_texts[i],
                "is_special": None if self.is_special is None else bool(self.is_special[i]),
            }
            for name in EXPORT_FIELDS:
                row[name] = float(getattr(self, name)[i])
                if name in self.stderr:
                    row[f"{name}_se"] = float(self.stderr[name][i])
            for kind, ids, probs in (
                ("top_prior", self.top_prior_ids, self.top_prior_probs),
                ("top_posterior", self.top_posterior_ids, self.top_posterior_probs),
            ):
                row[kind] = [
                    {
                        "id": int(t),
                        "text": None if decode is None else decode(int(t)),
                        "prob": float(p),
                    }
                    for t, p in zip(ids[i], probs[i])
                ]
            rows.append(row)
        return rows

    def to_json(self, path: str | Path, decode: Optional[Any] = None) -> Path:
        """Write the per-position table plus the pair's metadata as JSON, atomically."""
        payload = {
            "prompt_ids": list(self.prompt_ids),
            "response_ids": list(self.response_ids),
            "response_text": self.response_text,
            "log_p_response": self.log_p_response,
            "num_candidates": self.num_candidates,
            "info": jsonable(self.info),
            "rows": self.to_rows(decode),
        }
        return atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=True))

    def to_csv(self, path: str | Path, decode: Optional[Any] = None) -> Path:
        """Write one row per scored position as CSV, atomically.

        Candidate columns are flattened to ``top_prior_{i}_id``,
        ``top_prior_{i}_text``, ``top_prior_{i}_prob`` (and the same for
        ``top_posterior``), ``i = 1..TOP_K``.
        """
        rows = self.to_rows(decode)
        flat = []
        for row in rows:
            out = {k: v for k, v in row.items() if k not in ("top_prior", "top_posterior")}
            for kind in ("top_prior", "top_posterior"):
                for i in range(TOP_K):
                    cand = row[kind][i] if i < len(row[kind]) else {"id": None, "text": None, "prob": None}
                    out[f"{kind}_{i + 1}_id"] = cand["id"]
                    out[f"{kind}_{i + 1}_text"] = cand["text"]
                    out[f"{kind}_{i + 1}_prob"] = cand["prob"]
            flat.append(out)
        buf = io.StringIO()
        if flat:
            writer = csv.DictWriter(buf, fieldnames=list(flat[0].keys()))
            writer.writeheader()
            writer.writerows(flat)
        return atomic_write_text(path, buf.getvalue())

