"""The scalar keys a scoring logs: one list, read off :meth:`SetMetrics.scalars`, used by every caller.

:meth:`probattr_monitor.report.SetMetrics.scalars` defines what a scoring
produces (each metric of :data:`~probattr_monitor.report.METRIC_NAMES`, its
``_ci_low``/``_ci_high`` interval, then ``n_tokens``, ``n_probes`` and
``count_<class>``); the names here are taken from it, so they cannot drift.
Logged keys are ``f"{prefix}/{name}"``, plus ``f"{prefix}/step"``.
"""

from __future__ import annotations

import functools

from probattr_monitor.report import metrics_from_probes
from probattr_monitor.report.definitions import PREFIX_SCOPE

__all__ = ["gate_scalar_names", "scalar_keys", "scalar_names", "step_key"]


@functools.lru_cache(maxsize=None)
def _names() -> tuple[str, ...]:
    return tuple(metrics_from_probes((), n_boot=0).scalars(prefix=""))


@functools.lru_cache(maxsize=None)
def _gate_names() -> tuple[str, ...]:
    return tuple(metrics_from_probes((), n_boot=0, scope=PREFIX_SCOPE).scalars(prefix=""))


def gate_scalar_names() -> list[str]:
    """The scalars a gate scoring produces (``scope="prefix"``): ``["mean_surprisal_prefix", ..., "n_probes"]``."""
    return list(_gate_names())


def scalar_names() -> list[str]:
    """Every scalar a scoring produces, in :meth:`SetMetrics.scalars` order.

    Returns
    -------
    list of str
        ``["noise_rate", "noise_rate_ci_low", "noise_rate_ci_high", ...,
        "n_tokens", "n_probes", "count_negative", ...]``.
    """
    return list(_names())


def scalar_keys(prefix: str) -> list[str]:
    """:func:`scalar_names` under ``prefix`` (``["probattr/noise_rate", ...]``)."""
    return [f"{prefix}/{name}" for name in _names()]


def step_key(prefix: str) -> str:
    """The key of the training step logged with each scoring (``probattr/step``)."""
    return f"{prefix}/step"
