"""Per-token AS classes, the noise-token flag and set-level convergence metrics.

A prompt token is a **noise token** when its attribution score (AS) is near zero
(it does not matter for the response) *and* its prompt+response contextual
entropy H' is high (the rest of the context does not pin it down); see
DESIGN.md section 1. This module turns per-token scores into

* AS classes (:func:`classify`) and noise flags (:func:`noise_flags`),
* per-probe sums (:class:`ProbeMetrics`) and token-pooled set-level metrics with
  a seeded probe-level bootstrap interval (:func:`compute_metrics`,
  :class:`SetMetrics`),
* a comparison of two metric sets, paired when both were computed on the same
  probes (:func:`compare_metrics`).

Nothing here needs pandas: :func:`compute_metrics` accepts a
``pandas.DataFrame`` or any mapping of column name to 1-D array.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Default threshold of the noise flag on H', in nats (see :data:`DEFAULT_ENTROPY_MODE`).
#:
#: Chosen by measurement (``benchmarks/noise_threshold.py``; figures in the
#: README, "Choosing the noise threshold"): on SmolLM2-135M-Instruct, a trained
#: model, the near-zero-AS tokens of the ``paper`` probes have H' at or below
#: 0.96 nats for 90% of them (p95 1.28), so at 1 nat a trained model flags about
#: 8% of its tokens as noise. ``exp(1) = 2.7``: a near-zero-AS token counts as
#: noise when the model, given everything else, still spreads its belief over
#: about three or more equally plausible replacements.
DEFAULT_ENTROPY_THRESHOLD = 1.0

#: Default unit of the noise-flag threshold: ``"nats"`` compares H' itself;
#: ``"normalized"`` compares ``H' / log(num_candidates)``. Nats is the default
#: because it transfers across vocabulary sizes and candidate sets: ``exp(H')`` is
#: the effective number of plausible replacements, which for a trained model is
#: a handful whether the vocabulary has 50k or 150k entries, while
#: ``log(num_candidates)`` changes with the vocabulary and with every exact,
#: subset or budgeted candidate set, so a normalized threshold would move with it.
DEFAULT_ENTROPY_MODE = "nats"

#: Known values of :attr:`NoiseConfig.entropy_mode`.
ENTROPY_MODES = ("normalized", "nats")

#: AS class labels, from the most negative range to the highest.
AS_CLASSES = ("negative", "near_zero", "positive", "high")

#: Label of a token whose AS is not finite (it cannot be classified).
UNDEFINED_CLASS = "undefined"

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
)

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
}

# Each metric is a pooled ratio sum(numerator) / sum(denominator) of two
# ProbeMetrics fields; this is what the bootstrap resamples.
_RATIO_FIELDS: dict[str, tuple[str, str]] = {
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
}

# Why a metric is undefined when its pooled denominator is zero.
_EMPTY_REASON = {
    "n_tokens": "no eligible tokens (all excluded, or AS not finite)",
    "n_entropy_prompt": "no eligible token has a finite H",
    "n_entropy_full": "no eligible token has a finite H'",
    "n_kl": "no eligible token has a finite KL",
    "n_entropy_full_near_zero": "no near-zero token with a finite H'",
}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class NoiseConfig:
    """AS class boundaries and the noise-token rule.

    Classes (DESIGN.md section 2): ``negative`` for ``AS < negative_below``,
    ``near_zero`` for ``negative_below <= AS <= near_zero_max`` (both ends
    inclusive), ``positive`` for ``near_zero_max < AS <= high_above`` and
    ``high`` for ``AS > high_above``. A token is a noise token when it is
    near-zero and its H' is at or above the threshold.

    Parameters
    ----------
    negative_below : float
        Upper (exclusive) bound of the negative class. Default ``-0.2``.
    near_zero_max : float
        Upper (inclusive) bound of the near-zero class. Default ``0.2``.
    high_above : float
        Lower (exclusive) bound of the high class. Default ``3.0``.
    entropy_threshold : float
        Threshold on H' of the noise flag (``>=``), in the unit given by
        ``entropy_mode``. Default :data:`DEFAULT_ENTROPY_THRESHOLD`.
    entropy_mode : {"normalized", "nats"}
        ``"normalized"``: compare ``H' / log(num_candidates)``; ``"nats"``:
        compare H' in nats. Default :data:`DEFAULT_ENTROPY_MODE`.

    Raises
    ------
    ValueError
        If a boundary is not finite, the boundaries are not ordered
        ``negative_below <= near_zero_max <= high_above``, the threshold is
        negative or not finite, or the mode is unknown.
    """

    negative_below: float = -0.2
    near_zero_max: float = 0.2
    high_above: float = 3.0
    entropy_threshold: float = DEFAULT_ENTROPY_THRESHOLD
    entropy_mode: str = DEFAULT_ENTROPY_MODE

    def __post_init__(self) -> None:
        for name in ("negative_below", "near_zero_max", "high_above", "entropy_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"NoiseConfig.{name} must be a real number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ValueError(f"NoiseConfig.{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not self.negative_below <= self.near_zero_max:
            raise ValueError(
                "NoiseConfig: negative_below must be <= near_zero_max, got "
                f"negative_below={self.negative_below} > near_zero_max={self.near_zero_max}"
            )
        if not self.near_zero_max <= self.high_above:
            raise ValueError(
                "NoiseConfig: near_zero_max must be <= high_above, got "
                f"near_zero_max={self.near_zero_max} > high_above={self.high_above}"
            )
        if self.entropy_threshold < 0:
            raise ValueError(
                f"NoiseConfig.entropy_threshold must be >= 0, got {self.entropy_threshold}"
            )
        if self.entropy_mode not in ENTROPY_MODES:
            raise ValueError(
                f"NoiseConfig.entropy_mode must be one of {ENTROPY_MODES}, got {self.entropy_mode!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NoiseConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"NoiseConfig: unknown keys {sorted(unknown)}")
        return cls(**dict(data))


def _cfg(cfg: Optional[NoiseConfig]) -> NoiseConfig:
    if cfg is None:
        return NoiseConfig()
    if not isinstance(cfg, NoiseConfig):
        raise TypeError(f"cfg must be a NoiseConfig or None, got {type(cfg).__name__}")
    return cfg


def _as_float_array(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


# ------------------------------------------------------------------- per token


def classify(attribution: Any, cfg: Optional[NoiseConfig] = None) -> np.ndarray:
    """AS class label of each token.

    Parameters
    ----------
    attribution : array_like
        1-D attribution scores (nats).
    cfg : NoiseConfig, optional
        Class boundaries; defaults to ``NoiseConfig()``.

    Returns
    -------
    numpy.ndarray
        Object array of labels from :data:`AS_CLASSES`; :data:`UNDEFINED_CLASS`
        where the score is not finite (NaN or infinite: a degenerate score that
        the metrics leave out).
    """
    cfg = _cfg(cfg)
    a = _as_float_array(attribution, "attribution")
    out = np.full(a.shape, UNDEFINED_CLASS, dtype=object)
    a = np.where(np.isfinite(a), a, np.nan)
    with np.errstate(invalid="ignore"):
        out[a < cfg.negative_below] = "negative"
        out[(a >= cfg.negative_below) & (a <= cfg.near_zero_max)] = "near_zero"
        out[(a > cfg.near_zero_max) & (a <= cfg.high_above)] = "positive"
        out[a > cfg.high_above] = "high"
    return out


def is_near_zero(attribution: Any, cfg: Optional[NoiseConfig] = None) -> np.ndarray:
    """Boolean mask of near-zero AS (``negative_below <= AS <= near_zero_max``)."""
    cfg = _cfg(cfg)
    a = _as_float_array(attribution, "attribution")
    with np.errstate(invalid="ignore"):
        return (a >= cfg.negative_below) & (a <= cfg.near_zero_max)


def normalized_entropy(entropy: Any, num_candidates: Any) -> np.ndarray:
    """Entropy divided by its maximum ``log(num_candidates)``.

    Parameters
    ----------
    entropy : array_like
        Entropies in nats.
    num_candidates : int or array_like
        Size of the candidate set of each token (broadcast against
        ``entropy``).

    Returns
    -------
    numpy.ndarray
        ``entropy / log(num_candidates)``, in ``[0, 1]`` for a true entropy;
        0 where ``num_candidates <= 1`` (a single candidate is fully determined).

    Raises
    ------
    ValueError
        If a candidate count is smaller than 1.
    """
    h = _as_float_array(entropy, "entropy")
    k = np.broadcast_to(np.asarray(num_candidates, dtype=np.float64), h.shape)
    if np.any(~(k >= 1)):
        raise ValueError("num_candidates must be >= 1 for every token")
    log_k = np.log(k)
    out = np.zeros_like(h)
    pos = log_k > 0
    out[pos] = h[pos] / log_k[pos]
    out[~pos] = np.where(np.isnan(h[~pos]), np.nan, 0.0)
    return out


def noise_flags(
    attribution: Any,
    entropy_full: Any,
    cfg: Optional[NoiseConfig] = None,
    num_candidates: Any = None,
) -> np.ndarray:
    """Noise-token flag: near-zero AS and H' at or above the threshold.

    Parameters
    ----------
    attribution : array_like
        1-D AS per token.
    entropy_full : array_like
        1-D H' per token (nats).
    cfg : NoiseConfig, optional
        Boundaries and threshold; defaults to ``NoiseConfig()``.
    num_candidates : int or array_like, optional
        Candidate-set size per token; required when
        ``cfg.entropy_mode == "normalized"``.

    Returns
    -------
    numpy.ndarray
        Boolean array; ``False`` where AS or H' is NaN.

    Raises
    ------
    ValueError
        If the shapes differ, or ``num_candidates`` is missing in normalized mode.
    """
    cfg = _cfg(cfg)
    a = _as_float_array(attribution, "attribution")
    h = _as_float_array(entropy_full, "entropy_full")
    if a.shape != h.shape:
        raise ValueError(f"attribution and entropy_full differ in shape: {a.shape} vs {h.shape}")
    if cfg.entropy_mode == "normalized":
        if num_candidates is None:
            raise ValueError("noise_flags: num_candidates is required when entropy_mode='normalized'")
        h = normalized_entropy(h, num_candidates)
    with np.errstate(invalid="ignore"):
        return is_near_zero(a, cfg) & (h >= cfg.entropy_threshold)


# ------------------------------------------------------------------ metric types


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

    def value(self, name: str) -> float:
        """The metric ``name`` (one of :data:`METRIC_NAMES`) for this probe; NaN if undefined."""
        try:
            num, den = _RATIO_FIELDS[name]
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
            Undefined metrics are ``nan``.
        """
        out: dict[str, float] = {}
        for name, mv in self.values.items():
            out[f"{prefix}{name}"] = float(mv.value)
            if include_ci:
                out[f"{prefix}{name}_ci_low"] = float(mv.low)
                out[f"{prefix}{name}_ci_high"] = float(mv.high)
        if include_counts:
            out[f"{prefix}n_tokens"] = float(self.n_tokens)
            out[f"{prefix}n_probes"] = float(self.n_probes)
            for c in AS_CLASSES:
                out[f"{prefix}count_{c}"] = float(self.class_counts.get(c, 0))
        return out

    def per_probe_frame(self) -> Any:
        """Per-probe counts and metric values as a ``pandas.DataFrame``."""
        from probattr_monitor.report._deps import require_pandas

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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SetMetrics":
        """Inverse of :meth:`to_dict`."""
        mvs = {name: MetricValue.from_dict(data["metrics"][name]) for name in METRIC_NAMES}
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
        )


