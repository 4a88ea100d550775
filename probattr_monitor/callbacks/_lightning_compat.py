"""Every read of a Lightning internal the Lightning callback needs, behind public functions.

The callback anticipates ``ModelCheckpoint`` / ``EarlyStopping`` decisions and
sends step-level scalars at once, which Lightning exposes only through private
attributes. Each function here reads one of them (one test per function in
``tests/test_lightning_compat.py`` runs it against the installed Lightning with
a real Trainer, so a Lightning release that renames the attribute fails one
test by name). A missing attribute degrades to the documented default, never
raises. This module also holds the Lightning import (``lightning`` or the
standalone ``pytorch_lightning``).
"""

from __future__ import annotations

import datetime
from typing import Any, Mapping, Optional

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
    from lightning.pytorch.utilities.model_helpers import is_overridden
except ImportError:  # pragma: no cover - the standalone package
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
        from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint  # type: ignore[no-redef]
        from pytorch_lightning.utilities.model_helpers import is_overridden  # type: ignore[no-redef]
    except ImportError:
        raise ImportError(
            "probattr_monitor.callbacks.lightning needs Lightning: pip install 'probattr-monitor[lightning]'"
        ) from None

__all__ = [
    "Callback",
    "EarlyStopping",
    "ModelCheckpoint",
    "batches_that_stepped",
    "checkpoint_every_n_epochs",
    "checkpoint_every_n_train_steps",
    "checkpoint_last_saved_step",
    "checkpoint_saves_on_train_epoch_end",
    "checkpoint_train_time_interval",
    "early_stopping_checks_on_train_epoch_end",
    "generate_state_key",
    "is_overridden",
    "log_metrics_now",
    "pl",
]


def checkpoint_every_n_train_steps(checkpoint: ModelCheckpoint) -> int:
    """``ModelCheckpoint(every_n_train_steps=...)`` as resolved by Lightning (0: not step-based)."""
    return getattr(checkpoint, "_every_n_train_steps", 0) or 0


def checkpoint_every_n_epochs(checkpoint: ModelCheckpoint) -> int:
    """``ModelCheckpoint(every_n_epochs=...)`` as resolved by Lightning (0: not epoch-based)."""
    return getattr(checkpoint, "_every_n_epochs", 0) or 0


def checkpoint_train_time_interval(checkpoint: ModelCheckpoint) -> Optional[datetime.timedelta]:
    """``ModelCheckpoint(train_time_interval=...)`` (``None``: not time-based)."""
    return getattr(checkpoint, "_train_time_interval", None)


def checkpoint_last_saved_step(checkpoint: ModelCheckpoint) -> Optional[int]:
    """The global step of the checkpoint's last save (Lightning starts it at 0; ``None`` if unknown)."""
    return getattr(checkpoint, "_last_global_step_saved", None)


def checkpoint_saves_on_train_epoch_end(checkpoint: ModelCheckpoint, trainer: "pl.Trainer") -> bool:
    """Whether the checkpoint's epoch-based saves happen at the end of the training epoch (else after validation)."""
    should = getattr(checkpoint, "_should_save_on_train_epoch_end", None)
    return bool(callable(should) and should(trainer))


def early_stopping_checks_on_train_epoch_end(early_stopping: EarlyStopping) -> bool:
    """Whether ``EarlyStopping`` checks at the end of the training epoch (else after validation).

    Lightning resolves ``check_on_train_epoch_end=None`` in ``EarlyStopping.setup``.
    """
    return bool(getattr(early_stopping, "_check_on_train_epoch_end", False))


def batches_that_stepped(trainer: "pl.Trainer") -> int:
    """The step Lightning's loggers are called with during training (batches that stepped an optimizer)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def log_metrics_now(trainer: "pl.Trainer", metrics: Mapping[str, float]) -> None:
    """Send ``metrics`` to every attached logger now, through the trainer's own logger path.

    Same step and ``epoch`` column as Lightning's own logging (and recorded in
    ``trainer.logged_metrics``); without the logger connector, each logger is
    called at :func:`batches_that_stepped`.
    """
    connector = getattr(trainer, "_logger_connector", None)
    if connector is not None and hasattr(connector, "log_metrics"):
        connector.log_metrics(dict(metrics))
        return
    step = batches_that_stepped(trainer)  # pragma: no cover - older/newer Lightning without the method
    for lg in trainer.loggers:  # pragma: no cover
        lg.log_metrics(dict(metrics), step=step)


def generate_state_key(callback: Callback, **kwargs: Any) -> str:
    """Lightning's ``Callback._generate_state_key``: the class name followed by ``kwargs``."""
    return callback._generate_state_key(**kwargs)
