"""Run every method on one prompt and response, then every metric on every method's attribution."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from probattr_monitor.engine import Budget, attribute
from probattr_monitor.engine.modes import scoring_mode
from probattr_monitor.engine.text import DECODINGS, make_response
from probattr_monitor.engine.validation import check_fits_context
from probattr_monitor.evaluate.baselines import BASELINES, BaselineSettings, baseline_attribution
from probattr_monitor.evaluate.metrics import BOUND_SEARCHES, DIRECTIONS, FaithfulnessScores, MetricContext
from probattr_monitor.evaluate.perturbation import ReplacementOperator
from probattr_monitor.evaluate.reagent import ReagentSettings, reagent_attribution
from probattr_monitor.probes import ProbeSet, render
from probattr_monitor.tokenization import encode_text

__all__ = ["METHODS", "EvaluationSettings", "MethodEvaluation", "PromptEvaluation", "check_methods",
           "evaluate_probe_set", "evaluate_prompt"]

logger = logging.getLogger(__name__)

#: Every method ``probattr evaluate`` runs: AS (this package's engine), the Captum baselines and ReAgent.
METHODS = ("as", *BASELINES, "reagent")


def check_methods(methods: Sequence[str]) -> tuple:
    """The methods as a tuple, or ``ValueError`` for an empty list, an unknown or a repeated name."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = tuple(methods)
    if not methods:
        raise ValueError(f"the method list is empty; choose from: {', '.join(METHODS)}")
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"a method is listed twice: {', '.join(methods)}")
    return methods


@dataclass(frozen=True)
class EvaluationSettings:
    """What ``probattr evaluate`` runs and how much it spends.

    Attributes
    ----------
    methods : tuple of str
        From :data:`METHODS`.
    candidates : "all", sequence of int or Budget
        AS's candidate set (as for :func:`~probattr_monitor.engine.attribute`).
    baselines : BaselineSettings
        LIME and Gradient SHAP sample counts.
    reagent : ReagentSettings
        ReAgent's parameters (:mod:`~probattr_monitor.evaluate.reagent`).
    n_masks : int
        Random masks of infidelity (shared by every method).
    naopc_bounds : {"greedy", "single"}
        How NAOPC's bounds are searched (:func:`~probattr_monitor.evaluate.metrics.deletion_bounds`).
    decodings : tuple of str
        How each probe's fixed response is generated: ``"greedy"`` and/or ``"top-p"``.
    max_new_tokens, top_p, num_samples, seed
        As for ``probattr score`` (``num_samples``: top-p draws, the most frequent response is kept).
    """

    methods: tuple = METHODS
    candidates: Union[str, Sequence[int], Budget] = field(default_factory=Budget)
    baselines: BaselineSettings = field(default_factory=BaselineSettings)
    reagent: ReagentSettings = field(default_factory=ReagentSettings)
    n_masks: int = 32
    naopc_bounds: str = "greedy"
    decodings: tuple = ("greedy", "top-p")
    max_new_tokens: int = 8
    top_p: float = 0.9
    num_samples: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", check_methods(self.methods))
        if isinstance(self.n_masks, bool) or not isinstance(self.n_masks, int) or self.n_masks < 2:
            raise ValueError(f"n_masks must be an integer >= 2, got {self.n_masks!r}")
        if self.naopc_bounds not in BOUND_SEARCHES:
            raise ValueError(f"naopc_bounds must be one of {BOUND_SEARCHES}, got {self.naopc_bounds!r}")
        decodings = tuple(self.decodings)
        if not decodings or any(d not in DECODINGS for d in decodings):
            raise ValueError(f"decodings must be a non-empty subset of {DECODINGS}, got {self.decodings!r}")
        object.__setattr__(self, "decodings", decodings)

    def decodings_of(self, probe: Any) -> tuple:
        """The decodings a probe is evaluated under: ``("given",)`` when it carries its response."""
        return ("given",) if probe.response is not None else self.decodings

    def to_dict(self) -> dict:
        cand = self.candidates
        cand_desc = cand if isinstance(cand, str) else (cand.to_info() if isinstance(cand, Budget)
                                                        else {"subset": len(list(cand))})
        return {"methods": list(self.methods), "candidates": cand_desc,
                "lime_samples": self.baselines.lime_samples, "shap_samples": self.baselines.shap_samples,
                "reagent": self.reagent.to_dict(),
                "n_masks": self.n_masks, "naopc_bounds": self.naopc_bounds, "decodings": list(self.decodings), "max_new_tokens": self.max_new_tokens,
                "top_p": self.top_p, "num_samples": self.num_samples, "seed": self.seed}


