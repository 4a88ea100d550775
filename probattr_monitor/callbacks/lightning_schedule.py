"""How a scoring schedule meets a Lightning run.

Which ``ModelCheckpoint`` / ``EarlyStopping`` callbacks watch a probattr key
and when they read it, whether a checkpoint save follows a given hook (the
``on_save_checkpoint`` schedule scores in that hook), and whether the schedule
can serve the run at all. The Lightning internals these need are read through
:mod:`~probattr_monitor.callbacks._lightning_compat`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from probattr_monitor.callbacks._lightning_compat import (
    EarlyStopping,
    ModelCheckpoint,
    checkpoint_every_n_epochs,
    checkpoint_every_n_train_steps,
    checkpoint_last_saved_step,
    checkpoint_saves_on_train_epoch_end,
    checkpoint_train_time_interval,
    early_stopping_checks_on_train_epoch_end,
    is_overridden,
    pl,
)
from probattr_monitor.distributed import rank_zero_warn
from probattr_monitor.monitor import Schedule
from probattr_monitor.monitor.keys import attribution_only_refusal

__all__ = ["check_watched_keys", "checkpoint_due", "never_fires", "reads_at", "schedule_problem", "validation_runs",
           "watchers"]


def watchers(trainer: "pl.Trainer", prefix: str) -> list[Any]:
    """The ``ModelCheckpoint`` / ``EarlyStopping`` callbacks whose ``monitor`` starts with ``f"{prefix}/"``."""
    out = []
    for cb in trainer.callbacks:
        if isinstance(cb, (ModelCheckpoint, EarlyStopping)):
            mon = getattr(cb, "monitor", None)
            if isinstance(mon, str) and mon.startswith(f"{prefix}/"):
                out.append(cb)
    return out


def check_watched_keys(trainer: "pl.Trainer", prefix: str, known: set[str], monitor_key: str, mode: str, *,
                       every_scoring: Optional[set[str]] = None, attribution_every: Optional[int] = 1) -> None:
    """Refuse a watcher of a key that is never logged, or not at every scoring; warn about one in the other mode.

    ``every_scoring`` is the keys that every scoring logs (a gate scoring's,
    when ``attribution_every != 1``); default ``known``.

    Raises
    ------
    ValueError
        A watcher's ``monitor`` is not in ``known`` (with the closest key as a
        hint), or is logged only by attribution scorings.
    """
    every_scoring = known if every_scoring is None else every_scoring
    for cb in watchers(trainer, prefix):
        if cb.monitor == monitor_key and getattr(cb, "mode", mode) != mode:
            rank_zero_warn(f"probattr: {type(cb).__name__}(monitor={cb.monitor!r}, mode={cb.mode!r}) but the "
                           f"monitor treats {mode!r} as better", RuntimeWarning)
        if cb.monitor not in known:
            close = sorted(k for k in known if k.split("/")[-1][:5] == cb.monitor.split("/")[-1][:5])
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{type(cb).__name__}(monitor={cb.monitor!r}) watches a key that ProbAttrCallback never logs"
                f"{hint}; it logs: {', '.join(sorted(known))}"
            )
        if cb.monitor not in every_scoring:
            raise ValueError(attribution_only_refusal(f"{type(cb).__name__}(monitor={cb.monitor!r})",
                                                      attribution_every, [repr(k) for k in sorted(every_scoring)]))


def check_scheduler_keys(trainer: "pl.Trainer", monitor: Any) -> None:
    """A plateau scheduler monitoring a ``{prefix}/`` key: tell ``monitor`` (:meth:`ProbAttrMonitor.gate_reads`), then check it.

    Raises
    ------
    ValueError
        The key is logged only by attribution scorings and ``monitor.attribution_every``
        was set explicitly to something other than 1.
    """
    head = f"{monitor.prefix}/"
    for config in getattr(trainer, "lr_scheduler_configs", None) or []:
        key = getattr(config, "monitor", None)
        if not (isinstance(key, str) and key.startswith(head)):
            continue
        monitor.gate_reads(key)
        if monitor.logged_only_by_attribution(key):
            raise ValueError(attribution_only_refusal(f"the lr scheduler monitoring {key!r}",
                                                      monitor.attribution_every,
                                                      [repr(k) for k in monitor.every_scoring_keys()]))


def reads_at(cb: Any, trainer: "pl.Trainer") -> str:
    """When a watcher reads the metric: ``"train_batch"``, ``"train_epoch"``, ``"validation"`` or ``"time"``."""
    if isinstance(cb, EarlyStopping):
        return "train_epoch" if early_stopping_checks_on_train_epoch_end(cb) else "validation"
    if checkpoint_train_time_interval(cb) is not None:
        return "time"
    if checkpoint_every_n_train_steps(cb) >= 1:
        return "train_batch"
    return "train_epoch" if checkpoint_saves_on_train_epoch_end(cb, trainer) else "validation"


def validation_runs(trainer: "pl.Trainer") -> bool:
    """Whether ``fit`` runs validation loops (assumed when the dataloaders are not loaded yet)."""
    if trainer.limit_val_batches == 0 or trainer.lightning_module is None:
        return False
    if not is_overridden("validation_step", trainer.lightning_module):
        return False
    if trainer.val_dataloaders is None:  # not loaded yet (first validation epoch later): assume it runs
        return True
    n = trainer.num_val_batches
    return bool(sum(n) if isinstance(n, (list, tuple)) else n)


def checkpoint_due(schedule: Schedule, trainer: "pl.Trainer", hook: str) -> bool:
    """Whether some ModelCheckpoint saves right after ``hook`` (``"train_batch"``, ``"train_epoch"``, ``"validation"``).

    Always ``False`` unless ``schedule.on_save_checkpoint``.
    """
    if not schedule.on_save_checkpoint:
        return False
    step, epoch = trainer.global_step, trainer.current_epoch
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint):
            continue
        if checkpoint_last_saved_step(cb) == step:
            continue
        n_steps = checkpoint_every_n_train_steps(cb)
        n_epochs = checkpoint_every_n_epochs(cb)
        on_epoch_end = checkpoint_saves_on_train_epoch_end(cb, trainer)
        # train_time_interval saves are decided by the clock inside ModelCheckpoint: not anticipated
        # (a warning at train start says so); guessing per rank could also desynchronise the ranks.
        if hook == "train_batch":
            if n_steps >= 1 and step % n_steps == 0:
                return True
        elif hook == "train_epoch":
            if on_epoch_end and n_epochs >= 1 and (epoch + 1) % n_epochs == 0:
                return True
        elif hook == "validation":
            if not on_epoch_end and n_epochs >= 1 and (epoch + 1) % n_epochs == 0:
                return True
    return False


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _batches_bound(trainer: "pl.Trainer") -> float:
    """An upper bound on the training batches this fit still runs (``inf`` when unknown)."""
    bound = math.inf
    max_steps = trainer.max_steps
    if _finite(max_steps) and max_steps >= 0:
        # each optimizer step takes at most `accumulate_grad_batches` batches (fewer at an epoch's end)
        bound = max(0, max_steps - trainer.global_step) * max(1, int(trainer.accumulate_grad_batches or 1))
    n_batches, max_epochs = trainer.num_training_batches, trainer.max_epochs
    if _finite(n_batches) and _finite(max_epochs) and max_epochs >= 0:
        bound = min(bound, max(0, max_epochs - trainer.current_epoch) * n_batches)
    return bound


def _epochs_bound(trainer: "pl.Trainer") -> float:
    """An upper bound on the index + 1 of the last training epoch this fit reaches (``inf`` when unknown)."""
    max_epochs = trainer.max_epochs
    bound = max_epochs if _finite(max_epochs) and max_epochs >= 0 else math.inf
    n_batches, batches = trainer.num_training_batches, _batches_bound(trainer)
    if _finite(n_batches) and n_batches > 0 and _finite(batches):
        bound = min(bound, trainer.current_epoch + math.ceil(batches / n_batches))
    return bound


def _first_epoch(every: int, current: int) -> int:
    """The first 0-based epoch ``>= current`` whose end is every ``every``-th epoch's."""
    return current + (-(current + 1)) % every


