"""The metric value types and their JSON-ready serialisation.

:class:`MetricValue` is a point estimate with its interval, :class:`ProbeMetrics`
the counts and sums of one probe, :class:`SetMetrics` the metrics of a probe set
at one step. Each ``to_dict`` has a ``from_dict`` inverse (a loaded report equals
the saved one, NaN included).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

from probattr_monitor.report._deps import require_pandas
from probattr_monitor.report.definitions import (
    ATTRIBUTION_SCOPE,
    METRIC_NAMES,
    PREFIX_METRIC_NAMES,
    PREFIX_SCOPE,
    RATIO_FIELDS,
)
from probattr_monitor.report.noise import AS_CLASSES, NoiseConfig


def _same_float(x: float, y: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or x == y


@dataclass(frozen=True, eq=False)
class MetricValue:
    """A point estimate with its bootstrap interval.

    Attributes
    ----------
    value : float
        The token-pooled statistic over all probes (NaN when undefined).
    low, high : float
        Percentile bootstrap interval over probes (NaN when undefined).
    note : str
        Why the value or interval is NaN or degenerate; empty otherwise.

    Notes
    -----
    Equality treats NaN as equal to NaN so that a loaded report equals the
    saved one.
    """

    value: float
    low: float = math.nan
    high: float = math.nan
    note: str = ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricValue):
            return NotImplemented
        return (
            _same_float(self.value, other.value)
            and _same_float(self.low, other.low)
            and _same_float(self.high, other.high)
            and self.note == other.note
        )

    def __hash__(self) -> int:
        return hash((repr(self.value), repr(self.low), repr(self.high), self.note))

    @property
    def width(self) -> float:
        """``high - low`` (NaN when the interval is undefined)."""
        return self.high - self.low

    def contains(self, x: float) -> bool:
        """Whether ``low <= x <= high`` (False when undefined)."""
        return bool(self.low <= x <= self.high)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN kept as float NaN)."""
        return {"value": self.value, "low": self.low, "high": self.high, "note": self.note}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MetricValue":
        """Inverse of :meth:`to_dict`."""
        return cls(
            value=_float(data.get("value")),
            low=_float(data.get("low")),
            high=_float(data.get("high")),
            note=str(data.get("note") or ""),
        )


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


@dataclass(frozen=True)
class ProbeMetrics:
    """Token counts and score sums of one probe (its eligible tokens only).

    A token is *eligible* when it is not excluded (special or template token)
    and its AS is finite. Every metric of :data:`METRIC_NAMES` is a ratio of two
    of these fields (see :meth:`value`), which is what makes set-level pooling
    and the probe bootstrap exact.

    Attributes
    ----------
    probe_id : str
    n_total : int
        Rows of this probe in the table.
    n_excluded : int
        Special or template tokens.
    n_undefined : int
        Non-excluded tokens whose AS is not finite.
    n_tokens : int
        Eligible tokens.
    n_negative, n_near_zero, n_positive, n_high : int
        Eligible tokens per AS class.
    n_noise : int
        Eligible noise tokens.
    sum_abs_as : float
        Sum of ``|AS|``.
    sum_entropy_prompt, n_entropy_prompt : float, int
        Sum and count of finite H.
    sum_entropy_full, n_entropy_full : float, int
        Sum and count of finite H'.
    sum_kl, n_kl : float, int
        Sum and count of finite KL.
    sum_entropy_full_near_zero, n_entropy_full_near_zero : float, int
    sum_surprisal_prefix, n_surprisal_prefix : float, int
    sum_surprisal_prompt, n_surprisal_prompt : float, int
    sum_surprisal_full, n_surprisal_full : float, int
        Sums and counts of the prompt tokens' own surprisals (eligible tokens
        with finite values).
    sum_replacement_entropy, n_replacement_entropy : float, int
    sum_original_share, n_original_share : float, int
        Sums and counts of the greedy replacement entropy and share of original
        responses (eligible tokens with finite values; zero without a replacement run).
        Sum and count of finite H' over near-zero tokens.
    """

    probe_id: str
    n_total: int = 0
    n_excluded: int = 0
    n_undefined: int = 0
    n_tokens: int = 0
    n_negative: int = 0
    n_near_zero: int = 0
    n_positive: int = 0
    n_high: int = 0
    n_noise: int = 0
    sum_abs_as: float = 0.0
    sum_entropy_prompt: float = 0.0
    n_entropy_prompt: int = 0
    sum_entropy_full: float = 0.0
    n_entropy_full: int = 0
    sum_kl: float = 0.0
    n_kl: int = 0
    sum_entropy_full_near_zero: float = 0.0
    n_entropy_full_near_zero: int = 0
    sum_surprisal_prefix: float = 0.0
    n_surprisal_prefix: int = 0
    sum_surprisal_prompt: float = 0.0
    n_surprisal_prompt: int = 0
    sum_surprisal_full: float = 0.0
    n_surprisal_full: int = 0
    sum_replacement_entropy: float = 0.0
    n_replacement_entropy: int = 0
    sum_original_share: float = 0.0
    n_original_share: int = 0

    def value(self, name: str) -> float:
        """The metric ``name`` (one of :data:`METRIC_NAMES`) for this probe; NaN if undefined."""
        try:
            num, den = RATIO_FIELDS[name]
        except KeyError:
            raise ValueError(f"unknown metric {name!r}; known: {METRIC_NAMES}") from None
        d = getattr(self, den)
        return getattr(self, num) / d if d > 0 else math.nan

    @property
    def class_counts(self) -> dict[str, int]:
        """Eligible tokens per AS class."""
        return {c: int(getattr(self, f"n_{c}")) for c in AS_CLASSES}

    def to_dict(self, with_values: bool = False) -> dict[str, Any]:
        """Fields as a dict; with ``with_values`` also every metric value."""
        out = asdict(self)
        if with_values:
            out.update({name: self.value(name) for name in METRIC_NAMES})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProbeMetrics":
        """Inverse of :meth:`to_dict` (extra metric-value keys are ignored)."""
        kw = {}
        for f in fields(cls):
            if f.name in data:
                v = data[f.name]
                if f.name == "probe_id":
                    kw[f.name] = str(v)
                elif f.name.startswith("n_"):
                    kw[f.name] = int(v)
                else:
                    kw[f.name] = float(v)
        return cls(**kw)


