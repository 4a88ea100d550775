"""Forward passes for the engine: full pass, prefix KV reuse, chunked LM head.

The engine needs, for a fixed prefix ``x_<k`` and a batch of suffixes
``(v, x_>k, y)`` that differ only in their first token, the log-probability of
every suffix token after the first. :class:`ModelRunner` computes exactly that,
choosing the cheapest path the model supports:

``cache+head``
    the prefix KV cache (from one full pass over prompt+response, cropped to
    ``k``) is copied per candidate batch, the decoder runs only over the
    suffix, and the LM head plus log-softmax run in row chunks so that no
    ``[batch, length, vocab]`` tensor is ever materialised. Used when the
    model's logits are verified bit-identical to ``lm_head(decoder(...))``.
``cache``
    the same prefix reuse, with the model's own ``.logits`` (for heads with
    soft-capping or scaling). Batch sizes are chosen so the logits fit the
    memory budget.
``full``
    models without KV-cache support: one full forward per candidate row over
    ``x_<k, v, x_>k, y``.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch

from probattr_monitor.engine.memory import (
    CANDIDATE_BATCH,
    FULL_PASS,
    device_memory_budget,
    forward_site,
    is_out_of_memory,
)
from probattr_monitor.engine.overflow import IndexOverflow, find_index_overflow

logger = logging.getLogger(__name__)

_FLOAT32_BYTES = 4

#: Logits chunk of the LM head: small enough to stay in cache while it is reduced.
HEAD_CHUNK_BYTES = 64 * 2**20

#: Default bound on the engine's transient tensors (logits chunks, batch activations), in MiB.
DEFAULT_MEMORY_BUDGET_MB = 1024


@dataclass
class FullPass:
    """Results of the one forward pass over ``prompt + response``."""

    #: log-softmax rows [L - 1, V] (float64) predicting tokens 1 .. L-1.
    log_probs: torch.Tensor
    #: Per-layer (key, value) tensors of the prefix, or ``None`` without cache support.
    kv: Optional[list]
    vocab_size: int


class ModelRunner:
    """Runs the forward passes the exact and budgeted estimators need.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM returning ``.logits``; it must already be in eval mode and
        called under ``torch.no_grad`` (the engine's context manager does both).
    memory_budget_bytes : int
        Bound on the largest transient tensors (logits chunks, batch activations).
    use_cache : bool or None
        ``None`` detects cache support; ``False`` forces full forwards.

    Attributes
    ----------
    last_batch_rows : int
        Rows of the last forward started (1 for the full pass, the candidate
        batch for a suffix forward). An out-of-memory error leaves the engine
        unchanged but carries the same number in its
        :func:`~probattr_monitor.engine.memory.oom_site`.
    largest_batch_rows : int
        The largest candidate batch forwarded so far.
    """

    def __init__(self, model: torch.nn.Module, memory_budget_bytes: int, use_cache: Optional[bool] = None):
        self.model = model
        self.use_cache = use_cache
        self.device = _model_device(model)
        self.memory_budget_bytes = device_memory_budget(self.device, int(memory_budget_bytes))
        self.path = "full"
        self._decoder = None
        self._head = None
        self._config = getattr(model, "config", None)
        self.token_forwards = 0
        self.forward_calls = 0
        self.last_batch_rows = 0
        self.largest_batch_rows = 0

    # ------------------------------------------------------------------ full pass
    def full_pass(self, ids: list[int]) -> FullPass:
        """Forward ``ids`` once; keep log-probabilities and (if supported) the KV cache."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        self.last_batch_rows = 1
        with forward_site(FULL_PASS, 1, len(ids)):
            out, cache = self._call_model(x, want_cache=self.use_cache is not False)
            logits = _get_logits(out, x.shape)
            _check_finite(logits, "the full forward pass over prompt+response")
            vocab = int(logits.shape[-1])
            log_probs = torch.log_softmax(logits[0, :-1].double(), dim=-1)
            kv = _extract_kv(cache, len(ids)) if cache is not None else None
            head_split = self._find_head_split(x, logits) if kv is not None else None
        if kv is not None:
            self.path = "cache"
            if head_split is not None:
                self._decoder, self._head = head_split
                self.path = "cache+head"
        elif self.use_cache:
            raise ValueError("use_cache=True but the model returned no usable KV cache")
        logger.debug("engine path %s (vocab %d)", self.path, vocab)
        self.token_forwards += len(ids)
        self.forward_calls += 1
        return FullPass(log_probs=log_probs, kv=kv, vocab_size=vocab)

    def diagnose_index_error(self, ids: list[int]) -> Optional[IndexOverflow]:
        """Re-run the forward over ``ids`` that raised an ``IndexError`` to find the embedding out of range.

        See :func:`probattr_monitor.engine.overflow.find_index_overflow`.
        """
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        return find_index_overflow(self.model, x, lambda: self._call_model(x, want_cache=False))

    def _call_model(self, x: torch.Tensor, want_cache: bool):
        try:
            out = self.model(input_ids=x, use_cache=want_cache)
        except TypeError:  # a forward without the use_cache (or input_ids) keyword
            return self._call_positional(x), None
        return out, (output_cache(out) if want_cache else None)

    def _call_positional(self, x: torch.Tensor) -> Any:
        """``model(x)``; a ``RuntimeError`` from a forward that takes no ``input_ids`` means it is no causal LM.

        Out-of-memory errors, and any error of a forward that does take
        ``input_ids``, go through unchanged.
        """
        try:
            return self.model(x)
        except RuntimeError as err:
            if is_out_of_memory(err) or takes_input_ids(self.model):
                raise
            raise TypeError(
                f"model could not be run as a causal LM on input_ids of shape {list(x.shape)}: its forward "
                f"takes no input_ids, and calling it on the token ids failed: {err}"
            ) from err

    def _find_head_split(self, x: torch.Tensor, logits: torch.Tensor):
        """Return ``(decoder, lm_head)`` if ``lm_head(decoder(x))`` reproduces the logits exactly."""
        get_head = getattr(self.model, "get_output_embeddings", None)
        prefix = getattr(self.model, "base_model_prefix", None)
        if get_head is None or not prefix:
            return None
        head = get_head()
        decoder = getattr(self.model, prefix, None)
        if not isinstance(head, torch.nn.Linear) or not isinstance(decoder, torch.nn.Module):
            return None
        try:
            hidden = decoder(input_ids=x, use_cache=False).last_hidden_state
            again = head(hidden)
        except Exception as err:  # noqa: BLE001 - any failure but out-of-memory means "not splittable"
            if is_out_of_memory(err):
                raise
            return None
        if again.shape != logits.shape or not torch.equal(again, logits):
            logger.debug("logits differ from lm_head(decoder(x)); using the model's own logits")
            return None
        return decoder, head

    # ------------------------------------------------------------------ batch sizing
    def default_batch_size(self, prefix_len: int, suffix_len: int, vocab_size: int) -> int:
        """Largest candidate batch whose transient tensors fit the memory budget."""
        cfg = self._config
        hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 1024)
        inter = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "n_inner", 0) or 4 * hidden)
        layers = int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0) or 24)
        heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 0) or 16)
        total = prefix_len + suffix_len
        # activations of one suffix row: MLP, attention scores, residual copies, KV of the whole row
        per_row = suffix_len * (2 * inter + 8 * hidden + heads * total) + layers * 2 * total * hidden
        if self.path != "cache+head":
            per_row += 2 * suffix_len * vocab_size  # the logits and their log-softmax
        if self.path == "full":
            per_row = per_row * total // max(suffix_len, 1)
        per_row *= _FLOAT32_BYTES
        return int(max(1, min(1024, self.memory_budget_bytes // max(per_row, 1))))

    # ------------------------------------------------------------------ suffix scoring
    def suffix_log_probs(
        self,
        full: FullPass,
        prefix_ids: list[int],
        first_tokens: torch.Tensor,
        rest: list[int],
    ) -> torch.Tensor:
        """Log-probabilities of ``rest`` after each candidate first token.

        Parameters
        ----------
        full : FullPass
            The full pass (its KV cache holds the prefix).
        prefix_ids : list of int
            ``x_<k`` (length ``k >= 1``).
        first_tokens : torch.Tensor
            ``[B]`` candidate ids ``v`` for position ``k``.
        rest : list of int
            ``x_>k + y``, the tokens whose log-probabilities are returned.

        Returns
        -------
        torch.Tensor
            ``[B, len(rest)]`` float64: ``log p(rest[t] | x_<k, v, rest[:t])``.
        """
        return self.row_log_probs(full, prefix_ids, first_tokens, rest)[0]

    def row_log_probs(
        self,
        full: FullPass,
        prefix_ids: list[int],
        first_tokens: torch.Tensor,
        rest: list[int],
        *,
        start: int = 0,
        row_kv: Optional[list] = None,
        keep: bool = False,
    ) -> tuple[torch.Tensor, Optional[list]]:
        """:meth:`suffix_log_probs` of ``rest[start:]``, resumed from the rows' own KV states.

        A candidate row feeds ``v, rest[0], rest[1], ...`` after the prefix.
        With ``start = s > 0`` its first ``s`` tokens were fed before (by an
        earlier stage at the same position) and ``row_kv`` holds their KV
        states; only ``rest[s - 1:-1]`` is fed now. Used by
        :class:`~probattr_monitor.engine.stages.StagedRows` (docs/design.md section 7).

        Parameters
        ----------
        full, prefix_ids, first_tokens, rest
            As :meth:`suffix_log_probs`.
        start : int
            Tokens of each row already fed (0: none; ``row_kv`` is then ignored).
        row_kv : list of (keys, values), optional
            Per layer ``[B, heads, start, dim]``: the states of those tokens.
        keep : bool
            Also return the rows' states after this forward (``[B, heads,
            start + fed, dim]`` per layer), or ``None`` where the model's cache
            cannot give them (and on the ``full`` path).

        Returns
        -------
        (torch.Tensor, list or None)
            ``[B, len(rest) - start]`` float64 log-probabilities of
            ``rest[start:]``, and the kept states.
        """
        batch = int(first_tokens.shape[0])
        n_rows = len(rest) - start
        # the last token of ``rest`` is only predicted, never fed: its output would go unused
        suffix = torch.empty((batch, n_rows), dtype=torch.long, device=self.device)
        if start == 0:
            suffix[:, 0] = first_tokens.to(self.device)
            suffix[:, 1:] = torch.tensor(rest[:-1], dtype=torch.long, device=self.device)
        else:
            if row_kv is None or self.path == "full":
                raise ValueError("resuming a candidate row needs its stored KV states and a KV-cache path")
            suffix[:] = torch.tensor(rest[start - 1 : -1], dtype=torch.long, device=self.device)
        targets = torch.tensor(rest[start:], dtype=torch.long, device=self.device)
        self.last_batch_rows = batch
        self.largest_batch_rows = max(self.largest_batch_rows, batch)
        with forward_site(CANDIDATE_BATCH, batch, len(prefix_ids) + start + n_rows):
            states, from_hidden, cache = self._suffix_states(full, prefix_ids, suffix,
                                                             row_kv if start else None)
            lp = self._target_log_probs(states, targets, from_hidden=from_hidden)
        kept = None
        if keep and cache is not None:
            k = len(prefix_ids)
            grown = _extract_kv(cache, k + start + n_rows)
            if grown is not None:
                # copies: a view would keep the batch's prefix copies alive
                kept = [(keys[:, :, k:].contiguous(), values[:, :, k:].contiguous()) for keys, values in grown]
        return lp, kept

    def _suffix_states(self, full: FullPass, prefix_ids: list[int], suffix: torch.Tensor,
                       row_kv: Optional[list] = None):
        """The model's outputs at every position of ``suffix`` ``[B, S]``, after the prefix (and ``row_kv``).

        Returns ``(states, from_hidden, cache)``: ``[B, S, hidden]`` decoder
        states to be put through the LM head (``cache+head``), or ``[B, S, V]``
        logits; and the cache object the forward grew (``None`` on the
        ``full`` path).
        """
        batch, length = suffix.shape
        k = len(prefix_ids)
        self.forward_calls += 1
        if self.path == "full":
            prefix = torch.tensor(prefix_ids, dtype=torch.long, device=self.device).expand(batch, k)
            x = torch.cat([prefix, suffix], dim=1)
            out, _ = self._call_model(x, want_cache=False)
            self.token_forwards += batch * x.shape[1]
            return _get_logits(out, x.shape)[:, k:], False, None
        cache = _prefix_cache(full.kv, k, batch, self._config, row_kv)
        self.token_forwards += batch * length
        if self.path == "cache+head":
            kwargs = {cache_keyword(self._decoder): cache}
            return self._decoder(input_ids=suffix, use_cache=True, **kwargs).last_hidden_state, True, cache
        out = self.model(input_ids=suffix, use_cache=True, **{cache_keyword(self.model): cache})
        return _get_logits(out, suffix.shape), False, cache

    def _target_log_probs(self, states: torch.Tensor, targets: torch.Tensor, from_hidden: bool) -> torch.Tensor:
        """``log_softmax(logits)[target]`` per row, in chunks of rows.

        Each chunk's logits are reduced in place (max, ``exp``, sum) while they
        are still in cache; no ``[batch, length, vocab]`` tensor exists at once.
        Non-finite logits are detected without an extra pass over them: a NaN
        or ``+inf`` anywhere in a row makes its log-normaliser non-finite, and a
        non-finite target logit shows in the result.
        """
        batch, n_rows, width = states.shape
        flat = states.reshape(batch * n_rows, width)
        flat_targets = targets.to(flat.device).expand(batch, n_rows).reshape(-1)
        vocab = self._head.out_features if from_hidden else width
        rows_per_chunk = max(1, min(HEAD_CHUNK_BYTES, self.memory_budget_bytes // 4) // (vocab * _FLOAT32_BYTES))
        # results and the finiteness flag stay on the model's device until the end: one host
        # synchronisation per batch, not one per chunk (on CPU nothing changes)
        out = torch.empty(flat.shape[0], dtype=torch.float64, device=flat.device)
        finite = torch.ones((), dtype=torch.bool, device=flat.device)
        for start in range(0, flat.shape[0], rows_per_chunk):
            stop = min(start + rows_per_chunk, flat.shape[0])
            logits = self._head(flat[start:stop]) if from_hidden else flat[start:stop]
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            elif not from_hidden:
                logits = logits.clone()  # the model's own logits: reduce a copy, not them
            tgt = logits.gather(1, flat_targets[start:stop, None])[:, 0].double()
            top = logits.amax(dim=-1, keepdim=True)
            lse = logits.sub_(top).exp_().sum(dim=-1).double().log_() + top[:, 0].double()
            finite &= torch.isfinite(lse).all() & torch.isfinite(tgt).all()
            out[start:stop] = tgt - lse
        if not bool(finite):
            raise ValueError(
                "the model produced non-finite (NaN or inf) logits in a candidate forward pass; "
                "attribution is undefined for a diverged model"
            )
        return out.cpu().reshape(batch, n_rows)


# ---------------------------------------------------------------------- helpers
def cache_keyword(module: torch.nn.Module) -> str:
    """The keyword under which ``module.forward`` takes a KV cache.

    ``cache`` in recent transformers (which deprecate ``past_key_values``),
    ``past_key_values`` before.
    """
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def takes_input_ids(model: torch.nn.Module) -> bool:
    """Whether ``model.forward`` accepts an ``input_ids`` keyword (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "input_ids" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned (``out.cache`` or, in older transformers, ``out.past_key_values``)."""
    for name in ("cache", "past_key_values"):
        value = out.get(name) if isinstance(out, dict) else getattr(out, name, None)
        if value is not None:
            return value
    return None


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _get_logits(out: Any, input_shape: torch.Size) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, dict):
        logits = out.get("logits")
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"model is not a causal LM: its output ({type(out).__name__}) has no .logits tensor"
        )
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(input_shape):
        raise TypeError(
            f"model is not a causal LM: expected logits of shape [batch, length, vocab] = "
            f"[{input_shape[0]}, {input_shape[1]}, V], got {tuple(logits.shape)}"
        )
    return logits


def _check_finite(logits: torch.Tensor, where: str) -> None:
    if not torch.isfinite(logits).all():
        bad = int((~torch.isfinite(logits)).sum())
        raise ValueError(
            f"the model produced {bad} non-finite (NaN or inf) logits in {where}; "
            f"attribution is undefined for a diverged model"
        )


def _extract_kv(cache: Any, length: int) -> Optional[list]:
    """Per-layer (key, value) tensors ``[1, heads, length, dim]``, or ``None`` if unusable."""
    layers = getattr(cache, "layers", None)
    pairs = []
    if layers is not None:
        for layer in layers:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
                return None
            pairs.append((keys, values))
    elif isinstance(cache, (tuple, list)) and cache and all(
        isinstance(p, (tuple, list)) and len(p) >= 2 for p in cache
    ):
        pairs = [(p[0], p[1]) for p in cache]
    else:
        return None
    for keys, values in pairs:
        # sliding-window layers that dropped tokens, or quantised/offloaded layouts: unusable
        if keys.dim() != 4 or keys.shape[-2] != length or values.shape[-2] != length:
            return None
    return pairs


def _prefix_cache(kv: list, k: int, batch: int, config: Any, row_kv: Optional[list] = None):
    """A fresh cache holding the first ``k`` positions, repeated ``batch`` times, then each row's ``row_kv``.

    HF caches are mutated in place by ``forward``; every batch gets its own
    object built from views of the shared prefix, never a grown one.
    """
    from transformers import DynamicCache

    data = [
        (keys[:, :, :k].expand(batch, -1, -1, -1), values[:, :, :k].expand(batch, -1, -1, -1))
        for keys, values in kv
    ]
    if row_kv is not None:
        data = [(torch.cat([pk, rk], dim=2), torch.cat([pv, rv], dim=2))
                for (pk, pv), (rk, rv) in zip(data, row_kv)]
    try:
        return DynamicCache(ddp_cache_data=data, config=config)
    except TypeError:  # older transformers
        return DynamicCache.from_legacy_cache(tuple(data))