def _max_steps_text(trainer: "pl.Trainer") -> str:
    return f"max_steps={trainer.max_steps}" if _finite(trainer.max_steps) and trainer.max_steps >= 0 else ""


def validation_never_runs(trainer: "pl.Trainer") -> Optional[str]:
    """Why no validation loop runs during this fit, naming the settings; ``None`` if one may run.

    Read at train start (``num_training_batches`` and ``val_check_batch`` are
    known then). Only certain cases are reported: a time-based
    ``val_check_interval`` or an unknown epoch length is assumed to validate.
    """
    if not validation_runs(trainer):
        return ("no validation loop runs (no validation_step, no validation batches, or limit_val_batches=0)")
    check_batch = getattr(trainer, "val_check_batch", None)
    if check_batch is None:  # time-based val_check_interval
        return None
    every = trainer.check_val_every_n_epoch
    n_batches = trainer.num_training_batches
    bound = _batches_bound(trainer)
    if every is not None:
        first = _first_epoch(int(every), int(trainer.current_epoch))
        epochs = _epochs_bound(trainer)
        if first >= epochs:
            limit = (f"max_epochs={trainer.max_epochs}" if epochs == trainer.max_epochs
                     else f"{_max_steps_text(trainer)} ({n_batches} training batches per epoch) ends it in epoch "
                          f"{int(epochs)}")
            return (f"validation first runs at the end of epoch {first + 1} (check_val_every_n_epoch={every}) "
                    f"but {limit}")
        if _finite(check_batch) and _finite(n_batches) and trainer.global_step == 0:
            needed = (first - trainer.current_epoch) * n_batches + check_batch
            if needed > bound:
                return (f"the first validation comes after {int(needed)} training batches (check_val_every_n_epoch="
                        f"{every}, val_check_interval={trainer.val_check_interval}) but {_max_steps_text(trainer)} "
                        f"ends the run after at most {int(bound)}")
        return None
    if _finite(check_batch) and trainer.global_step == 0 and check_batch > bound:
        return (f"validation runs every {int(check_batch)} training batches (val_check_interval="
                f"{trainer.val_check_interval}, check_val_every_n_epoch=None) but the run has at most {int(bound)} "
                f"({_max_steps_text(trainer) or f'max_epochs={trainer.max_epochs}'})")
    return None


