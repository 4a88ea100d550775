"""When to score: every N steps, every N epochs, at validation end, before checkpoint saves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

EVENTS = ("train_step", "train_epoch", "validation_end", "save_checkpoint", "evaluate")


@dataclass(frozen=True)
class Schedule:
    """A scoring schedule; every trigger that is set fires (logical OR).

    Parameters
    ----------
    every_n_steps : int, optional
        Score after every N-th optimizer step (global step ``N, 2N, ...``).
    every_n_epochs : int, optional
        Score at the end of every N-th training epoch.
    on_validation_end : bool
        Score after each validation/evaluation loop.
    on_save_checkpoint : bool
        Score right before each checkpoint is written (Lightning: in time for
        ``ModelCheckpoint`` to monitor the new value).

    A step is never scored twice, whatever fires.
    """

    every_n_steps: Optional[int] = None
    every_n_epochs: Optional[int] = None
    on_validation_end: bool = True
    on_save_checkpoint: bool = False

    def __post_init__(self) -> None:
        for name in ("every_n_steps", "every_n_epochs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if not (self.every_n_steps or self.every_n_epochs or self.on_validation_end or self.on_save_checkpoint):
            raise ValueError(
                "impossible schedule: nothing would ever be scored; set every_n_steps, every_n_epochs, "
                "on_validation_end or on_save_checkpoint"
            )

    def due(self, event: str, step: int, epoch: Optional[int] = None) -> bool:
        """Whether ``event`` at ``step`` (and ``epoch``, 0-based) triggers scoring."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; expected one of {EVENTS}")
        if event == "train_step":
            return bool(self.every_n_steps) and step > 0 and step % self.every_n_steps == 0
        if event == "train_epoch":
            return bool(self.every_n_epochs) and epoch is not None and (epoch + 1) % self.every_n_epochs == 0
        if event in ("validation_end", "evaluate"):
            return self.on_validation_end
        return self.on_save_checkpoint
