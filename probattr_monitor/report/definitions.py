"""The set-level metrics: their names, directions and definitions as pooled ratios.

Every metric is ``sum(numerator) / sum(denominator)`` of two
:class:`~probattr_monitor.report.values.ProbeMetrics` fields
(:data:`RATIO_FIELDS`), which makes pooling over probes and the probe bootstrap
exact. Everything that depends on the list of metrics reads it from here.
"""

from __future__ import annotations

from typing import Optional

#: Names of the set-level metrics, in report order.
METRIC_NAMES = (
    "noise_rate",
    "near_zero_rate",
    "negative_rate",
    "positive_rate",
    "high_rate",
    "mean_abs_as",
    "mean_entropy_prompt",
    "mean_entropy_full",
    "mean_kl",
    "mean_entropy_full_near_zero",
    "mean_surprisal_prefix",
    "mean_surprisal_prompt",
    "mean_surprisal_full",
)

#: Opt-in metrics, defined only for tables scored with
#: ``ScoringConfig(replacement_entropy=True)`` (greedy regenerations, the paper's
#: section 4.3). They are pooled ratios like the others (:data:`RATIO_FIELDS`, the
#: sums are in every ``ProbeMetrics``) but kept out of :data:`METRIC_NAMES`, so a
#: report scored without them logs and compares no NaN metric.
OPTIONAL_METRIC_NAMES = ("mean_replacement_entropy", "mean_original_share")

#: Direction of each opt-in metric: the paper reads a low replacement entropy and a
#: high share of original responses as stability (a hypothesis, like the noise rate's).
OPTIONAL_HIGHER_IS_BETTER: dict[str, Optional[bool]] = {
    "mean_replacement_entropy": False,
    "mean_original_share": True,
}

#: Direction of each metric, declared beside its definition (as torchmetrics'
#: ``higher_is_better``): ``False`` where a lower value is better, ``True`` where a
#: higher value is, ``None`` where the metric has no better direction of its own.
HIGHER_IS_BETTER: dict[str, Optional[bool]] = {
    "noise_rate": False,
    "near_zero_rate": False,
    "negative_rate": None,
    "positive_rate": None,
    "high_rate": None,
    "mean_abs_as": None,
    "mean_entropy_prompt": None,
    "mean_entropy_full": None,
    "mean_kl": None,
    "mean_entropy_full_near_zero": None,
    "mean_surprisal_prefix": False,
    "mean_surprisal_prompt": False,
    "mean_surprisal_full": False,
}

#: The metric the monitor, both callbacks and ``probattr select`` gate on by default:
#: the one the signal-validity study (docs/validation.md) found to track true
#: convergence best. ``noise_rate`` is the paper's rule, kept under its own name.
DEFAULT_GATE_METRIC = "mean_surprisal_prefix"


#: What a report holds: ``"attribution"``, every metric (AS, entropies, surprisals); or
#: ``"prefix"``, a *gate scoring* of the training monitor (one forward pass over each
#: prompt, no response, no candidate: docs/design.md section 10), which defines only
#: :data:`PREFIX_METRIC_NAMES`.
ATTRIBUTION_SCOPE, PREFIX_SCOPE = "attribution", "prefix"
SCOPES = (ATTRIBUTION_SCOPE, PREFIX_SCOPE)

#: The metrics a gate scoring computes: those read off the prompt's own causal loss.
PREFIX_METRIC_NAMES = ("mean_surprisal_prefix",)

#: The note of a metric a gate scoring does not compute.
NOT_IN_GATE_SCORING = ("not computed: a gate scoring (one pass over each prompt) computes only "
                       + ", ".join(PREFIX_METRIC_NAMES))


def optional_metric_value(per_probe, name: str) -> float:
    """The pooled value of an opt-in metric (:data:`OPTIONAL_METRIC_NAMES`) over ``per_probe`` sums; NaN if undefined.

    Raises
    ------
    ValueError
        ``name`` is not an opt-in metric.
    """
    if name not in OPTIONAL_METRIC_NAMES:
        raise ValueError(f"unknown opt-in metric {name!r}; known: {OPTIONAL_METRIC_NAMES}")
    num_field, den_field = RATIO_FIELDS[name]
    den = sum(getattr(p, den_field) for p in per_probe)
    return sum(getattr(p, num_field) for p in per_probe) / den if den > 0 else float("nan")


def gate_mode(metric: str) -> str:
    """``"min"`` or ``"max"``: how a gate on ``metric`` picks the best checkpoint, from its direction.

    Raises
    ------
    ValueError
        An unknown metric, or one with no declared direction (pass ``mode=`` explicitly).
    """
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; known: {METRIC_NAMES}")
    higher = HIGHER_IS_BETTER[metric]
    if higher is None:
        raise ValueError(f"metric {metric!r} has no better direction of its own: pass mode='min' or mode='max'")
    return "max" if higher else "min"


#: ``metric -> (numerator field, denominator field)`` of :class:`ProbeMetrics`.
RATIO_FIELDS: dict[str, tuple[str, str]] = {
    "noise_rate": ("n_noise", "n_tokens"),
    "near_zero_rate": ("n_near_zero", "n_tokens"),
    "negative_rate": ("n_negative", "n_tokens"),
    "positive_rate": ("n_positive", "n_tokens"),
    "high_rate": ("n_high", "n_tokens"),
    "mean_abs_as": ("sum_abs_as", "n_tokens"),
    "mean_entropy_prompt": ("sum_entropy_prompt", "n_entropy_prompt"),
    "mean_entropy_full": ("sum_entropy_full", "n_entropy_full"),
    "mean_kl": ("sum_kl", "n_kl"),
    "mean_entropy_full_near_zero": ("sum_entropy_full_near_zero", "n_entropy_full_near_zero"),
    "mean_surprisal_prefix": ("sum_surprisal_prefix", "n_surprisal_prefix"),
    "mean_surprisal_prompt": ("sum_surprisal_prompt", "n_surprisal_prompt"),
    "mean_surprisal_full": ("sum_surprisal_full", "n_surprisal_full"),
    "mean_replacement_entropy": ("sum_replacement_entropy", "n_replacement_entropy"),
    "mean_original_share": ("sum_original_share", "n_original_share"),
}

# Why a metric is undefined when its pooled denominator is zero.
_EMPTY_REASON = {
    "n_tokens": "no eligible tokens (all excluded, or AS not finite)",
    "n_entropy_prompt": "no eligible token has a finite H",
    "n_entropy_full": "no eligible token has a finite H'",
    "n_kl": "no eligible token has a finite KL",
    "n_entropy_full_near_zero": "no near-zero token with a finite H'",
    "n_surprisal_prefix": "no eligible token has a finite prefix surprisal (a table without surprisals?)",
    "n_surprisal_prompt": "no eligible token has a finite surprisal (a table without surprisals?)",
    "n_surprisal_full": "no eligible token has a finite surprisal (a table without surprisals?)",
    "n_replacement_entropy": "no eligible token has a replacement entropy (scored without replacement_entropy=True?)",
    "n_original_share": "no eligible token has a share of original responses (scored without replacement_entropy=True?)",
}


def empty_reason(name: str) -> str:
    """Why the metric ``name`` is undefined when its pooled denominator is zero."""
    return _EMPTY_REASON[RATIO_FIELDS[name][1]]
