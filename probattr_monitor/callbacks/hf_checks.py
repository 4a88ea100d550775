"""Checks of ``TrainingArguments`` and callback order for the Hugging Face Trainer callback.

``metric_for_best_model`` must name a key the callback injects
(``eval_<prefix>_<name>``, :func:`eval_key`), needs scores at evaluation, and is
warned about when ``greater_is_better`` contradicts the metric's direction
(:data:`probattr_monitor.report.HIGHER_IS_BETTER`); scoring only at evaluation
needs evaluations; an ``EarlyStoppingCallback`` gating on the metric must run
after the callback. Every problem raises ``ValueError`` before training.
"""

from __future__ import annotations

from typing import Any, Optional

from probattr_monitor.distributed import rank_zero_warn
from probattr_monitor.monitor import Schedule
from probattr_monitor.monitor.keys import attribution_only_refusal, scalar_names
from probattr_monitor.report import DEFAULT_GATE_METRIC, HIGHER_IS_BETTER

__all__ = ["check_args", "check_callback_order", "eval_key", "probattr_metric"]


def eval_key(prefix: str, name: str) -> str:
    """The evaluation-metrics key of scalar ``name`` (``eval_probattr_noise_rate``)."""
    return f"eval_{prefix}_{name}"


def probattr_metric(args: Any, prefix: str) -> Optional[str]:
    """The scalar named by ``args.metric_for_best_model`` (``None`` if it names a key of someone else).

    Raises
    ------
    ValueError
        A probattr-looking key that the callback never produces.
    """
    key = getattr(args, "metric_for_best_model", None)
    if not key:
        return None
    name = key[len("eval_"):] if key.startswith("eval_") else key
    head = f"{prefix}_"
    if not name.startswith(head):
        if f"_{head}" in name or name.startswith(f"{prefix}/"):
            raise ValueError(
                f"metric_for_best_model={key!r} is never produced: this callback injects "
                f"'{eval_key(prefix, '<name>')}' (the same key for every eval dataset); "
                f"use metric_for_best_model='{head}{DEFAULT_GATE_METRIC}'"
            )
        return None
    metric = name[len(head):]
    valid = scalar_names()
    if metric not in valid:
        raise ValueError(
            f"metric_for_best_model={key!r} is never produced by ProbAttrTrainerCallback; "
            f"valid names are '{head}<name>' with <name> one of {valid}"
        )
    return metric


def check_args(args: Any, schedule: Schedule, prefix: str, *, training: bool,
               every_scoring: Optional[list[str]] = None, attribution_every: Optional[int] = 1) -> None:
    """Check ``metric_for_best_model`` / ``greater_is_better`` and, when ``training``, ``eval_strategy``.

    ``every_scoring`` is the ``{prefix}/<name>`` keys that every scoring
    produces (a gate scoring's when ``attribution_every != 1``); default: all.

    Raises
    ------
    ValueError
        See the module documentation; also a ``metric_for_best_model`` that
        only attribution scorings produce while ``attribution_every != 1``.
    """
    sched = schedule
    metric = probattr_metric(args, prefix)
    if metric is not None and every_scoring is not None and f"{prefix}/{metric}" not in every_scoring:
        names = [repr(f"{prefix}_{k.split('/', 1)[1]}") for k in every_scoring]
        raise ValueError(attribution_only_refusal(f"metric_for_best_model={args.metric_for_best_model!r}",
                                                  attribution_every, names, scorings="evaluations"))
    if metric is not None:
        if not sched.on_validation_end:
            raise ValueError(
                f"metric_for_best_model={args.metric_for_best_model!r} needs scores at evaluation, but the "
                "callback was created with on_evaluate=False"
            )
        if getattr(args, "greater_is_better", None) and HIGHER_IS_BETTER.get(metric.split("_ci_")[0]) is False:
            msg = (f"metric_for_best_model={args.metric_for_best_model!r} with greater_is_better=True "
                   "selects the checkpoint with the HIGHEST value of a lower-is-better metric; set "
                   "greater_is_better=False "
                   "(transformers defaults it to True for any metric not ending in 'loss')")
            rank_zero_warn(msg, UserWarning, stacklevel=4)
    if training:
        only_eval = sched.on_validation_end and not (
            sched.every_n_steps or sched.every_n_epochs or sched.on_save_checkpoint
        )
        strategy = getattr(args, "eval_strategy", None)
        strategy = getattr(strategy, "value", strategy)
        if only_eval and strategy == "no":
            raise ValueError(
                "ProbAttrTrainerCallback scores only at evaluation but eval_strategy='no': nothing would "
                "ever be scored; set eval_strategy ('steps'/'epoch') or every_n_steps"
            )


def check_callback_order(args: Any, state: Any, prefix: str, callback_name: str) -> None:
    """Refuse an ``EarlyStoppingCallback`` listed before ``callback_name`` when it gates on a probattr metric.

    Raises
    ------
    ValueError
        The early-stopping callback would never see the injected key.
    """
    metric = probattr_metric(args, prefix)
    if metric is None:
        return
    names = list(getattr(state, "stateful_callbacks", None) or {})
    es = "EarlyStoppingCallback"
    if es in names and callback_name in names and names.index(es) < names.index(callback_name):
        raise ValueError(
            "EarlyStoppingCallback runs before ProbAttrTrainerCallback, so it would never see "
            f"{eval_key(prefix, metric)!r} (callbacks run in list order and the metric "
            "is added in on_evaluate): list ProbAttrTrainerCallback first in callbacks=[...]"
        )
