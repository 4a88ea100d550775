"""Hugging Face ``Trainer`` callback: score a probe set during training, gate on the noise rate.

Quick start::

    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
    from probattr_monitor.callbacks import ProbAttrTrainerCallback

    args = TrainingArguments(
        ...,
        eval_strategy="steps", eval_steps=200, save_steps=200,
        load_best_model_at_end=True,
        metric_for_best_model="probattr_mean_surprisal_prefix",   # HF looks up "eval_probattr_..."
        greater_is_better=False,                        # HF's default would be True!
        report_to=["wandb"],
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      processing_class=tokenizer,
                      callbacks=[ProbAttrTrainerCallback(probes="reasonable-en"),
                                 EarlyStoppingCallback(early_stopping_patience=3)])

How it fits the Trainer (read from ``transformers.Trainer``; docs/design.md section 5)
-------------------------------------------------------------------------------------

* ``Trainer.evaluate`` logs its metrics (``self.log``, which feeds ``on_log`` of
  every logger: ``WandbCallback``, TensorBoard...) and *then* calls
  ``on_evaluate(metrics=...)``. The dict is returned afterwards and is the one
  ``_determine_best_metric`` reads for ``metric_for_best_model`` /
  ``load_best_model_at_end`` / ``save_strategy="best"``. So keys this callback
  adds in ``on_evaluate`` reach best-model selection, and also
  ``EarlyStoppingCallback.on_evaluate`` *if that callback runs after this one*
  (callbacks run in list order; a wrong order is refused before training), but
  they never reach that evaluation's ``on_log``. The scalars are therefore sent
  by this callback itself: to W&B through
  :class:`~probattr_monitor.sinks.wandb.WandbSink` (``log_scalars=True``, against
  the ``probattr/step`` key declared with ``define_metric``), otherwise to the
  :class:`~probattr_monitor.sinks.files.FileSink` files; they are also merged
  into that evaluation's entry of ``state.log_history`` (so they are saved in
  ``trainer_state.json``).
* ``on_evaluate`` fires once per evaluation dataset (``eval_dataset={"a": ..,
  "b": ..}``). Scoring is deduplicated per global step, and the keys are
  injected once per ``evaluate()`` call (into the first dataset's dict), so that
  ``EarlyStoppingCallback`` counts one evaluation as one, as it does for
  HF's own per-dataset keys. The merged dict ``evaluate()`` returns holds them.
* Injected keys: ``eval_probattr_<name>`` for every scalar of
  :meth:`SetMetrics.scalars <probattr_monitor.report.SetMetrics.scalars>`
  (:func:`probattr_monitor.monitor.keys.scalar_names`): the
  metrics of :data:`~probattr_monitor.report.METRIC_NAMES` (``noise_rate``,
  ``near_zero_rate``, ``mean_entropy_full``...), their bootstrap intervals
  ``<name>_ci_low`` / ``<name>_ci_high``, and the counts ``n_tokens``,
  ``n_probes``, ``count_<class>``; a gate scoring (``attribution_every``,
  docs/design.md section 10) injects only the gate metric's three keys and
  ``n_probes``. Write ``metric_for_best_model=
  "probattr_mean_surprisal_prefix"`` (HF prepends ``eval_``; the monitor's
  default gate) with ``greater_is_better=False``.
  The prefix follows the monitor's ``prefix`` (default ``probattr``).
* Scores taken every N steps (``every_n_steps``, in ``on_step_end``) go to
  W&B/files and into the callback's history, but cannot drive
  ``metric_for_best_model``: HF only selects on evaluation metrics. An
  evaluation at a step that was already scored reuses that score.
* State: the callback is an ``ExportableState``; its history (every scoring's
  scalars, best value and step, failures, and with W&B the history tables, so
  that a resumed run's tables hold the steps scored before the resume) is
  written into each checkpoint's ``trainer_state.json`` (``stateful_callbacks``). HF itself restores callback
  states only with ``TrainingArguments(restore_callback_states_from_checkpoint=
  True)``, and does so by building a *new* callback from constructor arguments,
  which cannot carry a probe set, tokenizer or scoring config. This callback
  therefore restores itself, always, in ``on_train_begin`` of a resumed run
  from the state HF loaded from the checkpoint; HF's own restore step is made
  harmless (it builds an inert placeholder and leaves your instance in place).
* Distributed: every rank scores (its shard of the probes under DDP, gathered
  with ``all_gather_object``; every probe under FSDP / DeepSpeed, where each rank
  must run the same forward passes), so every rank injects the same values and
  takes the same early-stopping decision; only the world process zero logs.
* Training is never disturbed: scoring runs under
  :func:`~probattr_monitor.monitor.training_state_guard` (RNG states, module
  modes, grad mode, autocast restored), so a run ends with bit-identical
  weights with or without the callback.
* A scoring that produced nothing (it raised, or no probe could be scored, e.g.
  NaN logits) warns once from global rank 0, is recorded in
  :attr:`ProbAttrTrainerCallback.failures`, in the history (status
  ``"failed"``) and by the report sinks (W&B ``errors`` table, files), and moves
  no gate: no ``eval_probattr_*`` key is injected, except the
  ``metric_for_best_model`` key when it is a probattr one, which the Trainer
  requires: it is set to NaN (never a best value, so ``best_metric``,
  ``best_model_checkpoint``, ``save_strategy="best"`` and
  ``load_best_model_at_end`` are unaffected), and ``EarlyStoppingCallback``'s
  patience counter and a ``ReduceLROnPlateau`` scheduler are kept exactly where
  they were (:mod:`~probattr_monitor.callbacks.hf_gates`). A *partial* scoring
  (some probes failed or were skipped by the time budget) is treated the same
  way for the gates, since its value over fewer probes is not comparable with a
  complete one's; its report still goes to the sinks (W&B tables without
  scalars; files) with status ``"partial"``.
* W&B unavailable never loses a report: a disabled run (``WANDB_MODE=disabled``)
  counts as no run, and a report W&B does not take is written to files
  (``<output_dir>/probattr``), each said once
  (:mod:`~probattr_monitor.callbacks.routing`).
* Bad configuration raises ``ValueError`` before the first step: unknown probe
  set or unreadable file (at construction), impossible schedule, bad
  ``time_budget_s`` (at construction), a ``metric_for_best_model`` probattr key
  that is never produced, scoring only on evaluation with ``eval_strategy="no"``,
  no tokenizer, a probe (with its fixed response, or ``max_new_tokens``) longer
  than the model's context (``on_init_end`` / ``on_train_begin``), a model that
  is not a causal LM returning ``[batch, seq, vocab]`` logits (a 2-token trial
  forward at ``on_train_begin``, under the training-state guard).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional, Union

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from probattr_monitor.callbacks.common import (
    check_monitor,
    failed_report,
    record_scoring_failure,
    record_timing,
    trial_forward,
    wandb_run_for,
    warn_incomplete_scoring,
)
from probattr_monitor.callbacks.hf_checks import check_args, check_callback_order, eval_key, probattr_metric
from probattr_monitor.callbacks.hf_gates import EvaluationHold, trainer_callbacks
from probattr_monitor.callbacks.routing import ReportRouter, usable_run
from probattr_monitor.distributed import gatherer, rank_zero_warn
from probattr_monitor.monitor import HistoryEntry, ProbAttrMonitor, Schedule
from probattr_monitor.monitor.keys import scalar_names
from probattr_monitor.monitor.run_config import RunConfig
from probattr_monitor.report import Report
from probattr_monitor.scoring import ScoringConfig
from probattr_monitor.sinks import FileSink, WandbSink
from probattr_monitor.sinks.wandb import is_disabled_run, is_wandb_run

logger = logging.getLogger(__name__)

__all__ = ["ProbAttrTrainerCallback", "producible_metric_names"]

#: Argument name HF's restore path passes back to the class (see ``state()``).
_RESTORE_ARG = "_probattr_restore_placeholder"


def producible_metric_names() -> list[str]:
    """Every ``<name>`` this callback injects as ``eval_<prefix>_<name>``.

    :func:`probattr_monitor.monitor.keys.scalar_names`: what
    :meth:`probattr_monitor.report.SetMetrics.scalars` produces (with intervals
    and counts).
    """
    return scalar_names()


class _RestorePlaceholder(TrainerCallback):
    """What HF's ``_load_callback_state`` gets when it rebuilds the callback: an inert callback.

    HF calls ``type(cb)(**state["args"])``, sets ``state["attributes"]`` on the
    result, removes the first callback *of the result's type* and adds the
    result. Returning this object (of another type) keeps the user's
    :class:`ProbAttrTrainerCallback` in place; that instance restores its own
    state in ``on_train_begin``.
    """


class _CallbackMeta(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get(_RESTORE_ARG):
            return _RestorePlaceholder()
        return super().__call__(*args, **kwargs)


class ProbAttrTrainerCallback(TrainerCallback, ExportableState, metaclass=_CallbackMeta):
    """Score a fixed probe set with the model being trained by a ``transformers.Trainer``.

    See the module documentation for how it interacts with the Trainer.

    Parameters
    ----------
    monitor : ProbAttrMonitor, optional
        A ready monitor (probe set, scoring, schedule, prefix, tracked metric).
        When given, ``probes`` and ``scoring`` must be left at their defaults and
        ``every_n_steps`` / ``on_evaluate`` are taken from ``monitor.schedule``.
    probes : str, path or ProbeSet
        Built-in probe-set name (``"reasonable-en"``, ``"paper"``) or a JSONL/YAML
        file. An unknown name or unreadable file raises here.
    tokenizer : transformers tokenizer, optional
        Default: the Trainer's ``processing_class`` (its ``.tokenizer`` for a
        processor).
    scoring : ScoringConfig, optional
        Candidates (exact ``"all"`` or a budget), decoding, response length...
    every_n_steps : int, optional
        Also score after every N-th optimizer step (in ``on_step_end``); these
        scores go to W&B/files but cannot drive ``metric_for_best_model``.
    on_evaluate : bool
        Score at each evaluation and inject ``eval_probattr_*`` keys (default).
    wandb : "auto", bool or wandb Run
        ``"auto"``: log to the active W&B run if there is one when training
        starts (the run of HF's ``WandbCallback`` with ``report_to=["wandb"]``,
        or your own ``wandb.init``; online or offline), else write files.
        ``True``: require an active run (raises before training otherwise).
        ``False``: never use W&B. A run object: log to that run. A disabled
        run (``WANDB_MODE=disabled``) keeps nothing and counts as no run: the
        files take the reports (one warning), as they take any report W&B
        refuses (``run.log`` raised...).
    log_dir : str or path, optional
        Directory of the file sink. Default: ``<output_dir>/probattr``, used only
        when W&B is not; an explicit ``log_dir`` is always written.
    plots : bool
        Attach the figures (entropy vs AS, KL vs AS, tokens coloured by AS) to
        W&B as images / write them as PNG files at each scoring.
    attribution_every : int, None or "auto"
        Attribute on the first scoring and every ``attribution_every``-th after
        it, and run gate scorings (one forward pass per prompt, the
        prefix-surprisal metrics only) in between; ``None``: gate scorings only;
        ``1``: every scoring attributes. Default ``"auto"``: every 10th when the
        gate metric is one a gate scoring computes (the default gate), else 1
        (:class:`~probattr_monitor.monitor.ProbAttrMonitor`, docs/design.md
        section 10). A ``metric_for_best_model`` that gate
        scorings do not produce is refused before training.

    Attributes
    ----------
    monitor : ProbAttrMonitor
        Holds the history (``monitor.state.history``), best value and step.
    failures : list of dict
        ``{"step", "event", "error"}`` of every scoring that failed (raised, or
        scored no probe).
    report_failures : list of dict
        ``{"step", "event", "error"}`` of every report a sink did not take.
    last_report : Report or None
        The most recent report scored by this process.
    """

    def __init__(
        self,
        monitor: Optional[ProbAttrMonitor] = None,
        *,
        probes: Any = "reasonable-en",
        tokenizer: Any = None,
        scoring: Optional[ScoringConfig] = None,
        every_n_steps: Optional[int] = None,
        on_evaluate: bool = True,
        wandb: Any = "auto",
        log_dir: Optional[str | os.PathLike] = None,
        plots: bool = True,
        attribution_every: Union[int, None, str] = "auto",
    ) -> None:
        if not (wandb == "auto" or isinstance(wandb, bool) or is_wandb_run(wandb)):
            raise ValueError(f"wandb must be 'auto', True, False or a wandb Run, got {wandb!r}")
        if monitor is not None:
            check_monitor(monitor)
            if scoring is not None or not (isinstance(probes, str) and probes == "reasonable-en"):
                raise ValueError("pass probes/scoring either to the ProbAttrMonitor or to the callback, not both")
            if every_n_steps is not None or on_evaluate is not True:
                raise ValueError("with a monitor, set every_n_steps/on_evaluate in its Schedule")
            if not (isinstance(attribution_every, str) and attribution_every == "auto"):
                raise ValueError("with a monitor, set attribution_every on the ProbAttrMonitor")
            if tokenizer is not None:
                monitor.tokenizer = tokenizer
            self.monitor = monitor
        else:
            schedule = Schedule(every_n_steps=every_n_steps, on_validation_end=bool(on_evaluate))
            self.monitor = ProbAttrMonitor(probes, tokenizer=tokenizer, scoring=scoring, schedule=schedule,
                                           attribution_every=attribution_every)
        self.wandb = wandb
        self.log_dir = os.fspath(log_dir) if log_dir is not None else None
        self.plots = bool(plots)
        self.failures: list[dict] = []
        #: ``{"step", "event", "score_s", "log_s", "token_forwards"}`` of every scoring by this process
        #: (as the Lightning callback's).
        self.timings: list[dict] = []
        self.last_report: Optional[Report] = None
        self._eval_round: tuple[Optional[int], set] = (None, set())
        self._hold = EvaluationHold()
        self._callbacks: Optional[list] = None
        self._checked_model: Optional[int] = None
        self._router: Optional[ReportRouter] = None
        self._wandb_history_state: Optional[dict] = None  # WandbSink.state_dict() from a checkpoint
        self._is_zero = True
        self._rank = 0
        self._world_size = 1
        self._shard = True
        self._config: Optional[dict] = None
        self._ready = False

    # ------------------------------------------------------------------ public helpers
    @property
    def prefix(self) -> str:
        return self.monitor.prefix

    def hf_key(self, name: str) -> str:
        """The evaluation-metrics key of metric ``name`` (``eval_probattr_noise_rate``)."""
        return eval_key(self.prefix, name)

    @property
    def history(self) -> list[HistoryEntry]:
        return list(self.monitor.state.history)

    @property
    def best_step(self) -> Optional[int]:
        return self.monitor.state.best_step

    @property
    def best_value(self) -> Optional[float]:
        return self.monitor.state.best_value

    @property
    def report_failures(self) -> list[dict]:
        return [] if self._router is None else list(self._router.failures)

    # ------------------------------------------------------------------ ExportableState
    def state(self) -> dict:
        """What each checkpoint's ``trainer_state.json`` stores under ``stateful_callbacks``.

        ``args`` only makes HF's restore path (``restore_callback_states_from_
        checkpoint=True``) build an inert placeholder; ``attributes`` holds the
        monitor state that :meth:`on_train_begin` restores on resume.
        """
        attributes = {"monitor_state": self.monitor.state_dict(), "failures": list(self.failures)}
        sink = self._router.wandb_sink if self._router is not None else None
        if sink is not None:  # the W&B history tables, so a resumed run re-logs every step
            attributes["wandb_history"] = sink.state_dict()
        return {"args": {_RESTORE_ARG: True}, "attributes": attributes}

    def load_state(self, stored: dict) -> None:
        """Restore what :meth:`state` returned."""
        attrs = stored.get("attributes", {}) if isinstance(stored, dict) else {}
        monitor_state = attrs.get("monitor_state")
        if monitor_state:
            self.monitor.load_state_dict(monitor_state)
        self.failures = list(attrs.get("failures", []))
        self._wandb_history_state = attrs.get("wandb_history")
        if self._router is not None and self._router.wandb_sink is not None and self._wandb_history_state:
            self._router.wandb_sink.load_state_dict(self._wandb_history_state)

    # ------------------------------------------------------------------ validation
    def _check_args(self, args: Any, *, training: bool) -> None:
        metric = probattr_metric(args, self.prefix)  # raises for a probattr key never produced
        if metric is not None:
            self.monitor.gate_reads(f"{self.prefix}/{metric}")  # "auto": attribute every scoring if it must
        check_args(args, self.monitor.schedule, self.prefix, training=training,
                   every_scoring=self.monitor.every_scoring_keys(), attribution_every=self.monitor.attribution_every)

    def _check_order(self, args: Any, state: Any) -> None:
        check_callback_order(args, state, self.prefix, type(self).__name__)

    def _tokenizer(self, processing_class: Any) -> Any:
        if self.monitor.tokenizer is not None:
            return self.monitor.tokenizer
        tok = processing_class
        if tok is not None and not callable(getattr(tok, "decode", None)) and hasattr(tok, "tokenizer"):
            tok = tok.tokenizer  # a multimodal processor
        return tok

    # ------------------------------------------------------------------ events
    def on_init_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._check_args(args, training=False)
        self._check_order(args, state)
        self._callbacks = trainer_callbacks(self) or self._callbacks
        tok = self._tokenizer(processing_class)
        if model is not None and tok is not None:
            self.monitor.setup(model, tok)

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._callbacks = trainer_callbacks(self) or self._callbacks
        self._hold.release(state)
        self._prepare(args, state, model, processing_class, training=True)
        if state.global_step > 0:
            self._restore(state)
        if (probattr_metric(args, self.prefix) is not None and self._callbacks is None
                and "EarlyStoppingCallback" in (getattr(state, "stateful_callbacks", None) or {})):
            rank_zero_warn("probattr: the Trainer's callbacks could not be read from this transformers release, so "
                           "EarlyStoppingCallback will count a failed scoring as an evaluation without improvement",
                           RuntimeWarning)

    # The hold of a failed evaluation is released at the next event after it (EarlyStoppingCallback has run).
    def on_step_begin(self, args, state, control, **kwargs):
        self._hold.release(state)

    def on_save(self, args, state, control, **kwargs):
        self._hold.release(state)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._hold.release(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._hold.release(state)

    def _prepare(self, args: Any, state: Any, model: Any, processing_class: Any, *, training: bool) -> None:
        """Checks, tokenizer, ranks and sinks: at train begin, or at an evaluation outside training."""
        self._check_args(args, training=training)
        if training and state.global_step == 0:  # a resumed state's callbacks are sorted by name
            self._check_order(args, state)
        tok = self._tokenizer(processing_class)
        if tok is None:
            raise ValueError("ProbAttrTrainerCallback needs a tokenizer: pass tokenizer=... or give the Trainer "
                             "a processing_class")
        if model is not None:
            self.monitor.setup(model, tok)
            self._check_model(model, tok)
        else:
            self.monitor.tokenizer = tok
        self._is_zero = bool(state.is_world_process_zero)
        self._rank = int(getattr(args, "process_index", 0))
        self._world_size = int(getattr(args, "world_size", 1))
        self._shard = not (bool(getattr(args, "fsdp", None)) or bool(getattr(args, "deepspeed", None)))
        self._config = RunConfig.from_monitor(self.monitor).to_dict()
        if self._is_zero:
            self._open_sinks(args)
        self._ready = True

    def _check_model(self, model: Any, tokenizer: Any) -> None:
        """Raise ``ValueError`` unless ``model`` runs as a causal LM (a 2-token trial forward, once per model)."""
        if self._checked_model == id(model):
            return
        problem = trial_forward(model, tokenizer)
        if problem:
            raise ValueError(f"ProbAttrTrainerCallback cannot score the Trainer's model ({type(model).__name__}): it "
                             f"must be a causal LM whose forward(input_ids=...) returns [batch, seq, vocab] `.logits` "
                             f"(any *ForCausalLM); {problem}")
        self._checked_model = id(model)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        sched = self.monitor.schedule
        step = state.global_step
        if sched.due("train_step", step) or (sched.on_save_checkpoint and control.should_save):
            if not self._ready:
                self._prepare(args, state, model, processing_class, training=False)
            self._score(state, model, "train_step")

    def on_epoch_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        sched = self.monitor.schedule
        epoch = max(0, int(round(state.epoch or 0)) - 1)
        if sched.due("train_epoch", state.global_step, epoch=epoch) or (
            sched.on_save_checkpoint and control.should_save
        ):
            if not self._ready:
                self._prepare(args, state, model, processing_class, training=False)
            self._score(state, model, "train_epoch")

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        if metrics is None:
            return
        step = int(state.global_step)
        if not self._first_of_round(step, metrics):
            return
        self._hold.release(state)
        if not self._ready:  # trainer.evaluate() before (or without) train()
            self._prepare(args, state, model, processing_class, training=False)
        entry = self._entry(step)
        if entry is None and self.monitor.schedule.on_validation_end:
            entry = self._score(state, model, "evaluate")
        if entry is None:
            return
        if not entry.complete:  # nothing comparable: inject nothing, keep every gate where it was
            metric = probattr_metric(args, self.prefix)
            if metric is not None:
                self._hold.hold(self.hf_key(metric), metrics, state, self._callbacks, kwargs.get("lr_scheduler"))
            return
        logged_keys = list(metrics)
        values = self._hf_values(entry)
        metrics.update(values)
        self._merge_log_history(state, step, logged_keys, values)

    # ------------------------------------------------------------------ internals
    def _restore(self, state: Any) -> None:
        stored = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
        if isinstance(stored, list):  # several callbacks of this class: match by probe set
            fp = self.monitor.probe_set.fingerprint
            match = [s for s in stored if s.get("attributes", {}).get("monitor_state", {}).get("fingerprint") == fp]
            stored = (match or stored or [None])[0]
        if stored:
            self.load_state(stored)
            logger.info("probattr: resumed with %d scored steps (best %s at step %s)",
                        len(self.monitor.state.history), self.best_value, self.best_step)

    def _entry(self, step: int) -> Optional[HistoryEntry]:
        return self.monitor.entry(step)

    def _first_of_round(self, step: int, metrics: dict) -> bool:
        """True for the first ``on_evaluate`` of one ``evaluate()`` call (one per eval dataset)."""
        prefix = next((k[: -len("_runtime")] for k in metrics if k.endswith("_runtime")), None)
        last_step, seen = self._eval_round
        if last_step != step or prefix is None or prefix in seen:
            self._eval_round = (step, {prefix})
            return True
        seen.add(prefix)
        return False

    def _hf_values(self, entry: HistoryEntry) -> dict[str, float]:
        head = f"{self.prefix}/"
        return {self.hf_key(k[len(head):]): float(v) for k, v in entry.scalars.items() if k.startswith(head)}

    @staticmethod
    def _merge_log_history(state: Any, step: int, logged_keys: list, values: dict) -> None:
        for record in reversed(getattr(state, "log_history", None) or []):
            if record.get("step", step) < step:
                break
            if record.get("step") == step and all(k in record for k in logged_keys):
                record.update(values)
                return

    def _score(self, state: Any, model: Any, event: str) -> HistoryEntry:
        step = int(state.global_step)
        entry = self._entry(step)
        if entry is not None:
            return entry
        started = time.perf_counter()
        try:
            if model is None:
                raise RuntimeError("the Trainer passed no model to the callback")
            gather = gatherer(self._world_size)
            report = self.monitor.run(
                model, step, rank=self._rank, world_size=self._world_size if gather else 1,
                gather=gather, shard=self._shard,
            )
        except Exception as err:  # never disturb training for a scoring failure
            entry = self.monitor.record_failure(step, f"{type(err).__name__}: {err}")
            record_scoring_failure(self.failures, step, event, err)
            logger.debug("probattr: scoring at step %d failed", step, exc_info=True)
            if self._is_zero:
                self._log(failed_report(self.monitor, step, entry.errors), step, entry)
            return entry
        score_s = time.perf_counter() - started
        self.last_report = report
        entry = self._entry(step)
        if not entry.complete:
            warn_incomplete_scoring(self.failures, entry, event, len(self.monitor.probe_set))
        started = time.perf_counter()
        if self._is_zero:
            self._log(report, step, entry)
        record_timing(self.timings, step, event, score_s, time.perf_counter() - started, report)
        return entry

    # ------------------------------------------------------------------ sinks
    def _active_wandb_run(self) -> Any:
        return wandb_run_for(self.wandb, owner=type(self).__name__,
                             no_run="ProbAttrTrainerCallback(wandb=True) but no W&B run is active: call wandb.init() "
                                    "or use TrainingArguments(report_to=['wandb'])")

    @property
    def sinks(self) -> list[Any]:
        """The report sinks in use on this process (world process zero: W&B and/or files; others: none)."""
        return [] if self._router is None else self._router.sinks

    def _open_sinks(self, args: Any) -> None:
        default_dir = os.path.join(args.output_dir, self.prefix)
        if self._router is None:
            run = self._active_wandb_run()  # raises for wandb=True without a run
            run = usable_run(run, owner=type(self).__name__, files=self.log_dir or default_dir)
            wandb_sink = self._make_wandb_sink() if run is not None else None
            file_sink = None
            if self.log_dir is not None or wandb_sink is None:
                file_sink = FileSink(self.log_dir or default_dir, plots=self.plots)
            self._router = ReportRouter(wandb_sink=wandb_sink, file_sink=file_sink, fallback_dir=default_dir,
                                        file_kwargs={"plots": self.plots}, owner=type(self).__name__)
        self._router.setup(self._config)

    def _make_wandb_sink(self) -> WandbSink:
        run = self.wandb if is_wandb_run(self.wandb) else None  # None: follow wandb.run
        sink = WandbSink(run, prefix=self.prefix, log_scalars=True, log_plots=self.plots, warn=False,
                         gate_metric=self.monitor.metric, gate_mode=self.monitor.mode)
        if self._wandb_history_state:  # restored from a checkpoint: the next scoring re-logs every step
            sink.load_state_dict(self._wandb_history_state)
        return sink

    def _log(self, report: Report, step: int, entry: HistoryEntry) -> None:
        if self._router is None:
            return
        if self._router.wandb_sink is None and self.wandb == "auto":
            run = self._active_wandb_run()
            if run is not None and not is_disabled_run(run):
                self._router.add_wandb(self._make_wandb_sink())  # a run started after on_train_begin
        self._router.log(report, step, entry)  # warns, never raises
