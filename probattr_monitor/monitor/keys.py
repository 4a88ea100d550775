"""The scalar keys a scoring logs: one list, read off :meth:`SetMetrics.scalars`, used by every caller.

:meth:`probattr_monitor.report.SetMetrics.scalars` defines what a scoring
produces (each metric of :data:`~probattr_monitor.report.METRIC_NAMES`, its
``_ci_low``/``_ci_high`` interval, then ``n_tokens``, ``n_probes`` and
``count_<class>``); the names here are taken from it, so they cannot drift.
Logged keys are ``f"{prefix}/{name}"``, plus ``f"{prefix}/step"``.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

from probattr_monitor.report import metrics_from_probes
from probattr_monitor.report.definitions import PREFIX_SCOPE

__all__ = ["attribution_only_refusal", "gate_scalar_names", "scalar_keys", "scalar_names", "step_key"]


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


def attribution_only_refusal(reader: str, attribution_every: Any, alternatives: Iterable[str], *,
                             scorings: str = "scorings") -> str:
    """The refusal of a gate that reads, at every scoring, a value only attribution scorings produce.

    One sentence for every place that refuses such a gate (the monitor's own
    ``metric``, Lightning's checkpoint and early-stopping watchers and plateau
    schedulers, the HF Trainer's ``metric_for_best_model``), each naming its
    own ``reader`` and the ``alternatives`` in its own spelling.

    Example
    -------
    >>> attribution_only_refusal("metric='noise_rate'", 10, ["'mean_surprisal_prefix'"])  # doctest: +NORMALIZE_WHITESPACE
    "metric='noise_rate' reads a value that only attribution scorings log, and attribution_every=10 makes
    the other scorings gate scorings without it: use one of 'mean_surprisal_prefix', or set attribution_every=1"
    """
    return (f"{reader} reads a value that only attribution scorings log, and attribution_every="
            f"{attribution_every!r} makes the other {scorings} gate scorings without it: use one of "
            f"{', '.join(alternatives)}, or set attribution_every=1")
