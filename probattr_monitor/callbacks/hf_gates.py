"""Keeping the Hugging Face Trainer's gates still over a scoring that produced no comparable value.

When ``metric_for_best_model`` names a probattr key, three things read it from
an evaluation's metrics, and a failed (or partial) scoring must move none of
them (read from ``transformers.Trainer`` and ``EarlyStoppingCallback``):

* ``Trainer._determine_best_metric`` (``load_best_model_at_end``,
  ``save_strategy="best"``) raises ``KeyError`` when the key is missing. The
  key is therefore set to NaN, which is never a new best value; the
  ``best_metric`` that HF initialises from ``None`` to ``+/-inf`` at the first
  evaluation is put back by :meth:`EvaluationHold.release`.
* ``EarlyStoppingCallback`` skips an evaluation only when the key is missing
  (which the Trainer cannot take) and counts a NaN as one more evaluation
  without improvement (``early_stopping_patience_counter += 1``). It runs after
  this callback (the order is checked before training), so its counter is
  lowered by one beforehand and restored to its exact value afterwards: the NaN
  check lands on the old count, which stays below the patience.
* A ``ReduceLROnPlateau`` scheduler stepped on the metric counts a NaN as a bad
  epoch: its ``num_bad_epochs`` is lowered by one beforehand (no reduction can
  follow) and its whole state restored afterwards.

The live ``EarlyStoppingCallback`` objects are found in the ``CallbackHandler``
that calls this callback's hooks (:func:`trainer_callbacks`): transformers
gives callbacks no reference to the Trainer or its other callbacks. When it
cannot be found (a transformers release that calls hooks differently), the
callback says once that early stopping will count failed scorings.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Optional

from transformers import EarlyStoppingCallback
from transformers.trainer_callback import CallbackHandler

__all__ = ["EvaluationHold", "trainer_callbacks"]

#: How many frames up from a hook the CallbackHandler is looked for.
_MAX_FRAMES = 8


def trainer_callbacks(callback: Any) -> Optional[list]:
    """The live callback list of the Trainer whose ``CallbackHandler`` is calling ``callback``'s hook now.

    Call it from inside one of ``callback``'s hooks. Returns ``None`` when no
    calling ``CallbackHandler`` holds ``callback``.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(_MAX_FRAMES):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            if isinstance(owner, CallbackHandler):
                found = getattr(owner, "callbacks", None)
                if isinstance(found, list) and any(c is callback for c in found):
                    return found
        return None
    finally:
        del frame


class EvaluationHold:
    """What one failed evaluation changed in the gates, to be put back by :meth:`release`."""

    def __init__(self) -> None:
        self._counters: list[tuple[Any, int]] = []
        self._scheduler: Optional[tuple[Any, dict]] = None
        self._best: Optional[tuple[Any, Any]] = None

    @property
    def active(self) -> bool:
        return bool(self._counters) or self._scheduler is not None or self._best is not None

    def hold(self, key: str, metrics: dict, state: Any, callbacks: Optional[list], lr_scheduler: Any) -> None:
        """Set ``metrics[key]`` to NaN and pre-compensate the early-stopping counters and plateau scheduler."""
        self.release(state)
        metrics[key] = math.nan
        self._best = (state, state.best_metric)
        for cb in callbacks or []:
            if isinstance(cb, EarlyStoppingCallback):
                count = cb.early_stopping_patience_counter
                self._counters.append((cb, count))
                if state.best_metric is not None:  # its check of a NaN adds one (with None it resets to 0)
                    cb.early_stopping_patience_counter = count - 1
        bad = getattr(lr_scheduler, "num_bad_epochs", None)
        if isinstance(bad, int) and callable(getattr(lr_scheduler, "state_dict", None)):
            self._scheduler = (lr_scheduler, copy.deepcopy(lr_scheduler.state_dict()))
            lr_scheduler.num_bad_epochs = bad - 1

    def release(self, state: Any = None) -> None:
        """Put back the counters, the scheduler state and a ``best_metric`` HF initialised from ``None``."""
        for cb, count in self._counters:
            cb.early_stopping_patience_counter = count
        self._counters.clear()
        if self._scheduler is not None:
            scheduler, saved = self._scheduler
            scheduler.load_state_dict(saved)
            self._scheduler = None
        if self._best is not None:
            held_state, before = self._best
            now = held_state.best_metric
            if before is None and isinstance(now, float) and math.isinf(now):
                held_state.best_metric = None
            self._best = None