# ------------------------------------------------------------------ computation


def _column(table: Any, name: str, required: bool = True) -> Optional[np.ndarray]:
    try:
        has = name in table
    except TypeError:
        has = False
    if not has:
        if required:
            raise ValueError(f"score table has no column {name!r}")
        return None
    col = table[name]
    return np.asarray(col.to_numpy() if hasattr(col, "to_numpy") else col)


def _validate_bootstrap(n_boot: int, ci: float, seed: Optional[int]) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be an integer >= 0, got {n_boot!r}")
    if not isinstance(ci, (int, float, np.floating)) or not 0.0 < float(ci) < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an int or None, got {seed!r}")


def _probe_sums(table: Any, cfg: NoiseConfig) -> tuple[list[ProbeMetrics], dict[str, int]]:
    """Aggregate a score table into one :class:`ProbeMetrics` per probe (vectorised)."""
    probe = _column(table, "probe_id")
    n = probe.shape[0]
    a = _column(table, "attribution").astype(np.float64)
    h = _column(table, "entropy_prompt").astype(np.float64)
    hf = _column(table, "entropy_full").astype(np.float64)
    kl = _column(table, "kl").astype(np.float64)
    excluded = _column(table, "excluded", required=False)
    if excluded is None:
        special = _column(table, "is_special", required=False)
        excluded = np.zeros(n, bool) if special is None else special
    excluded = np.asarray(excluded, dtype=bool)
    k = _column(table, "num_candidates", required=cfg.entropy_mode == "normalized")

    if n == 0:
        return [], {"excluded": 0, "undefined": 0}
    ids, codes = _factorize(probe)
    n_p = len(ids)

    finite_a = np.isfinite(a)
    eligible = ~excluded & finite_a
    cls = classify(a, cfg)
    near = eligible & (cls == "near_zero")
    noise = eligible & noise_flags(a, hf, cfg, k)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=mask.astype(np.float64), minlength=n_p).astype(np.int64)

    def total(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=np.where(mask, values, 0.0), minlength=n_p)

    fin_h = eligible & np.isfinite(h)
    fin_hf = eligible & np.isfinite(hf)
    fin_kl = eligible & np.isfinite(kl)
    fin_hf_nz = near & np.isfinite(hf)
    cols = {
        "n_total": np.bincount(codes, minlength=n_p).astype(np.int64),
        "n_excluded": count(excluded),
        "n_undefined": count(~excluded & ~finite_a),
        "n_tokens": count(eligible),
        "n_negative": count(eligible & (cls == "negative")),
        "n_near_zero": count(near),
        "n_positive": count(eligible & (cls == "positive")),
        "n_high": count(eligible & (cls == "high")),
        "n_noise": count(noise),
        "sum_abs_as": total(np.abs(a), eligible),
        "sum_entropy_prompt": total(h, fin_h),
        "n_entropy_prompt": count(fin_h),
        "sum_entropy_full": total(hf, fin_hf),
        "n_entropy_full": count(fin_hf),
        "sum_kl": total(kl, fin_kl),
        "n_kl": count(fin_kl),
        "sum_entropy_full_near_zero": total(hf, fin_hf_nz),
        "n_entropy_full_near_zero": count(fin_hf_nz),
    }
    per_probe = []
    for i, pid in enumerate(ids):
        kw = {}
        for name, arr in cols.items():
            kw[name] = int(arr[i]) if name.startswith("n_") else float(arr[i])
        per_probe.append(ProbeMetrics(probe_id=str(pid), **kw))
    extra = {"excluded": int(excluded.sum()), "undefined": int((~excluded & ~finite_a).sum())}
    return per_probe, extra