def never_fires(schedule: Schedule, trainer: "pl.Trainer") -> dict[str, str]:
    """``{trigger: why it never fires in this run}`` for every trigger that is set; empty if one may fire."""
    s = schedule
    reasons: dict[str, str] = {}
    try:
        total_steps = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - unknown length: assume steps are reached
        total_steps = math.inf
    if s.every_n_steps:
        if s.every_n_steps <= total_steps:
            return {}
        reasons["every_n_steps"] = (f"every_n_steps={s.every_n_steps} but the run has {total_steps} optimizer steps"
                                    f" ({_max_steps_text(trainer) or f'max_epochs={trainer.max_epochs}'})")
    if s.every_n_epochs:
        epochs = _epochs_bound(trainer)
        if _first_epoch(s.every_n_epochs, int(trainer.current_epoch)) < epochs:
            return {}
        limit = (f"max_epochs={trainer.max_epochs}" if epochs == trainer.max_epochs
                 else f"{_max_steps_text(trainer)} ends it in epoch {int(epochs)}")
        reasons["every_n_epochs"] = f"every_n_epochs={s.every_n_epochs} but {limit}"
    if s.on_validation_end:
        why = validation_never_runs(trainer)
        if why is None:
            return {}
        reasons["on_validation_end"] = f"on_validation_end=True but {why}"
    if s.on_save_checkpoint:
        if list(trainer.checkpoint_callbacks):
            return {}
        reasons["on_save_checkpoint"] = "on_save_checkpoint=True but the run has no ModelCheckpoint"
    return reasons


def schedule_problem(schedule: Schedule, trainer: "pl.Trainer", prefix: str) -> Optional[str]:
    """Why ``schedule`` cannot serve this run (``None`` if it can).

    A schedule that never fires (each trigger's reason names the setting that
    prevents it: ``check_val_every_n_epoch``, ``max_epochs``, ``max_steps``...),
    or a watcher of a ``prefix`` key that would read a missing or stale value.
    A ``ModelCheckpoint`` with ``train_time_interval`` is warned about (its
    saves cannot be anticipated).
    """
    s = schedule
    has_val = validation_runs(trainer)
    val_each_epoch_end = has_val and trainer.check_val_every_n_epoch == 1 and trainer.val_check_interval == 1.0
    reasons = never_fires(s, trainer)
    if reasons:
        return (f"impossible schedule for this run: ProbAttrCallback would never score: {'; '.join(reasons.values())}"
                f" (schedule {dataclasses.asdict(s)})")
    for cb in watchers(trainer, prefix):
        reads = reads_at(cb, trainer)
        if reads == "time":
            rank_zero_warn(f"probattr: {type(cb).__name__}(monitor={cb.monitor!r}, train_time_interval=...) "
                           "saves at clock times the callback cannot anticipate: it ranks checkpoints on the "
                           "latest scored value; use every_n_train_steps for fresh values", RuntimeWarning)
            continue
        if s.on_save_checkpoint and isinstance(cb, ModelCheckpoint):
            continue
        if reads == "validation":
            fresh = s.on_validation_end
        elif reads == "train_epoch":
            every = max(1, checkpoint_every_n_epochs(cb) or 1) if isinstance(cb, ModelCheckpoint) else 1
            fresh = (bool(s.every_n_epochs) and every % s.every_n_epochs == 0) or (
                s.on_validation_end and val_each_epoch_end)
        else:  # train_batch
            every = checkpoint_every_n_train_steps(cb)
            fresh = bool(s.every_n_steps) and every % s.every_n_steps == 0
        if not fresh:
            where = {"validation": "at the end of validation", "train_epoch": "at the end of training epochs",
                     "train_batch": f"every {checkpoint_every_n_train_steps(cb)} training steps"}[reads]
            fix = "on_save_checkpoint=True" if isinstance(cb, ModelCheckpoint) else "a matching schedule"
            return (
                f"{type(cb).__name__}(monitor={cb.monitor!r}) reads the metric {where}, but the ProbAttrCallback "
                f"schedule {dataclasses.asdict(s)} does not score there: it would compare a missing or stale "
                f"value. Use {fix} (or on_validation_end=True / every_n_steps / every_n_epochs to match)."
            )
    return None
