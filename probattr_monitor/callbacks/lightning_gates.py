"""Keeping Lightning's gates still over a scoring that produced no comparable value.

A failed scoring (nothing scored: NaN logits, an exception) or a partial one
(some probes failed or were skipped) logs nothing through ``LightningModule.log``,
so the callbacks that gate on a probattr key must not read it:

* ``EarlyStopping(check_finite=True)`` (its default) stops the run at once on a
  NaN; with the key missing, ``strict=True`` (its default) raises
  ``RuntimeError``; with a stale value left in ``trainer.callback_metrics`` from
  an earlier scoring, it counts one more evaluation without improvement;
* ``ModelCheckpoint`` raises ``MisconfigurationException`` for a missing key
  once a validation loop has run, ranks a NaN as ``+/-inf`` (a first NaN becomes
  its best checkpoint), and would rank the new weights on a stale value;
* a ``ReduceLROnPlateau`` scheduler monitoring the key (``strict=True``) raises
  for a missing key.

:class:`GateHold` therefore removes every probattr key from
``trainer.callback_metrics`` and, until the callback's next scoring, sets
``strict=False`` on each such ``EarlyStopping`` and scheduler (their check is
skipped: nothing moves) and ``save_top_k=0`` on each such ``ModelCheckpoint``
(no top-k save, best path and score untouched; Lightning then writes no
``last.ckpt`` for that check either). Only public attributes are changed, each
restored by :meth:`GateHold.release`; none of them is part of the callbacks'
checkpointed state.
"""

from __future__ import annotations

from typing import Any, Iterable

from probattr_monitor.callbacks._lightning_compat import EarlyStopping, ModelCheckpoint, pl
from probattr_monitor.callbacks.lightning_schedule import watchers

__all__ = ["GateHold"]


class GateHold:
    """Holds the gates on ``prefix`` keys still from a failed or partial scoring until :meth:`release`."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    @property
    def active(self) -> bool:
        """Whether some gate is held."""
        return bool(self._saved)

    def _set(self, obj: Any, attr: str, value: Any) -> None:
        if not any(o is obj and a == attr for o, a, _ in self._saved):
            self._saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    def hold(self, trainer: "pl.Trainer", prefix: str, keys: Iterable[str]) -> None:
        """Remove ``keys`` from ``trainer.callback_metrics`` and make the ``prefix`` gates skip their checks."""
        for cb in watchers(trainer, prefix):
            if isinstance(cb, EarlyStopping):
                self._set(cb, "strict", False)
            elif isinstance(cb, ModelCheckpoint):
                self._set(cb, "save_top_k", 0)
        for config in getattr(trainer, "lr_scheduler_configs", None) or []:
            monitor = getattr(config, "monitor", None)
            if isinstance(monitor, str) and monitor.startswith(f"{prefix}/") and hasattr(config, "strict"):
                self._set(config, "strict", False)
        metrics = trainer.callback_metrics
        for key in keys:
            metrics.pop(key, None)

    def release(self) -> None:
        """Restore every attribute :meth:`hold` changed."""
        for obj, attr, value in reversed(self._saved):
            setattr(obj, attr, value)
        self._saved.clear()
