"""Score a probe set with a model: the one path shared by the CLI and the training monitor.

probes ──> render ──> response ──> engine ──> Report (table + metrics)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch

from probattr_monitor.engine import AttributionResult, Budget, attribute
from probattr_monitor.engine.text import DECODINGS, make_response, with_token_texts
from probattr_monitor.engine.validation import check_fits_context
from probattr_monitor.probes import Probe, ProbeSet, render
from probattr_monitor.report import NoiseConfig, Report
from probattr_monitor.tokenization import encode_text

logger = logging.getLogger(__name__)

Candidates = Union[str, Sequence[int], Any]


@dataclass(frozen=True)
class ScoringConfig:
    """How each probe is scored.

    Parameters
    ----------
    candidates : Budget, "all", or sequence of int
        Passed to :func:`probattr_monitor.attribute`. Default: ``Budget()``,
        the budgeted estimator with its default settings (exact scoring when
        the budget covers the whole vocabulary, as for tiny models);
        ``"all"`` is the paper-exact sum over the vocabulary, at
        ``|V|`` candidate passes per position.
    decoding : {"greedy", "top-p"}
        How the model's own response is generated for probes without a fixed one.
    max_new_tokens : int
        Response length bound.
    top_p, num_samples, seed
        The paper's top-p response: the most frequent of ``num_samples``
        nucleus samples (seeded; the global RNG is not touched).
    batch_size, memory_budget_mb
        Engine settings.
    noise : NoiseConfig
        AS-class boundaries and the noise-token rule.
    n_boot, ci
        Bootstrap settings of the set-level confidence intervals.
    """

    candidates: Candidates = Budget()
    decoding: str = "greedy"
    max_new_tokens: int = 20
    top_p: float = 0.9
    num_samples: int = 20
    seed: int = 0
    batch_size: Optional[int] = None
    memory_budget_mb: float = 1024
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    n_boot: int = 1000
    ci: float = 0.95

    def __post_init__(self) -> None:
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {self.decoding!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")
        if isinstance(self.candidates, str) and self.candidates != "all":
            raise ValueError(f"candidates must be 'all', a list of ids or a Budget, got {self.candidates!r}")

    def to_dict(self) -> dict:
        """JSON-friendly description recorded with every report and run config."""
        cand = self.candidates
        if isinstance(cand, str):
            cand_desc: Any = cand
        elif dataclasses.is_dataclass(cand):
            cand_desc = {"budget": dataclasses.asdict(cand)}
            if cand_desc["budget"].get("universe") is not None:
                cand_desc["budget"]["universe"] = f"{len(cand.universe)} ids"
        else:
            cand_desc = {"subset": len(list(cand))}
        return {
            "candidates": cand_desc,
            "decoding": self.decoding,
            "max_new_tokens": self.max_new_tokens,
            "top_p": self.top_p,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "noise": self.noise.to_dict(),
        }


@dataclass(frozen=True)
class ProbeScore:
    """Outcome of scoring one probe: a result, or the error that prevented it."""

    probe_id: str
    result: Optional[AttributionResult]
    template_mask: Optional[tuple] = None
    error: Optional[str] = None
    seconds: float = 0.0


def score_probe(model: Any, tokenizer: Any, probe: Probe, config: ScoringConfig) -> ProbeScore:
    """Render, generate the response (unless fixed) and attribute one probe.

    Raises
    ------
    ValueError
        If the probe does not fit the model's context window, or the engine rejects it.
    """
    started = time.perf_counter()
    rendered = render(probe, tokenizer)
    if probe.response is not None:
        response_ids = encode_text(tokenizer, probe.response)
        needed = len(rendered.ids) + len(response_ids)
    else:
        response_ids = None
        needed = len(rendered.ids) + config.max_new_tokens
    check_fits_context(model, needed, f"probe {probe.id!r}", "prompt + response")
    if response_ids is None:
        response_ids = make_response(
            model, tokenizer, rendered.ids, config.decoding, config.max_new_tokens,
            config.top_p, config.num_samples, config.seed,
        )
    res = attribute(model, rendered.ids, response_ids, candidates=config.candidates,
                    batch_size=config.batch_size, memory_budget_mb=config.memory_budget_mb)
    res = with_token_texts(res, tokenizer, decoding=config.decoding if probe.response is None else "given")
    return ProbeScore(probe.id, res, tuple(rendered.template_mask), None, time.perf_counter() - started)


#: How many times a probe that ran out of memory is retried with smaller batches.
OOM_RETRIES = 3


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error of torch (CUDA, MPS or CPU allocator)."""
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(err, oom_type):
        return True
    return isinstance(err, (RuntimeError, MemoryError)) and "out of memory" in str(err).lower()


