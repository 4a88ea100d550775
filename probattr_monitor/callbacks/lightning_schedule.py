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

__all__ = ["check_watched_keys", "checkpoint_due", "reads_at", "schedule_problem", "validation_runs", "watchers"]


def watchers(trainer: "pl.Trainer", prefix: str) -> list[Any]:
    """The ``ModelCheckpoint`` / ``EarlyStopping`` callbacks whose ``monitor`` starts with ``f"{prefix}/"``."""
    out = []
    for cb in trainer.callbacks:
        if isinstance(cb, (ModelCheckpoint, EarlyStopping)):
            mon = getattr(cb, "monitor", None)
            if isinstance(mon, str) and mon.startswith(f"{prefix}/"):
                out.append(cb)
    return out


def check_watched_keys(trainer: "pl.Trainer", prefix: str, known: set[str], monitor_key: str, mode: str) -> None:
    """Refuse a watcher of a key that is never logged; warn about a watcher of the tracked key in the other mode.

    Raises
    ------
    ValueError
        A watcher's ``monitor`` is not in ``known`` (with the closest key as a hint).
    """
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


def schedule_problem(schedule: Schedule, trainer: "pl.Trainer", prefix: str) -> Optional[str]:
    """Why ``schedule`` cannot serve this run (``None`` if it can).

    A schedule that never fires, or a watcher of a ``prefix`` key that would
    read a missing or stale value. A ``ModelCheckpoint`` with
    ``train_time_interval`` is warned about (its saves cannot be anticipated).
    """
    s = schedule
    has_val = validation_runs(trainer)
    val_each_epoch_end = has_val and trainer.check_val_every_n_epoch == 1 and trainer.val_check_interval == 1.0
    checkpoints = list(trainer.checkpoint_callbacks)
    try:
        max_steps = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - unknown length: assume steps are reached
        max_steps = math.inf
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else math.inf
    fires = {
        "every_n_steps": bool(s.every_n_steps) and s.every_n_steps <= max_steps,
        "every_n_epochs": bool(s.every_n_epochs) and s.every_n_epochs <= max_epochs,
        "on_validation_end": s.on_validation_end and has_val,
        "on_save_checkpoint": s.on_save_checkpoint and bool(checkpoints),
    }
    if not any(fires.values()):
        return (
            f"impossible schedule for this run: {dataclasses.asdict(s)} never fires (validation runs: {has_val}, "
            f"ModelCheckpoint callbacks: {len(checkpoints)}, estimated optimizer steps: {max_steps}, "
            f"max_epochs: {trainer.max_epochs})"
        )
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
