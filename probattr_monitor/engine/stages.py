"""Candidate rows read in stages at one position, each stage resuming where an earlier one stopped.

The budgeted estimator (docs/design.md section 7) reads some candidates of a
position up to three times: the screen feeds ``v`` (one token), the refine
stage ``v`` and the first ``d - 1`` suffix tokens, the exact stage the whole
suffix ``v, x_>k, y_<m``. Every row starts with the same tokens, so a later
stage can continue from the KV states an earlier stage computed for the same
id instead of feeding them again. The log-probabilities are the same (up to the
float rounding of a different batch); the token-forwards saved are counted by
:func:`probattr_monitor.engine.screening.reusable_token_forwards`.

Models without a KV cache (the engine's ``full`` path) feed every row whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from probattr_monitor.engine.passes import suffix_sums
from probattr_monitor.engine.runner import FullPass, ModelRunner

logger = logging.getLogger(__name__)

#: Share of the engine's memory budget the kept states of one position may hold.
KEPT_STATES_SHARE = 0.5


@dataclass
class _Kept:
    """A stage's rows: sorted ids, tokens fed per row, their per-layer KV states and log-probabilities."""

    ids: np.ndarray
    depth: int
    kv: list
    log_probs: torch.Tensor  # [n, depth] float64

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.ids, ids)

    def states(self, rows: np.ndarray) -> list:
        """Per layer ``(keys, values)`` of those ``rows`` (copies)."""
        idx = torch.from_numpy(rows).to(self.kv[0][0].device)
        return [(keys.index_select(0, idx), values.index_select(0, idx)) for keys, values in self.kv]


class StagedRows:
    """The candidate rows of one position ``k``, read to a growing depth, states kept between stages.

    Parameters
    ----------
    runner : ModelRunner
    full : FullPass
    prefix_ids : list of int
        ``x_<k``.
    rest : list of int
        ``x_>k + y``: a row of depth ``d`` feeds ``v, rest[:d - 1]`` and reads
        the log-probabilities of ``rest[:d]``.
    batch_size : int, optional
        Rows per forward; default from the memory budget.
    reuse : bool
        Keep states and resume from them (default); ``False`` feeds every row
        whole (the benchmarks' baseline).
    """

    def __init__(self, runner: ModelRunner, full: FullPass, prefix_ids: list, rest: list,
                 batch_size: Optional[int], reuse: bool = True):
        self.runner, self.full, self.prefix, self.rest = runner, full, list(prefix_ids), list(rest)
        self.batch_size = batch_size
        self.reuse = reuse and runner.path != "full" and full.kv is not None
        self.kept: list[_Kept] = []
        self.reused_token_forwards = 0
        per_token = sum(keys[0, :, 0].numel() * keys.element_size() + values[0, :, 0].numel() * values.element_size()
                        for keys, values in (full.kv or []))
        self._per_token_bytes = max(1, per_token)
        self._room = int(KEPT_STATES_SHARE * runner.memory_budget_bytes)

    def log_probs(self, ids: np.ndarray, depth: int, keep: bool = False) -> np.ndarray:
        """``[len(ids), depth]`` float64: ``log p(rest[t] | x_<k, v, rest[:t])`` for ``t < depth``.

        Rows an earlier kept stage read to ``s <= depth`` tokens resume from
        its states. With ``keep`` (and room in the memory budget) this stage's
        states are kept for the next.
        """
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), depth), dtype=np.float64)
        source = np.full(len(ids), -1)
        if self.reuse:
            for i in sorted(range(len(self.kept)), key=lambda i: self.kept[i].depth):  # the deepest wins
                stage = self.kept[i]
                if stage.depth <= depth:
                    hit = np.isin(ids, stage.ids)
                    source[hit] = i
        keep = keep and self.reuse and self._fits(len(ids) * depth)
        pieces: list[tuple[np.ndarray, list]] = []  # (indices into ids, per-layer states of those rows)
        for src in np.unique(source):
            where = np.flatnonzero(source == src)
            stage = self.kept[src] if src >= 0 else None
            start = stage.depth if stage is not None else 0
            rows = stage.rows(ids[where]) if stage is not None else None
            if stage is not None:
                out[where, :start] = stage.log_probs[rows].numpy()
                self.reused_token_forwards += len(where) * start
            if start == depth:  # nothing to feed: the stored states are this stage's
                if keep:
                    pieces.append((where, stage.states(rows)))
                continue
            bs = self.batch_size or self.runner.default_batch_size(len(self.prefix) + start, depth - start,
                                                                  self.full.vocab_size)
            for b0 in range(0, len(where), bs):
                part = where[b0 : b0 + bs]
                row_kv = stage.states(rows[b0 : b0 + bs]) if stage is not None else None
                lp, new_kv = self.runner.row_log_probs(self.full, self.prefix, torch.from_numpy(ids[part]),
                                                       self.rest[:depth], start=start, row_kv=row_kv,
                                                       keep=keep)
                out[part, start:] = lp.numpy()
                if keep and new_kv is None:
                    keep = False  # this model's cache does not give the rows' states
                if keep:
                    pieces.append((part, new_kv))
        if keep and pieces:
            where = np.concatenate([w for w, _ in pieces])
            order = np.argsort(ids[where], kind="stable")
            perm = torch.from_numpy(order).to(pieces[0][1][0][0].device)
            kv = [(torch.cat([p[layer][0] for _, p in pieces]).index_select(0, perm),
                   torch.cat([p[layer][1] for _, p in pieces]).index_select(0, perm))
                  for layer in range(len(pieces[0][1]))]
            self.kept.append(_Kept(ids[where][order], depth, kv, torch.from_numpy(out[where][order])))
        return out

    def _fits(self, tokens: int) -> bool:
        held = sum(len(s.ids) * s.depth for s in self.kept)
        fits = (held + tokens) * self._per_token_bytes <= self._room
        if not fits:
            logger.debug("position %d: states of %d row tokens exceed the room to keep them; fed whole next stage",
                         len(self.prefix), tokens)
        return fits

    def scores(self, ids: np.ndarray, n_prompt_rest: int) -> tuple[np.ndarray, np.ndarray]:
        """``a_k(v) - log p(v | x_<k)`` and ``b_k(v) - log p(v | x_<k)``: the prompt part and the whole suffix.

        Raises
        ------
        ValueError
            If any score is non-finite.
        """
        prompt_part, response_part = suffix_sums(self.log_probs(ids, len(self.rest)), n_prompt_rest,
                                                 len(self.prefix))
        return prompt_part, prompt_part + response_part
