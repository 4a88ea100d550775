"""The noise-token rule: AS classes and the noise flag of each token.

A prompt token is a **noise token** when its attribution score (AS) is near
zero and its prompt+response contextual entropy H' is at or above a threshold
(docs/design.md section 1; AS ranges from section 2). :class:`NoiseConfig` holds
the class boundaries and the threshold; :func:`classify` and :func:`noise_flags`
apply them to 1-D arrays.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

import numpy as np

#: Default threshold of the noise flag on H', in nats (see :data:`DEFAULT_ENTROPY_MODE`).
#: Chosen by measurement; see the README, section "Choosing the noise threshold".
#: At 1 nat (``exp(1) = 2.7``) a near-zero-AS token counts as noise when the model,
#: given everything else, still spreads its belief over about three or more tokens.
DEFAULT_ENTROPY_THRESHOLD = 1.0

#: Default unit of the noise-flag threshold: ``"nats"`` compares H' itself;
#: ``"normalized"`` compares ``H' / log(num_candidates)``. Nats transfer across
#: vocabulary sizes and candidate sets (``exp(H')`` is the effective number of
#: plausible replacements); a normalized threshold moves with the candidate set.
DEFAULT_ENTROPY_MODE = "nats"

#: Known values of :attr:`NoiseConfig.entropy_mode`.
ENTROPY_MODES = ("normalized", "nats")

#: AS class labels, from the most negative range to the highest.
AS_CLASSES = ("negative", "near_zero", "positive", "high")

#: Label of a token whose AS is not finite (it cannot be classified).
UNDEFINED_CLASS = "undefined"


@dataclass(frozen=True)
class NoiseConfig:
    """AS class boundaries and the noise-token rule.

    Classes (docs/design.md section 2): ``negative`` for ``AS < negative_below``,
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


def resolve_noise_config(cfg: Optional[NoiseConfig]) -> NoiseConfig:
    """``cfg``, or the default ``NoiseConfig()`` when it is ``None``.

    Raises
    ------
    TypeError
        If ``cfg`` is neither a :class:`NoiseConfig` nor ``None``.
    """
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
    cfg = resolve_noise_config(cfg)
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
    cfg = resolve_noise_config(cfg)
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
    cfg = resolve_noise_config(cfg)
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


def undecided(
    attribution: Any,
    attribution_se: Any,
    entropy_full: Any,
    entropy_full_se: Any,
    cfg: Optional[NoiseConfig] = None,
    z: float = 2.0,
    num_candidates: Any = None,
) -> np.ndarray:
    """Tokens whose AS class or noise flag could change within ``z`` standard errors.

    The reading of a token (its AS class, and the noise flag) is decided when
    it is the same at both ends of ``AS ± z·se(AS)`` and, for a near-zero
    token, of ``H' ± z·se(H')``. The sequential budgets
    (:mod:`probattr_monitor.engine.sequential`) score the undecided tokens
    again with a larger budget.

    Parameters
    ----------
    attribution, attribution_se, entropy_full, entropy_full_se : array_like
        1-D estimates and their standard errors (0 where exact).
    cfg : NoiseConfig, optional
        Boundaries and threshold; defaults to ``NoiseConfig()``.
    z : float
        Half-width of the interval in standard errors, ``>= 0``.
    num_candidates : int or array_like, optional
        As for :func:`noise_flags` (normalized mode only).

    Returns
    -------
    numpy.ndarray
        Boolean array, True where undecided, and wherever an estimate or its
        error is not finite (a NaN error means the error is unknown).
    """
    cfg = resolve_noise_config(cfg)
    a = _as_float_array(attribution, "attribution")
    h = _as_float_array(entropy_full, "entropy_full")
    se_a = _as_float_array(attribution_se, "attribution_se")
    se_h = _as_float_array(entropy_full_se, "entropy_full_se")
    if not a.shape == h.shape == se_a.shape == se_h.shape:
        raise ValueError(f"undecided: shapes differ: {a.shape}, {se_a.shape}, {h.shape}, {se_h.shape}")
    if isinstance(z, bool) or not isinstance(z, numbers.Real) or not math.isfinite(z) or z < 0:
        raise ValueError(f"undecided: z must be a finite number >= 0, got {z!r}")
    unknown = ~(np.isfinite(a) & np.isfinite(h) & np.isfinite(se_a) & np.isfinite(se_h))
    a, h = np.where(unknown, 0.0, a), np.where(unknown, 0.0, h)
    se_a, se_h = np.where(unknown, 0.0, se_a), np.where(unknown, 0.0, se_h)
    class_open = classify(a - z * se_a, cfg) != classify(a + z * se_a, cfg)
    low = noise_flags(a, h - z * se_h, cfg, num_candidates)
    high = noise_flags(a, h + z * se_h, cfg, num_candidates)
    return unknown | class_open | (low != high)