def _score_with_oom_retry(model: Any, tokenizer: Any, probe: Probe, config: ScoringConfig) -> ProbeScore:
    for attempt in range(OOM_RETRIES + 1):
        try:
            return score_probe(model, tokenizer, probe, config)
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err) or attempt == OOM_RETRIES:
                raise
            smaller = max(1, (config.batch_size or 64) // 2)
            logger.warning("probattr: probe %r ran out of memory; retrying with batch_size=%d", probe.id, smaller)
            config = dataclasses.replace(config, batch_size=smaller, memory_budget_mb=config.memory_budget_mb / 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    raise AssertionError("unreachable")


def score_probes(
    model: Any,
    tokenizer: Any,
    probes: Iterable[Probe],
    config: ScoringConfig,
    *,
    on_error: str = "raise",
    progress: Optional[Callable[[int, str], None]] = None,
    deadline: Optional[float] = None,
) -> list[ProbeScore]:
    """Score each probe in turn.

    A probe that runs out of memory is retried with half the batch size and
    memory budget (up to :data:`OOM_RETRIES` times) before it counts as failed.

    Parameters
    ----------
    on_error : {"raise", "record"}
        ``"record"`` turns a failing probe (non-finite logits, too long for the
        context window...) into a :class:`ProbeScore` with ``error`` set and a
        logged warning, and goes on with the next probe.
    progress : callable, optional
        Called as ``progress(index, probe_id)`` after each probe.
    deadline : float, optional
        A ``time.monotonic()`` value; probes not started by then are recorded
        as skipped.
    """
    if on_error not in ("raise", "record"):
        raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
    out = []
    for i, probe in enumerate(probes):
        if deadline is not None and time.monotonic() > deadline:
            logger.warning("probattr: time budget exhausted; probe %r not scored", probe.id)
            out.append(ProbeScore(probe.id, None, None, "skipped: time budget exhausted"))
            continue
        try:
            out.append(_score_with_oom_retry(model, tokenizer, probe, config))
        except (ValueError, TypeError, RuntimeError) as err:
            if on_error == "raise":
                raise
            logger.warning("probattr: scoring probe %r failed: %s", probe.id, err)
            out.append(ProbeScore(probe.id, None, None, f"{type(err).__name__}: {err}"))
        if progress is not None:
            progress(i, probe.id)
    return out


def build_report(
    scores: Sequence[ProbeScore],
    tokenizer: Any,
    config: ScoringConfig,
    *,
    step: Any = None,
    probe_set: Optional[ProbeSet] = None,
    meta: Optional[dict] = None,
) -> Report:
    """Turn probe scores into a :class:`~probattr_monitor.report.Report`.

    Failed probes are left out of the table and listed in ``meta["errors"]``.
    """
    ok = [s for s in scores if s.result is not None]
    full_meta: dict[str, Any] = {
        "scoring": config.to_dict(),
        "errors": {s.probe_id: s.error for s in scores if s.error is not None},
        "seconds": sum(s.seconds for s in scores),
        "token_forwards": sum(int(s.result.info.get("token_forwards", 0)) for s in ok),
        "responses": {s.probe_id: s.result.response_text for s in ok},
    }
    if probe_set is not None:
        full_meta["probes"] = probe_set.manifest()
    full_meta.update(meta or {})
    return Report.from_results(
        [(s.probe_id, s.result) for s in ok],
        step=step,
        cfg=config.noise,
        template_masks={s.probe_id: list(s.template_mask) for s in ok if s.template_mask is not None},
        decode=lambda t: tokenizer.decode([int(t)]),
        n_boot=config.n_boot,
        seed=config.seed,
        ci=config.ci,
        meta=full_meta,
    )


def score_probe_set(
    model: Any,
    tokenizer: Any,
    probes: ProbeSet,
    config: Optional[ScoringConfig] = None,
    *,
    step: Any = None,
    on_error: str = "raise",
    meta: Optional[dict] = None,
    progress: Optional[Callable[[int, str], None]] = None,
) -> Report:
    """Score every probe of ``probes`` and build the report (convenience wrapper)."""
    config = config or ScoringConfig()
    scores = score_probes(model, tokenizer, probes, config, on_error=on_error, progress=progress)
    return build_report(scores, tokenizer, config, step=step, probe_set=probes, meta=meta)
