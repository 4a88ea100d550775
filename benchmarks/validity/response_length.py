"""Response length (issue 13): how the set metrics and the checkpoint ranking move with ``max_new_tokens``.

``python -m benchmarks.validity.response_length --out runs/resplen [--threads 1]``

The monitor's default response is 20 greedy tokens (``ScoringConfig()``). This
study trains a few validity runs (:mod:`benchmarks.validity.runs`, the callback
attached at its defaults as in the main study) keeping the weights of every
scored checkpoint, then scores each kept checkpoint again on the run's probe
set through the library's public path (:func:`probattr_monitor.scoring.score_probes`
and :func:`~probattr_monitor.scoring.build_report`) with
``ScoringConfig(max_new_tokens=m)`` for each ``m`` of :data:`LENGTHS`,
everything else at the monitor's defaults (``Budget()``, exact on these 41-42
token vocabularies). Per checkpoint and ``m`` it records the set metrics of
:data:`METRICS` with their probe-bootstrap intervals, their per-probe sums,
the response lengths actually generated (greedy decoding stops early at the
start/end token) and the checkpoint's true excess loss from the run's record.

Per run and metric it then reports (:func:`length_statistics`):

* how the values move with ``m``: mean and max over checkpoints of
  ``|value(m) - value(20)|``, beside the mean width of the value's own
  95 % interval over probes;
* Spearman ρ of the values with the true excess loss at each ``m``, with a 95 %
  interval from resampling probes (the same probes for every checkpoint);
* Kendall τ between the checkpoints' order at ``m`` and at 20;
* the checkpoint a gate on the metric picks at each ``m`` (min; every metric
  here is lower-is-better) and its regret, the true excess loss of the pick
  over the best checkpoint's.

``mean_surprisal_prefix`` is ``-log p(x_k | x_<k)`` over prompt tokens: a
causal model's prompt logits do not read the response, so it must not move
with ``m`` beyond float rounding of the full pass's different lengths. The
summary records the largest difference (``prefix_max_abs_diff``). It also
records the largest difference between the ``m = 20`` rescoring and the
report the callback wrote during training
(``reference_max_abs_diff``: 0 when the kept weights are the scored ones).

Plan (:func:`plan`), three runs with the main study's own settings (so their
``m = 20`` columns are the main study's runs of the same name):

* ``grammar.scratch.s0``: the main study's ``--quick`` run (1,000 steps,
  10 scorings from step 10, 16 probes of 12 tokens);
* ``hmm-mid.scratch.s0``: 2,000 steps, 11 scorings from step 10, 40 probes;
* ``grammar.overfit.s0``: 64 training sequences for 2,000 steps, the same 11
  scorings, 40 probes: the excess loss bottoms out near step 60 and then
  grows, so the ranking is tested where checkpoints get worse.

Re-scoring at ``m`` costs ``|V| * sum_k (n + m - k - 1)`` token-forwards per
probe of ``n`` tokens (``|V|`` = 41-42, ``n`` = 13 with the start token), so
the four lengths together cost about 3.8 times the training-time scoring at
20: 32 checkpoints, 1,040 probe scorings per length in all (its run time
was measured only on a shared machine, so none is given). Every stage
resumes: a run with a ``record.json`` is not trained again, a recorded
``(step, m)`` (``<run>/lengths/step-XXXXXXXX.m-NNN.json``, same settings and
probes) is not scored again. The outputs are ``<out>/summary.json`` and
``<out>/summary.md`` (``summary-quick.*`` with ``--quick``, which shares the
grammar run's directory and leaves the full summary alone).

Caveat: the models are trained on 48-token sequences (positions 0-47). The
prompt holds 13 tokens with the start token, so at ``m = 40`` the response
tokens ``y_37`` to ``y_40`` are predicted from inputs at positions 48-51,
whose position embeddings training never updated.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from benchmarks.validity.__main__ import languages, setup_process
from benchmarks.validity.__main__ import plan as study_plan
from benchmarks.validity.analysis import bootstrap_spearman_ci, gate_pick, kendall, regret, spearman
from benchmarks.validity.languages import Language
from benchmarks.validity.runs import (
    RunRecord,
    RunSpec,
    checkpoint_model,
    checkpoint_path,
    load_record,
    probe_set_for,
    run_one,
)
from benchmarks.validity.signals import lower_is_better
from benchmarks.validity.truth import word_tokenizer
from probattr_monitor.io_utils import atomic_write_text
from probattr_monitor.report import Report
from probattr_monitor.report.definitions import RATIO_FIELDS
from probattr_monitor.scoring import ScoringConfig, build_report, score_probes
from probattr_monitor.sinks.files import step_dir_name

logger = logging.getLogger("benchmarks.validity.response_length")

#: Response lengths (``max_new_tokens``) every checkpoint is scored at.
LENGTHS = (5, 10, 20, 40)

#: The monitor's default, against which the other lengths are compared.
REFERENCE_LENGTH = ScoringConfig().max_new_tokens

#: Set metrics recorded and measured (names of :data:`probattr_monitor.report.METRIC_NAMES`).
METRICS = ("noise_rate", "near_zero_rate", "mean_entropy_full", "mean_surprisal_prefix", "mean_surprisal_prompt",
           "mean_surprisal_full")

#: The metric that by construction does not read the response.
PREFIX_METRIC = "mean_surprisal_prefix"


def plan(quick: bool = False) -> list[RunSpec]:
    """The study's runs, with the main study's settings (:func:`benchmarks.validity.__main__.plan`).

    Parameters
    ----------
    quick : bool
        Only the main study's ``--quick`` grammar run; otherwise also its
        ``hmm-mid.scratch.s0`` and ``grammar.overfit.s0`` runs.
    """
    specs = list(study_plan(True, 1))
    if quick:
        return specs
    full = {s.name: s for s in study_plan(False, 1)}
    return specs + [full["hmm-mid.scratch.s0"], full["grammar.overfit.s0"]]


@dataclass(frozen=True)
class LengthScoring:
    """One kept checkpoint scored at one response length.

    Attributes
    ----------
    run, step, max_new_tokens
        Which checkpoint, and the response bound it was scored with.
    excess_loss, excess_loss_se : float
        Its true excess loss (nats/token) and standard error, from the run's record.
    metrics : dict
        ``name -> {"value", "low", "high"}`` (the report's value and 95 % interval over probes).
    probe_ids : list of str
        Probes in the order of the per-probe sums.
    per_probe : dict
        ``name -> {"num": [...], "den": [...]}``: the metric's per-probe sums.
    response_tokens : list of int
        Tokens of each probe's generated response (at most ``max_new_tokens``).
    token_forwards : int
        Token-forwards of the candidate passes (the report's count).
    config : dict
        ``ScoringConfig.to_dict()`` of the scoring (checked on resume).
    """

    run: str
    step: int
    max_new_tokens: int
    excess_loss: float
    excess_loss_se: float
    metrics: dict
    probe_ids: list
    per_probe: dict
    response_tokens: list
    token_forwards: int
    config: dict

    def value(self, metric: str) -> float:
        """The set value of ``metric``."""
        return float(self.metrics[metric]["value"])


@dataclass(frozen=True)
class RescoreResult:
    """What :func:`rescore_run` returns: every scoring of the run, and how many were new."""

    scorings: list
    newly_scored: int


@dataclass(frozen=True)
class MetricAtLength:
    """One metric of one run at one response length, compared with the reference length.

    Attributes
    ----------
    metric, max_new_tokens
    values : list of float
        One per checkpoint, in step order.
    mean_abs_change, max_abs_change : float
        Mean and max over checkpoints of ``|value(m) - value(reference)|``.
    mean_ci_width : float
        Mean over checkpoints of the width of the value's 95 % interval over probes.
    spearman : float
        With the true excess loss over the run's checkpoints.
    spearman_ci : tuple of float
        95 % interval of ``spearman`` from resampling probes.
    kendall_vs_reference : float
        Kendall τ between the checkpoint orders at ``m`` and at the reference.
    picked_step : int or None
        The checkpoint a gate on the metric selects.
    regret : float
        True excess loss of the pick over the best checkpoint's (1.0: the best).
    """

    metric: str
    max_new_tokens: int
    values: list
    mean_abs_change: float
    max_abs_change: float
    mean_ci_width: float
    spearman: float
    spearman_ci: tuple
    kendall_vs_reference: float
    picked_step: Optional[int]
    regret: float


@dataclass(frozen=True)
class RunLengthSummary:
    """One run of the study, every metric at every length.

    Attributes
    ----------
    run : str
    steps : list of int
    excess_loss : list of float
        True excess loss per checkpoint.
    best_step : int
    mean_response_tokens : dict
        ``m -> mean generated response length over checkpoints and probes``.
    full_length_share : dict
        ``m -> share of responses that reached m tokens`` (the rest stopped at the end token).
    prefix_max_abs_diff : float
        Largest ``|mean_surprisal_prefix(m) - mean_surprisal_prefix(m')|`` over checkpoints and lengths,
        per-probe sums included.
    reference_max_abs_diff : float
        Largest difference between the reference-length rescoring's metrics and the training-time
        report's (NaN without either).
    metrics : list of MetricAtLength
    """

    run: str
    steps: list
    excess_loss: list
    best_step: int
    mean_response_tokens: dict
    full_length_share: dict
    prefix_max_abs_diff: float
    reference_max_abs_diff: float
    metrics: list = field(default_factory=list)


def scoring_path(run_dir: Path, step: int, max_new_tokens: int) -> Path:
    """Where the scoring of the checkpoint ``step`` at ``max_new_tokens`` is recorded."""
    return Path(run_dir) / "lengths" / f"{step_dir_name(step)}.m-{int(max_new_tokens):03d}.json"


def load_scoring(path: Path) -> Optional[LengthScoring]:
    """The recorded scoring at ``path``, or None where there is none."""
    if not path.is_file():
        return None
    return LengthScoring(**json.loads(path.read_text()))


def train_run(spec: RunSpec, language: Language, run_dir: Path) -> RunRecord:
    """The run's record, training it (weights kept at every scored step) unless it is recorded.

    Raises
    ------
    FileNotFoundError
        A recorded run whose kept weights are missing (trained without ``keep_checkpoints``).
    """
    record = load_record(run_dir)
    if record is None:
        logger.info("%s: training (%d steps, %d scorings)", spec.name, spec.steps, len(spec.score_at))
        record = run_one(spec, language, run_dir, keep_checkpoints=True)
    else:
        logger.info("%s: recorded, not trained again", spec.name)
    missing = [c["step"] for c in record.checkpoints if not checkpoint_path(run_dir, c["step"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: no kept weights for steps {missing}; train it again into an empty "
                                "directory")
    return record


def score_checkpoint(model: torch.nn.Module, tokenizer: Any, probes, config: ScoringConfig, *, run: str,
                     checkpoint: dict) -> LengthScoring:
    """Score one checkpoint's probe set with ``config`` through the library's public scoring path.

    Parameters
    ----------
    model, tokenizer, probes
        The checkpoint's model, the run's tokenizer and probe set.
    config : ScoringConfig
        The scoring settings (the response bound among them).
    run : str
        The run's name (recorded).
    checkpoint : dict
        The checkpoint's entry of the run's record (its step and ground truth).
    """
    scores = score_probes(model, tokenizer, probes, config)
    report = build_report(scores, tokenizer, config, step=checkpoint["step"], probe_set=probes)
    per = report.metrics.per_probe
    metrics, per_probe = {}, {}
    for name in METRICS:
        mv = getattr(report.metrics, name)
        metrics[name] = {"value": mv.value, "low": mv.low, "high": mv.high}
        num_field, den_field = RATIO_FIELDS[name]
        per_probe[name] = {"num": [float(getattr(p, num_field)) for p in per],
                           "den": [float(getattr(p, den_field)) for p in per]}
    lengths = {s.probe_id: len(s.result.response_ids) for s in scores}
    return LengthScoring(
        run=run, step=int(checkpoint["step"]), max_new_tokens=config.max_new_tokens,
        excess_loss=float(checkpoint["excess_loss"]), excess_loss_se=float(checkpoint["excess_loss_se"]),
        metrics=metrics, probe_ids=[p.probe_id for p in per], per_probe=per_probe,
        response_tokens=[lengths[p.probe_id] for p in per], token_forwards=int(report.meta["token_forwards"]),
        config=config.to_dict())


def _jsonable_config(config: ScoringConfig) -> dict:
    return json.loads(json.dumps(config.to_dict()))


def rescore_run(spec: RunSpec, language: Language, run_dir: Path, record: RunRecord,
                lengths: Sequence[int] = LENGTHS) -> RescoreResult:
    """Score every kept checkpoint of a run at every response length, skipping recorded scorings.

    A recorded scoring is reused when its settings (``ScoringConfig(max_new_tokens=m).to_dict()``)
    and its probes equal today's; otherwise it is scored again and replaced.

    Parameters
    ----------
    spec, language, run_dir
        The run, its synthetic language and its directory (kept weights under ``checkpoints/``).
    record : RunRecord
        The run's record (which checkpoints, and their ground truth).
    lengths : sequence of int
        The ``max_new_tokens`` values.
    """
    tokenizer = word_tokenizer(language)
    probes = probe_set_for(language, spec.num_probes, spec.prompt_tokens, spec.seed)
    out, new = [], 0
    for ck in sorted(record.checkpoints, key=lambda c: c["step"]):
        model = None
        for m in lengths:
            config = ScoringConfig(max_new_tokens=int(m))
            path = scoring_path(run_dir, ck["step"], m)
            done = load_scoring(path)
            if (done is not None and done.config == _jsonable_config(config)
                    and done.probe_ids == [p.id for p in probes]):
                out.append(done)
                continue
            if model is None:
                model = checkpoint_model(spec, language.vocab_size, checkpoint_path(run_dir, ck["step"]))
            scoring = score_checkpoint(model, tokenizer, probes, config, run=spec.name, checkpoint=ck)
            atomic_write_text(path, json.dumps(asdict(scoring), indent=1, allow_nan=True))
            out.append(scoring)
            new += 1
            logger.info("%s step %d m=%d: %s %.4f, noise_rate %.3f", spec.name, ck["step"], m, PREFIX_METRIC,
                        scoring.value(PREFIX_METRIC), scoring.value("noise_rate"))
    return RescoreResult(out, new)


def training_report_values(run_dir: Path, step: int) -> Optional[dict]:
    """The metrics of :data:`METRICS` in the report the callback wrote at ``step`` during training."""
    try:
        report = Report.load(Path(run_dir) / "reports" / step_dir_name(step))
    except (FileNotFoundError, ValueError):
        return None
    return {name: float(getattr(report.metrics, name).value) for name in METRICS}


def length_statistics(steps: Sequence[int], truth: Sequence[float], values: dict, per_probe: dict,
                      ci_width: dict, metric: str, reference: int = REFERENCE_LENGTH, *,
                      n_boot: int = 500) -> list[MetricAtLength]:
    """The response-length measures of one metric of one run.

    Parameters
    ----------
    steps, truth
        The checkpoints, in order, and their true excess loss.
    values : dict
        ``m -> values over the checkpoints``.
    per_probe : dict
        ``m -> (num, den)``, each ``[checkpoints, probes]`` (for the Spearman interval).
    ci_width : dict
        ``m -> widths of the values' intervals over probes``.
    metric : str
        Its name (the gate's direction comes from :func:`benchmarks.validity.signals.lower_is_better`).
    reference : int
        The length compared against (must be a key of ``values``).
    """
    ref = np.asarray(values[reference], float)
    low = lower_is_better(metric)
    out = []
    for m in sorted(values):
        v = np.asarray(values[m], float)
        change = np.abs(v - ref)
        num, den = per_probe[m]
        lo, hi = bootstrap_spearman_ci(np.asarray(num, float), np.asarray(den, float), truth, n_boot=n_boot)
        pick = gate_pick(v, low)
        out.append(MetricAtLength(
            metric=metric, max_new_tokens=int(m), values=v.tolist(),
            mean_abs_change=float(np.mean(change)), max_abs_change=float(np.max(change)),
            mean_ci_width=float(np.mean(ci_width[m])), spearman=spearman(v, truth), spearman_ci=(lo, hi),
            kendall_vs_reference=kendall(v, ref), picked_step=None if pick is None else int(steps[pick]),
            regret=regret(v, truth, low)))
    return out


def summarise_run(scorings: Sequence[LengthScoring], run_dir: Optional[Path] = None,
                  reference: int = REFERENCE_LENGTH) -> RunLengthSummary:
    """Every measure of one run from its scorings (and its training-time reports, when ``run_dir`` is given).

    Raises
    ------
    ValueError
        Scorings of more than one run, a checkpoint missing at some length, probe sets that differ,
        or no scoring at ``reference``.
    """
    runs = {s.run for s in scorings}
    if len(runs) != 1:
        raise ValueError(f"scorings of one run expected, got {sorted(runs)}")
    lengths = sorted({s.max_new_tokens for s in scorings})
    steps = sorted({s.step for s in scorings})
    if reference not in lengths:
        raise ValueError(f"no scoring at the reference length {reference}")
    by = {(s.step, s.max_new_tokens): s for s in scorings}
    missing = [(st, m) for st in steps for m in lengths if (st, m) not in by]
    if missing:
        raise ValueError(f"scorings missing for (step, max_new_tokens) {missing}")
    probe_ids = by[(steps[0], reference)].probe_ids
    if any(s.probe_ids != probe_ids for s in scorings):
        raise ValueError("the scorings do not share one probe set")
    truth = np.array([by[(st, reference)].excess_loss for st in steps])
    stats = []
    for name in METRICS:
        values = {m: [by[(st, m)].value(name) for st in steps] for m in lengths}
        per = {m: (np.array([by[(st, m)].per_probe[name]["num"] for st in steps]),
                   np.array([by[(st, m)].per_probe[name]["den"] for st in steps])) for m in lengths}
        widths = {m: [by[(st, m)].metrics[name]["high"] - by[(st, m)].metrics[name]["low"] for st in steps]
                  for m in lengths}
        stats.extend(length_statistics(steps, truth, values, per, widths, name, reference))
    prefix_diff = 0.0
    for st in steps:
        base = by[(st, reference)]
        for m in lengths:
            s = by[(st, m)]
            prefix_diff = max(prefix_diff, abs(s.value(PREFIX_METRIC) - base.value(PREFIX_METRIC)),
                              float(np.max(np.abs(np.subtract(s.per_probe[PREFIX_METRIC]["num"],
                                                              base.per_probe[PREFIX_METRIC]["num"])))))
    ref_diff = float("nan")
    if run_dir is not None:
        diffs = []
        for st in steps:
            logged = training_report_values(run_dir, st)
            if logged is not None:
                diffs.extend(abs(by[(st, reference)].value(k) - logged[k]) for k in METRICS)
        ref_diff = float(np.nanmax(diffs)) if diffs else float("nan")
    return RunLengthSummary(
        run=next(iter(runs)), steps=list(steps), excess_loss=truth.tolist(),
        best_step=int(steps[int(np.argmin(truth))]),
        mean_response_tokens={m: float(np.mean([by[(st, m)].response_tokens for st in steps])) for m in lengths},
        full_length_share={m: float(np.mean(np.array([by[(st, m)].response_tokens for st in steps]) == m))
                           for m in lengths},
        prefix_max_abs_diff=prefix_diff, reference_max_abs_diff=ref_diff, metrics=stats)


def _f(x, nd: int = 2) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def _g(x) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.2g}"


def render_markdown(summaries: Sequence[RunLengthSummary], reference: int = REFERENCE_LENGTH) -> str:
    """The study's tables: per run, every metric at every length against the reference."""
    parts = []
    for r in summaries:
        lens = sorted(r.mean_response_tokens, key=int)
        head = (f"### {r.run}\n\nBest checkpoint: step {r.best_step} (excess loss "
                f"{min(r.excess_loss):.3f}). Mean response length (share reaching m): "
                + ", ".join(f"m={m}: {r.mean_response_tokens[m]:.1f} ({r.full_length_share[m]:.2f})" for m in lens)
                + f". Largest change of `{PREFIX_METRIC}` across m: {r.prefix_max_abs_diff:.1e}; m={reference} "
                f"rescoring vs the training-time report: {r.reference_max_abs_diff:.1e}.\n\n")
        lines = [f"| metric | m | mean \\|Δ\\| vs {reference} | max \\|Δ\\| | mean CI width | ρ with excess loss "
                 f"[95% CI] | τ vs m={reference} | pick (step) | regret |", "|---" * 9 + "|"]
        for s in r.metrics:
            lo, hi = s.spearman_ci
            lines.append(f"| `{s.metric}` | {s.max_new_tokens} | {_g(s.mean_abs_change)} | {_g(s.max_abs_change)} | "
                         f"{_g(s.mean_ci_width)} | {_f(s.spearman)} [{_f(lo)}, {_f(hi)}] | "
                         f"{_f(s.kendall_vs_reference)} | {s.picked_step} | {_f(s.regret)} |")
        parts.append(head + "\n".join(lines) + "\n")
    return "\n".join(parts)


def render_compact(summaries: Sequence[RunLengthSummary], reference: int = REFERENCE_LENGTH) -> str:
    """One row per run and metric, the lengths side by side (the intervals are in :func:`render_markdown`)."""
    if not summaries:
        return ""
    lens = sorted({s.max_new_tokens for r in summaries for s in r.metrics})
    others = [m for m in lens if m != reference]
    all_m, other_m = " / ".join(map(str, lens)), " / ".join(map(str, others))
    lines = [f"| run | metric | ρ with excess loss, m = {all_m} | τ vs m={reference}, m = {other_m} | "
             f"regret, m = {all_m} | max \\|Δ\\| vs m={reference}, m = {other_m} |", "|---" * 6 + "|"]
    for r in summaries:
        for name in METRICS:
            at = {s.max_new_tokens: s for s in r.metrics if s.metric == name}
            lines.append(f"| {r.run} | `{name}` | " + " / ".join(_f(at[m].spearman) for m in lens) + " | "
                         + " / ".join(_f(at[m].kendall_vs_reference) for m in others) + " | "
                         + " / ".join(_f(at[m].regret) for m in lens) + " | "
                         + " / ".join(_g(at[m].max_abs_change) for m in others) + " |")
    return "\n".join(lines) + "\n"


def render_spearman(summaries: Sequence[RunLengthSummary]) -> str:
    """Spearman ρ with the true excess loss and its 95 % interval over probes, per run, metric and length."""
    if not summaries:
        return ""
    lens = sorted({s.max_new_tokens for r in summaries for s in r.metrics})
    lines = ["| run | metric | " + " | ".join(f"m = {m}" for m in lens) + " |", "|---" * (2 + len(lens)) + "|"]
    for r in summaries:
        for name in METRICS:
            at = {s.max_new_tokens: s for s in r.metrics if s.metric == name}
            cells = [f"{_f(at[m].spearman)} [{_f(at[m].spearman_ci[0])}, {_f(at[m].spearman_ci[1])}]" for m in lens]
            lines.append(f"| {r.run} | `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_dict(summaries: Sequence[RunLengthSummary], lengths: Sequence[int], reference: int) -> dict:
    """The JSON summary: settings and every run's measures."""
    return {"lengths": [int(m) for m in lengths], "reference": int(reference), "metrics": list(METRICS),
            "scoring": ScoringConfig(max_new_tokens=int(reference)).to_dict(),
            "runs": [asdict(s) for s in summaries]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.validity.response_length",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/resplen"))
    ap.add_argument("--quick", action="store_true", help="only the grammar scratch run")
    ap.add_argument("--only", default=None, help="comma-separated run-name substrings (others are skipped)")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)),
                    help=f"comma-separated max_new_tokens values (must include {REFERENCE_LENGTH})")
    ap.add_argument("--analyse-only", action="store_true", help="summarise the scorings already recorded")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    setup_process(args.threads)
    lengths = sorted({int(x) for x in args.lengths.split(",")})
    if REFERENCE_LENGTH not in lengths:
        ap.error(f"--lengths must include the reference {REFERENCE_LENGTH}")
    langs = languages()
    summaries = []
    for spec in plan(args.quick):
        if args.only and not any(s in spec.name for s in args.only.split(",")):
            continue
        run_dir = args.out / spec.name
        language = langs[spec.language]
        if args.analyse_only:
            record = load_record(run_dir)
            if record is None:
                continue
            scorings = [s for s in (load_scoring(scoring_path(run_dir, c["step"], m)) for c in record.checkpoints
                                    for m in lengths) if s is not None]
        else:
            record = train_run(spec, language, run_dir)
            scorings = rescore_run(spec, language, run_dir, record, lengths).scorings
        try:
            summaries.append(summarise_run(scorings, run_dir))
        except ValueError as err:
            logger.warning("%s: not summarised (%s)", spec.name, err)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "summary-quick" if args.quick else "summary"
    atomic_write_text(args.out / f"{stem}.json",
                      json.dumps(summary_dict(summaries, lengths, REFERENCE_LENGTH), indent=1, allow_nan=True))
    text = ("## All runs\n\n" + render_compact(summaries)
            + "\n## Spearman with the true excess loss, 95 % interval over probes\n\n" + render_spearman(summaries)
            + "\n## Per run\n\n" + render_markdown(summaries))
    atomic_write_text(args.out / f"{stem}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