def _factorize(values: np.ndarray) -> tuple[list, np.ndarray]:
    """Unique values in order of first appearance, and the code of each element."""
    index: dict[Any, int] = {}
    codes = np.empty(values.shape[0], dtype=np.int64)
    for i, v in enumerate(values.tolist()):
        codes[i] = index.setdefault(v, len(index))
    return list(index), codes


def _ratio_arrays(per_probe: Sequence[ProbeMetrics]) -> tuple[np.ndarray, np.ndarray]:
    """``(P, M)`` numerator and denominator arrays, metrics in METRIC_NAMES order."""
    num = np.array(
        [[getattr(p, _RATIO_FIELDS[m][0]) for m in METRIC_NAMES] for p in per_probe],
        dtype=np.float64,
    ).reshape(len(per_probe), len(METRIC_NAMES))
    den = np.array(
        [[getattr(p, _RATIO_FIELDS[m][1]) for m in METRIC_NAMES] for p in per_probe],
        dtype=np.float64,
    ).reshape(len(per_probe), len(METRIC_NAMES))
    return num, den


def bootstrap_weights(rng: np.random.Generator, n_units: int, n_boot: int) -> np.ndarray:
    """Resampling weights of a nonparametric bootstrap.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_units : int
        Units (probes) resampled with replacement, ``n_units`` per resample.
    n_boot : int
        Number of resamples.

    Returns
    -------
    numpy.ndarray
        ``(n_boot, n_units)`` float array: how many times each unit is drawn in
        each resample (rows sum to ``n_units``).
    """
    if n_units == 0 or n_boot == 0:
        return np.zeros((n_boot, n_units), dtype=np.float64)
    idx = rng.integers(0, n_units, size=(n_boot, n_units))
    flat = idx + (np.arange(n_boot) * n_units)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n_units).reshape(n_boot, n_units).astype(np.float64)