@dataclass(frozen=True)
class MethodEvaluation:
    """One method's attribution of one prompt (positions ``1 .. n - 1``) and its faithfulness scores."""

    method: str
    attribution: tuple
    scores: FaithfulnessScores


@dataclass(frozen=True)
class PromptEvaluation:
    """All methods on one prompt and fixed response.

    ``metric_token_forwards`` counts the tokens fed to the model by the
    metrics (shared masks, deletion bounds and every method's curves), a
    load-independent measure of their cost; ``method_costs`` holds ReAgent's
    steps, model calls and row forwards (when it ran).
    """

    probe_id: str
    decoding: str
    prompt_ids: tuple
    response_ids: tuple
    f0: float
    methods: tuple
    metric_token_forwards: int
    seconds: float
    method_costs: dict = field(default_factory=dict)

    def scores(self) -> dict:
        return {m.method: m.scores.to_dict() for m in self.methods}

    @property
    def key(self) -> tuple:
        """``(probe_id, decoding)``: what identifies this evaluation within a run."""
        return (self.probe_id, self.decoding)

    def to_record(self) -> dict:
        """Everything of this evaluation as plain JSON types (the ``prompts`` entries of ``faithfulness.json``)."""
        return {"probe": self.probe_id, "decoding": self.decoding, "prompt_ids": list(self.prompt_ids),
                "response_ids": list(self.response_ids), "log_p_response": self.f0,
                "metric_token_forwards": self.metric_token_forwards, "seconds": self.seconds,
                "method_costs": self.method_costs,
                "attributions": {m.method: list(m.attribution) for m in self.methods},
                "scores": self.scores()}

    @classmethod
    def from_record(cls, record: dict) -> "PromptEvaluation":
        """The inverse of :meth:`to_record`.

        Raises
        ------
        ValueError
            A key is missing or a method has an attribution but no scores.
        """
        try:
            methods = tuple(MethodEvaluation(name, tuple(float(v) for v in attr),
                                             FaithfulnessScores(**{k: float(record["scores"][name][k])
                                                                   for k in DIRECTIONS}))
                            for name, attr in record["attributions"].items())
            return cls(str(record["probe"]), str(record["decoding"]), tuple(int(t) for t in record["prompt_ids"]),
                       tuple(int(t) for t in record["response_ids"]), float(record["log_p_response"]), methods,
                       int(record["metric_token_forwards"]), float(record["seconds"]),
                       dict(record.get("method_costs") or {}))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a prompt evaluation record (missing or malformed {exc})") from None


class _CountingScorer:
    def __init__(self, op: ReplacementOperator) -> None:
        self.op = op
        self.rows = 0

    def __call__(self, removed: np.ndarray) -> np.ndarray:
        removed = np.atleast_2d(removed)
        self.rows += removed.shape[0]
        return self.op.score(removed)


