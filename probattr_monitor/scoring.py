"""Score a probe set with a model: the one path shared by the CLI and the training monitor.

probes ──> render ──> response ──> engine ──> Report (table + metrics)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch

from probattr_monitor.engine import AttributionResult, Budget, attribute
from probattr_monitor.engine.memory import (
    CANDIDATE_BATCH,
    FULL_PASS,
    GENERATION,
    OomSite,
    is_out_of_memory,
    oom_site,
)
from probattr_monitor.engine.prefix import is_prefix_result, prefix_surprisal
from probattr_monitor.engine.sequential import SequentialBudget, attribute_sequential
from probattr_monitor.engine.replacement import (
    DEFAULT_MASS,
    DEFAULT_MAX_CANDIDATES,
    replacement_columns,
    replacement_entropy,
)
from probattr_monitor.engine.text import DECODINGS, make_response, with_token_texts
from probattr_monitor.engine.validation import (
    check_batch_size,
    check_fits_context,
    check_memory_budget_mb,
    check_positive_int,
)
from probattr_monitor.probes import Probe, ProbeSet, render
from probattr_monitor.report import NoiseConfig, Report
from probattr_monitor.report.noise import undecided
from probattr_monitor.tokenization import encode_text

logger = logging.getLogger(__name__)

#: What ``ScoringConfig.candidates`` accepts (precise, so that LightningCLI/jsonargparse can build a Budget from YAML).
Candidates = Union[Budget, SequentialBudget, str, Sequence[int]]


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
        Engine settings: candidates per forward (``None``: chosen from the
        memory budget), and the bound on the engine's transient tensors in MiB
        (a positive, finite number).
    noise : NoiseConfig
        AS-class boundaries and the noise-token rule.
    n_boot, ci
        Bootstrap settings of the set-level confidence intervals.
    replacement_entropy : bool
        Opt-in (off by default): also compute each token's replacement entropy
        and share of original responses (the paper's section 4.3,
        :mod:`probattr_monitor.engine.replacement`), greedy and top-p, with the
        response settings above. It costs extra generations: see the README.
    replacement_max_candidates, replacement_mass
        The cap on candidates per position and the prior mass they hold.
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
    replacement_entropy: bool = False
    replacement_max_candidates: int = DEFAULT_MAX_CANDIDATES
    replacement_mass: float = DEFAULT_MASS

    def __post_init__(self) -> None:
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {self.decoding!r}")
        check_positive_int(self.max_new_tokens, "max_new_tokens")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        check_positive_int(self.num_samples, "num_samples")
        check_batch_size(self.batch_size)
        check_memory_budget_mb(self.memory_budget_mb)
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")
        if not isinstance(self.replacement_entropy, bool):
            raise TypeError(f"replacement_entropy must be a bool, got {self.replacement_entropy!r}")
        check_positive_int(self.replacement_max_candidates, "replacement_max_candidates")
        if not 0 < self.replacement_mass <= 1:
            raise ValueError(f"replacement_mass must be in (0, 1], got {self.replacement_mass}")
        if isinstance(self.candidates, str) and self.candidates != "all":
            raise ValueError(f"candidates must be 'all', a list of ids or a Budget, got {self.candidates!r}")

    def to_dict(self) -> dict:
        """JSON-friendly description recorded with every report and run config."""
        cand = self.candidates
        if isinstance(cand, str):
            cand_desc: Any = cand
        elif isinstance(cand, SequentialBudget):
            cand_desc = {"sequential": cand.to_info()}
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
            **({"replacement": {"max_candidates": self.replacement_max_candidates,
                                "mass": self.replacement_mass}} if self.replacement_entropy else {}),
        }


@dataclass(frozen=True)
class ProbeScore:
    """Outcome of scoring one probe: a result, or the error that prevented it."""

    probe_id: str
    result: Optional[AttributionResult]
    template_mask: Optional[tuple] = None
    error: Optional[str] = None
    seconds: float = 0.0


def score_probe(model: Any, tokenizer: Any, probe: Probe, config: ScoringConfig, *,
                attribution: bool = True) -> ProbeScore:
    """Render, generate the response (unless fixed) and attribute one probe.

    ``attribution=False`` makes it a gate pass instead
    (:func:`~probattr_monitor.engine.prefix.prefix_surprisal`): one forward over
    the rendered prompt, no response, no candidate (docs/design.md section 10).

    Raises
    ------
    ValueError
        If the probe does not fit the model's context window, or the engine rejects it.
    """
    started = time.perf_counter()
    rendered = render(probe, tokenizer)
    if not attribution:
        res = prefix_surprisal(model, rendered.ids, memory_budget_mb=config.memory_budget_mb)
        res = with_token_texts(res, tokenizer)
        return ProbeScore(probe.id, res, tuple(rendered.template_mask), None, time.perf_counter() - started)
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
    if isinstance(config.candidates, SequentialBudget):
        res = attribute_sequential(model, rendered.ids, response_ids, config.candidates,
                                   undecided_rule(config.noise, rendered.template_mask),
                                   batch_size=config.batch_size, memory_budget_mb=config.memory_budget_mb)
    else:
        res = attribute(model, rendered.ids, response_ids, candidates=config.candidates,
                        batch_size=config.batch_size, memory_budget_mb=config.memory_budget_mb)
    res = with_token_texts(res, tokenizer, decoding=config.decoding if probe.response is None else "given")
    if config.replacement_entropy:
        res = _with_replacement(model, tokenizer, rendered.ids, res, config)
    return ProbeScore(probe.id, res, tuple(rendered.template_mask), None, time.perf_counter() - started)


def undecided_rule(noise: NoiseConfig, template_mask: Sequence[bool]) -> Callable[[AttributionResult, float],
                                                                                Any]:
    """The sequential budgets' rule: AS class or noise flag open at ``z`` SEs, on tokens the metrics read.

    Returns ``rule(result, z) -> bool array`` for
    :func:`~probattr_monitor.engine.sequential.attribute_sequential`
    (:func:`probattr_monitor.report.noise.undecided` on the result's estimates
    and standard errors).

    Template tokens are left out of every metric, so they are never escalated
    (their first-stage values and errors stay in the table).
    """
    excluded = np.asarray(template_mask, dtype=bool)

    def rule(res: AttributionResult, z: float) -> np.ndarray:
        zeros = np.zeros(len(res))
        todo = undecided(res.attribution, res.stderr.get("attribution", zeros), res.entropy_full,
                         res.stderr.get("entropy_full", zeros), noise, z,
                         res.info.get("num_candidates_per_position", res.num_candidates))
        return todo & ~excluded[res.positions]

    return rule


def _with_replacement(model: Any, tokenizer: Any, prompt_ids: Sequence[int], res: AttributionResult,
                      config: ScoringConfig) -> AttributionResult:
    """``res`` with its replacement entropy (columns and settings) in ``info["replacement"]``."""
    rep = replacement_entropy(
        model, prompt_ids, positions=[int(k) for k in res.positions], mass=config.replacement_mass,
        max_candidates=config.replacement_max_candidates, max_new_tokens=config.max_new_tokens,
        top_p=config.top_p, num_samples=config.num_samples,
        eos_token_id=getattr(tokenizer, "eos_token_id", None), seed=config.seed,
    )
    info = {**res.info, "replacement": {"settings": rep.settings(), "columns": replacement_columns(rep)}}
    return dataclasses.replace(res, info=info)


def _score_with_oom_retry(model: Any, tokenizer: Any, probe: Probe, config: ScoringConfig,
                          attribution: bool = True) -> ProbeScore:
    """:func:`score_probe`, retried at half the batch that ran out of memory, down to 1.

    Only a candidate batch can be made smaller; out of memory in the full pass
    (one row) or in generation, or in a batch of one row, gives up at once.

    Raises
    ------
    torch.OutOfMemoryError
        ``"probe 'p' ran out of memory in <where> ... the smallest batch tried was N"``,
        chained to the last out-of-memory error.
    """
    tried: list[int] = []
    while True:
        try:
            return score_probe(model, tokenizer, probe, config, attribution=attribution)
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err):
                raise
            site = oom_site(err)
            if site is not None and site.stage == CANDIDATE_BATCH:
                tried.append(site.rows)
            if site is None or site.stage != CANDIDATE_BATCH or site.rows <= 1:
                raise _out_of_memory(probe.id, site, tried, err) from err
            smaller = site.rows // 2
            logger.warning("probattr: probe %r ran out of memory in %s; retrying with batch_size=%d",
                           probe.id, site.describe(), smaller)
            config = dataclasses.replace(config, batch_size=smaller, memory_budget_mb=config.memory_budget_mb / 2)
        _release_cached_memory()  # outside the handler: the traceback's tensors are gone by now


def _out_of_memory(probe_id: str, site: Optional[OomSite], tried: list[int], err: BaseException) -> BaseException:
    """The error a probe that ran out of memory for good fails with, naming where and the smallest batch tried."""
    where = site.describe() if site is not None else "scoring"
    if tried:
        batches = " -> ".join(str(b) for b in tried)
        detail = f"candidate batch sizes tried: {batches}; the smallest batch tried was {tried[-1]}"
    elif site is not None and site.stage == FULL_PASS:
        detail = "the full pass is a single row, so there is no smaller batch to try (the smallest batch tried was 1)"
    elif site is not None and site.stage == GENERATION:
        detail = "generation is not retried with smaller batches; lower num_samples or max_new_tokens"
    else:
        detail = "not retried: it did not come from a candidate batch"
    message = f"probe {probe_id!r} ran out of memory in {where}: {detail} ({type(err).__name__}: {err})"
    oom_type = getattr(torch, "OutOfMemoryError", None)
    return oom_type(message) if oom_type is not None else MemoryError(message)


def _release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def score_probes(
    model: Any,
    tokenizer: Any,
    probes: Iterable[Probe],
    config: ScoringConfig,
    *,
    on_error: str = "raise",
    progress: Optional[Callable[[int, str], None]] = None,
    deadline: Optional[float] = None,
    attribution: bool = True,
) -> list[ProbeScore]:
    """Score each probe in turn.

    A probe that runs out of memory in a candidate batch is retried with half
    the batch that ran out (and half the memory budget), down to a batch of 1,
    before it fails with a ``torch.OutOfMemoryError`` naming where it ran out
    and the smallest batch tried. Out of memory in the full pass or in
    generation, which no smaller batch helps, fails at once.

    Parameters
    ----------
    on_error : {"raise", "record"}
        ``"record"`` turns a failing probe (non-finite logits, too long for the
        context window...) into a :class:`ProbeScore` with ``error`` set and a
        logged warning, and goes on with the next probe.
    progress : callable, optional
        Called as ``progress(index, probe_id)`` after each probe.
    deadline : float, optional
        A finite ``time.monotonic()`` value; probes not started by then are
        recorded as skipped.
    attribution : bool
        ``False``: gate passes only (:func:`score_probe`), for a gate scoring.

    Raises
    ------
    ValueError
        A bad ``on_error``, or a ``deadline`` that is not a finite number
        (NaN would never expire).
    """
    if on_error not in ("raise", "record"):
        raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, numbers.Real)
                                 or not math.isfinite(deadline)):
        raise ValueError(f"deadline must be a finite time.monotonic() value or None, got {deadline!r}")
    out = []
    for i, probe in enumerate(probes):
        if deadline is not None and time.monotonic() > deadline:
            logger.warning("probattr: time budget exhausted; probe %r not scored", probe.id)
            out.append(ProbeScore(probe.id, None, None, "skipped: time budget exhausted"))
            continue
        try:
            out.append(_score_with_oom_retry(model, tokenizer, probe, config, attribution))
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
        **_replacement_meta(ok),
        # a gate pass generates no response: none is recorded (not an empty one)
        "responses": {s.probe_id: s.result.response_text for s in ok if not is_prefix_result(s.result)},
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


def _replacement_meta(ok: Sequence[ProbeScore]) -> dict:
    """The replacement runs' settings (the cap among them) and summed cost, when any probe has one."""
    runs = [s.result.info["replacement"]["settings"] for s in ok if "replacement" in s.result.info]
    if not runs:
        return {}
    summary = {k: v for k, v in runs[0].items() if k not in ("generated_tokens", "token_forwards",
                                                               "truncated_positions")}
    for key in ("generated_tokens", "token_forwards", "truncated_positions"):
        summary[key] = sum(int(r[key]) for r in runs)
    return {"replacement": summary}


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