def _pooled(weights: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Pooled ratio per resample: ``(B, M)``, NaN where the denominator is 0."""
    nb = weights @ num
    db = weights @ den
    out = np.full(nb.shape, np.nan)
    np.divide(nb, db, out=out, where=db > 0)
    return out


def _percentile(samples: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column percentile interval ignoring NaN; also the count of defined samples."""
    alpha = (1.0 - ci) / 2.0
    m = samples.shape[1]
    low = np.full(m, np.nan)
    high = np.full(m, np.nan)
    n_def = np.sum(~np.isnan(samples), axis=0)
    for j in range(m):
        if n_def[j] == 0:
            continue
        col = samples[:, j]
        col = col[~np.isnan(col)]
        low[j], high[j] = np.quantile(col, [alpha, 1.0 - alpha])
    return low, high, n_def


def _empty_reason(name: str) -> str:
    return _EMPTY_REASON[_RATIO_FIELDS[name][1]]


def metrics_from_probes(
    per_probe: Sequence[ProbeMetrics],
    cfg: Optional[NoiseConfig] = None,
    n_boot: int = 1000,
    seed: Optional[int] = 0,
    ci: float = 0.95,
    *,
    n_excluded: Optional[int] = None,
    n_undefined: Optional[int] = None,
) -> SetMetrics:
    """Set-level metrics and bootstrap intervals from per-probe sums.

    This is the second half of :func:`compute_metrics`; use it directly to
    merge per-probe sums gathered from several workers (e.g. DDP ranks).

    Parameters
    ----------
    per_probe : sequence of ProbeMetrics
        One entry per probe (probe ids must be unique).
    cfg, n_boot, seed, ci
        As in :func:`compute_metrics`.

    Returns
    -------
    SetMetrics
    """
    cfg = _cfg(cfg)
    _validate_bootstrap(n_boot, ci, seed)
    per_probe = tuple(per_probe)
    seen: set[str] = set()
    for p in per_probe:
        if p.probe_id in seen:
            raise ValueError(f"duplicate probe id {p.probe_id!r}")
        seen.add(p.probe_id)
    notes: list[str] = []
    num, den = _ratio_arrays(per_probe)
    with np.errstate(invalid="ignore", divide="ignore"):
        tot_num, tot_den = num.sum(axis=0), den.sum(axis=0)
        point = np.where(tot_den > 0, tot_num / np.where(tot_den > 0, tot_den, 1.0), np.nan)

    units = np.array([p.n_tokens > 0 for p in per_probe], dtype=bool)
    n_units = int(units.sum())
    empty = [p.probe_id for p in per_probe if p.n_tokens == 0]
    if not per_probe:
        notes.append("empty probe set: no probes, every metric is undefined")
    elif n_units == 0:
        notes.append("no probe has an eligible token: every metric is undefined")
    if empty and per_probe and n_units > 0:
        shown = ", ".join(repr(e) for e in empty[:10]) + (" ..." if len(empty) > 10 else "")
        notes.append(f"{len(empty)} probe(s) without eligible tokens, left out of the bootstrap: {shown}")

    low = np.full(len(METRIC_NAMES), np.nan)
    high = np.full(len(METRIC_NAMES), np.nan)
    n_def = np.zeros(len(METRIC_NAMES), dtype=np.int64)
    if n_boot > 0 and n_units > 0:
        rng = np.random.default_rng(seed)
        w = bootstrap_weights(rng, n_units, n_boot)
        low, high, n_def = _percentile(_pooled(w, num[units], den[units]), float(ci))
        if n_units == 1:
            notes.append("a single probe has eligible tokens: the intervals are degenerate")
    elif n_boot == 0:
        notes.append("bootstrap disabled (n_boot=0): no intervals")

    values = {}
    for j, name in enumerate(METRIC_NAMES):
        note = ""
        if not np.isfinite(point[j]) and tot_den[j] == 0:
            note = f"undefined: {_empty_reason(name)}"
        elif n_boot > 0 and n_def[j] < n_boot:
            note = (
                f"interval from {int(n_def[j])} of {n_boot} resamples "
                f"(the others had {_empty_reason(name)})"
                if n_def[j] > 0
                else f"no interval: {_empty_reason(name)} in any resample"
            )
        values[name] = MetricValue(float(point[j]), float(low[j]), float(high[j]), note)

    counts = {c: int(sum(getattr(p, f"n_{c}") for p in per_probe)) for c in AS_CLASSES}
    return SetMetrics(
        **values,
        class_counts=counts,
        n_tokens=int(sum(p.n_tokens for p in per_probe)),
        n_excluded=int(sum(p.n_excluded for p in per_probe)) if n_excluded is None else int(n_excluded),
        n_undefined=int(sum(p.n_undefined for p in per_probe)) if n_undefined is None else int(n_undefined),
        n_probes=len(per_probe),
        n_probes_empty=len(empty),
        per_probe=per_probe,
        config=cfg,
        n_boot=int(n_boot),
        seed=None if seed is None else int(seed),
        ci=float(ci),
        notes=tuple(notes),
    )


def compute_metrics(
    table: Any,
    cfg: Optional[NoiseConfig] = None,
    n_boot: int = 1000,
    seed: Optional[int] = 0,
    ci: float = 0.95,
) -> SetMetrics:
    """Per-probe and set-level metrics of a token score table.

    AS classes and noise flags are recomputed from the raw score columns with
    ``cfg`` (the table's ``as_class``/``noise`` columns are not read), so one
    table can be analysed under several configurations. Excluded (special or
    template) tokens and tokens with a non-finite AS are left out.

    Parameters
    ----------
    table : pandas.DataFrame or mapping of str to array_like
        Columns ``probe_id``, ``attribution``, ``entropy_prompt``,
        ``entropy_full``, ``kl``; ``excluded`` (or ``is_special``) if any token
        is to be left out; ``num_candidates`` in normalized entropy mode. See
        :func:`probattr_monitor.report.table.build_token_table`.
    cfg : NoiseConfig, optional
        Classes and noise rule; defaults to ``NoiseConfig()``.
    n_boot : int
        Bootstrap resamples (0 disables the intervals).
    seed : int or None
        Seed of the ``numpy.random.Generator`` of the bootstrap.
    ci : float
        Coverage of the percentile interval, in ``(0, 1)``.

    Returns
    -------
    SetMetrics
        Undefined metrics are NaN with a ``note``; nothing raises on empty
        tables or probes without eligible tokens.

    Raises
    ------
    ValueError
        On a missing column or invalid bootstrap settings.
    """
    cfg = _cfg(cfg)
    _validate_bootstrap(n_boot, ci, seed)
    per_probe, extra = _probe_sums(table, cfg)
    return metrics_from_probes(
        per_probe,
        cfg,
        n_boot=n_boot,
        seed=seed,
        ci=ci,
        n_excluded=extra["excluded"],
        n_undefined=extra["undefined"],
    )


# ------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class MetricComparison:
    """One metric of two metric sets, and their difference ``b - a``.

    Attributes
    ----------
    name : str
    a, b : MetricValue
    diff : MetricValue
        ``b.value - a.value`` with a bootstrap interval of the difference
        (paired when :attr:`paired`).
    paired : bool
        Both sets hold the same probe ids; the same resampled probes were
        used for both.
    overlap : bool
        The two intervals of ``a`` and ``b`` overlap (False when either is
        undefined).
    differs : bool
        The interval of the difference excludes 0.
    """

    name: str
    a: MetricValue
    b: MetricValue
    diff: MetricValue
    paired: bool
    overlap: bool
    differs: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "diff": self.diff.to_dict(),
            "paired": self.paired,
            "overlap": self.overlap,
            "differs": self.differs,
        }


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare_metrics`: one :class:`MetricComparison` per metric."""

    metrics: tuple
    paired: bool
    n_boot: int
    seed: Optional[int]
    ci: float

    def __getitem__(self, name: str) -> MetricComparison:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "paired": self.paired,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "ci": self.ci,
            "metrics": [m.to_dict() for m in self.metrics],
        }

    def to_frame(self) -> Any:
        """One row per metric as a ``pandas.DataFrame``."""
        from probattr_monitor.report._deps import require_pandas

        pd = require_pandas()
        rows = []
        for m in self.metrics:
            rows.append(
                {
                    "metric": m.name,
                    "a": m.a.value,
                    "a_low": m.a.low,
                    "a_high": m.a.high,
                    "b": m.b.value,
                    "b_low": m.b.low,
                    "b_high": m.b.high,
                    "diff": m.diff.value,
                    "diff_low": m.diff.low,
                    "diff_high": m.diff.high,
                    "paired": m.paired,
                    "overlap": m.overlap,
                    "differs": m.differs,
                }
            )
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """A plain-text table (what ``probattr compare`` prints)."""
        pct = f"{self.ci:.0%}"
        kind = "paired" if self.paired else "unpaired"
        head = f"{'metric':<30} {'a':>24} {'b':>24} {'b - a (' + kind + ', ' + pct + ')':>34}  verdict"
        lines = [head, "-" * len(head)]

        def fmt(mv: MetricValue) -> str:
            return f"{mv.value:.4g} [{mv.low:.4g}, {mv.high:.4g}]"

        for m in self.metrics:
            verdict = "differs" if m.differs else "no clear difference"
            lines.append(f"{m.name:<30} {fmt(m.a):>24} {fmt(m.b):>24} {fmt(m.diff):>34}  {verdict}")
        return "\n".join(lines)


def compare_metrics(
    a: SetMetrics,
    b: SetMetrics,
    *,
    names: Optional[Iterable[str]] = None,
    n_boot: Optional[int] = None,
    seed: Optional[int] = None,
    ci: Optional[float] = None,
) -> Comparison:
    """Compare two metric sets (e.g. two checkpoints).

    When both sets hold exactly the same probe ids, the difference ``b - a``
    gets a **paired** bootstrap interval: each resample draws probes once and
    recomputes both pooled statistics on the same probes, which cancels most of
    the between-probe variation. Otherwise the two sets are resampled
    independently. A metric *differs* when the interval of the difference
    excludes 0; :attr:`MetricComparison.overlap` also reports whether the two
    individual intervals overlap (a cruder, conservative check).

    Parameters
    ----------
    a, b : SetMetrics
    names : iterable of str, optional
        Metrics to compare (default: all of :data:`METRIC_NAMES`).
    n_boot, seed, ci : optional
        Bootstrap settings; default to those of ``a``.

    Returns
    -------
    Comparison
    """
    names = tuple(METRIC_NAMES if names is None else names)
    for name in names:
        if name not in METRIC_NAMES:
            raise ValueError(f"unknown metric {name!r}; known: {METRIC_NAMES}")
    n_boot = a.n_boot if n_boot is None else n_boot
    seed = a.seed if seed is None else seed
    ci = a.ci if ci is None else ci
    _validate_bootstrap(n_boot, ci, seed)
    cols = [METRIC_NAMES.index(n) for n in names]

    ids_a = [p.probe_id for p in a.per_probe]
    ids_b = [p.probe_id for p in b.per_probe]
    paired = bool(ids_a) and set(ids_a) == set(ids_b)
    rng = np.random.default_rng(seed)

    diff_low = np.full(len(METRIC_NAMES), np.nan)
    diff_high = np.full(len(METRIC_NAMES), np.nan)
    if paired:
        b_by_id = {p.probe_id: p for p in b.per_probe}
        pa = list(a.per_probe)
        pb = [b_by_id[i] for i in ids_a]
        num_a, den_a = _ratio_arrays(pa)
        num_b, den_b = _ratio_arrays(pb)
        if n_boot > 0:
            w = bootstrap_weights(rng, len(pa), n_boot)
            d = _pooled(w, num_b, den_b) - _pooled(w, num_a, den_a)
            diff_low, diff_high, _ = _percentile(d, float(ci))
    else:
        pa = [p for p in a.per_probe if p.n_tokens > 0]
        pb = [p for p in b.per_probe if p.n_tokens > 0]
        if n_boot > 0 and pa and pb:
            num_a, den_a = _ratio_arrays(pa)
            num_b, den_b = _ratio_arrays(pb)
            wa = bootstrap_weights(rng, len(pa), n_boot)
            wb = bootstrap_weights(rng, len(pb), n_boot)
            d = _pooled(wb, num_b, den_b) - _pooled(wa, num_a, den_a)
            diff_low, diff_high, _ = _percentile(d, float(ci))

    out = []
    for name, j in zip(names, cols):
        ma, mb = a[name], b[name]
        dv = mb.value - ma.value
        note = "" if math.isfinite(dv) else "undefined in a or b"
        diff = MetricValue(float(dv), float(diff_low[j]), float(diff_high[j]), note)
        overlap = bool(max(ma.low, mb.low) <= min(ma.high, mb.high))
        differs = bool(diff.low > 0 or diff.high < 0)
        out.append(MetricComparison(name, ma, mb, diff, paired, overlap, differs))
    return Comparison(tuple(out), paired, int(n_boot), seed, float(ci))