def evaluate_prompt(model: Any, prompt_ids: Sequence[int], response_ids: Sequence[int],
                    settings: EvaluationSettings, *, probe_id: str = "", decoding: str = "given"
                    ) -> PromptEvaluation:
    """Attribute with every method of ``settings`` and score every attribution.

    Raises
    ------
    ValueError
        If prompt + response exceed the model's context window, or the prompt has under 2 tokens.
    """
    started = time.perf_counter()
    prompt_ids, response_ids = [int(t) for t in prompt_ids], [int(t) for t in response_ids]
    if len(prompt_ids) < 2 or not response_ids:
        raise ValueError(f"probe {probe_id!r}: need a prompt of at least 2 tokens and a non-empty response")
    check_fits_context(model, len(prompt_ids) + len(response_ids), f"probe {probe_id!r}", "prompt + response")
    with scoring_mode(model):
        op = ReplacementOperator.build(model, prompt_ids, response_ids)
        scorer = _CountingScorer(op)
        ctx = MetricContext.build(op.n_positions, scorer, settings.n_masks, settings.seed, settings.naopc_bounds)
        out, costs = [], {}
        for method in settings.methods:
            if method == "as":
                res = attribute(model, prompt_ids, response_ids, candidates=settings.candidates)
                attr = np.asarray(res.attribution, dtype=float)
            elif method == "reagent":
                rea = reagent_attribution(model, op.prompt, op.response, settings.reagent)
                attr = rea.attribution[1:]
                costs[method] = {"steps": rea.steps, "stopped_probes": rea.stopped, "model_calls": rea.model_calls,
                                 "row_forwards": rea.row_forwards}
                logger.debug("probe %s (%s): ReAgent %d steps, %d model calls", probe_id, decoding, rea.steps,
                             rea.model_calls)
            else:
                attr = baseline_attribution(method, model, op.prompt, op.response, op.replacements,
                                            settings.baselines)[1:]
            out.append(MethodEvaluation(method, tuple(float(v) for v in attr),
                                        FaithfulnessScores.evaluate(attr, scorer, ctx)))
            logger.debug("probe %s (%s): %s done", probe_id, decoding, method)
    length = len(prompt_ids) + len(response_ids)
    return PromptEvaluation(probe_id, decoding, tuple(prompt_ids), tuple(response_ids), ctx.f0, tuple(out),
                            scorer.rows * length, time.perf_counter() - started, costs)


def evaluate_probe_set(model: Any, tokenizer: Any, probes: ProbeSet, settings: EvaluationSettings,
                       progress: Optional[Any] = None, *, done: Iterable[PromptEvaluation] = (),
                       on_result: Optional[Callable[[list], None]] = None) -> list:
    """:func:`evaluate_prompt` for every probe and decoding (responses generated as ``probattr score`` does).

    Every probe is checked against the context window before any is evaluated.
    Nothing is shared between prompts (each builds its masks and seeds from
    ``settings.seed``), so a run cut into parts gives the results of one run.

    Parameters
    ----------
    done : iterable of PromptEvaluation
        Results of an earlier run with the same model and settings (read back
        by :func:`~probattr_monitor.evaluate.outputs.read_evaluations`): a
        probe and decoding found here is not evaluated again.
    on_result : callable, optional
        Called with the results so far (in probe order) after each new one, so
        that a caller can write them before the next prompt starts.

    Raises
    ------
    ValueError
        A probe does not fit the context window, or an earlier result's prompt
        is not the one this probe renders to (the probe set or the tokenizer
        changed).
    """
    rendered = [(p, render(p, tokenizer)) for p in probes.probes]
    for probe, r in rendered:
        extra = len(encode_text(tokenizer, probe.response)) if probe.response is not None else settings.max_new_tokens
        check_fits_context(model, len(r.ids) + extra, f"probe {probe.id!r}", "prompt + response")
    earlier = {e.key: e for e in done}
    jobs = [(probe, r, decoding, earlier.get((probe.id, decoding)))
            for probe, r in rendered for decoding in settings.decodings_of(probe)]
    for probe, r, decoding, previous in jobs:
        if previous is not None and list(previous.prompt_ids) != list(r.ids):
            raise ValueError(f"the earlier result for {probe.id}/{decoding} was computed on another prompt "
                             "(the probe text or the tokenizer changed); start a new output directory")
    results = []
    for probe, r, decoding, previous in jobs:
        if previous is not None:
            results.append(previous)
            logger.info("%s/%s: kept from the earlier run", probe.id, decoding)
            continue
        if probe.response is not None:
            response = encode_text(tokenizer, probe.response)
        else:
            response = make_response(model, tokenizer, r.ids, decoding, settings.max_new_tokens,
                                     settings.top_p, settings.num_samples, settings.seed)
        results.append(evaluate_prompt(model, r.ids, response, settings, probe_id=probe.id, decoding=decoding))
        if on_result is not None:
            on_result(list(results))
        if progress is not None:
            progress(len(results), f"{probe.id}/{decoding}")
    return results