@dataclass(eq=True)
class SetMetrics:
    """Metrics of a probe set at one step: per probe and pooled over the set.

    Set-level values are token-pooled over eligible tokens (sum over probes of
    the numerator divided by the sum of the denominator, see
    :class:`ProbeMetrics`); their intervals come from a percentile bootstrap
    that resamples probes with replacement.

    Attributes
    ----------
    noise_rate, near_zero_rate, negative_rate, positive_rate, high_rate : MetricValue
        Fractions of eligible tokens (``positive`` is ``(near_zero_max,
        high_above]``, ``high`` above it).
    mean_abs_as, mean_entropy_prompt, mean_entropy_full, mean_kl : MetricValue
        Means over eligible tokens (nats).
    mean_entropy_full_near_zero : MetricValue
        Mean H' over near-zero tokens (the paper's threshold-free dashed line).
    mean_surprisal_prefix, mean_surprisal_prompt, mean_surprisal_full : MetricValue
        Mean surprisal of the probe tokens themselves: ``-log p(x_k | x_<k)``
        (the probes' plain held-out loss), ``-log p_k(x_k)`` and ``-log p'_k(x_k)``
        (nats). Undefined for tables written before they existed.
    class_counts : dict of str to int
        Eligible tokens per AS class.
    n_tokens, n_excluded, n_undefined : int
        Eligible, excluded, and non-excluded-but-unclassifiable tokens.
    n_probes : int
        Probes in the table.
    n_probes_empty : int
        Probes with no eligible token (not used as bootstrap units).
    per_probe : tuple of ProbeMetrics
        In order of first appearance in the table.
    config : NoiseConfig
        The classification used.
    n_boot, seed, ci : int, int or None, float
        Bootstrap settings.
    notes : tuple of str
        Human-readable caveats (empty probes, degenerate intervals...).
    scope : {"attribution", "prefix"}
        ``"prefix"`` for a gate scoring (docs/design.md section 10): only
        :data:`~probattr_monitor.report.definitions.PREFIX_METRIC_NAMES` are
        defined, and :meth:`scalars` returns only them.
    """

    noise_rate: MetricValue
    near_zero_rate: MetricValue
    negative_rate: MetricValue
    positive_rate: MetricValue
    high_rate: MetricValue
    mean_abs_as: MetricValue
    mean_entropy_prompt: MetricValue
    mean_entropy_full: MetricValue
    mean_kl: MetricValue
    mean_entropy_full_near_zero: MetricValue
    mean_surprisal_prefix: MetricValue
    mean_surprisal_prompt: MetricValue
    mean_surprisal_full: MetricValue
    class_counts: dict
    n_tokens: int
    n_excluded: int
    n_undefined: int
    n_probes: int
    n_probes_empty: int
    per_probe: tuple
    config: NoiseConfig
    n_boot: int
    seed: Optional[int]
    ci: float
    notes: tuple = ()
    scope: str = ATTRIBUTION_SCOPE

    @property
    def gate_scoring(self) -> bool:
        """Whether these are a gate scoring's metrics (``scope == "prefix"``: no attribution in them)."""
        return self.scope == PREFIX_SCOPE

    def __getitem__(self, name: str) -> MetricValue:
        if name not in METRIC_NAMES:
            raise KeyError(f"unknown metric {name!r}; known: {METRIC_NAMES}")
        return getattr(self, name)

    @property
    def values(self) -> dict[str, MetricValue]:
        """All set-level metrics by name, in :data:`METRIC_NAMES` order."""
        return {name: getattr(self, name) for name in METRIC_NAMES}

    def probe(self, probe_id: str) -> ProbeMetrics:
        """The :class:`ProbeMetrics` of ``probe_id`` (KeyError if absent)."""
        for p in self.per_probe:
            if p.probe_id == probe_id:
                return p
        raise KeyError(probe_id)

    def scalars(
        self,
        prefix: str = "probattr/",
        include_ci: bool = True,
        include_counts: bool = True,
    ) -> dict[str, float]:
        """Flat ``name -> float`` dict for loggers and checkpoint monitors.

        Parameters
        ----------
        prefix : str
            Prepended to every key (``"probattr/noise_rate"``).
        include_ci : bool
            Add ``<name>_ci_low`` and ``<name>_ci_high`` keys.
        include_counts : bool
            Add ``n_tokens``, ``n_probes`` and ``count_<class>`` keys.

        Returns
        -------
        dict of str to float
            Undefined metrics are ``nan``. A gate scoring's (``scope ==
            "prefix"``) has only the metrics it computes and ``n_probes``: no
            key of a quantity it did not compute is logged as NaN.
        """
        gate_only = self.gate_scoring
        out: dict[str, float] = {}
        for name, mv in self.values.items():
            if gate_only and name not in PREFIX_METRIC_NAMES:
                continue
            out[f"{prefix}{name}"] = float(mv.value)
            if include_ci:
                out[f"{prefix}{name}_ci_low"] = float(mv.low)
                out[f"{prefix}{name}_ci_high"] = float(mv.high)
        if include_counts:
            if not gate_only:
                out[f"{prefix}n_tokens"] = float(self.n_tokens)
            out[f"{prefix}n_probes"] = float(self.n_probes)
            for c in () if gate_only else AS_CLASSES:
                out[f"{prefix}count_{c}"] = float(self.class_counts.get(c, 0))
        return out

    def per_probe_frame(self) -> Any:
        """Per-probe counts and metric values as a ``pandas.DataFrame``."""
        pd = require_pandas()
        cols = [f.name for f in fields(ProbeMetrics)] + list(METRIC_NAMES)
        return pd.DataFrame([p.to_dict(with_values=True) for p in self.per_probe], columns=cols)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (see :meth:`from_dict`)."""
        return {
            "metrics": {name: mv.to_dict() for name, mv in self.values.items()},
            "class_counts": {c: int(self.class_counts.get(c, 0)) for c in AS_CLASSES},
            "n_tokens": self.n_tokens,
            "n_excluded": self.n_excluded,
            "n_undefined": self.n_undefined,
            "n_probes": self.n_probes,
            "n_probes_empty": self.n_probes_empty,
            "per_probe": [p.to_dict() for p in self.per_probe],
            "config": self.config.to_dict(),
            "n_boot": self.n_boot,
            "seed": self.seed,
            "ci": self.ci,
            "notes": list(self.notes),
            "scope": self.scope,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SetMetrics":
        """Inverse of :meth:`to_dict`."""
        missing = MetricValue(math.nan, note="not in this report (written before the metric existed)")
        mvs = {name: MetricValue.from_dict(data["metrics"][name]) if name in data["metrics"] else missing
               for name in METRIC_NAMES}
        return cls(
            **mvs,
            class_counts={c: int(data["class_counts"].get(c, 0)) for c in AS_CLASSES},
            n_tokens=int(data["n_tokens"]),
            n_excluded=int(data["n_excluded"]),
            n_undefined=int(data["n_undefined"]),
            n_probes=int(data["n_probes"]),
            n_probes_empty=int(data["n_probes_empty"]),
            per_probe=tuple(ProbeMetrics.from_dict(p) for p in data["per_probe"]),
            config=NoiseConfig.from_dict(data["config"]),
            n_boot=int(data["n_boot"]),
            seed=None if data.get("seed") is None else int(data["seed"]),
            ci=float(data["ci"]),
            notes=tuple(str(n) for n in data.get("notes", ())),
            scope=str(data.get("scope", ATTRIBUTION_SCOPE)),
        )
