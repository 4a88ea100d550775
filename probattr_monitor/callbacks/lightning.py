"""Lightning callback: score a probe set while training and log the noise-token rate.

.. code-block:: python

    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from probattr_monitor.callbacks import ProbAttrCallback

    probattr = ProbAttrCallback(probes="reasonable-en", tokenizer=tokenizer)
    trainer = Trainer(callbacks=[probattr, ModelCheckpoint(monitor="probattr/mean_surprisal_prefix", mode="min")])
    trainer.fit(module)

See :class:`ProbAttrCallback` for the schedule, the logged keys, W&B and files,
resuming, and distributed training.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from probattr_monitor.callbacks import lightning_schedule as timing
from probattr_monitor.callbacks._lightning_compat import Callback, generate_state_key, log_metrics_now, pl
from probattr_monitor.callbacks.common import (
    check_monitor,
    failed_report,
    record_scoring_failure,
    record_timing,
    require_wandb,
    wandb_run_for,
    warn_incomplete_scoring,
)
from probattr_monitor.callbacks.lightning_gates import GateHold
from probattr_monitor.callbacks.lightning_model import context_model, find_causal_lm, forward_module
from probattr_monitor.callbacks.routing import ReportRouter, usable_run
from probattr_monitor.distributed import broadcast_object, dist_ready, gatherer, rank_zero_warn
from probattr_monitor.monitor import ProbAttrMonitor, Schedule
from probattr_monitor.monitor.keys import scalar_keys, step_key
from probattr_monitor.monitor.run_config import RunConfig
from probattr_monitor.report import DEFAULT_GATE_METRIC, Report
from probattr_monitor.scoring import ScoringConfig
from probattr_monitor.sinks import FileSink, WandbSink

logger = logging.getLogger(__name__)

__all__ = ["ProbAttrCallback", "SHARDED_STRATEGIES", "logged_keys"]

#: Strategies whose parameters are sharded across ranks: every rank must run the
#: same forward passes (matched by class name, so their packages are never imported).
SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


def logged_keys(prefix: str = "probattr") -> list[str]:
    """Every scalar key the callback logs through Lightning (``{prefix}/step``, ``{prefix}/noise_rate``...).

    ``{prefix}/step`` followed by :func:`probattr_monitor.monitor.keys.scalar_keys`.
    """
    return [step_key(prefix)] + scalar_keys(prefix)


def _strategy_shards_params(strategy: Any) -> bool:
    names = {cls.__name__ for cls in type(strategy).__mro__}
    return any(name in names for name in SHARDED_STRATEGIES)


class ProbAttrCallback(Callback):
    """Score a fixed probe set during ``Trainer.fit`` and log convergence metrics.

    Parameters
    ----------
    monitor : ProbAttrMonitor, optional
        A ready monitor (probe set, scoring settings, schedule, tracked
        metric). When given, ``probes``, ``scoring``, the schedule arguments,
        ``metric``, ``mode``, ``prefix`` and ``time_budget_s`` must be left at
        their defaults (a different value raises ``ValueError``).
    probes : str, path or ProbeSet
        Built-in set name, JSONL/YAML file, or ProbeSet (default
        ``"reasonable-en"``). An unknown set or unreadable file raises here.
    tokenizer : transformers tokenizer, optional
        Default: the monitor's, else ``pl_module.tokenizer``, else
        ``trainer.datamodule.tokenizer``; none of them raises at setup.
    scoring : ScoringConfig, optional
    every_n_steps, every_n_epochs, on_validation_end, on_save_checkpoint
        The schedule (logical OR; default: ``on_validation_end=True`` only).
        ``every_n_steps``: after every N-th optimizer step (in
        ``on_train_batch_end``). ``every_n_epochs``: at the end of every N-th
        training epoch. ``on_validation_end``: after each validation loop of
        ``fit`` (in ``on_validation_epoch_end``; never during the sanity
        check). ``on_save_checkpoint``: right before each ``ModelCheckpoint``
        save, in the hook that precedes it (``on_train_batch_end``,
        ``on_train_epoch_end`` or ``on_validation_epoch_end``: Lightning refuses
        ``self.log`` in ``on_save_checkpoint``/``on_validation_end``), so the
        checkpoint is ranked on the fresh value (step- and epoch-based saves;
        ``train_time_interval`` saves cannot be anticipated and warn). Manual
        ``trainer.save_checkpoint`` calls are not scored. A step is scored at most
        once, whatever fires. A schedule that can never fire in this run raises
        when training starts.
    metric, mode : str
        The gate metric and its direction (for the monitor's best value); the
        defaults are the monitor's (:class:`~probattr_monitor.monitor.ProbAttrMonitor`).
    prefix : str
        Key prefix (default ``"probattr"``).
    time_budget_s : float, optional
        Per-scoring time budget (single-process runs only).
    model_attr : str, optional
        Dotted attribute of the LightningModule holding the causal LM. Default:
        the LightningModule itself if its ``forward(input_ids=...)`` returns
        ``.logits``, else its (unique, outermost) ``transformers.PreTrainedModel``
        child.
    wandb : bool or "auto"
        ``"auto"``: log tables and figures to W&B when a ``WandbLogger`` is
        attached or a ``wandb.run`` is active, else to files. ``True``: W&B
        required (raises at setup without a run). ``False``: files only. A
        disabled run (``WANDB_MODE=disabled``) keeps nothing and counts as no
        run: files are written instead (one warning). A report W&B does not
        take (``run.log`` raised...) is written to files too (one warning).
    log_dir : str or Path, optional
        Also (or, without W&B, instead of the default place) write every
        report, figure and a ``history.jsonl`` here. Without W&B and without
        ``log_dir`` the files go to ``<trainer.log_dir>/probattr`` (or
        ``<default_root_dir>/probattr``).
    log_plots : bool
        Figures with each scoring (W&B images / PNG files).
    max_rows_per_table : int
        W&B token-table row cap (split into several tables past it).
    file_formats : sequence of str
        Report table formats of the file sink.
    shard_probes : bool, optional
        Split the probes across ranks and gather the scores (``True``), or let
        every rank score every probe (``False``). Default: ``True`` except
        under sharded-parameter strategies.
    attribution_every : int, None or "auto"
        Attribute on the first scoring and every ``attribution_every``-th after
        it, and run gate scorings (one forward pass per prompt, the
        prefix-surprisal metrics only) in between; ``None``: gate scorings only;
        ``1``: every scoring attributes. Default ``"auto"``: every 10th when the
        gate metric is one a gate scoring computes (the default gate), else 1. See :class:`~probattr_monitor.monitor.ProbAttrMonitor`
        and docs/design.md section 10. A ``ModelCheckpoint``/``EarlyStopping``
        watching a key that gate scorings do not log is refused at setup.

    Logged scalars
    --------------
    Through Lightning's own logging path (``LightningModule.log`` with
    ``sync_dist=False, rank_zero_only=False``; every rank logs the same
    values), so ``ModelCheckpoint(monitor="probattr/mean_surprisal_prefix", mode="min")``
    and ``EarlyStopping`` work unchanged and every attached logger (W&B, CSV,
    TensorBoard...) receives them: ``{prefix}/step`` (the global step) and, for
    each metric of :data:`probattr_monitor.report.METRIC_NAMES`,
    ``{prefix}/<metric>``, ``{prefix}/<metric>_ci_low``,
    ``{prefix}/<metric>_ci_high``; plus ``{prefix}/n_tokens``,
    ``{prefix}/n_probes`` and ``{prefix}/count_<class>`` (see
    :func:`logged_keys`). A gate scoring logs ``{prefix}/step``, the
    prefix-surprisal metric with its interval and ``{prefix}/n_probes``. Values scored in ``on_train_batch_end`` are logged
    with ``logger=False`` (so that they reach ``callback_metrics``) and sent to
    the loggers at once through the trainer's logger connector, whatever
    ``log_every_n_steps`` says.

    Tables and figures
    ------------------
    On global rank 0 only: to W&B (:class:`~probattr_monitor.sinks.WandbSink`;
    the run of Lightning's ``WandbLogger``, else ``wandb.run``) and/or to files
    (:class:`~probattr_monitor.sinks.FileSink`). The W&B run config (and the
    files' ``config.json``) records :class:`~probattr_monitor.monitor.run_config.RunConfig`
    under ``config[prefix]``: the probe-set manifest and fingerprint, the
    scoring settings, the schedule and the tracked metric, the same record as
    the Hugging Face callback's.

    Validation before training
    --------------------------
    At construction: unknown probe set, unreadable probe file, impossible
    schedule, a bad ``time_budget_s``. At ``setup``: a ``ModelCheckpoint``/``EarlyStopping`` whose
    ``monitor`` starts with ``f"{prefix}/"`` but names a key this callback
    never logs; ``wandb=True`` without a run; no tokenizer. At fit start: no
    causal LM found, a probe (with its fixed response, or ``max_new_tokens``)
    longer than the model's context. When training starts: a schedule that can
    never fire in this run (the message names the setting: e.g.
    ``check_val_every_n_epoch=5`` with ``max_epochs=2``, ``max_steps`` ending
    the run before the first validation, ``every_n_steps`` beyond the run), or
    that leaves such a checkpoint/early-stopping callback reading a missing
    or stale value. All raise ``ValueError`` (on every rank) before the first
    training step.

    Never disturbing training
    -------------------------
    Scoring runs under :func:`~probattr_monitor.monitor.training_state_guard`
    (RNG states, module modes, grad mode, autocast, TF32 restored) and
    ``torch.no_grad``; the weights of a run with the callback are bit-identical
    to those of the same run without it. A scoring failure (it raised, or no
    probe could be scored, e.g. NaN logits) warns once from rank 0, is recorded
    in :attr:`failures`, in the history (status ``"failed"``) and in the report
    sinks, and moves no gate: nothing is logged for it, the probattr keys are
    removed from ``trainer.callback_metrics``, and until the next scoring every
    ``EarlyStopping`` / ``ModelCheckpoint`` / ``ReduceLROnPlateau`` watching a
    probattr key skips its check (:class:`~probattr_monitor.callbacks.lightning_gates.GateHold`):
    no early stop, no patience used, no checkpoint ranked, no crash for the
    missing key at their defaults. A *partial* scoring (some probes failed or
    were skipped by ``time_budget_s``) is treated the same way for the gates
    (its value, over fewer probes, is not comparable with a complete one's),
    while its report is written to the sinks and its history entry has
    status ``"partial"``. Training never stops for a scoring.

    Resuming
    --------
    The monitor's history (steps, values, best value and step) is saved in
    every checkpoint (``Callback.state_dict``) and restored on resume; a step
    already in the history is never scored again.

    Distributed training
    --------------------
    DDP: each rank scores ``probe_set.shard(rank, world_size)``, the scores are
    gathered with ``torch.distributed.all_gather_object`` on every rank, and
    every rank builds the same report and logs the same values; only rank 0
    writes tables. No collective is ever behind ``is_global_zero``. (Per-probe
    failures are recorded, not raised, so every rank reaches the gather; an
    unexpected exception on one rank only would leave the others waiting in it.)
    FSDP / DeepSpeed (any strategy in :data:`SHARDED_STRATEGIES`): every rank
    must run the same number of forward passes with the same shapes, or the
    parameter all-gathers deadlock. The callback therefore scores *every*
    probe on *every* rank (``shard_probes=False``), with the same inputs,
    greedy/seeded decoding, no time budget and no early exit, so forward
    counts and shapes match; the values logged are rank 0's (broadcast). The
    forwards go through the sharded modules themselves, so they gather their
    parameters as in training: under Lightning's ``FSDPStrategy`` (whose root
    ``FullyShardedDataParallel`` unit wraps the LightningModule) score the
    LightningModule itself, i.e. give it a ``forward(input_ids, **kwargs)``
    that returns the HF output (the callback then calls the root wrapper);
    under DeepSpeed ZeRO-3 every submodule gathers its own parameters, so the
    HF child works too. The trial forward at ``on_fit_start`` runs on every
    rank as well. Only the DDP path is exercised by this package's tests (CPU,
    gloo); the sharded path is covered by a test that every rank runs the same
    number of forwards with the same shapes when ``shard_probes=False``.
    """

    def __init__(
        self,
        monitor: Optional[ProbAttrMonitor] = None,
        *,
        probes: Any = "reasonable-en",
        tokenizer: Any = None,
        scoring: Optional[ScoringConfig] = None,
        every_n_steps: Optional[int] = None,
        every_n_epochs: Optional[int] = None,
        on_validation_end: bool = True,
        on_save_checkpoint: bool = False,
        metric: str = DEFAULT_GATE_METRIC,
        mode: Optional[str] = None,
        prefix: str = "probattr",
        time_budget_s: Optional[float] = None,
        model_attr: Optional[str] = None,
        wandb: Any = "auto",
        log_dir: Optional[str | Path] = None,
        log_plots: bool = True,
        max_rows_per_table: int = 10_000,
        file_formats: Sequence[str] = ("csv", "json"),
        shard_probes: Optional[bool] = None,
        attribution_every: Union[int, None, str] = "auto",
    ) -> None:
        super().__init__()
        if monitor is not None:
            check_monitor(monitor)
            defaults = {"probes": "reasonable-en", "scoring": None, "every_n_steps": None, "every_n_epochs": None,
                        "on_validation_end": True, "on_save_checkpoint": False, "metric": DEFAULT_GATE_METRIC,
                        "mode": None, "prefix": "probattr", "time_budget_s": None, "attribution_every": "auto"}
            given = {"probes": probes, "scoring": scoring, "every_n_steps": every_n_steps,
                     "every_n_epochs": every_n_epochs, "on_validation_end": on_validation_end,
                     "on_save_checkpoint": on_save_checkpoint, "metric": metric, "mode": mode, "prefix": prefix,
                     "time_budget_s": time_budget_s, "attribution_every": attribution_every}
            conflicts = sorted(k for k, v in given.items() if v is not defaults[k] and v != defaults[k])
            if conflicts:
                raise ValueError(
                    f"ProbAttrCallback got a monitor and also {conflicts}: configure these on the "
                    "ProbAttrMonitor instead"
                )
            if tokenizer is not None:
                monitor.tokenizer = tokenizer
            self.monitor = monitor
        else:
            schedule = Schedule(every_n_steps=every_n_steps, every_n_epochs=every_n_epochs,
                                on_validation_end=on_validation_end,
                                on_save_checkpoint=on_save_checkpoint)  # raises on an impossible schedule
            self.monitor = ProbAttrMonitor(  # raises on an unknown probe set / unreadable file
                probes, tokenizer=tokenizer, scoring=scoring, schedule=schedule, metric=metric, mode=mode,
                time_budget_s=time_budget_s, prefix=prefix, attribution_every=attribution_every,
            )
        if wandb not in (True, False, "auto"):
            raise ValueError(f"wandb must be True, False or 'auto', got {wandb!r}")
        if model_attr is not None and (not isinstance(model_attr, str) or not model_attr):
            raise ValueError(f"model_attr must be a non-empty attribute name, got {model_attr!r}")
        if shard_probes not in (None, True, False):
            raise ValueError(f"shard_probes must be None, True or False, got {shard_probes!r}")
        self.model_attr = model_attr
        self.wandb = wandb
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.log_plots = bool(log_plots)
        self.shard_probes = shard_probes
        # Sinks are built now so that bad settings raise before training.
        self._wandb_sink_args = {"prefix": self.monitor.prefix, "max_rows_per_table": max_rows_per_table,
                                 "log_plots": self.log_plots, "gate_metric": self.monitor.metric,
                                 "gate_mode": self.monitor.mode}
        WandbSink(**self._wandb_sink_args)
        self._file_formats = tuple(file_formats)
        if self.log_dir is not None:
            FileSink(self.log_dir, formats=self._file_formats, plots=self.log_plots)
        self._router: Optional[ReportRouter] = None
        self._wandb_history_state: Optional[dict] = None  # WandbSink.state_dict() from a checkpoint
        self._gates = GateHold()
        self._model: Optional[torch.nn.Module] = None
        self._attempted: set[int] = set()
        #: ``{"step", "event", "error"}`` of every scoring that failed (warned; training went on).
        self.failures: list[dict] = []
        #: ``{"step", "event", "score_s", "log_s", "token_forwards"}`` of every scoring by this process.
        self.timings: list[dict] = []
        #: The last report built (on every rank).
        self.last_report: Optional[Report] = None

    # ------------------------------------------------------------------ identity / state
    @property
    def state_key(self) -> str:
        return generate_state_key(self, prefix=self.monitor.prefix, probes=self.monitor.probe_set.fingerprint[:16])

    @property
    def monitor_key(self) -> str:
        """The logged key of the tracked metric, e.g. ``probattr/mean_surprisal_prefix``."""
        return self.monitor.monitor_key

    @property
    def schedule(self) -> Schedule:
        return self.monitor.schedule

    def state_dict(self) -> dict[str, Any]:
        state = {"monitor": self.monitor.state_dict(), "failures": list(self.failures)}
        sink = self._router.wandb_sink if self._router is not None else None
        if sink is not None:  # the W&B history tables, so a resumed run re-logs every step
            state["wandb_history"] = sink.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state_dict.get("monitor", {}))
        self.failures = list(state_dict.get("failures", []))
        self._wandb_history_state = state_dict.get("wandb_history")
        if self._router is not None and self._router.wandb_sink is not None and self._wandb_history_state:
            self._router.wandb_sink.load_state_dict(self._wandb_history_state)

    def on_load_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        mark = f"'prefix': {self.monitor.prefix!r}"
        others = [k for k in states if isinstance(k, str) and k.startswith(type(self).__qualname__) and mark in k]
        if others:
            rank_zero_warn(
                f"probattr: the checkpoint holds {self.monitor.prefix!r} history for a different probe set "
                f"({others[0]}); this run scores {self.monitor.probe_set.name!r} (fingerprint "
                f"{self.monitor.probe_set.fingerprint[:16]}) and starts a new history: values are not comparable",
                RuntimeWarning,
            )

    @property
    def history(self) -> list:
        """The monitor's history (one entry per scored step, failed and partial ones included), restored on resume."""
        return list(self.monitor.state.history)

    @property
    def sinks(self) -> list[Any]:
        """The report sinks in use on this process (rank 0: W&B and/or files; other ranks: none)."""
        return [] if self._router is None else self._router.sinks

    @property
    def report_failures(self) -> list[dict]:
        """``{"step", "event", "error"}`` of every report a sink did not take (W&B refused it, a file write failed)."""
        return [] if self._router is None else list(self._router.failures)

    def config(self) -> dict[str, Any]:
        """What the run config records: :class:`~probattr_monitor.monitor.run_config.RunConfig` of the monitor."""
        return RunConfig.from_monitor(self.monitor).to_dict()

    # ------------------------------------------------------------------ validation
    def _resolve_tokenizer(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> Any:
        if self.monitor.tokenizer is not None:
            return self.monitor.tokenizer
        for owner in (pl_module, getattr(trainer, "datamodule", None)):
            tok = getattr(owner, "tokenizer", None) if owner is not None else None
            if tok is not None:
                return tok
        raise ValueError(
            "ProbAttrCallback needs a tokenizer: pass tokenizer=..., or give the LightningModule "
            "(or the datamodule) a `tokenizer` attribute"
        )

    def _resolve_model(self, pl_module: "pl.LightningModule", tokenizer: Any,
                       trainer: Optional["pl.Trainer"] = None) -> torch.nn.Module:
        return find_causal_lm(pl_module, tokenizer, model_attr=self.model_attr,
                              strategy=None if trainer is None else trainer.strategy)

    def _agree(self, trainer: "pl.Trainer", problem: Optional[str]) -> None:
        """Raise the same error on every rank (rank 0's verdict wins; a collective on all ranks)."""
        if trainer.world_size > 1 and dist_ready():
            problem = trainer.strategy.broadcast(problem, src=0)
        if problem:
            raise ValueError(problem)

    # ------------------------------------------------------------------ lightning hooks: setup
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        # Every rank logs identical (gathered or broadcast) values, so Lightning's advice to add
        # sync_dist=True for epoch-level values in distributed runs does not apply to our keys.
        warnings.filterwarnings("ignore", message=rf".*self\.log\('{re.escape(self.monitor.prefix)}/.*sync_dist=True")
        for cb in timing.watchers(trainer, self.monitor.prefix):
            self.monitor.gate_reads(cb.monitor)  # "auto": attribute every scoring if a gate reads noise_rate...
        timing.check_watched_keys(trainer, self.monitor.prefix, set(logged_keys(self.monitor.prefix)),
                                  self.monitor_key, self.monitor.mode,
                                  every_scoring={step_key(self.monitor.prefix), *self.monitor.every_scoring_keys()},
                                  attribution_every=self.monitor.attribution_every)
        tokenizer = self._resolve_tokenizer(trainer, pl_module)
        self.monitor.tokenizer = tokenizer
        if self.wandb is True and not self._has_wandb_logger(trainer):
            require_wandb(type(self).__name__)

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # the schedulers exist from here on (configure_optimizers ran after `setup`)
        timing.check_scheduler_keys(trainer, self.monitor)
        problem = None
        try:
            self._model = self._resolve_model(pl_module, self.monitor.tokenizer, trainer)
            self.monitor.setup(self._model if getattr(self._model, "config", None) is not None
                               else context_model(pl_module, self._model), self.monitor.tokenizer)
        except ValueError as err:
            problem = str(err)
        self._agree(trainer, problem)
        # `trainer.log_dir` broadcasts (a collective): read it on every rank, never behind is_global_zero.
        default_dir = Path(trainer.log_dir if trainer.log_dir is not None else trainer.default_root_dir)
        problem = None
        if trainer.is_global_zero:
            try:
                self._router = self._make_router(trainer, default_dir / self.monitor.prefix)
                self._router.setup(self.config())
            except (ValueError, TypeError, OSError) as err:
                problem = f"ProbAttrCallback: setting up the logging sinks failed: {err}"
        self._agree(trainer, problem)

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._agree(trainer, timing.schedule_problem(self.schedule, trainer, self.monitor.prefix))

    # ------------------------------------------------------------------ sinks
    @staticmethod
    def _has_wandb_logger(trainer: "pl.Trainer") -> bool:
        return any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers)

    def _make_router(self, trainer: "pl.Trainer", default_dir: Path) -> ReportRouter:
        logger_run = None
        if self.wandb is not False:
            logger_run = next((lg.experiment for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"), None)
        run = wandb_run_for(self.wandb, owner=type(self).__name__, framework_run=logger_run,
                            no_run="ProbAttrCallback(wandb=True) found no W&B run: attach a WandbLogger or call "
                                   "wandb.init() before trainer.fit()")
        run = usable_run(run, owner=type(self).__name__, files=self.log_dir or default_dir)  # disabled: no run
        via_logger = run is not None and run is logger_run
        wandb_sink = None
        if run is not None:
            # With a WandbLogger the scalars reach W&B through Lightning; with the user's own run they don't.
            wandb_sink = WandbSink(run, log_scalars=not via_logger, warn=False, **self._wandb_sink_args)
            if self._wandb_history_state:
                wandb_sink.load_state_dict(self._wandb_history_state)
        directory = self.log_dir
        if directory is None and run is None:
            directory = default_dir
        file_kwargs = {"formats": self._file_formats, "plots": self.log_plots}
        file_sink = FileSink(directory, **file_kwargs) if directory is not None else None
        return ReportRouter(wandb_sink=wandb_sink, file_sink=file_sink, fallback_dir=default_dir,
                            file_kwargs=file_kwargs, owner=type(self).__name__)

    # ------------------------------------------------------------------ lightning hooks: scoring
    def _fitting(self, trainer: "pl.Trainer") -> bool:
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        return str(getattr(fn, "value", fn)) == "fit" and not trainer.sanity_checking

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not self._fitting(trainer):
            return
        step = trainer.global_step
        if self.schedule.due("train_step", step) or timing.checkpoint_due(self.schedule, trainer, "train_batch"):
            self._score_and_log(trainer, pl_module, "train_step")

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self._fitting(trainer):
            return
        due = self.schedule.due("train_epoch", trainer.global_step, trainer.current_epoch)
        if due or timing.checkpoint_due(self.schedule, trainer, "train_epoch"):
            self._score_and_log(trainer, pl_module, "train_epoch")

    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self._fitting(trainer):
            return  # never during the sanity check, nor in trainer.validate()
        step = trainer.global_step
        if self.schedule.due("validation_end", step) or timing.checkpoint_due(self.schedule, trainer, "validation"):
            self._score_and_log(trainer, pl_module, "validation_end")

    # ------------------------------------------------------------------ scoring
    def _shard(self, trainer: "pl.Trainer") -> bool:
        if self.shard_probes is not None:
            return self.shard_probes
        return not _strategy_shards_params(trainer.strategy)

    def _score_and_log(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", event: str) -> None:
        step = int(trainer.global_step)
        if self.monitor.already_scored(step) or step in self._attempted:
            return
        self._attempted.add(step)
        self._gates.release()  # a new scoring: the gates read its value (or are held again)
        if self._model is None:  # fit started without on_fit_start (should not happen)
            self._model = self._resolve_model(pl_module, self.monitor.tokenizer, trainer)
        gather = gatherer(trainer.world_size)
        distributed = gather is not None
        shard = self._shard(trainer)
        started = time.perf_counter()
        try:
            report = self.monitor.run(
                forward_module(trainer.strategy, pl_module, self._model), step, rank=trainer.global_rank,
                world_size=trainer.world_size, gather=gather, shard=shard,
            )
        except Exception as err:  # noqa: BLE001 - scoring must never stop training
            entry = self.monitor.record_failure(step, f"{type(err).__name__}: {err}", time.perf_counter() - started)
            record_scoring_failure(self.failures, step, event, err)
            self._gates.hold(trainer, self.monitor.prefix, logged_keys(self.monitor.prefix))
            if trainer.is_global_zero and self._router is not None:
                self._router.log(failed_report(self.monitor, step, entry.errors), step, entry)
            return
        score_s = time.perf_counter() - started
        self.last_report = report
        entry = self.monitor.entry(step)
        status = entry.status
        scalars = {step_key(self.monitor.prefix): float(step)}
        scalars.update(report.metrics.scalars(prefix=f"{self.monitor.prefix}/"))
        if distributed and not shard:
            # identical values and verdict on every rank, whatever the arithmetic (a collective: every rank)
            status, scalars = broadcast_object((status, scalars))
        started = time.perf_counter()
        if trainer.is_global_zero and self._router is not None:
            self._router.log(report, step, entry)  # W&B first: its step key precedes the scalars Lightning sends
        if status == "complete":
            self._log_scalars(trainer, pl_module, scalars, event)
        else:  # nothing comparable to gate on: log nothing, hold the gates until the next scoring
            warn_incomplete_scoring(self.failures, entry, event, len(self.monitor.probe_set))
            self._gates.hold(trainer, self.monitor.prefix, logged_keys(self.monitor.prefix))
        record_timing(self.timings, step, event, score_s, time.perf_counter() - started, report)

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._gates.release()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self._gates.release()

    def _log_scalars(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", scalars: dict[str, float],
                     event: str) -> None:
        in_batch = event == "train_step"
        to_loggers = not in_batch and bool(trainer.loggers)
        for key, value in scalars.items():
            pl_module.log(key, float(value), on_step=in_batch, on_epoch=not in_batch, logger=to_loggers,
                          prog_bar=key == self.monitor_key, sync_dist=False, rank_zero_only=False, batch_size=1)
        if in_batch and trainer.loggers:
            # Step-level values reach the loggers only every `log_every_n_steps`; send them now, once,
            # through the trainer's own logger path (same step and `epoch` column as Lightning's), rounded
            # like the values `self.log` stores, so loggers and `callback_metrics` agree.
            dtype = torch.get_default_dtype()
            log_metrics_now(trainer, {k: float(torch.tensor(float(v), dtype=dtype)) for k, v in scalars.items()})
